//! Hostile forms of the original DNet's tensor pickle (`pickle.dumps(tensor)`,
//! what a unit started with `--legacy-pickle` reads), as bytes: each is
//! refused by `dnet_codec::pickle::read` with a short message, quickly and
//! without a large allocation; an earlier reader aborted, overflowed its
//! stack or grew by gigabytes on them.
//!
//! Each is built like the original's pickles (torch 1.7's protocol 3:
//! `_rebuild_tensor_v2(_load_from_bytes(storage), 0, size, stride, False,
//! OrderedDict())` around an F32 storage in torch's legacy serialization)
//! and changed in one place, so that it gets past the checks in front and
//! reaches the reader's deep paths. Built by hand, opcode by opcode: the kit
//! does not depend on `dnet-codec`, which tests with it.

/// Every hostile form, named: `(name, pickle)`.
#[must_use]
pub fn pickles() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "stride-0 view of a 1-element storage as 2^40 elements",
            stride_zero_view(),
        ),
        (
            "overlapping strides: 2^40 elements of a 4093-element storage",
            overlapping_view(),
        ),
        ("a million TUPLE1 nested as requires_grad", nested_tuples()),
        ("memo doubling: put, get, pair, 48 rounds", memo_doubling()),
        ("legacy storages nested 200 deep", nested_storages()),
        ("a 100 KB global name", huge_global_name()),
        (
            "a 100 KB storage location in the persistent id",
            huge_storage_location(),
        ),
        ("one storage loaded 10,000 times", storage_loaded_again()),
        ("a storage put in 10,000 memo entries", storage_memoized()),
        ("a storage put in one memo entry 100,000 times", storage_put_again()),
        ("64 tensors viewing one storage", tensors_of_one_storage()),
        ("a size and stride of rank 200", rank_200()),
    ]
}

// The opcodes these forms use (Python's pickle.py names).
const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const REDUCE: u8 = b'R';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const BINGET: u8 = b'h';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const LONG1: u8 = 0x8a;
const BINBYTES: u8 = b'B';
const BINUNICODE: u8 = b'X';
const NEWFALSE: u8 = 0x89;
const NEWTRUE: u8 = 0x88;
const NONE: u8 = b'N';
const EMPTY_DICT: u8 = b'}';
const EMPTY_LIST: u8 = b']';
const SETITEMS: u8 = b'u';
const APPEND: u8 = b'a';
const BINPERSID: u8 = b'Q';

/// torch's legacy magic number, as LONG1 writes it.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const REBUILD_TENSOR: &[u8] = b"ctorch._utils\n_rebuild_tensor_v2\n";
const LOAD_FROM_BYTES: &[u8] = b"ctorch.storage\n_load_from_bytes\n";
const ORDERED_DICT: &[u8] = b"ccollections\nOrderedDict\n";

fn stride_zero_view() -> Vec<u8> {
    tensor(&storage_call(&storage(1)), &[1 << 10; 4], &[0; 4], &[NEWFALSE])
}

/// Size [1024; 4] with strides [1; 4] reads elements 0..=4092, each many times.
fn overlapping_view() -> Vec<u8> {
    tensor(&storage_call(&storage(4093)), &[1 << 10; 4], &[1; 4], &[NEWFALSE])
}

fn nested_tuples() -> Vec<u8> {
    let mut requires_grad = vec![NEWFALSE];
    requires_grad.resize(1 + 1_000_000, TUPLE1);
    image(&requires_grad)
}

/// Each round pairs the value with itself: a reader that copies what the
/// memo gives doubles its memory every 5 bytes.
fn memo_doubling() -> Vec<u8> {
    let mut requires_grad = vec![NEWFALSE];
    for _ in 0..48 {
        requires_grad.extend_from_slice(&[BINPUT, 0, BINGET, 0, TUPLE2]);
    }
    image(&requires_grad)
}

/// Each level's storage bytes load the next level's storage in their first
/// pickle (the magic number's), then go on as a storage does.
fn nested_storages() -> Vec<u8> {
    let mut inner = storage(1);
    for _ in 0..200 {
        let mut outer = vec![PROTO, 2, LONG1, 10];
        outer.extend_from_slice(&MAGIC);
        outer.extend_from_slice(&storage_call(&inner));
        outer.push(STOP);
        let plain = storage(1);
        // The rest of a storage: what follows its magic number's pickle.
        outer.extend_from_slice(&plain[15..]);
        inner = outer;
    }
    tensor(&storage_call(&inner), &[1], &[1], &[NEWFALSE])
}

fn huge_global_name() -> Vec<u8> {
    let mut pickle = image(&[NEWFALSE]);
    let module = format!("torch.{}", "_".repeat(100_000));
    let at = 2 + 1; // after PROTO 3 and GLOBAL's opcode
    pickle.splice(at..at + "torch._utils".len(), module.bytes());
    pickle
}

fn huge_storage_location() -> Vec<u8> {
    let location = "x".repeat(100_000);
    tensor(&storage_call(&storage_at(1, &location)), &[1], &[1], &[NEWFALSE])
}

/// The storage's bytes memoized once, then loaded again and again: a reader
/// that copies the bytes for each load grows by the storage per 6 bytes.
fn storage_loaded_again() -> Vec<u8> {
    let mut call = LOAD_FROM_BYTES.to_vec();
    call.extend_from_slice(&[BINPUT, 1]);
    bytes(&mut call, &storage(4096));
    call.extend_from_slice(&[BINPUT, 2, TUPLE1, REDUCE]);
    let mut requires_grad = vec![MARK];
    for _ in 0..10_000 {
        requires_grad.extend_from_slice(&[BINGET, 1, BINGET, 2, TUPLE1, REDUCE]);
    }
    requires_grad.push(TUPLE);
    tensor(&call, &[1], &[1], &requires_grad)
}

/// A 16 KB storage put in 10,000 memo entries (5 bytes each).
fn storage_memoized() -> Vec<u8> {
    let mut call = storage_call(&storage(4096));
    for index in 0..10_000_u32 {
        call.push(LONG_BINPUT);
        call.extend_from_slice(&index.to_le_bytes());
    }
    tensor(&call, &[1], &[1], &[NEWFALSE])
}

/// A 16 KB storage put in the same memo entry 100,000 times (2 bytes each):
/// a reader that copies what it memoizes copies 1.6 GB.
fn storage_put_again() -> Vec<u8> {
    let mut call = storage_call(&storage(4096));
    for _ in 0..100_000 {
        call.extend_from_slice(&[BINPUT, 0]);
    }
    tensor(&call, &[1], &[1], &[NEWFALSE])
}

/// 64 tensors of [64, 3, 32, 32] (stride 0) from one memoized 1-element
/// storage: each alone fits a start-layer-0 request of 64 samples, together
/// they are 64 copies.
fn tensors_of_one_storage() -> Vec<u8> {
    let (size, stride) = ([64, 3, 32, 32], [0; 4]);
    let mut pickle = vec![PROTO, 3, MARK];
    pickle.extend_from_slice(REBUILD_TENSOR);
    pickle.extend_from_slice(&[BINPUT, 1, MARK]);
    pickle.extend_from_slice(&storage_call(&storage(1)));
    pickle.extend_from_slice(&[BINPUT, 2]);
    arguments_after_storage(&mut pickle, &size, &stride, &[NEWFALSE]);
    pickle.extend_from_slice(&[TUPLE, REDUCE]);
    for _ in 1..64 {
        pickle.extend_from_slice(&[BINGET, 1, MARK, BINGET, 2]);
        arguments_after_storage(&mut pickle, &size, &stride, &[NEWFALSE]);
        pickle.extend_from_slice(&[TUPLE, REDUCE]);
    }
    pickle.extend_from_slice(&[TUPLE, STOP]);
    pickle
}

fn rank_200() -> Vec<u8> {
    tensor(&storage_call(&storage(1)), &[1; 200], &[0; 200], &[NEWFALSE])
}

// The original's pickle, piece by piece.

/// A plausible `x`: a [1, 3, 32, 32] tensor with its storage, with
/// `requires_grad` given as opcodes.
fn image(requires_grad: &[u8]) -> Vec<u8> {
    let numel = 3 * 32 * 32;
    tensor(
        &storage_call(&storage(numel)),
        &[1, 3, 32, 32],
        &[3072, 1024, 32, 1],
        requires_grad,
    )
}

/// `_rebuild_tensor_v2(storage, 0, size, stride, requires_grad, OrderedDict())`
/// where `storage` and `requires_grad` are opcodes that push one value each.
fn tensor(storage: &[u8], size: &[u64], stride: &[u64], requires_grad: &[u8]) -> Vec<u8> {
    let mut pickle = vec![PROTO, 3];
    pickle.extend_from_slice(REBUILD_TENSOR);
    pickle.push(MARK);
    pickle.extend_from_slice(storage);
    arguments_after_storage(&mut pickle, size, stride, requires_grad);
    pickle.extend_from_slice(&[TUPLE, REDUCE, STOP]);
    pickle
}

/// The offset 0, size, stride, requires_grad and hooks.
fn arguments_after_storage(pickle: &mut Vec<u8>, size: &[u64], stride: &[u64], requires_grad: &[u8]) {
    int(pickle, 0);
    for dims in [size, stride] {
        pickle.push(MARK);
        for &d in dims {
            int(pickle, d);
        }
        pickle.push(TUPLE);
    }
    pickle.extend_from_slice(requires_grad);
    pickle.extend_from_slice(ORDERED_DICT);
    pickle.extend_from_slice(&[b')', REDUCE]);
}

/// `_load_from_bytes(storage)`.
fn storage_call(storage: &[u8]) -> Vec<u8> {
    let mut call = LOAD_FROM_BYTES.to_vec();
    bytes(&mut call, storage);
    call.extend_from_slice(&[TUPLE1, REDUCE]);
    call
}

/// An F32 storage of `numel` ones on the CPU, in torch's legacy serialization.
fn storage(numel: u64) -> Vec<u8> {
    storage_at(numel, "cpu")
}

fn storage_at(numel: u64, location: &str) -> Vec<u8> {
    let mut out = vec![PROTO, 2, LONG1, 10];
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[STOP, PROTO, 2]);
    int(&mut out, 1001);
    out.extend_from_slice(&[STOP, PROTO, 2, EMPTY_DICT, MARK]);
    string(&mut out, "protocol_version");
    int(&mut out, 1001);
    string(&mut out, "little_endian");
    out.push(NEWTRUE);
    string(&mut out, "type_sizes");
    out.extend_from_slice(&[EMPTY_DICT, MARK]);
    for (name, size) in [("short", 2), ("int", 4), ("long", 4)] {
        string(&mut out, name);
        int(&mut out, size);
    }
    out.extend_from_slice(&[SETITEMS, SETITEMS, STOP, PROTO, 2, MARK]);
    string(&mut out, "storage");
    out.extend_from_slice(b"ctorch\nFloatStorage\n");
    string(&mut out, "0");
    string(&mut out, location);
    int(&mut out, numel);
    out.extend_from_slice(&[NONE, TUPLE, BINPERSID, STOP, PROTO, 2, EMPTY_LIST]);
    string(&mut out, "0");
    out.extend_from_slice(&[APPEND, STOP]);
    out.extend_from_slice(&numel.to_le_bytes());
    for _ in 0..numel {
        out.extend_from_slice(&1.0_f32.to_le_bytes());
    }
    out
}

fn bytes(out: &mut Vec<u8>, data: &[u8]) {
    out.push(BINBYTES);
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(data);
}

fn string(out: &mut Vec<u8>, text: &str) {
    out.push(BINUNICODE);
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// BININT1, BININT or an 8-byte LONG1, as pickle chooses for a non-negative int.
fn int(out: &mut Vec<u8>, value: u64) {
    if let Ok(small) = u8::try_from(value) {
        out.extend_from_slice(&[BININT1, small]);
    } else if let Ok(int) = i32::try_from(value) {
        out.push(BININT);
        out.extend_from_slice(&int.to_le_bytes());
    } else {
        out.extend_from_slice(&[LONG1, 8]);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_is_a_pickle_named_once() {
        let forms = pickles();
        for (name, pickle) in &forms {
            assert_eq!(pickle[..2], [PROTO, 3], "{name}");
            assert_eq!(pickle.last(), Some(&STOP), "{name}");
        }
        let mut names: Vec<&str> = forms.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), forms.len());
    }
}
