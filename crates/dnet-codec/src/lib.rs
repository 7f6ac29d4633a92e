//! Validation of what arrives on the wire, with no libtorch: small enough to
//! fuzz on its own (see `fuzz/`).
//!
//! Layout:
//! - `shapes`: the tensor shape at each trunk boundary (the `start_layer` contract).
//! - `x`: checking a safetensors `x` buffer (name, dtype, rank, shape, size, finite values).
//! - `pickle`: the original DNet's tensor pickles, read (bounded by the caller's element count and fixed caps) and written without executing them.
//! - `request`: decoding a `ComputationRequest`, checking its start layer for a unit of exit E and its own thresholds.
//! - `answers`: the rows of a `result`; merging a unit's `answered` with the next unit's `result`.
//! - `bounds`: a range of thresholds (`LO..HI`).
//! - `echo`: input-derived text in error messages, cut to a bounded length.

pub mod answers;
pub mod bounds;
mod echo;
pub mod pickle;
pub mod request;
pub mod shapes;
pub mod x;

pub use answers::Answers;
pub use request::{check_start_layer, check_thresholds, decode_request, parse_request};
pub use shapes::BOUNDARY_SHAPES;
pub use x::{parse_pickled_x, parse_x, CodecError, XDtype, XView};
