//! The tensor shape at each trunk boundary (docs/model-spec.md).

/// (C, H, W) of the tensor entering trunk layer `S`, i.e. what a unit
/// receives with `start_layer = S` (S = 0: the normalised image).
pub const BOUNDARY_SHAPES: [[usize; 3]; 16] = [
    [3, 32, 32],
    [32, 32, 32],
    [32, 30, 30],
    [64, 28, 28],
    [80, 28, 28],
    [192, 24, 24],
    [256, 24, 24],
    [288, 24, 24],
    [288, 24, 24],
    [768, 11, 11],
    [768, 11, 11],
    [768, 11, 11],
    [768, 11, 11],
    [768, 11, 11],
    [1280, 5, 5],
    [2048, 5, 5],
];
