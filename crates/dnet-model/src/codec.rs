//! Tensor encoding on the wire: safetensors buffers (docs/architecture.md, "Tensor encoding").
//! Validation lives in the libtorch-free `dnet-codec` crate (fuzzed); this
//! module turns checked bytes into tensors and tensors into bytes.
//!
//! `x` holds one tensor named `x` (F32; F16 and BF16 are accepted and
//! widened); `result` holds `category` (I64 [N]), `probs` (F32 [N, 10]) and
//! `exit_layer` (I64 [N]).

use safetensors::tensor::{Dtype, TensorView};
use tch::{Kind, Tensor};

use dnet_codec::pickle::{self, PickleDtype};
use dnet_codec::{parse_pickled_x, parse_x, XDtype};

pub use dnet_codec::CodecError;

/// Why `x` could not become a tensor.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(transparent)]
    Invalid(#[from] CodecError),
    #[error("cannot build a tensor from x: {0}")]
    Tensor(String),
}

/// Decodes and validates `x` for `start_layer`, at most `max_batch` samples,
/// into an F32 tensor (validation: `dnet_codec::parse_x`).
///
/// # Errors
/// Any way in which `bytes` is not one finite F32 tensor named `x` shaped
/// [N, C, H, W] as trunk layer `start_layer` expects.
pub fn decode_x(bytes: &[u8], start_layer: usize, max_batch: usize) -> Result<Tensor, DecodeError> {
    let x = parse_x(bytes, start_layer, max_batch)?;
    let kind = match x.dtype {
        XDtype::F32 => Kind::Float,
        XDtype::F16 => Kind::Half,
        XDtype::BF16 => Kind::BFloat16,
    };
    let dims = x.shape.map(|d| d as i64);
    Tensor::f_from_data_size(x.data, &dims, kind)
        .and_then(|t| t.f_to_kind(Kind::Float))
        .map_err(|e| DecodeError::Tensor(e.to_string()))
}

// safetensors is little-endian, and tensors are copied out as they lie in memory.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "safetensors encoding assumes a little-endian machine"
);

/// Decodes and validates a pickled `x` (the original DNet's format, read with
/// `--legacy-pickle`; validation: `dnet_codec::parse_pickled_x`) into an F32 tensor.
///
/// # Errors
/// Not an F32 tensor pickle shaped [N, C, H, W] for `start_layer`, finite.
pub fn decode_pickled_x(bytes: &[u8], start_layer: usize, max_batch: usize) -> Result<Tensor, DecodeError> {
    let x = parse_pickled_x(bytes, start_layer, max_batch)?;
    let dims: Vec<i64> = x.shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(&x.data, &dims, Kind::Float).map_err(|e| DecodeError::Tensor(e.to_string()))
}

/// `pickle.dumps(tensor)` as the original DNet writes it, for an F32 or I64 tensor.
///
/// # Errors
/// Another dtype, or a tensor that cannot be read.
pub fn encode_pickle(tensor: &Tensor) -> Result<Vec<u8>, DecodeError> {
    let tensor = tensor.to_device(tch::Device::Cpu).contiguous();
    let dtype = match tensor.kind() {
        Kind::Float => PickleDtype::F32,
        Kind::Int64 => PickleDtype::I64,
        other => return Err(DecodeError::Tensor(format!("cannot pickle a tensor of kind {other:?}"))),
    };
    let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
    Ok(pickle::write(dtype, &shape, &raw_bytes(&tensor)?))
}

/// The elements of a contiguous CPU tensor as they lie in memory.
fn raw_bytes(tensor: &Tensor) -> Result<Vec<u8>, DecodeError> {
    let numel = tensor.numel();
    let mut bytes = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
    tensor
        .f_copy_data_u8(&mut bytes, numel)
        .map_err(|e| DecodeError::Tensor(e.to_string()))?;
    Ok(bytes)
}

/// Encodes tensors into one safetensors buffer (moved to the CPU, contiguous).
///
/// # Errors
/// When a tensor has a dtype other than F32, F16, BF16 or I64, or cannot be read.
pub fn encode(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>, DecodeError> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = tensor.to_device(tch::Device::Cpu).contiguous();
        let dtype = match tensor.kind() {
            Kind::Float => Dtype::F32,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Int64 => Dtype::I64,
            other => return Err(DecodeError::Tensor(format!("cannot encode {name} of kind {other:?}"))),
        };
        let bytes = raw_bytes(&tensor)?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        owned.push((name.to_string(), dtype, shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DecodeError::Tensor(e.to_string()))?;
    safetensors::serialize(views, None).map_err(|e| DecodeError::Tensor(e.to_string()))
}

/// Encodes a request's `x` (the trunk output to hand on).
///
/// # Errors
/// See [`encode`].
pub fn encode_x(x: &Tensor) -> Result<Vec<u8>, DecodeError> {
    encode(&[("x", x)])
}

/// Encodes a `result` (or an `answered`): `category` I64 [N], `probs` F32
/// [N, 10] and `exit_layer` I64 [N] (0: handed on).
///
/// # Errors
/// See [`encode`].
pub fn encode_result(category: &Tensor, probs: &Tensor, exit_layer: &Tensor) -> Result<Vec<u8>, DecodeError> {
    encode(&[("category", category), ("probs", probs), ("exit_layer", exit_layer)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: i64) -> Tensor {
        Tensor::rand([n, 3, 32, 32], (Kind::Float, tch::Device::Cpu))
    }

    #[test]
    fn round_trips_x() {
        let x = image(2);
        let decoded = decode_x(&encode_x(&x).expect("encodes"), 0, 8).expect("decodes");
        assert!(decoded.equal(&x));
    }

    #[test]
    fn writes_half_precision_that_reads_back_widened() {
        for kind in [Kind::Half, Kind::BFloat16] {
            let x = image(2).to_kind(kind);
            let decoded = decode_x(&encode_x(&x).expect("encodes"), 0, 8).expect("decodes");
            assert_eq!(decoded.kind(), Kind::Float);
            assert!(decoded.equal(&x.to_kind(Kind::Float)), "{kind:?}");
        }
    }

    #[test]
    fn accepts_half_precision() {
        let x = image(1).to_kind(Kind::Half);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.safetensors");
        Tensor::write_safetensors(&[("x", &x)], &path).expect("tch writes F16");
        let decoded = decode_x(&std::fs::read(&path).expect("read"), 0, 1).expect("F16 is accepted");
        assert_eq!(decoded.kind(), Kind::Float);
        assert!(decoded.allclose(&x.to_kind(Kind::Float), 0.0, 0.0, false));
    }

    #[test]
    fn rejects_what_dnet_codec_rejects() {
        let good = encode_x(&image(1)).expect("encodes");
        assert!(matches!(
            decode_x(&good, 1, 8),
            Err(DecodeError::Invalid(CodecError::WrongShape { start: 1, .. }))
        ));
        let ints = encode_x(&Tensor::zeros([1, 3, 32, 32], (Kind::Int64, tch::Device::Cpu))).expect("encodes");
        assert!(matches!(
            decode_x(&ints, 0, 8),
            Err(DecodeError::Invalid(CodecError::WrongDtype(_)))
        ));
        let nan = encode_x(&image(1).fill_(f64::NAN)).expect("encodes");
        assert!(matches!(
            decode_x(&nan, 0, 8),
            Err(DecodeError::Invalid(CodecError::NotFinite))
        ));
    }
}
