//! The pickle opcode machine, restricted to the opcodes and the five globals
//! a torch tensor pickle uses; anything else is refused, named.
//!
//! Bounded as it goes: each pickle runs at most `MAX_OPCODES` opcodes and
//! memoizes at most `MAX_MEMO` values; a container holds at most `MAX_LENGTH`
//! items and records how deep it nests, checked against `MAX_DEPTH` whenever
//! it is built or grows (a counter, never a walk). Values are shared through
//! `Rc`: a memo GET pushes the same value, never a copy, and a container is
//! copied (its item pointers only, at most `MAX_LENGTH`) only when a shared
//! one is changed. Strings and bytes borrow from the input. Without cycles
//! (a value is never changed while shared) and with nesting capped, dropping
//! a value recurses at most `MAX_DEPTH` deep.

use std::collections::HashMap;
use std::rc::Rc;

use super::value::{Global, Items, Storage, Value};
use super::{Limit, PickleError, PickledTensor};
use super::{MAX_DEPTH, MAX_LENGTH, MAX_MEMO, MAX_OPCODES};
use crate::echo;

/// The opcodes a tensor pickle uses (Python's `pickle.py` names).
pub(super) mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const BINBYTES8: u8 = 0x8e;
    pub const MEMOIZE: u8 = 0x94;
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const NONE: u8 = b'N';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
}

/// Which pickle the machine runs, and what its calls mean: the tensor
/// pickle (it loads one storage and rebuilds one tensor of at most
/// `max_elements`), or the storage's own pickles inside it (they name one
/// storage by persistent id, and call nothing). The meanings come from the
/// reader that runs the machine, so the machine knows no file of the
/// formats it runs.
#[derive(Clone, Copy)]
pub(super) enum Role {
    Tensor {
        max_elements: usize,
        load_storage: LoadStorage,
        rebuild: Rebuild,
    },
    Storage {
        persistent_id: PersistentId,
    },
}

/// `torch.storage._load_from_bytes`: a storage from its legacy serialization.
pub(super) type LoadStorage = for<'b> fn(&'b [u8]) -> Result<Storage<'b>, PickleError>;
/// `torch._utils._rebuild_tensor_v2`: a tensor from its arguments, at most `max_elements`.
pub(super) type Rebuild = for<'b> fn(&[Rc<Value<'b>>], usize) -> Result<PickledTensor, PickleError>;
/// BINPERSID: the storage a persistent id names.
pub(super) type PersistentId = for<'b> fn(&Value<'b>) -> Result<Value<'b>, PickleError>;

/// The pickle virtual machine, restricted to a tensor pickle's opcodes.
pub(super) struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    role: Role,
    stack: Vec<Rc<Value<'a>>>,
    marks: Vec<usize>,
    memo: HashMap<u32, Rc<Value<'a>>>,
    opcodes: usize,
    storages: usize,
    tensors: usize,
}

impl<'a> Machine<'a> {
    pub(super) fn new(bytes: &'a [u8], role: Role) -> Self {
        Self {
            bytes,
            at: 0,
            role,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            opcodes: 0,
            storages: 0,
            tensors: 0,
        }
    }

    /// Runs to STOP and returns the value left.
    pub(super) fn run(&mut self) -> Result<Rc<Value<'a>>, PickleError> {
        loop {
            let at = self.at;
            let opcode = self.u8()?;
            self.opcodes += 1;
            if self.opcodes > MAX_OPCODES {
                return Err(PickleError::Limit {
                    limit: Limit::Opcodes,
                    at,
                });
            }
            if opcode == op::STOP {
                return self.pop();
            }
            self.step(opcode, at)?;
        }
    }

    /// Runs the next pickle of a sequence (its own stack, memo and opcode
    /// count; the storage count goes on) to STOP.
    pub(super) fn next_pickle(&mut self) -> Result<Rc<Value<'a>>, PickleError> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        self.opcodes = 0;
        self.run()
    }

    fn step(&mut self, opcode: u8, at: usize) -> Result<(), PickleError> {
        match opcode {
            op::PROTO | op::FRAME => self.framing(opcode),
            op::GLOBAL | op::STACK_GLOBAL => self.global(opcode, at),
            op::SHORT_BINUNICODE | op::BINUNICODE | op::BINUNICODE8 => self.text(opcode),
            op::SHORT_BINBYTES | op::BINBYTES | op::BINBYTES8 => self.binary(opcode),
            op::BININT1 | op::BININT2 | op::BININT | op::LONG1 => self.int(opcode),
            op::NONE | op::NEWTRUE | op::NEWFALSE => self.constant(opcode),
            op::MEMOIZE | op::BINPUT | op::LONG_BINPUT => self.put(opcode, at),
            op::BINGET | op::LONG_BINGET => self.get(opcode),
            op::MARK | op::TUPLE | op::EMPTY_TUPLE | op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => self.tuple(opcode, at),
            op::EMPTY_DICT | op::SETITEM | op::SETITEMS => self.dict(opcode, at),
            op::EMPTY_LIST | op::APPEND | op::APPENDS => self.list(opcode, at),
            op::BINPERSID => self.persistent_id(at),
            op::REDUCE => self.reduce(at),
            _ => Err(PickleError::Opcode { opcode, at }),
        }
    }

    // Reading the input.

    /// The next `n` bytes of the input, borrowed.
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(PickleError::Truncated(self.bytes.len()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    /// An unsigned little-endian integer of `n` (at most 8) bytes.
    fn le(&mut self, n: usize) -> Result<u64, PickleError> {
        Ok(self.take(n)?.iter().rev().fold(0, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// A length of `n` bytes, little-endian.
    pub(super) fn length(&mut self, n: usize) -> Result<usize, PickleError> {
        let length = self.le(n)?;
        usize::try_from(length).map_err(|_| PickleError::Truncated(self.bytes.len()))
    }

    /// A line ending in `\n` (GLOBAL's operands), without the `\n`.
    fn line(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.bytes.len()))?;
        self.at += end + 1;
        Ok(&rest[..end])
    }

    // The stack, marks and containers.

    fn push(&mut self, value: Value<'a>) {
        self.stack.push(Rc::new(value));
    }

    fn pop(&mut self) -> Result<Rc<Value<'a>>, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| PickleError::Shape(format!("the stack is empty at byte {}", self.at)))
    }

    /// The items pushed since the last MARK.
    fn pop_mark(&mut self, at: usize) -> Result<Vec<Rc<Value<'a>>>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| PickleError::Shape(format!("no MARK before byte {at}")))?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    /// Adds `values` to the dict or list on top of the stack (copied first,
    /// its item pointers only, when the memo shares it).
    fn add_to_top(&mut self, values: Vec<Rc<Value<'a>>>, dict: bool, at: usize) -> Result<(), PickleError> {
        let top = self
            .stack
            .last_mut()
            .ok_or_else(|| PickleError::Shape(format!("the stack is empty at byte {at}")))?;
        // Checked before make_mut, which would copy whatever is shared.
        if !matches!((&**top, dict), (Value::Dict(_), true) | (Value::List(_), false)) {
            let wanted = if dict { "a dict" } else { "a list" };
            return Err(PickleError::Shape(format!(
                "adding to {} at byte {at}, where {wanted} belongs",
                top.kind()
            )));
        }
        match Rc::make_mut(top) {
            Value::Dict(items) | Value::List(items) => grow(items, values, at),
            _ => Ok(()), // checked above
        }
    }

    // The opcodes, by family.

    fn framing(&mut self, opcode: u8) -> Result<(), PickleError> {
        if opcode == op::FRAME {
            self.le(8)?; // a length hint only
            return Ok(());
        }
        let protocol = self.u8()?;
        if !(2..=5).contains(&protocol) {
            return Err(PickleError::Shape(format!("pickle protocol {protocol}")));
        }
        Ok(())
    }

    fn global(&mut self, opcode: u8, at: usize) -> Result<(), PickleError> {
        let global = if opcode == op::GLOBAL {
            let (module, name) = (self.line()?, self.line()?);
            Global::named(utf8(module)?, utf8(name)?)?
        } else {
            let (name, module) = (self.pop()?, self.pop()?);
            let (Value::Str(module), Value::Str(name)) = (&*module, &*name) else {
                return Err(PickleError::Shape(format!(
                    "STACK_GLOBAL at byte {at} without two strings"
                )));
            };
            Global::named(module, name)?
        };
        if matches!(self.role, Role::Storage { .. }) && !matches!(global, Global::Storage(_)) {
            return Err(PickleError::InsideStorage(global.name().into()));
        }
        self.push(Value::Global(global));
        Ok(())
    }

    fn text(&mut self, opcode: u8) -> Result<(), PickleError> {
        let bytes = self.counted(opcode == op::SHORT_BINUNICODE, opcode == op::BINUNICODE)?;
        let text = std::str::from_utf8(bytes).map_err(|_| PickleError::Shape("a string is not UTF-8".into()))?;
        self.push(Value::Str(text));
        Ok(())
    }

    fn binary(&mut self, opcode: u8) -> Result<(), PickleError> {
        let bytes = self.counted(opcode == op::SHORT_BINBYTES, opcode == op::BINBYTES)?;
        self.push(Value::Bytes(bytes));
        Ok(())
    }

    /// The bytes of a length-prefixed argument: a 1-byte length (`short`),
    /// a 4-byte one (`four`), else an 8-byte one.
    fn counted(&mut self, short: bool, four: bool) -> Result<&'a [u8], PickleError> {
        let width = match (short, four) {
            (true, _) => 1,
            (false, true) => 4,
            (false, false) => 8,
        };
        let n = self.length(width)?;
        self.take(n)
    }

    fn int(&mut self, opcode: u8) -> Result<(), PickleError> {
        let value = match opcode {
            op::BININT1 => i64::from(self.u8()?),
            op::BININT2 => self.le(2)? as i64,
            op::BININT => i64::from(self.le(4)? as u32 as i32),
            _ => {
                // LONG1: a little-endian two's complement integer of n bytes.
                let n = self.length(1)?;
                long(self.take(n)?)
            }
        };
        self.push(Value::Int(value));
        Ok(())
    }

    fn constant(&mut self, opcode: u8) -> Result<(), PickleError> {
        self.push(match opcode {
            op::NEWTRUE => Value::Bool(true),
            op::NEWFALSE => Value::Bool(false),
            _ => Value::None,
        });
        Ok(())
    }

    /// MEMOIZE, BINPUT, LONG_BINPUT: the memo shares the value on top.
    fn put(&mut self, opcode: u8, at: usize) -> Result<(), PickleError> {
        let index = match opcode {
            op::MEMOIZE => u32::try_from(self.memo.len()).unwrap_or(u32::MAX),
            op::BINPUT => u32::from(self.u8()?),
            _ => self.le(4)? as u32,
        };
        let value = Rc::clone(
            self.stack
                .last()
                .ok_or_else(|| PickleError::Shape(format!("the stack is empty at byte {at}")))?,
        );
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(PickleError::Limit { limit: Limit::Memo, at });
        }
        self.memo.insert(index, value);
        Ok(())
    }

    /// BINGET, LONG_BINGET: pushes the memo's value itself, not a copy.
    fn get(&mut self, opcode: u8) -> Result<(), PickleError> {
        let index = if opcode == op::BINGET {
            u32::from(self.u8()?)
        } else {
            self.le(4)? as u32
        };
        let value = self
            .memo
            .get(&index)
            .ok_or_else(|| PickleError::Shape(format!("memo {index} read before it was written")))?;
        self.stack.push(Rc::clone(value));
        Ok(())
    }

    fn tuple(&mut self, opcode: u8, at: usize) -> Result<(), PickleError> {
        let values = match opcode {
            op::MARK => {
                if self.marks.len() >= MAX_DEPTH {
                    return Err(PickleError::Limit {
                        limit: Limit::Depth,
                        at,
                    });
                }
                self.marks.push(self.stack.len());
                return Ok(());
            }
            op::TUPLE => self.pop_mark(at)?,
            op::EMPTY_TUPLE => Vec::new(),
            _ => {
                let n = usize::from(opcode - op::TUPLE1 + 1);
                if self.stack.len() < n {
                    return Err(PickleError::Shape(format!("TUPLE{n} on a short stack at byte {at}")));
                }
                self.stack.split_off(self.stack.len() - n)
            }
        };
        let mut items = Items::empty();
        grow(&mut items, values, at)?;
        self.push(Value::Tuple(items));
        Ok(())
    }

    fn dict(&mut self, opcode: u8, at: usize) -> Result<(), PickleError> {
        let pairs = match opcode {
            op::EMPTY_DICT => {
                self.push(Value::Dict(Items::empty()));
                return Ok(());
            }
            op::SETITEM => {
                let (value, key) = (self.pop()?, self.pop()?);
                vec![key, value]
            }
            _ => self.pop_mark(at)?,
        };
        if pairs.len() % 2 != 0 {
            return Err(PickleError::Shape(format!("SETITEMS with an odd count at byte {at}")));
        }
        self.add_to_top(pairs, true, at)
    }

    fn list(&mut self, opcode: u8, at: usize) -> Result<(), PickleError> {
        let values = match opcode {
            op::EMPTY_LIST => {
                self.push(Value::List(Items::empty()));
                return Ok(());
            }
            op::APPEND => vec![self.pop()?],
            _ => self.pop_mark(at)?,
        };
        self.add_to_top(values, false, at)
    }

    /// BINPERSID: the storage's persistent id, inside the storage's own pickles only.
    fn persistent_id(&mut self, at: usize) -> Result<(), PickleError> {
        let Role::Storage { persistent_id } = self.role else {
            return Err(PickleError::Shape(format!(
                "a persistent id at byte {at}, outside a storage's bytes"
            )));
        };
        self.count(Limit::Storages, at)?;
        let id = self.pop()?;
        let storage = persistent_id(&id)?;
        self.push(storage);
        Ok(())
    }

    /// REDUCE: a call of one of the globals, interpreted here; never inside a storage.
    fn reduce(&mut self, at: usize) -> Result<(), PickleError> {
        let Role::Tensor {
            max_elements,
            load_storage,
            rebuild,
        } = self.role
        else {
            return Err(PickleError::Shape(format!(
                "a call (REDUCE) at byte {at} inside the storage's bytes"
            )));
        };
        let (args, callable) = (self.pop()?, self.pop()?);
        let (Value::Global(callable), Value::Tuple(args)) = (&*callable, &*args) else {
            return Err(PickleError::Shape(format!(
                "REDUCE at byte {at} of {} with {}, not a global with a tuple",
                callable.kind(),
                args.kind()
            )));
        };
        let value = match (callable, args.values.as_slice()) {
            (Global::OrderedDict, []) => Value::Dict(Items::empty()),
            (Global::LoadFromBytes, [arg]) => {
                let Value::Bytes(data) = **arg else {
                    return Err(PickleError::Shape(format!("{} of {}", callable.name(), arg.kind())));
                };
                self.count(Limit::Storages, at)?;
                Value::Storage(load_storage(data)?)
            }
            (Global::RebuildTensor, args) => {
                self.count(Limit::Tensors, at)?;
                Value::Tensor(rebuild(args, max_elements)?)
            }
            (callable, args) => {
                return Err(PickleError::Shape(format!(
                    "{} called with {} arguments",
                    callable.name(),
                    args.len()
                )))
            }
        };
        self.push(value);
        Ok(())
    }

    /// Counts one more storage or tensor, refused over its cap.
    fn count(&mut self, limit: Limit, at: usize) -> Result<(), PickleError> {
        let count = match limit {
            Limit::Tensors => &mut self.tensors,
            _ => &mut self.storages,
        };
        *count += 1;
        if *count > limit.cap() {
            return Err(PickleError::Limit { limit, at });
        }
        Ok(())
    }
}

/// Adds `values` to a container, refused (the container unchanged) over the
/// length or depth cap.
fn grow<'a>(items: &mut Items<'a>, values: Vec<Rc<Value<'a>>>, at: usize) -> Result<(), PickleError> {
    if items.values.len() + values.len() > MAX_LENGTH {
        return Err(PickleError::Limit {
            limit: Limit::Length,
            at,
        });
    }
    let depth = values
        .iter()
        .map(|value| value.depth() + 1)
        .fold(items.depth, usize::max);
    if depth > MAX_DEPTH {
        return Err(PickleError::Limit {
            limit: Limit::Depth,
            at,
        });
    }
    items.depth = depth;
    items.values.extend(values);
    Ok(())
}

/// A GLOBAL operand as text; Python decodes it as UTF-8 too.
fn utf8(line: &[u8]) -> Result<&str, PickleError> {
    std::str::from_utf8(line).map_err(|_| PickleError::Global(echo::cut_bytes(line)))
}

/// LONG1's integer (saturated to an i64: a tensor's ints fit one).
fn long(digits: &[u8]) -> i64 {
    let mut value: i128 = 0;
    for (i, &b) in digits.iter().enumerate().take(16) {
        value |= i128::from(b) << (8 * i);
    }
    if let Some(&last) = digits.last() {
        if last & 0x80 != 0 && digits.len() < 16 {
            value -= 1_i128 << (8 * digits.len());
        }
    }
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}
