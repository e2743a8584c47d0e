//! The file and merge scenarios of client_python's `tests/test_multiprocess.py`, ported: each test
//! lays out the files Python's writer leaves for that scenario (processes 123 and 456, as with
//! `MultiProcessValue(lambda: 123)`), collects the directory and expects what Python's
//! `MultiProcessCollector` gives. Python creates an entry with value 0 as soon as a metric (or a
//! labelled child) is created, so "before" states are files holding zeros.

mod support;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_multiproc::collector::{merge_files, Collector, Sample};
use prometheus_multiproc::format::filename::{GaugeMode, MetricType};
use prometheus_multiproc::format::layout;
use support::{
    append_to, assert_no_bad_files, count_samples, family, file_bytes, histogram, summary, value,
    value_in, DirBuilder, Entry, DEFAULT_BUCKETS,
};

fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    labels.sort();
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

fn gauge_file(mode: &str, pid: u32) -> String {
    format!("gauge_{mode}_{pid}.db")
}

// ------------------------------------------------------------------ TestMultiProcess

#[test]
fn counter_values_of_two_processes_are_summed() {
    let dir = DirBuilder::new();
    // Counter('c', 'help') created in processes 123 and 456: entries at 0.
    dir.file("counter_123.db", &[("c", "c_total", &[], "help", 0.0, 0.0)]);
    dir.file("counter_456.db", &[("c", "c_total", &[], "help", 0.0, 0.0)]);
    let before = dir.collect();
    assert_no_bad_files(&before);
    assert_eq!(value(&before, "c_total", &[]), Some(0.0));

    // c1.inc(1); c2.inc(2)
    dir.file("counter_123.db", &[("c", "c_total", &[], "help", 1.0, 0.0)]);
    dir.file("counter_456.db", &[("c", "c_total", &[], "help", 2.0, 0.0)]);
    let after = dir.collect();
    assert_no_bad_files(&after);
    assert_eq!(value(&after, "c_total", &[]), Some(3.0));
    assert_eq!(after.files_read, 2);
    let c = family(&after, "c").expect("family c");
    assert_eq!(c.kind, MetricType::Counter);
    assert_eq!(c.help, "help");
    assert_eq!(c.samples, vec![sample("c_total", &[], 3.0)]);
}

#[test]
fn summary_count_and_sum_of_two_processes_are_summed() {
    let dir = DirBuilder::new();
    dir.entries("summary_123.db", &summary("s", "help", &[], &[]));
    dir.entries("summary_456.db", &summary("s", "help", &[], &[]));
    let before = dir.collect();
    assert_no_bad_files(&before);
    assert_eq!(value(&before, "s_count", &[]), Some(0.0));
    assert_eq!(value(&before, "s_sum", &[]), Some(0.0));

    dir.entries("summary_123.db", &summary("s", "help", &[], &[1.0]));
    dir.entries("summary_456.db", &summary("s", "help", &[], &[2.0]));
    let after = dir.collect();
    assert_no_bad_files(&after);
    assert_eq!(value(&after, "s_count", &[]), Some(2.0));
    assert_eq!(value(&after, "s_sum", &[]), Some(3.0));
    assert_eq!(family(&after, "s").unwrap().kind, MetricType::Summary);
}

#[test]
fn histogram_buckets_of_two_processes_are_summed_and_accumulated() {
    let dir = DirBuilder::new();
    dir.entries(
        "histogram_123.db",
        &histogram("h", "help", &[], &DEFAULT_BUCKETS, &[]),
    );
    dir.entries(
        "histogram_456.db",
        &histogram("h", "help", &[], &DEFAULT_BUCKETS, &[]),
    );
    let before = dir.collect();
    assert_no_bad_files(&before);
    assert_eq!(value(&before, "h_count", &[]), Some(0.0));
    assert_eq!(value(&before, "h_sum", &[]), Some(0.0));
    assert_eq!(value(&before, "h_bucket", &[("le", "5.0")]), Some(0.0));

    dir.entries(
        "histogram_123.db",
        &histogram("h", "help", &[], &DEFAULT_BUCKETS, &[1.0]),
    );
    dir.entries(
        "histogram_456.db",
        &histogram("h", "help", &[], &DEFAULT_BUCKETS, &[2.0]),
    );
    let after = dir.collect();
    assert_no_bad_files(&after);
    assert_eq!(value(&after, "h_count", &[]), Some(2.0));
    assert_eq!(value(&after, "h_sum", &[]), Some(3.0));
    assert_eq!(value(&after, "h_bucket", &[("le", "5.0")]), Some(2.0));
    assert_eq!(value(&after, "h_bucket", &[("le", "0.75")]), Some(0.0));
    assert_eq!(value(&after, "h_bucket", &[("le", "1.0")]), Some(1.0));
    assert_eq!(value(&after, "h_bucket", &[("le", "2.5")]), Some(2.0));
    assert_eq!(value(&after, "h_bucket", &[("le", "+Inf")]), Some(2.0));
    assert_eq!(count_samples(&after, "h_bucket"), DEFAULT_BUCKETS.len());
}

#[test]
fn gauge_all_keeps_pid_labels_and_survives_mark_process_dead() {
    let dir = DirBuilder::new();
    dir.file(
        &gauge_file("all", 123),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    dir.file(
        &gauge_file("all", 456),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    let before = dir.collect();
    assert_eq!(value(&before, "g", &[("pid", "123")]), Some(0.0));
    assert_eq!(value(&before, "g", &[("pid", "456")]), Some(0.0));

    dir.file(
        &gauge_file("all", 123),
        &[("g", "g", &[], "help", 1.0, 0.0)],
    );
    dir.file(
        &gauge_file("all", 456),
        &[("g", "g", &[], "help", 2.0, 0.0)],
    );
    dir.mark_process_dead(123);
    assert!(dir.join(&gauge_file("all", 123)).exists());
    let after = dir.collect();
    assert_no_bad_files(&after);
    assert_eq!(value(&after, "g", &[("pid", "123")]), Some(1.0));
    assert_eq!(value(&after, "g", &[("pid", "456")]), Some(2.0));
    assert_eq!(value(&after, "g", &[]), None);
}

#[test]
fn gauge_liveall_drops_a_dead_process() {
    let dir = DirBuilder::new();
    dir.file(
        &gauge_file("liveall", 123),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    dir.file(
        &gauge_file("liveall", 456),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    let before = dir.collect();
    assert_eq!(value(&before, "g", &[("pid", "123")]), Some(0.0));
    assert_eq!(value(&before, "g", &[("pid", "456")]), Some(0.0));

    dir.file(
        &gauge_file("liveall", 123),
        &[("g", "g", &[], "help", 1.0, 0.0)],
    );
    dir.file(
        &gauge_file("liveall", 456),
        &[("g", "g", &[], "help", 2.0, 0.0)],
    );
    let live = dir.collect();
    assert_eq!(value(&live, "g", &[("pid", "123")]), Some(1.0));
    assert_eq!(value(&live, "g", &[("pid", "456")]), Some(2.0));

    dir.mark_process_dead(123);
    assert!(!dir.join(&gauge_file("liveall", 123)).exists());
    let after = dir.collect();
    assert_no_bad_files(&after);
    assert_eq!(value(&after, "g", &[("pid", "123")]), None);
    assert_eq!(value(&after, "g", &[("pid", "456")]), Some(2.0));
}

#[test]
fn gauge_min_takes_the_smallest_value() {
    let dir = DirBuilder::new();
    dir.file(
        &gauge_file("min", 123),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    dir.file(
        &gauge_file("min", 456),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    assert_eq!(value(&dir.collect(), "g", &[]), Some(0.0));
    dir.file(
        &gauge_file("min", 123),
        &[("g", "g", &[], "help", 1.0, 0.0)],
    );
    dir.file(
        &gauge_file("min", 456),
        &[("g", "g", &[], "help", 2.0, 0.0)],
    );
    let after = dir.collect();
    assert_eq!(value(&after, "g", &[]), Some(1.0));
    assert_eq!(count_samples(&after, "g"), 1);
}

#[test]
fn gauge_max_takes_the_largest_value() {
    let dir = DirBuilder::new();
    dir.file(
        &gauge_file("max", 123),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    dir.file(
        &gauge_file("max", 456),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    assert_eq!(value(&dir.collect(), "g", &[]), Some(0.0));
    dir.file(
        &gauge_file("max", 123),
        &[("g", "g", &[], "help", 1.0, 0.0)],
    );
    dir.file(
        &gauge_file("max", 456),
        &[("g", "g", &[], "help", 2.0, 0.0)],
    );
    let after = dir.collect();
    assert_eq!(value(&after, "g", &[]), Some(2.0));
    assert_eq!(count_samples(&after, "g"), 1);
}

#[test]
fn gauge_livesum_sums_live_processes_only() {
    let dir = DirBuilder::new();
    dir.file(
        &gauge_file("livesum", 123),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    dir.file(
        &gauge_file("livesum", 456),
        &[("g", "g", &[], "help", 0.0, 0.0)],
    );
    assert_eq!(value(&dir.collect(), "g", &[]), Some(0.0));
    dir.file(
        &gauge_file("livesum", 123),
        &[("g", "g", &[], "help", 1.0, 0.0)],
    );
    dir.file(
        &gauge_file("livesum", 456),
        &[("g", "g", &[], "help", 2.0, 0.0)],
    );
    assert_eq!(value(&dir.collect(), "g", &[]), Some(3.0));
    dir.mark_process_dead(123);
    let after = dir.collect();
    assert_no_bad_files(&after);
    assert_eq!(value(&after, "g", &[]), Some(2.0));
}

#[test]
fn gauge_mostrecent_takes_the_latest_set_and_survives_mark_process_dead() {
    // g2.set(2) then g1.set(1): process 123 set last.
    let dir = DirBuilder::new();
    dir.file(
        &gauge_file("mostrecent", 123),
        &[("g", "g", &[], "help", 1.0, 1000.5)],
    );
    dir.file(
        &gauge_file("mostrecent", 456),
        &[("g", "g", &[], "help", 2.0, 1000.25)],
    );
    assert_eq!(value(&dir.collect(), "g", &[]), Some(1.0));
    dir.mark_process_dead(123);
    assert_eq!(value(&dir.collect(), "g", &[]), Some(1.0));
}

#[test]
fn gauge_livemostrecent_falls_back_to_the_latest_live_value() {
    let dir = DirBuilder::new();
    let g = |v, ts| [("g", "g", &[][..], "help", v, ts)];
    dir.file(&gauge_file("livemostrecent", 123), &g(1.0, 1000.5));
    dir.file(&gauge_file("livemostrecent", 456), &g(2.0, 1000.25));
    assert_eq!(value(&dir.collect(), "g", &[]), Some(1.0));
    dir.mark_process_dead(123);
    assert_eq!(value(&dir.collect(), "g", &[]), Some(2.0));
}

/// Every gauge mode, over three processes, with none, 123 or 456 dead.
/// 123: value 1 set last; 456: value 5, the largest, set first; 789: value 3.
#[test]
fn every_gauge_mode_merges_as_python_does() {
    let procs = [(123u32, 1.0, 300.0), (456, 5.0, 100.0), (789, 3.0, 200.0)];
    for mode in GaugeMode::ALL {
        for dead in [None, Some(123u32), Some(456)] {
            let dir = DirBuilder::new();
            for (pid, v, ts) in procs {
                // Only mostrecent gauges carry a timestamp; the others are written with 0.
                let ts = if mode.is_most_recent() { ts } else { 0.0 };
                dir.file(
                    &gauge_file(mode.as_str(), pid),
                    &[("g", "g", &[("k", "v")], "help", v, ts)],
                );
            }
            if let Some(pid) = dead {
                dir.mark_process_dead(pid);
            }
            let scrape = dir.collect();
            assert_no_bad_files(&scrape);
            let alive: Vec<(u32, f64, f64)> = procs
                .iter()
                .copied()
                .filter(|(pid, ..)| !(mode.is_live() && Some(*pid) == dead))
                .collect();
            let ctx = format!("mode {mode}, dead {dead:?}");
            let fam = family(&scrape, "g").unwrap_or_else(|| panic!("no family g: {ctx}"));
            assert_eq!(fam.kind, MetricType::Gauge, "{ctx}");
            if mode.keeps_pid() {
                let expected: Vec<Sample> = alive
                    .iter()
                    .map(|(pid, v, _)| sample("g", &[("k", "v"), ("pid", &pid.to_string())], *v))
                    .collect();
                assert_eq!(fam.samples, expected, "{ctx}");
                continue;
            }
            let values = alive.iter().map(|(_, v, _)| *v);
            let expected = match mode {
                GaugeMode::Min | GaugeMode::LiveMin => values.fold(f64::INFINITY, f64::min),
                GaugeMode::Max | GaugeMode::LiveMax => values.fold(f64::NEG_INFINITY, f64::max),
                GaugeMode::Sum | GaugeMode::LiveSum => values.sum(),
                GaugeMode::MostRecent | GaugeMode::LiveMostRecent => {
                    alive.iter().max_by(|a, b| a.2.total_cmp(&b.2)).unwrap().1
                }
                GaugeMode::All | GaugeMode::LiveAll => unreachable!(),
            };
            assert_eq!(
                fam.samples,
                vec![sample("g", &[("k", "v")], expected)],
                "{ctx}"
            );
        }
    }
}

#[test]
fn live_gauge_values_are_fixed_per_mode_after_deaths() {
    // The same table, spelled out, so a wrong fold above cannot hide a wrong merge.
    let expect = [
        // mode, none dead, 123 dead, 456 dead
        ("min", 1.0, 1.0, 1.0),
        ("livemin", 1.0, 3.0, 1.0),
        ("max", 5.0, 5.0, 5.0),
        ("livemax", 5.0, 5.0, 3.0),
        ("sum", 9.0, 9.0, 9.0),
        ("livesum", 9.0, 8.0, 4.0),
        ("mostrecent", 1.0, 1.0, 1.0),
        ("livemostrecent", 1.0, 3.0, 1.0),
    ];
    for (mode, none, d123, d456) in expect {
        for (dead, want) in [(None, none), (Some(123), d123), (Some(456), d456)] {
            let dir = DirBuilder::new();
            for (pid, v, ts) in [(123, 1.0, 300.0), (456, 5.0, 100.0), (789, 3.0, 200.0)] {
                dir.file(&gauge_file(mode, pid), &[("g", "g", &[], "help", v, ts)]);
            }
            if let Some(pid) = dead {
                dir.mark_process_dead(pid);
            }
            assert_eq!(
                value(&dir.collect(), "g", &[]),
                Some(want),
                "mode {mode}, dead {dead:?}"
            );
        }
    }
}

#[test]
fn mostrecent_gauge_never_set_has_no_sample() {
    for mode in ["mostrecent", "livemostrecent"] {
        let dir = DirBuilder::new();
        // Created in both processes, never set: value 0, timestamp 0.
        dir.file(&gauge_file(mode, 123), &[("g", "g", &[], "help", 0.0, 0.0)]);
        dir.file(&gauge_file(mode, 456), &[("g", "g", &[], "help", 0.0, 0.0)]);
        let scrape = dir.collect();
        assert_no_bad_files(&scrape);
        assert_eq!(value(&scrape, "g", &[]), None, "{mode}");
        assert_eq!(count_samples(&scrape, "g"), 0, "{mode}");
        // Python still has the (empty) metric.
        assert_eq!(
            family(&scrape, "g").map(|f| f.samples.len()),
            Some(0),
            "{mode}"
        );

        // Set in one process only: that value, whatever the other holds.
        dir.file(
            &gauge_file(mode, 456),
            &[("g", "g", &[], "help", -7.0, 5.0)],
        );
        assert_eq!(value(&dir.collect(), "g", &[]), Some(-7.0), "{mode}");
    }
}

#[test]
fn namespace_and_subsystem_prefix_the_counter_name() {
    let dir = DirBuilder::new();
    dir.file(
        "counter_123.db",
        &[("ns_ss_c", "ns_ss_c_total", &[], "help", 1.0, 0.0)],
    );
    let scrape = dir.collect();
    assert_eq!(value(&scrape, "ns_ss_c_total", &[]), Some(1.0));
    assert!(family(&scrape, "ns_ss_c").is_some());
}

#[test]
fn counter_keeps_counting_across_forks() {
    // test_counter_across_forks: pid 0 incs twice, then the process identity becomes 1 and
    // incs once in a new file; the old file stays.
    let dir = DirBuilder::new();
    dir.file("counter_0.db", &[("c", "c_total", &[], "help", 2.0, 0.0)]);
    dir.file("counter_1.db", &[("c", "c_total", &[], "help", 1.0, 0.0)]);
    assert_eq!(value(&dir.collect(), "c_total", &[]), Some(3.0));
}

#[test]
fn metrics_created_in_several_files_of_one_type_are_all_read() {
    // test_initialization_detects_pid_change: c1 and c2 in counter_0.db, c3 in counter_1.db.
    let dir = DirBuilder::new();
    dir.file(
        "counter_0.db",
        &[
            ("c1", "c1_total", &[], "c1", 0.0, 0.0),
            ("c2", "c2_total", &[], "c2", 0.0, 0.0),
        ],
    );
    dir.file("counter_1.db", &[("c3", "c3_total", &[], "c3", 0.0, 0.0)]);
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_eq!(scrape.files_read, 2);
    for name in ["c1", "c2", "c3"] {
        assert_eq!(value(&scrape, &format!("{name}_total"), &[]), Some(0.0));
        assert_eq!(family(&scrape, name).unwrap().help, name);
    }
}

#[test]
fn collect_merges_labelled_counter_gauge_and_histogram_exactly() {
    let labels = [("a", "a"), ("b", "b"), ("c", "c"), ("d", "d")];
    let with = |k: &'static str, v: &'static str| {
        let mut l = labels.to_vec();
        l.push((k, v));
        l
    };
    let dir = DirBuilder::new();
    for (pid, observed) in [(0u32, 1.0), (1, 5.0)] {
        dir.file(
            &format!("counter_{pid}.db"),
            &[("c", "c_total", &labels, "help", 1.0, 0.0)],
        );
        dir.file(
            &format!("gauge_all_{pid}.db"),
            &[("g", "g", &labels, "help", 1.0, 0.0)],
        );
        dir.entries(
            &format!("histogram_{pid}.db"),
            &histogram("h", "help", &labels, &DEFAULT_BUCKETS, &[observed]),
        );
    }
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_eq!(scrape.files_read, 6);

    assert_eq!(
        family(&scrape, "c").unwrap().samples,
        vec![sample("c_total", &labels, 2.0)]
    );
    assert_eq!(
        family(&scrape, "g").unwrap().samples,
        vec![
            sample("g", &with("pid", "0"), 1.0),
            sample("g", &with("pid", "1"), 1.0),
        ]
    );
    let buckets = [
        ("0.005", 0.0),
        ("0.01", 0.0),
        ("0.025", 0.0),
        ("0.05", 0.0),
        ("0.075", 0.0),
        ("0.1", 0.0),
        ("0.25", 0.0),
        ("0.5", 0.0),
        ("0.75", 0.0),
        ("1.0", 1.0),
        ("2.5", 1.0),
        ("5.0", 2.0),
        ("7.5", 2.0),
        ("10.0", 2.0),
        ("+Inf", 2.0),
    ];
    let mut expected: Vec<Sample> = buckets
        .iter()
        .map(|(le, v)| sample("h_bucket", &with("le", le), *v))
        .collect();
    expected.push(sample("h_count", &labels, 2.0));
    expected.push(sample("h_sum", &labels, 6.0));
    let h = family(&scrape, "h").unwrap();
    assert_eq!(h.kind, MetricType::Histogram);
    assert_eq!(h.samples, expected);
}

#[test]
fn live_gauge_files_removed_before_the_merge_are_skipped_silently() {
    // test_missing_gauge_file_during_merge: files of a process that mark_process_dead removed.
    let dir = DirBuilder::new();
    dir.file(
        &gauge_file("liveall", 9999999),
        &[("g", "g", &[], "h", 1.0, 0.0)],
    );
    dir.file(
        &gauge_file("livesum", 9999999),
        &[("s", "s", &[], "h", 1.0, 0.0)],
    );
    dir.mark_process_dead(9999999);
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_eq!(scrape.files_read, 0);
    assert!(family(&scrape, "g").is_none());
    assert!(family(&scrape, "s").is_none());
}

#[test]
fn live_gauge_files_vanishing_during_collect_are_never_reported() {
    // A process dies and its live gauge files are removed while scrapes run: whether a scrape
    // lists a file before or after its removal, it never reports it as bad.
    let dir = Arc::new(DirBuilder::new());
    dir.file("counter_1.db", &[("c", "c_total", &[], "help", 7.0, 0.0)]);
    let live = file_bytes(&[Entry::new::<&str, &str>("g", "g", &[], "h", 1.0, 0.0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (dir, stop) = (Arc::clone(&dir), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for mode in ["liveall", "livesum", "livemax", "livemostrecent"] {
                    // Written whole under another name, then renamed in, as a file is never
                    // seen half-written here.
                    let tmp = dir.join(&format!("{mode}.tmp"));
                    fs::write(&tmp, &live).unwrap();
                    fs::rename(&tmp, dir.join(&gauge_file(mode, 4242))).unwrap();
                }
                dir.mark_process_dead(4242);
                rounds += 1;
            }
            rounds
        })
    };
    let mut saw_gauge = 0;
    for _ in 0..300 {
        let scrape = dir.collect();
        assert_no_bad_files(&scrape);
        assert_eq!(value(&scrape, "c_total", &[]), Some(7.0));
        saw_gauge += usize::from(family(&scrape, "g").is_some());
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    eprintln!("{rounds} deaths, live gauge seen in {saw_gauge} of 300 scrapes");
    assert!(rounds > 0);
}

// ------------------------------------------------------------------ TestMmapedDict

#[test]
fn values_survive_a_writer_restart_that_appends_to_the_file() {
    // test_process_restart: a file closed and reopened by a new writer keeps its entries, and
    // entries the new writer adds come after them.
    let dir = DirBuilder::new();
    let abc = Entry::new::<&str, &str>("abc", "abc_total", &[], "h", 123.0, 0.0);
    let mut bytes = file_bytes(std::slice::from_ref(&abc));
    dir.bytes("counter_1.db", &bytes);
    let first = dir.collect();
    assert_eq!(value(&first, "abc_total", &[]), Some(123.0));

    append_to(
        &mut bytes,
        &Entry::new::<&str, &str>("def", "def_total", &[], "h", 17.0, 0.0),
    );
    dir.bytes("counter_1.db", &bytes);
    let second = dir.collect();
    assert_no_bad_files(&second);
    assert_eq!(value(&second, "abc_total", &[]), Some(123.0));
    assert_eq!(value(&second, "def_total", &[]), Some(17.0));
    // Reading does not change anything: a third scrape is the same.
    assert_eq!(dir.collect(), second);
}

/// A counter entry whose key is exactly `len` bytes long, and the label value that pads it out.
fn key_of_len(metric: &str, len: usize) -> (Entry, String) {
    let sample = format!("{metric}_total");
    let base = Entry::new(metric, &sample, &[("l", "")], "h", 0.0, 0.0);
    let pad = "a".repeat(len - base.key.len());
    let e = Entry::new(metric, &sample, &[("l", pad.as_str())], "h", 123.0, 0.0);
    assert_eq!(e.key.len(), len);
    (e, pad)
}

#[test]
fn entry_larger_than_the_initial_file_size_is_read() {
    // test_expansion: a 64 KiB key makes the writer double the file to 128 KiB.
    let (big, pad) = key_of_len("big", layout::INITIAL_FILE_SIZE);
    let bytes = file_bytes(std::slice::from_ref(&big));
    assert_eq!(bytes.len(), 2 * layout::INITIAL_FILE_SIZE);
    let dir = DirBuilder::new();
    dir.bytes("counter_1.db", &bytes);
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_eq!(value(&scrape, "big_total", &[("l", &pad)]), Some(123.0));
}

#[test]
fn entries_around_a_multi_expansion_keep_their_values() {
    // test_multi_expansion: a small entry, a 256 KiB one, another small one.
    let abc = Entry::new::<&str, &str>("abc", "abc_total", &[], "h", 42.0, 0.0);
    let (big, pad) = key_of_len("big", 4 * layout::INITIAL_FILE_SIZE);
    let def = Entry::new::<&str, &str>("def", "def_total", &[], "h", 17.0, 0.0);
    let mut bytes = file_bytes(std::slice::from_ref(&abc));
    append_to(&mut bytes, &big);
    append_to(&mut bytes, &def);
    assert_eq!(bytes.len(), 8 * layout::INITIAL_FILE_SIZE);
    assert_eq!(bytes, file_bytes(&[abc.clone(), big.clone(), def.clone()]));

    let keys: Vec<&[u8]> = layout::entries(&bytes)
        .unwrap()
        .map(|e| e.unwrap().key)
        .collect();
    assert_eq!(
        keys,
        vec![abc.key.as_bytes(), big.key.as_bytes(), def.key.as_bytes()]
    );

    let dir = DirBuilder::new();
    dir.bytes("counter_1.db", &bytes);
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_eq!(value(&scrape, "abc_total", &[]), Some(42.0));
    assert_eq!(value(&scrape, "def_total", &[]), Some(17.0));
    assert_eq!(value(&scrape, "big_total", &[("l", &pad)]), Some(123.0));
}

#[test]
fn corrupted_file_is_reported_and_the_others_still_served() {
    // test_corruption_detected: bytes 8..16 overwritten with `somejunk`.
    let dir = DirBuilder::new();
    let mut bytes = file_bytes(&[Entry::new::<&str, &str>(
        "abc",
        "abc_total",
        &[],
        "h",
        42.0,
        0.0,
    )]);
    bytes[8..16].copy_from_slice(b"somejunk");
    dir.bytes("counter_123.db", &bytes);
    dir.file("counter_456.db", &[("ok", "ok_total", &[], "h", 5.0, 0.0)]);
    dir.file(&gauge_file("all", 456), &[("g", "g", &[], "h", 6.0, 0.0)]);

    let scrape = dir.collect();
    assert_eq!(scrape.bad_files.len(), 1, "{:?}", scrape.bad_files);
    let bad = &scrape.bad_files[0];
    assert_eq!(bad.path, dir.join("counter_123.db"));
    assert!(
        matches!(bad.reason.as_str(), "corrupt" | "truncated"),
        "{bad:?}"
    );
    assert_eq!(bad.offset, Some(8));
    assert!(bad.to_string().contains("counter_123.db"), "{bad}");
    assert_eq!(value(&scrape, "ok_total", &[]), Some(5.0));
    assert_eq!(value(&scrape, "g", &[("pid", "456")]), Some(6.0));
    assert_eq!(value(&scrape, "abc_total", &[]), None);
    assert_eq!(scrape.files_read, 2);
    support::assert_gauge_matches_bad_files(&scrape);
}

// ------------------------------------------------------------------ TestUnsetEnv

#[test]
fn missing_directory_is_an_error_naming_it() {
    let parent = DirBuilder::new();
    let missing = parent.join("does-not-exist");
    let err = Collector::new(&missing).collect().unwrap_err();
    assert_eq!(err.dir, missing);
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

#[test]
fn regular_file_as_directory_is_an_error_naming_it() {
    let parent = DirBuilder::new();
    parent.file("counter_1.db", &[("c", "c_total", &[], "h", 1.0, 0.0)]);
    let file = parent.join("counter_1.db");
    let err = Collector::new(&file).collect().unwrap_err();
    assert_eq!(err.dir, file);
    assert!(err.to_string().contains("counter_1.db"), "{err}");
}

#[test]
fn unset_environment_is_an_error() {
    use prometheus_multiproc::collector::{DIR_ENV, LEGACY_DIR_ENV};
    // Only checked where the test runs without the variables (they are not changed here, as
    // other tests run concurrently).
    if std::env::var_os(DIR_ENV).is_none() && std::env::var_os(LEGACY_DIR_ENV).is_none() {
        let err = Collector::from_env().unwrap_err();
        assert!(err.to_string().contains(DIR_ENV), "{err}");
    } else {
        eprintln!("SKIPPED: {DIR_ENV} is set in this environment");
    }
}

// ------------------------------------------------------------------ beyond Python's tests

#[test]
fn awkward_label_values_and_help_survive_the_merge() {
    let values = [
        "quote \" in",
        "back\\slash",
        "new\nline",
        "tab\tand\rcr",
        "caf\u{e9} \u{4e2d}\u{6587}",
        "astral \u{1f600} \u{1d11e}",
        "",
        "{\"json\": [1, 2]}",
        "\u{0}\u{1f}\u{7f}",
    ];
    let help = "Help with \"quotes\", \\ backslash,\nnewline, \u{fc}nicode \u{1f680}.";
    let dir = DirBuilder::new();
    for (i, pid) in [(0usize, 123u32), (1, 456)] {
        let entries: Vec<Entry> = values
            .iter()
            .map(|v| Entry::new("odd", "odd_total", &[("v", *v)], help, 1.0 + i as f64, 0.0))
            .collect();
        dir.entries(&format!("counter_{pid}.db"), &entries);
        dir.file(
            &gauge_file("all", pid),
            &[("odd_g", "odd_g", &[("v", values[5])], help, 4.0, 0.0)],
        );
    }
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    let fam = family(&scrape, "odd").unwrap();
    assert_eq!(fam.help, help);
    assert_eq!(fam.samples.len(), values.len());
    for v in values {
        assert_eq!(value(&scrape, "odd_total", &[("v", v)]), Some(3.0), "{v:?}");
    }
    assert_eq!(family(&scrape, "odd_g").unwrap().help, help);
    assert_eq!(
        value(&scrape, "odd_g", &[("v", values[5]), ("pid", "456")]),
        Some(4.0)
    );
}

#[test]
fn custom_histogram_buckets_are_named_like_go() {
    let buckets = [0.1, 1.0, 123456.0, 1e6, 2.5e7, f64::INFINITY];
    let dir = DirBuilder::new();
    dir.entries(
        "histogram_123.db",
        &histogram("big", "h", &[("x", "1")], &buckets, &[0.05, 2e6]),
    );
    dir.entries(
        "histogram_456.db",
        &histogram("big", "h", &[("x", "1")], &buckets, &[5e5, 1e9]),
    );
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    let fam = family(&scrape, "big").unwrap();
    let got: Vec<(String, f64)> = fam
        .samples
        .iter()
        .map(|s| {
            let le = s
                .labels
                .iter()
                .find(|(n, _)| n == "le")
                .map(|(_, v)| v.clone());
            (
                format!(
                    "{}{}",
                    s.name,
                    le.map(|l| format!("@{l}")).unwrap_or_default()
                ),
                s.value,
            )
        })
        .collect();
    let want: Vec<(String, f64)> = [
        ("big_bucket@0.1", 1.0),
        ("big_bucket@1.0", 1.0),
        ("big_bucket@123456.0", 1.0),
        ("big_bucket@1e+06", 2.0),
        ("big_bucket@2.5e+07", 3.0),
        ("big_bucket@+Inf", 4.0),
        ("big_count", 4.0),
        ("big_sum", 0.05 + 2e6 + 5e5 + 1e9),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), *v))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn nan_and_infinite_values_are_merged_as_floats() {
    let dir = DirBuilder::new();
    dir.file(
        "counter_123.db",
        &[
            ("inf", "inf_total", &[], "h", f64::INFINITY, 0.0),
            ("nan", "nan_total", &[], "h", 1.0, 0.0),
        ],
    );
    dir.file(
        "counter_456.db",
        &[
            ("inf", "inf_total", &[], "h", 1.0, 0.0),
            ("nan", "nan_total", &[], "h", f64::NAN, 0.0),
        ],
    );
    dir.file(
        &gauge_file("max", 123),
        &[("gmax", "gmax", &[], "h", f64::NEG_INFINITY, 0.0)],
    );
    dir.file(
        &gauge_file("max", 456),
        &[("gmax", "gmax", &[], "h", -1e308, 0.0)],
    );
    dir.file(
        &gauge_file("min", 123),
        &[("gmin", "gmin", &[], "h", f64::NEG_INFINITY, 0.0)],
    );
    dir.file(
        &gauge_file("min", 456),
        &[("gmin", "gmin", &[], "h", 0.0, 0.0)],
    );
    dir.file(
        &gauge_file("all", 123),
        &[("gall", "gall", &[], "h", f64::NAN, 0.0)],
    );
    dir.file(
        &gauge_file("sum", 123),
        &[("gsum", "gsum", &[], "h", f64::INFINITY, 0.0)],
    );
    dir.file(
        &gauge_file("sum", 456),
        &[("gsum", "gsum", &[], "h", f64::NEG_INFINITY, 0.0)],
    );
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_eq!(value(&scrape, "inf_total", &[]), Some(f64::INFINITY));
    assert!(value(&scrape, "nan_total", &[]).unwrap().is_nan());
    assert_eq!(value(&scrape, "gmax", &[]), Some(-1e308));
    assert_eq!(value(&scrape, "gmin", &[]), Some(f64::NEG_INFINITY));
    assert!(value(&scrape, "gall", &[("pid", "123")]).unwrap().is_nan());
    // inf + -inf
    assert!(value(&scrape, "gsum", &[]).unwrap().is_nan());
}

#[test]
fn families_are_sorted_by_name_and_scrapes_are_repeatable() {
    let dir = DirBuilder::new();
    // Written in an order that is neither name order nor file order.
    dir.file(
        "counter_456.db",
        &[
            ("zeta", "zeta_total", &[("b", "2")], "h", 1.0, 0.0),
            ("alpha", "alpha_total", &[("b", "1")], "h", 2.0, 0.0),
            ("zeta", "zeta_total", &[("b", "1")], "h", 3.0, 0.0),
        ],
    );
    dir.file(
        "counter_123.db",
        &[
            ("mid", "mid_total", &[], "h", 1.0, 0.0),
            ("alpha", "alpha_total", &[("a", "1")], "h", 2.0, 0.0),
        ],
    );
    dir.file(
        &gauge_file("all", 789),
        &[("beta", "beta", &[], "h", 1.0, 0.0)],
    );
    dir.file(
        &gauge_file("all", 10),
        &[("beta", "beta", &[], "h", 2.0, 0.0)],
    );
    dir.entries(
        "histogram_5.db",
        &histogram("gamma", "h", &[("z", "1")], &[1.0, f64::INFINITY], &[0.5]),
    );
    dir.entries(
        "histogram_6.db",
        &histogram("gamma", "h", &[("a", "1")], &[1.0, f64::INFINITY], &[3.0]),
    );
    dir.entries("summary_1.db", &summary("delta", "h", &[], &[1.0]));

    let first = dir.collect();
    assert_no_bad_files(&first);
    let names: Vec<&str> = first.families.iter().map(|f| f.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(
        names,
        [
            "alpha",
            "beta",
            "delta",
            "gamma",
            "mid",
            "prometheus_multiproc_bad_files",
            "zeta"
        ]
    );
    for _ in 0..5 {
        assert_eq!(dir.collect(), first);
    }
    // Samples within a family are in label order (label values compare as strings).
    assert_eq!(
        family(&first, "zeta").unwrap().samples,
        vec![
            sample("zeta_total", &[("b", "1")], 3.0),
            sample("zeta_total", &[("b", "2")], 1.0),
        ]
    );
    assert_eq!(
        family(&first, "beta").unwrap().samples,
        vec![
            sample("beta", &[("pid", "10")], 2.0),
            sample("beta", &[("pid", "789")], 1.0),
        ]
    );
    // A histogram's label sets each come with their buckets, `_count`, then `_sum`.
    assert_eq!(
        family(&first, "gamma").unwrap().samples,
        vec![
            sample("gamma_bucket", &[("a", "1"), ("le", "1.0")], 0.0),
            sample("gamma_bucket", &[("a", "1"), ("le", "+Inf")], 1.0),
            sample("gamma_count", &[("a", "1")], 1.0),
            sample("gamma_sum", &[("a", "1")], 3.0),
            sample("gamma_bucket", &[("le", "1.0"), ("z", "1")], 1.0),
            sample("gamma_bucket", &[("le", "+Inf"), ("z", "1")], 1.0),
            sample("gamma_count", &[("z", "1")], 1.0),
            sample("gamma_sum", &[("z", "1")], 0.5),
        ]
    );
}

#[test]
fn merge_files_agrees_with_collecting_the_directory() {
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            "counter_1.db".into(),
            file_bytes(&[Entry::new("c", "c_total", &[("k", "v")], "h", 1.0, 0.0)]),
        ),
        (
            "counter_2.db".into(),
            file_bytes(&[Entry::new("c", "c_total", &[("k", "v")], "h", 2.5, 0.0)]),
        ),
        (
            gauge_file("livemax", 3),
            file_bytes(&[Entry::new::<&str, &str>("g", "g", &[], "h", 9.0, 0.0)]),
        ),
        (
            "histogram_3.db".into(),
            file_bytes(&histogram("h", "h", &[], &DEFAULT_BUCKETS, &[0.3, 7.0])),
        ),
    ];
    let dir = DirBuilder::new();
    for (name, bytes) in &files {
        dir.bytes(name, bytes);
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let (families, bad) = merge_files(&refs);
    assert!(bad.is_empty());
    let scrape = Collector::new(dir.path())
        .self_metrics(false)
        .collect()
        .unwrap();
    assert_eq!(scrape.families, families);
    assert_eq!(value_in(&families, "c_total", &[("k", "v")]), Some(3.5));
    assert_eq!(value_in(&families, "h_count", &[]), Some(2.0));
    // Without self metrics, no bad-files family.
    assert!(family(&scrape, "prometheus_multiproc_bad_files").is_none());
}
