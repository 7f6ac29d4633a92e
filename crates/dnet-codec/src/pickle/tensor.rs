//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//! requires_grad, hooks)`: the storage viewed with a size and strides, copied
//! contiguous.
//!
//! The copy has as many elements as the size says, whatever the strides (a
//! stride-0 or overlapping view reads one stored element many times), so the
//! caller's element bound is checked against the size before anything is
//! reserved, and the reservation is fallible.

use std::rc::Rc;

use super::value::{Storage, Value};
use super::{PickleError, PickledTensor};
use crate::echo;

/// The tensor `_rebuild_tensor_v2(args)` makes, of at most `max_elements` elements.
pub(super) fn rebuild(args: &[Rc<Value<'_>>], max_elements: usize) -> Result<PickledTensor, PickleError> {
    let [storage, offset, size, stride, requires_grad, hooks, rest @ ..] = args else {
        return Err(PickleError::Shape(format!(
            "_rebuild_tensor_v2 called with {} arguments, not 6 or more",
            args.len()
        )));
    };
    if !is_empty(hooks) || !rest.iter().all(|r| is_empty(r)) {
        return Err(PickleError::Shape("a tensor with backward hooks or metadata".into()));
    }
    if !matches!(**requires_grad, Value::Bool(_)) {
        return Err(PickleError::Shape(format!(
            "requires_grad is {}, not a bool",
            requires_grad.kind()
        )));
    }
    let Value::Storage(storage) = **storage else {
        return Err(PickleError::Shape(format!(
            "the tensor's storage is {}, not a storage",
            storage.kind()
        )));
    };
    let Value::Int(offset) = **offset else {
        return Err(PickleError::Shape("the storage offset is not an int".into()));
    };
    let offset = usize::try_from(offset).map_err(|_| PickleError::Shape("a negative storage offset".into()))?;
    let view = View {
        offset,
        shape: ints(size, "size")?,
        strides: ints(stride, "stride")?,
    };
    view.copy(storage, max_elements)
}

/// How a tensor reads its storage: element `index` lies at
/// `offset + sum(index[d] * strides[d])`.
struct View {
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl View {
    /// The elements the view reads, contiguous, once checked against
    /// `max_elements` and the storage's length.
    fn copy(self, storage: Storage<'_>, max_elements: usize) -> Result<PickledTensor, PickleError> {
        if self.shape.len() != self.strides.len() {
            return Err(PickleError::Shape("size and stride differ in rank".into()));
        }
        let count = self.shape.iter().try_fold(1_usize, |n, &d| n.checked_mul(d));
        let Some(count) = count.filter(|&count| count <= max_elements) else {
            return Err(PickleError::TooManyElements {
                size: echo::list(&self.shape),
                max: max_elements,
            });
        };
        let element = storage.dtype.size();
        let stored = storage.data.len() / element;
        if count > 0 && self.last().is_none_or(|last| last >= stored) {
            return Err(PickleError::Shape(format!(
                "the storage holds {stored} elements, fewer than the size {} with stride {} at offset {} reads",
                echo::list(&self.shape),
                echo::list(&self.strides),
                self.offset
            )));
        }
        // Overflows only when the caller's bound does not fit memory anyway.
        let bytes = count.checked_mul(element).ok_or_else(|| PickleError::TooManyElements {
            size: echo::list(&self.shape),
            max: max_elements,
        })?;
        let mut out = Vec::new();
        out.try_reserve_exact(bytes)
            .map_err(|_| PickleError::OutOfMemory(bytes))?;
        self.read_into(&mut out, storage.data, element, count)?;
        Ok(PickledTensor {
            dtype: storage.dtype,
            shape: self.shape,
            data: out,
        })
    }

    /// The index of the last element the view reads (strides are not
    /// negative, so it is the largest); `None` when it overflows.
    fn last(&self) -> Option<usize> {
        self.shape
            .iter()
            .zip(&self.strides)
            .try_fold(self.offset, |at, (&d, &s)| {
                at.checked_add(d.saturating_sub(1).checked_mul(s)?)
            })
    }

    /// Appends the `count` elements in row-major order. Every position lies
    /// at or below [`View::last`], checked in range, so nothing overflows.
    fn read_into(&self, out: &mut Vec<u8>, data: &[u8], element: usize, count: usize) -> Result<(), PickleError> {
        let mut index = vec![0_usize; self.shape.len()];
        for _ in 0..count {
            let at = self.offset + index.iter().zip(&self.strides).map(|(i, s)| i * s).sum::<usize>();
            let bytes = data
                .get(at * element..(at + 1) * element)
                .ok_or_else(|| PickleError::Shape(format!("element {at} lies outside the storage")))?;
            out.extend_from_slice(bytes);
            for dim in (0..self.shape.len()).rev() {
                index[dim] += 1;
                if index[dim] < self.shape[dim] {
                    break;
                }
                index[dim] = 0;
            }
        }
        Ok(())
    }
}

/// None or an empty dict: no backward hooks, no metadata.
fn is_empty(value: &Value<'_>) -> bool {
    match value {
        Value::None => true,
        Value::Dict(items) => items.values.is_empty(),
        _ => false,
    }
}

/// A tuple of non-negative ints (a size or stride).
fn ints(value: &Value<'_>, what: &str) -> Result<Vec<usize>, PickleError> {
    let Value::Tuple(items) = value else {
        return Err(PickleError::Shape(format!(
            "the {what} is {}, not a tuple",
            value.kind()
        )));
    };
    items
        .values
        .iter()
        .map(|item| match **item {
            Value::Int(n) => usize::try_from(n).map_err(|_| PickleError::Shape(format!("a negative {what}"))),
            _ => Err(PickleError::Shape(format!(
                "the {what} holds {}, not an int",
                item.kind()
            ))),
        })
        .collect()
}
