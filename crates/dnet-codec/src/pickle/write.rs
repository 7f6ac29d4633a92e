//! The writer: `pickle.dumps` of a contiguous tensor in the form torch 1.7
//! reads (protocol 3 around the storage in torch's legacy serialization),
//! which the reader reads back to the same tensor.

use super::legacy::{LEGACY_VERSION, MAGIC_BYTES};
use super::machine::op;
use super::PickleDtype;

/// The storage's key in its persistent id; any string does, torch writes a number.
const KEY: &str = "0";

/// `pickle.dumps` of a contiguous tensor of `shape` whose elements are
/// `data` (little-endian), in the form torch 1.7 reads (protocol 3).
///
/// # Panics
/// When `data` does not hold exactly the elements of `shape`.
#[must_use]
pub fn write(dtype: PickleDtype, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    assert_eq!(data.len(), numel * dtype.size(), "data holds the shape's elements");
    let storage = legacy_storage(dtype, numel, data);

    let mut out = vec![op::PROTO, 3];
    out.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    out.extend_from_slice(b"ctorch.storage\n_load_from_bytes\n");
    out.push(op::BINBYTES);
    out.extend_from_slice(&u32::try_from(storage.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&storage);
    out.extend_from_slice(&[op::TUPLE1, op::REDUCE]);
    int(&mut out, 0);
    let mut strides = vec![1_usize; shape.len()];
    for dim in (0..shape.len().saturating_sub(1)).rev() {
        strides[dim] = strides[dim + 1] * shape[dim + 1];
    }
    for dims in [shape, strides.as_slice()] {
        out.push(op::MARK);
        for &d in dims {
            int(&mut out, i64::try_from(d).unwrap_or(i64::MAX));
        }
        out.push(op::TUPLE);
    }
    out.push(op::NEWFALSE);
    out.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    out.extend_from_slice(b"tR.");
    out
}

/// The storage, as `torch.save(storage, _use_new_zipfile_serialization=False)` writes it.
fn legacy_storage(dtype: PickleDtype, numel: usize, data: &[u8]) -> Vec<u8> {
    let mut storage = Vec::new();
    storage.extend_from_slice(&[op::PROTO, 2, op::LONG1, 10]);
    storage.extend_from_slice(&MAGIC_BYTES);
    storage.push(op::STOP);
    storage.extend_from_slice(&[op::PROTO, 2]);
    int(&mut storage, LEGACY_VERSION);
    storage.push(op::STOP);
    storage.extend_from_slice(&[op::PROTO, 2, op::EMPTY_DICT, op::MARK]);
    for (name, value) in [("protocol_version", None), ("little_endian", Some(true))] {
        string(&mut storage, name);
        match value {
            None => int(&mut storage, LEGACY_VERSION),
            Some(flag) => storage.push(if flag { op::NEWTRUE } else { op::NEWFALSE }),
        }
    }
    string(&mut storage, "type_sizes");
    storage.extend_from_slice(&[op::EMPTY_DICT, op::MARK]);
    for (name, size) in [("short", 2), ("int", 4), ("long", 4)] {
        string(&mut storage, name);
        int(&mut storage, size);
    }
    storage.extend_from_slice(&[op::SETITEMS, op::SETITEMS, op::STOP]);
    storage.extend_from_slice(&[op::PROTO, 2, op::MARK]);
    string(&mut storage, "storage");
    storage.extend_from_slice(format!("ctorch\n{}\n", dtype.storage()).as_bytes());
    string(&mut storage, KEY);
    string(&mut storage, "cpu");
    int(&mut storage, i64::try_from(numel).unwrap_or(i64::MAX));
    storage.extend_from_slice(&[op::NONE, op::TUPLE, op::BINPERSID, op::STOP]);
    storage.extend_from_slice(&[op::PROTO, 2, op::EMPTY_LIST]);
    string(&mut storage, KEY);
    storage.extend_from_slice(&[op::APPEND, op::STOP]);
    storage.extend_from_slice(&(numel as u64).to_le_bytes());
    storage.extend_from_slice(data);
    storage
}

fn string(out: &mut Vec<u8>, text: &str) {
    out.push(op::BINUNICODE);
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn int(out: &mut Vec<u8>, value: i64) {
    match i32::try_from(value) {
        Ok(small) => {
            out.push(op::BININT);
            out.extend_from_slice(&small.to_le_bytes());
        }
        Err(_) => {
            out.extend_from_slice(&[op::LONG1, 8]);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}
