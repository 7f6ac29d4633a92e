//! Tensor encoding on the wire: safetensors buffers (architecture.md).
//!
//! `x` holds one tensor named `x` (F32; F16 and BF16 are accepted and
//! widened); `result` holds `category` (I64 [N]) and `probs` (F32 [N, 10]).

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use tch::{Kind, Tensor};

use crate::model::BOUNDARY_SHAPES;

/// Why `x` was rejected; each message says what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("x is empty; expected a safetensors buffer with one F32 tensor named \"x\"")]
    Empty,
    #[error("x looks like a Python pickle; DNet no longer accepts pickles (unpickling runs code): send a safetensors buffer with one F32 tensor named \"x\"")]
    Pickle,
    #[error("x is not a valid safetensors buffer ({0}); expected one F32 tensor named \"x\"")]
    NotSafetensors(String),
    #[error("x holds tensors {0:?}; expected exactly one tensor named \"x\"")]
    WrongNames(Vec<String>),
    #[error("x has dtype {0}; expected F32 (or F16/BF16)")]
    WrongDtype(String),
    #[error("x has rank {rank} (shape {shape:?}); expected rank 4: [N, {c}, {h}, {w}] for start_layer {start}", c = .expected[0], h = .expected[1], w = .expected[2])]
    WrongRank {
        rank: usize,
        shape: Vec<usize>,
        start: usize,
        expected: [i64; 3],
    },
    #[error("x has shape {shape:?}; start_layer {start} needs [N, {c}, {h}, {w}]", c = .expected[0], h = .expected[1], w = .expected[2])]
    WrongShape {
        shape: Vec<usize>,
        start: usize,
        expected: [i64; 3],
    },
    #[error("x holds {batch} samples; at most {max} fit the size limit")]
    TooLarge { batch: usize, max: usize },
    #[error("x contains NaN or infinite values; expected finite numbers")]
    NotFinite,
    #[error("start_layer {0} is out of range: expected 0..=15")]
    BadStartLayer(usize),
    #[error("cannot build a tensor from x: {0}")]
    Tensor(String),
}

/// Decodes and validates `x` for `start_layer`, at most `max_batch` samples.
///
/// # Errors
/// Any way in which `bytes` is not one finite F32 tensor named `x` shaped
/// [N, C, H, W] as trunk layer `start_layer` expects.
pub fn decode_x(bytes: &[u8], start_layer: usize, max_batch: usize) -> Result<Tensor, CodecError> {
    if bytes.is_empty() {
        return Err(CodecError::Empty);
    }
    // Pickle protocol 2+ starts with PROTO (0x80) then the protocol number.
    if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        return Err(CodecError::Pickle);
    }
    let expected = *BOUNDARY_SHAPES
        .get(start_layer)
        .ok_or(CodecError::BadStartLayer(start_layer))?;
    let buffer = SafeTensors::deserialize(bytes).map_err(|e| CodecError::NotSafetensors(e.to_string()))?;
    let names: Vec<String> = buffer.names().into_iter().map(str::to_owned).collect();
    if names != ["x"] {
        return Err(CodecError::WrongNames(names));
    }
    let view = buffer
        .tensor("x")
        .map_err(|e| CodecError::NotSafetensors(e.to_string()))?;
    let kind = match view.dtype() {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        other => return Err(CodecError::WrongDtype(format!("{other:?}"))),
    };
    let shape = view.shape().to_vec();
    if shape.len() != 4 {
        return Err(CodecError::WrongRank {
            rank: shape.len(),
            shape,
            start: start_layer,
            expected,
        });
    }
    let matches = shape[0] >= 1
        && shape[1..]
            .iter()
            .zip(expected)
            .all(|(&got, want)| i64::try_from(got) == Ok(want));
    if !matches {
        return Err(CodecError::WrongShape {
            shape,
            start: start_layer,
            expected,
        });
    }
    if shape[0] > max_batch {
        return Err(CodecError::TooLarge {
            batch: shape[0],
            max: max_batch,
        });
    }
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let tensor = Tensor::f_from_data_size(view.data(), &dims, kind)
        .and_then(|t| t.f_to_kind(Kind::Float))
        .map_err(|e| CodecError::Tensor(e.to_string()))?;
    let finite = tensor
        .f_isfinite()
        .and_then(|f| f.f_all())
        .map_err(|e| CodecError::Tensor(e.to_string()))?;
    if !bool::try_from(finite).unwrap_or(false) {
        return Err(CodecError::NotFinite);
    }
    Ok(tensor)
}

/// Encodes tensors into one safetensors buffer (moved to the CPU, contiguous).
///
/// # Errors
/// When a tensor has a dtype other than F32 or I64, or cannot be read.
pub fn encode(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>, CodecError> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = tensor.to_device(tch::Device::Cpu).contiguous();
        let (dtype, bytes) = match tensor.kind() {
            Kind::Float => (Dtype::F32, le_bytes::<f32, 4>(&tensor, f32::to_le_bytes)?),
            Kind::Int64 => (Dtype::I64, le_bytes::<i64, 8>(&tensor, i64::to_le_bytes)?),
            other => return Err(CodecError::Tensor(format!("cannot encode {name} of kind {other:?}"))),
        };
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        owned.push((name.to_string(), dtype, shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CodecError::Tensor(e.to_string()))?;
    safetensors::serialize(views, None).map_err(|e| CodecError::Tensor(e.to_string()))
}

fn le_bytes<T, const N: usize>(tensor: &Tensor, to_bytes: fn(T) -> [u8; N]) -> Result<Vec<u8>, CodecError>
where
    T: tch::kind::Element,
    Vec<T>: TryFrom<Tensor, Error = tch::TchError>,
{
    let values = Vec::<T>::try_from(tensor.flatten(0, -1)).map_err(|e| CodecError::Tensor(e.to_string()))?;
    Ok(values.into_iter().flat_map(to_bytes).collect())
}

/// Encodes a request's `x` (the trunk output to hand on).
///
/// # Errors
/// See [`encode`].
pub fn encode_x(x: &Tensor) -> Result<Vec<u8>, CodecError> {
    encode(&[("x", x)])
}

/// Encodes a `result`: `category` I64 [N] and `probs` F32 [N, 10].
///
/// # Errors
/// See [`encode`].
pub fn encode_result(category: &Tensor, probs: &Tensor) -> Result<Vec<u8>, CodecError> {
    encode(&[("category", category), ("probs", probs)])
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
    fn rejects_every_malformed_input_with_its_reason() {
        let good = encode_x(&image(1)).expect("encodes");
        assert!(matches!(decode_x(&[], 0, 8), Err(CodecError::Empty)));
        assert!(matches!(
            decode_x(&[0x80, 0x04, 0x95, 0, 0], 0, 8),
            Err(CodecError::Pickle)
        ));
        assert!(matches!(
            decode_x(b"garbage garbage garbage", 0, 8),
            Err(CodecError::NotSafetensors(_))
        ));
        assert!(matches!(
            decode_x(&good[..good.len() - 10], 0, 8),
            Err(CodecError::NotSafetensors(_))
        ));
        assert!(matches!(
            decode_x(&good, 1, 8),
            Err(CodecError::WrongShape { start: 1, .. })
        ));
        assert!(matches!(
            decode_x(&good, 0, 0),
            Err(CodecError::TooLarge { batch: 1, max: 0 })
        ));
        assert!(matches!(decode_x(&good, 16, 8), Err(CodecError::BadStartLayer(16))));
        let renamed = encode(&[("y", &image(1))]).expect("encodes");
        assert!(matches!(decode_x(&renamed, 0, 8), Err(CodecError::WrongNames(_))));
        let rank3 = encode_x(&Tensor::zeros([3, 32, 32], (Kind::Float, tch::Device::Cpu))).expect("encodes");
        assert!(matches!(
            decode_x(&rank3, 0, 8),
            Err(CodecError::WrongRank { rank: 3, .. })
        ));
        let ints = encode_x(&Tensor::zeros([1, 3, 32, 32], (Kind::Int64, tch::Device::Cpu))).expect("encodes");
        assert!(matches!(decode_x(&ints, 0, 8), Err(CodecError::WrongDtype(_))));
        let nan = encode_x(&image(1).fill_(f64::NAN)).expect("encodes");
        assert!(matches!(decode_x(&nan, 0, 8), Err(CodecError::NotFinite)));
    }
}
