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

use std::collections::HashMap;

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

/// Why bytes are not a tensor pickle this module reads.
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
    #[error("not a torch tensor pickle: {0}")]
    Shape(String),
    #[error("a tensor of {0} is not read: only float32 tensors and int64 categories travel between DNet units")]
    Dtype(String),
}

/// The five globals a tensor pickle may name; each is interpreted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    RebuildTensor,
    LoadFromBytes,
    OrderedDict,
    Storage(PickleDtype),
}

fn global(module: &str, name: &str) -> Result<Global, PickleError> {
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
        ("torch.storage", "_load_from_bytes") => Ok(Global::LoadFromBytes),
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch", "FloatStorage") => Ok(Global::Storage(PickleDtype::F32)),
        ("torch", "LongStorage") => Ok(Global::Storage(PickleDtype::I64)),
        ("torch", storage) if storage.ends_with("Storage") => Err(PickleError::Dtype(format!("torch.{storage}"))),
        _ => Err(PickleError::Global(format!("{module}.{name}"))),
    }
}

/// A value on the pickle machine's stack.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    /// A storage named by a persistent id, its bytes to come after the pickles.
    StorageRef {
        dtype: PickleDtype,
        key: String,
        numel: usize,
    },
    /// A storage with its bytes.
    Storage {
        dtype: PickleDtype,
        data: Vec<u8>,
    },
    Tensor(PickledTensor),
}

/// Reads `pickle.dumps(tensor)` of a float32 or int64 CPU tensor.
///
/// # Errors
/// Anything else: another global, an opcode such a pickle does not use,
/// truncated data, a storage that does not hold the shape, another dtype.
pub fn read(bytes: &[u8]) -> Result<PickledTensor, PickleError> {
    let mut machine = Machine::new(bytes);
    match machine.run()? {
        Value::Tensor(tensor) => Ok(tensor),
        other => Err(PickleError::Shape(format!(
            "the pickle holds {}, not a tensor",
            kind(&other)
        ))),
    }
}

/// Whether `bytes` start like a pickle (protocol 2 or later), not a safetensors buffer.
#[must_use]
pub fn looks_like_pickle(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x80) && bytes.get(1).is_some_and(|&protocol| (2..=5).contains(&protocol))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global(_) => "a global",
        Value::StorageRef { .. } | Value::Storage { .. } => "a storage",
        Value::Tensor(_) => "a tensor",
    }
}

/// The pickle virtual machine, restricted to a tensor pickle's opcodes.
struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl<'a> Machine<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(PickleError::Truncated(self.bytes.len()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> Result<u64, PickleError> {
        Ok(self.take(n)?.iter().rev().fold(0, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn length(&mut self, n: usize) -> Result<usize, PickleError> {
        let length = self.le(n)?;
        usize::try_from(length).map_err(|_| PickleError::Truncated(self.bytes.len()))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| PickleError::Shape(format!("the stack is empty at byte {}", self.at)))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| PickleError::Shape(format!("no MARK before byte {}", self.at)))?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.bytes.len()))?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(text)
    }

    fn text(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        let text = std::str::from_utf8(bytes).map_err(|_| PickleError::Shape("a string is not UTF-8".into()))?;
        Ok(Value::Str(text.to_owned()))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let at = self.at;
        self.stack
            .last_mut()
            .ok_or_else(|| PickleError::Shape(format!("the stack is empty at byte {at}")))
    }

    /// Runs the next pickle of a sequence (its own stack and memo) to STOP.
    fn next_pickle(&mut self) -> Result<Value, PickleError> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        self.run()
    }

    /// Runs to STOP and returns the value left.
    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.at;
            let opcode = self.u8()?;
            match opcode {
                0x80 => {
                    // PROTO
                    let protocol = self.u8()?;
                    if !(2..=5).contains(&protocol) {
                        return Err(PickleError::Shape(format!("pickle protocol {protocol}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.le(8)?;
                }
                b'.' => return self.pop(),
                b'c' => {
                    // GLOBAL module\nname\n
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(global(&module, &name)?));
                }
                0x93 => {
                    // STACK_GLOBAL
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(PickleError::Shape("STACK_GLOBAL without two strings".into()));
                    };
                    self.stack.push(Value::Global(global(&module, &name)?));
                }
                0x8c => {
                    let n = self.length(1)?;
                    let value = self.text(n)?;
                    self.stack.push(value);
                }
                b'X' => {
                    let n = self.length(4)?;
                    let value = self.text(n)?;
                    self.stack.push(value);
                }
                0x8d => {
                    let n = self.length(8)?;
                    let value = self.text(n)?;
                    self.stack.push(value);
                }
                b'C' | b'B' | 0x8e => {
                    let width = match opcode {
                        b'C' => 1,
                        b'B' => 4,
                        _ => 8,
                    };
                    let n = self.length(width)?;
                    let bytes = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(bytes));
                }
                0x94 => {
                    // MEMOIZE
                    let value = self.top()?.clone();
                    let index = self.memo.len() as u64;
                    self.memo.insert(index, value);
                }
                b'q' | b'r' => {
                    let index = self.le(if opcode == b'q' { 1 } else { 4 })?;
                    let value = self.top()?.clone();
                    self.memo.insert(index, value);
                }
                b'h' | b'j' => {
                    let index = self.le(if opcode == b'h' { 1 } else { 4 })?;
                    let value = self
                        .memo
                        .get(&index)
                        .cloned()
                        .ok_or_else(|| PickleError::Shape(format!("memo {index} read before it was written")))?;
                    self.stack.push(value);
                }
                b'(' => self.marks.push(self.stack.len()),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                0x85..=0x87 => {
                    let n = usize::from(opcode - 0x84);
                    if self.stack.len() < n {
                        return Err(PickleError::Shape(format!("TUPLE{n} on a short stack at byte {at}")));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'K' => {
                    let value = self.le(1)?;
                    self.stack.push(Value::Int(value as i64));
                }
                b'M' => {
                    let value = self.le(2)?;
                    self.stack.push(Value::Int(value as i64));
                }
                b'J' => {
                    let value = self.le(4)? as u32 as i32;
                    self.stack.push(Value::Int(i64::from(value)));
                }
                0x8a => {
                    // LONG1: a little-endian two's complement integer of n bytes.
                    let n = self.length(1)?;
                    let digits = self.take(n)?;
                    self.stack.push(long(digits));
                }
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b's' => {
                    let (value, key) = (self.pop()?, self.pop()?);
                    let Value::Dict(items) = self.top()? else {
                        return Err(PickleError::Shape("SETITEM on something not a dict".into()));
                    };
                    items.push((key, value));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(PickleError::Shape("SETITEMS with an odd count".into()));
                    }
                    let mut pairs = Vec::new();
                    let mut items = items.into_iter();
                    while let (Some(key), Some(value)) = (items.next(), items.next()) {
                        pairs.push((key, value));
                    }
                    let Value::Dict(dict) = self.top()? else {
                        return Err(PickleError::Shape("SETITEMS on something not a dict".into()));
                    };
                    dict.extend(pairs);
                }
                b'a' => {
                    let value = self.pop()?;
                    let Value::List(list) = self.top()? else {
                        return Err(PickleError::Shape("APPEND to something not a list".into()));
                    };
                    list.push(value);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let Value::List(list) = self.top()? else {
                        return Err(PickleError::Shape("APPENDS to something not a list".into()));
                    };
                    list.extend(items);
                }
                b'Q' => {
                    // BINPERSID: the storage's persistent id.
                    let id = self.pop()?;
                    self.stack.push(storage_ref(id)?);
                }
                b'R' => {
                    let (args, callable) = (self.pop()?, self.pop()?);
                    let (Value::Global(callable), Value::Tuple(args)) = (callable, args) else {
                        return Err(PickleError::Shape(format!(
                            "REDUCE at byte {at} without a global and a tuple"
                        )));
                    };
                    let value = reduce(callable, args)?;
                    self.stack.push(value);
                }
                _ => return Err(PickleError::Opcode { opcode, at }),
            }
        }
    }
}

fn long(digits: &[u8]) -> Value {
    let mut value: i128 = 0;
    for (i, &b) in digits.iter().enumerate().take(16) {
        value |= i128::from(b) << (8 * i);
    }
    if let Some(&last) = digits.last() {
        if last & 0x80 != 0 && digits.len() < 16 {
            value -= 1_i128 << (8 * digits.len());
        }
    }
    i64::try_from(value).map_or(Value::Int(i64::MAX), Value::Int)
}

/// The storage a persistent id names: `('storage', torch.XStorage, key, location, numel, None)`.
fn storage_ref(id: Value) -> Result<Value, PickleError> {
    let Value::Tuple(fields) = id else {
        return Err(PickleError::Shape("a persistent id that is not a tuple".into()));
    };
    match fields.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), Value::Str(location), Value::Int(numel), Value::None]
            if tag == "storage" && (location.starts_with("cpu") || location.starts_with("cuda")) =>
        {
            Ok(Value::StorageRef {
                dtype: *dtype,
                key: key.clone(),
                numel: usize::try_from(*numel).map_err(|_| PickleError::Shape("a negative storage size".into()))?,
            })
        }
        _ => Err(PickleError::Shape(format!("an unexpected persistent id: {fields:?}"))),
    }
}

/// What a REDUCE of one of the five globals makes.
fn reduce(callable: Global, args: Vec<Value>) -> Result<Value, PickleError> {
    match (callable, args.as_slice()) {
        (Global::OrderedDict, []) => Ok(Value::Dict(Vec::new())),
        (Global::LoadFromBytes, [Value::Bytes(bytes)]) => legacy_storage(bytes),
        (Global::RebuildTensor, [storage, offset, size, stride, requires_grad, hooks, rest @ ..]) => {
            if !matches!(hooks, Value::Dict(hooks) if hooks.is_empty()) || rest.iter().any(|r| !is_empty(r)) {
                return Err(PickleError::Shape("a tensor with backward hooks or metadata".into()));
            }
            if !matches!(requires_grad, Value::Bool(_)) {
                return Err(PickleError::Shape("requires_grad is not a bool".into()));
            }
            rebuild(storage, offset, size, stride).map(Value::Tensor)
        }
        (callable, _) => Err(PickleError::Shape(format!(
            "{callable:?} called with unexpected arguments"
        ))),
    }
}

fn is_empty(value: &Value) -> bool {
    matches!(value, Value::None) || matches!(value, Value::Dict(items) if items.is_empty())
}

fn ints(value: &Value, what: &str) -> Result<Vec<usize>, PickleError> {
    let Value::Tuple(items) = value else {
        return Err(PickleError::Shape(format!("{what} is not a tuple")));
    };
    items
        .iter()
        .map(|item| match item {
            Value::Int(n) => usize::try_from(*n).map_err(|_| PickleError::Shape(format!("a negative {what}"))),
            _ => Err(PickleError::Shape(format!("{what} holds something not an int"))),
        })
        .collect()
}

/// The tensor `storage[offset..]` viewed with `size` and `stride`, copied contiguous.
fn rebuild(storage: &Value, offset: &Value, size: &Value, stride: &Value) -> Result<PickledTensor, PickleError> {
    let Value::Storage { dtype, data } = storage else {
        return Err(PickleError::Shape("the tensor's storage is not a storage".into()));
    };
    let Value::Int(offset) = offset else {
        return Err(PickleError::Shape("the storage offset is not an int".into()));
    };
    let offset = usize::try_from(*offset).map_err(|_| PickleError::Shape("a negative storage offset".into()))?;
    let (shape, strides) = (ints(size, "size")?, ints(stride, "stride")?);
    if shape.len() != strides.len() {
        return Err(PickleError::Shape("size and stride differ in rank".into()));
    }
    let element = dtype.size();
    let stored = data.len() / element;
    let count = shape.iter().try_fold(1_usize, |n, &d| n.checked_mul(d));
    let count = count.ok_or_else(|| PickleError::Shape("the size overflows".into()))?;
    // The last element the view reads must lie inside the storage.
    let last = shape.iter().zip(&strides).try_fold(offset, |at, (&d, &s)| {
        at.checked_add(d.saturating_sub(1).checked_mul(s)?)
    });
    if count > 0 && last.is_none_or(|last| last >= stored) {
        return Err(PickleError::Shape(format!(
            "the storage holds {stored} elements, fewer than the size {shape:?} with stride {strides:?} at offset {offset} reads"
        )));
    }
    let mut out = Vec::with_capacity(count * element);
    let mut index = vec![0_usize; shape.len()];
    for _ in 0..count {
        let at = offset + index.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&data[at * element..(at + 1) * element]);
        for dim in (0..shape.len()).rev() {
            index[dim] += 1;
            if index[dim] < shape[dim] {
                break;
            }
            index[dim] = 0;
        }
    }
    Ok(PickledTensor {
        dtype: *dtype,
        shape,
        data: out,
    })
}

/// The magic number that starts torch's legacy serialization
/// (0x1950a86a20f9469cfc6c), as LONG1 writes it: 10 bytes, little-endian.
const MAGIC_BYTES: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_VERSION: i64 = 1001;

/// A storage in torch's legacy serialization (what `_load_from_bytes` gets).
fn legacy_storage(bytes: &[u8]) -> Result<Value, PickleError> {
    // PROTO 2, then LONG1 of the 10-byte magic number (too wide for an i64: compared as bytes).
    if bytes.get(..4) != Some(&[0x80, 2, 0x8a, 10][..]) || bytes.get(4..14) != Some(&MAGIC_BYTES[..]) {
        return Err(PickleError::Shape(
            "the storage bytes do not start with torch's magic number".into(),
        ));
    }
    let mut machine = Machine::new(bytes);
    machine.run()?; // the magic number, checked above
    let unexpected =
        |expected: &str, value: &Value| PickleError::Shape(format!("expected the {expected}, found {}", kind(value)));
    let version = machine.next_pickle()?;
    if version != Value::Int(LEGACY_VERSION) {
        return Err(unexpected("format version 1001", &version));
    }
    let info = machine.next_pickle()?;
    let Value::Dict(info) = info else {
        return Err(unexpected("system info", &info));
    };
    let little_endian = (Value::Str("little_endian".into()), Value::Bool(true));
    if !info.contains(&little_endian) {
        return Err(PickleError::Shape("the storage was written big-endian".into()));
    }
    let storage = machine.next_pickle()?;
    let Value::StorageRef { dtype, key, numel } = storage else {
        return Err(unexpected("storage", &storage));
    };
    if machine.next_pickle()? != Value::List(vec![Value::Str(key)]) {
        return Err(PickleError::Shape("the storage keys do not match".into()));
    }
    let stored = machine.length(8)?;
    if stored != numel {
        return Err(PickleError::Shape(format!(
            "the storage says {numel} elements, its data {stored}"
        )));
    }
    let size = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| PickleError::Shape("the storage size overflows".into()))?;
    let data = machine.take(size)?.to_vec();
    Ok(Value::Storage { dtype, data })
}

/// `pickle.dumps` of a contiguous tensor of `shape` whose elements are
/// `data` (little-endian), in the form torch 1.7 reads (protocol 3).
///
/// # Panics
/// When `data` does not hold exactly the elements of `shape`.
#[must_use]
pub fn write(dtype: PickleDtype, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    assert_eq!(data.len(), numel * dtype.size(), "data holds the shape's elements");
    let key = "0";
    // The storage, as torch.save(storage, _use_new_zipfile_serialization=False) writes it.
    let mut storage = Vec::new();
    storage.extend_from_slice(&[0x80, 2, 0x8a, 10]);
    storage.extend_from_slice(&MAGIC_BYTES);
    storage.push(b'.');
    storage.extend_from_slice(&[0x80, 2]);
    int(&mut storage, LEGACY_VERSION);
    storage.push(b'.');
    storage.extend_from_slice(&[0x80, 2, b'}', b'(']);
    for (name, value) in [("protocol_version", None), ("little_endian", Some(true))] {
        string(&mut storage, name);
        match value {
            None => int(&mut storage, LEGACY_VERSION),
            Some(flag) => storage.push(if flag { 0x88 } else { 0x89 }),
        }
    }
    string(&mut storage, "type_sizes");
    storage.extend_from_slice(b"}(");
    for (name, size) in [("short", 2), ("int", 4), ("long", 4)] {
        string(&mut storage, name);
        int(&mut storage, size);
    }
    storage.extend_from_slice(b"uu.");
    storage.extend_from_slice(&[0x80, 2, b'(']);
    string(&mut storage, "storage");
    storage.extend_from_slice(format!("ctorch\n{}\n", dtype.storage()).as_bytes());
    string(&mut storage, key);
    string(&mut storage, "cpu");
    int(&mut storage, i64::try_from(numel).unwrap_or(i64::MAX));
    storage.extend_from_slice(b"NtQ.");
    storage.extend_from_slice(&[0x80, 2, b']']);
    string(&mut storage, key);
    storage.extend_from_slice(b"a.");
    storage.extend_from_slice(&(numel as u64).to_le_bytes());
    storage.extend_from_slice(data);

    // The tensor around it.
    let mut out = vec![0x80, 3];
    out.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    out.extend_from_slice(b"ctorch.storage\n_load_from_bytes\n");
    out.push(b'B');
    out.extend_from_slice(&u32::try_from(storage.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&storage);
    out.extend_from_slice(&[0x85, b'R']);
    int(&mut out, 0);
    let mut strides = vec![1_usize; shape.len()];
    for dim in (0..shape.len().saturating_sub(1)).rev() {
        strides[dim] = strides[dim + 1] * shape[dim + 1];
    }
    for dims in [shape, strides.as_slice()] {
        out.push(b'(');
        for &d in dims {
            int(&mut out, i64::try_from(d).unwrap_or(i64::MAX));
        }
        out.push(b't');
    }
    out.push(0x89);
    out.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    out.extend_from_slice(b"tR.");
    out
}

fn string(out: &mut Vec<u8>, text: &str) {
    out.push(b'X');
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn int(out: &mut Vec<u8>, value: i64) {
    match i32::try_from(value) {
        Ok(small) => {
            out.push(b'J');
            out.extend_from_slice(&small.to_le_bytes());
        }
        Err(_) => {
            out.extend_from_slice(&[0x8a, 8]);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn what_it_writes_it_reads() {
        let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let pickled = write(PickleDtype::F32, &[1, 2, 3], &data);
        assert!(looks_like_pickle(&pickled));
        let tensor = read(&pickled).expect("reads");
        assert_eq!(
            (tensor.dtype, tensor.shape.as_slice(), tensor.data),
            (PickleDtype::F32, &[1, 2, 3][..], data)
        );
        let categories: Vec<u8> = [3_i64, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = read(&write(PickleDtype::I64, &[2], &categories)).expect("reads");
        assert_eq!((tensor.dtype, tensor.data), (PickleDtype::I64, categories));
    }

    #[test]
    fn refuses_other_globals_opcodes_and_truncation() {
        let evil = b"\x80\x03cos\nsystem\nX\x02\x00\x00\x00idq\x00\x85R.";
        assert_eq!(read(evil), Err(PickleError::Global("os.system".into())));
        let pickled = write(PickleDtype::F32, &[2], &f32_bytes(&[1.0, 2.0]));
        for cut in [1, 10, pickled.len() / 2, pickled.len() - 1] {
            assert!(read(&pickled[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            read(b"\x80\x03\x8f."),
            Err(PickleError::Opcode { opcode: 0x8f, .. })
        ));
        // A size larger than the storage: the tensor would read past it.
        let size = [b'(', b'J', 2, 0, 0, 0, b't'];
        let at = pickled.windows(7).position(|w| w == size).expect("the size tuple");
        let mut larger = pickled.clone();
        larger[at + 2] = 3;
        assert!(matches!(read(&larger), Err(PickleError::Shape(m)) if m.contains("fewer than the size")));
        // int16, same name length: the storage bytes keep their size.
        let at = pickled.windows(12).position(|w| w == b"FloatStorage").expect("named");
        let mut shorts = pickled.clone();
        shorts[at..at + 12].copy_from_slice(b"ShortStorage");
        assert_eq!(read(&shorts), Err(PickleError::Dtype("torch.ShortStorage".into())));
    }
}
