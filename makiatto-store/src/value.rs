//! SQLite values on the wire and the canonical primary-key packing.

use std::cmp::Ordering;

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// A SQLite value, as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    fn type_rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Blob(_) => 1,
            Value::Text(_) => 2,
            Value::Real(_) => 3,
            Value::Int(_) => 4,
        }
    }

    /// A total order over values (cr-sqlite's: INTEGER > REAL > TEXT > BLOB > NULL, then by
    /// content). Used only to break ties between equal clocks, which means a site id was
    /// reused.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Real(a), Value::Real(b)) => a.total_cmp(b),
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Blob(a), Value::Blob(b)) => a.cmp(b),
            _ => self.type_rank().cmp(&other.type_rank()),
        }
    }

    /// An estimate of the encoded size in bytes, for chunking.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Null => 1,
            Value::Int(_) | Value::Real(_) => 9,
            Value::Text(s) => s.len() + 5,
            Value::Blob(b) => b.len() + 5,
        }
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl FromSql for Value {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(Value::from(value))
    }
}

impl From<ValueRef<'_>> for Value {
    fn from(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Self { Value::$v(x.into()) }
        }
    )*};
}
value_from!(i64 => Int, i32 => Int, u32 => Int, f64 => Real, String => Text, &str => Text, Vec<u8> => Blob);

const TAG_NULL: u8 = 0;
const TAG_INT: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BLOB: u8 = 4;

/// Packs primary-key values into the canonical byte form stored in clock tables:
/// a count byte, then per value a tag byte and its payload (8-byte big-endian numbers,
/// varint length + bytes for text and blobs). Equal keys give equal bytes.
pub fn pack(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    pack_into(&mut out, values.iter().map(ValueRef::from));
    out
}

pub(crate) fn pack_refs<'a>(values: impl ExactSizeIterator<Item = ValueRef<'a>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    pack_into(&mut out, values);
    out
}

fn pack_into<'a>(out: &mut Vec<u8>, values: impl ExactSizeIterator<Item = ValueRef<'a>>) {
    // A primary key has at most a handful of columns; the count is checked at table
    // registration (<= 255).
    out.push(values.len() as u8);
    for v in values {
        match v {
            ValueRef::Null => out.push(TAG_NULL),
            ValueRef::Integer(i) => {
                out.push(TAG_INT);
                out.extend_from_slice(&i.to_be_bytes());
            }
            ValueRef::Real(f) => {
                // -0.0 and 0.0 are one key to SQLite (and to `==`): one packing.
                let f = if f == 0.0 { 0.0f64 } else { f };
                out.push(TAG_REAL);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            ValueRef::Text(b) => {
                out.push(TAG_TEXT);
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            ValueRef::Blob(b) => {
                out.push(TAG_BLOB);
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// Unpacks a key made by [`pack`]. Fails on anything malformed (the bytes may come from a
/// peer).
pub fn unpack(bytes: &[u8]) -> Result<Vec<Value>> {
    let bad = |why: &str| StoreError::Malformed(format!("packed primary key: {why}"));
    let (&count, mut rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (&tag, r) = rest.split_first().ok_or_else(|| bad("truncated"))?;
        rest = r;
        let v = match tag {
            TAG_NULL => Value::Null,
            TAG_INT | TAG_REAL => {
                let (n, r) = rest
                    .split_first_chunk::<8>()
                    .ok_or_else(|| bad("truncated"))?;
                rest = r;
                if tag == TAG_INT {
                    Value::Int(i64::from_be_bytes(*n))
                } else {
                    Value::Real(f64::from_bits(u64::from_be_bytes(*n)))
                }
            }
            TAG_TEXT | TAG_BLOB => {
                let (len, r) = get_varint(rest).ok_or_else(|| bad("bad length"))?;
                let len = usize::try_from(len).map_err(|_| bad("bad length"))?;
                if r.len() < len {
                    return Err(bad("truncated"));
                }
                let (b, r) = r.split_at(len);
                rest = r;
                if tag == TAG_TEXT {
                    Value::Text(String::from_utf8(b.to_vec()).map_err(|_| bad("invalid utf-8"))?)
                } else {
                    Value::Blob(b.to_vec())
                }
            }
            _ => return Err(bad("unknown tag")),
        };
        out.push(v);
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(mut b: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, r) = b.split_first()?;
        b = r;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((n, b));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("nan", |f| !f.is_nan())
                .prop_map(Value::Real),
            ".{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Blob),
        ]
    }

    proptest! {
        #[test]
        fn pack_roundtrips(values in proptest::collection::vec(arb_value(), 0..5)) {
            let packed = pack(&values);
            prop_assert_eq!(unpack(&packed).unwrap(), values);
        }

        #[test]
        fn unpack_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unpack(&bytes);
        }

        #[test]
        fn zero_packs_once(sign in any::<bool>()) {
            let z = if sign { -0.0 } else { 0.0 };
            prop_assert_eq!(pack(&[Value::Real(z)]), pack(&[Value::Real(0.0)]));
        }

        #[test]
        fn equal_keys_equal_bytes(a in proptest::collection::vec(arb_value(), 1..3),
                                  b in proptest::collection::vec(arb_value(), 1..3)) {
            prop_assert_eq!(a == b, pack(&a) == pack(&b));
        }
    }
}
