//! Validation of what arrives on the wire, with no libtorch: small enough to
//! fuzz on its own (see `fuzz/`).
//!
//! Layout:
//! - `shapes`: the tensor shape at each trunk boundary (the `start_layer` contract).
//! - `x`: checking a safetensors `x` buffer (name, dtype, rank, shape, size, finite values).
//! - `pickle`: the original DNet's tensor pickles, read and written without executing them.
//! - `request`: decoding a `ComputationRequest` and checking its start layer for a unit of exit E.

pub mod pickle;
pub mod request;
pub mod shapes;
pub mod x;

pub use request::{check_start_layer, decode_request, parse_request};
pub use shapes::BOUNDARY_SHAPES;
pub use x::{parse_pickled_x, parse_x, CodecError, XDtype, XView};
