//! The file layout, as Python's `mmap_dict.py` reads and writes it.
//!
//! ```text
//! offset 0  i32  used        bytes in use from offset 0 (0 in a fresh file means 8)
//! offset 4  4 bytes padding
//! offset 8  entries, back to back, until `used`:
//!           i32  key_len
//!           key_len bytes of UTF-8 key
//!           1..=8 ASCII spaces, so that the value starts 8-byte aligned
//!           f64  value
//!           f64  timestamp (seconds since the epoch, 0.0 when never set)
//! ```
//!
//! Integers and floats are in native byte order (little endian on every platform Python's
//! `struct` module and this crate target in practice). Files start at 64 KiB and double.
//!
//! [`entries`] reads `used` once and bounds every entry by it and by the bytes it was given, so a
//! file that a writer grows concurrently, a truncated file or a hostile one can never make it
//! read out of bounds or panic.

use std::fmt;

/// Bytes before the first entry: `used` and 4 bytes of padding.
pub const HEADER_LEN: usize = 8;
/// The size Python gives a new file; files grow by doubling.
pub const INITIAL_FILE_SIZE: usize = 1 << 16;

/// The key length plus its padding: the value that follows starts 8-byte aligned.
///
/// Python pads with `8 - (key_len + 4) % 8` spaces, so 1 to 8, never 0.
///
/// ```
/// use prometheus_multiproc_format::layout::padded_key_len;
/// assert_eq!(padded_key_len(3), 4);
/// assert_eq!(padded_key_len(4), 12);
/// ```
pub const fn padded_key_len(key_len: usize) -> usize {
    key_len + (8 - (key_len + 4) % 8)
}

/// The bytes one entry with a key of `key_len` bytes takes.
pub const fn entry_len(key_len: usize) -> usize {
    4 + padded_key_len(key_len) + 16
}

/// The file size Python's writer has reached once `used` bytes are in use: 64 KiB, doubled
/// until it holds them.
pub fn file_size_for(used: usize) -> usize {
    let mut size = INITIAL_FILE_SIZE;
    while size < used {
        size = size.saturating_mul(2);
    }
    size
}

/// One entry of a file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry<'a> {
    /// The raw key bytes (UTF-8 JSON, see [`crate::key`]).
    pub key: &'a [u8],
    /// The value.
    pub value: f64,
    /// The timestamp: seconds since the epoch, 0.0 when never set.
    pub timestamp: f64,
    /// Offset of the entry (its `key_len` field) from the start of the file.
    pub offset: usize,
    /// Offset of the value; 8-byte aligned in a well-formed file.
    pub value_offset: usize,
}

/// What is wrong with a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file has no bytes at all.
    Empty,
    /// The file is shorter than the 8-byte header.
    ShortHeader {
        /// Bytes present.
        len: usize,
    },
    /// `used` is negative or points inside the header.
    InvalidUsed {
        /// The value found.
        used: i64,
    },
    /// `used` says more bytes are in use than the file holds.
    UsedBeyondEnd {
        /// The value found.
        used: usize,
        /// Bytes present.
        len: usize,
    },
    /// An entry's key length is negative.
    NegativeKeyLength {
        /// The value found.
        key_len: i64,
    },
    /// An entry does not fit before `used`.
    EntryBeyondUsed {
        /// The bytes the entry needs from its offset.
        needs: usize,
        /// `used`.
        used: usize,
    },
}

/// A layout error: what is wrong and at which byte offset of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutError {
    /// Offset from the start of the file.
    pub offset: usize,
    /// What is wrong there.
    pub kind: ErrorKind,
}

impl LayoutError {
    /// A short, stable name for the kind of problem, usable as a metric label value:
    /// `empty`, `truncated` or `corrupt`.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::Empty => "empty",
            ErrorKind::ShortHeader { .. } | ErrorKind::UsedBeyondEnd { .. } => "truncated",
            _ => "corrupt",
        }
    }
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: ", self.offset)?;
        match &self.kind {
            ErrorKind::Empty => write!(f, "file is empty (0 bytes)"),
            ErrorKind::ShortHeader { len } => {
                write!(f, "file is {len} bytes, shorter than the 8-byte header")
            }
            ErrorKind::InvalidUsed { used } => {
                write!(
                    f,
                    "header says {used} bytes are used, which is not a valid size"
                )
            }
            ErrorKind::UsedBeyondEnd { used, len } => write!(
                f,
                "header says {used} bytes are used but the file has only {len} (truncated)"
            ),
            ErrorKind::NegativeKeyLength { key_len } => {
                write!(f, "entry has a negative key length {key_len}")
            }
            ErrorKind::EntryBeyondUsed { needs, used } => {
                write!(f, "entry needs {needs} bytes, past the {used} bytes in use")
            }
        }
    }
}

impl std::error::Error for LayoutError {}

fn read_i32(data: &[u8], at: usize) -> Option<i32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(i32::from_ne_bytes(bytes.try_into().ok()?))
}

fn read_f64(data: &[u8], at: usize) -> Option<f64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(f64::from_ne_bytes(bytes.try_into().ok()?))
}

/// Reads and checks the `used` header: the number of bytes in use, at least 8.
///
/// ```
/// use prometheus_multiproc_format::layout::used;
/// assert_eq!(used(&[0; 16]).unwrap(), 8); // a fresh file
/// assert!(used(&[]).is_err());
/// ```
pub fn used(data: &[u8]) -> Result<usize, LayoutError> {
    if data.is_empty() {
        return Err(LayoutError {
            offset: 0,
            kind: ErrorKind::Empty,
        });
    }
    if data.len() < HEADER_LEN {
        return Err(LayoutError {
            offset: 0,
            kind: ErrorKind::ShortHeader { len: data.len() },
        });
    }
    let raw = read_i32(data, 0).unwrap_or(0);
    let used = match raw {
        0 => HEADER_LEN,
        n if n < HEADER_LEN as i32 => {
            return Err(LayoutError {
                offset: 0,
                kind: ErrorKind::InvalidUsed { used: i64::from(n) },
            })
        }
        n => n as usize,
    };
    if used > data.len() {
        return Err(LayoutError {
            offset: 0,
            kind: ErrorKind::UsedBeyondEnd {
                used,
                len: data.len(),
            },
        });
    }
    Ok(used)
}

/// Iterates over the entries of a file's bytes.
///
/// The header is checked first; each entry is then checked as it is reached. After the first
/// error the iterator ends.
pub fn entries(data: &[u8]) -> Result<Entries<'_>, LayoutError> {
    let used = used(data)?;
    Ok(Entries {
        data: &data[..used],
        pos: HEADER_LEN,
    })
}

/// The iterator returned by [`entries`].
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Entries<'_> {
    /// The `used` value the entries are bounded by.
    pub fn used(&self) -> usize {
        self.data.len()
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, LayoutError>;

    fn next(&mut self) -> Option<Self::Item> {
        let used = self.data.len();
        let offset = self.pos;
        if offset >= used {
            return None;
        }
        let fail = |kind| Some(Err(LayoutError { offset, kind }));
        // Stop after this entry whatever happens; a good entry moves `pos` on below.
        self.pos = used;
        let Some(key_len) = read_i32(self.data, offset) else {
            return fail(ErrorKind::EntryBeyondUsed { needs: 4, used });
        };
        if key_len < 0 {
            return fail(ErrorKind::NegativeKeyLength {
                key_len: i64::from(key_len),
            });
        }
        let key_len = key_len as usize;
        let needs = entry_len(key_len);
        if needs > used - offset {
            return fail(ErrorKind::EntryBeyondUsed { needs, used });
        }
        let key = &self.data[offset + 4..offset + 4 + key_len];
        let value_offset = offset + 4 + padded_key_len(key_len);
        let value = read_f64(self.data, value_offset).unwrap_or(f64::NAN);
        let timestamp = read_f64(self.data, value_offset + 8).unwrap_or(f64::NAN);
        self.pos = offset + needs;
        Some(Ok(Entry {
            key,
            value,
            timestamp,
            offset,
            value_offset,
        }))
    }
}

/// Appends one entry (key length, key, space padding, value, timestamp) to `out`.
///
/// `out` must already hold a multiple of 8 bytes for the value to be aligned, as after
/// the header or another entry.
pub fn append_entry(out: &mut Vec<u8>, key: &[u8], value: f64, timestamp: f64) {
    let key_len = i32::try_from(key.len()).unwrap_or(i32::MAX);
    out.extend_from_slice(&key_len.to_ne_bytes());
    out.extend_from_slice(key);
    out.resize(out.len() + padded_key_len(key.len()) - key.len(), b' ');
    out.extend_from_slice(&value.to_ne_bytes());
    out.extend_from_slice(&timestamp.to_ne_bytes());
}

/// Writes a whole file as Python's writer leaves it after creating these entries in order:
/// the header, the entries, zeros up to the file size (64 KiB doubled until they fit).
///
/// ```
/// use prometheus_multiproc_format::layout::{write_file, used};
/// let f = write_file([(&b"k"[..], 1.0, 0.0)]);
/// assert_eq!(used(&f).unwrap(), 8 + 4 + 4 + 16);
/// ```
pub fn write_file<'k, I>(entries: I) -> Vec<u8>
where
    I: IntoIterator<Item = (&'k [u8], f64, f64)>,
{
    let mut out = vec![0u8; HEADER_LEN];
    for (key, value, timestamp) in entries {
        append_entry(&mut out, key, value, timestamp);
    }
    let used = out.len();
    out[..4].copy_from_slice(&(used as i32).to_ne_bytes());
    out.resize(file_size_for(used), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let keys: Vec<Vec<u8>> = (0..20).map(|i| vec![b'k'; i]).collect();
        let file = write_file(keys.iter().map(|k| (k.as_slice(), k.len() as f64, 1.5)));
        let got: Vec<_> = entries(&file).unwrap().map(Result::unwrap).collect();
        assert_eq!(got.len(), 20);
        for (e, k) in got.iter().zip(&keys) {
            assert_eq!(e.key, k.as_slice());
            assert_eq!(e.value, k.len() as f64);
            assert_eq!(e.timestamp, 1.5);
            assert_eq!(e.value_offset % 8, 0);
        }
    }

    #[test]
    fn fresh_file_has_no_entries() {
        let file = vec![0u8; INITIAL_FILE_SIZE];
        assert_eq!(entries(&file).unwrap().count(), 0);
    }

    #[test]
    fn errors_name_kind_and_offset() {
        assert_eq!(used(&[]).unwrap_err().kind, ErrorKind::Empty);
        assert_eq!(used(&[1, 2, 3]).unwrap_err().reason(), "truncated");
        let mut f = write_file([(&b"abc"[..], 1.0, 0.0)]);
        f[8..12].copy_from_slice(&(-5i32).to_ne_bytes());
        let e = entries(&f).unwrap().next().unwrap().unwrap_err();
        assert_eq!(e.offset, 8);
        assert_eq!(e.kind, ErrorKind::NegativeKeyLength { key_len: -5 });
        let f = write_file([(&b"abc"[..], 1.0, 0.0)]);
        assert!(matches!(
            used(&f[..20]).unwrap_err().kind,
            ErrorKind::UsedBeyondEnd { used: 32, len: 20 }
        ));
    }

    #[test]
    fn file_size_doubles() {
        assert_eq!(file_size_for(8), 65536);
        assert_eq!(file_size_for(65536), 65536);
        assert_eq!(file_size_for(65537), 131072);
    }
}
