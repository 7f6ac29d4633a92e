//! torch's legacy (pre-zip) serialization of one storage, what
//! `torch.storage._load_from_bytes` gets: five protocol-2 pickles (the magic
//! number, the format version, the system info, the storage's persistent id,
//! its keys), then the element count and the elements.
//!
//! The five pickles run on a machine in its storage role, which names only a
//! storage type and calls nothing: a storage or tensor inside a storage is
//! refused, so this never recurses. The elements are borrowed from the input.

use std::rc::Rc;

use super::machine::{Machine, Role};
use super::value::{Global, Storage, Value};
use super::PickleError;
use crate::echo;

/// The magic number that starts torch's legacy serialization
/// (0x1950a86a20f9469cfc6c), as LONG1 writes it: 10 bytes, little-endian.
pub(super) const MAGIC_BYTES: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
pub(super) const LEGACY_VERSION: i64 = 1001;

/// The storage `bytes` (`_load_from_bytes`'s argument) hold.
pub(super) fn storage(bytes: &[u8]) -> Result<Storage<'_>, PickleError> {
    // PROTO 2, then LONG1 of the 10-byte magic number (too wide for an i64: compared as bytes).
    if bytes.get(..4) != Some(&[0x80, 2, 0x8a, 10][..]) || bytes.get(4..14) != Some(&MAGIC_BYTES[..]) {
        return Err(PickleError::Shape(
            "the storage bytes do not start with torch's magic number".into(),
        ));
    }
    let mut machine = Machine::new(bytes, Role::Storage { persistent_id });
    machine.run()?; // the magic number, checked above
    let version = machine.next_pickle()?;
    if !matches!(*version, Value::Int(LEGACY_VERSION)) {
        return Err(unexpected("format version 1001", &version));
    }
    check_system_info(&*machine.next_pickle()?)?;
    let storage = machine.next_pickle()?;
    let Value::StorageRef { dtype, key, numel } = *storage else {
        return Err(unexpected("storage", &storage));
    };
    check_keys(&*machine.next_pickle()?, key)?;
    let stored = machine.length(8)?;
    if stored != numel {
        return Err(PickleError::Shape(format!(
            "the storage says {numel} elements, its data {stored}"
        )));
    }
    let size = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| PickleError::Shape("the storage size overflows".into()))?;
    let data = machine.take(size)?;
    Ok(Storage { dtype, data })
}

/// The storage a persistent id names: `('storage', torch.XStorage, key, location, numel, None)`.
pub(super) fn persistent_id<'a>(id: &Value<'a>) -> Result<Value<'a>, PickleError> {
    let Value::Tuple(fields) = id else {
        return Err(unexpected("persistent id (a tuple)", id));
    };
    let fields: Vec<&Value<'a>> = fields.values.iter().map(Rc::as_ref).collect();
    let [Value::Str("storage"), Value::Global(storage_type), Value::Str(key), Value::Str(location), Value::Int(numel), Value::None] =
        fields.as_slice()
    else {
        let kinds: Vec<&str> = fields.iter().map(|field| field.kind()).collect();
        return Err(PickleError::Shape(format!(
            "a persistent id of {}, not ('storage', type, key, location, numel, None)",
            echo::list(&kinds)
        )));
    };
    let Global::Storage(dtype) = *storage_type else {
        return Err(PickleError::Shape("a persistent id whose type is not a storage".into()));
    };
    if !(location.starts_with("cpu") || location.starts_with("cuda")) {
        return Err(PickleError::Shape(format!(
            "a storage on {}, not the CPU or a GPU",
            echo::cut(location)
        )));
    }
    let numel = usize::try_from(*numel).map_err(|_| PickleError::Shape("a negative storage size".into()))?;
    Ok(Value::StorageRef { dtype, key, numel })
}

/// The system info: a dict that says `little_endian: True`.
fn check_system_info(info: &Value<'_>) -> Result<(), PickleError> {
    let Value::Dict(items) = info else {
        return Err(unexpected("system info", info));
    };
    let little_endian = items
        .values
        .chunks_exact(2)
        .any(|pair| matches!((&*pair[0], &*pair[1]), (Value::Str("little_endian"), Value::Bool(true))));
    if !little_endian {
        return Err(PickleError::Shape("the storage was not written little-endian".into()));
    }
    Ok(())
}

/// The keys: a list of the one storage's key.
fn check_keys(keys: &Value<'_>, key: &str) -> Result<(), PickleError> {
    let Value::List(items) = keys else {
        return Err(unexpected("storage keys", keys));
    };
    match items.values.as_slice() {
        [only] if matches!(**only, Value::Str(listed) if listed == key) => Ok(()),
        _ => Err(PickleError::Shape("the storage keys do not match".into())),
    }
}

fn unexpected(expected: &str, value: &Value<'_>) -> PickleError {
    PickleError::Shape(format!("expected the {expected}, found {}", value.kind()))
}
