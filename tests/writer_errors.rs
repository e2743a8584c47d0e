//! What the write side refuses, and how it fails: directories it cannot use, invalid names and
//! labels, wrong label values, negative increments, bad buckets, conflicting registrations, a
//! full disk (an error, never a `SIGBUS`), and a corrupt file left by an earlier process with
//! the same pid (moved aside, a fresh one started).
//!
//! Checks that need root powers this process lacks (a `tmpfs` mount) or that root defeats
//! (`chmod`) print a `SKIPPED:` line instead.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_multiproc::format::key::encode_key;
use prometheus_multiproc::format::layout::{self, write_file};
use prometheus_multiproc::metrics::{exponential_buckets, linear_buckets};
use prometheus_multiproc::{GaugeMode, MetricError, Registry};

// ------------------------------------------------------------------ forked children

#[macro_use]
mod forked;
use forked::*;

mod support;
use support::{clean_scrape, value_in as value};

const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ helpers

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// A `tmpfs` mounted on a fresh temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one with these `flags` and `options`, or says why not.
    fn mount(flags: libc::c_ulong, options: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().unwrap();
        let target = c_path(dir.path());
        let data = CString::new(options).unwrap();
        // SAFETY: valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "cannot mount a tmpfs ({})",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = c_path(self.dir.path());
        // SAFETY: a valid path; detaching never blocks on busy files.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn err_of<T: std::fmt::Debug>(r: Result<T, MetricError>) -> MetricError {
    r.expect_err("expected an error")
}

// ------------------------------------------------------------------ directories

#[test]
fn registry_refuses_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let e = Registry::new(&missing).unwrap_err();
    assert_eq!(e.dir, missing);
    assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(!missing.exists(), "the directory must not be created");
}

#[test]
fn registry_refuses_a_file_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("counter_1.db");
    fs::write(&file, b"not a directory").unwrap();
    let e = Registry::new(&file).unwrap_err();
    assert_eq!(e.dir, file);
    assert_eq!(e.source.kind(), std::io::ErrorKind::NotADirectory);
    assert_eq!(fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn registry_refuses_an_unwritable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    // Root writes through the mode bits.
    let probe = locked.join("probe");
    if fs::write(&probe, b"").is_ok() {
        fs::remove_file(&probe).unwrap();
        eprintln!("SKIPPED: chmod 0555 does not stop this user (root) from writing");
    } else {
        let e = Registry::new(&locked).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        assert_eq!(e.dir, locked);
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();

    // A read-only file system stops root too.
    match Tmpfs::mount(libc::MS_RDONLY, "size=64k") {
        Ok(ro) => {
            let e = Registry::new(ro.path()).unwrap_err();
            assert_eq!(
                e.source.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem,
                "{e}"
            );
        }
        Err(why) => eprintln!("SKIPPED: read-only directory: {why}"),
    }
}

#[test]
fn registry_creates_no_file_until_the_first_metric() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(dir.path()).unwrap();
    assert_eq!(file_names(dir.path()), Vec::<String>::new());
    // Refused registrations create nothing either.
    assert!(registry.counter("bad-name", "Bad.").is_err());
    assert!(registry.histogram("h", "H.", &[2.0, 1.0]).is_err());
    assert_eq!(file_names(dir.path()), Vec::<String>::new());
    registry.counter("c_total", "C.").unwrap().inc();
    let pid = registry.pid();
    assert!(file_names(dir.path()).contains(&format!("counter_{pid}.db")));
}

// ------------------------------------------------------------------ names and labels

#[test]
fn invalid_metric_names_are_refused_for_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    // A counter's family drops `_total`: nothing is left of this one.
    assert!(matches!(
        err_of(r.counter("_total", "h")),
        MetricError::InvalidName(_)
    ));
    for name in [
        "",
        "1abc",
        "a-b",
        "a b",
        "a.b",
        "caf\u{e9}",
        "a{b}",
        "a\"b",
        "a\nb",
    ] {
        let bad = |e: MetricError| matches!(e, MetricError::InvalidName(_));
        assert!(bad(err_of(r.counter(name, "h"))), "counter {name:?}");
        assert!(bad(err_of(r.counter_vec(name, "h", &["l"]))), "{name:?}");
        assert!(bad(err_of(r.gauge(name, "h", GaugeMode::All))), "{name:?}");
        assert!(
            bad(err_of(r.gauge_vec(name, "h", &["l"], GaugeMode::Max))),
            "{name:?}"
        );
        assert!(
            bad(err_of(r.most_recent_gauge(
                name,
                "h",
                GaugeMode::MostRecent
            ))),
            "{name:?}"
        );
        assert!(bad(err_of(r.histogram(name, "h", &[1.0]))), "{name:?}");
        assert!(
            bad(err_of(r.histogram_vec(name, "h", &["l"], &[1.0]))),
            "{name:?}"
        );
        assert!(bad(err_of(r.summary(name, "h"))), "{name:?}");
        assert!(bad(err_of(r.summary_vec(name, "h", &["l"]))), "{name:?}");
    }
    for (i, name) in ["a", "_a", "a:b", "A_1", ":ns:sub", "__meta"]
        .iter()
        .enumerate()
    {
        r.counter(&format!("{name}{i}_total"), "h").unwrap();
    }
    let e = err_of(r.counter("bad-name_total", "h"));
    assert!(e.to_string().contains("bad-name"), "{e}");
}

#[test]
fn invalid_label_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    for label in [
        "",
        "1a",
        "a-b",
        "a:b",
        "a b",
        "\u{e9}t\u{e9}",
        "__name__",
        "__x",
        "__",
    ] {
        let bad = |e: MetricError| matches!(&e, MetricError::InvalidLabelName(l) if l == label);
        assert!(bad(err_of(r.counter_vec("c", "h", &[label]))), "{label:?}");
        assert!(
            bad(err_of(r.gauge_vec(
                "g",
                "h",
                &["ok", label],
                GaugeMode::Sum
            ))),
            "{label:?}"
        );
        assert!(
            bad(err_of(r.histogram_vec("h", "h", &[label], &[1.0]))),
            "{label:?}"
        );
        assert!(bad(err_of(r.summary_vec("s", "h", &[label]))), "{label:?}");
    }
    r.counter_vec("fine_total", "h", &["_x", "x_", "X9", "a__b"])
        .unwrap();
}

#[test]
fn duplicate_label_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    let e = err_of(r.counter_vec("c", "h", &["a", "b", "a"]));
    assert!(
        matches!(&e, MetricError::DuplicateLabelName(l) if l == "a"),
        "{e:?}"
    );
    assert!(matches!(
        err_of(r.histogram_vec("h", "h", &["x", "x"], &[1.0])),
        MetricError::DuplicateLabelName(_)
    ));
}

#[test]
fn reserved_label_names_are_refused_per_type() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    let reserved = |e: MetricError, want: &str| matches!(&e, MetricError::ReservedLabelName { label, .. } if label == want);
    assert!(reserved(
        err_of(r.histogram_vec("h", "h", &["path", "le"], &[1.0])),
        "le"
    ));
    assert!(reserved(
        err_of(r.summary_vec("s", "h", &["quantile"])),
        "quantile"
    ));
    for mode in [GaugeMode::All, GaugeMode::LiveAll] {
        let e = err_of(r.gauge_vec(&format!("g_{mode}"), "h", &["pid"], mode));
        assert!(e.to_string().contains("pid"), "{e}");
        assert!(reserved(e, "pid"), "{mode}");
    }
    // Reserved for those types only, as in Python.
    r.counter_vec("c_le_total", "h", &["le"]).unwrap();
    r.summary_vec("s_le", "h", &["le"]).unwrap();
    r.histogram_vec("h_quantile", "h", &["quantile"], &[1.0])
        .unwrap();
    for mode in [GaugeMode::LiveSum, GaugeMode::Max, GaugeMode::Min] {
        r.gauge_vec(&format!("g_pid_{mode}"), "h", &["pid"], mode)
            .unwrap();
    }
    r.most_recent_gauge_vec("g_pid_mr", "h", &["pid"], GaugeMode::MostRecent)
        .unwrap();
}

#[test]
fn wrong_label_count_is_an_error_or_a_clear_panic() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    let v = r
        .counter_vec("req_total", "h", &["method", "path"])
        .unwrap();
    for values in [&[][..], &["GET"][..], &["GET", "/", "extra"][..]] {
        let e = err_of(v.get_metric_with_label_values(values));
        assert!(
            matches!(e, MetricError::LabelCount { expected: 2, got } if got == values.len()),
            "{e:?}"
        );
        let panic = catch_unwind(AssertUnwindSafe(|| v.with_label_values(values)))
            .expect_err("with_label_values must panic");
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap();
        assert!(text.contains("req"), "{text}");
        assert!(
            text.contains(&format!("expected 2 label values, got {}", values.len())),
            "{text}"
        );
    }
    // The family still works after the panics.
    v.with_label_values(&["GET", "/"]).inc();
    assert_eq!(v.with_label_values(&["GET", "/"]).get(), 1.0);
    let h = r.histogram_vec("lat", "h", &["a"], &[1.0]).unwrap();
    assert!(matches!(
        err_of(h.get_metric_with_label_values(&["x", "y"])),
        MetricError::LabelCount {
            expected: 1,
            got: 2
        }
    ));
}

#[test]
fn label_map_must_name_exactly_the_family_labels() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    let v = r
        .counter_vec("req_total", "h", &["method", "path"])
        .unwrap();
    let unknown = HashMap::from([("method", "GET"), ("route", "/")]);
    let e = err_of(v.with(&unknown));
    assert!(
        matches!(&e, MetricError::UnknownLabel(l) if l == "path"),
        "{e:?}"
    );
    let missing = HashMap::from([("method", "GET")]);
    assert!(matches!(
        err_of(v.with(&missing)),
        MetricError::LabelCount {
            expected: 2,
            got: 1
        }
    ));
    let extra = HashMap::from([("method", "GET"), ("path", "/"), ("x", "y")]);
    assert!(matches!(
        err_of(v.with(&extra)),
        MetricError::LabelCount {
            expected: 2,
            got: 3
        }
    ));
    // The map form and the values form reach the same series.
    let good = HashMap::from([("path", "/"), ("method", "GET")]);
    v.with(&good).unwrap().inc();
    assert_eq!(v.with_label_values(&["GET", "/"]).get(), 1.0);
    let scrape = clean_scrape(dir.path());
    assert_eq!(
        value(
            &scrape.families,
            "req_total",
            &[("method", "GET"), ("path", "/")]
        ),
        Some(1.0)
    );
}

#[test]
fn negative_increment_is_refused_and_the_value_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    let c = r.counter("c_total", "h").unwrap();
    let v = r.counter_vec("v_total", "h", &["l"]).unwrap();
    let child = v.with_label_values(&["x"]);
    c.inc_by(2.5).unwrap();
    child.inc_by(4.0).unwrap();
    for bad in [-1.0, -0.5, -1e-300, f64::NEG_INFINITY] {
        let e = err_of(c.inc_by(bad));
        assert!(
            matches!(e, MetricError::NegativeIncrement(x) if x == bad),
            "{e:?}"
        );
        assert!(e.to_string().contains("non-negative"), "{e}");
        assert!(matches!(
            err_of(child.inc_by(bad)),
            MetricError::NegativeIncrement(_)
        ));
    }
    assert_eq!(c.get(), 2.5);
    assert_eq!(child.get(), 4.0);
    c.inc_by(0.0).unwrap();
    let scrape = clean_scrape(dir.path());
    assert_eq!(value(&scrape.families, "c_total", &[]), Some(2.5));
    assert_eq!(value(&scrape.families, "v_total", &[("l", "x")]), Some(4.0));
}

#[test]
fn most_recent_modes_are_refused_by_gauge_and_other_modes_by_most_recent_gauge() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    for mode in GaugeMode::ALL {
        let name = format!("g_{mode}");
        let wrong = |e: MetricError| matches!(e, MetricError::WrongGaugeMode(m) if m == mode);
        if mode.is_most_recent() {
            assert!(wrong(err_of(r.gauge(&name, "h", mode))), "{mode}");
            assert!(
                wrong(err_of(r.gauge_vec(&name, "h", &["l"], mode))),
                "{mode}"
            );
            r.most_recent_gauge(&name, "h", mode).unwrap().set(1.0);
        } else {
            assert!(
                wrong(err_of(r.most_recent_gauge(&name, "h", mode))),
                "{mode}"
            );
            assert!(
                wrong(err_of(r.most_recent_gauge_vec(&name, "h", &["l"], mode))),
                "{mode}"
            );
            r.gauge(&name, "h", mode).unwrap().inc();
        }
    }
}

// ------------------------------------------------------------------ buckets

#[test]
fn bucket_bounds_must_increase_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    let cases: [&[f64]; 8] = [
        &[2.0, 1.0],
        &[1.0, 1.0],
        &[1.0, 2.0, 2.0, 3.0],
        &[1.0, f64::NAN],
        &[f64::NAN],
        &[],
        &[f64::INFINITY],
        &[1.0, f64::INFINITY, 2.0],
    ];
    for (i, buckets) in cases.iter().enumerate() {
        assert!(
            matches!(
                err_of(r.histogram(&format!("h{i}"), "h", buckets)),
                MetricError::InvalidBuckets(_)
            ),
            "{buckets:?}"
        );
        assert!(
            matches!(
                err_of(r.histogram_vec(&format!("hv{i}"), "h", &["l"], buckets)),
                MetricError::InvalidBuckets(_)
            ),
            "{buckets:?}"
        );
    }
    // +Inf is added when missing, kept when given.
    let h = r.histogram("ok1", "h", &[0.5, 1.0]).unwrap();
    assert_eq!(h.bounds(), &[0.5, 1.0, f64::INFINITY]);
    let h = r.histogram("ok2", "h", &[1.0, f64::INFINITY]).unwrap();
    assert_eq!(h.bounds(), &[1.0, f64::INFINITY]);
    let h = r.histogram("ok3", "h", &[-1.0, 0.0]).unwrap();
    assert_eq!(h.bounds(), &[-1.0, 0.0, f64::INFINITY]);
}

#[test]
fn bucket_helpers_give_exact_values() {
    assert_eq!(
        linear_buckets(0.5, 0.25, 4).unwrap(),
        vec![0.5, 0.75, 1.0, 1.25]
    );
    assert_eq!(linear_buckets(-2.0, 2.0, 3).unwrap(), vec![-2.0, 0.0, 2.0]);
    assert_eq!(linear_buckets(10.0, 5.0, 1).unwrap(), vec![10.0]);
    assert_eq!(
        exponential_buckets(1.0, 2.0, 5).unwrap(),
        vec![1.0, 2.0, 4.0, 8.0, 16.0]
    );
    assert_eq!(
        exponential_buckets(0.25, 4.0, 3).unwrap(),
        vec![0.25, 1.0, 4.0]
    );
    assert_eq!(
        exponential_buckets(0.001, 10.0, 4).unwrap(),
        vec![0.001, 0.01, 0.1, 1.0]
    );
    assert_eq!(
        exponential_buckets(100.0, 10.0, 3).unwrap(),
        vec![100.0, 1000.0, 10000.0]
    );
    for bad in [
        linear_buckets(0.0, 1.0, 0),
        linear_buckets(0.0, 0.0, 3),
        linear_buckets(0.0, -1.0, 3),
        linear_buckets(0.0, f64::NAN, 3),
        linear_buckets(f64::NAN, 1.0, 3),
        linear_buckets(f64::INFINITY, 1.0, 3),
        exponential_buckets(1.0, 2.0, 0),
        exponential_buckets(0.0, 2.0, 3),
        exponential_buckets(-1.0, 2.0, 3),
        exponential_buckets(1.0, 1.0, 3),
        exponential_buckets(1.0, 0.5, 3),
        exponential_buckets(1.0, f64::NAN, 3),
        exponential_buckets(f64::INFINITY, 2.0, 3),
    ] {
        assert!(
            matches!(bad, Err(MetricError::InvalidBuckets(_))),
            "{bad:?}"
        );
    }
    // The helpers' output is accepted as histogram buckets.
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    let h = r
        .histogram("lat", "h", &exponential_buckets(0.001, 10.0, 4).unwrap())
        .unwrap();
    h.observe(0.05);
    let scrape = clean_scrape(dir.path());
    assert_eq!(
        value(&scrape.families, "lat_bucket", &[("le", "0.1")]),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape.families, "lat_bucket", &[("le", "0.01")]),
        Some(0.0)
    );
}

// ------------------------------------------------------------------ registrations

#[test]
fn reregistering_a_name_with_another_type_or_labels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    let c = r.counter("x_total", "h").unwrap();
    let taken = |e: MetricError| matches!(&e, MetricError::AlreadyRegistered(n) if n == "x");
    assert!(taken(err_of(r.gauge("x", "h", GaugeMode::All))));
    assert!(taken(err_of(r.histogram("x", "h", &[1.0]))));
    assert!(taken(err_of(r.summary("x", "h"))));
    assert!(taken(err_of(r.counter_vec("x_total", "h", &["l"]))));
    assert!(taken(err_of(r.most_recent_gauge(
        "x",
        "h",
        GaugeMode::MostRecent
    ))));
    // The same counter again (with or without `_total`) is the same series.
    let again = r.counter("x", "h").unwrap();
    c.inc();
    again.inc();
    assert_eq!(c.get(), 2.0);

    r.gauge("g", "h", GaugeMode::LiveSum).unwrap();
    assert!(matches!(
        err_of(r.gauge("g", "h", GaugeMode::Max)),
        MetricError::AlreadyRegistered(_)
    ));
    r.histogram("h", "h", &[1.0, 2.0]).unwrap();
    assert!(matches!(
        err_of(r.histogram("h", "h", &[1.0, 3.0])),
        MetricError::AlreadyRegistered(_)
    ));
    r.counter_vec("v_total", "h", &["a", "b"]).unwrap();
    assert!(matches!(
        err_of(r.counter_vec("v_total", "h", &["b", "a"])),
        MetricError::AlreadyRegistered(_)
    ));
    let e = err_of(r.summary("v", "h"));
    assert!(e.to_string().contains("already registered"), "{e}");
    let scrape = clean_scrape(dir.path());
    assert_eq!(value(&scrape.families, "x_total", &[]), Some(2.0));
}

// ------------------------------------------------------------------ full disk

#[test]
fn full_disk_is_a_write_error_never_a_crash() {
    let fs = match Tmpfs::mount(0, "size=256k") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: full disk: {why}");
            return;
        }
    };
    let dir = fs.path().to_path_buf();
    // Slot 0: series created in files before the disk was full.
    let shared = Shared::new(1);
    let help = format!("Fills the disk. {}", "z".repeat(60));

    // In a child: a SIGBUS would kill it, and show as a signal, not crash the harness.
    let mut child = fork_child(|| {
        let registry = Registry::new(&dir).map_err(|e| e.to_string())?;
        let filler = registry
            .counter_vec("filler_total", &help, &["idx"])
            .map_err(|e| e.to_string())?;
        let mut created = 0usize;
        let error = loop {
            match filler.get_metric_with_label_values(&[&format!("{created:06}")]) {
                Ok(c) => {
                    c.inc();
                    created += 1;
                    shared.at(0).store(created as u64, Ordering::SeqCst);
                    ensure!(created < 100_000, "the disk never filled");
                }
                Err(e) => break e,
            }
        };
        let MetricError::Write(write) = &error else {
            return Err(format!("expected a write error, got {error:?}"));
        };
        ensure!(
            write.source.raw_os_error() == Some(libc::ENOSPC),
            "expected ENOSPC, got {:?}",
            write.source
        );
        let expected_file = format!("counter_{}.db", registry.pid());
        ensure!(
            write.path.file_name().and_then(|n| n.to_str()) == Some(expected_file.as_str()),
            "error names {}",
            write.path.display()
        );
        ensure!(error.to_string().contains("counter_"), "{error}");
        // The same failure again: still an error, nothing published.
        ensure!(
            filler.get_metric_with_label_values(&["another"]).is_err(),
            "a second series fit on a full disk"
        );
        // with_label_values goes on in memory (the error is logged).
        let in_memory = filler.with_label_values(&["in-memory"]);
        in_memory.inc();
        in_memory.inc_by(2.0).map_err(|e| e.to_string())?;
        ensure!(in_memory.get() == 3.0, "in memory {}", in_memory.get());
        ensure!(
            filler.with_label_values(&["in-memory"]).get() == 3.0,
            "lookup of the in-memory series"
        );
        // Series created before the disk filled keep counting in the file.
        let first = filler.with_label_values(&["000000"]);
        first.inc();
        ensure!(first.get() == 2.0, "first {}", first.get());
        // Metrics needing a new file (64 KiB each) fail cleanly too once the rest is used.
        let mut refused = 0;
        for (i, mode) in GaugeMode::ALL.into_iter().enumerate() {
            let name = format!("late_{i}");
            let made = if mode.is_most_recent() {
                registry
                    .most_recent_gauge(&name, "Late.", mode)
                    .map(|g| g.set(1.0))
            } else {
                registry.gauge(&name, "Late.", mode).map(|g| g.set(1.0))
            };
            match made {
                Ok(()) => {}
                Err(MetricError::Write(_)) => refused += 1,
                Err(e) => return Err(format!("expected a write error, got {e:?}")),
            }
        }
        ensure!(refused > 0, "ten more files fit on a full disk");
        match registry.histogram("late_seconds", "Late.", &[1.0]) {
            Err(MetricError::Write(_)) => {}
            other => return Err(format!("expected a write error, got {other:?}")),
        }
        Ok(())
    });
    child.wait(CHILD_TIMEOUT).unwrap();

    let created = shared.at(0).load(Ordering::SeqCst) as usize;
    assert!(
        created > 100,
        "only {created} series before the disk was full"
    );
    // What the child published scrapes cleanly: no bad file, every series there.
    let scrape = clean_scrape(&dir);
    let series: Vec<_> = scrape
        .families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == "filler_total")
        .collect();
    assert_eq!(series.len(), created);
    assert_eq!(
        value(&scrape.families, "filler_total", &[("idx", "000000")]),
        Some(2.0)
    );
    assert_eq!(
        value(&scrape.families, "filler_total", &[("idx", "000001")]),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape.families, "filler_total", &[("idx", "in-memory")]),
        None
    );
}

// ------------------------------------------------------------------ corrupt files

/// Bytes of a file with `n` good counter entries.
fn good_file(n: usize) -> Vec<u8> {
    let keys: Vec<String> = (0..n)
        .map(|i| encode_key("old", "old_total", &[("i", &i.to_string())], "Old."))
        .collect();
    write_file(keys.iter().map(|k| (k.as_bytes(), 5.0, 0.0)))
}

/// Puts `bytes` as this process's counter file, then records into it and checks that it was
/// moved aside whole and a fresh file started.
fn check_moved_aside(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let path = dir.path().join(format!("counter_{pid}.db"));
    fs::write(&path, bytes).unwrap();

    let registry = Registry::new(dir.path()).unwrap();
    assert_eq!(registry.pid(), pid);
    let fresh = registry.counter("fresh_total", "Fresh.").unwrap();
    fresh.inc();
    assert_eq!(fresh.get(), 1.0);

    let prefix = format!("counter_{pid}.db.corrupt-");
    let aside: Vec<PathBuf> = file_names(dir.path())
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|n| dir.path().join(n))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", file_names(dir.path()));
    let name = aside[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(!name.ends_with(".db"), "{name}");
    let stamp = &name[prefix.len()..];
    assert!(
        !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()),
        "{name}"
    );
    // Moved aside byte for byte: checked before the writer maps (and grows) it.
    let kept = fs::read(&aside[0]).unwrap();
    assert!(
        kept == bytes,
        "the file moved aside is not the original ({} bytes, was {})",
        kept.len(),
        bytes.len()
    );
    // The fresh file holds only the new series, and the directory scrapes cleanly.
    let scrape = clean_scrape(dir.path());
    assert_eq!(value(&scrape.families, "fresh_total", &[]), Some(1.0));
    assert_eq!(value(&scrape.families, "old_total", &[("i", "0")]), None);
    let new = fs::read(&path).unwrap();
    assert_eq!(layout::entries(&new).unwrap().count(), 1);
}

#[test]
fn corrupt_file_of_this_pid_is_moved_aside_and_a_fresh_one_started() {
    let mut bytes = good_file(3);
    let used = i32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
    // One more entry whose key length is negative.
    bytes[used..used + 4].copy_from_slice(&(-5i32).to_ne_bytes());
    bytes[..4].copy_from_slice(&((used + 32) as i32).to_ne_bytes());
    check_moved_aside(&bytes);
}

#[test]
fn file_of_this_pid_with_an_invalid_used_header_is_moved_aside() {
    let mut bytes = good_file(1);
    bytes[..4].copy_from_slice(&3i32.to_ne_bytes());
    check_moved_aside(&bytes);
}

#[test]
fn truncated_file_of_this_pid_is_moved_aside() {
    // 200 entries, cut in the middle of one: `used` points past the end of the file.
    let bytes = good_file(200);
    check_moved_aside(&bytes[..1000]);
}

#[test]
fn file_of_this_pid_truncated_at_an_entry_boundary_is_moved_aside() {
    // Every entry of `good_file` is 64 bytes. Cut after 14 of 200: the 186 missing ones are
    // 11904 bytes, which zeros would fill with 496 empty-key entries of 24 bytes, exactly, if
    // the file were read after growing it.
    let bytes = good_file(200);
    let used = i32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(used, 8 + 200 * 64);
    check_moved_aside(&bytes[..8 + 14 * 64]);
}

#[test]
fn file_of_this_pid_with_an_undecodable_key_is_moved_aside() {
    // Laid out correctly, but the key is not the JSON array a collector can read.
    let bytes = write_file([(&b"not json"[..], 1.0, 0.0)]);
    check_moved_aside(&bytes);
}

#[test]
fn good_file_of_this_pid_is_continued_not_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    fs::write(dir.path().join(format!("counter_{pid}.db")), good_file(3)).unwrap();
    let registry = Registry::new(dir.path()).unwrap();
    let old = registry.counter_vec("old_total", "Old.", &["i"]).unwrap();
    old.with_label_values(&["1"]).inc();
    assert_eq!(old.with_label_values(&["1"]).get(), 6.0);
    assert!(file_names(dir.path())
        .iter()
        .all(|n| !n.contains("corrupt")));
    let scrape = clean_scrape(dir.path());
    assert_eq!(
        value(&scrape.families, "old_total", &[("i", "1")]),
        Some(6.0)
    );
    assert_eq!(
        value(&scrape.families, "old_total", &[("i", "2")]),
        Some(5.0)
    );
}
