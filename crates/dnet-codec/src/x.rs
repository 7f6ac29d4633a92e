//! Checking `x`: one tensor named `x`, F32 (F16/BF16 accepted), shaped
//! [N, C, H, W] for its `start_layer`, with finite values. Each error says
//! what was expected.

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use crate::echo;
use crate::pickle::{self, PickleDtype, PickledTensor};
use crate::shapes::BOUNDARY_SHAPES;

/// Why `x` was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("x is empty; expected a safetensors buffer with one F32 tensor named \"x\"")]
    Empty,
    #[error("x is a Python pickle (the original DNet's format); this unit reads those only with --legacy-pickle (parsed, never unpickled): start it with --legacy-pickle, or send a safetensors buffer with one F32 tensor named \"x\"")]
    Pickle,
    #[error("x is not a tensor pickle DNet reads: {0}")]
    BadPickle(String),
    #[error("x is not a valid safetensors buffer ({0}); expected one F32 tensor named \"x\"")]
    NotSafetensors(String),
    /// `names`: the first few (each cut), so the message stays short.
    #[error("x holds {count} tensor(s) {names}; expected exactly one tensor named \"x\"")]
    WrongNames { names: String, count: usize },
    #[error("x has dtype {0}; expected F32 (or F16/BF16)")]
    WrongDtype(String),
    #[error("x has rank {rank} (shape {}); expected rank 4: [N, {c}, {h}, {w}] for start_layer {start}", echo::list(.shape), c = .expected[0], h = .expected[1], w = .expected[2])]
    WrongRank {
        rank: usize,
        shape: Vec<usize>,
        start: usize,
        expected: [usize; 3],
    },
    #[error("x has shape {shape:?}; start_layer {start} needs [N, {c}, {h}, {w}]", c = .expected[0], h = .expected[1], w = .expected[2])]
    WrongShape {
        shape: Vec<usize>,
        start: usize,
        expected: [usize; 3],
    },
    #[error("x holds {batch} samples; at most {max} fit the size limit")]
    TooLarge { batch: usize, max: usize },
    #[error("x contains NaN or infinite values; expected finite numbers")]
    NotFinite,
    #[error("start_layer {0} is out of range: expected 0..=15")]
    BadStartLayer(usize),
}

/// Element type of a valid `x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XDtype {
    F32,
    F16,
    BF16,
}

/// A checked `x`: its shape and its little-endian data.
#[derive(Debug, PartialEq, Eq)]
pub struct XView<'a> {
    pub dtype: XDtype,
    pub shape: [usize; 4],
    pub data: &'a [u8],
}

/// Checks `bytes` as the `x` of a request with `start_layer`, at most `max_batch` samples.
///
/// # Errors
/// Any way in which `bytes` is not one finite F32/F16/BF16 tensor named `x`
/// shaped [N, C, H, W] as trunk layer `start_layer` expects.
pub fn parse_x(bytes: &[u8], start_layer: usize, max_batch: usize) -> Result<XView<'_>, CodecError> {
    if bytes.is_empty() {
        return Err(CodecError::Empty);
    }
    if pickle::looks_like_pickle(bytes) {
        return Err(CodecError::Pickle);
    }
    let expected = *BOUNDARY_SHAPES
        .get(start_layer)
        .ok_or(CodecError::BadStartLayer(start_layer))?;
    let buffer = SafeTensors::deserialize(bytes).map_err(not_safetensors)?;
    let names = buffer.names();
    if names != ["x"] {
        return Err(CodecError::WrongNames {
            names: echo::list(&names),
            count: names.len(),
        });
    }
    let view = buffer.tensor("x").map_err(not_safetensors)?;
    let dtype = match view.dtype() {
        Dtype::F32 => XDtype::F32,
        Dtype::F16 => XDtype::F16,
        Dtype::BF16 => XDtype::BF16,
        other => return Err(CodecError::WrongDtype(format!("{other:?}"))),
    };
    let shape4 = check_shape(view.shape(), start_layer, expected, max_batch)?;
    let data = view.data();
    if !all_finite(dtype, data) {
        return Err(CodecError::NotFinite);
    }
    Ok(XView {
        dtype,
        shape: shape4,
        data,
    })
}

/// Why safetensors refused a buffer, cut: its messages may name what the
/// buffer holds.
fn not_safetensors(error: safetensors::SafeTensorError) -> CodecError {
    CodecError::NotSafetensors(echo::cut(&error.to_string()))
}

/// Checks a pickled `x` (the original DNet's format, read with
/// `--legacy-pickle`) as [`parse_x`] checks a safetensors one: F32, shaped
/// for `start_layer`, at most `max_batch` samples, finite. The pickle reader
/// is told the most elements such an `x` has, so a larger tensor is refused
/// before it is copied.
///
/// # Errors
/// Not a tensor pickle this crate reads, or not such a tensor.
pub fn parse_pickled_x(bytes: &[u8], start_layer: usize, max_batch: usize) -> Result<PickledTensor, CodecError> {
    let expected = *BOUNDARY_SHAPES
        .get(start_layer)
        .ok_or(CodecError::BadStartLayer(start_layer))?;
    let max_elements = expected.iter().product::<usize>().saturating_mul(max_batch);
    let tensor = pickle::read(bytes, max_elements).map_err(|e| CodecError::BadPickle(e.to_string()))?;
    if tensor.dtype != PickleDtype::F32 {
        return Err(CodecError::WrongDtype(format!("{:?}", tensor.dtype)));
    }
    check_shape(&tensor.shape, start_layer, expected, max_batch)?;
    if !all_finite(XDtype::F32, &tensor.data) {
        return Err(CodecError::NotFinite);
    }
    Ok(tensor)
}

/// `shape` as [N, C, H, W] for `start_layer`, with 1 <= N <= `max_batch`.
fn check_shape(
    shape: &[usize],
    start_layer: usize,
    expected: [usize; 3],
    max_batch: usize,
) -> Result<[usize; 4], CodecError> {
    let Ok(shape4) = <[usize; 4]>::try_from(shape) else {
        return Err(CodecError::WrongRank {
            rank: shape.len(),
            shape: shape.to_vec(),
            start: start_layer,
            expected,
        });
    };
    if shape4[0] < 1 || shape4[1..] != expected {
        return Err(CodecError::WrongShape {
            shape: shape.to_vec(),
            start: start_layer,
            expected,
        });
    }
    if shape4[0] > max_batch {
        return Err(CodecError::TooLarge {
            batch: shape4[0],
            max: max_batch,
        });
    }
    Ok(shape4)
}

/// Whether every element is finite (exponent bits not all ones).
fn all_finite(dtype: XDtype, data: &[u8]) -> bool {
    match dtype {
        XDtype::F32 => data
            .chunks_exact(4)
            .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
        XDtype::F16 => data
            .chunks_exact(2)
            .all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7C00 != 0x7C00),
        XDtype::BF16 => data
            .chunks_exact(2)
            .all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7F80 != 0x7F80),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn buffer(name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let view = TensorView::new(dtype, shape.to_vec(), data).expect("view");
        safetensors::serialize([(name, view)], None).expect("serialize")
    }

    fn floats(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn accepts_a_valid_image_and_rejects_each_defect() {
        let image = floats(&vec![0.5; 3 * 32 * 32]);
        let good = buffer("x", Dtype::F32, &[1, 3, 32, 32], &image);
        let view = parse_x(&good, 0, 4).expect("valid");
        assert_eq!((view.dtype, view.shape), (XDtype::F32, [1, 3, 32, 32]));

        assert_eq!(parse_x(&[], 0, 4), Err(CodecError::Empty));
        assert_eq!(parse_x(&[0x80, 0x04, 0x95], 0, 4), Err(CodecError::Pickle));
        assert!(matches!(
            parse_x(b"garbage!garbage!", 0, 4),
            Err(CodecError::NotSafetensors(_))
        ));
        assert!(matches!(
            parse_x(&good[..good.len() - 1], 0, 4),
            Err(CodecError::NotSafetensors(_))
        ));
        assert!(matches!(
            parse_x(&good, 1, 4),
            Err(CodecError::WrongShape { start: 1, .. })
        ));
        assert_eq!(parse_x(&good, 16, 4), Err(CodecError::BadStartLayer(16)));
        assert!(matches!(
            parse_x(&good, 0, 0),
            Err(CodecError::TooLarge { batch: 1, max: 0 })
        ));
        let renamed = buffer("y", Dtype::F32, &[1, 3, 32, 32], &image);
        assert!(matches!(
            parse_x(&renamed, 0, 4),
            Err(CodecError::WrongNames { count: 1, .. })
        ));
        let rank3 = buffer("x", Dtype::F32, &[3, 32, 32], &image);
        assert!(matches!(
            parse_x(&rank3, 0, 4),
            Err(CodecError::WrongRank { rank: 3, .. })
        ));
        let ints = buffer("x", Dtype::I32, &[1, 3, 32, 32], &image);
        assert!(matches!(parse_x(&ints, 0, 4), Err(CodecError::WrongDtype(_))));
        let mut nan = vec![0.5; 3 * 32 * 32];
        nan[7] = f32::NAN;
        assert_eq!(
            parse_x(&buffer("x", Dtype::F32, &[1, 3, 32, 32], &floats(&nan)), 0, 4),
            Err(CodecError::NotFinite)
        );
        let half_inf: Vec<u8> = (0..3 * 32 * 32)
            .flat_map(|i| if i == 3 { 0x7C00_u16 } else { 0x3C00 }.to_le_bytes())
            .collect();
        assert_eq!(
            parse_x(&buffer("x", Dtype::F16, &[1, 3, 32, 32], &half_inf), 0, 4),
            Err(CodecError::NotFinite)
        );
    }

    #[test]
    fn messages_that_echo_the_input_stay_short() {
        let names: Vec<String> = (0..10_000).map(|i| format!("tensor-{i}-{}", "n".repeat(100))).collect();
        let views: Vec<(&str, TensorView<'_>)> = names
            .iter()
            .map(|name| (name.as_str(), TensorView::new(Dtype::F32, vec![0], &[]).expect("view")))
            .collect();
        let many = safetensors::serialize(views, None).expect("serialize");
        let error = parse_x(&many, 0, 4).expect_err("refused");
        assert!(matches!(error, CodecError::WrongNames { count: 10_000, .. }));
        let rank = vec![1; 5000];
        let deep = buffer("x", Dtype::F32, &rank, &floats(&[0.5]));
        let error = parse_x(&deep, 0, 4).expect_err("refused");
        assert!(matches!(error, CodecError::WrongRank { rank: 5000, .. }));
        for error in [parse_x(&many, 0, 4), parse_x(&deep, 0, 4)] {
            let message = error.expect_err("refused").to_string();
            assert!(message.len() <= 512, "{} bytes: {message}", message.len());
        }
    }

    #[test]
    fn a_pickled_x_is_bounded_by_its_start_layer_and_batch() {
        let image = floats(&vec![0.5; 2 * 3 * 32 * 32]);
        let two = pickle::write(PickleDtype::F32, &[2, 3, 32, 32], &image);
        assert_eq!(parse_pickled_x(&two, 0, 2).expect("fits").shape, [2, 3, 32, 32]);
        // One sample too many: refused by the reader before its copy, not after.
        assert!(matches!(
            parse_pickled_x(&two, 0, 1),
            Err(CodecError::BadPickle(m)) if m.contains("more than the 3072 elements")
        ));
    }
}
