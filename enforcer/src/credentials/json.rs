//! Strict JSON for JOSE headers, JWT claims and JWK sets: one object, no duplicate member
//! names at any depth, bounded nesting.
//!
//! RFC 7515 §5.2 and RFC 7519 §7.2 require a JWS or JWT with duplicate header or claim names to
//! be rejected (or the last one used, which lets two parsers read different values from the
//! same token). `serde_json::Value` keeps the last duplicate silently, so objects are built
//! here and a repeated name fails the whole document.

use std::cell::Cell;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Deepest nesting accepted. Real tokens nest claims two or three levels (Keycloak's
/// `realm_access.roles`); this bounds the stack a hostile token can use.
const MAX_DEPTH: usize = 16;

/// Why a JSON document was refused: a closed set, with no text from the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonWhy {
    /// Not JSON text (or not UTF-8, or trailing data), at this 1-based line and column.
    Syntax { line: usize, column: usize },
    /// The same member name twice in one object.
    DuplicateName,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Valid JSON, but not an object.
    NotObject,
}

impl std::fmt::Display for JsonWhy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonWhy::Syntax { line, column } => {
                write!(f, "not JSON (at line {line}, column {column})")
            }
            JsonWhy::DuplicateName => f.write_str("a member name appears twice"),
            JsonWhy::TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
            JsonWhy::NotObject => f.write_str("not a JSON object"),
        }
    }
}

/// Parse `bytes` as one JSON object, strictly (see the module comment).
pub(crate) fn object(bytes: &[u8]) -> Result<Map<String, Value>, JsonWhy> {
    let flags = Flags::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict {
        flags: &flags,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(JsonWhy::NotObject),
        Err(_) if flags.duplicate.get() => Err(JsonWhy::DuplicateName),
        Err(_) if flags.too_deep.get() => Err(JsonWhy::TooDeep),
        Err(e) => Err(JsonWhy::Syntax {
            line: e.line(),
            column: e.column(),
        }),
    }
}

#[derive(Default)]
struct Flags {
    duplicate: Cell<bool>,
    too_deep: Cell<bool>,
}

#[derive(Clone, Copy)]
struct Strict<'f> {
    flags: &'f Flags,
    depth: usize,
}

impl Strict<'_> {
    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            self.flags.too_deep.set(true);
            return Err(E::custom("too deep"));
        }
        Ok(Self {
            flags: self.flags,
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.deeper()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.deeper()?;
        let mut out = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(inner)?;
            if out.insert(name, value).is_some() {
                self.flags.duplicate.set(true);
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(out))
    }
}
