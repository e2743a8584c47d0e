//! Reading and merging a multiprocess directory into metric families.
//!
//! The merge follows Python's `MultiProcessCollector`: counters and summaries are summed;
//! histogram buckets are summed per label set, then accumulated in numeric `le` order, with
//! `_count` the total; gauges are merged by their file's mode (`all`/`liveall` keep one sample per
//! process with a `pid` label; `min`, `max`, `sum` and `mostrecent`, live or not, drop it).
//!
//! Where Python's output would be invalid, we differ: a user label named `pid` on an
//! `all`/`liveall` gauge is replaced by the file's pid (Python writes both values as duplicate
//! series; our writer refuses that label name).
//!
//! `live*` gauge files of a process that died without `mark_process_dead` are left out when the
//! directory tells it is dead (see [`crate::liveness`]); files written by Python have no liveness
//! lock and keep Python's rule.
//!
//! Unlike Python, a bad file is left out and reported instead of failing the whole scrape, and
//! the output is sorted, so two scrapes of the same directory are byte-identical: families by
//! name; samples by labels, then name; histogram buckets by numeric `le`, then `_count`, then
//! the other samples of the same labels.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus_multiproc_format::filename::{FileName, GaugeMode, MetricType};
use prometheus_multiproc_format::float::go_float;
use prometheus_multiproc_format::key::{decode_key, Key, KeyError};
use prometheus_multiproc_format::layout::{self, LayoutError};
use rayon::prelude::*;

use crate::liveness::{liveness, Liveness};
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::hash::BuildHasher;

/// One merged metric family: the unit an encoder writes under one `# HELP` and `# TYPE`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    /// The family name as stored in the keys (`requests` for samples named `requests_total`).
    pub name: String,
    /// The help text.
    pub help: String,
    /// The metric type.
    pub kind: MetricType,
    /// The samples, in the order they are written.
    pub samples: Vec<Sample>,
}

/// One merged sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample name (`requests_total`, `latency_bucket`, ...).
    pub name: String,
    /// Label names and values, sorted by name.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Why a file was left out of a scrape. Its [`as_str`](BadFileReason::as_str) is the `reason`
/// label of the `prometheus_multiproc_bad_files` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadFileReason {
    /// A 0-byte file.
    Empty,
    /// Shorter than its header says (or than a header).
    Truncated,
    /// Bytes or keys that are not in the format.
    Corrupt,
    /// The file could not be opened or read (permissions, I/O error, vanished).
    Unreadable,
    /// A `*.db` name that is not `counter_`, `gauge_{mode}_`, `histogram_` or `summary_`.
    UnknownType,
    /// A directory or other non-file named `*.db`.
    NotAFile,
}

impl BadFileReason {
    /// Every reason, in label order.
    pub const ALL: [BadFileReason; 6] = [
        BadFileReason::Corrupt,
        BadFileReason::Empty,
        BadFileReason::NotAFile,
        BadFileReason::Truncated,
        BadFileReason::UnknownType,
        BadFileReason::Unreadable,
    ];

    /// The label value: `empty`, `truncated`, `corrupt`, `unreadable`, `unknown_type`, `not_a_file`.
    pub fn as_str(self) -> &'static str {
        match self {
            BadFileReason::Empty => "empty",
            BadFileReason::Truncated => "truncated",
            BadFileReason::Corrupt => "corrupt",
            BadFileReason::Unreadable => "unreadable",
            BadFileReason::UnknownType => "unknown_type",
            BadFileReason::NotAFile => "not_a_file",
        }
    }
}

impl fmt::Display for BadFileReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file left out of a scrape: which one, why, and where in it the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFile {
    /// The file's path.
    pub path: PathBuf,
    /// The kind of problem.
    pub reason: BadFileReason,
    /// The byte offset of the problem, when it is inside the file's bytes.
    pub offset: Option<usize>,
    /// A message naming the problem.
    pub message: String,
}

impl fmt::Display for BadFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// The directory itself could not be read: nothing can be served.
#[derive(Debug)]
pub struct CollectError {
    /// The directory.
    pub dir: PathBuf,
    /// What went wrong.
    pub source: io::Error,
}

impl fmt::Display for CollectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot read multiprocess directory {}: {}",
            self.dir.display(),
            self.source
        )
    }
}

impl std::error::Error for CollectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The environment variable naming the multiprocess directory.
pub const DIR_ENV: &str = "PROMETHEUS_MULTIPROC_DIR";
/// The deprecated lower-case spelling Python still honours.
pub const LEGACY_DIR_ENV: &str = "prometheus_multiproc_dir";

/// The directory named by `PROMETHEUS_MULTIPROC_DIR` (or, with a deprecation warning logged, the
/// legacy `prometheus_multiproc_dir`), if either is set and non-empty.
pub fn dir_from_env() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return Some(d.into());
    }
    let legacy = std::env::var_os(LEGACY_DIR_ENV).filter(|d| !d.is_empty())?;
    log::warn!("{LEGACY_DIR_ENV} is deprecated, set {DIR_ENV} instead");
    Some(legacy.into())
}

/// The name of the gauge this crate adds to every scrape, counting bad files by reason.
pub const BAD_FILES_METRIC: &str = "prometheus_multiproc_bad_files";

/// The result of one scrape of a directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Scrape {
    /// The merged families, sorted by name (with samples in a stable order), including the
    /// `prometheus_multiproc_bad_files` gauge unless turned off.
    pub families: Vec<MetricFamily>,
    /// The files left out, sorted by path.
    pub bad_files: Vec<BadFile>,
    /// How many files were merged.
    pub files_read: usize,
}

/// Reads and merges a multiprocess directory, as Python's `MultiProcessCollector` does.
///
/// A bad file (empty, truncated, corrupt, unreadable, of an unknown type) never fails the scrape:
/// it is left out whole, logged at `warn` level, listed in [`Scrape::bad_files`] and counted in the
/// `prometheus_multiproc_bad_files` gauge. Only a directory that cannot be listed is an error.
#[derive(Debug, Clone)]
pub struct Collector {
    dir: PathBuf,
    self_metrics: bool,
    process_metrics: bool,
}

impl Collector {
    /// A collector of the directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Collector {
        Collector {
            dir: dir.into(),
            self_metrics: true,
            process_metrics: false,
        }
    }

    /// A collector of the directory named by `PROMETHEUS_MULTIPROC_DIR` (see [`dir_from_env`]).
    pub fn from_env() -> Result<Collector, CollectError> {
        dir_from_env()
            .map(Collector::new)
            .ok_or_else(|| CollectError {
                dir: PathBuf::new(),
                source: io::Error::new(io::ErrorKind::NotFound, format!("{DIR_ENV} is not set")),
            })
    }

    /// Whether to add the `prometheus_multiproc_bad_files` gauge to each scrape (default: yes).
    pub fn self_metrics(mut self, on: bool) -> Collector {
        self.self_metrics = on;
        self
    }

    /// Whether to add the metrics of the scraping process (`process_cpu_seconds_total`,
    /// `process_resident_memory_bytes`, `process_open_fds`, ..., see [`crate::process`]) to each
    /// scrape (default: no). They describe the process that calls [`collect`](Self::collect),
    /// not the workers whose files are merged. A family of the directory with the same name
    /// wins over the process's own.
    ///
    /// ```
    /// use prometheus_multiproc::collector::Collector;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let scrape = Collector::new(dir.path())
    ///     .self_metrics(false)
    ///     .process_metrics(true)
    ///     .collect()
    ///     .unwrap();
    /// if std::path::Path::new("/proc/self/stat").exists() {
    ///     assert!(scrape.families.iter().any(|f| f.name == "process_start_time_seconds"));
    /// }
    /// ```
    pub fn process_metrics(mut self, on: bool) -> Collector {
        self.process_metrics = on;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every `*.db` file of the directory and merges them.
    pub fn collect(&self) -> Result<Scrape, CollectError> {
        let err = |source| CollectError {
            dir: self.dir.clone(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = entry.file_name();
            let bytes = name.as_encoded_bytes();
            // Python globs `*.db`, which skips hidden files.
            if bytes.ends_with(b".db") && !bytes.starts_with(b".") {
                paths.push(entry.path());
            }
        }
        paths.sort();
        let mut inputs = Vec::with_capacity(paths.len());
        for path in paths {
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = FileName::parse(&file_name).map_err(|e| e.to_string());
            if let Ok(n) = &name {
                if n.mode.is_some_and(GaugeMode::is_live)
                    && liveness(&self.dir, &n.pid) == Liveness::Dead
                {
                    // Its process died without anyone calling mark_process_dead: leave it out.
                    log::debug!("{}: process {} is dead, left out", path.display(), n.pid);
                    continue;
                }
            }
            inputs.push(Input {
                name,
                path,
                bytes: None,
            });
        }
        let (families, mut bad_files, files_read) = Merge { inputs }.run();
        bad_files.sort_by(|a, b| a.path.cmp(&b.path));
        for bad in &bad_files {
            log::warn!("skipped bad multiprocess file {bad}");
        }
        let mut scrape = Scrape {
            families,
            bad_files,
            files_read,
        };
        if self.self_metrics {
            let family = bad_files_family(&scrape.bad_files);
            let at = scrape
                .families
                .partition_point(|f| f.name.as_str() < family.name.as_str());
            scrape.families.insert(at, family);
        }
        if self.process_metrics {
            for family in crate::process::process_families() {
                let at = scrape
                    .families
                    .partition_point(|f| f.name.as_str() < family.name.as_str());
                if scrape
                    .families
                    .get(at)
                    .is_none_or(|f| f.name != family.name)
                {
                    scrape.families.insert(at, family);
                }
            }
        }
        Ok(scrape)
    }
}

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

fn bad_files_family(bad: &[BadFile]) -> MetricFamily {
    MetricFamily {
        name: BAD_FILES_METRIC.to_owned(),
        help: "Files of the multiprocess directory left out of this scrape, by reason.".to_owned(),
        kind: MetricType::Gauge,
        samples: BadFileReason::ALL
            .iter()
            .map(|r| Sample {
                name: BAD_FILES_METRIC.to_owned(),
                labels: vec![("reason".to_owned(), r.as_str().to_owned())],
                value: bad.iter().filter(|b| b.reason == *r).count() as f64,
            })
            .collect(),
    }
}

/// Merges the bytes of files, as read from a directory.
///
/// This is the whole merge, over plain byte slices: [`Collector::collect`] lists and reads the
/// files, then calls it.
///
/// ```
/// use prometheus_multiproc::collector::merge_files;
/// use prometheus_multiproc::format::{key::encode_key, layout::write_file};
///
/// let key = encode_key("temp", "temp", &[] as &[(&str, &str)], "Temperature.");
/// let a = write_file([(key.as_bytes(), 20.0, 0.0)]);
/// let b = write_file([(key.as_bytes(), 25.0, 0.0)]);
/// let (families, bad) = merge_files(&[("gauge_max_1.db", &a[..]), ("gauge_max_2.db", &b[..])]);
/// assert!(bad.is_empty());
/// assert_eq!(families[0].samples[0].value, 25.0);
/// ```
pub fn merge_files(files: &[(&str, &[u8])]) -> (Vec<MetricFamily>, Vec<BadFile>) {
    let inputs = files
        .iter()
        .map(|(file_name, bytes)| Input {
            name: FileName::parse(file_name).map_err(|e| e.to_string()),
            path: PathBuf::from(file_name),
            bytes: Some(bytes),
        })
        .collect();
    let (families, bad, _) = Merge { inputs }.run();
    (families, bad)
}

/// One file to merge: its bytes, or its path to read them from.
struct Input<'a> {
    /// The parsed file name, or why it does not parse.
    name: Result<FileName, String>,
    path: PathBuf,
    bytes: Option<&'a [u8]>,
}

struct Merge<'a> {
    inputs: Vec<Input<'a>>,
}

/// What reading one file gave.
enum Loaded {
    /// Its entries, keys numbered in its chunk's [`KeyTable`].
    Entries(FileEntries),
    Bad(BadFile),
    /// A `live*` gauge file removed by `mark_process_dead` between listing and reading.
    Gone,
}

/// The distinct keys met in a run of files: their bytes, one copy each, and their hashes.
#[derive(Default)]
struct KeyTable {
    bytes: Vec<u8>,
    /// Where each key is in `bytes`: (start, end).
    spans: Vec<(usize, usize)>,
    hashes: Vec<u64>,
    index: hashbrown::HashTable<u32>,
}

impl KeyTable {
    fn key(&self, id: u32) -> &[u8] {
        let (start, end) = self.spans[id as usize];
        &self.bytes[start..end]
    }

    /// The number of `key`, copied in if it is new.
    fn intern(&mut self, key: &[u8]) -> u32 {
        let hash = FxBuildHasher.hash_one(key);
        let KeyTable {
            bytes,
            spans,
            hashes,
            index,
        } = self;
        let found = index.entry(
            hash,
            |&id| {
                let (start, end) = spans[id as usize];
                &bytes[start..end] == key
            },
            |&id| hashes[id as usize],
        );
        match found {
            hashbrown::hash_table::Entry::Occupied(o) => *o.get(),
            hashbrown::hash_table::Entry::Vacant(v) => {
                let id = spans.len() as u32;
                spans.push((bytes.len(), bytes.len() + key.len()));
                bytes.extend_from_slice(key);
                hashes.push(hash);
                v.insert(id);
                id
            }
        }
    }
}

/// A run of files read one after the other by one thread, through one reused buffer.
struct Chunk {
    keys: KeyTable,
    files: Vec<Loaded>,
}

/// Reads and numbers the entries of consecutive files.
fn load_chunk(inputs: &[Input]) -> Chunk {
    let mut keys = KeyTable::default();
    let mut buf = Vec::new();
    let mut files: Vec<Loaded> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let prev = files.iter().rev().find_map(|f| match f {
            Loaded::Entries(e) => Some(&e.keys),
            _ => None,
        });
        let loaded = load_file(input, &mut buf, &mut keys, prev);
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
    let bytes: &[u8] = match (input.bytes, &input.name) {
        (Some(bytes), Ok(_)) => bytes,
        (Some(_), Err(e)) => return bad(BadFileReason::UnknownType, e.clone()),
        (None, Err(e)) => {
            // A directory is not a file, whatever its name says.
            return match open_regular_file(&input.path) {
                Err(io) if is_not_a_file(&io) => io_bad(io),
                _ => bad(BadFileReason::UnknownType, e.clone()),
            };
        }
        (None, Ok(_)) => match read_regular_file(&input.path, buf) {
            Ok(()) => buf,
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
        list.ids.push(same.unwrap_or_else(|| keys.intern(e.key)));
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
struct FileEntries {
    keys: Arc<KeyList>,
    values: Vec<f64>,
    timestamps: Vec<f64>,
}

/// The keys of a file's entries, in file order: shared by consecutive files of one run that
/// hold the same keys in the same order (at the same offsets, then).
struct KeyList {
    /// Numbers in the run's [`KeyTable`].
    ids: Vec<u32>,
    /// Offsets of the entries in the file.
    offsets: Vec<u32>,
}

/// A decoded key with what the merge needs precomputed.
struct Decoded {
    key: Key,
    /// The numeric `le` label, if the key has an `le` label that parses as a float.
    le: Option<f64>,
    /// Whether the key has an `le` label at all.
    has_le: bool,
}

fn parse_le(s: &str) -> Option<f64> {
    // Python's float(): surrounding whitespace allowed, `+Inf`/`inf`/`nan` in any case.
    s.trim().parse::<f64>().ok()
}

impl Decoded {
    fn new(raw: &[u8]) -> Result<Decoded, KeyError> {
        let key = decode_key(raw)?;
        let le_label = key.labels.iter().find(|(n, _)| n == "le");
        Ok(Decoded {
            has_le: le_label.is_some(),
            le: le_label.and_then(|(_, v)| parse_le(v)),
            key,
        })
    }
}

/// Where an entry's value goes.
#[derive(Clone, Copy)]
enum Target {
    Series(u32, u32),
    Bucket(u32, u32, u32),
}

#[derive(Clone, Copy)]
struct Acc {
    value: f64,
    timestamp: f64,
    set: bool,
}

struct SeriesAcc {
    name: String,
    labels: Vec<(String, String)>,
    acc: Acc,
}

struct BucketGroup {
    labels: Vec<(String, String)>,
    buckets: Vec<(f64, f64)>,
}

struct FamilyAcc {
    name: String,
    help: String,
    kind: MetricType,
    mode: Option<GaugeMode>,
    /// Accumulators, by series index; the series' names and labels are the index's keys.
    accs: Vec<Acc>,
    series_index: FxHashMap<(String, Vec<(String, String)>), u32>,
    groups: Vec<BucketGroup>,
    group_index: FxHashMap<Vec<(String, String)>, u32>,
}

impl FamilyAcc {
    fn series_slot(&mut self, name: String, labels: Vec<(String, String)>) -> u32 {
        let next = self.accs.len() as u32;
        let i = *self.series_index.entry((name, labels)).or_insert(next);
        if i == next {
            self.accs.push(Acc::default());
        }
        i
    }

    fn bucket_slot(&mut self, labels: Vec<(String, String)>, le: f64) -> (u32, u32) {
        let g = match self.group_index.get(&labels) {
            Some(&g) => g,
            None => {
                let g = self.groups.len() as u32;
                self.groups.push(BucketGroup {
                    labels: labels.clone(),
                    buckets: Vec::new(),
                });
                self.group_index.insert(labels, g);
                g
            }
        };
        let buckets = &mut self.groups[g as usize].buckets;
        // `le` values compare by bit pattern: Python keys its dict by float, where -0.0 == 0.0
        // but NaN never equals itself; a handful of buckets makes a linear search cheapest.
        let b = match buckets.iter().position(|(x, _)| *x == le) {
            Some(b) => b,
            None => {
                buckets.push((le, 0.0));
                buckets.len() - 1
            }
        };
        (g, b as u32)
    }

    /// Applies one value to a series, per the family's type and gauge mode.
    fn apply(&mut self, target: Target, value: f64, timestamp: f64) {
        match target {
            Target::Bucket(g, b, _) => {
                self.groups[g as usize].buckets[b as usize].1 += value;
            }
            Target::Series(s, _) => {
                let acc = &mut self.accs[s as usize];
                match self.mode {
                    None | Some(GaugeMode::Sum | GaugeMode::LiveSum) => {
                        acc.value += value;
                        acc.set = true;
                    }
                    Some(GaugeMode::Min | GaugeMode::LiveMin) => {
                        if !acc.set || value < acc.value {
                            acc.value = value;
                        }
                        acc.set = true;
                    }
                    Some(GaugeMode::Max | GaugeMode::LiveMax) => {
                        if !acc.set || value > acc.value {
                            acc.value = value;
                        }
                        acc.set = true;
                    }
                    Some(GaugeMode::MostRecent | GaugeMode::LiveMostRecent) => {
                        // Python keeps a value only when its timestamp is later than the
                        // latest seen, starting from 0: a never-set gauge has no sample.
                        if acc.timestamp < timestamp {
                            acc.value = value;
                            acc.timestamp = timestamp;
                            acc.set = true;
                        }
                    }
                    Some(GaugeMode::All | GaugeMode::LiveAll) => {
                        acc.value = value;
                        acc.set = true;
                    }
                }
            }
        }
    }

    fn finish(self) -> MetricFamily {
        let FamilyAcc {
            name,
            help,
            kind,
            accs,
            series_index,
            mut groups,
            ..
        } = self;
        let mut series: Vec<SeriesAcc> = series_index
            .into_iter()
            .filter(|(_, i)| accs[*i as usize].set)
            .map(|((name, labels), i)| SeriesAcc {
                name,
                labels,
                acc: accs[i as usize],
            })
            .collect();
        let mut samples = Vec::with_capacity(series.len());
        if kind == MetricType::Histogram {
            groups.sort_by_cached_key(|g| sort_key(&g.labels, ""));
            series.par_sort_by_cached_key(|s| sort_key(&s.labels, &s.name));
            let count_name = format!("{name}_count");
            let bucket_name = format!("{name}_bucket");
            let mut rest = series.into_iter().peekable();
            for mut group in groups {
                // Series whose labels sort before this group's have no buckets.
                while let Some(s) = rest.next_if(|s| s.labels < group.labels) {
                    samples.push(Sample::from(s));
                }
                group.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut total = 0.0;
                for (le, v) in &group.buckets {
                    total += v;
                    let mut labels = group.labels.clone();
                    let at = labels.partition_point(|(n, _)| n.as_str() < "le");
                    labels.insert(at, ("le".to_owned(), go_float(*le)));
                    samples.push(Sample {
                        name: bucket_name.clone(),
                        labels,
                        value: total,
                    });
                }
                samples.push(Sample {
                    name: count_name.clone(),
                    labels: group.labels.clone(),
                    value: total,
                });
                while let Some(s) = rest.next_if(|s| s.labels == group.labels) {
                    // The accumulated `_count` replaces a stored one, as in Python.
                    if s.name != count_name {
                        samples.push(Sample::from(s));
                    }
                }
            }
            samples.extend(rest.map(Sample::from));
        } else {
            series.par_sort_by_cached_key(|s| sort_key(&s.labels, &s.name));
            samples.extend(series.into_iter().map(Sample::from));
        }
        MetricFamily {
            name,
            help,
            kind,
            samples,
        }
    }
}

/// Bytes that sort as `(labels, name)` compare: each string with its 0 bytes escaped as
/// `00 FF` and ended by `00 01`, the labels ended by `00 00`. Comparing these with one `memcmp`
/// is much cheaper than comparing the label vectors pair by pair.
fn sort_key(labels: &[(String, String)], name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(
        labels
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + name.len()
            + 4,
    );
    fn escaped(key: &mut Vec<u8>, s: &str) {
        if !s.as_bytes().contains(&0) {
            key.extend_from_slice(s.as_bytes());
            return;
        }
        for &b in s.as_bytes() {
            if b == 0 {
                key.extend_from_slice(&[0, 0xff]);
            } else {
                key.push(b);
            }
        }
    }
    let mut push = |s: &str| {
        escaped(&mut key, s);
        key.extend_from_slice(&[0, 1]);
    };
    for (n, v) in labels {
        push(n);
        push(v);
    }
    push("");
    // `push("")` wrote `00 01`; the end of the labels must sort below any label: `00 00`.
    let len = key.len();
    key[len - 1] = 0;
    escaped(&mut key, name);
    key
}

impl Default for Acc {
    fn default() -> Acc {
        Acc {
            value: 0.0,
            timestamp: 0.0,
            set: false,
        }
    }
}

impl From<SeriesAcc> for Sample {
    fn from(s: SeriesAcc) -> Sample {
        Sample {
            name: s.name,
            labels: s.labels,
            value: s.acc.value,
        }
    }
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

impl Merge<'_> {
    /// The merged families, the bad files and the number of files merged.
    fn run(self) -> (Vec<MetricFamily>, Vec<BadFile>, usize) {
        // 1. Read the files in runs of consecutive files, one run per task, each through one
        //    buffer: only the distinct keys are kept, not the files' bytes.
        let per_chunk = self
            .inputs
            .len()
            .div_ceil(rayon::current_num_threads())
            .max(1);
        let chunks: Vec<Chunk> = self.inputs.par_chunks(per_chunk).map(load_chunk).collect();

        // 2. Number the distinct keys across runs: each is decoded once, however many files
        //    hold it.
        let mut index: hashbrown::HashTable<(u64, u32)> = hashbrown::HashTable::new();
        let mut distinct: Vec<(u32, u32)> = Vec::new();
        let renumbered: Vec<Vec<u32>> = chunks
            .iter()
            .enumerate()
            .map(|(c, chunk)| {
                (0..chunk.keys.spans.len() as u32)
                    .map(|id| {
                        let hash = chunk.keys.hashes[id as usize];
                        let key = chunk.keys.key(id);
                        let found = index.entry(
                            hash,
                            |&(_, g)| {
                                let (c, id) = distinct[g as usize];
                                chunks[c as usize].keys.key(id) == key
                            },
                            |&(h, _)| h,
                        );
                        match found {
                            hashbrown::hash_table::Entry::Occupied(o) => o.get().1,
                            hashbrown::hash_table::Entry::Vacant(v) => {
                                let g = distinct.len() as u32;
                                distinct.push((c as u32, id));
                                v.insert((hash, g));
                                g
                            }
                        }
                    })
                    .collect()
            })
            .collect();
        // 3. Decode the distinct keys, in parallel.
        let mut decoded: Vec<Result<Decoded, KeyError>> = distinct
            .par_iter()
            .map(|&(c, id)| Decoded::new(chunks[c as usize].keys.key(id)))
            .collect();
        let mut bad = Vec::new();
        let mut files = Vec::with_capacity(self.inputs.len());
        let loaded = chunks
            .into_iter()
            .zip(&renumbered)
            .flat_map(|(c, ids)| c.files.into_iter().map(move |f| (f, ids)));
        for (input, (loaded, ids)) in self.inputs.iter().zip(loaded) {
            match (loaded, &input.name) {
                (Loaded::Entries(entries), Ok(name)) => {
                    files.push((input.path.as_path(), name, entries, ids.as_slice()))
                }
                (Loaded::Bad(b), _) => bad.push(b),
                _ => {}
            }
        }
        let mut files_read = 0;

        // 4. Merge file by file, in name order; a file with a bad key is left out whole.
        let mut families: Vec<FamilyAcc> = Vec::new();
        let mut family_index: FxHashMap<String, u32> = FxHashMap::default();
        let mut cache: Vec<Option<Target>> = vec![None; distinct.len()];
        for (path, name, entries, ids) in files {
            if let Some(problem) = check_keys(path, name, &entries.keys, ids, &decoded) {
                bad.push(problem);
                continue;
            }
            let kind = name.kind;
            for (j, (&local, &value)) in entries.keys.ids.iter().zip(&entries.values).enumerate() {
                let key = ids[local as usize];
                let timestamp = entries.timestamps.get(j).copied().unwrap_or(0.0);
                let Ok(d) = &mut decoded[key as usize] else {
                    continue;
                };
                let target = match cache[key as usize] {
                    Some(t) => Some(t),
                    _ => {
                        let mut known = family_index.get(d.key.metric.as_str()).copied();
                        let f = *known.get_or_insert_with(|| {
                            family_index.insert(d.key.metric.clone(), families.len() as u32);
                            families.push(FamilyAcc {
                                name: d.key.metric.clone(),
                                help: d.key.help.clone(),
                                kind,
                                mode: name.mode,
                                accs: Vec::new(),
                                series_index: FxHashMap::default(),
                                groups: Vec::new(),
                                group_index: FxHashMap::default(),
                            });
                            families.len() as u32 - 1
                        });
                        let fam = &mut families[f as usize];
                        if fam.kind != kind {
                            log::warn!(
                                "{}: family {:?} is a {} in other files, its {} samples here are ignored",
                                path.display(),
                                fam.name,
                                fam.kind,
                                kind
                            );
                            None
                        } else {
                            // A series with a `pid` label depends on the file, not only the key;
                            // any other is cached, so the key's strings can move into it.
                            let cacheable = !fam.mode.is_some_and(GaugeMode::keeps_pid);
                            let t = target_for(fam, f, d, name, cacheable);
                            if cacheable {
                                cache[key as usize] = Some(t);
                            }
                            Some(t)
                        }
                    }
                };
                let Some(target) = target else { continue };
                let f = match target {
                    Target::Series(_, f) | Target::Bucket(_, _, f) => f,
                };
                let fam = &mut families[f as usize];
                if fam.kind == kind {
                    fam.apply(target, value, timestamp);
                }
            }
            files_read += 1;
        }
        let mut out: Vec<MetricFamily> = families.into_iter().map(FamilyAcc::finish).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        (out, bad, files_read)
    }
}

/// Where an entry with key `d` of a file named `file` goes in family `fam` (index `f`).
///
/// With `take`, the key's sample name and labels move into the series (the target is cached
/// and the key never needed again); otherwise they are copied.
fn target_for(fam: &mut FamilyAcc, f: u32, d: &mut Decoded, file: &FileName, take: bool) -> Target {
    let key = &mut d.key;
    let (sample, labels) = if take {
        (
            std::mem::take(&mut key.sample),
            std::mem::take(&mut key.labels),
        )
    } else {
        (key.sample.clone(), key.labels.clone())
    };
    match fam.kind {
        MetricType::Histogram if d.has_le => {
            let labels: Vec<(String, String)> =
                labels.into_iter().filter(|(n, _)| n != "le").collect();
            let (g, b) = fam.bucket_slot(labels, d.le.unwrap_or(f64::NAN));
            Target::Bucket(g, b, f)
        }
        MetricType::Gauge => {
            let mut labels: Vec<(String, String)> =
                labels.into_iter().filter(|(n, _)| n != "pid").collect();
            if fam.mode.is_some_and(GaugeMode::keeps_pid) {
                let at = labels.partition_point(|(n, _)| n.as_str() < "pid");
                labels.insert(at, ("pid".to_owned(), file.pid.clone()));
            }
            Target::Series(fam.series_slot(sample, labels), f)
        }
        _ => Target::Series(fam.series_slot(sample, labels), f),
    }
}

/// The first bad key of a file, as a bad-file report.
fn check_keys(
    path: &Path,
    name: &FileName,
    keys: &KeyList,
    ids: &[u32],
    decoded: &[Result<Decoded, KeyError>],
) -> Option<BadFile> {
    for (&local, &at) in keys.ids.iter().zip(&keys.offsets) {
        let at = at as usize;
        let problem = match &decoded[ids[local as usize] as usize] {
            Err(k) => Some((at + 4 + k.offset, format!("entry at offset {at}: {k}"))),
            Ok(d) if name.kind == MetricType::Histogram && d.has_le && d.le.is_none() => Some((
                at + 4,
                format!("entry at offset {at}: `le` label is not a number"),
            )),
            Ok(_) => None,
        };
        if let Some((offset, message)) = problem {
            return Some(BadFile {
                path: path.to_owned(),
                reason: BadFileReason::Corrupt,
                offset: Some(offset),
                message: format!("at offset {offset}: {message}"),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::sort_key;
    use proptest::prelude::*;

    fn labels() -> impl Strategy<Value = Vec<(String, String)>> {
        // Short strings over an alphabet with 0 bytes and near-0 bytes, where escaping matters.
        let s = "[\\x00\\x01ab\\xff]{0,3}";
        prop::collection::vec((s, s), 0..3)
    }

    proptest! {
        #[test]
        fn sort_key_orders_like_labels_then_name(
            a in labels(), an in "[\\x00a]{0,2}", b in labels(), bn in "[\\x00a]{0,2}"
        ) {
            prop_assert_eq!(
                sort_key(&a, &an).cmp(&sort_key(&b, &bn)),
                (&a, &an).cmp(&(&b, &bn))
            );
        }
    }
}
