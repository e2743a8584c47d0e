//! Keys: `json.dumps([metric_name, sample_name, labels, help_text], sort_keys=True)`.
//!
//! Python writes every key with its `json` module's defaults: ASCII-only output (other
//! characters as `\uXXXX` escapes in lower-case hex, characters beyond the Basic Multilingual
//! Plane as surrogate pairs), the separators `", "` and `": "`, and label names sorted by code
//! point. [`encode_key`] writes exactly those bytes; [`decode_key`] reads any JSON text of that
//! shape, whatever its spacing or escapes, and rejects everything else with a [`KeyError`].

use std::borrow::Cow;
use std::fmt;

/// A decoded key: which family and sample a value belongs to, its labels and the help text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The family name (`requests` for a counter whose samples are `requests_total`).
    pub metric: String,
    /// The sample name (`requests_total`, `latency_bucket`, `latency_sum`, ...).
    pub sample: String,
    /// Label names and values, sorted by name, names unique.
    pub labels: Vec<(String, String)>,
    /// The help text of the family.
    pub help: String,
}

/// A decoded key that borrows from the key's bytes wherever a string has no escape (nearly
/// always): what a reader that decodes many keys uses, to allocate only the label list.
///
/// ```
/// use prometheus_multiproc_format::key::decode_key_ref;
///
/// let k = decode_key_ref(br#"["x", "x_total", {"a": "\u00e9", "b": "2"}, "Help."]"#).unwrap();
/// assert_eq!(k.sample, "x_total");
/// assert_eq!(k.labels[0].1, "é"); // unescaped: an owned string
/// assert!(matches!(k.labels[1].1, std::borrow::Cow::Borrowed("2")));
/// assert_eq!(k.into_owned().metric, "x");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRef<'a> {
    /// The family name.
    pub metric: Cow<'a, str>,
    /// The sample name.
    pub sample: Cow<'a, str>,
    /// Label names and values, sorted by name, names unique.
    pub labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The help text of the family.
    pub help: Cow<'a, str>,
}

impl KeyRef<'_> {
    /// The same key with owned strings.
    pub fn into_owned(self) -> Key {
        Key {
            metric: self.metric.into_owned(),
            sample: self.sample.into_owned(),
            labels: self
                .labels
                .into_iter()
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect(),
            help: self.help.into_owned(),
        }
    }
}

/// Why a key could not be decoded, with the byte offset inside the key where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// Byte offset inside the key.
    pub offset: usize,
    /// What is wrong there.
    pub reason: &'static str,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid key at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for KeyError {}

/// Encodes a key exactly as Python's `mmap_key` does.
///
/// Labels are sorted by name; when a name repeats, the last value wins (as `dict(zip(...))`).
///
/// ```
/// use prometheus_multiproc_format::key::encode_key;
/// let k = encode_key("h", "h_bucket", &[("le", "+Inf"), ("b", "é\n\"")], "Help 😀");
/// assert_eq!(k, r#"["h", "h_bucket", {"b": "\u00e9\n\"", "le": "+Inf"}, "Help \ud83d\ude00"]"#);
/// ```
pub fn encode_key<N: AsRef<str>, V: AsRef<str>>(
    metric: &str,
    sample: &str,
    labels: &[(N, V)],
    help: &str,
) -> String {
    let mut sorted: Vec<(&str, &str)> = Vec::with_capacity(labels.len());
    for (n, v) in labels {
        let (n, v) = (n.as_ref(), v.as_ref());
        match sorted.iter_mut().find(|(name, _)| *name == n) {
            Some(slot) => slot.1 = v,
            None => sorted.push((n, v)),
        }
    }
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(
        16 + metric.len()
            + sample.len()
            + help.len()
            + sorted
                .iter()
                .map(|(n, v)| n.len() + v.len() + 8)
                .sum::<usize>(),
    );
    out.push('[');
    write_json_string(&mut out, metric);
    out.push_str(", ");
    write_json_string(&mut out, sample);
    out.push_str(", {");
    for (i, (n, v)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_json_string(&mut out, n);
        out.push_str(": ");
        write_json_string(&mut out, v);
    }
    out.push_str("}, ");
    write_json_string(&mut out, help);
    out.push(']');
    out
}

/// Appends `s` as a JSON string the way Python's `json.dumps` writes it with `ensure_ascii=True`.
pub fn write_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str("\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[((*unit >> shift) & 0xf) as usize] as char);
                    }
                }
            }
        }
    }
    out.push('"');
}

/// Decodes a key written by Python (or by [`encode_key`]).
///
/// ```
/// use prometheus_multiproc_format::key::decode_key;
/// let k = decode_key(br#"["x", "x_total", {"a": "\u00e9"}, "Help."]"#).unwrap();
/// assert_eq!(k.metric, "x");
/// assert_eq!(k.labels, vec![("a".to_string(), "é".to_string())]);
/// assert!(decode_key(b"[\"x\"").is_err());
/// ```
pub fn decode_key(bytes: &[u8]) -> Result<Key, KeyError> {
    decode_key_ref(bytes).map(KeyRef::into_owned)
}

/// Decodes a key as [`decode_key`] does, borrowing its strings from `bytes` where they have no
/// escapes.
pub fn decode_key_ref(bytes: &[u8]) -> Result<KeyRef<'_>, KeyError> {
    let mut key = KeyRef::default();
    decode_key_into(bytes, &mut key)?;
    Ok(key)
}

/// Decodes a key into `key` as [`decode_key_ref`] does, reusing the memory of its label list:
/// for a reader that decodes many keys one after the other. After an error, `key` holds parts
/// of the key at best.
///
/// ```
/// use prometheus_multiproc_format::key::{decode_key_into, KeyRef};
///
/// let mut key = KeyRef::default();
/// for raw in [&br#"["a", "a_total", {"x": "1"}, "A."]"#[..], br#"["b", "b", {}, "B."]"#] {
///     decode_key_into(raw, &mut key).unwrap();
///     assert_eq!(key.metric, key.sample.trim_end_matches("_total"));
/// }
/// assert!(key.labels.is_empty());
/// assert!(decode_key_into(b"[", &mut key).is_err());
/// ```
pub fn decode_key_into<'a>(bytes: &'a [u8], key: &mut KeyRef<'a>) -> Result<(), KeyError> {
    // Checked once here, so that strings are sliced from `text` without checking each again.
    let text = std::str::from_utf8(bytes).map_err(|e| KeyError {
        offset: e.valid_up_to(),
        reason: "invalid UTF-8",
    })?;
    if decode_plain(bytes, text, key).is_some() {
        return Ok(());
    }
    decode_general(bytes, text, key)
}

/// Decodes any key, `text` being `bytes` checked as UTF-8.
fn decode_general<'a>(
    bytes: &'a [u8],
    text: &'a str,
    key: &mut KeyRef<'a>,
) -> Result<(), KeyError> {
    let mut p = Parser {
        b: bytes,
        text,
        pos: 0,
    };
    p.ws();
    p.expect(b'[')?;
    let metric = p.string()?;
    p.comma()?;
    let sample = p.string()?;
    p.comma()?;
    p.ws();
    p.expect(b'{')?;
    let labels = &mut key.labels;
    labels.clear();
    p.ws();
    if p.peek() == Some(b'}') {
        p.pos += 1;
    } else {
        loop {
            let name = p.string()?;
            p.ws();
            p.expect(b':')?;
            let value = p.string()?;
            // A repeated name keeps the last value, as Python's dict does. Names come sorted
            // from Python's writer, so only a name that does not sort last can be a repeat.
            let repeat = match labels.last() {
                Some((last, _)) if name <= *last => labels.iter_mut().find(|(n, _)| *n == name),
                _ => None,
            };
            match repeat {
                Some(slot) => slot.1 = value,
                None => labels.push((name, value)),
            }
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(p.err(p.pos.saturating_sub(1), "expected ',' or '}' in labels")),
            }
        }
    }
    p.comma()?;
    let help = p.string()?;
    p.ws();
    p.expect(b']')?;
    p.ws();
    if p.pos != bytes.len() {
        return Err(p.err(p.pos, "trailing bytes after the key"));
    }
    if !labels.windows(2).all(|w| w[0].0 < w[1].0) {
        labels.sort_by(|a, b| a.0.cmp(&b.0));
    }
    key.metric = metric;
    key.sample = sample;
    key.help = help;
    Ok(())
}

/// Decodes a key of exactly the form Python's `json.dumps` writes (`, ` and `: ` between items,
/// no other space) whose strings have no escape, with label names in order, into `key`: nearly
/// every key a worker writes. `None` for any other input (`key` then holds parts of it at
/// best), which the general parser decodes or rejects.
///
/// With no backslash in the key, every quote opens or closes a string: the quotes are found 8
/// bytes at a time, then only the few bytes between strings are checked.
fn decode_plain<'a>(bytes: &'a [u8], text: &'a str, key: &mut KeyRef<'a>) -> Option<()> {
    // Room for 7 labels; keys with more go to the general parser.
    const MAX_QUOTES: usize = 2 * (3 + 2 * 7);
    let mut quotes = [0u16; MAX_QUOTES];
    let mut count = 0;
    // No escape and no control character (those are errors, for the general parser to name);
    // a fold without early exit, which the compiler turns into vector compares.
    let special = bytes
        .iter()
        .fold(false, |any, &b| any | (b == b'\\') | (b < 0x20));
    if special || bytes.len() > usize::from(u16::MAX) || bytes.first() != Some(&b'[') {
        return None;
    }
    for at in (0..bytes.len()).step_by(8) {
        let mut found = zero_bytes(word_at(bytes, at) ^ repeat(b'"'));
        while found != 0 {
            *quotes.get_mut(count)? = (at + found.trailing_zeros() as usize / 8) as u16;
            count += 1;
            found &= found - 1;
        }
    }
    if count % 2 != 0 || count < 6 {
        return None;
    }
    let quotes = &quotes[..count];
    // String `i` (its text), and the bytes between it and the next.
    let string = |i: usize| {
        let (open, close) = (usize::from(quotes[2 * i]), usize::from(quotes[2 * i + 1]));
        text.get(open + 1..close)
    };
    let after = |i: usize| {
        let close = usize::from(quotes[2 * i + 1]) + 1;
        let next = quotes
            .get(2 * i + 2)
            .map_or(bytes.len(), |&q| usize::from(q));
        bytes.get(close..next)
    };
    let strings = count / 2;
    // The separators are compared as patterns: in line, without calls to `memcmp`.
    (quotes[0] == 1 && matches!(after(0)?, b", ")).then_some(())?;
    key.labels.clear();
    if strings == 3 {
        matches!(after(1)?, b", {}, ").then_some(())?;
    } else {
        (matches!(after(1)?, b", {") && strings % 2 == 1).then_some(())?;
        let last = strings - 2;
        for name in (2..last).step_by(2) {
            let next = match after(name + 1)? {
                b", " => name + 1 != last,
                b"}, " => name + 1 == last,
                _ => false,
            };
            (matches!(after(name)?, b": ") && next).then_some(())?;
            let name_text = string(name)?;
            if key
                .labels
                .last()
                .is_some_and(|(previous, _)| !precedes(previous, name_text))
            {
                return None;
            }
            key.labels
                .push((Cow::Borrowed(name_text), Cow::Borrowed(string(name + 1)?)));
        }
    }
    matches!(after(strings - 1)?, b"]").then_some(())?;
    key.metric = Cow::Borrowed(string(0)?);
    key.sample = Cow::Borrowed(string(1)?);
    key.help = Cow::Borrowed(string(strings - 1)?);
    Some(())
}

/// Whether `a` sorts before `b`, deciding on the first bytes where they differ (label names
/// usually do) without a call to `memcmp`.
#[inline]
fn precedes(a: &str, b: &str) -> bool {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x < y,
        _ => a < b,
    }
}

/// `byte` in each byte of a word.
const fn repeat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The high bit of each byte of `x` that is 0, and no other bit.
fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = repeat(0x7f);
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// The word of `bytes` at `at`, little-endian, padded with spaces past the end.
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    match bytes.get(at..at + 8) {
        Some(w) => u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]),
        None => {
            let rest = bytes.get(at..).unwrap_or_default();
            let mut word = [b' '; 8];
            word[..rest.len()].copy_from_slice(rest);
            u64::from_le_bytes(word)
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    /// `b`, checked as UTF-8.
    text: &'a str,
    pos: usize,
}

/// Bytes that end a run of plain string bytes: a quote, a backslash, a control character.
const SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

impl<'a> Parser<'a> {
    fn err(&self, offset: usize, reason: &'static str) -> KeyError {
        KeyError { offset, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), KeyError> {
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            None => Err(self.err(self.pos, "key ends too early")),
            Some(_) => Err(self.err(
                self.pos,
                match c {
                    b'[' => "expected '['",
                    b']' => "expected ']'",
                    b'{' => "expected '{'",
                    b':' => "expected ':'",
                    b'"' => "expected a string",
                    _ => "unexpected character",
                },
            )),
        }
    }

    fn comma(&mut self) -> Result<(), KeyError> {
        self.ws();
        self.expect(b',')
    }

    fn hex4(&mut self) -> Result<u16, KeyError> {
        let start = self.pos;
        let digits = self
            .b
            .get(start..start + 4)
            .ok_or_else(|| self.err(start, "truncated \\u escape"))?;
        let mut v: u16 = 0;
        for &d in digits {
            let n = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.err(start, "invalid \\u escape")),
            };
            v = (v << 4) | u16::from(n);
        }
        self.pos += 4;
        Ok(v)
    }

    /// The number of plain bytes from the current position: up to a quote, a backslash, a
    /// control character or the end.
    fn plain_run(&self) -> usize {
        let rest = self.b.get(self.pos..).unwrap_or_default();
        rest.iter()
            .position(|&c| SPECIAL[usize::from(c)])
            .unwrap_or(rest.len())
    }

    /// `len` bytes of the text from `start`: they lie between ASCII bytes (or the ends), so on
    /// character boundaries.
    fn slice(&self, start: usize, len: usize) -> &'a str {
        self.text.get(start..start + len).unwrap_or_default()
    }

    fn string(&mut self) -> Result<Cow<'a, str>, KeyError> {
        self.ws();
        self.expect(b'"')?;
        // The common case: no escape before the closing quote; borrowed.
        let start = self.pos;
        let run = self.plain_run();
        if self.b.get(start + run) == Some(&b'"') {
            self.pos += run + 1;
            return Ok(Cow::Borrowed(self.slice(start, run)));
        }
        let mut out = String::new();
        loop {
            // Copy the run of plain bytes up to the next quote, backslash or control byte.
            let start = self.pos;
            let run = self.plain_run();
            if run > 0 {
                out.push_str(self.slice(start, run));
                self.pos += run;
            }
            match self.next() {
                None => return Err(self.err(self.pos, "unterminated string")),
                Some(b'"') => return Ok(Cow::Owned(out)),
                Some(b'\\') => {
                    let at = self.pos - 1;
                    let c = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            if (0xd800..0xdc00).contains(&hi) {
                                if self.b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(self.err(at, "lone surrogate in \\u escape"));
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(self.err(at, "lone surrogate in \\u escape"));
                                }
                                let cp = 0x10000
                                    + ((u32::from(hi) - 0xd800) << 10)
                                    + (u32::from(lo) - 0xdc00);
                                char::from_u32(cp)
                                    .ok_or_else(|| self.err(at, "invalid \\u escape"))?
                            } else {
                                char::from_u32(u32::from(hi))
                                    .ok_or_else(|| self.err(at, "lone surrogate in \\u escape"))?
                            }
                        }
                        _ => return Err(self.err(at, "invalid escape")),
                    };
                    out.push(c);
                }
                Some(_) => return Err(self.err(self.pos - 1, "control character in string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `bytes` with the shortcut for plain keys and with the general parser: whatever
    /// the shortcut decodes, the general parser decodes the same. Returns whether the shortcut
    /// took it.
    fn plain_agrees(bytes: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return false;
        };
        let mut plain = KeyRef::default();
        let took = decode_plain(bytes, text, &mut plain).is_some();
        let mut general = KeyRef::default();
        let result = decode_general(bytes, text, &mut general);
        if took {
            assert_eq!(result, Ok(()), "{:?}", String::from_utf8_lossy(bytes));
            assert_eq!(plain, general, "{:?}", String::from_utf8_lossy(bytes));
        }
        took
    }

    #[test]
    fn repeated_or_unsorted_label_names_go_to_the_general_parser() {
        // Python's dict keeps the last value of a repeated name; names come sorted.
        for raw in [
            &br#"["a", "a_total", {"x": "1", "x": "2"}, "h"]"#[..],
            br#"["a", "a_total", {"y": "1", "x": "2"}, "h"]"#,
            br#"["a", "a_total", {"x": "1", "xa": "2", "x": "3"}, "h"]"#,
        ] {
            assert!(!plain_agrees(raw), "{}", String::from_utf8_lossy(raw));
        }
        let key = decode_key(br#"["a", "a_total", {"x": "1", "x": "2"}, "h"]"#).unwrap();
        assert_eq!(key.labels, vec![("x".to_string(), "2".to_string())]);
        let key = decode_key(br#"["a", "a_total", {"y": "1", "x": "2"}, "h"]"#).unwrap();
        assert_eq!(key.labels[0].0, "x");
    }

    #[test]
    fn keys_with_more_labels_than_the_shortcut_holds_are_decoded_whole() {
        for n in [7, 8, 20] {
            let labels: Vec<(String, String)> = (0..n)
                .map(|i| (format!("l{i:02}"), format!("v{i}")))
                .collect();
            let key = encode_key("m", "m_total", &labels, "Help.");
            assert_eq!(plain_agrees(key.as_bytes()), n <= 7, "{n} labels");
            assert_eq!(decode_key(key.as_bytes()).unwrap().labels, labels);
        }
    }

    proptest! {
        /// Keys as Python writes them, then with every single-byte edit: each byte deleted,
        /// and each byte of the JSON syntax, a space, a control character or a letter put in
        /// its place or before it.
        #[test]
        fn plain_keys_decode_as_the_general_parser_decodes_them(
            metric in "[a-z_]{0,8}",
            labels in prop::collection::vec(("[a-z_]{0,3}", "[a-z/ \"\\\\\n\u{e9}\u{1f600}]{0,6}"), 0..5),
            help in "[A-Za-z .\"]{0,12}",
        ) {
            let key = encode_key(&metric, &format!("{metric}_total"), &labels, &help);
            let took = plain_agrees(key.as_bytes());
            prop_assert_eq!(took, !key.contains('\\'), "{}", key);
            for at in 0..key.len() {
                let mut bytes = key.clone().into_bytes();
                bytes.remove(at);
                plain_agrees(&bytes);
                for &b in b"\"\\,:{}[] a\x01\x00" {
                    let mut bytes = key.clone().into_bytes();
                    bytes[at] = b;
                    plain_agrees(&bytes);
                    bytes.insert(at, b);
                    plain_agrees(&bytes);
                }
            }
        }
    }

    #[test]
    fn encodes_like_python() {
        assert_eq!(
            encode_key(
                "http_requests",
                "http_requests_total",
                &[("path", "/users/{id}"), ("method", "GET")],
                "Requests."
            ),
            r#"["http_requests", "http_requests_total", {"method": "GET", "path": "/users/{id}"}, "Requests."]"#
        );
        assert_eq!(
            encode_key::<&str, &str>("a", "a", &[], "\u{0}\u{1f}\u{7f}\t"),
            r#"["a", "a", {}, "\u0000\u001f\u007f\t"]"#
        );
    }

    #[test]
    fn repeated_label_name_keeps_last_value() {
        assert_eq!(
            encode_key("a", "a", &[("x", "1"), ("x", "2")], ""),
            r#"["a", "a", {"x": "2"}, ""]"#
        );
    }

    #[test]
    fn decode_round_trips_and_accepts_other_spacing() {
        let k = decode_key(b" [ \"m\",\"s\" ,{\"b\":\"2\",\"a\":\"\\ud83d\\ude00\\/\"}, \"h\" ] ")
            .unwrap();
        assert_eq!(k.metric, "m");
        assert_eq!(k.sample, "s");
        assert_eq!(
            k.labels,
            vec![("a".into(), "😀/".into()), ("b".into(), "2".into())]
        );
        assert_eq!(k.help, "h");
    }

    #[test]
    fn rejects_malformed_keys_with_offsets() {
        for bad in [
            &b""[..],
            b"[",
            b"[\"a\", \"b\", {}, \"c\"",
            b"[\"a\", \"b\", {}, \"c\"] x",
            b"[\"a\", \"b\", {\"x\": 1}, \"c\"]",
            b"[\"a\", \"b\", {}, \"\\ud800\"]",
            b"[\"a\", \"b\", {}, \"\\udc00\"]",
            b"[\"a\", \"b\", {}, \"\\u12\"]",
            b"[\"a\", \"b\", {}, \"\xff\"]",
            b"[\"a\", \"b\", {}, \"\n\"]",
            b"[\"a\", \"b\", {}, \"\\q\"]",
            b"[\"a\", \"b\", {,}, \"c\"]",
        ] {
            let e = decode_key(bad).unwrap_err();
            assert!(e.offset <= bad.len(), "{e} for {bad:?}");
        }
    }
}
