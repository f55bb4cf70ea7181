//! JSON text straight into Rhai script values (`parse_json`).
//!
//! Measured on a 2 KiB order of 35 items (release, mimalloc): Rhai's own
//! `Deserialize for Dynamic` took ~21 µs, `serde_json::Value` ~10 µs, and that plus a
//! conversion ~22 µs — most of it allocations for map keys. This visitor borrows keys
//! from the text where it can (short ones are stored inline by Rhai's map key type, so
//! most keys allocate nothing) and sizes arrays from the parser's hint.

use std::fmt;

use rhai::{Dynamic, Map};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A script value read from JSON.
pub struct ScriptValue(pub Dynamic);

impl<'de> Deserialize<'de> for ScriptValue {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(ValueVisitor).map(ScriptValue)
    }
}

/// Parses JSON text into a script value.
pub fn parse(text: &str) -> Result<Dynamic, serde_json::Error> {
    serde_json::from_str::<ScriptValue>(text).map(|v| v.0)
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Dynamic, E> {
        Ok(Dynamic::from_bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Dynamic, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Dynamic::from_int(i),
            Err(_) => Dynamic::from_float(v as f64),
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Dynamic, E> {
        Ok(Dynamic::from(rhai::ImmutableString::from(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<Dynamic, E> {
        Ok(Dynamic::from(v))
    }
    fn visit_unit<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }
    fn visit_none<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(ScriptValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Dynamic::from_array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Dynamic, A::Error> {
        let mut map = Map::new();
        while let Some(Key(key)) = access.next_key()? {
            let ScriptValue(v) = access.next_value()?;
            map.insert(key.as_ref().into(), v);
        }
        Ok(Dynamic::from_map(map))
    }
}

/// A map key, borrowed from the text unless it had escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        de.deserialize_str(KeyVisitor)
    }
}
