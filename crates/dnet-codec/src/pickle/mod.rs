//! The original DNet's tensor format, `pickle.dumps(tensor)` of a CPU torch
//! tensor, read and written without executing anything. It is a parser of
//! exactly that format, not an unpickler: it knows the opcodes such a pickle
//! uses and five globals, each of which it interprets itself, and refuses
//! anything else, naming what it found.
//!
//! The format (docs/architecture.md, "Mixing with the original programs"):
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//! requires_grad, collections.OrderedDict())`, where `storage` is
//! `torch.storage._load_from_bytes(b)` and `b` is torch's legacy (pre-zip)
//! serialization of the storage: five protocol-2 pickles (a magic number,
//! the format version 1001, the machine's byte order and type sizes, the
//! storage as a persistent id `('storage', torch.FloatStorage | torch.LongStorage,
//! key, location, numel, None)`, the list of keys), then the storage's bytes
//! (an 8-byte element count and the elements, little-endian). torch 1.7 writes
//! the outer pickle with protocol 3 (`GLOBAL`, `BINPUT`), today's torch with
//! protocol 4 (`STACK_GLOBAL`, `MEMOIZE`, `FRAME`); both are read. What this
//! writes is protocol 3 around the same storage bytes, which torch 1.7 reads.
//!
//! A remote caller controls every byte, so the reader is bounded before it
//! allocates or nests: the caller of [`read`] states the most elements it
//! accepts, and a larger tensor is refused before its copy is reserved (a
//! view that reads an element twice, stride 0 or overlapping, counts each
//! read); the `MAX_*` caps below bound the rest. Values the memo holds are
//! shared, never copied; nesting is a counter checked as containers are built,
//! not the call stack; the storage's pickles are read by one sub-reader that
//! refuses another storage or tensor inside them. Input-derived text in an
//! error is cut (`crate::echo`), so every message is at most
//! [`MAX_MESSAGE_BYTES`].
//!
//! Layout:
//! - here: the public API, its types, errors and limits;
//! - `machine`: the opcode machine, restricted to a tensor pickle's opcodes and globals;
//! - `value`: what the machine's stack and memo hold;
//! - `legacy`: torch's legacy storage serialization (what `_load_from_bytes` gets);
//! - `tensor`: `_rebuild_tensor_v2`, a storage viewed with a size and strides, copied contiguous;
//! - `write`: the writer.

mod legacy;
mod machine;
mod tensor;
mod value;
mod write;

use std::fmt;

pub use write::write;

/// Element type of a pickled tensor: the original's inputs and hand-on
/// tensors are F32, its results I64 categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickleDtype {
    F32,
    I64,
}

impl PickleDtype {
    fn size(self) -> usize {
        match self {
            PickleDtype::F32 => 4,
            PickleDtype::I64 => 8,
        }
    }

    fn storage(self) -> &'static str {
        match self {
            PickleDtype::F32 => "FloatStorage",
            PickleDtype::I64 => "LongStorage",
        }
    }
}

/// A tensor read from a pickle: its elements contiguous, little-endian.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickledTensor {
    pub dtype: PickleDtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Opcodes one pickle may run. `pickle.dumps` of a tensor runs about 50
/// (protocol 4, FRAME and MEMOIZE included), each of the storage's five
/// pickles at most 30; 1024 is a twentyfold margin and keeps a pickle's stack
/// (one value per opcode at most) small.
pub const MAX_OPCODES: usize = 1024;

/// Containers nested in one another, and MARKs open at once. A tensor pickle
/// nests 2 deep (the size tuple inside the arguments of `_rebuild_tensor_v2`;
/// `type_sizes` inside the storage's system-info dict); 8 leaves room for
/// other torch versions and bounds the recursion of dropping a value.
pub const MAX_DEPTH: usize = 8;

/// Memo entries per pickle. A protocol-4 tensor pickle memoizes 17 values,
/// each of the storage's pickles at most 8; 64 is a margin of three.
pub const MAX_MEMO: usize = 64;

/// Items in one container (a dict counts keys and values). The longest in a
/// tensor pickle is the 6 or 7 arguments of `_rebuild_tensor_v2` (and the
/// 6-field persistent id, the 3-pair system-info dict); 64 is a margin of
/// nine, and a size or stride of rank 64, far beyond a DNet tensor's 4.
pub const MAX_LENGTH: usize = 64;

/// Storages one pickle may hold: `pickle.dumps(tensor)` holds exactly one
/// (and its bytes hold one persistent id); a second, or a storage nested in a
/// storage, is refused.
pub const MAX_STORAGES: usize = 1;

/// Tensors one pickle may build: exactly one. Each is a copy of up to the
/// caller's element bound, so a second (the same storage viewed twice) would
/// multiply what the bound allows.
pub const MAX_TENSORS: usize = 1;

/// The longest message a [`PickleError`] has: input-derived text in it is
/// cut to `crate::echo::MAX_ECHO_BYTES` (at most two such pieces per message).
pub const MAX_MESSAGE_BYTES: usize = 512;

/// A cap of this reader (the `MAX_*` consts), which a pickle went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Opcodes,
    Depth,
    Memo,
    Length,
    Storages,
    Tensors,
}

impl Limit {
    /// The cap itself.
    #[must_use]
    pub fn cap(self) -> usize {
        match self {
            Limit::Opcodes => MAX_OPCODES,
            Limit::Depth => MAX_DEPTH,
            Limit::Memo => MAX_MEMO,
            Limit::Length => MAX_LENGTH,
            Limit::Storages => MAX_STORAGES,
            Limit::Tensors => MAX_TENSORS,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Limit::Opcodes => "opcodes in one pickle",
            Limit::Depth => "containers nested (or MARKs open) at once",
            Limit::Memo => "memo entries",
            Limit::Length => "items in one container",
            Limit::Storages => "storages",
            Limit::Tensors => "tensors",
        };
        write!(f, "at most {} {what}", self.cap())
    }
}

/// Why bytes are not a tensor pickle this module reads. Every message is at
/// most [`MAX_MESSAGE_BYTES`] long.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PickleError {
    #[error("the pickle ends early (at byte {0})")]
    Truncated(usize),
    #[error("pickle opcode 0x{opcode:02x} at byte {at} is not one a torch tensor pickle uses: refused")]
    Opcode { opcode: u8, at: usize },
    #[error(
        "the pickle calls {0}, which is not one of the globals a torch tensor pickle uses: refused, nothing executed"
    )]
    Global(String),
    #[error("the storage's own pickles name {0}: only a storage type belongs there (no storage or tensor inside a storage): refused")]
    InsideStorage(String),
    #[error("not a torch tensor pickle: {0}")]
    Shape(String),
    #[error("a tensor of {0} is not read: only float32 tensors and int64 categories travel between DNet units")]
    Dtype(String),
    #[error(
        "the tensor's size {size} holds more than the {max} elements this reader accepts: refused before copying it"
    )]
    TooManyElements { size: String, max: usize },
    #[error("the pickle goes over {limit} (at byte {at}): refused")]
    Limit { limit: Limit, at: usize },
    #[error("{0} bytes for the tensor could not be reserved")]
    OutOfMemory(usize),
}

/// Reads `pickle.dumps(tensor)` of a float32 or int64 CPU tensor of at most
/// `max_elements` elements (a view that reads an element twice counts it twice).
///
/// # Errors
/// Anything else: another global, an opcode such a pickle does not use,
/// truncated data, a storage that does not hold the shape, another dtype, more
/// than `max_elements` elements, or a pickle over one of the `MAX_*` caps.
pub fn read(bytes: &[u8], max_elements: usize) -> Result<PickledTensor, PickleError> {
    let value = machine::Machine::new(bytes, tensor_pickle(max_elements)).run()?;
    // The machine (its stack and memo) is gone: nothing else holds the value,
    // so unwrapping it moves the tensor rather than copying it.
    match std::rc::Rc::unwrap_or_clone(value) {
        value::Value::Tensor(tensor) => Ok(tensor),
        other => Err(PickleError::Shape(format!(
            "the pickle holds {}, not a tensor",
            other.kind()
        ))),
    }
}

/// The outer pickle's role: its storage read in torch's legacy format, its
/// tensor rebuilt within `max_elements`.
fn tensor_pickle(max_elements: usize) -> machine::Role {
    machine::Role::Tensor {
        max_elements,
        load_storage: legacy::storage,
        rebuild: tensor::rebuild,
    }
}

/// Whether `bytes` start like a pickle (protocol 2 or later), not a safetensors buffer.
#[must_use]
pub fn looks_like_pickle(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x80) && bytes.get(1).is_some_and(|&protocol| (2..=5).contains(&protocol))
}

#[cfg(test)]
mod tests;
