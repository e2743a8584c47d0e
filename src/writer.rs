//! This process's files: one per metric type (and gauge mode), named as Python names them
//! (`counter_{pid}.db`, `gauge_livesum_{pid}.db`, ...), holding one entry per series.
//!
//! A series is created by appending its entry under the file's lock, then publishing the new
//! `used`; from then on its value is a slot updated lock-free. After a fork the child gets
//! its own set of files under its own pid (see `GenCell` in the `os` module).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_multiproc_format::filename::{FileName, GaugeMode, MetricType};
use prometheus_multiproc_format::key::decode_key;
use prometheus_multiproc_format::layout;

use crate::liveness;
use crate::os::{AppendList, GenCell, MappedFile, Slot};

/// Which of a process's files a series lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileKind {
    pub(crate) kind: MetricType,
    pub(crate) mode: Option<GaugeMode>,
}

/// A file could not be opened, grown or written.
#[derive(Debug)]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub source: io::Error,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot write multiprocess file {}: {}",
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The files of one process in one directory.
pub(crate) struct Files {
    dir: PathBuf,
    process_id: fn() -> u32,
    current: GenCell<ProcessFiles>,
    /// Every series created in this process, newest first: a forked child creates them all in
    /// its own files on first use, as Python re-reads every value after a fork.
    known: AppendList<(FileKind, String)>,
}

impl fmt::Debug for Files {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Files")
            .field("dir", &self.dir)
            .field("current", &self.current)
            .finish()
    }
}

/// One `Files` per directory and process id function in a process, shared by every registry
/// on that directory: two writers appending to the same file would overwrite each other.
static SHARED: AppendList<Arc<Files>> = AppendList::new();

#[derive(Debug)]
struct ProcessFiles {
    pid: u32,
    /// Set once this process holds its liveness lock in the directory.
    claimed: OnceLock<()>,
    /// Set once the series created before a fork exist in this process's files.
    replayed: OnceLock<()>,
    open: Mutex<HashMap<FileKind, Arc<FileWriter>>>,
}

#[derive(Debug)]
struct FileWriter {
    path: PathBuf,
    map: Arc<MappedFile>,
    append: Mutex<Appender>,
}

#[derive(Debug)]
struct Appender {
    used: usize,
    /// Value offset of each key in the file.
    positions: HashMap<String, usize>,
}

impl Files {
    /// The files of this process (as named by `process_id`, the pid by default) in `dir`,
    /// shared with every other registry of this process on the same directory.
    pub(crate) fn shared(dir: PathBuf, process_id: fn() -> u32) -> Arc<Files> {
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let same = |f: &Arc<Files>| f.dir == dir && f.process_id as usize == process_id as usize;
        Arc::clone(SHARED.find_or_push(same, || {
            Arc::new(Files {
                dir: dir.clone(),
                process_id,
                current: GenCell::new(ProcessFiles::new(process_id())),
                known: AppendList::new(),
            })
        }))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid this process's files are named with.
    pub(crate) fn pid(&self) -> u32 {
        self.process().pid
    }

    fn process(&self) -> &ProcessFiles {
        match self.current.get_or_try_insert_with(|| {
            Ok::<_, std::convert::Infallible>(ProcessFiles::new((self.process_id)()))
        }) {
            Ok(p) => p,
            Err(never) => match never {},
        }
    }

    /// The slot of `key` in this process's file of `kind`, creating the file and the entry
    /// (with value 0) if needed.
    pub(crate) fn slot(&self, kind: FileKind, key: &str) -> Result<Slot, WriteError> {
        let process = self.process();
        // Before the first file: take the liveness lock, clearing a dead predecessor's files.
        process
            .claimed
            .get_or_init(|| liveness::claim(&self.dir, process.pid));
        process.replayed.get_or_init(|| {
            let mut known: Vec<&(FileKind, String)> = self.known.iter().collect();
            known.reverse();
            for (kind, key) in known {
                if let Err(e) = self.slot_in(process, *kind, key) {
                    log::error!("{e}");
                }
            }
        });
        let (slot, created) = self.slot_in(process, kind, key)?;
        if created {
            self.known.push((kind, key.to_owned()));
        }
        Ok(slot)
    }

    /// The slot of `key` in `process`'s file of `kind`, and whether the entry was created now.
    fn slot_in(
        &self,
        process: &ProcessFiles,
        kind: FileKind,
        key: &str,
    ) -> Result<(Slot, bool), WriteError> {
        let writer = {
            let mut open = process.open.lock().unwrap_or_else(|e| e.into_inner());
            match open.get(&kind) {
                Some(w) => Arc::clone(w),
                None => {
                    let name = FileName {
                        kind: kind.kind,
                        mode: kind.mode,
                        pid: process.pid.to_string(),
                    };
                    let w = Arc::new(FileWriter::open(self.dir.join(name.to_string()))?);
                    open.insert(kind, Arc::clone(&w));
                    w
                }
            }
        };
        writer.slot(key)
    }
}

impl ProcessFiles {
    fn new(pid: u32) -> ProcessFiles {
        ProcessFiles {
            pid,
            claimed: OnceLock::new(),
            replayed: OnceLock::new(),
            open: Mutex::new(HashMap::new()),
        }
    }
}

/// The bytes in use of an existing file of this pid and where each key's value is, or what is
/// wrong with it. An empty file (created, never written) is a new one.
fn check_existing(bytes: &[u8]) -> Result<(usize, HashMap<String, usize>), String> {
    if bytes.is_empty() {
        return Ok((layout::HEADER_LEN, HashMap::new()));
    }
    let entries = layout::entries(bytes).map_err(|e| e.to_string())?;
    let used = entries.used().max(layout::HEADER_LEN);
    let mut positions = HashMap::new();
    for e in entries {
        let e = e.map_err(|e| e.to_string())?;
        // A key no collector can read would make it leave out the whole file.
        decode_key(e.key).map_err(|k| format!("at offset {}: {k}", e.offset))?;
        if let Ok(key) = std::str::from_utf8(e.key) {
            positions.insert(key.to_owned(), e.value_offset);
        }
    }
    Ok((used, positions))
}

/// Renames a corrupt file to `{name}.corrupt-{stamp}` (a name no collector reads; the stamp is
/// nanoseconds since the epoch), with `-1`, `-2`, ... appended if that name is taken; returns
/// the new path.
fn set_aside(path: &Path, stamp: u128) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 0u32.. {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        let aside = path.with_file_name(format!("{name}.corrupt-{stamp}{suffix}"));
        if !aside.exists() {
            std::fs::rename(path, &aside)?;
            return Ok(aside);
        }
    }
    Err(io::Error::other(
        "no free name to set the corrupt file aside",
    ))
}

/// Creates and maps a new file. When it cannot be allocated (a full disk), no empty file is
/// left behind: a 0-byte `.db` file fails Python's whole scrape.
fn open_new(path: &Path) -> io::Result<MappedFile> {
    MappedFile::open(path, layout::INITIAL_FILE_SIZE).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

impl FileWriter {
    fn open(path: PathBuf) -> Result<FileWriter, WriteError> {
        let err = |source| WriteError {
            path: path.clone(),
            source,
        };
        // The file as it is on disk, checked before mapping it grows it: a file cut short
        // (`used` past its end) must be seen as such, not read with the zeros that growing it
        // adds, and a corrupt one is kept byte for byte.
        let existing = match std::fs::read(&path) {
            Ok(bytes) => Some(check_existing(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e)),
        };
        let (used, positions) = match existing {
            Some(Ok(checked)) => checked,
            Some(Err(e)) => {
                // A file of this pid left corrupt by an earlier process: keep it for
                // inspection under a name the collectors ignore, and start afresh.
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let aside = set_aside(&path, stamp).map_err(err)?;
                log::warn!(
                    "{} is corrupt ({e}); moved to {} and starting a new file",
                    path.display(),
                    aside.display()
                );
                (layout::HEADER_LEN, HashMap::new())
            }
            None => (layout::HEADER_LEN, HashMap::new()),
        };
        let map = if path.exists() {
            MappedFile::open(&path, layout::INITIAL_FILE_SIZE).map_err(err)?
        } else {
            open_new(&path).map_err(err)?
        };
        // A fresh file says 0; Python writes 8 when it opens one.
        map.publish_used(used as i32);
        Ok(FileWriter {
            path,
            map: Arc::new(map),
            append: Mutex::new(Appender { used, positions }),
        })
    }

    fn slot(&self, key: &str) -> Result<(Slot, bool), WriteError> {
        let err = |source| WriteError {
            path: self.path.clone(),
            source,
        };
        let mut a = self.append.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&at) = a.positions.get(key) {
            return Ok((self.map.slot(at).map_err(err)?, false));
        }
        let mut entry = Vec::with_capacity(layout::entry_len(key.len()));
        layout::append_entry(&mut entry, key.as_bytes(), 0.0, 0.0);
        let start = a.used;
        let end = start + entry.len();
        if end > i32::MAX as usize {
            return Err(err(io::Error::other("file would exceed 2 GiB")));
        }
        let size = self.map.len();
        if end > size {
            // Double, as Python does, until the entry fits.
            let mut new_size = size.max(layout::INITIAL_FILE_SIZE);
            while new_size < end {
                new_size *= 2;
            }
            self.map.allocate(new_size).map_err(err)?;
        }
        self.map.write_at(start, &entry).map_err(err)?;
        self.map.publish_used(end as i32);
        a.used = end;
        let value_offset = end - 16;
        a.positions.insert(key.to_owned(), value_offset);
        Ok((self.map.slot(value_offset).map_err(err)?, true))
    }
}

#[cfg(test)]
mod tests {
    use super::set_aside;

    #[test]
    fn corrupt_files_set_aside_at_the_same_instant_keep_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter_7.db");
        for (i, want) in [
            "counter_7.db.corrupt-42",
            "counter_7.db.corrupt-42-1",
            "counter_7.db.corrupt-42-2",
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(&path, [i as u8]).unwrap();
            let aside = set_aside(&path, 42).unwrap();
            assert_eq!(aside, dir.path().join(want));
            assert_eq!(
                std::fs::read(&aside).unwrap(),
                [i as u8],
                "{want} holds its own file"
            );
            assert!(!path.exists());
        }
    }
}
