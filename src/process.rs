//! Process metrics of the scraping process, as Python's `ProcessCollector` reports them.
//!
//! The families, their names and help texts and the way each value is computed are those of
//! `prometheus_client.process_collector.ProcessCollector` (what every official client library
//! exports under these names), read from `/proc`:
//!
//! | family | type | from |
//! |---|---|---|
//! | `process_cpu_seconds_total` | counter | `utime + stime` of `/proc/PID/stat`, in clock ticks |
//! | `process_max_fds` | gauge | the soft `Max open files` limit of `/proc/PID/limits` |
//! | `process_open_fds` | gauge | the entries of `/proc/PID/fd` |
//! | `process_resident_memory_bytes` | gauge | `rss` of `/proc/PID/stat`, in pages |
//! | `process_start_time_seconds` | gauge | `btime` of `/proc/stat` plus `starttime` of `/proc/PID/stat` |
//! | `process_virtual_memory_bytes` | gauge | `vsize` of `/proc/PID/stat` |
//!
//! They describe one process, not the merged directory: a multiprocess scrape that adds them
//! ([`Collector::process_metrics`](crate::collector::Collector::process_metrics)) reports the
//! process that serves the scrape. Where `/proc` is missing or unreadable, nothing is reported
//! (as in Python): no family is ever made up, and reading never panics. Like Python, the open
//! descriptors of the process reading its own `/proc/self/fd` include the one used to list it.
//!
//! ```
//! use prometheus_multiproc::process::process_families;
//!
//! let families = process_families();
//! if std::path::Path::new("/proc/self/stat").exists() {
//!     let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
//!     assert_eq!(
//!         names,
//!         [
//!             "process_cpu_seconds",
//!             "process_max_fds",
//!             "process_open_fds",
//!             "process_resident_memory_bytes",
//!             "process_start_time_seconds",
//!             "process_virtual_memory_bytes",
//!         ]
//!     );
//!     let cpu = &families[0];
//!     assert_eq!(cpu.samples[0].name, "process_cpu_seconds_total");
//!     assert!(cpu.samples[0].value >= 0.0);
//! } else {
//!     assert!(families.is_empty());
//! }
//! ```

use std::fs;
use std::path::Path;

use prometheus_multiproc_format::filename::MetricType;

use crate::collector::{MetricFamily, Sample};

pub(crate) use crate::os::{clock_ticks_per_second, page_size};

/// Help texts, as Python writes them.
const CPU_HELP: &str = "Total user and system CPU time spent in seconds.";
const MAX_FDS_HELP: &str = "Maximum number of open file descriptors.";
const OPEN_FDS_HELP: &str = "Number of open file descriptors.";
const RSS_HELP: &str = "Resident memory size in bytes.";
const START_HELP: &str = "Start time of the process since unix epoch in seconds.";
const VMEM_HELP: &str = "Virtual memory size in bytes.";

/// The process metrics of this process, sorted by family name; empty where `/proc` cannot be
/// read.
///
/// The same as [`process_families_from`]`("/proc", "self")`.
pub fn process_families() -> Vec<MetricFamily> {
    process_families_from(Path::new("/proc"), "self")
}

/// The process metrics of process `pid` (a number, or `self`) read from the `/proc` file system
/// mounted at `proc`, sorted by family name, as Python's `ProcessCollector(proc=..., pid=...)`
/// reports them.
///
/// As in Python, nothing is reported unless `btime` can be read from `PROC/stat`; the four
/// families read from `PROC/PID/stat` are left out together if that file cannot be read or
/// parsed, and the two file-descriptor families are left out together if `PROC/PID/limits` or
/// `PROC/PID/fd` cannot be read. An `unlimited` descriptor limit is reported as `+Inf`.
///
/// ```
/// use prometheus_multiproc::process::process_families_from;
///
/// let dir = tempfile::tempdir().unwrap();
/// // No `stat` file: no boot time, so nothing at all, as in Python.
/// assert!(process_families_from(dir.path(), "self").is_empty());
///
/// std::fs::write(dir.path().join("stat"), "cpu  1 2 3\nbtime 1700000000\n").unwrap();
/// std::fs::create_dir_all(dir.path().join("42/fd")).unwrap();
/// std::fs::write(dir.path().join("42/fd/0"), "").unwrap();
/// std::fs::write(
///     dir.path().join("42/limits"),
///     "Limit                     Soft Limit           Hard Limit           Units\n\
///      Max open files            1024                 4096                 files\n",
/// )
/// .unwrap();
/// let families = process_families_from(dir.path(), "42");
/// // Without `42/stat`, only the descriptor families.
/// let values: Vec<(&str, f64)> =
///     families.iter().map(|f| (f.name.as_str(), f.samples[0].value)).collect();
/// assert_eq!(values, [("process_max_fds", 1024.0), ("process_open_fds", 1.0)]);
/// ```
pub fn process_families_from(proc: &Path, pid: &str) -> Vec<MetricFamily> {
    let Some(btime) = boot_time(proc) else {
        return Vec::new();
    };
    let dir = proc.join(pid.trim());
    let mut families = Vec::with_capacity(6);
    if let Some(stat) = fs::read(dir.join("stat"))
        .ok()
        .and_then(|bytes| parse_stat(&bytes))
    {
        let ticks = clock_ticks_per_second() as f64;
        let pagesize = page_size() as f64;
        families.push(gauge("process_virtual_memory_bytes", VMEM_HELP, stat.vsize));
        families.push(gauge(
            "process_resident_memory_bytes",
            RSS_HELP,
            stat.rss * pagesize,
        ));
        families.push(gauge(
            "process_start_time_seconds",
            START_HELP,
            stat.starttime / ticks + btime,
        ));
        families.push(MetricFamily {
            name: "process_cpu_seconds".to_owned(),
            help: CPU_HELP.to_owned(),
            kind: MetricType::Counter,
            samples: vec![Sample {
                name: "process_cpu_seconds_total".to_owned(),
                labels: Vec::new(),
                value: stat.utime / ticks + stat.stime / ticks,
            }],
        });
    }
    if let (Some(max_fds), Some(open_fds)) = (max_fds(&dir), open_fds(&dir)) {
        families.push(gauge("process_open_fds", OPEN_FDS_HELP, open_fds));
        if let Some(max_fds) = max_fds {
            families.push(gauge("process_max_fds", MAX_FDS_HELP, max_fds));
        }
    }
    families.sort_by(|a, b| a.name.cmp(&b.name));
    families
}

fn gauge(name: &str, help: &str, value: f64) -> MetricFamily {
    MetricFamily {
        name: name.to_owned(),
        help: help.to_owned(),
        kind: MetricType::Gauge,
        samples: vec![Sample {
            name: name.to_owned(),
            labels: Vec::new(),
            value,
        }],
    }
}

/// The `btime` line of `PROC/stat`: when the system booted, in seconds since the epoch. Python
/// treats a missing or zero boot time as "no `/proc`".
fn boot_time(proc: &Path) -> Option<f64> {
    let stat = fs::read(proc.join("stat")).ok()?;
    stat.split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"btime "))
        .and_then(|rest| {
            parse_f64(
                rest.split(u8::is_ascii_whitespace)
                    .find(|f| !f.is_empty())?,
            )
        })
        .filter(|&b| b != 0.0)
}

/// The fields of `PID/stat` that are reported, in their units there.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    utime: f64,
    stime: f64,
    starttime: f64,
    vsize: f64,
    rss: f64,
}

/// Parses `PID/stat`. The command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so the fields are counted from after the last `)`, as Python does.
fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let fields: Vec<&[u8]> = bytes[close + 1..]
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
        .collect();
    // fields[0] is field 3 of the file (the state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).copied().and_then(parse_f64);
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss: field(24)?,
    })
}

/// The soft limit on open files from `PID/limits`: `None` if the file cannot be read,
/// `Some(None)` if it has no such line.
fn max_fds(dir: &Path) -> Option<Option<f64>> {
    let limits = fs::read(dir.join("limits")).ok()?;
    Some(
        limits
            .split(|&b| b == b'\n')
            .find(|line| line.starts_with(b"Max open file"))
            .and_then(|line| {
                // `Max open files  SOFT  HARD  files`: the fourth word.
                let soft = line
                    .split(u8::is_ascii_whitespace)
                    .filter(|w| !w.is_empty())
                    .nth(3)?;
                if soft == b"unlimited" {
                    Some(f64::INFINITY)
                } else {
                    parse_f64(soft)
                }
            }),
    )
}

/// The number of entries of `PID/fd`.
fn open_fds(dir: &Path) -> Option<f64> {
    let entries = fs::read_dir(dir.join("fd")).ok()?;
    Some(entries.filter(Result::is_ok).count() as f64)
}

fn parse_f64(bytes: &[u8]) -> Option<f64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parentheses_and_spaces_in_the_name() {
        let line = b"1234 (a (b) c) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 1 0 \
                     4242 123456789 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 250.0,
                stime: 75.0,
                starttime: 4242.0,
                vsize: 123456789.0,
                rss: 321.0,
            })
        );
        assert_eq!(parse_stat(b"1234 (x) S 1 2 3"), None);
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn missing_proc_reports_nothing() {
        assert!(process_families_from(Path::new("/nonexistent/proc"), "self").is_empty());
    }

    #[test]
    fn this_process() {
        let Ok(stat) = fs::read("/proc/self/stat") else {
            return;
        };
        assert!(parse_stat(&stat).is_some());
        let families = process_families();
        assert_eq!(families.len(), 6);
        for f in &families {
            assert_eq!(f.samples.len(), 1, "{}", f.name);
            assert!(f.samples[0].value >= 0.0, "{}", f.name);
        }
    }
}
