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

use prometheus_multiproc_format::filename::{FileName, GaugeMode, MetricType};

use crate::exposition::{encode_views_to, FamilyView, Format, Sink, WriteSink};
use crate::liveness::{liveness, Liveness};

mod merge;
mod order;
mod read;

use merge::Merge;
use read::Input;

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

/// Why [`Collector::write_to`] failed.
#[derive(Debug)]
pub enum WriteError {
    /// The directory could not be read: nothing was written.
    Collect(CollectError),
    /// Writing the output failed (part of it may have been written).
    Output(io::Error),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Collect(e) => e.fmt(f),
            WriteError::Output(e) => write!(f, "cannot write output: {e}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Collect(e) => Some(e),
            WriteError::Output(e) => Some(e),
        }
    }
}

impl From<CollectError> for WriteError {
    fn from(e: CollectError) -> WriteError {
        WriteError::Collect(e)
    }
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> WriteError {
        WriteError::Output(e)
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
        let mut merged = self.merge()?.run();
        let bad_files = report(std::mem::take(&mut merged.bad));
        let mut families = merged.to_families();
        merged.stages.lap("own");
        merged.stages.log(&self.dir, merged.files_read);
        let files_read = merged.files_read;
        drop(merged);
        let own = self.own_families(&bad_files, |name| {
            families
                .binary_search_by(|f| f.name.as_str().cmp(name))
                .is_ok()
        });
        families = merge_by_name(families, own, |f| &f.name);
        Ok(Scrape {
            families,
            bad_files,
            files_read,
        })
    }

    /// Reads and merges the directory as [`collect`](Self::collect) does, and appends the
    /// exposition of the result in `format` to `out`: what a scrape endpoint serves, written
    /// straight from the files' keys without building [`Scrape`]'s owned samples.
    ///
    /// ```
    /// use prometheus_multiproc::collector::Collector;
    /// use prometheus_multiproc::exposition::{encode, Format};
    /// use prometheus_multiproc::Registry;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let registry = Registry::new(dir.path()).unwrap();
    /// registry.counter("jobs", "Jobs run.").unwrap().inc();
    ///
    /// let collector = Collector::new(dir.path()).self_metrics(false);
    /// let mut text = String::new();
    /// let summary = collector.encode_into(Format::Text, &mut text).unwrap();
    /// assert_eq!(text, "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total 1.0\n");
    /// assert_eq!(summary.files_read, 1);
    /// // The same text as encoding the collected families.
    /// assert_eq!(text, encode(&collector.collect().unwrap().families, Format::Text));
    /// ```
    pub fn encode_into(&self, format: Format, out: &mut String) -> Result<Summary, CollectError> {
        self.encode_to_sink(format, out).map_err(|e| match e {
            WriteError::Collect(e) => e,
            // A string takes all the text.
            WriteError::Output(source) => CollectError {
                dir: self.dir.clone(),
                source,
            },
        })
    }

    /// Reads and merges the directory as [`encode_into`](Self::encode_into) does, writing the
    /// exposition to `out` as it is made, in pieces of about a megabyte, instead of keeping all
    /// of it in memory: what `prom-multiproc dump` does.
    ///
    /// ```
    /// use prometheus_multiproc::collector::Collector;
    /// use prometheus_multiproc::exposition::Format;
    /// use prometheus_multiproc::Registry;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let registry = Registry::new(dir.path()).unwrap();
    /// registry.counter("jobs", "Jobs run.").unwrap().inc();
    ///
    /// let mut out = Vec::new();
    /// let summary = Collector::new(dir.path())
    ///     .self_metrics(false)
    ///     .write_to(Format::Text, &mut out)
    ///     .unwrap();
    /// assert_eq!(out, b"# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total 1.0\n");
    /// assert!(summary.bad_files.is_empty());
    /// ```
    pub fn write_to(&self, format: Format, out: impl io::Write) -> Result<Summary, WriteError> {
        let mut sink = WriteSink::new(out);
        let summary = self.encode_to_sink(format, &mut sink)?;
        sink.out.write_all(sink.text.as_bytes())?;
        sink.out.flush()?;
        Ok(summary)
    }

    fn encode_to_sink(&self, format: Format, sink: &mut dyn Sink) -> Result<Summary, WriteError> {
        let mut merged = self.merge()?.run();
        let bad_files = report(std::mem::take(&mut merged.bad));
        let own = self.own_families(&bad_files, |name| {
            merged
                .families
                .binary_search_by(|f| f.name.as_str().cmp(name))
                .is_ok()
        });
        let views = merged.views();
        let all = merge_by_name(
            views.iter().map(|f| f as &dyn FamilyView).collect(),
            own.iter().map(|f| f as &dyn FamilyView).collect(),
            |f| f.name(),
        );
        encode_views_to(&all, format, sink)?;
        merged.stages.lap("encode");
        merged.stages.log(&self.dir, merged.files_read);
        Ok(Summary {
            bad_files,
            files_read: merged.files_read,
        })
    }

    /// The files of the directory to merge.
    fn merge(&self) -> Result<Merge<'static>, CollectError> {
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
        Ok(Merge { inputs })
    }

    /// The families this crate adds to a scrape, sorted by name: the bad-files gauge, and the
    /// scraping process's metrics whose names the directory (`has`) does not already use.
    fn own_families(&self, bad: &[BadFile], has: impl Fn(&str) -> bool) -> Vec<MetricFamily> {
        let mut own = Vec::new();
        if self.self_metrics {
            own.push(bad_files_family(bad));
        }
        if self.process_metrics {
            own.extend(
                crate::process::process_families()
                    .into_iter()
                    .filter(|f| !has(&f.name)),
            );
        }
        own.sort_by(|a, b| a.name.cmp(&b.name));
        own
    }
}

/// What [`Collector::encode_into`] tells besides the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The files left out, sorted by path.
    pub bad_files: Vec<BadFile>,
    /// How many files were merged.
    pub files_read: usize,
}

/// Sorts and logs the bad files of a scrape.
fn report(mut bad: Vec<BadFile>) -> Vec<BadFile> {
    bad.sort_by(|a, b| a.path.cmp(&b.path));
    for b in &bad {
        log::warn!("skipped bad multiprocess file {b}");
    }
    bad
}

/// Two lists sorted by name as one; on equal names, `own`'s first.
fn merge_by_name<T>(dir: Vec<T>, own: Vec<T>, name: impl Fn(&T) -> &str) -> Vec<T> {
    let mut out = Vec::with_capacity(dir.len() + own.len());
    let mut dir = dir.into_iter().peekable();
    for o in own {
        while let Some(d) = dir.next_if(|d| name(d) < name(&o)) {
            out.push(d);
        }
        out.push(o);
    }
    out.extend(dir);
    out
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
    let merged = Merge { inputs }.run();
    (merged.to_families(), merged.bad)
}
