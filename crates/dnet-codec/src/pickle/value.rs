//! The values of the pickle machine: what its stack and memo hold. Values
//! share their items (`Rc`), so the memo never copies one, and each
//! container knows how deep it nests.

use std::rc::Rc;

use super::{PickleDtype, PickleError, PickledTensor};
use crate::echo;

/// The five globals a tensor pickle may name; each is interpreted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Global {
    RebuildTensor,
    LoadFromBytes,
    OrderedDict,
    Storage(PickleDtype),
}

impl Global {
    pub(super) fn named(module: &str, name: &str) -> Result<Global, PickleError> {
        match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
            ("torch.storage", "_load_from_bytes") => Ok(Global::LoadFromBytes),
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch", "FloatStorage") => Ok(Global::Storage(PickleDtype::F32)),
            ("torch", "LongStorage") => Ok(Global::Storage(PickleDtype::I64)),
            ("torch", storage) if storage.ends_with("Storage") => {
                Err(PickleError::Dtype(format!("torch.{}", echo::cut(storage))))
            }
            _ => Err(PickleError::Global(format!(
                "{}.{}",
                echo::cut(module),
                echo::cut(name)
            ))),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Global::RebuildTensor => "torch._utils._rebuild_tensor_v2",
            Global::LoadFromBytes => "torch.storage._load_from_bytes",
            Global::OrderedDict => "collections.OrderedDict",
            Global::Storage(PickleDtype::F32) => "torch.FloatStorage",
            Global::Storage(PickleDtype::I64) => "torch.LongStorage",
        }
    }
}

/// The items of a tuple, list or dict (keys and values alternating), and how
/// deep the container nests: 1 plus its deepest item's depth (0 for a value
/// that is not a container).
#[derive(Clone)]
pub(super) struct Items<'a> {
    pub values: Vec<Rc<Value<'a>>>,
    pub depth: usize,
}

impl Items<'_> {
    pub(super) fn empty() -> Self {
        Items {
            values: Vec::new(),
            depth: 1,
        }
    }
}

/// A storage's elements, little-endian, borrowed from the input.
#[derive(Clone, Copy)]
pub(super) struct Storage<'a> {
    pub dtype: PickleDtype,
    pub data: &'a [u8],
}

/// A value on the machine's stack. No `Debug` or `PartialEq`: values share
/// items, so walking one could take as long as its unshared form is large;
/// readers match the few small shapes they expect instead.
#[derive(Clone)]
pub(super) enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Tuple(Items<'a>),
    List(Items<'a>),
    Dict(Items<'a>),
    Global(Global),
    /// A storage named by a persistent id, its bytes to come after the pickles.
    StorageRef {
        dtype: PickleDtype,
        key: &'a str,
        numel: usize,
    },
    Storage(Storage<'a>),
    Tensor(PickledTensor),
}

impl Value<'_> {
    /// What the value is, for error messages (never its contents).
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::StorageRef { .. } | Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    pub(super) fn depth(&self) -> usize {
        match self {
            Value::Tuple(items) | Value::List(items) | Value::Dict(items) => items.depth,
            _ => 0,
        }
    }
}
