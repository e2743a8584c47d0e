//! Fork safety of the write side, with real forked processes: a child (or grandchild) of a
//! process holding metric handles writes only files named with its own pid, starting from 0 as
//! Python's writer does, never touches its parent's files, and cannot deadlock on a lock another
//! thread of the parent held at the moment of `fork()`.
//!
//! A forked child never returns into the test harness: it does its work under `catch_unwind`,
//! reports a failure through a pipe, and leaves with `_exit`. The parent waits with a deadline
//! and kills a child that hangs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use prometheus_multiproc::collector::{merge_files, Collector, MetricFamily};
use prometheus_multiproc::{GaugeMode, Registry};

// ------------------------------------------------------------------ forked children

#[macro_use]
mod forked;
use forked::*;

mod support;
use support::value_in as value;

const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ files and scrapes

/// The `*.db` files of the directory, by name, with their bytes.
fn db_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".db")
                .then(|| (name, fs::read(e.path()).unwrap()))
        })
        .collect()
}

/// The `*.db` file names of process `pid`.
fn files_of(dir: &Path, pid: u32) -> BTreeSet<String> {
    let suffix = format!("_{pid}.db");
    db_files(dir)
        .into_keys()
        .filter(|n| n.ends_with(&suffix))
        .collect()
}

/// The merge of process `pid`'s files alone.
fn merge_of(dir: &Path, pid: u32) -> Vec<MetricFamily> {
    let suffix = format!("_{pid}.db");
    let files: Vec<(String, Vec<u8>)> = db_files(dir)
        .into_iter()
        .filter(|(n, _)| n.ends_with(&suffix))
        .collect();
    let inputs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let (families, bad) = merge_files(&inputs);
    assert!(bad.is_empty(), "bad files of process {pid}: {bad:?}");
    families
}

/// The merge of the whole directory, which must have no bad file.
fn scrape(dir: &Path) -> Vec<MetricFamily> {
    let scrape = Collector::new(dir).self_metrics(false).collect().unwrap();
    assert!(scrape.bad_files.is_empty(), "{:?}", scrape.bad_files);
    scrape.families
}

// ------------------------------------------------------------------ the metrics used

const BUCKETS: &[f64] = &[1.0, 2.0, 5.0];

/// One of each kind, created before any fork.
struct Handles {
    registry: Registry,
    requests: prometheus_multiproc::Counter,
    hits: prometheus_multiproc::CounterVec,
    hits_a: prometheus_multiproc::Counter,
    latency: prometheus_multiproc::Histogram,
    inflight: prometheus_multiproc::Gauge,
}

fn handles(dir: &Path) -> Handles {
    let registry = Registry::new(dir).unwrap();
    let hits = registry
        .counter_vec("hits_total", "Hits.", &["path"])
        .unwrap();
    Handles {
        requests: registry.counter("requests_total", "Requests.").unwrap(),
        hits_a: hits.with_label_values(&["/a"]),
        hits,
        latency: registry
            .histogram("latency_seconds", "Latency.", BUCKETS)
            .unwrap(),
        inflight: registry
            .gauge("inflight", "In flight.", GaugeMode::LiveSum)
            .unwrap(),
        registry,
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn child_writes_only_files_named_with_its_own_pid_starting_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let h = handles(dir.path());
    h.requests.inc_by(5.0).unwrap();
    h.hits_a.inc_by(3.0).unwrap();
    h.latency.observe(1.5);
    h.latency.observe(1.5);
    h.inflight.set(7.0);
    let parent = getpid();
    assert_eq!(h.registry.pid(), parent);
    let before = db_files(dir.path());
    assert_eq!(
        before.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            format!("counter_{parent}.db"),
            format!("gauge_livesum_{parent}.db"),
            format!("histogram_{parent}.db"),
        ])
    );

    let mut child = fork_child(|| {
        let me = getpid();
        ensure!(
            h.registry.pid() == me,
            "registry pid {} in child {me}",
            h.registry.pid()
        );
        h.requests.inc();
        h.hits_a.inc();
        h.latency.observe(0.5);
        h.inflight.inc();
        // Python's semantics: the child's values start from its own (new) files, at 0.
        ensure!(h.requests.get() == 1.0, "requests {}", h.requests.get());
        ensure!(h.hits_a.get() == 1.0, "hits /a {}", h.hits_a.get());
        ensure!(h.inflight.get() == 1.0, "inflight {}", h.inflight.get());
        Ok(())
    });
    let child_pid = child.pid();
    child.wait(CHILD_TIMEOUT).unwrap();

    // The parent's files are byte for byte what they were.
    let after = db_files(dir.path());
    for (name, bytes) in &before {
        assert!(
            after.get(name) == Some(bytes),
            "{name} changed while only the child wrote"
        );
    }
    // The child wrote its own files, and nothing else.
    assert_eq!(
        files_of(dir.path(), child_pid),
        BTreeSet::from([
            format!("counter_{child_pid}.db"),
            format!("gauge_livesum_{child_pid}.db"),
            format!("histogram_{child_pid}.db"),
        ])
    );
    assert_eq!(after.len(), before.len() + 3, "{:?}", after.keys());
    let child_values = merge_of(dir.path(), child_pid);
    assert_eq!(value(&child_values, "requests_total", &[]), Some(1.0));
    assert_eq!(
        value(&child_values, "hits_total", &[("path", "/a")]),
        Some(1.0)
    );
    assert_eq!(value(&child_values, "inflight", &[]), Some(1.0));
    assert_eq!(
        value(&child_values, "latency_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(value(&child_values, "latency_seconds_sum", &[]), Some(0.5));
    assert_eq!(
        value(&child_values, "latency_seconds_bucket", &[("le", "1.0")]),
        Some(1.0)
    );
    // The parent's own values are unchanged by the child.
    let parent_values = merge_of(dir.path(), parent);
    assert_eq!(value(&parent_values, "requests_total", &[]), Some(5.0));
    assert_eq!(value(&parent_values, "inflight", &[]), Some(7.0));
    assert_eq!(
        value(&parent_values, "latency_seconds_count", &[]),
        Some(2.0)
    );
    // And the directory merges both.
    let merged = scrape(dir.path());
    assert_eq!(value(&merged, "requests_total", &[]), Some(6.0));
    assert_eq!(value(&merged, "hits_total", &[("path", "/a")]), Some(4.0));
    assert_eq!(value(&merged, "latency_seconds_count", &[]), Some(3.0));
    assert_eq!(value(&merged, "latency_seconds_sum", &[]), Some(3.5));
}

#[test]
fn handles_created_before_fork_work_in_child_including_old_and_new_labelled_children() {
    let dir = tempfile::tempdir().unwrap();
    let h = handles(dir.path());
    let sizes = h
        .registry
        .summary_vec("sizes_bytes", "Sizes.", &["kind"])
        .unwrap();
    let sizes_img = sizes.with_label_values(&["img"]);
    let last_seen = h
        .registry
        .most_recent_gauge("last_seen", "Last seen.", GaugeMode::MostRecent)
        .unwrap();
    h.hits_a.inc_by(10.0).unwrap();
    sizes_img.observe(100.0);
    let parent = getpid();
    let parent_files = db_files(dir.path());

    let mut child = fork_child(|| {
        // The handle the parent made, and the same series looked up again.
        h.hits_a.inc();
        h.hits.with_label_values(&["/a"]).inc();
        ensure!(h.hits_a.get() == 2.0, "hits /a {}", h.hits_a.get());
        // A labelled child first created in the forked child.
        let b = h
            .hits
            .get_metric_with_label_values(&["/b"])
            .map_err(|e| e.to_string())?;
        b.inc_by(4.0).map_err(|e| e.to_string())?;
        ensure!(
            h.hits.with_label_values(&["/b"]).get() == 4.0,
            "hits /b {}",
            h.hits.with_label_values(&["/b"]).get()
        );
        sizes_img.observe(10.0);
        sizes.with_label_values(&["txt"]).observe(1.0);
        last_seen.set(42.0);
        // A family first registered in the child.
        let only = h
            .registry
            .counter("child_only_total", "Only in the child.")
            .map_err(|e| e.to_string())?;
        only.inc();
        h.latency.observe(3.0);
        Ok(())
    });
    let child_pid = child.pid();
    child.wait(CHILD_TIMEOUT).unwrap();

    for (name, bytes) in &parent_files {
        assert!(
            db_files(dir.path()).get(name) == Some(bytes),
            "{name} changed"
        );
    }
    assert!(files_of(dir.path(), parent).contains(&format!("counter_{parent}.db")));
    let child_values = merge_of(dir.path(), child_pid);
    assert_eq!(
        value(&child_values, "hits_total", &[("path", "/a")]),
        Some(2.0)
    );
    assert_eq!(
        value(&child_values, "hits_total", &[("path", "/b")]),
        Some(4.0)
    );
    assert_eq!(
        value(&child_values, "sizes_bytes_count", &[("kind", "img")]),
        Some(1.0)
    );
    assert_eq!(
        value(&child_values, "sizes_bytes_sum", &[("kind", "img")]),
        Some(10.0)
    );
    assert_eq!(
        value(&child_values, "sizes_bytes_sum", &[("kind", "txt")]),
        Some(1.0)
    );
    assert_eq!(value(&child_values, "last_seen", &[]), Some(42.0));
    assert_eq!(value(&child_values, "child_only_total", &[]), Some(1.0));
    assert_eq!(
        value(&child_values, "latency_seconds_bucket", &[("le", "5.0")]),
        Some(1.0)
    );
    // Nothing of the child's reached the parent's files.
    let parent_values = merge_of(dir.path(), parent);
    assert_eq!(value(&parent_values, "hits_total", &[("path", "/b")]), None);
    assert_eq!(value(&parent_values, "child_only_total", &[]), None);
    assert_eq!(
        value(&parent_values, "hits_total", &[("path", "/a")]),
        Some(10.0)
    );
    let merged = scrape(dir.path());
    assert_eq!(value(&merged, "hits_total", &[("path", "/a")]), Some(12.0));
    assert_eq!(
        value(&merged, "sizes_bytes_sum", &[("kind", "img")]),
        Some(110.0)
    );
}

#[test]
fn grandchild_writes_its_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let h = handles(dir.path());
    h.requests.inc();
    let parent = getpid();
    // Slot 0: the grandchild's pid, as the child saw it.
    let shared = Shared::new(1);

    let mut child = fork_child(|| {
        h.requests.inc_by(10.0).map_err(|e| e.to_string())?;
        // A labelled child resolved first in this generation, used again in the next.
        let c = h.hits.with_label_values(&["/child"]);
        c.inc();
        let mut grandchild = fork_child(|| {
            let me = getpid();
            ensure!(h.registry.pid() == me, "registry pid {}", h.registry.pid());
            h.requests.inc_by(100.0).map_err(|e| e.to_string())?;
            c.inc_by(7.0).map_err(|e| e.to_string())?;
            h.hits.with_label_values(&["/grandchild"]).inc();
            h.latency.observe(4.0);
            ensure!(h.requests.get() == 100.0, "requests {}", h.requests.get());
            ensure!(c.get() == 7.0, "/child {}", c.get());
            Ok(())
        });
        shared
            .at(0)
            .store(grandchild.pid() as u64, Ordering::SeqCst);
        grandchild.wait(CHILD_TIMEOUT)?;
        // The child's values are its own, untouched by the grandchild.
        ensure!(h.requests.get() == 10.0, "requests {}", h.requests.get());
        ensure!(c.get() == 1.0, "/child {}", c.get());
        h.requests.inc();
        Ok(())
    });
    let child_pid = child.pid();
    child.wait(CHILD_TIMEOUT).unwrap();
    let grandchild_pid = shared.at(0).load(Ordering::SeqCst) as u32;
    assert!(grandchild_pid != 0 && grandchild_pid != child_pid && grandchild_pid != parent);

    let p = merge_of(dir.path(), parent);
    let c = merge_of(dir.path(), child_pid);
    let g = merge_of(dir.path(), grandchild_pid);
    assert_eq!(value(&p, "requests_total", &[]), Some(1.0));
    assert_eq!(value(&c, "requests_total", &[]), Some(11.0));
    assert_eq!(value(&g, "requests_total", &[]), Some(100.0));
    assert_eq!(value(&c, "hits_total", &[("path", "/child")]), Some(1.0));
    assert_eq!(value(&g, "hits_total", &[("path", "/child")]), Some(7.0));
    assert_eq!(
        value(&g, "hits_total", &[("path", "/grandchild")]),
        Some(1.0)
    );
    assert_eq!(value(&c, "hits_total", &[("path", "/grandchild")]), None);
    assert_eq!(value(&g, "latency_seconds_count", &[]), Some(1.0));
    // Its own files only: those it wrote, and perhaps the gauge file of the series it
    // inherited (recreated at 0, as Python recreates every known series after a fork).
    let own = files_of(dir.path(), grandchild_pid);
    assert!(
        own.contains(&format!("counter_{grandchild_pid}.db")),
        "{own:?}"
    );
    assert!(
        own.contains(&format!("histogram_{grandchild_pid}.db")),
        "{own:?}"
    );
    assert!(own.len() <= 3, "{own:?}");
    assert!(matches!(value(&g, "inflight", &[]), None | Some(0.0)));
    let merged = scrape(dir.path());
    assert_eq!(value(&merged, "requests_total", &[]), Some(112.0));
    assert_eq!(
        value(&merged, "hits_total", &[("path", "/child")]),
        Some(8.0)
    );
}

#[test]
fn parent_keeps_writing_its_own_files_after_fork() {
    let dir = tempfile::tempdir().unwrap();
    let h = handles(dir.path());
    h.requests.inc_by(5.0).unwrap();
    h.hits_a.inc();
    let parent = getpid();
    // Slot 0: the child is running; slot 1: the parent is done, the child may finish.
    let shared = Shared::new(2);

    let mut child = fork_child(|| {
        shared.at(0).store(1, Ordering::SeqCst);
        // Count while the parent counts too.
        for _ in 0..2000 {
            h.requests.inc();
            h.hits_a.inc();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.at(1).load(Ordering::SeqCst) == 0 {
            ensure!(Instant::now() < deadline, "parent never finished");
            thread::sleep(Duration::from_millis(1));
        }
        ensure!(h.requests.get() == 2000.0, "requests {}", h.requests.get());
        Ok(())
    });
    while shared.at(0).load(Ordering::SeqCst) == 0 {
        thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..3000 {
        h.requests.inc();
        h.hits_a.inc();
    }
    // New series and families in the parent after the fork still go to the parent's files.
    h.hits.with_label_values(&["/after"]).inc_by(9.0).unwrap();
    let late = h.registry.counter("late_total", "Late.").unwrap();
    late.inc();
    shared.at(1).store(1, Ordering::SeqCst);
    let child_pid = child.pid();
    child.wait(CHILD_TIMEOUT).unwrap();

    assert_eq!(h.registry.pid(), parent);
    assert_eq!(h.requests.get(), 3005.0);
    assert_eq!(h.hits_a.get(), 3001.0);
    let p = merge_of(dir.path(), parent);
    assert_eq!(value(&p, "requests_total", &[]), Some(3005.0));
    assert_eq!(value(&p, "hits_total", &[("path", "/a")]), Some(3001.0));
    assert_eq!(value(&p, "hits_total", &[("path", "/after")]), Some(9.0));
    assert_eq!(value(&p, "late_total", &[]), Some(1.0));
    let c = merge_of(dir.path(), child_pid);
    assert_eq!(value(&c, "requests_total", &[]), Some(2000.0));
    assert_eq!(value(&c, "hits_total", &[("path", "/after")]), None);
    assert_eq!(value(&c, "late_total", &[]), None);
    let merged = scrape(dir.path());
    assert_eq!(value(&merged, "requests_total", &[]), Some(5005.0));
    assert_eq!(
        value(&merged, "hits_total", &[("path", "/a")]),
        Some(5001.0)
    );
}

/// Forks `forks` children, one after the other, while another thread of the parent runs
/// `hammer` in a loop; each child runs `in_child(i)` and must finish within a few seconds.
fn fork_while_hammering(
    forks: usize,
    hammer: impl Fn(u64) + Send + Sync,
    in_child: impl Fn(usize) -> Result<(), String>,
) -> Vec<u32> {
    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                hammer(i);
                i += 1;
                rounds.store(i, Ordering::Relaxed);
            }
        });
        // Let the hammer get going.
        while rounds.load(Ordering::Relaxed) < 100 {
            thread::yield_now();
        }
        let mut pids = Vec::new();
        let mut failure = None;
        for i in 0..forks {
            let mut child = fork_child(|| in_child(i));
            pids.push(child.pid());
            if let Err(e) = child.wait(Duration::from_secs(5)) {
                failure = Some(format!("fork {i}: {e}"));
                break;
            }
            thread::sleep(Duration::from_millis(3));
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(e) = failure {
            panic!("{e}");
        }
        pids
    })
}

#[test]
fn fork_while_another_thread_creates_labelled_children_does_not_deadlock_child() {
    let dir = tempfile::tempdir().unwrap();
    let h = handles(dir.path());
    let routes = Arc::new(
        h.registry
            .counter_vec("routes_total", "Routes.", &["route"])
            .unwrap(),
    );
    let hammered = routes.with_label_values(&["hot"]);
    let pids = fork_while_hammering(
        40,
        |i| {
            // New labelled children (the family's write lock, the file's append lock), children
            // forgotten and created again (the write lock), and plain updates. At most 4000
            // series, so that a child recreating every known series stays quick.
            routes.with_label_values(&[&format!("r{}", i % 4000)]).inc();
            if i % 3 == 0 {
                let _ = routes.remove_label_values(&[&format!("r{}", (i / 3) % 4000)]);
            }
            hammered.inc();
            h.requests.inc();
            h.latency.observe(1.0);
            h.hits.with_label_values(&[&format!("h{}", i % 64)]).inc();
        },
        |i| {
            hammered.inc();
            h.requests.inc();
            h.latency.observe(0.5);
            h.inflight.inc();
            routes.with_label_values(&["hot"]).inc();
            routes.with_label_values(&[&format!("child-{i}")]).inc();
            h.hits.with_label_values(&["h1"]).inc();
            ensure!(hammered.get() == 2.0, "hot {}", hammered.get());
            ensure!(h.registry.pid() == getpid(), "pid {}", h.registry.pid());
            Ok(())
        },
    );
    for (i, pid) in pids.into_iter().enumerate() {
        let c = merge_of(dir.path(), pid);
        assert_eq!(value(&c, "routes_total", &[("route", "hot")]), Some(2.0));
        assert_eq!(
            value(&c, "routes_total", &[("route", &format!("child-{i}"))]),
            Some(1.0)
        );
        assert_eq!(value(&c, "requests_total", &[]), Some(1.0));
        assert_eq!(value(&c, "hits_total", &[("path", "h1")]), Some(1.0));
        assert_eq!(value(&c, "latency_seconds_count", &[]), Some(1.0));
        assert_eq!(value(&c, "inflight", &[]), Some(1.0));
        // None of the parent's values leaked into the child's file: series it did not touch
        // are absent or 0.
        for sample in c.iter().flat_map(|f| &f.samples) {
            let touched = sample
                .labels
                .iter()
                .any(|(_, v)| v == "hot" || v == "h1" || *v == format!("child-{i}"));
            let unlabelled = ["requests_total", "inflight"].contains(&sample.name.as_str());
            assert!(
                touched || unlabelled || sample.name.starts_with("latency") || sample.value == 0.0,
                "child {i}: {sample:?}"
            );
        }
    }
    scrape(dir.path());
}

#[test]
fn fork_while_another_thread_registers_families_does_not_deadlock_child() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(dir.path()).unwrap();
    let pids = fork_while_hammering(
        40,
        |i| {
            // Registering takes the registry's lock; at most 2000 families.
            registry
                .counter(&format!("family_{}_total", i % 2000), "A family.")
                .unwrap()
                .inc();
        },
        |i| {
            let c = registry
                .counter(&format!("in_child_{i}_total"), "Registered in the child.")
                .map_err(|e| e.to_string())?;
            c.inc();
            Ok(())
        },
    );
    for (i, pid) in pids.into_iter().enumerate() {
        let c = merge_of(dir.path(), pid);
        assert_eq!(
            value(&c, &format!("in_child_{i}_total"), &[]),
            Some(1.0),
            "child {i}"
        );
    }
    scrape(dir.path());
}

#[test]
fn merged_totals_after_children_increment_inherited_handles_are_exact() {
    const CHILDREN: usize = 6;
    const K: usize = 1800; // a multiple of 6
    let dir = tempfile::tempdir().unwrap();
    let h = handles(dir.path());
    let summary = h.registry.summary("work_seconds", "Work.").unwrap();
    let level = h
        .registry
        .gauge("level", "Summed level.", GaugeMode::Sum)
        .unwrap();
    h.requests.inc_by(3.0).unwrap();
    h.hits_a.inc();
    h.latency.observe(7.0);
    summary.observe(2.0);
    level.set(1.0);

    // All children run at once.
    let mut children: Vec<Forked> = (0..CHILDREN)
        .map(|c| {
            let h = &h;
            let summary = &summary;
            let level = &level;
            fork_child(move || {
                for i in 0..K {
                    h.requests.inc();
                    h.hits_a.inc_by(2.0).map_err(|e| e.to_string())?;
                    h.hits.with_label_values(&["/shared"]).inc();
                    h.latency.observe((i % 6) as f64);
                    summary.observe(1.0);
                    level.inc();
                }
                h.hits.with_label_values(&[&format!("/c{c}")]).inc();
                ensure!(
                    h.requests.get() == K as f64,
                    "requests {}",
                    h.requests.get()
                );
                Ok(())
            })
        })
        .collect();
    for child in &mut children {
        child.wait(CHILD_TIMEOUT).unwrap();
    }

    let n = (CHILDREN * K) as f64;
    let merged = scrape(dir.path());
    assert_eq!(value(&merged, "requests_total", &[]), Some(3.0 + n));
    assert_eq!(
        value(&merged, "hits_total", &[("path", "/a")]),
        Some(1.0 + 2.0 * n)
    );
    assert_eq!(
        value(&merged, "hits_total", &[("path", "/shared")]),
        Some(n)
    );
    for c in 0..CHILDREN {
        assert_eq!(
            value(&merged, "hits_total", &[("path", &format!("/c{c}"))]),
            Some(1.0)
        );
    }
    // Observations 0..=5 cycle: per child, K/6 of each; the parent observed 7.
    let per_value = (CHILDREN * K / 6) as f64;
    let le = |bound: &str| value(&merged, "latency_seconds_bucket", &[("le", bound)]);
    assert_eq!(le("1.0"), Some(2.0 * per_value));
    assert_eq!(le("2.0"), Some(3.0 * per_value));
    assert_eq!(le("5.0"), Some(6.0 * per_value));
    assert_eq!(le("+Inf"), Some(6.0 * per_value + 1.0));
    assert_eq!(value(&merged, "latency_seconds_count", &[]), Some(n + 1.0));
    assert_eq!(
        value(&merged, "latency_seconds_sum", &[]),
        Some(15.0 * per_value + 7.0)
    );
    assert_eq!(value(&merged, "work_seconds_count", &[]), Some(n + 1.0));
    assert_eq!(value(&merged, "work_seconds_sum", &[]), Some(n + 2.0));
    assert_eq!(value(&merged, "level", &[]), Some(n + 1.0));
}
