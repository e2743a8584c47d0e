//! Conformance with Python's own `MultiProcessCollector` (prometheus_client 0.26.0).
//!
//! Real Python worker processes (`tests/python/scenario.py`) write a directory; our collector
//! scrapes it, our text exposition of the scrape is parsed by Python's own text parser, and the
//! result must equal, sample by sample (names, labels, values bit for bit or within the last
//! ulp where Python sums in another order), what Python's `MultiProcessCollector` gives for the
//! same directory (`tests/python/collect.py`), with the same help and type per family. Our
//! families are also compared directly, without the text round trip, so that a difference can be
//! told apart from an encoding one. Every scrape is taken twice and must give byte-identical
//! text.
//!
//! Python's merge depends on the order in which it globs the files (which is arbitrary) in a few
//! places, so the scenarios here avoid them: NaN in `min`/`max` gauges set by several processes
//! (Python keeps whichever of NaN and a number it saw first), `-0.0` next to `0.0` there too,
//! mostrecent values with equal timestamps, and sums over three or more processes of values that
//! do not add up exactly (the result may then differ by more than an ulp). Values in the
//! randomized scenarios are dyadic fractions of moderate size, whose sums are exact.
//!
//! The randomized scenarios are generated from a seed printed on stderr; set
//! `CONFORMANCE_SEED` to repeat a run (and `CONFORMANCE_SCENARIOS` to change how many there are).

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{PyFamily, Rng, HELPS};
use prometheus_multiproc::collector::{Collector, MetricFamily};
use prometheus_multiproc::exposition::{encode, Format};
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

/// Runs `f`; if it panics, panics again with `context()` in front of its message.
fn with_context<T>(context: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
            match msg {
                Some(msg) => panic!("{}\n{msg}", context()),
                None => resume_unwind(payload),
            }
        }
    }
}

/// Our scrape of `dir`, taken twice: the text exposition (identical both times) and the
/// families. No file of a directory written by Python may be reported bad.
fn scrape_ours(dir: &Path) -> (String, Vec<MetricFamily>) {
    let first = Collector::new(dir).collect().expect("collect");
    assert!(
        first.bad_files.is_empty(),
        "files written by Python reported bad: {:?}",
        first.bad_files
    );
    let text = encode(&first.families, Format::Text);
    // The scrape endpoint's path, which writes straight from the keys, writes the same.
    for format in [Format::Text, Format::OpenMetrics] {
        let mut direct = String::new();
        Collector::new(dir)
            .encode_into(format, &mut direct)
            .expect("encode_into");
        let collected = encode(&first.families, format);
        assert!(
            direct == collected,
            "Collector::encode_into differs from encoding the collected families ({format:?}):
--- encode_into ---
{direct}
--- collect + encode ---
{collected}"
        );
    }
    let second = Collector::new(dir).collect().expect("collect again");
    let again = encode(&second.families, Format::Text);
    assert!(
        text == again,
        "two collects of the same directory give different text:\n--- first ---\n{text}\n--- second ---\n{again}"
    );
    (text, first.families)
}

/// A directory of `scenario` written by Python workers, compared with Python's scrape of it.
struct Checked {
    dir: tempfile::TempDir,
    pids: Vec<u32>,
    /// Python's scrape.
    theirs: Vec<PyFamily>,
}

impl Checked {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Python's value of a sample; panics if it has none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        common::sample_value(&self.theirs, name, labels)
            .unwrap_or_else(|| panic!("Python's scrape has no sample {name} {labels:?}"))
    }

    /// The values of the `pid` label of Python's samples named `name`.
    fn pids_of(&self, name: &str) -> BTreeSet<u32> {
        self.theirs
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get("pid"))
            .map(|p| p.parse().expect("numeric pid"))
            .collect()
    }

    fn pids_where(&self, keep: impl Fn(usize) -> bool) -> BTreeSet<u32> {
        self.pids
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, p)| *p)
            .collect()
    }

    fn file_names(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.path())
            .expect("list dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

/// Compares our scrape of `dir` (through our text exposition and Python's text parser, and
/// directly) with Python's scrape; returns Python's.
fn compare_dir(py: &Path, dir: &Path, what: &dyn Fn() -> String) -> Vec<PyFamily> {
    let (text, families) = scrape_ours(dir);
    let theirs = common::python_collect(py, dir);
    let parsed = with_context(
        || {
            format!(
                "{}\nPython's text parser rejects our exposition:\n{text}",
                what()
            )
        },
        || common::python_parse(py, "text", text.as_bytes()),
    );
    compare(&parsed, &families, &theirs, &text, what);
    theirs
}

fn compare(
    parsed: &[PyFamily],
    families: &[MetricFamily],
    theirs: &[PyFamily],
    text: &str,
    what: &dyn Fn() -> String,
) {
    with_context(
        || {
            format!("{}\nour text exposition, parsed by Python, differs from Python's scrape; our text:\n{text}", what())
        },
        || common::assert_same_samples(parsed, theirs, common::OURS_ONLY),
    );
    with_context(
        || format!("{}\nour families differ from Python's scrape", what()),
        || common::assert_same_samples(&common::py_families(families), theirs, common::OURS_ONLY),
    );
}

/// Runs `scenario` with real Python workers in a new directory and compares the scrapes.
fn check(py: &Path, scenario: &Value) -> Checked {
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = common::run_scenario(py, dir.path(), &scenario.to_string());
    let what = || format!("scenario: {scenario:#}");
    let theirs = compare_dir(py, dir.path(), &what);
    assert!(
        theirs.iter().any(|f| !f.samples.is_empty()),
        "Python's scrape is empty: the scenario tests nothing"
    );
    Checked { dir, pids, theirs }
}

/// A JSON number, or the string `scenario.py` reads for a non-finite value.
fn num(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(v)
    }
}

fn op(metric: usize, labels: &[&str], op: &str, value: f64) -> Value {
    json!({"metric": metric, "labels": labels, "op": op, "value": num(value)})
}

// ---------------------------------------------------------------- gauges

/// Writes a file of raw keys, as any JSON writer might spell them.
fn raw_file(dir: &Path, name: &str, entries: &[(&str, f64, f64)]) {
    let bytes = prometheus_multiproc::format::layout::write_file(
        entries.iter().map(|(k, v, t)| (k.as_bytes(), *v, *t)),
    );
    std::fs::write(dir.join(name), bytes).expect("write file");
}

#[test]
fn keys_of_one_series_spelled_differently_merge_like_python() {
    let Some(py) = common::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // The same series spelled three ways (spacing, label order, escapes): Python decodes the
    // JSON and merges them; so must we, in every merge mode.
    let spellings = [
        r#"["c", "c_total", {"a": "1", "b": "x"}, "h"]"#,
        r#"["c","c_total",{"b":"x","a":"1"},"h"]"#,
        r#"[ "c" , "c_total" , { "a" : "\u0031" , "b" : "x" } , "h" ]"#,
    ];
    for (i, key) in spellings.iter().enumerate() {
        let other = format!(r#"["c", "c_total", {{"a": "{i}"}}, "h"]"#);
        raw_file(
            dir.path(),
            &format!("counter_{}.db", 10 + i),
            &[(key, 1.5 * (i + 1) as f64, 0.0), (&other, 0.25, 0.0)],
        );
        // Two spellings in one file, too.
        let gauge = |mode: &str| format!(r#"["g_{mode}", "g_{mode}", {{"a": "1"}}, "h"]"#);
        let gauge_spaced = |mode: &str| format!(r#"["g_{mode}","g_{mode}",{{"a":"1"}},"h"]"#);
        for mode in ["max", "min", "sum", "mostrecent", "all"] {
            let (g, gs) = (gauge(mode), gauge_spaced(mode));
            raw_file(
                dir.path(),
                &format!("gauge_{mode}_{}.db", 10 + i),
                &[
                    (&g, i as f64 + 0.5, 100.0 + i as f64),
                    (&gs, i as f64 - 4.0, 200.0 + i as f64),
                ],
            );
        }
        // Bucket bounds spelled `1.0` and `1` are one bucket, as Python's float() makes them.
        let bound = if i == 1 { "1" } else { "1.0" };
        let h = |sample: &str, labels: &str| format!(r#"["h", "{sample}", {{{labels}}}, "h"]"#);
        let le_first = h("h_bucket", &format!(r#""le": "{bound}", "z": "1""#));
        let inf = h("h_bucket", r#""le": "+Inf", "z": "1""#);
        let sum = h("h_sum", r#""z": "1""#);
        raw_file(
            dir.path(),
            &format!("histogram_{}.db", 10 + i),
            &[(&sum, 2.0, 0.0), (&le_first, 1.0, 0.0), (&inf, 1.0, 0.0)],
        );
    }
    compare_dir(&py, dir.path(), &|| "differently spelled keys".to_owned());
}

#[test]
fn all_ten_gauge_modes_merge_like_python() {
    let Some(py) = common::python() else { return };
    // One labelled gauge per mode; four processes, the second and fourth marked dead.
    let metrics: Vec<Value> = common::GAUGE_MODES
        .iter()
        .map(|mode| {
            json!({"type": "gauge", "name": format!("g_{mode}"), "help": format!("Gauge in {mode} mode."),
                   "labels": ["worker"], "mode": mode})
        })
        .collect();
    // Per process: the value each gauge gets, on a shared child and on a child of its own.
    let per_process = [(5.0, false), (-2.5, true), (11.25, false), (40.0, true)];
    let processes: Vec<Value> = per_process
        .iter()
        .enumerate()
        .map(|(p, &(v, dead))| {
            let own = format!("p{p}");
            let mut ops = Vec::new();
            for (m, mode) in common::GAUGE_MODES.iter().enumerate() {
                ops.push(op(m, &["shared"], "set", v));
                if mode.contains("mostrecent") {
                    ops.push(op(m, &[&own], "set", v * 2.0));
                } else {
                    ops.push(op(m, &[&own], "inc", v));
                    ops.push(op(m, &[&own], "dec", 0.5));
                }
            }
            json!({"ops": ops, "dead": dead})
        })
        .collect();
    let checked = check(&py, &json!({"metrics": metrics, "processes": processes}));

    let live = |i: usize| !per_process[i].1;
    // Live modes dropped the dead processes' files; the others kept them.
    for mode in common::GAUGE_MODES {
        let files = checked
            .file_names()
            .into_iter()
            .filter(|f| f.starts_with(&format!("gauge_{mode}_")))
            .count();
        let want = if mode.starts_with("live") { 2 } else { 4 };
        assert_eq!(files, want, "files of mode {mode}");
    }
    assert_eq!(checked.pids_of("g_all"), checked.pids_where(|_| true));
    assert_eq!(checked.pids_of("g_liveall"), checked.pids_where(live));
    let shared = [("worker", "shared")];
    assert_eq!(checked.value("g_min", &shared), -2.5);
    assert_eq!(checked.value("g_livemin", &shared), 5.0);
    assert_eq!(checked.value("g_max", &shared), 40.0);
    assert_eq!(checked.value("g_livemax", &shared), 11.25);
    assert_eq!(checked.value("g_sum", &shared), 53.75);
    assert_eq!(checked.value("g_livesum", &shared), 16.25);
    assert_eq!(checked.value("g_mostrecent", &shared), 40.0);
    assert_eq!(checked.value("g_livemostrecent", &shared), 11.25);
    // A dead process's own child survives only in the non-live modes.
    assert_eq!(checked.value("g_sum", &[("worker", "p1")]), -3.0);
    assert_eq!(checked.value("g_mostrecent", &[("worker", "p3")]), 80.0);
    assert!(common::sample_value(&checked.theirs, "g_livesum", &[("worker", "p1")]).is_none());
}

#[test]
fn unlabelled_gauges_of_every_mode_including_never_set_mostrecent() {
    let Some(py) = common::python() else { return };
    // Unlabelled gauges write their 0 as soon as they are created, in every process; a
    // mostrecent gauge never set has timestamp 0 and so no sample at all.
    let mut metrics: Vec<Value> = common::GAUGE_MODES
        .iter()
        .map(|mode| json!({"type": "gauge", "name": format!("u_{mode}"), "help": "", "mode": mode}))
        .collect();
    metrics.push(
        json!({"type": "gauge", "name": "never_set", "help": "Never set.", "mode": "mostrecent"}),
    );
    let processes: Vec<Value> = (0..3)
        .map(|p| {
            let ops: Vec<Value> = if p == 1 {
                Vec::new() // this process only creates the gauges
            } else {
                common::GAUGE_MODES
                    .iter()
                    .enumerate()
                    .map(|(m, _)| op(m, &[], "set", f64::from(p) * 3.0 + 1.0))
                    .collect()
            };
            json!({"ops": ops, "dead": p == 2})
        })
        .collect();
    let checked = check(&py, &json!({"metrics": metrics, "processes": processes}));
    assert_eq!(checked.value("u_sum", &[]), 8.0);
    assert_eq!(checked.value("u_livesum", &[]), 1.0);
    assert_eq!(checked.value("u_min", &[]), 0.0);
    assert_eq!(checked.value("u_max", &[]), 7.0);
    assert_eq!(checked.value("u_mostrecent", &[]), 7.0);
    assert_eq!(checked.value("u_livemostrecent", &[]), 1.0);
    let never = checked.theirs.iter().find(|f| f.name == "never_set");
    assert!(never.is_some_and(|f| f.samples.is_empty()), "{never:?}");
}

#[test]
fn mostrecent_gauges_take_the_latest_set_across_processes() {
    let Some(py) = common::python() else { return };
    // Each process sets some children; later processes overwrite earlier ones, also with
    // set_to_current_time. Processes run one after another, so timestamps increase.
    let metrics = json!([
        {"type": "gauge", "name": "recent", "help": "Most recent.", "labels": ["k"], "mode": "mostrecent"},
        {"type": "gauge", "name": "live_recent", "help": "Live most recent.", "labels": ["k"], "mode": "livemostrecent"},
    ]);
    let processes: Vec<Value> = (0..5)
        .map(|p| {
            let mut ops = Vec::new();
            for m in 0..2 {
                ops.push(op(m, &["every"], "set", f64::from(p)));
                if p % 2 == 0 {
                    ops.push(op(m, &["even"], "set", f64::from(p) * 10.0));
                }
                if p == 0 {
                    ops.push(op(m, &["first_only"], "set", 0.5));
                }
                if p == 1 {
                    ops.push(
                        json!({"metric": m, "labels": ["clock"], "op": "set_to_current_time"}),
                    );
                }
            }
            json!({"ops": ops, "dead": p == 4})
        })
        .collect();
    let checked = check(&py, &json!({"metrics": metrics, "processes": processes}));
    assert_eq!(checked.value("recent", &[("k", "every")]), 4.0);
    assert_eq!(checked.value("live_recent", &[("k", "every")]), 3.0);
    assert_eq!(checked.value("recent", &[("k", "even")]), 40.0);
    assert_eq!(checked.value("live_recent", &[("k", "even")]), 20.0);
    assert_eq!(checked.value("live_recent", &[("k", "first_only")]), 0.5);
}

#[test]
fn gauge_pid_label_is_replaced_by_the_file_pid() {
    let Some(py) = common::python() else { return };
    // A user label named `pid`: in all/liveall mode the file's pid takes its place, in the
    // other modes it is dropped (merging the children it told apart).
    let metrics: Vec<Value> = ["all", "liveall", "sum", "max", "mostrecent"]
        .iter()
        .map(|mode| {
            json!({"type": "gauge", "name": format!("pidl_{mode}"), "help": "Has a pid label.",
                   "labels": ["pid", "x"], "mode": mode})
        })
        .collect();
    let processes: Vec<Value> = (0..3)
        .map(|p| {
            let v = f64::from(p) + 1.5;
            let mut ops = Vec::new();
            for m in 0..5 {
                // One user pid value per process and label set.
                ops.push(op(m, &["12345", "a"], "set", v));
                ops.push(op(m, &[&format!("user{p}"), "b"], "set", v * 2.0));
            }
            json!({"ops": ops, "dead": p == 0})
        })
        .collect();
    let checked = check(&py, &json!({"metrics": metrics, "processes": processes}));
    assert_eq!(checked.value("pidl_sum", &[("x", "a")]), 7.5);
    assert_eq!(checked.value("pidl_max", &[("x", "b")]), 7.0);
    assert_eq!(checked.pids_of("pidl_all"), checked.pids_where(|_| true));
}

// ---------------------------------------------------------------- dead processes

#[test]
fn dead_processes_keep_their_counters_histograms_summaries_and_plain_gauges() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "counter", "name": "restarts_total", "help": "Counted across restarts.", "labels": ["kind"]},
        {"type": "histogram", "name": "latency_seconds", "help": "Latency.", "buckets": [0.5, 1.0, 4.0]},
        {"type": "summary", "name": "payload_bytes", "help": "Payload."},
        {"type": "gauge", "name": "plain_sum", "help": "Plain sum.", "mode": "sum"},
        {"type": "gauge", "name": "live_sum", "help": "Live sum.", "mode": "livesum"},
    ]);
    // Six short-lived workers, as with worker churn: all but the last are dead.
    let processes: Vec<Value> = (0..6)
        .map(|p| {
            let k = f64::from(p);
            json!({"ops": [
                op(0, &["a"], "inc", k + 1.0),
                op(0, &[if p % 2 == 0 { "even" } else { "odd" }], "inc", 1.0),
                op(1, &[], "observe", k * 0.5),
                op(2, &[], "observe", k * 64.0),
                op(3, &[], "set", k),
                op(4, &[], "set", k),
            ], "dead": p != 5})
        })
        .collect();
    let checked = check(&py, &json!({"metrics": metrics, "processes": processes}));
    assert_eq!(checked.value("restarts_total", &[("kind", "a")]), 21.0);
    assert_eq!(checked.value("restarts_total", &[("kind", "odd")]), 3.0);
    assert_eq!(checked.value("latency_seconds_count", &[]), 6.0);
    assert_eq!(
        checked.value("latency_seconds_bucket", &[("le", "1.0")]),
        3.0
    );
    assert_eq!(checked.value("latency_seconds_sum", &[]), 7.5);
    assert_eq!(checked.value("payload_bytes_count", &[]), 6.0);
    assert_eq!(checked.value("payload_bytes_sum", &[]), 960.0);
    assert_eq!(checked.value("plain_sum", &[]), 15.0);
    assert_eq!(checked.value("live_sum", &[]), 5.0);
}

// ---------------------------------------------------------------- histograms and summaries

/// Observations on every bound (inclusive upper bounds), between bounds and beyond the last.
fn edge_observations(metric: usize, labels: &[&str], bounds: &[f64]) -> Vec<Value> {
    let mut ops: Vec<Value> = bounds
        .iter()
        .map(|&b| op(metric, labels, "observe", b))
        .collect();
    for pair in bounds.windows(2) {
        ops.push(op(metric, labels, "observe", (pair[0] + pair[1]) / 2.0));
    }
    ops.push(op(
        metric,
        labels,
        "observe",
        bounds[bounds.len() - 1] * 2.0 + 1.0,
    ));
    ops.push(op(metric, labels, "observe", bounds[0] - 1.0));
    ops
}

const DEFAULT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[test]
fn histograms_with_default_buckets_and_observations_on_edges() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "histogram", "name": "request_duration_seconds", "help": "Default buckets."},
        {"type": "histogram", "name": "by_route_seconds", "help": "Labelled, default buckets.", "labels": ["route"]},
    ]);
    // Non-dyadic observations (0.005, 0.1, ...) are summed by two processes at most, so that
    // the order of the sum cannot matter beyond the last ulp.
    let processes = json!([
        {"ops": edge_observations(0, &[], &DEFAULT_BUCKETS)
            .into_iter()
            .chain(edge_observations(1, &["/a"], &DEFAULT_BUCKETS))
            .collect::<Vec<_>>()},
        {"ops": edge_observations(0, &[], &DEFAULT_BUCKETS[..5])
            .into_iter()
            .chain(edge_observations(1, &["/b"], &DEFAULT_BUCKETS[6..]))
            .collect::<Vec<_>>(), "dead": true},
        {"ops": [op(1, &["/c"], "observe", 0.25), op(1, &["/c"], "observe", 1e9)]},
    ]);
    let checked = check(&py, &processes_with(metrics, processes));
    // 0.005 is observed three times on its edge, once at 0.005 - 1, ... : Python decided.
    assert_eq!(
        checked.value("request_duration_seconds_count", &[]),
        (2 * 14 - 1 + 2 + 2 * 5 - 1 + 2) as f64
    );
    assert_eq!(
        checked.value(
            "by_route_seconds_bucket",
            &[("route", "/c"), ("le", "+Inf")]
        ),
        2.0
    );
    assert_eq!(
        checked.value(
            "by_route_seconds_bucket",
            &[("route", "/c"), ("le", "10.0")]
        ),
        1.0
    );
}

fn processes_with(metrics: Value, processes: Value) -> Value {
    json!({"metrics": metrics, "processes": processes})
}

#[test]
fn histograms_with_custom_buckets_tiny_huge_and_negative_bounds() {
    let Some(py) = common::python() else { return };
    let tiny_huge = [1e-5, 0.0001, 0.001, 0.5, 1.0, 123456.0, 1e6, 1.5e6, 1e21];
    let negative = [-1e6, -2.5, -0.0001, 0.0, 3.0];
    let metrics = json!([
        {"type": "histogram", "name": "sizes", "help": "Tiny and huge bounds.",
         "buckets": tiny_huge.to_vec()},
        {"type": "histogram", "name": "offsets", "help": "Negative bounds.", "labels": ["side"],
         "buckets": negative.to_vec()},
        {"type": "histogram", "name": "explicit_inf", "help": "+Inf given explicitly.",
         "buckets": [num(1.0), num(f64::INFINITY)]},
    ]);
    let processes = json!([
        {"ops": edge_observations(0, &[], &tiny_huge)
            .into_iter()
            .chain(edge_observations(1, &["left"], &negative))
            .chain([op(2, &[], "observe", 1.0), op(2, &[], "observe", f64::INFINITY)])
            .collect::<Vec<_>>()},
        {"ops": edge_observations(0, &[], &tiny_huge[3..])
            .into_iter()
            .chain(edge_observations(1, &["right"], &negative))
            .chain([op(2, &[], "observe", 2.0)])
            .collect::<Vec<_>>(), "dead": true},
    ]);
    let checked = check(&py, &processes_with(metrics, processes));
    // The `le` values as Python writes them.
    let les: BTreeSet<String> = checked
        .theirs
        .iter()
        .filter(|f| f.name == "sizes")
        .flat_map(|f| &f.samples)
        .filter_map(|s| s.labels.get("le").cloned())
        .collect();
    for le in [
        "1e-05", "0.0001", "0.001", "123456.0", "1e+06", "1.5e+06", "1e+21", "+Inf",
    ] {
        assert!(les.contains(le), "no le={le} in {les:?}");
    }
    assert_eq!(checked.value("explicit_inf_count", &[]), 3.0);
    assert_eq!(
        checked.value("offsets_bucket", &[("side", "left"), ("le", "-0.0001")]),
        6.0
    );
}

#[test]
fn histogram_buckets_changed_between_processes() {
    let Some(py) = common::python() else { return };
    // A deploy changed the buckets: the old and the new workers' bounds are merged.
    let metrics = json!([
        {"type": "histogram", "name": "resized_seconds", "help": "Resized.", "labels": ["x"], "buckets": [1.0, 2.0]},
        {"type": "histogram", "name": "resized_seconds", "help": "Resized.", "labels": ["x"], "buckets": [0.5, 1.5, 2.0, 8.0]},
    ]);
    let processes = json!([
        {"ops": [op(0, &["v"], "observe", 1.25), op(0, &["v"], "observe", 0.25), op(0, &["old"], "observe", 3.0)], "dead": true},
        {"ops": [op(1, &["v"], "observe", 1.25), op(1, &["v"], "observe", 9.0), op(1, &["new"], "observe", 0.5)]},
    ]);
    let checked = check(&py, &processes_with(metrics, processes));
    let v = |le: &str| checked.value("resized_seconds_bucket", &[("x", "v"), ("le", le)]);
    assert_eq!(
        [v("0.5"), v("1.0"), v("1.5"), v("2.0"), v("8.0"), v("+Inf")],
        [0.0, 1.0, 2.0, 3.0, 3.0, 4.0]
    );
}

#[test]
fn summaries_add_up_counts_and_sums() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "summary", "name": "request_size_bytes", "help": "Request size."},
        {"type": "summary", "name": "response_size_bytes", "help": "Response size.", "labels": ["code"]},
    ]);
    let processes: Vec<Value> = (0..4)
        .map(|p| {
            let k = f64::from(p);
            json!({"ops": [
                op(0, &[], "observe", k * 100.0 + 0.5),
                op(0, &[], "observe", -k),
                op(1, &[if p < 2 { "200" } else { "500" }], "observe", 1024.0 * k),
                op(1, &["200"], "observe", 0.125),
            ], "dead": p == 1})
        })
        .collect();
    let checked = check(&py, &processes_with(metrics, json!(processes)));
    assert_eq!(checked.value("request_size_bytes_count", &[]), 8.0);
    assert_eq!(checked.value("request_size_bytes_sum", &[]), 596.0);
    assert_eq!(
        checked.value("response_size_bytes_count", &[("code", "200")]),
        6.0
    );
    assert_eq!(
        checked.value("response_size_bytes_sum", &[("code", "500")]),
        5120.0
    );
}

// ---------------------------------------------------------------- labels and text

#[test]
fn labelled_families_with_many_children() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "counter", "name": "http_requests", "help": "Requests.", "labels": ["method", "path", "code"]},
        {"type": "counter", "name": "jobs_total", "help": "Declared with _total.", "labels": ["queue"]},
        {"type": "gauge", "name": "in_flight", "help": "In flight.", "labels": ["method"], "mode": "livesum"},
        {"type": "histogram", "name": "db_seconds", "help": "DB time.", "labels": ["table", "op"], "buckets": [0.25, 1.0]},
        {"type": "summary", "name": "batch_size", "help": "Batch size.", "labels": ["queue"]},
        {"type": "counter", "name": "le_counter", "help": "A counter with an le label.", "labels": ["le", "quantile"]},
    ]);
    let methods = ["GET", "POST", "DELETE"];
    let paths = ["/", "/users", "/users/{id}"];
    let processes: Vec<Value> = (0..4)
        .map(|p| {
            let mut ops = Vec::new();
            for (i, m) in methods.iter().enumerate() {
                for (j, path) in paths.iter().enumerate() {
                    if (i + j + p) % 3 != 0 {
                        let code = if j == 2 { "404" } else { "200" };
                        ops.push(op(0, &[m, path, code], "inc", (i * 3 + j + 1) as f64));
                    }
                }
                ops.push(op(2, &[m], "inc", 2.0));
                ops.push(op(2, &[m], "dec", 1.0));
            }
            let queue = ["default", "mail", "reports"][p % 3];
            ops.push(op(1, &[queue], "inc", 1.0));
            ops.push(op(3, &["users", "select"], "observe", 0.25));
            ops.push(op(
                3,
                &[["orders", "users"][p % 2], "update"],
                "observe",
                0.75 * p as f64,
            ));
            ops.push(op(4, &[queue], "observe", 16.0 * p as f64));
            ops.push(op(5, &["0.5", "+Inf"], "inc", 1.0));
            json!({"ops": ops, "dead": p == 2})
        })
        .collect();
    let checked = check(&py, &processes_with(metrics, json!(processes)));
    let children = checked
        .theirs
        .iter()
        .find(|f| f.name == "http_requests")
        .map_or(0, |f| f.samples.len());
    assert_eq!(children, 9);
    assert_eq!(checked.value("jobs_total", &[("queue", "default")]), 2.0);
    assert_eq!(checked.value("in_flight", &[("method", "GET")]), 3.0);
    assert_eq!(
        checked.value("db_seconds_count", &[("table", "users"), ("op", "select")]),
        4.0
    );
}

/// Label values and help texts that need escaping, or are not ASCII.
const NASTY_VALUES: [&str; 14] = [
    "",
    "say \"hi\"",
    "back\\slash",
    "trailing backslash\\",
    "two\nlines",
    "\\n is not a newline",
    "tab\tand\rcarriage return",
    "a,b=c}{",
    "ünïcödé — ½",
    "日本語",
    "astral 😀 𝄞 \u{10FFFF}",
    "\u{1}\u{7f}\u{85}\u{2028}",
    " spaces around ",
    "# HELP not a comment",
];

#[test]
fn escaping_of_label_values_and_help_texts() {
    let Some(py) = common::python() else { return };
    // Python's text parser strips a HELP line of surrounding whitespace, so help texts here
    // neither start nor end with any.
    let helps = [
        "Help with \"quotes\".",
        "Back\\slash and \\n literal",
        "Multi\nline\nhelp",
        "Ünïcödé hélp ✓",
        "Astral 😀 𝄞 help",
        "Ends with a backslash \\",
        "{braces}, commas = signs # and hashes",
    ];
    let metrics: Vec<Value> = helps
        .iter()
        .enumerate()
        .map(|(i, help)| {
            let typ = ["counter", "gauge", "histogram", "summary"][i % 4];
            let mut m = json!({"type": typ, "name": format!("esc_{typ}_{i}"), "help": help, "labels": ["v", "w"]});
            if typ == "gauge" {
                m["mode"] = json!(common::GAUGE_MODES[i % common::GAUGE_MODES.len()]);
            }
            m
        })
        .collect();
    let processes: Vec<Value> = (0..2)
        .map(|p| {
            let mut ops = Vec::new();
            for (i, _) in helps.iter().enumerate() {
                for (j, v) in NASTY_VALUES.iter().enumerate() {
                    let w = NASTY_VALUES[(j + p + 1) % NASTY_VALUES.len()];
                    let name = match i % 4 {
                        0 => "inc",
                        1 => "set",
                        _ => "observe",
                    };
                    ops.push(op(i, &[v, w], name, (j + 1) as f64));
                }
            }
            json!({"ops": ops})
        })
        .collect();
    let checked = check(&py, &processes_with(json!(metrics), json!(processes)));
    let seen: BTreeSet<&str> = checked
        .theirs
        .iter()
        .flat_map(|f| &f.samples)
        .filter_map(|s| s.labels.get("v").map(String::as_str))
        .collect();
    for v in NASTY_VALUES {
        assert!(
            seen.contains(v),
            "label value {v:?} missing from Python's scrape"
        );
    }
    let helps_seen: BTreeSet<&str> = checked.theirs.iter().map(|f| f.help.as_str()).collect();
    for h in helps {
        assert!(
            helps_seen.contains(h),
            "help {h:?} missing from Python's scrape"
        );
    }
}

#[test]
fn utf8_metric_and_label_names_are_written_like_python() {
    let Some(py) = common::python() else { return };
    // prometheus_client 0.26 accepts any UTF-8 metric and label name; its text exposition
    // replaces what a legacy name may not hold by `_`. Compared with Python's own exposition
    // of the same directory, both parsed by Python's text parser.
    let metrics = json!([
        {"type": "counter", "name": "req.count", "help": "Dotted counter.", "labels": ["http.method"]},
        {"type": "gauge", "name": "größe.bytes", "help": "Non-ASCII.", "labels": ["ünï", "0lead"], "mode": "max"},
        {"type": "histogram", "name": "lat-ency", "help": "Dash.", "labels": ["a b"], "buckets": [1.0]},
        {"type": "summary", "name": "9starts_with_digit", "help": "Digit.", "labels": []},
        {"type": "gauge", "name": "ns:ok_name", "help": "Colon.", "labels": ["le"], "mode": "all"},
    ]);
    let processes: Vec<Value> = (0..2)
        .map(|p| {
            let v = f64::from(p) + 1.0;
            json!({"ops": [
                op(0, &["GET"], "inc", v),
                op(1, &["x", "y"], "set", v),
                op(2, &["z"], "observe", v),
                op(3, &[], "observe", v),
                op(4, &["0.5"], "set", v),
            ]})
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = processes_with(metrics, json!(processes));
    common::run_scenario(&py, dir.path(), &scenario.to_string());
    let (text, families) = scrape_ours(dir.path());
    let theirs_text = common::python_collect_text(&py, dir.path());
    let ours = common::python_parse(&py, "text", text.as_bytes());
    let theirs = common::python_parse(&py, "text", &theirs_text);
    with_context(
        || {
            format!(
                "our text:\n{text}\nPython's text:\n{}",
                String::from_utf8_lossy(&theirs_text)
            )
        },
        || common::assert_same_samples(&ours, &theirs, common::OURS_ONLY),
    );
    // The collector itself keeps the names as stored.
    let direct = common::py_families(&families);
    common::assert_same_samples(
        &direct,
        &common::python_collect(&py, dir.path()),
        common::OURS_ONLY,
    );
    assert!(direct.iter().any(|f| f.name == "größe.bytes"));
}

// ---------------------------------------------------------------- sizes, values, threads

#[test]
fn files_grown_past_64_kib() {
    let Some(py) = common::python() else { return };
    // About 2500 children of ~110-byte entries in one process: the file doubles from 64 KiB
    // at least twice, to 256 KiB or more. A second process writes some of the same children.
    let metrics = json!([
        {"type": "counter", "name": "big", "help": "Many series.", "labels": ["series", "padding"]},
        {"type": "gauge", "name": "big_gauge", "help": "Many series.", "labels": ["series"], "mode": "max"},
    ]);
    let padding = "p".repeat(40);
    let big: Vec<Value> = (0..2500)
        .flat_map(|i| {
            let s = format!("series-{i:05}");
            [
                op(0, &[&s, &padding], "inc", (i % 7 + 1) as f64),
                op(1, &[&s], "set", f64::from(i)),
            ]
        })
        .collect();
    let small: Vec<Value> = (0..2500)
        .step_by(10)
        .flat_map(|i| {
            let s = format!("series-{i:05}");
            [
                op(0, &[&s, &padding], "inc", 0.5),
                op(1, &[&s], "set", f64::from(i) + 0.5),
            ]
        })
        .collect();
    let checked = check(
        &py,
        &processes_with(metrics, json!([{"ops": big}, {"ops": small, "dead": true}])),
    );
    let largest = std::fs::read_dir(checked.path())
        .expect("list dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .max()
        .unwrap_or(0);
    assert!(
        largest >= 256 * 1024,
        "largest file is only {largest} bytes"
    );
    assert_eq!(
        checked.value(
            "big_total",
            &[("series", "series-00010"), ("padding", &padding)]
        ),
        4.5
    );
    assert_eq!(
        checked.value("big_gauge", &[("series", "series-02490")]),
        2490.5
    );
}

#[test]
fn nan_and_infinities() {
    let Some(py) = common::python() else { return };
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    let metrics = json!([
        {"type": "counter", "name": "odd_counter", "help": "NaN and inf.", "labels": ["k"]},
        {"type": "gauge", "name": "odd_all", "help": "All.", "labels": ["k"], "mode": "all"},
        {"type": "gauge", "name": "odd_sum", "help": "Sum.", "labels": ["k"], "mode": "sum"},
        // min/max: NaN only where a single process sets the series (Python's result would
        // depend on its file order otherwise); infinities anywhere.
        {"type": "gauge", "name": "odd_min", "help": "Min.", "labels": ["k"], "mode": "min"},
        {"type": "gauge", "name": "odd_max", "help": "Max.", "labels": ["k"], "mode": "livemax"},
        {"type": "gauge", "name": "odd_recent", "help": "Most recent.", "labels": ["k"], "mode": "mostrecent"},
        {"type": "histogram", "name": "odd_hist", "help": "Histogram.", "labels": ["k"], "buckets": [0.0, 1.0]},
        {"type": "summary", "name": "odd_summary", "help": "Summary.", "labels": ["k"]},
    ]);
    let gauge_ops = |p: usize, v: f64, w: f64| -> Vec<Value> {
        let mut ops = vec![
            op(1, &["a"], "set", v),
            op(2, &["a"], "set", v),
            op(2, &["b"], "set", w),
            op(5, &["a"], "set", v),
        ];
        for m in [3, 4] {
            ops.push(op(m, &["inf"], "set", w));
            ops.push(op(m, &[&format!("only{p}")], "set", v));
        }
        ops
    };
    let mut first = vec![
        op(0, &["nan"], "inc", nan),
        op(0, &["inf"], "inc", inf),
        op(0, &["mixed"], "inc", inf),
        op(6, &["a"], "observe", nan),
        op(6, &["b"], "observe", inf),
        op(6, &["c"], "observe", -inf),
        op(7, &["a"], "observe", nan),
        op(7, &["b"], "observe", inf),
    ];
    first.extend(gauge_ops(0, nan, inf));
    let mut second = vec![
        op(0, &["mixed"], "inc", 1.0),
        op(6, &["c"], "observe", inf),
        op(6, &["a"], "observe", 0.5),
        op(7, &["b"], "observe", -inf),
    ];
    second.extend(gauge_ops(1, inf, -inf));
    let processes = json!([
        {"ops": first},
        {"ops": second},
        {"ops": gauge_ops(2, -inf, 1.0), "dead": true},
    ]);
    let checked = check(&py, &processes_with(metrics, processes));
    assert!(checked.value("odd_counter_total", &[("k", "nan")]).is_nan());
    assert_eq!(checked.value("odd_counter_total", &[("k", "mixed")]), inf);
    assert!(checked.value("odd_sum", &[("k", "a")]).is_nan());
    assert_eq!(checked.value("odd_min", &[("k", "inf")]), -inf);
    assert_eq!(checked.value("odd_recent", &[("k", "a")]), -inf);
    assert!(checked.value("odd_hist_sum", &[("k", "c")]).is_nan());
    assert!(checked.value("odd_summary_sum", &[("k", "b")]).is_nan());
}

#[test]
fn multi_threaded_workers() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "counter", "name": "threaded", "help": "Incremented by threads.", "labels": ["t"]},
        {"type": "gauge", "name": "threaded_gauge", "help": "Threads.", "mode": "livesum"},
        {"type": "gauge", "name": "threaded_all", "help": "Threads.", "mode": "all"},
        {"type": "histogram", "name": "threaded_seconds", "help": "Threads.", "buckets": [0.5, 2.0]},
        {"type": "summary", "name": "threaded_summary", "help": "Threads."},
    ]);
    let ops: Vec<Value> = (0..200)
        .flat_map(|i| {
            [
                op(0, &[["x", "y"][i % 2]], "inc", 0.25),
                op(1, &[], "inc", 1.0),
                op(2, &[], "inc", 0.5),
                op(3, &[], "observe", (i % 5) as f64 * 0.5),
                op(4, &[], "observe", 2.0),
            ]
        })
        .collect();
    let processes = json!([
        {"ops": ops, "threads": 8},
        {"ops": ops, "threads": 3, "dead": true},
        {"ops": ops[..50], "threads": 2},
    ]);
    let checked = check(&py, &processes_with(metrics, processes));
    // Python's lock makes every increment count.
    assert_eq!(
        checked.value("threaded_total", &[("t", "x")]),
        25.0 * 8.0 + 25.0 * 3.0 + 1.25 * 2.0
    );
    assert_eq!(
        checked.value("threaded_gauge", &[]),
        200.0 * 8.0 + 10.0 * 2.0
    );
    assert_eq!(
        checked.value("threaded_summary_count", &[]),
        200.0 * 11.0 + 20.0
    );
}

// ---------------------------------------------------------------- byte-identical scrapes

#[test]
fn two_collects_of_a_directory_give_identical_bytes() {
    let Some(py) = common::python() else { return };
    // Many files, families and children, so that any dependence on hashing or thread
    // scheduling would show; both formats.
    let metrics = json!([
        {"type": "counter", "name": "c", "help": "C.", "labels": ["a", "b"]},
        {"type": "gauge", "name": "g_all", "help": "G.", "labels": ["a"], "mode": "all"},
        {"type": "gauge", "name": "g_recent", "help": "G.", "labels": ["a"], "mode": "mostrecent"},
        {"type": "histogram", "name": "h", "help": "H.", "labels": ["a"]},
        {"type": "summary", "name": "s", "help": "S.", "labels": ["a"]},
    ]);
    let processes: Vec<Value> = (0..8)
        .map(|p| {
            let ops: Vec<Value> = (0..40)
                .map(|i| {
                    let a = format!("v{}", (i * 7 + p * 3) % 23);
                    match i % 5 {
                        0 => op(0, &[&a, &format!("{}", i % 4)], "inc", 1.0),
                        1 => op(1, &[&a], "set", i as f64),
                        2 => op(2, &[&a], "set", (p * 100 + i) as f64),
                        3 => op(3, &[&a], "observe", i as f64 / 8.0),
                        _ => op(4, &[&a], "observe", i as f64),
                    }
                })
                .collect();
            json!({"ops": ops, "dead": p % 3 == 0})
        })
        .collect();
    let checked = check(&py, &processes_with(metrics, json!(processes)));
    let scrape = || Collector::new(checked.path()).collect().expect("collect");
    let first = scrape();
    for _ in 0..5 {
        let again = scrape();
        assert!(encode(&first.families, Format::Text) == encode(&again.families, Format::Text));
        assert!(
            encode(&first.families, Format::OpenMetrics)
                == encode(&again.families, Format::OpenMetrics)
        );
    }
}

// ---------------------------------------------------------------- randomized scenarios

const LABEL_VALUES: [&str; 14] = [
    "",
    "GET",
    "POST",
    "/users/{id}",
    "a,b=c}",
    "say \"hi\"",
    "back\\slash",
    "two\nlines",
    "ünïcödé",
    "😀",
    "x",
    "y",
    "0",
    "tab\tcr\r",
];

const LABEL_NAMES: [&str; 8] = ["method", "path", "code", "a", "b_2", "_under", "Mixed", "x"];

/// Dyadic values of moderate size: any sum of a few of them is exact, in any order.
const GAUGE_VALUES: [f64; 10] = [
    -3.0,
    -0.5,
    0.0,
    0.25,
    1.0,
    7.75,
    1024.0,
    1e6,
    1099511627776.0,
    2.5,
];
const INCREMENTS: [f64; 7] = [0.0, 0.25, 1.0, 2.0, 3.5, 1000.0, 1e6];
const OBSERVATIONS: [f64; 11] = [
    0.0, 0.125, 0.25, 0.75, 1.0, 2.5, 3.0, 7.5, 10.0, 1024.0, -1.0,
];
/// Dyadic bucket bounds to draw custom buckets from.
const BOUNDS: [f64; 10] = [-2.0, 0.0, 0.125, 0.25, 1.0, 2.5, 10.0, 1024.0, 1e6, 4.5];

/// A value from `pool`, or now and then (if `non_finite`) NaN or an infinity.
fn value(rng: &mut Rng, pool: &[f64], non_finite: bool) -> f64 {
    match rng.below(40) {
        0 if non_finite => f64::NAN,
        1 if non_finite => f64::INFINITY,
        2 if non_finite => f64::NEG_INFINITY,
        _ => *rng.pick(pool),
    }
}

/// A small random scenario: 1-4 metrics of random types, names, labels and gauge modes
/// (sometimes one more, a twin of another with other labels or buckets);
/// 1-6 processes with 0-6 random operations each, some marked dead, some threaded.
fn random_scenario(rng: &mut Rng) -> Value {
    struct Metric {
        typ: &'static str,
        labels: usize,
        mode: &'static str,
        bounds: Vec<f64>,
    }
    let n_metrics = 1 + rng.below(4);
    // Now and then a twin: a metric of the same name, type, help and gauge mode as another
    // but other labels or buckets, as when a deploy changes them.
    let twins = usize::from(rng.chance(20));
    let mut metrics: Vec<Value> = Vec::new();
    let mut specs: Vec<Metric> = Vec::new();
    for i in 0..n_metrics + twins {
        let twin_of = (i >= n_metrics).then(|| rng.below(n_metrics));
        let typ = match twin_of {
            Some(t) => specs[t].typ,
            None => *rng.pick(&["counter", "gauge", "gauge", "histogram", "summary"]),
        };
        let mut name = format!(
            "{}{}_{}",
            rng.pick(&["", "app:", "_", "Z"]),
            rng.pick(&["requests", "latency", "queue_depth", "bytes", "x"]),
            i
        );
        if typ == "counter" && rng.chance(30) {
            name.push_str("_total"); // Python drops it from the family name
        }
        if let Some(t) = twin_of {
            name = metrics[t]["name"].as_str().expect("name").to_owned();
        }
        let mut names: Vec<&str> = LABEL_NAMES.to_vec();
        match typ {
            "gauge" => names.push("le"),
            "counter" => names.extend(["le", "quantile"]),
            "histogram" => names.push("quantile"),
            _ => names.push("le"),
        }
        let mut labels = Vec::new();
        for _ in 0..rng.below(4) {
            let l = *rng.pick(&names);
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        let help = match twin_of {
            Some(t) => metrics[t]["help"].as_str().expect("help"),
            None => rng.pick(&HELPS),
        };
        let mut m = json!({"type": typ, "name": name, "help": help, "labels": labels});
        let mut spec = Metric {
            typ,
            labels: labels.len(),
            mode: "",
            bounds: Vec::new(),
        };
        if typ == "gauge" {
            spec.mode = match twin_of {
                Some(t) => specs[t].mode,
                None => *rng.pick(&common::GAUGE_MODES),
            };
            m["mode"] = json!(spec.mode);
        }
        if typ == "histogram" {
            if rng.chance(40) {
                // Python's default buckets; observe their dyadic bounds only.
                spec.bounds = vec![0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
            } else {
                let mut b: Vec<f64> = (0..1 + rng.below(4)).map(|_| *rng.pick(&BOUNDS)).collect();
                b.sort_by(f64::total_cmp);
                b.dedup();
                m["buckets"] = json!(b);
                if rng.chance(20) {
                    m["buckets"]
                        .as_array_mut()
                        .expect("array")
                        .push(num(f64::INFINITY));
                }
                spec.bounds = b;
            }
        }
        metrics.push(m);
        specs.push(spec);
    }

    let n_processes = 1 + rng.below(6);
    let mut processes = Vec::new();
    for _ in 0..n_processes {
        let mut ops = Vec::new();
        for _ in 0..rng.below(7) {
            let m = rng.below(specs.len());
            let spec = &specs[m];
            let labels: Vec<&str> = (0..spec.labels).map(|_| *rng.pick(&LABEL_VALUES)).collect();
            let o = match spec.typ {
                "counter" => {
                    if rng.chance(30) {
                        json!({"metric": m, "labels": labels, "op": "inc"})
                    } else {
                        let v = value(rng, &INCREMENTS, true).abs();
                        op(m, &labels, "inc", v)
                    }
                }
                "gauge" => {
                    let most_recent = spec.mode.contains("mostrecent");
                    let summed = spec.mode.contains("sum");
                    // min/max: no NaN, and no infinity either (inc(inf) then dec(inf) is NaN).
                    let min_max = spec.mode.contains("min") || spec.mode.contains("max");
                    let v = value(rng, &GAUGE_VALUES, !min_max);
                    match rng.below(if most_recent { 2 } else { 4 }) {
                        // set_to_current_time gives values that need not add up exactly.
                        1 if !summed => {
                            json!({"metric": m, "labels": labels, "op": "set_to_current_time"})
                        }
                        0 | 1 => op(m, &labels, "set", v),
                        2 => op(m, &labels, "inc", v),
                        _ => op(m, &labels, "dec", v),
                    }
                }
                _ => {
                    let v = if !spec.bounds.is_empty() && rng.chance(40) {
                        *rng.pick(&spec.bounds)
                    } else {
                        value(rng, &OBSERVATIONS, true)
                    };
                    op(m, &labels, "observe", v)
                }
            };
            ops.push(o);
        }
        let mut p = json!({"ops": ops, "dead": rng.chance(30)});
        if rng.chance(10) {
            p["threads"] = json!(2 + rng.below(2));
        }
        processes.push(p);
    }
    json!({"metrics": metrics, "processes": processes})
}

/// In one Python process: Python's scrape of each directory (`collect.py`'s JSON) and Python's
/// text parse of each exposition (`parse.py`'s JSON), one JSON document per line, or
/// `{"error": ...}` for a failure.
const BATCH_ORACLE: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import collect, parse
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
for d in request["collect"]:
    try:
        print(collect.families_json(list(MultiProcessCollector(None, path=d).collect())))
    except Exception as e:
        print(json.dumps({"error": f"collect failed: {type(e).__name__}: {e}"}))
for text in request["parse_text"]:
    try:
        print(parse.families_json(list(text_string_to_metric_families(text))))
    except Exception as e:
        print(json.dumps({"error": f"text parse failed: {type(e).__name__}: {e}"}))
"#;

/// Runs [`BATCH_ORACLE`]: Python's scrapes of `dirs` and Python's parses of `texts`.
#[allow(clippy::type_complexity)]
fn batch_oracle(
    py: &Path,
    dirs: &[PathBuf],
    texts: &[String],
) -> (
    Vec<Result<Vec<PyFamily>, String>>,
    Vec<Result<Vec<PyFamily>, String>>,
) {
    let request = json!({
        "collect": dirs.iter().map(|d| d.to_str().expect("UTF-8 path")).collect::<Vec<_>>(),
        "parse_text": texts,
    });
    let mut cmd = Command::new(py);
    cmd.arg("-c")
        .arg(BATCH_ORACLE)
        .arg(common::repo_root().join("tests/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUTF8", "1")
        .env_remove("PROMETHEUS_MULTIPROC_DIR")
        .env_remove("prometheus_multiproc_dir");
    let out = common::run_command(cmd, Some(request.to_string().as_bytes()));
    assert!(
        out.status.success(),
        "batch oracle failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut results = std::str::from_utf8(&out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|line| {
            if line.starts_with('{') {
                let v: Value = serde_json::from_str(line).expect("error object");
                Err(v["error"].as_str().unwrap_or(line).to_owned())
            } else {
                Ok(common::parse_families_json(line.as_bytes()))
            }
        })
        .collect::<Vec<_>>();
    assert_eq!(
        results.len(),
        dirs.len() + texts.len(),
        "batch oracle output lines"
    );
    let parsed = results.split_off(dirs.len());
    (results, parsed)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")))
}

#[test]
fn randomized_scenarios_match_python() {
    let Some(py) = common::python() else { return };
    let seed = env_u64("CONFORMANCE_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970");
        now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    });
    let count = env_u64("CONFORMANCE_SCENARIOS").unwrap_or(60) as usize;
    eprintln!("randomized scenarios: CONFORMANCE_SEED={seed} ({count} scenarios)");

    let scenarios: Vec<Value> = (0..count)
        .map(|i| {
            // Each scenario from its own stream, so that scenario i is the same whatever
            // CONFORMANCE_SCENARIOS is.
            let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            random_scenario(&mut rng)
        })
        .collect();
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (0..count)
        .map(|i| {
            let d = root.path().join(format!("s{i:03}"));
            std::fs::create_dir(&d).expect("mkdir");
            d
        })
        .collect();

    // All scenarios in one scenario.py run, its workers forked from one interpreter.
    let runs: Vec<Value> = dirs
        .iter()
        .zip(&scenarios)
        .map(|(d, s)| json!({"dir": d.to_str().expect("UTF-8 path"), "scenario": s}))
        .collect();
    let batch_file = root.path().join("batch.json");
    std::fs::write(&batch_file, json!({"runs": runs}).to_string()).expect("write batch");
    let out = common::run_python(
        &py,
        "scenario.py",
        &["--batch", batch_file.to_str().expect("UTF-8 path")],
        None,
    );
    let pids: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).expect("pid lists");
    assert_eq!(pids.len(), count);

    let ours: Vec<(String, Vec<MetricFamily>)> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            with_context(
                || format!("CONFORMANCE_SEED={seed}, scenario {i}: {:#}", scenarios[i]),
                || scrape_ours(d),
            )
        })
        .collect();
    let texts: Vec<String> = ours.iter().map(|(t, _)| t.clone()).collect();
    let (theirs, parsed) = batch_oracle(&py, &dirs, &texts);

    let compared: usize = theirs
        .iter()
        .flatten()
        .flat_map(|fams| fams.iter().map(|f| f.samples.len()))
        .sum();
    let workers: usize = pids.iter().map(Vec::len).sum();
    eprintln!("randomized scenarios: {workers} workers, {compared} samples of Python's compared");
    let mut failures = String::new();
    for i in 0..count {
        let what = || {
            format!(
                "CONFORMANCE_SEED={seed}, scenario {i} (pids {:?}):\n{:#}",
                pids[i], scenarios[i]
            )
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            let theirs = theirs[i].as_ref().unwrap_or_else(|e| panic!("Python: {e}"));
            let parsed = parsed[i]
                .as_ref()
                .unwrap_or_else(|e| panic!("Python rejects our text: {e}\n{}", texts[i]));
            compare(parsed, &ours[i].1, theirs, &texts[i], &what);
        }));
        if let Err(payload) = result {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| format!("{}\n(non-string panic)", what()));
            let _ = writeln!(failures, "{msg}\n");
        }
    }
    assert!(
        failures.is_empty(),
        "randomized scenarios differ from Python (CONFORMANCE_SEED={seed}):\n{failures}"
    );
}
