//! The reader against what it writes, real torch pickles, hostile forms and
//! random mutations. `testdata/torch-*.pickle` were written by the venv's
//! torch 2.11 (`pickle.dumps(t, protocol=4)`, and 3 for the categories) of
//! `arange(6.).reshape(2, 3).transpose(0, 1).contiguous().transpose(0, 1)`
//! (strides (1, 2)), `tensor([1.5, -2.]).reshape(2, 1).expand(2, 3)`
//! (strides (1, 0)) and `tensor([7, 3])`.

use super::machine::Machine;
use super::value::Value;
use super::*;

const TRANSPOSED: &[u8] = include_bytes!("../../testdata/torch-f32-2x3-transposed-proto4.pickle");
const EXPANDED: &[u8] = include_bytes!("../../testdata/torch-f32-2x3-expanded-proto4.pickle");
const CATEGORIES: &[u8] = include_bytes!("../../testdata/torch-i64-2-proto3.pickle");

/// The element bound of a start-layer-0 request of 64 samples.
const X_BOUND: usize = 64 * 3 * 32 * 32;

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A pickle's refusal, failing the test when it reads.
fn refusal(bytes: &[u8], max_elements: usize) -> PickleError {
    match read(bytes, max_elements) {
        Ok(tensor) => panic!("read a tensor of shape {:?}", tensor.shape),
        Err(error) => error,
    }
}

/// Runs `bytes` as a tensor pickle and says what it left.
fn run_to_kind(bytes: &[u8]) -> Result<&'static str, PickleError> {
    let mut machine = Machine::new(bytes, super::tensor_pickle(16));
    machine.run().map(|value| value.kind())
}

#[test]
fn what_it_writes_it_reads() {
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let pickled = write(PickleDtype::F32, &[1, 2, 3], &data);
    assert!(looks_like_pickle(&pickled));
    let tensor = read(&pickled, 6).expect("reads");
    assert_eq!(
        (tensor.dtype, tensor.shape.as_slice(), tensor.data),
        (PickleDtype::F32, &[1, 2, 3][..], data)
    );
    let categories: Vec<u8> = [3_i64, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensor = read(&write(PickleDtype::I64, &[2], &categories), 2).expect("reads");
    assert_eq!((tensor.dtype, tensor.data), (PickleDtype::I64, categories));
}

#[test]
fn reads_torch_pickles_strided_and_expanded() {
    let tensor = read(TRANSPOSED, 6).expect("reads");
    assert_eq!(tensor.shape, [2, 3]);
    assert_eq!(tensor.data, f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    // Stride 0 reads the one stored element of each row three times; the
    // bound counts the elements the view reads, not those stored.
    let tensor = read(EXPANDED, 6).expect("reads");
    assert_eq!(tensor.data, f32_bytes(&[1.5, 1.5, 1.5, -2.0, -2.0, -2.0]));
    assert!(matches!(
        refusal(EXPANDED, 5),
        PickleError::TooManyElements { max: 5, .. }
    ));
    let tensor = read(CATEGORIES, 2).expect("reads");
    assert_eq!((tensor.dtype, tensor.shape.as_slice()), (PickleDtype::I64, &[2][..]));
}

#[test]
fn refuses_other_globals_opcodes_and_truncation() {
    let evil = b"\x80\x03cos\nsystem\nX\x02\x00\x00\x00idq\x00\x85R.";
    assert_eq!(read(evil, 16), Err(PickleError::Global("os.system".into())));
    let pickled = write(PickleDtype::F32, &[2], &f32_bytes(&[1.0, 2.0]));
    for cut in [1, 10, pickled.len() / 2, pickled.len() - 1] {
        assert!(read(&pickled[..cut], 16).is_err(), "cut at {cut}");
    }
    assert!(matches!(
        read(b"\x80\x03\x8f.", 16),
        Err(PickleError::Opcode { opcode: 0x8f, .. })
    ));
    // A size larger than the storage: the tensor would read past it.
    let size = [b'(', b'J', 2, 0, 0, 0, b't'];
    let at = pickled.windows(7).position(|w| w == size).expect("the size tuple");
    let mut larger = pickled.clone();
    larger[at + 2] = 3;
    assert!(matches!(refusal(&larger, 16), PickleError::Shape(m) if m.contains("fewer than the size")));
    // int16, same name length: the storage bytes keep their size.
    let at = pickled.windows(12).position(|w| w == b"FloatStorage").expect("named");
    let mut shorts = pickled.clone();
    shorts[at..at + 12].copy_from_slice(b"ShortStorage");
    assert_eq!(read(&shorts, 16), Err(PickleError::Dtype("torch.ShortStorage".into())));
}

#[test]
fn the_element_bound_is_checked_before_the_copy() {
    let pickled = write(PickleDtype::F32, &[2, 3], &f32_bytes(&[0.0; 6]));
    assert!(read(&pickled, 6).is_ok());
    assert_eq!(
        read(&pickled, 5),
        Err(PickleError::TooManyElements {
            size: "[2, 3]".into(),
            max: 5
        })
    );
    assert!(
        read(&write(PickleDtype::F32, &[0, 3], &[]), 0).is_ok(),
        "an empty tensor fits any bound"
    );
}

#[test]
fn every_hostile_form_is_refused_by_its_cap_with_a_short_message() {
    use dnet_testkit::hostile;
    for (name, pickle) in hostile::pickles() {
        let error = refusal(&pickle, X_BOUND);
        let message = error.to_string();
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{name}: {} bytes", message.len());
        let limit = |limit| matches!(error, PickleError::Limit { limit: l, .. } if l == limit);
        let expected = match name {
            n if n.starts_with("stride-0") || n.starts_with("overlapping") => {
                matches!(error, PickleError::TooManyElements { .. })
            }
            n if n.contains("TUPLE1") || n.starts_with("memo doubling") => limit(Limit::Depth),
            n if n.starts_with("legacy storages nested") => matches!(error, PickleError::InsideStorage(_)),
            n if n.contains("global name") => matches!(error, PickleError::Global(_)),
            n if n.contains("storage location") => matches!(error, PickleError::Shape(_)),
            n if n.contains("loaded 10,000 times") => limit(Limit::Storages),
            n if n.contains("10,000 memo entries") => limit(Limit::Memo),
            n if n.contains("100,000 times") => limit(Limit::Opcodes),
            n if n.starts_with("64 tensors") => limit(Limit::Tensors),
            n if n.contains("rank 200") => limit(Limit::Length),
            _ => true, // a form added later: refused, briefly, is what counts
        };
        assert!(expected, "{name}: refused for another reason: {message}");
    }
}

#[test]
fn a_storage_inside_a_storage_and_a_second_storage_are_refused() {
    let pickled = write(PickleDtype::F32, &[1], &f32_bytes(&[1.0]));
    // The legacy bytes, loaded again as requires_grad: a second storage.
    let start = pickled.iter().position(|&b| b == b'B').expect("BINBYTES");
    let end = pickled.windows(2).position(|w| w == [0x85, b'R']).expect("its call") + 2;
    let call = &pickled[start - b"ctorch.storage\n_load_from_bytes\n".len()..end];
    let at = pickled.iter().rposition(|&b| b == 0x89).expect("requires_grad");
    let mut twice = pickled[..at].to_vec();
    twice.extend_from_slice(call);
    twice.extend_from_slice(&pickled[at + 1..]);
    assert!(matches!(
        refusal(&twice, 16),
        PickleError::Limit {
            limit: Limit::Storages,
            ..
        }
    ));
    // _rebuild_tensor_v2 named in the storage's own pickles.
    let inside = pickled
        .windows(18)
        .position(|w| w == b"torch\nFloatStorage")
        .expect("named");
    let mut nested = pickled.clone();
    nested.splice(inside..inside + 18, *b"torch.storage\n_load_from_bytes");
    let fixed = fix_storage_length(&nested);
    assert_eq!(
        refusal(&fixed, 16),
        PickleError::InsideStorage("torch.storage._load_from_bytes".into())
    );
}

/// `pickled` with its BINBYTES length set to what the storage now holds (the
/// bytes up to the `\x85R` that calls `_load_from_bytes`).
fn fix_storage_length(pickled: &[u8]) -> Vec<u8> {
    let start = pickled.iter().position(|&b| b == b'B').expect("BINBYTES") + 5;
    let end = pickled.windows(2).rposition(|w| w == [0x85, b'R']).expect("its call");
    let mut fixed = pickled.to_vec();
    let length = u32::try_from(end - start).expect("small");
    fixed[start - 4..start].copy_from_slice(&length.to_le_bytes());
    fixed
}

#[test]
fn nesting_memo_and_length_are_capped_at_their_consts() {
    let nested = |depth: usize| {
        let mut pickle = vec![0x80, 4, b')'];
        pickle.extend(std::iter::repeat_n(0x85, depth - 1));
        pickle.push(b'.');
        pickle
    };
    assert_eq!(run_to_kind(&nested(MAX_DEPTH)), Ok("a tuple"));
    assert!(matches!(
        run_to_kind(&nested(MAX_DEPTH + 1)),
        Err(PickleError::Limit {
            limit: Limit::Depth,
            ..
        })
    ));
    let memoized = |entries: usize| {
        let mut pickle = vec![0x80, 4, b'N'];
        pickle.extend(std::iter::repeat_n(0x94, entries));
        pickle.push(b'.');
        pickle
    };
    assert_eq!(run_to_kind(&memoized(MAX_MEMO)), Ok("None"));
    assert!(matches!(
        run_to_kind(&memoized(MAX_MEMO + 1)),
        Err(PickleError::Limit { limit: Limit::Memo, .. })
    ));
    let long = |items: usize| {
        let mut pickle = vec![0x80, 4, b'('];
        pickle.extend(std::iter::repeat_n(b'N', items));
        pickle.extend_from_slice(b"t.");
        pickle
    };
    assert_eq!(run_to_kind(&long(MAX_LENGTH)), Ok("a tuple"));
    assert!(matches!(
        run_to_kind(&long(MAX_LENGTH + 1)),
        Err(PickleError::Limit {
            limit: Limit::Length,
            ..
        })
    ));
    let mut flood = vec![0x80, 4, b'N'];
    for _ in 0..MAX_OPCODES {
        flood.extend_from_slice(&[b'q', 0]); // one memo entry, put again
    }
    assert!(matches!(
        run_to_kind(&flood),
        Err(PickleError::Limit {
            limit: Limit::Opcodes,
            ..
        })
    ));
}

#[test]
fn memo_gets_share_the_value() {
    // (x, x) built from the memo 7 times over: 128 Nones in the unshared
    // form, 8 values here; the depth cap, not the size, is what stops more.
    let mut pickle = vec![0x80, 4, b'N'];
    for _ in 0..MAX_DEPTH - 1 {
        pickle.extend_from_slice(&[b'q', 0, b'h', 0, 0x86]);
    }
    pickle.push(b'.');
    let mut machine = Machine::new(&pickle, super::tensor_pickle(0));
    let value = machine.run().expect("runs");
    let Value::Tuple(pair) = &*value else {
        panic!("not a tuple: {}", value.kind());
    };
    assert!(
        std::rc::Rc::ptr_eq(&pair.values[0], &pair.values[1]),
        "one value, shared"
    );
}

#[test]
fn long_input_text_is_cut_in_messages() {
    let long = "a".repeat(100_000);
    let global = [b"\x80\x03c", long.as_bytes(), b"\n", long.as_bytes(), b"\n."].concat();
    let mut stack_global = vec![0x80, 4];
    for _ in 0..2 {
        stack_global.push(0x8d);
        stack_global.extend_from_slice(&(long.len() as u64).to_le_bytes());
        stack_global.extend_from_slice(long.as_bytes());
    }
    stack_global.extend_from_slice(b"\x93.");
    let storage = [b"\x80\x03ctorch\n", long.as_bytes(), b"Storage\n."].concat();
    let mut not_utf8 = b"\x80\x03c".to_vec();
    not_utf8.extend(std::iter::repeat_n(0xff, 100_000));
    not_utf8.extend_from_slice(b"\nx\n.");
    for pickle in [global, stack_global, storage, not_utf8] {
        let message = refusal(&pickle, 16).to_string();
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes: {message}", message.len());
    }
    // A size and stride of 64 huge dims: the message lists a few.
    let pickled = write(PickleDtype::F32, &[1], &f32_bytes(&[1.0]));
    let one = [b'(', b'J', 1, 0, 0, 0, b't'];
    let mut huge = vec![b'('];
    for _ in 0..MAX_LENGTH {
        huge.extend_from_slice(&[0x8a, 8]);
        huge.extend_from_slice(&i64::MAX.to_le_bytes());
    }
    huge.push(b't');
    let at = pickled.windows(7).position(|w| w == one).expect("the size tuple");
    let mut huge_dims = pickled[..at].to_vec();
    huge_dims.extend_from_slice(&huge);
    huge_dims.extend_from_slice(&huge);
    huge_dims.extend_from_slice(&pickled[at + 14..]);
    let error = refusal(&huge_dims, 16);
    assert!(matches!(error, PickleError::TooManyElements { .. }), "{error}");
    let message = error.to_string();
    assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes: {message}", message.len());
}

/// A small deterministic generator (xorshift64*), so a failure repeats.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `pickle` changed in one to four places: bytes set, removed, repeated or
/// inserted (opcodes and long runs among them).
fn mutate(pickle: &[u8], random: &mut Random) -> Vec<u8> {
    let mut out = pickle.to_vec();
    for _ in 0..1 + random.below(4) {
        let at = random.below(out.len());
        match random.below(5) {
            0 => out[at] = random.next() as u8,
            1 => {
                let end = (at + random.below(64)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let end = (at + 1 + random.below(16)).min(out.len());
                let piece = out[at..end].repeat(1 + random.below(2000));
                out.splice(at..at, piece);
            }
            3 => {
                let opcodes = b"()tq\x94h\x85\x86\x87]}aesuRQN\x88\x89K";
                out.insert(at, opcodes[random.below(opcodes.len())]);
            }
            _ => {
                let run = vec![random.next() as u8; 1 + random.below(1000)];
                out.splice(at..at, run);
            }
        }
        if out.is_empty() {
            out.push(0x80);
        }
    }
    out
}

#[test]
fn every_message_is_bounded_over_hostile_forms_and_random_mutations() {
    let mut pickles: Vec<Vec<u8>> = dnet_testkit::hostile::pickles().into_iter().map(|(_, p)| p).collect();
    let good = [
        write(PickleDtype::F32, &[1, 3, 2, 2], &f32_bytes(&[0.5; 12])),
        write(PickleDtype::I64, &[2], &[0; 16]),
        TRANSPOSED.to_vec(),
        EXPANDED.to_vec(),
        CATEGORIES.to_vec(),
    ];
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for pickle in &good {
        pickles.extend((0..4000).map(|_| mutate(pickle, &mut random)));
    }
    let mut refused = 0;
    for pickle in &pickles {
        if let Err(error) = read(pickle, X_BOUND) {
            refused += 1;
            let message = error.to_string();
            assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes: {message}", message.len());
        }
    }
    assert!(refused > pickles.len() / 2, "the mutations mostly break the pickle");
}
