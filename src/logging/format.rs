//! The two log formats, written by us so that every value passes the redactor on its
//! way out (`crate::redact`): one JSON object per line, or a human-readable line.
//! Neither can be made to start a new line by what it logs: JSON escapes control
//! characters, the human format has them escaped by the redactor.

use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Number, Value};
use slog::{Drain, KV, Key, OwnedKVList, Record, Serializer};

use crate::redact::redactor;

/// Which shape a line has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Json,
    Human,
}

/// A drain writing one line per record to `out`.
pub struct LineDrain<W: Write + Send> {
    shape: Shape,
    out: Mutex<W>,
}

impl<W: Write + Send> LineDrain<W> {
    pub fn new(shape: Shape, out: W) -> LineDrain<W> {
        LineDrain {
            shape,
            out: Mutex::new(out),
        }
    }
}

impl<W: Write + Send> Drain for LineDrain<W> {
    type Ok = ();
    type Err = std::io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), std::io::Error> {
        let mut fields = Fields::default();
        // The record's own pairs first (they are the more specific), in the order they
        // were written (slog hands them over last first), then the logger's.
        let _ = record.kv().serialize(record, &mut fields);
        fields.0.reverse();
        let _ = values.serialize(record, &mut fields);
        let message = record.msg().to_string();
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut line = match self.shape {
            Shape::Json => json_line(&ts, record, &message, fields),
            Shape::Human => human_line(&ts, record, &message, fields),
        };
        line.push('\n');
        let mut out = self
            .out
            .lock()
            .map_err(|_| std::io::Error::other("log writer poisoned"))?;
        out.write_all(line.as_bytes())
    }
}

fn json_line(ts: &str, record: &Record<'_>, message: &str, fields: Fields) -> String {
    let mut map = Map::new();
    map.insert("msg".into(), Value::String(redactor().mask(message).into()));
    map.insert(
        "level".into(),
        Value::String(record.level().as_short_str().into()),
    );
    map.insert("ts".into(), Value::String(ts.into()));
    for (key, value) in fields.0 {
        let value = match value {
            Value::String(s) => Value::String(redactor().mask(&s).into_owned()),
            other => other,
        };
        map.entry(key).or_insert(value);
    }
    serde_json::to_string(&Value::Object(map)).unwrap_or_default()
}

fn human_line(ts: &str, record: &Record<'_>, message: &str, fields: Fields) -> String {
    let mut line = format!(
        "{ts} {} {}",
        record.level().as_short_str(),
        redactor().clean(message)
    );
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in fields.0 {
        if seen.contains(&key) {
            continue;
        }
        let text = match &value {
            Value::String(s) => redactor().clean(s).into_owned(),
            other => other.to_string(),
        };
        line.push_str(", ");
        line.push_str(&redactor().clean(&key));
        line.push_str(": ");
        line.push_str(&text);
        seen.push(key);
    }
    line
}

/// A record's key-value pairs, in order, numbers kept as numbers.
#[derive(Default)]
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn push(&mut self, key: Key, value: Value) -> slog::Result {
        self.0.push((key.to_string(), value));
        Ok(())
    }
}

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        self.push(key, Value::String(val.to_string()))
    }
    fn emit_str(&mut self, key: Key, val: &str) -> slog::Result {
        self.push(key, Value::String(val.to_string()))
    }
    fn emit_bool(&mut self, key: Key, val: bool) -> slog::Result {
        self.push(key, Value::Bool(val))
    }
    fn emit_u64(&mut self, key: Key, val: u64) -> slog::Result {
        self.push(key, Value::Number(val.into()))
    }
    fn emit_i64(&mut self, key: Key, val: i64) -> slog::Result {
        self.push(key, Value::Number(val.into()))
    }
    fn emit_u32(&mut self, key: Key, val: u32) -> slog::Result {
        self.push(key, Value::Number(val.into()))
    }
    fn emit_i32(&mut self, key: Key, val: i32) -> slog::Result {
        self.push(key, Value::Number(val.into()))
    }
    fn emit_u16(&mut self, key: Key, val: u16) -> slog::Result {
        self.push(key, Value::Number(val.into()))
    }
    fn emit_usize(&mut self, key: Key, val: usize) -> slog::Result {
        self.push(key, Value::Number((val as u64).into()))
    }
    fn emit_isize(&mut self, key: Key, val: isize) -> slog::Result {
        self.push(key, Value::Number((val as i64).into()))
    }
    fn emit_f64(&mut self, key: Key, val: f64) -> slog::Result {
        let value = Number::from_f64(val).map_or(Value::Null, Value::Number);
        self.push(key, value)
    }
    fn emit_unit(&mut self, key: Key) -> slog::Result {
        self.push(key, Value::Null)
    }
    fn emit_none(&mut self, key: Key) -> slog::Result {
        self.push(key, Value::Null)
    }
}
