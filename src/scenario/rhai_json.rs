//! JSON text straight into Rhai script values (`parse_json`).
//!
//! A small parser of its own rather than serde. On the 2 KiB order of
//! `benches/script_profile.rs` (35 items), parsing and dropping the value took ~142k
//! instructions with a serde visitor (borrowed keys) and takes ~111k with this; most of
//! what is left is Rhai's own: a B-tree per object, an allocation per string value.
//! (Rhai's own `Deserialize for Dynamic` had been ~21 µs, the visitor ~15 µs.)
//! It follows serde_json where JSON leaves a choice: integers that fit `i64` are
//! integers, other numbers (`-0`, `1.0`, `1e3`, integers beyond `i64`) floats, nesting
//! deeper than 127 an error; numbers are rounded correctly (serde_json's default parser
//! may be one unit off in the last place on long mantissas).

use std::fmt;

use rhai::{Array, Dynamic, ImmutableString, Map};

/// Nesting depth at which arrays and objects are refused (serde_json's limit too): the
/// parser recurses, and a scenario thread's stack is finite.
const MAX_DEPTH: u32 = 128;

/// Why a text is not JSON, and where (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonError {
    what: &'static str,
    line: usize,
    column: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.what, self.line, self.column
        )
    }
}

impl std::error::Error for JsonError {}

/// Parses JSON text into a script value: objects as maps, arrays as arrays, integers
/// that fit `i64` as integers, other numbers as floats, `null` as `()`.
pub fn parse(text: &str) -> Result<Dynamic, JsonError> {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
        what: "",
        scratch: String::new(),
    };
    let parsed = p.value().and_then(|value| {
        p.skip_ws();
        if p.pos < p.bytes.len() {
            Err(p.fail("trailing characters"))
        } else {
            Ok(value)
        }
    });
    parsed.map_err(|Fail| p.error())
}

/// A parse failed; what and where are in the parser. (A unit error keeps the results
/// of the parser's functions small enough for registers.)
struct Fail;

type Parsed<T> = Result<T, Fail>;

/// Exact powers of ten as `f64` (all up to 1e22 are).
static POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` that are `"`, `\` or control characters, as their high bits.
/// Exact up to the first such byte (later ones may be flagged falsely, or not).
#[inline(always)]
fn stops(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    (quote.wrapping_sub(ONES) & !quote
        | backslash.wrapping_sub(ONES) & !backslash
        | word.wrapping_sub(ONES * 0x20) & !word)
        & HIGHS
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: u32,
    /// Why it failed, at `pos`.
    what: &'static str,
    /// A string with escapes, unescaped.
    scratch: String,
}

/// Where `Parser::string` left a string's text.
enum Text {
    /// `text[start..end]`, as it was.
    Raw(usize, usize),
    /// In `scratch`, unescaped.
    Scratch,
}

impl<'a> Parser<'a> {
    #[cold]
    fn fail(&mut self, what: &'static str) -> Fail {
        self.what = what;
        Fail
    }

    /// A number's fraction or exponent without digits, which stopped at `end`.
    #[cold]
    fn no_digits(&mut self, end: usize) -> Fail {
        self.pos = end;
        match self.bytes.get(end) {
            Some(_) => self.fail("invalid number"),
            None => self.eof(),
        }
    }

    #[cold]
    fn eof(&mut self) -> Fail {
        self.pos = self.bytes.len();
        self.fail("EOF while parsing a value")
    }

    /// The failure as the caller sees it.
    fn error(&self) -> JsonError {
        let at = self.pos.min(self.bytes.len());
        let upto = &self.bytes[..at];
        let line = 1 + upto.iter().filter(|&&b| b == b'\n').count();
        let line_start = upto.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        JsonError {
            what: self.what,
            line,
            column: at - line_start + 1,
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        let mut pos = self.pos;
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(pos) {
            pos += 1;
        }
        self.pos = pos;
    }

    /// The next byte that is not whitespace (not consumed).
    #[inline]
    fn peek_token(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    fn value(&mut self) -> Parsed<Dynamic> {
        match self.peek_token() {
            Some(b'"') => {
                self.pos += 1;
                let s = match self.string()? {
                    Text::Raw(start, end) => ImmutableString::from(&self.text[start..end]),
                    Text::Scratch => ImmutableString::from(self.scratch.as_str()),
                };
                Ok(Dynamic::from(s))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b't') => self.literal(b"true", Dynamic::TRUE),
            Some(b'f') => self.literal(b"false", Dynamic::FALSE),
            Some(b'n') => self.literal(b"null", Dynamic::UNIT),
            Some(_) => Err(self.fail("expected value")),
            None => Err(self.eof()),
        }
    }

    fn literal(&mut self, word: &[u8], value: Dynamic) -> Parsed<Dynamic> {
        for &b in word {
            match self.bytes.get(self.pos) {
                Some(&c) if c == b => self.pos += 1,
                Some(_) => return Err(self.fail("expected ident")),
                None => return Err(self.eof()),
            }
        }
        Ok(value)
    }

    fn enter(&mut self) -> Parsed<()> {
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return Err(self.fail("recursion limit exceeded"));
        }
        self.pos += 1;
        Ok(())
    }

    fn array(&mut self) -> Parsed<Dynamic> {
        self.enter()?;
        let mut items = Array::new();
        if self.peek_token() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Dynamic::from_array(items));
        }
        loop {
            items.push(self.value()?);
            match self.peek_token() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Dynamic::from_array(items));
                }
                Some(_) => return Err(self.fail("expected `,` or `]`")),
                None => return Err(self.eof()),
            }
        }
    }

    fn object(&mut self) -> Parsed<Dynamic> {
        self.enter()?;
        let mut map = Map::new();
        match self.peek_token() {
            Some(b'}') => {
                self.pos += 1;
                self.depth -= 1;
                return Ok(Dynamic::from_map(map));
            }
            Some(b'"') => {}
            Some(_) => return Err(self.fail("key must be a string")),
            None => return Err(self.eof()),
        }
        loop {
            self.pos += 1;
            // Made now: the value may reuse `scratch`.
            let key = match self.string()? {
                Text::Raw(start, end) => self.text[start..end].into(),
                Text::Scratch => self.scratch.as_str().into(),
            };
            match self.peek_token() {
                Some(b':') => self.pos += 1,
                Some(_) => return Err(self.fail("expected `:`")),
                None => return Err(self.eof()),
            }
            let value = self.value()?;
            map.insert(key, value);
            match self.peek_token() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Dynamic::from_map(map));
                }
                Some(_) => return Err(self.fail("expected `,` or `}`")),
                None => return Err(self.eof()),
            }
            match self.peek_token() {
                Some(b'"') => {}
                Some(_) => return Err(self.fail("key must be a string")),
                None => return Err(self.eof()),
            }
        }
    }

    /// From `pos` to the next `"`, `\` or control character (or the end).
    #[inline(always)]
    fn plain_run(&self, pos: usize) -> usize {
        let rest = self.bytes.get(pos..).unwrap_or_default();
        let mut chunks = rest.chunks_exact(8);
        let mut at = pos;
        for chunk in &mut chunks {
            let Ok(word) = <[u8; 8]>::try_from(chunk) else {
                break;
            };
            let found = stops(u64::from_le_bytes(word));
            if found != 0 {
                return at + (found.trailing_zeros() / 8) as usize;
            }
            at += 8;
        }
        for &b in chunks.remainder() {
            if b == b'"' || b == b'\\' || b < 0x20 {
                return at;
            }
            at += 1;
        }
        at
    }

    /// The rest of a string whose opening quote was read. A string with no escapes (the
    /// usual) is left where it is in the text.
    #[inline(always)]
    fn string(&mut self) -> Parsed<Text> {
        let start = self.pos;
        let end = self.plain_run(start);
        match self.bytes.get(end) {
            Some(b'"') => {
                self.pos = end + 1;
                Ok(Text::Raw(start, end))
            }
            Some(b'\\') => self.escaped_string(start, end),
            Some(_) => {
                self.pos = end;
                Err(self.fail("control character found while parsing a string"))
            }
            None => Err(self.eof()),
        }
    }

    /// A string with escapes, from its start and its first `\`, into `scratch`.
    #[cold]
    #[inline(never)]
    fn escaped_string(&mut self, start: usize, first_escape: usize) -> Parsed<Text> {
        self.scratch.clear();
        self.scratch.push_str(&self.text[start..first_escape]);
        self.pos = first_escape;
        loop {
            // At a `\`.
            self.pos += 1;
            let Some(&esc) = self.bytes.get(self.pos) else {
                return Err(self.eof());
            };
            self.pos += 1;
            let c = match esc {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => self.unicode_escape()?,
                _ => {
                    self.pos -= 1;
                    return Err(self.fail("invalid escape"));
                }
            };
            self.scratch.push(c);
            let run = self.pos;
            let end = self.plain_run(run);
            self.scratch.push_str(&self.text[run..end]);
            self.pos = end;
            match self.bytes.get(end) {
                Some(b'"') => {
                    self.pos = end + 1;
                    return Ok(Text::Scratch);
                }
                Some(b'\\') => {}
                Some(_) => return Err(self.fail("control character found while parsing a string")),
                None => return Err(self.eof()),
            }
        }
    }

    fn hex4(&mut self) -> Parsed<u16> {
        let mut n: u16 = 0;
        for _ in 0..4 {
            let digit = match self.bytes.get(self.pos) {
                Some(&b @ b'0'..=b'9') => b - b'0',
                Some(&b @ b'a'..=b'f') => b - b'a' + 10,
                Some(&b @ b'A'..=b'F') => b - b'A' + 10,
                Some(_) => return Err(self.fail("invalid escape")),
                None => return Err(self.eof()),
            };
            n = (n << 4) | u16::from(digit);
            self.pos += 1;
        }
        Ok(n)
    }

    /// `\uXXXX` after the `u`, with the second half of a surrogate pair.
    fn unicode_escape(&mut self) -> Parsed<char> {
        let first = self.hex4()?;
        let code = match first {
            0xDC00..=0xDFFF => return Err(self.fail("lone trailing surrogate in hex escape")),
            0xD800..=0xDBFF => {
                if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(self.fail("lone leading surrogate in hex escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.fail("lone leading surrogate in hex escape"));
                }
                0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(second) - 0xDC00)
            }
            other => u32::from(other),
        };
        match char::from_u32(code) {
            Some(c) => Ok(c),
            None => Err(self.fail("invalid unicode code point")),
        }
    }

    /// Digits from `pos`: where they end, their value (saturating), how many.
    #[inline(always)]
    fn digits(&self, mut pos: usize, mut value: u64) -> (usize, u64, usize) {
        let start = pos;
        while let Some(&c) = self.bytes.get(pos) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            value = value.saturating_mul(10).saturating_add(u64::from(d));
            pos += 1;
        }
        (pos, value, pos - start)
    }

    /// A number: an integer as `i64` when it fits (as serde_json: `-0` and integers
    /// out of `i64` are floats), anything else as `f64`.
    #[inline(always)]
    fn number(&mut self) -> Parsed<Dynamic> {
        let start = self.pos;
        let negative = self.bytes.get(start) == Some(&b'-');
        let mut pos = start + usize::from(negative);
        // Integer part: `0`, or a non-zero digit and more digits.
        let (int_end, mut mantissa, int_digits) = match self.bytes.get(pos) {
            Some(b'0') => (pos + 1, 0, 1),
            Some(b'1'..=b'9') => self.digits(pos, 0),
            Some(_) => {
                self.pos = pos;
                return Err(self.fail("invalid number"));
            }
            None => return Err(self.eof()),
        };
        pos = int_end;
        let mut frac_digits = 0;
        let mut is_float = false;
        if self.bytes.get(pos) == Some(&b'.') {
            let (end, m, n) = self.digits(pos + 1, mantissa);
            if n == 0 {
                return Err(self.no_digits(end));
            }
            pos = end;
            mantissa = m;
            frac_digits = n;
            is_float = true;
        }
        let mut has_exp = false;
        if let Some(b'e' | b'E') = self.bytes.get(pos) {
            pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(pos) {
                pos += 1;
            }
            let (end, _, n) = self.digits(pos, 0);
            if n == 0 {
                return Err(self.no_digits(end));
            }
            pos = end;
            is_float = true;
            has_exp = true;
        }
        self.pos = pos;
        if let Some(b'0'..=b'9') = self.bytes.get(pos) {
            // A leading zero followed by digits.
            return Err(self.fail("invalid number"));
        }
        if !is_float && int_digits <= 19 {
            // No more than 19 digits: the mantissa did not saturate.
            if negative {
                let neg = (mantissa as i64).wrapping_neg();
                return Ok(if neg < 0 {
                    Dynamic::from_int(neg)
                } else {
                    Dynamic::from_float(-(mantissa as f64))
                });
            }
            return Ok(match i64::try_from(mantissa) {
                Ok(i) => Dynamic::from_int(i),
                Err(_) => Dynamic::from_float(mantissa as f64),
            });
        }
        if !has_exp && int_digits + frac_digits <= 15 && frac_digits < POW10.len() {
            // Both the digits and the power of ten are exact doubles, so one division
            // rounds correctly.
            let value = mantissa as f64 / POW10[frac_digits];
            return Ok(Dynamic::from_float(if negative { -value } else { value }));
        }
        // Rust's own parser rounds correctly; the grammar was checked above.
        match self.text[start..pos].parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Dynamic::from_float(f)),
            _ => {
                self.pos = start;
                Err(self.fail("number out of range"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> serde_json::Value {
        serde_json::to_value(parse(text).unwrap()).unwrap()
    }

    #[test]
    fn values_come_out_as_serde_json_reads_them() {
        let mut cases = vec![
            r#"{"id":1007,"customer":"c-7","items":[{"sku":"SKU-00001","price":18.01,"qty":2}]}"#
                .to_string(),
            r#"  { "a" : [ 1 , -2 , 3.5e2 , -0.25 , true , false , null , "" ] , "b" : { } , "c" : [ ] }  "#
                .to_string(),
            r#"{"a":1,"a":2}"#.into(),
            r#""é✓😀 \" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00 \u0000""#.into(),
            "\n[1,\r\n\t2]\n".into(),
            r#"[9223372036854775807,-9223372036854775808,0,-1,1e-7,123456789.123456789]"#.into(),
        ];
        cases.push(format!("{}1{}", "[".repeat(127), "]".repeat(127)));
        for case in &cases {
            let expected: serde_json::Value = serde_json::from_str(case).unwrap();
            assert_eq!(json(case), expected, "{case}");
        }
    }

    /// Random documents (a fixed seed), written by serde_json, read back by both.
    #[test]
    fn generated_documents_read_as_serde_json_reads_them() {
        struct Rng(u64);
        impl Rng {
            fn next(&mut self, n: u64) -> u64 {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (self.0 >> 33) % n
            }
        }
        fn text(rng: &mut Rng) -> String {
            const CHARS: [char; 16] = [
                'a', 'b', '"', '\\', '/', '\u{8}', '\n', '\t', '\u{1}', 'é', '☃', '😀', ' ', 'x',
                'y', 'z',
            ];
            (0..rng.next(30))
                .map(|_| CHARS[rng.next(16) as usize])
                .collect()
        }
        fn doc(rng: &mut Rng, depth: u32) -> serde_json::Value {
            use serde_json::Value;
            match rng.next(if depth < 5 { 8 } else { 4 }) {
                0 => Value::Null,
                1 => Value::Bool(rng.next(2) == 1),
                2 => match rng.next(3) {
                    0 => Value::from(rng.next(u64::MAX) as i64),
                    1 => Value::from(rng.next(2000) as i64 - 1000),
                    _ => Value::from((rng.next(1 << 40) as f64 - (1u64 << 39) as f64) / 1024.0),
                },
                3 => Value::String(text(rng)),
                4 | 5 => Value::Array((0..rng.next(6)).map(|_| doc(rng, depth + 1)).collect()),
                _ => Value::Object(
                    (0..rng.next(6))
                        .map(|_| (text(rng), doc(rng, depth + 1)))
                        .collect(),
                ),
            }
        }
        let mut rng = Rng(7);
        for _ in 0..2000 {
            let expected = doc(&mut rng, 0);
            let written = if rng.next(2) == 0 {
                serde_json::to_string(&expected).unwrap()
            } else {
                serde_json::to_string_pretty(&expected).unwrap()
            };
            assert_eq!(json(&written), expected, "{written}");
            // Cut short, it is not JSON any more (unless what is left is).
            let cut =
                &written[..written.floor_char_boundary(rng.next(written.len() as u64) as usize)];
            assert_eq!(
                parse(cut).is_ok(),
                serde_json::from_str::<serde_json::Value>(cut).is_ok(),
                "{cut}"
            );
        }
    }

    #[test]
    fn numbers_are_integers_when_they_fit() {
        let kind = |t: &str| parse(t).unwrap().type_name();
        assert_eq!(kind("0"), "i64");
        assert_eq!(kind("-12"), "i64");
        assert_eq!(kind("9223372036854775807"), "i64");
        assert_eq!(kind("-9223372036854775808"), "i64");
        // As serde_json: `-0`, fractions, exponents and what is beyond i64 are floats.
        assert_eq!(kind("-0"), "f64");
        assert_eq!(kind("1.0"), "f64");
        assert_eq!(kind("1e2"), "f64");
        assert_eq!(kind("9223372036854775808"), "f64");
        assert_eq!(kind("-9223372036854775809"), "f64");
        assert_eq!(kind("123456789012345678901234567890"), "f64");
        let float = |t: &str| parse(t).unwrap().as_float().unwrap();
        assert_eq!(float("18.01"), 18.01);
        assert_eq!(float("-0.25"), -0.25);
        assert_eq!(float("0.30000000000000004"), 0.30000000000000004);
        assert_eq!(float("1.7976931348623157e308"), f64::MAX);
        assert_eq!(float("5e-324"), 5e-324);
        assert_eq!(float("1e-400"), 0.0);
        assert_eq!(
            float("3.141592653589793238462643383279"),
            std::f64::consts::PI
        );
        assert_eq!(float("18446744073709551615"), u64::MAX as f64);
        assert!(float("-0").is_sign_negative());
    }

    #[test]
    fn what_is_not_json_is_refused() {
        let bad = [
            "",
            " ",
            "nul",
            "tru",
            "nulx",
            "truex",
            "tRue",
            "01",
            "-01",
            "1.",
            ".5",
            "-",
            "+1",
            "1e",
            "1e+",
            "0x10",
            "NaN",
            "Infinity",
            "1e400",
            "-1e400",
            "[1,]",
            "[1 2]",
            "[-]",
            "[1e5.5]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":",
            "{\"a\"",
            "{",
            "[",
            "[1,2",
            "\"abc",
            "\"\\",
            "\"\\u",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12G4\"",
            "\"\\ud83d\"",
            "\"\\ude00\"",
            "\"\\ud83dx\"",
            "\"\\ud83d\\u0041\"",
            "\"a\tb\"",
            "\"a\nb\"",
            "{\"a\":1} x",
            "[1] [2]",
            "\u{feff}{}",
        ];
        for text in bad {
            assert!(parse(text).is_err(), "{text:?} was accepted");
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_err(),
                "serde_json accepts {text:?}"
            );
        }
        let deep = format!("{}1{}", "[".repeat(128), "]".repeat(128));
        assert!(parse(&deep).is_err());
        let deep = format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn errors_say_where() {
        let err = parse("{\n  \"a\": 1,\n  \"b\" 2\n}").unwrap_err();
        assert_eq!(err.to_string(), "expected `:` at line 3 column 7");
        assert_eq!(
            parse("[1, 2").unwrap_err().to_string(),
            "EOF while parsing a value at line 1 column 6"
        );
    }
}
