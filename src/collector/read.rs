//! Reading the files: each thread reads a run of consecutive files through one reused buffer,
//! checks each file's layout, and keeps only its values and the keys not met before in the run.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus_multiproc_format::filename::{FileName, GaugeMode, MetricType};
use prometheus_multiproc_format::layout::{self, LayoutError};
use rustc_hash::FxBuildHasher;
use std::hash::BuildHasher;

use super::{BadFile, BadFileReason};

/// Reads the bytes in use of a regular file into `buf` (replacing its contents). Anything else
/// named `*.db` (a directory, a FIFO that would block the scrape forever, a socket, a device) is
/// refused without reading.
fn read_regular_file(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    use std::io::Read;
    let (mut file, len) = open_regular_file(path)?;
    buf.clear();
    // As Python does: the first page, then only the bytes in use (the rest of a file is zeros
    // waiting for entries). A `used` past the end reads the whole file, so the error can tell
    // how short it is.
    (&mut file).take(4096).read_to_end(buf)?;
    let used = buf
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    let wanted = match usize::try_from(used) {
        Ok(u) if u > buf.len() && u <= len => u,
        Ok(u) if u <= buf.len() => return Ok(()),
        _ => len,
    };
    buf.reserve(wanted.saturating_sub(buf.len()));
    (&mut file)
        .take(wanted.saturating_sub(buf.len()) as u64)
        .read_to_end(buf)?;
    if used > 0 && used as usize > len {
        // Past the end: read whatever is there (the file may have grown meanwhile).
        file.read_to_end(buf)?;
    }
    Ok(())
}

/// Opens a file for reading if it is a regular file, with its length.
fn open_regular_file(path: &Path) -> io::Result<(fs::File, usize)> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore the flag.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
    }
    Ok((file, usize::try_from(meta.len()).unwrap_or(usize::MAX)))
}

fn is_not_a_file(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::IsADirectory | io::ErrorKind::InvalidInput
    )
}

/// One file to merge: its bytes, or its path to read them from.
pub(super) struct Input<'a> {
    /// The parsed file name, or why it does not parse.
    pub(super) name: Result<FileName, String>,
    pub(super) path: PathBuf,
    pub(super) bytes: Option<&'a [u8]>,
}

/// What reading one file gave.
pub(super) enum Loaded {
    /// Its entries, keys numbered in its chunk's [`KeyTable`].
    Entries(FileEntries),
    Bad(BadFile),
    /// A `live*` gauge file removed by `mark_process_dead` between listing and reading.
    Gone,
}

/// The distinct keys met in a run of files: their bytes, one copy each, and their hashes.
#[derive(Default)]
pub(super) struct KeyTable {
    bytes: Vec<u8>,
    /// Where each key is in `bytes`: (start, end).
    pub(super) spans: Vec<(usize, usize)>,
    pub(super) hashes: Vec<u64>,
    /// The type of the first file each key was met in.
    pub(super) kinds: Vec<MetricType>,
    index: hashbrown::HashTable<u32>,
    /// Whether keys are looked up before being added: once files bring mostly new keys, they
    /// are only added (the numbering across runs still finds each key's repeats).
    unindexed: bool,
}

impl KeyTable {
    pub(super) fn key(&self, id: u32) -> &[u8] {
        let (start, end) = self.spans[id as usize];
        &self.bytes[start..end]
    }

    /// Stops looking keys up before adding them, and makes room for `more`.
    fn append_only(&mut self, more: usize) {
        self.unindexed = true;
        self.index = hashbrown::HashTable::new();
        self.spans.reserve(more);
        self.hashes.reserve(more);
        self.kinds.reserve(more);
        let per_key = self.bytes.len() / self.spans.len().max(1);
        self.bytes.reserve(more * per_key);
    }

    /// The number of `key`, copied in if it is new.
    fn intern(&mut self, key: &[u8], kind: MetricType) -> u32 {
        let hash = FxBuildHasher.hash_one(key);
        if !self.unindexed {
            let found = self.index.find(hash, |&id| self.key(id) == key);
            if let Some(&id) = found {
                return id;
            }
        }
        let id = self.spans.len() as u32;
        self.spans
            .push((self.bytes.len(), self.bytes.len() + key.len()));
        self.bytes.extend_from_slice(key);
        self.hashes.push(hash);
        self.kinds.push(kind);
        if !self.unindexed {
            let hashes = &self.hashes;
            self.index
                .insert_unique(hash, id, |&id| hashes[id as usize]);
        }
        id
    }
}

/// A run of files read one after the other by one thread, through one reused buffer.
pub(super) struct Chunk {
    pub(super) keys: KeyTable,
    pub(super) files: Vec<Loaded>,
}

/// Reads and numbers the entries of consecutive files.
pub(super) fn load_chunk(inputs: &[Input]) -> Chunk {
    let mut keys = KeyTable::default();
    let mut buf = Vec::new();
    let mut files: Vec<Loaded> = Vec::with_capacity(inputs.len());
    for (n, input) in inputs.iter().enumerate() {
        let prev = files.iter().rev().find_map(|f| match f {
            Loaded::Entries(e) => Some(&e.keys),
            _ => None,
        });
        let before = keys.spans.len();
        let loaded = load_file(input, &mut buf, &mut keys, prev);
        // A file after the first whose keys are nearly all new is likely followed by more such
        // (distinct series per process): their keys are then added without looking them up,
        // with room made for as many in each file left.
        let new = keys.spans.len() - before;
        let entries = match &loaded {
            Loaded::Entries(e) => e.values.len(),
            _ => 0,
        };
        if before > 0 && !keys.unindexed && new > 1024 && 10 * new > 9 * entries {
            keys.append_only(new * (inputs.len() - n - 1));
        }
        files.push(loaded);
    }
    Chunk { keys, files }
}

fn load_file(
    input: &Input,
    buf: &mut Vec<u8>,
    keys: &mut KeyTable,
    prev: Option<&Arc<KeyList>>,
) -> Loaded {
    let bad = |reason, message| {
        Loaded::Bad(BadFile {
            path: input.path.clone(),
            reason,
            offset: None,
            message,
        })
    };
    let io_bad = |e: io::Error| {
        let live = input
            .name
            .as_ref()
            .is_ok_and(|n| n.mode.is_some_and(GaugeMode::is_live));
        if live && e.kind() == io::ErrorKind::NotFound {
            // Removed by mark_process_dead between listing and reading, as Python allows.
            return Loaded::Gone;
        }
        let reason = if is_not_a_file(&e) {
            BadFileReason::NotAFile
        } else {
            BadFileReason::Unreadable
        };
        bad(reason, format!("cannot read file: {e}"))
    };
    let (bytes, kind): (&[u8], MetricType) = match (input.bytes, &input.name) {
        (Some(bytes), Ok(name)) => (bytes, name.kind),
        (Some(_), Err(e)) => return bad(BadFileReason::UnknownType, e.clone()),
        (None, Err(e)) => {
            // A directory is not a file, whatever its name says.
            return match open_regular_file(&input.path) {
                Err(io) if is_not_a_file(&io) => io_bad(io),
                _ => bad(BadFileReason::UnknownType, e.clone()),
            };
        }
        (None, Ok(name)) => match read_regular_file(&input.path, buf) {
            Ok(()) => (buf, name.kind),
            Err(e) => return io_bad(e),
        },
    };
    let mut entries = match layout::entries(bytes) {
        Ok(entries) => entries,
        Err(e) => return Loaded::Bad(layout_bad(&input.path, &e)),
    };
    let prev_ids: &[u32] = prev.map_or(&[], |p| &p.ids);
    let with_timestamps = input.name.as_ref().is_ok_and(|n| {
        matches!(
            n.mode,
            Some(GaugeMode::MostRecent | GaugeMode::LiveMostRecent)
        )
    });
    let mut values = Vec::with_capacity(prev_ids.len());
    let mut timestamps = Vec::new();
    // The file's own key list, made only once it differs from the previous file's.
    let mut own: Option<KeyList> = None;
    for (j, e) in entries.by_ref().enumerate() {
        let e = match e {
            Ok(e) => e,
            Err(e) => return Loaded::Bad(layout_bad(&input.path, &e)),
        };
        values.push(e.value);
        if with_timestamps {
            timestamps.push(e.timestamp);
        }
        // Workers of one server usually create the same series in the same order: an entry
        // whose key is the one at the same place in the previous file needs no hashing, and a
        // file whose keys are all the previous file's shares its key list.
        let same = prev_ids.get(j).filter(|&&p| keys.key(p) == e.key).copied();
        if same.is_some() && own.is_none() {
            continue;
        }
        let list = own.get_or_insert_with(|| {
            let prev = prev.map_or(&[][..], |p| &p.offsets[..j]);
            KeyList {
                ids: prev_ids[..j].to_vec(),
                offsets: prev.to_vec(),
            }
        });
        list.ids
            .push(same.unwrap_or_else(|| keys.intern(e.key, kind)));
        // `used` is an i32: every offset fits.
        list.offsets.push(e.offset as u32);
    }
    let keys = match (own, prev) {
        (Some(own), _) => Arc::new(own),
        (None, Some(prev)) if prev.ids.len() == values.len() => Arc::clone(prev),
        (None, prev) => {
            // A prefix of the previous file's keys.
            let n = values.len();
            Arc::new(KeyList {
                ids: prev_ids[..n].to_vec(),
                offsets: prev.map_or(Vec::new(), |p| p.offsets[..n].to_vec()),
            })
        }
    };
    Loaded::Entries(FileEntries {
        keys,
        values,
        timestamps,
    })
}

/// A file's entries: values (and timestamps, for the files of `mostrecent` gauges, the only
/// ones that use them) in file order, with the keys they belong to.
pub(super) struct FileEntries {
    pub(super) keys: Arc<KeyList>,
    pub(super) values: Vec<f64>,
    pub(super) timestamps: Vec<f64>,
}

/// The keys of a file's entries, in file order: shared by consecutive files of one run that
/// hold the same keys in the same order (at the same offsets, then).
pub(super) struct KeyList {
    /// Numbers in the run's [`KeyTable`].
    pub(super) ids: Vec<u32>,
    /// Offsets of the entries in the file.
    pub(super) offsets: Vec<u32>,
}

fn layout_bad(path: &Path, e: &LayoutError) -> BadFile {
    BadFile {
        path: path.to_owned(),
        reason: match e.reason() {
            "empty" => BadFileReason::Empty,
            "truncated" => BadFileReason::Truncated,
            _ => BadFileReason::Corrupt,
        },
        offset: Some(e.offset),
        message: e.to_string(),
    }
}
