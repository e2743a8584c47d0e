//! Shared helpers for the multiprocess scenario and corrupt-file tests: a builder that lays out
//! directories the way Python's `prometheus_client` writer does, and lookups into a [`Scrape`].
//!
//! ```ignore
//! mod support;
//! use support::DirBuilder;
//!
//! let dir = DirBuilder::new();
//! dir.file("counter_123.db", &[("c", "c_total", &[], "help", 1.0, 0.0)]);
//! let scrape = dir.collect();
//! assert_eq!(support::value(&scrape, "c_total", &[]), Some(1.0));
//! ```
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use prometheus_multiproc::collector::BAD_FILES_METRIC;
use prometheus_multiproc::collector::{BadFile, BadFileReason, Collector, MetricFamily, Scrape};
use prometheus_multiproc::format::filename::GaugeMode;
use prometheus_multiproc::format::float::go_float;
use prometheus_multiproc::format::key::encode_key;
use prometheus_multiproc::format::layout::{append_entry, write_file};

/// The seed of a randomized test: the `u64` in the environment variable `var`, or else one from
/// the clock; printed with the way to repeat the run.
pub fn seed(var: &str) -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let seed = match std::env::var(var) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a u64, not {s:?}")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42),
    };
    eprintln!("seed {seed} (set {var}={seed} to repeat)");
    seed
}

/// One entry as a tuple: `(metric, sample, labels, help, value, timestamp)`.
pub type Row<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a str,
    f64,
    f64,
);

/// One entry of a file: the JSON key Python writes, the value and the timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `json.dumps([metric, sample, labels, help], sort_keys=True)`.
    pub key: String,
    /// The value.
    pub value: f64,
    /// The timestamp (0.0 unless set by a mostrecent gauge).
    pub timestamp: f64,
}

impl Entry {
    /// An entry with the key Python's `mmap_key` writes for these parts.
    pub fn new<N: AsRef<str>, V: AsRef<str>>(
        metric: &str,
        sample: &str,
        labels: &[(N, V)],
        help: &str,
        value: f64,
        timestamp: f64,
    ) -> Entry {
        Entry {
            key: encode_key(metric, sample, labels, help),
            value,
            timestamp,
        }
    }

    /// An entry with a raw key, JSON or not.
    pub fn raw(key: &str, value: f64, timestamp: f64) -> Entry {
        Entry {
            key: key.to_owned(),
            value,
            timestamp,
        }
    }
}

impl From<&Row<'_>> for Entry {
    fn from(r: &Row<'_>) -> Entry {
        Entry::new(r.0, r.1, r.2, r.3, r.4, r.5)
    }
}

/// The bytes of a file holding these entries, in this order, as Python's writer leaves it
/// (64 KiB, doubled as needed, zero-filled after `used`).
pub fn file_bytes(entries: &[Entry]) -> Vec<u8> {
    write_file(
        entries
            .iter()
            .map(|e| (e.key.as_bytes(), e.value, e.timestamp)),
    )
}

/// [`file_bytes`] for tuple rows.
pub fn rows_bytes(rows: &[Row<'_>]) -> Vec<u8> {
    file_bytes(&rows.iter().map(Entry::from).collect::<Vec<_>>())
}

/// The `used` header of a file's bytes.
pub fn used_of(bytes: &[u8]) -> usize {
    i32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize
}

/// Appends an entry after the `used` bytes of `bytes` and updates `used`, as Python's
/// `MmapedDict._init_value` followed by `write_value` does (growing the file by doubling).
pub fn append_to(bytes: &mut Vec<u8>, e: &Entry) {
    let used = used_of(bytes);
    let mut head = bytes[..used].to_vec();
    append_entry(&mut head, e.key.as_bytes(), e.value, e.timestamp);
    let new_used = head.len();
    let mut size = bytes.len().max(1 << 16);
    while size < new_used {
        size *= 2;
    }
    head.resize(size, 0);
    head[..4].copy_from_slice(&(new_used as i32).to_ne_bytes());
    *bytes = head;
}

/// Python's `Histogram.DEFAULT_BUCKETS`.
pub const DEFAULT_BUCKETS: [f64; 15] = [
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    f64::INFINITY,
];

fn with_label(labels: &[(&str, &str)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = labels
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    out.push((name.to_owned(), value.to_owned()));
    out
}

/// The entries one process's histogram child writes, in Python's order: `_sum` first, then one
/// non-cumulative `_bucket` per bound with `le` as `floatToGoString` writes it, after observing
/// `observations` (each increments exactly the first bucket whose bound it does not exceed).
pub fn histogram(
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    buckets: &[f64],
    observations: &[f64],
) -> Vec<Entry> {
    let mut counts = vec![0.0; buckets.len()];
    for &o in observations {
        if let Some(i) = buckets.iter().position(|&b| o <= b) {
            counts[i] += 1.0;
        }
    }
    let mut out = vec![Entry::new(
        name,
        &format!("{name}_sum"),
        labels,
        help,
        observations.iter().sum(),
        0.0,
    )];
    for (b, c) in buckets.iter().zip(counts) {
        out.push(Entry::new(
            name,
            &format!("{name}_bucket"),
            &with_label(labels, "le", &go_float(*b)),
            help,
            c,
            0.0,
        ));
    }
    out
}

/// The entries one process's summary child writes, in Python's order: `_count`, then `_sum`.
pub fn summary(
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    observations: &[f64],
) -> Vec<Entry> {
    vec![
        Entry::new(
            name,
            &format!("{name}_count"),
            labels,
            help,
            observations.len() as f64,
            0.0,
        ),
        Entry::new(
            name,
            &format!("{name}_sum"),
            labels,
            help,
            observations.iter().sum(),
            0.0,
        ),
    ]
}

/// A temporary multiprocess directory, filled file by file.
#[derive(Debug)]
pub struct DirBuilder {
    dir: tempfile::TempDir,
}

impl Default for DirBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DirBuilder {
    /// A new, empty directory.
    pub fn new() -> DirBuilder {
        DirBuilder {
            dir: tempfile::tempdir().expect("create temporary directory"),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The path of `name` in the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes (or rewrites) `name` with these tuple rows.
    pub fn file(&self, name: &str, rows: &[Row<'_>]) -> &Self {
        self.bytes(name, &rows_bytes(rows))
    }

    /// Writes (or rewrites) `name` with these entries.
    pub fn entries(&self, name: &str, entries: &[Entry]) -> &Self {
        self.bytes(name, &file_bytes(entries))
    }

    /// Writes (or rewrites) `name` with exactly these bytes.
    pub fn bytes(&self, name: &str, bytes: &[u8]) -> &Self {
        fs::write(self.join(name), bytes).expect("write file");
        self
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) -> &Self {
        fs::remove_file(self.join(name)).expect("remove file");
        self
    }

    /// What Python's `mark_process_dead(pid)` does: removes `gauge_live*_{pid}.db`.
    pub fn mark_process_dead(&self, pid: u32) -> &Self {
        let suffix = format!("_{pid}.db");
        for entry in fs::read_dir(self.path()).expect("list directory") {
            let entry = entry.expect("list directory");
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(mode) = name
                .strip_prefix("gauge_")
                .and_then(|rest| rest.strip_suffix(&suffix))
            else {
                continue;
            };
            if GaugeMode::parse(mode).is_some_and(GaugeMode::is_live) {
                fs::remove_file(entry.path()).expect("remove file");
            }
        }
        self
    }

    /// Collects the directory; panics if the directory cannot be read.
    pub fn collect(&self) -> Scrape {
        Collector::new(self.path())
            .collect()
            .expect("collect a readable directory")
    }
}

fn sorted_labels(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = labels
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    out.sort();
    out
}

/// The value of the sample named `sample` with exactly these labels (in any order), as
/// Python's `registry.get_sample_value` finds it.
pub fn value(scrape: &Scrape, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    value_in(&scrape.families, sample, labels)
}

/// [`value`] over families, as returned by `merge_files`.
pub fn value_in(families: &[MetricFamily], sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want = sorted_labels(labels);
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == sample && s.labels == want)
        .map(|s| s.value)
}

/// How many samples are named `sample`, whatever their labels.
pub fn count_samples(scrape: &Scrape, sample: &str) -> usize {
    scrape
        .families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == sample)
        .count()
}

/// The family named `name`.
pub fn family<'s>(scrape: &'s Scrape, name: &str) -> Option<&'s MetricFamily> {
    scrape.families.iter().find(|f| f.name == name)
}

/// The `prometheus_multiproc_bad_files{reason=...}` value.
pub fn bad_files_gauge(scrape: &Scrape, reason: BadFileReason) -> Option<f64> {
    value(scrape, BAD_FILES_METRIC, &[("reason", reason.as_str())])
}

/// The bad file whose path is `path`.
pub fn bad_file<'s>(scrape: &'s Scrape, path: &Path) -> Option<&'s BadFile> {
    scrape.bad_files.iter().find(|b| b.path == path)
}

/// Checks that the `prometheus_multiproc_bad_files` gauge counts exactly the listed bad files,
/// reason by reason.
pub fn assert_gauge_matches_bad_files(scrape: &Scrape) {
    for reason in BadFileReason::ALL {
        let listed = scrape
            .bad_files
            .iter()
            .filter(|b| b.reason == reason)
            .count();
        assert_eq!(
            bad_files_gauge(scrape, reason),
            Some(listed as f64),
            "{BAD_FILES_METRIC}{{reason=\"{reason}\"}} vs bad_files {:?}",
            scrape.bad_files
        );
    }
}

/// A scrape of `dir` without this crate's own families, which must have no bad file.
pub fn clean_scrape(dir: &Path) -> Scrape {
    let scrape = Collector::new(dir).self_metrics(false).collect().unwrap();
    assert!(
        scrape.bad_files.is_empty(),
        "bad files: {:?}",
        scrape.bad_files
    );
    scrape
}

/// Checks the scrape lists no bad file and the gauge is zero for every reason.
pub fn assert_no_bad_files(scrape: &Scrape) {
    assert!(
        scrape.bad_files.is_empty(),
        "bad files: {:?}",
        scrape.bad_files
    );
    assert_gauge_matches_bad_files(scrape);
}
