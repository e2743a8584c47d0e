//! The write side against Python's prometheus_client 0.26.0 in multiprocess mode.
//!
//! The same scenario (the JSON of `tests/python/scenario.py`) is applied once by real Python
//! worker processes and once by Rust worker processes forked from this test
//! (`common/rust_scenario.rs`), each in its own directory. Then:
//!
//! - both directories give the same merged scrape, from our collector and from Python's
//!   `MultiProcessCollector` alike (four scrapes that must agree, the `pid` labels of gauges in
//!   mode `all`/`liveall` mapped to the process's index first);
//! - a directory written by Rust and Python processes together merges to the right totals;
//! - for the same operations in one process, the files Rust writes equal Python's byte for
//!   byte, size and zero tail included (timestamps of mostrecent gauges aside), also when the
//!   metrics come from several registries of the process;
//! - a file one writes is continued by the other as if one process had written it all;
//! - metrics created by a parent before it forks record into each worker's own files, and
//!   into the same entries as Python's workers write.
//!
//! Rust workers not marked dead stay alive until the directories are scraped: this crate's
//! collector knows by itself that a Rust process has exited (its liveness lock is free) and
//! leaves out its `live*` gauges, where Python keeps them until `mark_process_dead`.
//!
//! Values are dyadic fractions of moderate size wherever several processes add them up, so that
//! every order of summation gives the same bits; NaN stays out of min/max gauges set by several
//! processes (Python keeps whichever of NaN and a number it reads first).
//!
//! The randomized scenarios come from a seed printed on stderr; set `INTEROP_SEED` to repeat a
//! run and `INTEROP_SCENARIOS` to change how many there are.

mod common;
#[path = "common/rust_scenario.rs"]
mod rust_scenario;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{PyFamily, Rng, HELPS};
use prometheus_multiproc::collector::Collector;
use prometheus_multiproc::format::filename::FileName;
use prometheus_multiproc::format::layout;
use rust_scenario::{run_rust_scenario, run_rust_scenario_with, Setup, Workers};
use serde_json::{json, Value};

/// Label values and help texts that need escaping, or are not ASCII.
const NASTY: [&str; 14] = [
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

// ---------------------------------------------------------------- scenario JSON

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

/// An operation without a value (`inc`/`dec` by 1, `set_to_current_time`).
fn op0(metric: usize, labels: &[&str], op: &str) -> Value {
    json!({"metric": metric, "labels": labels, "op": op})
}

fn scenario(metrics: Value, processes: Value) -> Value {
    json!({"metrics": metrics, "processes": processes})
}

// ---------------------------------------------------------------- running Python

/// Runs `scenario.py --batch`: each scenario with Python workers (forks of one interpreter)
/// in its directory; the pids of each run's workers.
fn python_batch(py: &Path, runs: &[(&Path, &Value)]) -> Vec<Vec<u32>> {
    let runs_json: Vec<Value> = runs
        .iter()
        .map(|(d, s)| json!({"dir": d.to_str().expect("UTF-8 path"), "scenario": s}))
        .collect();
    let mut file = tempfile::Builder::new()
        .prefix("interop-batch-")
        .suffix(".json")
        .tempfile()
        .expect("batch file");
    std::io::Write::write_all(&mut file, json!({"runs": runs_json}).to_string().as_bytes())
        .expect("write batch file");
    let path = file.path().to_str().expect("UTF-8 path").to_owned();
    let out = common::run_python(py, "scenario.py", &["--batch", &path], None);
    let pids: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).expect("pid lists");
    assert_eq!(pids.len(), runs.len(), "pid lists");
    pids
}

/// One Python scenario run (see [`python_batch`]).
fn python_run(py: &Path, dir: &Path, scenario: &Value) -> Vec<u32> {
    python_batch(py, &[(dir, scenario)]).remove(0)
}

/// Python's `MultiProcessCollector` on each directory, in one interpreter.
const PY_COLLECT_MANY: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import collect
from prometheus_client.multiprocess import MultiProcessCollector
for d in json.loads(sys.stdin.buffer.read().decode("utf-8")):
    try:
        print(collect.families_json(list(MultiProcessCollector(None, path=d).collect())))
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
"#;

fn python_command(py: &Path, script: &str) -> Command {
    let mut cmd = Command::new(py);
    cmd.arg("-c")
        .arg(script)
        .arg(common::repo_root().join("tests/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUTF8", "1")
        .env_remove("PROMETHEUS_MULTIPROC_DIR")
        .env_remove("prometheus_multiproc_dir");
    cmd
}

/// Python's scrape of each of `dirs`; an error names the exception Python raised.
fn python_collect_many(py: &Path, dirs: &[&Path]) -> Vec<Result<Vec<PyFamily>, String>> {
    let request: Vec<&str> = dirs
        .iter()
        .map(|d| d.to_str().expect("UTF-8 path"))
        .collect();
    let out = common::run_command(
        python_command(py, PY_COLLECT_MANY),
        Some(json!(request).to_string().as_bytes()),
    );
    assert!(
        out.status.success(),
        "Python collector failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<_> = std::str::from_utf8(&out.stdout)
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
        .collect();
    assert_eq!(results.len(), dirs.len(), "Python collector output lines");
    results
}

/// Workers for what `scenario.py` does not do: metrics created by the parent before it forks
/// (`"parent_metrics": true`), and a first worker that takes over the files of another pid
/// (`"adopt": PID`) by renaming them to its own pid before it creates its metrics. Workers are
/// forks of this interpreter, run one after another and stay unreaped until all have run.
/// Prints `{"parent": PID, "pids": [...]}`.
const PY_WORKERS: &str = r#"
import json, os, sys, traceback
sys.path.insert(0, sys.argv[1])
import scenario as sc

req = json.loads(sys.stdin.buffer.read().decode("utf-8"))
directory = req["dir"]
scn = sc.validate_scenario(req["scenario"])
os.environ.pop("prometheus_multiproc_dir", None)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
import prometheus_client
from prometheus_client.multiprocess import mark_process_dead


def make_metrics():
    metrics = []
    for m in scn.get("metrics", []):
        name, doc, typ = m["name"], m.get("help", ""), m["type"]
        labels = list(m.get("labels", []))
        if typ == "counter":
            metric = prometheus_client.Counter(name, doc, labels, registry=None)
        elif typ == "gauge":
            metric = prometheus_client.Gauge(name, doc, labels, registry=None,
                                             multiprocess_mode=m.get("mode", "all"))
        elif typ == "histogram":
            kwargs = {}
            if "buckets" in m:
                kwargs["buckets"] = [sc.to_float(b) for b in m["buckets"]]
            metric = prometheus_client.Histogram(name, doc, labels, registry=None, **kwargs)
        else:
            metric = prometheus_client.Summary(name, doc, labels, registry=None)
        metrics.append(metric)
    return metrics


def target(metrics, op):
    values = list(op.get("labels", []))
    metric = metrics[op["metric"]]
    return metric.labels(*values) if values else metric


def apply(metrics, proc):
    for op in proc.get("ops", []):
        child = target(metrics, op)
        name = op["op"]
        if name == "set_to_current_time":
            child.set_to_current_time()
        elif name in ("inc", "dec"):
            getattr(child, name)(sc.to_float(op.get("value", 1)))
        else:
            getattr(child, name)(sc.to_float(op["value"]))


inherited = None
if req.get("parent_metrics"):
    inherited = make_metrics()
    for proc in scn.get("processes", []):
        for op in proc.get("ops", []):
            target(inherited, op)
adopt = req.get("adopt")

children, pids, status = [], [], 0
try:
    for index, proc in enumerate(scn.get("processes", [])):
        if proc.get("threads", 1) != 1:
            sc.die("threads are not supported here")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.dup2(2, 1)
                if adopt is not None and index == 0:
                    suffix = f"_{adopt}.db"
                    for name in os.listdir(directory):
                        if name.endswith(suffix):
                            os.rename(os.path.join(directory, name),
                                      os.path.join(directory, name[:-len(suffix)] + f"_{os.getpid()}.db"))
                apply(inherited if inherited is not None else make_metrics(), proc)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        children.append(pid)
        info = sc.wait_exited_keep_pid(pid)
        if info is not None and not (info.si_code == os.CLD_EXITED and info.si_status == 0):
            print(f"worker {index} failed", file=sys.stderr)
            status = 1
            break
        pids.append(pid)
        if proc.get("dead", False):
            mark_process_dead(pid, directory)
finally:
    for pid in children:
        os.waitpid(pid, 0)
if status:
    sys.exit(status)
print(json.dumps({"parent": os.getpid(), "pids": pids}))
"#;

/// Runs [`PY_WORKERS`]; the parent's pid and the workers' pids.
fn python_workers(py: &Path, request: &Value) -> (u32, Vec<u32>) {
    let out = common::run_command(
        python_command(py, PY_WORKERS),
        Some(request.to_string().as_bytes()),
    );
    assert!(
        out.status.success(),
        "Python workers failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("pids");
    let parent = v["parent"].as_u64().expect("parent pid") as u32;
    let pids = v["pids"]
        .as_array()
        .expect("pid list")
        .iter()
        .map(|p| p.as_u64().expect("pid") as u32)
        .collect();
    (parent, pids)
}

// ---------------------------------------------------------------- scrapes and comparisons

/// Our scrape of `dir`; no file may be reported bad.
fn scrape_ours(dir: &Path) -> Vec<PyFamily> {
    let scrape = Collector::new(dir)
        .self_metrics(false)
        .collect()
        .unwrap_or_else(|e| panic!("collect {}: {e}", dir.display()));
    assert!(
        scrape.bad_files.is_empty(),
        "files reported bad in {}: {:?}",
        dir.display(),
        scrape.bad_files
    );
    common::py_families(&scrape.families)
}

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

/// Names for pids: `p0`, `p1`, ... for the workers in order, `parent` for the parent.
fn pid_names(pids: &[u32], parent: Option<u32>) -> HashMap<String, String> {
    let mut names: HashMap<String, String> = pids
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), format!("p{i}")))
        .collect();
    if let Some(p) = parent {
        names.insert(p.to_string(), "parent".into());
    }
    names
}

/// `families` with each `pid` label value replaced by its name (an unknown pid stays, marked).
fn rename_pids(families: &[PyFamily], names: &HashMap<String, String>) -> Vec<PyFamily> {
    let mut out = families.to_vec();
    for s in out.iter_mut().flat_map(|f| f.samples.iter_mut()) {
        if let Some(pid) = s.labels.get_mut("pid") {
            *pid = names
                .get(pid.as_str())
                .cloned()
                .unwrap_or_else(|| format!("unknown pid {pid}"));
        }
    }
    out
}

/// The worker pids of a Rust and a Python run of one scenario, and their parents' where the
/// parents wrote files too.
#[derive(Debug, Clone, Default)]
struct Pids {
    rust: Vec<u32>,
    python: Vec<u32>,
    rust_parent: Option<u32>,
    python_parent: Option<u32>,
}

/// A directory written by Rust workers and one written by Python workers, each scraped by
/// both collectors.
struct Scrapes {
    pids: Pids,
    ours_rust: Vec<PyFamily>,
    theirs_rust: Vec<PyFamily>,
    ours_python: Vec<PyFamily>,
    theirs_python: Vec<PyFamily>,
}

impl Scrapes {
    /// The four scrapes with pids renamed, in the order ours/Rust, Python's/Rust,
    /// ours/Python, Python's/Python.
    fn renamed(&self) -> [Vec<PyFamily>; 4] {
        let rust = pid_names(&self.pids.rust, self.pids.rust_parent);
        let python = pid_names(&self.pids.python, self.pids.python_parent);
        [
            rename_pids(&self.ours_rust, &rust),
            rename_pids(&self.theirs_rust, &rust),
            rename_pids(&self.ours_python, &python),
            rename_pids(&self.theirs_python, &python),
        ]
    }

    /// Checks that the four scrapes agree: each collector with the other on each directory
    /// (within an ulp, as Python may sum in another order), and each collector with itself
    /// across the directories (bit for bit). Returns Python's scrape of the Rust directory,
    /// pids renamed.
    fn check(&self, what: &dyn Fn() -> String, require_samples: bool) -> Vec<PyFamily> {
        let [ours_rust, theirs_rust, ours_python, theirs_python] = self.renamed();
        let pairs: [(&str, &[PyFamily], &[PyFamily], u64); 4] = [
            (
                "our scrape of the Rust workers' directory differs from Python's scrape of it",
                &ours_rust,
                &theirs_rust,
                1,
            ),
            (
                "our scrape of the Python workers' directory differs from Python's scrape of it",
                &ours_python,
                &theirs_python,
                1,
            ),
            (
                "our scrapes differ between the Rust workers' directory (ours) and the Python workers' (theirs)",
                &ours_rust,
                &ours_python,
                // Files merge in name order, which depends on the pids: sums over processes may
                // be added in another order in each directory.
                CROSS_DIR_ULPS,
            ),
            (
                "Python's scrapes differ between the Rust workers' directory (ours) and the Python workers' (theirs)",
                &theirs_rust,
                &theirs_python,
                CROSS_DIR_ULPS,
            ),
        ];
        for (title, a, b, ulps) in pairs {
            with_context(
                || format!("{}\n{title}", what()),
                || common::assert_same_samples_with(a, b, "", ulps),
            );
        }
        assert!(
            !require_samples || theirs_python.iter().any(|f| !f.samples.is_empty()),
            "{}\nPython's scrape is empty: the scenario tests nothing",
            what()
        );
        theirs_rust
    }
}

/// Ulps allowed between the scrapes of two directories: their processes' files are read in
/// another order, so float sums over processes may round differently.
const CROSS_DIR_ULPS: u64 = 16;

/// Scrapes `rust_dir` and `python_dir` with both collectors.
fn scrape_pair(py: &Path, rust_dir: &Path, python_dir: &Path, pids: Pids) -> Scrapes {
    let mut theirs = python_collect_many(py, &[rust_dir, python_dir]);
    let theirs_python = theirs
        .pop()
        .expect("two scrapes")
        .unwrap_or_else(|e| panic!("Python cannot scrape the Python workers' directory: {e}"));
    let theirs_rust = theirs
        .pop()
        .expect("two scrapes")
        .unwrap_or_else(|e| panic!("Python cannot scrape the Rust workers' directory: {e}"));
    Scrapes {
        pids,
        ours_rust: scrape_ours(rust_dir),
        theirs_rust,
        ours_python: scrape_ours(python_dir),
        theirs_python,
    }
}

/// The directories of a scenario run by Rust and by Python workers, and the Rust workers
/// (alive until this drops).
struct Pair {
    rust_dir: tempfile::TempDir,
    python_dir: tempfile::TempDir,
    _rust_workers: Workers,
}

/// Runs `scenario` with Rust workers (set up as `setup`, which creates the metrics in the
/// workers) and with Python workers, and checks that the four scrapes agree; returns Python's
/// scrape of the Rust directory, pids renamed.
fn check_same(py: &Path, scenario: &Value, setup: Setup) -> (Pair, Vec<PyFamily>) {
    assert_ne!(setup, Setup::ParentMetrics, "see run_parent_metrics");
    let rust_dir = tempfile::tempdir().expect("tempdir");
    let python_dir = tempfile::tempdir().expect("tempdir");
    let python = python_run(py, python_dir.path(), scenario);
    let workers = run_rust_scenario(rust_dir.path(), scenario, setup);
    let pids = Pids {
        rust: workers.pids.clone(),
        python,
        ..Pids::default()
    };
    let scrapes = scrape_pair(py, rust_dir.path(), python_dir.path(), pids);
    let theirs = scrapes.check(&|| format!("setup {setup:?}, scenario: {scenario:#}"), true);
    let pair = Pair {
        rust_dir,
        python_dir,
        _rust_workers: workers,
    };
    (pair, theirs)
}

/// The value of a sample in `families`; panics if there is none.
fn value(families: &[PyFamily], name: &str, labels: &[(&str, &str)]) -> f64 {
    common::sample_value(families, name, labels)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

/// The set of `pid` label values of the samples named `name`.
fn pid_labels(families: &[PyFamily], name: &str) -> BTreeSet<String> {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .filter_map(|s| s.labels.get("pid").cloned())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

// ---------------------------------------------------------------- every type and mode

/// Every metric type, all ten gauge modes (labelled and not), histograms with default and
/// custom buckets, labelled children, four processes of which two are marked dead.
fn every_type_and_mode() -> Value {
    let mut metrics = vec![
        json!({"type": "counter", "name": "requests_total", "help": "Requests served.", "labels": ["method", "path"]}),
        json!({"type": "counter", "name": "plain", "help": ""}),
        json!({"type": "histogram", "name": "latency_seconds", "help": "Default buckets.", "labels": ["route"]}),
        json!({"type": "histogram", "name": "sizes", "help": "Custom buckets.", "buckets": [-2.0, 0.0, 0.125, 1.0, 1e6]}),
        json!({"type": "summary", "name": "payload_bytes", "help": "Payloads.", "labels": ["kind"]}),
        json!({"type": "summary", "name": "plain_summary", "help": "Unlabelled."}),
    ];
    let first_gauge = metrics.len();
    for mode in common::GAUGE_MODES {
        metrics.push(json!({"type": "gauge", "name": format!("g_{mode}"),
            "help": format!("Gauge in {mode} mode."), "labels": ["worker"], "mode": mode}));
    }
    let first_unlabelled = metrics.len();
    for mode in common::GAUGE_MODES {
        metrics
            .push(json!({"type": "gauge", "name": format!("u_{mode}"), "help": "", "mode": mode}));
    }
    let per_process = [(5.0, false), (-2.5, true), (11.25, false), (40.0, true)];
    let processes: Vec<Value> = per_process
        .iter()
        .enumerate()
        .map(|(p, &(v, dead))| {
            let own = format!("p{p}");
            let mut ops = vec![
                op0(0, &["GET", "/"], "inc"),
                op(0, &["POST", "/users/{id}"], "inc", 2.5 * (p + 1) as f64),
                op0(1, &[], "inc"),
                op(1, &[], "inc", 0.25),
                op(2, &["/"], "observe", 0.25 * p as f64),
                op(2, &["/"], "observe", 10.0),
                op(2, &[&own], "observe", 11.0),
                op(3, &[], "observe", -2.0),
                op(3, &[], "observe", 0.125),
                op(3, &[], "observe", 2e6),
                op(3, &[], "observe", v),
                op(4, &["json"], "observe", 1024.0 * p as f64),
                op(4, &[&own], "observe", 0.5),
                op(5, &[], "observe", v),
            ];
            for (i, mode) in common::GAUGE_MODES.iter().enumerate() {
                let m = first_gauge + i;
                ops.push(op(m, &["shared"], "set", v));
                if mode.contains("mostrecent") {
                    ops.push(op(m, &[&own], "set", v * 2.0));
                } else {
                    ops.push(op(m, &[&own], "inc", v));
                    ops.push(op0(m, &[&own], "inc"));
                    ops.push(op(m, &[&own], "dec", 0.5));
                    ops.push(op0(m, &[&own], "dec"));
                }
                // The unlabelled gauges: set by every process but the second, which only
                // creates them (value 0, and no timestamp for the mostrecent ones).
                if p != 1 {
                    ops.push(op(first_unlabelled + i, &[], "set", 3.0 * p as f64 + 1.0));
                }
            }
            json!({"ops": ops, "dead": dead})
        })
        .collect();
    scenario(json!(metrics), json!(processes))
}

#[test]
fn rust_and_python_workers_give_the_same_scrape_for_every_type_and_gauge_mode() {
    let Some(py) = common::python() else { return };
    let s = every_type_and_mode();
    for setup in [Setup::ChildRegistry, Setup::ParentRegistry] {
        let (pair, theirs) = check_same(&py, &s, setup);
        let shared = [("worker", "shared")];
        assert_eq!(value(&theirs, "g_min", &shared), -2.5);
        assert_eq!(value(&theirs, "g_livemin", &shared), 5.0);
        assert_eq!(value(&theirs, "g_max", &shared), 40.0);
        assert_eq!(value(&theirs, "g_livemax", &shared), 11.25);
        assert_eq!(value(&theirs, "g_sum", &shared), 53.75);
        assert_eq!(value(&theirs, "g_livesum", &shared), 16.25);
        assert_eq!(value(&theirs, "g_mostrecent", &shared), 40.0);
        assert_eq!(value(&theirs, "g_livemostrecent", &shared), 11.25);
        assert_eq!(value(&theirs, "g_sum", &[("worker", "p1")]), -3.0);
        assert_eq!(value(&theirs, "g_mostrecent", &[("worker", "p3")]), 80.0);
        assert_eq!(
            pid_labels(&theirs, "g_all"),
            names(&["p0", "p1", "p2", "p3"])
        );
        assert_eq!(pid_labels(&theirs, "g_liveall"), names(&["p0", "p2"]));
        assert_eq!(pid_labels(&theirs, "u_liveall"), names(&["p0", "p2"]));
        assert_eq!(value(&theirs, "u_sum", &[]), 18.0);
        assert_eq!(value(&theirs, "u_livesum", &[]), 8.0);
        assert_eq!(value(&theirs, "u_min", &[]), 0.0);
        assert_eq!(value(&theirs, "u_max", &[]), 10.0);
        assert_eq!(value(&theirs, "u_mostrecent", &[]), 10.0);
        assert_eq!(value(&theirs, "u_livemostrecent", &[]), 7.0);
        assert_eq!(
            value(
                &theirs,
                "requests_total",
                &[("method", "GET"), ("path", "/")]
            ),
            4.0
        );
        assert_eq!(value(&theirs, "plain_total", &[]), 5.0);
        assert_eq!(
            value(&theirs, "latency_seconds_count", &[("route", "/")]),
            8.0
        );
        assert_eq!(
            value(
                &theirs,
                "latency_seconds_bucket",
                &[("route", "/"), ("le", "0.25")]
            ),
            2.0
        );
        assert_eq!(value(&theirs, "sizes_bucket", &[("le", "-2.0")]), 5.0);
        assert_eq!(value(&theirs, "sizes_bucket", &[("le", "1e+06")]), 12.0);
        assert_eq!(value(&theirs, "sizes_count", &[]), 16.0);
        assert_eq!(value(&theirs, "plain_summary_sum", &[]), 53.75);
        // The live modes dropped the dead processes' files, in both directories alike.
        for dir in [pair.rust_dir.path(), pair.python_dir.path()] {
            for mode in common::GAUGE_MODES {
                let files = std::fs::read_dir(dir)
                    .expect("list dir")
                    .filter(|e| {
                        e.as_ref()
                            .expect("entry")
                            .file_name()
                            .to_string_lossy()
                            .starts_with(&format!("gauge_{mode}_"))
                    })
                    .count();
                let want = if mode.starts_with("live") { 2 } else { 4 };
                assert_eq!(files, want, "files of mode {mode} in {}", dir.display());
            }
        }
    }
}

#[test]
fn special_characters_in_label_values_and_help_are_written_like_python() {
    let Some(py) = common::python() else { return };
    let helps = [
        "Help with \"quotes\".",
        "Back\\slash and \\n literal",
        "Multi\nline\nhelp",
        "Ünïcödé hélp ✓",
        "Astral 😀 𝄞 help",
        "Ends with a backslash \\",
        "{braces}, commas = signs # and hashes",
        "",
    ];
    let metrics: Vec<Value> = helps
        .iter()
        .enumerate()
        .map(|(i, help)| {
            let typ = ["counter", "gauge", "histogram", "summary"][i % 4];
            let mut m = json!({"type": typ, "name": format!("esc_{typ}_{i}"), "help": help, "labels": ["v", "w"]});
            if typ == "gauge" {
                m["mode"] = json!(["all", "mostrecent"][i / 4]);
            }
            m
        })
        .collect();
    let processes: Vec<Value> = (0..2)
        .map(|p| {
            let mut ops = Vec::new();
            for i in 0..helps.len() {
                for (j, v) in NASTY.iter().enumerate() {
                    let w = NASTY[(j + p + 1) % NASTY.len()];
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
    let (_, theirs) = check_same(
        &py,
        &scenario(json!(metrics), json!(processes)),
        Setup::ChildRegistry,
    );
    let seen: BTreeSet<&str> = theirs
        .iter()
        .flat_map(|f| &f.samples)
        .filter_map(|s| s.labels.get("v").map(String::as_str))
        .collect();
    for v in NASTY {
        assert!(seen.contains(v), "label value {v:?} missing");
    }
    let helps_seen: BTreeSet<&str> = theirs.iter().map(|f| f.help.as_str()).collect();
    for h in helps {
        assert!(helps_seen.contains(h), "help {h:?} missing");
    }
}

#[test]
fn nan_and_infinities_written_by_rust_merge_like_pythons() {
    let Some(py) = common::python() else { return };
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    let metrics = json!([
        {"type": "counter", "name": "odd_counter", "help": "NaN and inf.", "labels": ["k"]},
        {"type": "gauge", "name": "odd_all", "help": "All.", "labels": ["k"], "mode": "all"},
        {"type": "gauge", "name": "odd_sum", "help": "Sum.", "labels": ["k"], "mode": "sum"},
        // min/max: NaN only where a single process sets the series; infinities anywhere.
        {"type": "gauge", "name": "odd_min", "help": "Min.", "labels": ["k"], "mode": "min"},
        {"type": "gauge", "name": "odd_max", "help": "Max.", "labels": ["k"], "mode": "livemax"},
        {"type": "gauge", "name": "odd_recent", "help": "Most recent.", "labels": ["k"], "mode": "mostrecent"},
        {"type": "histogram", "name": "odd_hist", "help": "Histogram.", "labels": ["k"], "buckets": [0.0, 1.0]},
        {"type": "summary", "name": "odd_summary", "help": "Summary.", "labels": ["k"]},
        {"type": "histogram", "name": "inf_bounds", "help": "Explicit +Inf bound.", "buckets": ["-Infinity", 1.0, "Infinity"]},
    ]);
    let gauge_ops = |p: usize, v: f64, w: f64| -> Vec<Value> {
        let mut ops = vec![
            op(1, &["a"], "set", v),
            op(2, &["a"], "set", v),
            op(2, &["b"], "set", w),
            op(2, &["c"], "inc", w),
            op(2, &["c"], "dec", w),
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
        op(8, &[], "observe", -inf),
        op(8, &[], "observe", inf),
    ];
    first.extend(gauge_ops(0, nan, inf));
    let mut second = vec![
        op(0, &["mixed"], "inc", 1.0),
        op(6, &["c"], "observe", inf),
        op(6, &["a"], "observe", 0.5),
        op(7, &["b"], "observe", -inf),
        op(8, &[], "observe", 0.5),
    ];
    second.extend(gauge_ops(1, inf, -inf));
    let processes = json!([
        {"ops": first},
        {"ops": second},
        {"ops": gauge_ops(2, -inf, 1.0), "dead": true},
    ]);
    let (_, theirs) = check_same(&py, &scenario(metrics, processes), Setup::ChildRegistry);
    assert!(value(&theirs, "odd_counter_total", &[("k", "nan")]).is_nan());
    assert_eq!(value(&theirs, "odd_counter_total", &[("k", "mixed")]), inf);
    assert!(value(&theirs, "odd_sum", &[("k", "a")]).is_nan());
    assert!(value(&theirs, "odd_sum", &[("k", "c")]).is_nan());
    assert_eq!(value(&theirs, "odd_min", &[("k", "inf")]), -inf);
    assert!(value(&theirs, "odd_min", &[("k", "only0")]).is_nan());
    assert_eq!(value(&theirs, "odd_recent", &[("k", "a")]), -inf);
    assert!(value(&theirs, "odd_hist_sum", &[("k", "c")]).is_nan());
    assert_eq!(value(&theirs, "odd_hist_count", &[("k", "a")]), 1.0);
    assert!(value(&theirs, "odd_summary_sum", &[("k", "b")]).is_nan());
    assert_eq!(value(&theirs, "inf_bounds_bucket", &[("le", "-Inf")]), 1.0);
    assert_eq!(value(&theirs, "inf_bounds_count", &[]), 3.0);
}

#[test]
fn set_to_current_time_writes_the_clock_like_python() {
    let Some(py) = common::python() else { return };
    let modes = [
        "all",
        "liveall",
        "min",
        "max",
        "mostrecent",
        "livemostrecent",
    ];
    let metrics: Vec<Value> = modes
        .iter()
        .map(|mode| json!({"type": "gauge", "name": format!("t_{mode}"), "help": "Clock.", "labels": ["k"], "mode": mode}))
        .collect();
    let processes: Vec<Value> = (0..3)
        .map(|p| {
            let ops: Vec<Value> = (0..modes.len())
                .flat_map(|m| {
                    [
                        op0(m, &["now"], "set_to_current_time"),
                        op(m, &["fixed"], "set", p as f64),
                        op0(m, &["fixed"], "set_to_current_time"),
                        op(m, &["fixed"], "set", 8.0 + p as f64),
                    ]
                })
                .collect();
            json!({"ops": ops, "dead": p == 1})
        })
        .collect();
    let s = scenario(json!(metrics), json!(processes));
    let rust_dir = tempfile::tempdir().expect("tempdir");
    let python_dir = tempfile::tempdir().expect("tempdir");
    let start = now();
    let rust_workers = run_rust_scenario(rust_dir.path(), &s, Setup::ParentRegistry);
    let python_pids = python_run(&py, python_dir.path(), &s);
    let end = now();
    let pids = Pids {
        rust: rust_workers.pids.clone(),
        python: python_pids,
        ..Pids::default()
    };
    let scrapes = scrape_pair(&py, rust_dir.path(), python_dir.path(), pids);
    // The clock readings differ between the directories: check each lies within the run,
    // then compare everything with them replaced by 0.
    let mut renamed = scrapes.renamed();
    let mut clocks = 0;
    for families in &mut renamed {
        for s in families.iter_mut().flat_map(|f| f.samples.iter_mut()) {
            if s.labels.get("k").map(String::as_str) == Some("now") {
                assert!(
                    (start..=end).contains(&s.value),
                    "{} {:?} = {} is not a time within the run [{start}, {end}]",
                    s.name,
                    s.labels,
                    s.value
                );
                s.value = 0.0;
                clocks += 1;
            }
        }
    }
    // all: 3 pids, liveall: 2, min, max, mostrecent, livemostrecent: 1 each; four scrapes.
    assert_eq!(clocks, 4 * (3 + 2 + 4));
    let [ours_rust, theirs_rust, ours_python, theirs_python] = renamed;
    common::assert_same_samples_with(&ours_rust, &theirs_rust, "", 0);
    common::assert_same_samples_with(&ours_python, &theirs_python, "", 0);
    common::assert_same_samples_with(&ours_rust, &ours_python, "", 0);
    common::assert_same_samples_with(&theirs_rust, &theirs_python, "", 0);
    assert_eq!(value(&theirs_rust, "t_mostrecent", &[("k", "fixed")]), 10.0);
    assert_eq!(value(&theirs_rust, "t_max", &[("k", "fixed")]), 10.0);
    assert_eq!(value(&theirs_rust, "t_min", &[("k", "fixed")]), 8.0);
}

#[test]
fn threaded_rust_workers_count_like_threaded_python_workers() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "counter", "name": "threaded", "help": "Incremented by threads.", "labels": ["t"]},
        {"type": "gauge", "name": "threaded_gauge", "help": "Threads.", "mode": "livesum"},
        {"type": "gauge", "name": "threaded_all", "help": "Threads.", "mode": "all"},
        {"type": "histogram", "name": "threaded_seconds", "help": "Threads.", "buckets": [0.5, 2.0]},
        {"type": "summary", "name": "threaded_summary", "help": "Threads."},
        {"type": "gauge", "name": "threaded_recent", "help": "Threads.", "labels": ["t"], "mode": "mostrecent"},
    ]);
    let ops: Vec<Value> = (0..300)
        .flat_map(|i| {
            [
                op(0, &[["x", "y"][i % 2]], "inc", 0.25),
                op0(1, &[], "inc"),
                op(2, &[], "dec", 0.5),
                op(3, &[], "observe", (i % 5) as f64 * 0.5),
                op(4, &[], "observe", 2.0),
                op(5, &[["x", "y"][i % 2]], "set", i as f64),
            ]
        })
        .collect();
    let processes = json!([
        {"ops": ops, "threads": 4},
        {"ops": ops, "threads": 3, "dead": true},
        {"ops": ops[..60], "threads": 2},
    ]);
    let (_, theirs) = check_same(&py, &scenario(metrics, processes), Setup::ParentRegistry);
    assert_eq!(
        value(&theirs, "threaded_total", &[("t", "x")]),
        37.5 * 4.0 + 37.5 * 3.0 + 1.25 * 2.0
    );
    assert_eq!(
        value(&theirs, "threaded_gauge", &[]),
        300.0 * 4.0 + 10.0 * 2.0
    );
    assert_eq!(value(&theirs, "threaded_recent", &[("t", "y")]), 9.0);
}

// ---------------------------------------------------------------- Python reads Rust

#[test]
fn python_collector_reads_a_directory_written_only_by_rust_workers() {
    let Some(py) = common::python() else { return };
    // Many families, children and processes, big enough for files past 64 KiB.
    let metrics = json!([
        {"type": "counter", "name": "http_requests_total", "help": "Requests.", "labels": ["method", "path", "code"]},
        {"type": "gauge", "name": "in_flight", "help": "In flight.", "labels": ["method"], "mode": "livesum"},
        {"type": "gauge", "name": "worker_info", "help": "Per worker.", "mode": "all"},
        {"type": "gauge", "name": "last_seen", "help": "Last seen.", "labels": ["path"], "mode": "mostrecent"},
        {"type": "histogram", "name": "db_seconds", "help": "DB time.", "labels": ["table"], "buckets": [0.25, 1.0, 4.0]},
        {"type": "summary", "name": "batch_size", "help": "Batch size.", "labels": ["queue"]},
    ]);
    let padding = "x".repeat(48);
    let processes: Vec<Value> = (0..6)
        .map(|p| {
            let mut ops = Vec::new();
            for i in 0..(if p == 0 { 700 } else { 40 }) {
                let path = format!("/item/{i}/{padding}");
                ops.push(op(0, &["GET", &path, "200"], "inc", (i % 3 + 1) as f64));
                ops.push(op(3, &[&path], "set", (p * 1000 + i) as f64));
            }
            ops.push(op(1, &["GET"], "inc", 3.0));
            ops.push(op(1, &["GET"], "dec", 1.0));
            ops.push(op(2, &[], "set", p as f64));
            ops.push(op(4, &["users"], "observe", 0.5 * p as f64));
            ops.push(op(5, &["mail"], "observe", 16.0));
            json!({"ops": ops, "dead": p % 2 == 1})
        })
        .collect();
    let s = scenario(metrics, json!(processes));
    let dir = tempfile::tempdir().expect("tempdir");
    let workers = run_rust_scenario(dir.path(), &s, Setup::ChildRegistry);
    let pids = workers.pids.clone();
    let largest = std::fs::read_dir(dir.path())
        .expect("list dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .max()
        .unwrap_or(0);
    assert!(largest > 64 * 1024, "largest file is only {largest} bytes");

    let theirs = python_collect_many(&py, &[dir.path()])
        .remove(0)
        .unwrap_or_else(|e| panic!("Python cannot scrape the Rust workers' directory: {e}"));
    let ours = scrape_ours(dir.path());
    common::assert_same_samples(&ours, &theirs, "");
    // Python's whole scrape path (its exposition) works on it too, and parses back the same.
    let text = common::python_collect_text(&py, dir.path());
    let parsed = common::python_parse(&py, "text", &text);
    common::assert_same_samples(&parsed, &theirs, "");

    let names = pid_names(&pids, None);
    let theirs = rename_pids(&theirs, &names);
    assert_eq!(
        pid_labels(&theirs, "worker_info"),
        names_of(&pids, |_| true)
    );
    assert_eq!(value(&theirs, "worker_info", &[("pid", "p5")]), 5.0);
    assert_eq!(value(&theirs, "in_flight", &[("method", "GET")]), 6.0);
    assert_eq!(
        value(
            &theirs,
            "http_requests_total",
            &[
                ("method", "GET"),
                ("path", &format!("/item/1/{padding}")),
                ("code", "200")
            ]
        ),
        12.0
    );
    assert_eq!(
        value(
            &theirs,
            "last_seen",
            &[("path", &format!("/item/3/{padding}"))]
        ),
        5003.0
    );
    assert_eq!(
        value(
            &theirs,
            "last_seen",
            &[("path", &format!("/item/300/{padding}"))]
        ),
        300.0
    );
    assert_eq!(
        value(&theirs, "db_seconds_count", &[("table", "users")]),
        6.0
    );
    assert_eq!(
        value(
            &theirs,
            "db_seconds_bucket",
            &[("table", "users"), ("le", "1.0")]
        ),
        3.0
    );
    assert_eq!(value(&theirs, "batch_size_sum", &[("queue", "mail")]), 96.0);
}

fn names_of(pids: &[u32], keep: impl Fn(usize) -> bool) -> BTreeSet<String> {
    (0..pids.len())
        .filter(|i| keep(*i))
        .map(|i| format!("p{i}"))
        .collect()
}

// ---------------------------------------------------------------- mixed directories

#[test]
fn mixed_directory_of_rust_and_python_workers_merges_to_the_right_totals() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "counter", "name": "jobs_total", "help": "Jobs.", "labels": ["queue"]},
        {"type": "gauge", "name": "busy", "help": "Busy.", "mode": "livesum"},
        {"type": "gauge", "name": "peak", "help": "Peak.", "labels": ["queue"], "mode": "max"},
        {"type": "gauge", "name": "per_worker", "help": "Per worker.", "mode": "liveall"},
        {"type": "gauge", "name": "latest", "help": "Latest.", "mode": "mostrecent"},
        {"type": "gauge", "name": "latest_live", "help": "Latest live.", "mode": "livemostrecent"},
        {"type": "histogram", "name": "job_seconds", "help": "Job time.", "labels": ["queue"]},
        {"type": "summary", "name": "job_bytes", "help": "Job size.", "labels": ["queue"]},
    ]);
    let processes: Vec<Value> = (0..6)
        .map(|p| {
            let v = p as f64;
            json!({"ops": [
                op(0, &["mail"], "inc", 1.0 + v),
                op0(0, &[&format!("q{}", p % 2)], "inc"),
                op(1, &[], "inc", 2.0),
                op0(1, &[], "dec"),
                op(2, &["mail"], "set", [3.0, 9.5, 1.0, 7.0, 2.0, 4.0][p]),
                op(3, &[], "set", 10.0 * v),
                op(4, &[], "set", 100.0 + v),
                op(5, &[], "set", 200.0 + v),
                op(6, &["mail"], "observe", 0.25 * v),
                op(7, &["mail"], "observe", 1024.0),
            ], "dead": p == 3 || p == 5})
        })
        .collect();
    let s = scenario(metrics.clone(), json!(processes));
    let only = |range: std::ops::Range<usize>| scenario(metrics.clone(), json!(processes[range]));

    // Processes 0, 1: Rust; 2: Python; 3, 4: Rust (parent registry); 5: Python.
    let mixed = tempfile::tempdir().expect("tempdir");
    let first = run_rust_scenario(mixed.path(), &only(0..2), Setup::ChildRegistry);
    let mut pids = first.pids.clone();
    pids.extend(python_run(&py, mixed.path(), &only(2..3)));
    let second = run_rust_scenario(mixed.path(), &only(3..5), Setup::ParentRegistry);
    pids.extend(&second.pids);
    pids.extend(python_run(&py, mixed.path(), &only(5..6)));
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 6, "pids {pids:?}");

    let python_dir = tempfile::tempdir().expect("tempdir");
    let python_pids = python_run(&py, python_dir.path(), &s);
    let mut theirs = python_collect_many(&py, &[mixed.path(), python_dir.path()]);
    let theirs_python = theirs.pop().expect("two").expect("Python scrape");
    let theirs_mixed = theirs
        .pop()
        .expect("two")
        .unwrap_or_else(|e| panic!("Python cannot scrape the mixed directory: {e}"));
    let ours_mixed = scrape_ours(mixed.path());
    common::assert_same_samples(&ours_mixed, &theirs_mixed, "");
    let mixed_names = pid_names(&pids, None);
    let theirs_mixed = rename_pids(&theirs_mixed, &mixed_names);
    common::assert_same_samples_with(
        &theirs_mixed,
        &rename_pids(&theirs_python, &pid_names(&python_pids, None)),
        "",
        0,
    );
    common::assert_same_samples_with(
        &rename_pids(&ours_mixed, &mixed_names),
        &theirs_mixed,
        "",
        0,
    );

    assert_eq!(
        value(&theirs_mixed, "jobs_total", &[("queue", "mail")]),
        21.0
    );
    assert_eq!(value(&theirs_mixed, "jobs_total", &[("queue", "q1")]), 3.0);
    assert_eq!(value(&theirs_mixed, "busy", &[]), 4.0);
    assert_eq!(value(&theirs_mixed, "peak", &[("queue", "mail")]), 9.5);
    assert_eq!(
        pid_labels(&theirs_mixed, "per_worker"),
        names(&["p0", "p1", "p2", "p4"])
    );
    assert_eq!(value(&theirs_mixed, "per_worker", &[("pid", "p4")]), 40.0);
    assert_eq!(value(&theirs_mixed, "latest", &[]), 105.0);
    assert_eq!(value(&theirs_mixed, "latest_live", &[]), 204.0);
    assert_eq!(
        value(&theirs_mixed, "job_seconds_count", &[("queue", "mail")]),
        6.0
    );
    assert_eq!(
        value(&theirs_mixed, "job_seconds_sum", &[("queue", "mail")]),
        3.75
    );
    assert_eq!(
        value(
            &theirs_mixed,
            "job_seconds_bucket",
            &[("queue", "mail"), ("le", "0.5")]
        ),
        3.0
    );
    assert_eq!(
        value(&theirs_mixed, "job_bytes_sum", &[("queue", "mail")]),
        6144.0
    );
}

// ---------------------------------------------------------------- byte-level comparison

/// The files of `dir` by name without the pid (`counter`, `gauge_livesum`, ...).
fn files_by_kind(dir: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    files_by(dir, None)
}

/// The files of `dir` by name with the pid replaced by its name in `names` (`p0/counter`,
/// `parent/gauge_all`, ...), or left out when `names` is `None`. Panics on two files of one key.
fn files_by(
    dir: &Path,
    names: Option<&HashMap<String, String>>,
) -> BTreeMap<String, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("list dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".db") {
            continue;
        }
        let parsed =
            FileName::parse(&name).unwrap_or_else(|e| panic!("unexpected file {name}: {e:?}"));
        let mut kind = match parsed.mode {
            Some(m) => format!("{}_{}", parsed.kind.as_str(), m.as_str()),
            None => parsed.kind.as_str().to_owned(),
        };
        if let Some(names) = names {
            let role = names
                .get(&parsed.pid)
                .unwrap_or_else(|| panic!("{name}: unknown pid"));
            kind = format!("{role}/{kind}");
        }
        let bytes = std::fs::read(e.path()).expect("read file");
        if let Some((other, _)) = out.insert(kind.clone(), (name.clone(), bytes)) {
            panic!("{name} and {other} are both {kind}");
        }
    }
    out
}

/// Compares two sets of files by key (see [`files_by`]) with [`assert_same_file`].
fn assert_same_file_sets(
    what: &str,
    rust: &BTreeMap<String, (String, Vec<u8>)>,
    python: &BTreeMap<String, (String, Vec<u8>)>,
    start: f64,
    end: f64,
) {
    assert_eq!(
        rust.keys().collect::<Vec<_>>(),
        python.keys().collect::<Vec<_>>(),
        "{what}: Rust wrote other files than Python"
    );
    for (key, (name, bytes)) in rust {
        let (python_name, python_bytes) = &python[key];
        let kind = key.rsplit('/').next().unwrap_or(key);
        with_context(
            || format!("{what}: Rust's {name} against Python's {python_name}"),
            || assert_same_file(kind, bytes, python_bytes, start, end),
        );
    }
}

/// `(key, value offset)` of each entry of a file.
fn entry_offsets(bytes: &[u8]) -> Vec<(String, usize)> {
    layout::entries(bytes)
        .expect("valid file")
        .map(|e| {
            let e = e.expect("valid entry");
            (String::from_utf8_lossy(e.key).into_owned(), e.value_offset)
        })
        .collect()
}

fn timestamp_at(bytes: &[u8], value_offset: usize) -> f64 {
    f64::from_ne_bytes(
        bytes[value_offset + 8..value_offset + 16]
            .try_into()
            .expect("8 bytes"),
    )
}

/// Compares a file Rust wrote with the one Python wrote for the same operations: the whole
/// file, byte for byte, after zeroing each entry's timestamp in files of mostrecent gauges
/// (where Rust's timestamps must be set exactly where Python's are, within `[start, end]`).
fn assert_same_file(kind: &str, rust: &[u8], python: &[u8], start: f64, end: f64) {
    let mut rust = rust.to_vec();
    let mut python = python.to_vec();
    if kind.ends_with("mostrecent") {
        let rust_entries = entry_offsets(&rust);
        let python_entries = entry_offsets(&python);
        assert_eq!(
            rust_entries, python_entries,
            "{kind}: entries differ between Rust's file and Python's"
        );
        for (key, at) in rust_entries {
            let (r, p) = (timestamp_at(&rust, at), timestamp_at(&python, at));
            if p == 0.0 {
                assert_eq!(r, 0.0, "{kind}: {key} has a timestamp only in Rust's file");
            } else {
                assert!(
                    (start..=end).contains(&r) && (start..=end).contains(&p),
                    "{kind}: {key}: timestamps {r} (Rust) and {p} (Python) not within the run [{start}, {end}]"
                );
            }
            rust[at + 8..at + 16].fill(0);
            python[at + 8..at + 16].fill(0);
        }
    }
    if rust == python {
        return;
    }
    let first = rust
        .iter()
        .zip(&python)
        .position(|(a, b)| a != b)
        .unwrap_or(rust.len().min(python.len()));
    let entry = entry_offsets(&python)
        .into_iter()
        .rev()
        .find(|(_, at)| *at <= first + 16)
        .map(|(k, at)| format!("the entry {k} (value at {at})"))
        .unwrap_or_else(|| "the header".into());
    let show = |b: &[u8]| common::hex(&b[first.saturating_sub(8)..(first + 24).min(b.len())]);
    panic!(
        "{kind}: Rust's file ({} bytes, used {:?}) differs from Python's ({} bytes, used {:?}) \
         first at byte {first}, in or after {entry}:\n  Rust:   {}\n  Python: {}",
        rust.len(),
        layout::used(&rust),
        python.len(),
        layout::used(&python),
        show(&rust),
        show(&python),
    );
}

/// Runs a one-process `scenario` with Python and with Rust (each setup that writes no parent
/// file), and compares the files byte for byte; returns the size of Python's file of each
/// kind.
fn assert_same_files(py: &Path, scenario: &Value) -> BTreeMap<String, usize> {
    let python_dir = tempfile::tempdir().expect("tempdir");
    let start = now();
    python_run(py, python_dir.path(), scenario);
    let python = files_by_kind(python_dir.path());
    for setup in [Setup::ChildRegistry, Setup::ParentRegistry] {
        let rust_dir = tempfile::tempdir().expect("tempdir");
        run_rust_scenario(rust_dir.path(), scenario, setup).finish();
        let end = now();
        let rust = files_by_kind(rust_dir.path());
        assert_eq!(
            rust.keys().collect::<Vec<_>>(),
            python.keys().collect::<Vec<_>>(),
            "setup {setup:?}: Rust wrote other files than Python"
        );
        for (kind, (name, bytes)) in &rust {
            let (python_name, python_bytes) = &python[kind];
            with_context(
                || format!("setup {setup:?}: Rust's {name} against Python's {python_name}"),
                || assert_same_file(kind, bytes, python_bytes, start, end),
            );
        }
    }
    python
        .into_iter()
        .map(|(kind, (_, bytes))| (kind, bytes.len()))
        .collect()
}

/// One process: `ops` on `metrics`.
fn one_process(metrics: Value, ops: Vec<Value>) -> Value {
    scenario(metrics, json!([{ "ops": ops }]))
}

#[test]
fn counter_file_is_byte_identical_to_pythons() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "counter", "name": "requests_total", "help": "Requests served.", "labels": ["method", "path"]},
        {"type": "counter", "name": "plain", "help": ""},
        {"type": "counter", "name": "odd", "help": NASTY[4], "labels": ["v"]},
    ]);
    let mut ops = vec![
        op0(1, &[], "inc"),
        op0(0, &["GET", "/"], "inc"),
        op(0, &["POST", "/users/{id}"], "inc", 0.1),
        op(0, &["GET", "/"], "inc", 0.2),
        op(1, &[], "inc", 1e300),
        op(2, &["nan"], "inc", f64::NAN),
        op(2, &["inf"], "inc", f64::INFINITY),
        op(2, &["zero"], "inc", 0.0),
        op(2, &["tiny"], "inc", 5e-324),
    ];
    for (i, v) in NASTY.iter().enumerate() {
        ops.push(op(2, &[v], "inc", i as f64 / 3.0));
    }
    let kinds: BTreeSet<String> = assert_same_files(&py, &one_process(metrics, ops))
        .into_keys()
        .collect();
    assert_eq!(kinds, names(&["counter"]));
}

#[test]
fn gauge_files_of_every_mode_are_byte_identical_to_pythons() {
    let Some(py) = common::python() else { return };
    let mut metrics = Vec::new();
    let mut ops = Vec::new();
    for (i, mode) in common::GAUGE_MODES.iter().enumerate() {
        metrics.push(json!({"type": "gauge", "name": format!("g_{mode}"), "help": format!("Mode {mode}."), "labels": ["k"], "mode": mode}));
        metrics.push(
            json!({"type": "gauge", "name": format!("u_{mode}"), "help": NASTY[10], "mode": mode}),
        );
        let (labelled, unlabelled) = (2 * i, 2 * i + 1);
        ops.push(op(labelled, &["a"], "set", 1.5));
        ops.push(op(labelled, &[NASTY[1]], "set", -0.0));
        ops.push(op(labelled, &[NASTY[9]], "set", f64::NAN));
        ops.push(op(labelled, &["b"], "set", 0.1));
        if mode.contains("mostrecent") {
            ops.push(op(labelled, &["a"], "set", 2.5));
            ops.push(op(labelled, &["inf"], "set", f64::NEG_INFINITY));
            if *mode == "mostrecent" {
                ops.push(op(unlabelled, &[], "set", 7.0));
            }
        } else {
            ops.push(op(labelled, &["a"], "inc", 0.7));
            ops.push(op0(labelled, &["b"], "inc"));
            ops.push(op0(labelled, &["c"], "dec"));
            ops.push(op(labelled, &["c"], "dec", 0.3));
            ops.push(op(labelled, &["inf"], "inc", f64::INFINITY));
            ops.push(op(labelled, &["inf"], "dec", f64::INFINITY));
            ops.push(op(unlabelled, &[], "dec", 2.0));
        }
    }
    let kinds: BTreeSet<String> = assert_same_files(&py, &one_process(json!(metrics), ops))
        .into_keys()
        .collect();
    let want: BTreeSet<String> = common::GAUGE_MODES
        .iter()
        .map(|m| format!("gauge_{m}"))
        .collect();
    assert_eq!(kinds, want);
    assert!(kinds.contains("gauge_all") && kinds.contains("gauge_livesum"));
}

#[test]
fn mostrecent_gauge_file_is_byte_identical_to_pythons_but_for_timestamps() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "gauge", "name": "recent", "help": "Set last.", "labels": ["k"], "mode": "mostrecent"},
        {"type": "gauge", "name": "never_set", "help": "Never set.", "mode": "mostrecent"},
        {"type": "gauge", "name": "set_once", "help": "Set once.", "mode": "mostrecent"},
    ]);
    let mut ops = vec![op(2, &[], "set", 3.0)];
    for (i, v) in NASTY.iter().enumerate() {
        ops.push(op(0, &[v], "set", i as f64 - 2.0));
        ops.push(op(0, &[v], "set", i as f64 * 0.75));
    }
    let kinds: BTreeSet<String> = assert_same_files(&py, &one_process(metrics, ops))
        .into_keys()
        .collect();
    assert_eq!(kinds, names(&["gauge_mostrecent"]));
}

#[test]
fn histogram_file_is_byte_identical_to_pythons() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "histogram", "name": "latency_seconds", "help": "Default buckets.", "labels": ["route"]},
        {"type": "histogram", "name": "sizes", "help": "Custom buckets.", "buckets": [-2.0, 0.0, 2.5e-5, 0.125, 1.0, 4.5, 1e6, 1e21]},
        {"type": "histogram", "name": "with_inf", "help": "", "labels": ["le_not", "x"], "buckets": [1.0, "Infinity"]},
    ]);
    let mut ops = Vec::new();
    for (i, v) in [
        0.0,
        0.005,
        0.0051,
        0.1,
        0.25,
        1.0,
        7.5,
        10.0,
        10.5,
        -1.0,
        0.3,
        f64::NAN,
    ]
    .iter()
    .enumerate()
    {
        ops.push(op(0, &[["/", NASTY[2], NASTY[10]][i % 3]], "observe", *v));
        ops.push(op(1, &[], "observe", *v * 1e5));
        ops.push(op(2, &[NASTY[4], "y"], "observe", *v));
    }
    ops.push(op(1, &[], "observe", f64::INFINITY));
    ops.push(op(1, &[], "observe", f64::NEG_INFINITY));
    let kinds: BTreeSet<String> = assert_same_files(&py, &one_process(metrics, ops))
        .into_keys()
        .collect();
    assert_eq!(kinds, names(&["histogram"]));
}

#[test]
fn summary_file_is_byte_identical_to_pythons() {
    let Some(py) = common::python() else { return };
    let metrics = json!([
        {"type": "summary", "name": "payload_bytes", "help": "Payloads.", "labels": ["kind"]},
        {"type": "summary", "name": "plain", "help": NASTY[8]},
    ]);
    let mut ops = vec![op(1, &[], "observe", 0.1), op(1, &[], "observe", 0.2)];
    for (i, v) in NASTY.iter().enumerate() {
        ops.push(op(0, &[v], "observe", i as f64 * 1.1));
        ops.push(op(0, &[v], "observe", -(i as f64)));
    }
    ops.push(op(0, &["nan"], "observe", f64::NAN));
    ops.push(op(0, &["inf"], "observe", f64::INFINITY));
    let kinds: BTreeSet<String> = assert_same_files(&py, &one_process(metrics, ops))
        .into_keys()
        .collect();
    assert_eq!(kinds, names(&["summary"]));
}

#[test]
fn file_grown_past_64_kib_is_byte_identical_to_pythons() {
    let Some(py) = common::python() else { return };
    // About 2000 entries of ~130 bytes in each file: 64 KiB doubled twice.
    let metrics = json!([
        {"type": "counter", "name": "big", "help": "Many series.", "labels": ["series", "padding"]},
        {"type": "gauge", "name": "big_gauge", "help": "Many series.", "labels": ["series"], "mode": "livesum"},
        {"type": "histogram", "name": "big_hist", "help": "Many buckets.", "labels": ["series"], "buckets": [1.0, 2.0]},
    ]);
    let padding = "p".repeat(60);
    let ops: Vec<Value> = (0..2000)
        .flat_map(|i| {
            let s = format!("series-{i:05}");
            [
                op(0, &[&s, &padding], "inc", (i % 7) as f64 + 0.5),
                op(1, &[&s], "set", i as f64),
                op(2, &[&s[..11]], "observe", (i % 3) as f64),
            ]
        })
        .collect();
    let sizes = assert_same_files(&py, &one_process(metrics, ops));
    assert_eq!(
        sizes.keys().cloned().collect::<BTreeSet<_>>(),
        names(&["counter", "gauge_livesum", "histogram"])
    );
    assert!(
        sizes["counter"] >= 256 * 1024 && sizes["histogram"] > 64 * 1024,
        "files did not grow enough: {sizes:?}"
    );
}

// ---------------------------------------------------------------- files continued

/// Renames every `*_{from}.db` in `dir` to `*_{to}.db`.
fn adopt_files(dir: &Path, from: u32, to: u32) {
    let suffix = format!("_{from}.db");
    for e in std::fs::read_dir(dir).expect("list dir") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(&suffix) {
            std::fs::rename(dir.join(&name), dir.join(format!("{stem}_{to}.db"))).expect("rename");
        }
    }
}

/// Operations before and after a restart under the same pid: the second part reuses children
/// of the first, adds enough new ones to grow the files past 64 KiB, and touches an unlabelled
/// metric again.
fn restart_scenario() -> (Value, Vec<Value>, Vec<Value>) {
    let metrics = json!([
        {"type": "counter", "name": "requests", "help": "Requests.", "labels": ["path"]},
        {"type": "counter", "name": "plain", "help": "Unlabelled."},
        {"type": "gauge", "name": "level", "help": "Level.", "labels": ["path"], "mode": "all"},
        {"type": "gauge", "name": "recent", "help": "Recent.", "labels": ["path"], "mode": "mostrecent"},
        {"type": "histogram", "name": "seconds", "help": "Time.", "labels": ["path"], "buckets": [0.5, 1.0]},
        {"type": "summary", "name": "bytes", "help": "Size.", "labels": ["path"]},
        {"type": "gauge", "name": "in_flight", "help": "In flight.", "labels": ["path"], "mode": "livesum"},
    ]);
    let ops = |range: std::ops::Range<usize>, scale: f64| -> Vec<Value> {
        let mut ops = vec![op(1, &[], "inc", scale)];
        for i in range {
            let path = format!("/p/{i}/{}", "z".repeat(80));
            ops.push(op(0, &[&path], "inc", scale));
            ops.push(op(2, &[&path], "inc", 0.1 * scale));
            ops.push(op(3, &[&path], "set", scale));
            ops.push(op(4, &[&path], "observe", 0.25 * scale));
            ops.push(op(5, &[&path], "observe", scale));
            if i % 10 == 0 {
                ops.push(op(6, &[&path], "inc", scale));
            }
        }
        ops
    };
    (metrics, ops(0..50, 1.0), ops(25..500, 3.0))
}

#[test]
fn python_file_continued_by_rust_equals_python_writing_it_alone() {
    let Some(py) = common::python() else { return };
    let (metrics, before, after) = restart_scenario();
    let start = now();
    // Python writes the first part under its pid; a Rust worker takes the files over under
    // its own pid and goes on with the second part.
    let continued = tempfile::tempdir().expect("tempdir");
    let python_pid = python_run(
        &py,
        continued.path(),
        &one_process(metrics.clone(), before.clone()),
    )[0];
    run_rust_scenario_with(
        continued.path(),
        &one_process(metrics.clone(), after.clone()),
        Setup::ChildRegistry,
        &|_, pid| adopt_files(continued.path(), python_pid, pid),
    )
    .finish();
    // One Python process doing both parts, and one doing the second part only.
    let alone = tempfile::tempdir().expect("tempdir");
    let second = tempfile::tempdir().expect("tempdir");
    let both: Vec<Value> = before.into_iter().chain(after.clone()).collect();
    let (both, after) = (
        one_process(metrics.clone(), both),
        one_process(metrics, after),
    );
    python_batch(&py, &[(alone.path(), &both), (second.path(), &after)]);
    let end = now();
    let mut continued_files = files_by_kind(continued.path());
    let mut alone_files = files_by_kind(alone.path());
    // The live gauges are the exception, by design: finding the liveness lock of its pid
    // free, the Rust process took the files for a dead predecessor's and removed its live
    // gauges (where Python adds to them), so that file holds the second part only.
    let live = "gauge_livesum";
    let continued_live = continued_files.remove(live).expect("live gauge file");
    let second_live = files_by_kind(second.path())
        .remove(live)
        .expect("live gauge file");
    alone_files.remove(live);
    assert_same_file_sets(
        "Python's files continued by Rust",
        &continued_files,
        &alone_files,
        start,
        end,
    );
    with_context(
        || "Python's live gauge file, replaced by Rust".to_owned(),
        || assert_same_file(live, &continued_live.1, &second_live.1, start, end),
    );
    assert!(continued_files["counter"].1.len() > 64 * 1024);
}

#[test]
fn rust_file_continued_by_python_equals_python_writing_it_alone() {
    let Some(py) = common::python() else { return };
    let (metrics, before, after) = restart_scenario();
    let start = now();
    let continued = tempfile::tempdir().expect("tempdir");
    let rust = run_rust_scenario(
        continued.path(),
        &one_process(metrics.clone(), before.clone()),
        Setup::ChildRegistry,
    );
    let rust_pid = rust.pids[0];
    rust.finish();
    python_workers(
        &py,
        &json!({"dir": continued.path(), "scenario": one_process(metrics.clone(), after.clone()),
                "adopt": rust_pid}),
    );
    let alone = tempfile::tempdir().expect("tempdir");
    let both: Vec<Value> = before.into_iter().chain(after).collect();
    python_run(&py, alone.path(), &one_process(metrics, both));
    let end = now();
    let continued_files = files_by_kind(continued.path());
    assert_same_file_sets(
        "Rust's files continued by Python",
        &continued_files,
        &files_by_kind(alone.path()),
        start,
        end,
    );
    assert!(continued_files["counter"].1.len() > 64 * 1024);
}

// ---------------------------------------------------------------- metrics created before fork

/// Removes the samples of a worker (its pid named `p0`, `p1`, ... in `names`) whose value is 0:
/// in mode all/liveall, the zeros a Python worker writes for series it never touches.
fn drop_worker_zeros(families: &mut [PyFamily], names: &HashMap<String, String>) {
    for f in families.iter_mut() {
        f.samples.retain(|s| {
            let worker = s
                .labels
                .get("pid")
                .and_then(|p| names.get(p))
                .is_some_and(|n| n != "parent");
            !(worker && s.value.to_bits() == 0)
        });
    }
}

/// The parent's files (named with this test process's pid) in `dir` hold only zeros: none of
/// the workers it forked wrote into them. Returns how many there are.
fn assert_parent_files_untouched(dir: &Path) -> usize {
    let suffix = format!("_{}.db", std::process::id());
    let mut files = 0;
    for e in std::fs::read_dir(dir).expect("list dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(&suffix) {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(e.path()).expect("read");
        for entry in layout::entries(&bytes).expect("valid file") {
            let entry = entry.expect("valid entry");
            assert!(
                entry.value.to_bits() == 0 && entry.timestamp.to_bits() == 0,
                "{name}: the parent's entry {} holds {} (timestamp {}): a worker wrote into it",
                String::from_utf8_lossy(entry.key),
                entry.value,
                entry.timestamp
            );
        }
    }
    files
}

/// Runs `scenario` with metrics created by the parent before forking, by Rust and by Python;
/// the Rust workers stay alive until the result drops.
fn run_parent_metrics(
    py: &Path,
    scenario: &Value,
    rust_dir: &Path,
    python_dir: &Path,
) -> (Workers, Pids) {
    let (python_parent, python) = python_workers(
        py,
        &json!({"dir": python_dir, "scenario": scenario, "parent_metrics": true}),
    );
    let workers = run_rust_scenario(rust_dir, scenario, Setup::ParentMetrics);
    let pids = Pids {
        rust: workers.pids.clone(),
        python,
        rust_parent: Some(std::process::id()),
        python_parent: Some(python_parent),
    };
    (workers, pids)
}

#[test]
fn metrics_created_before_fork_record_into_each_workers_own_files() {
    let Some(py) = common::python() else { return };
    // The parent creates every metric and every child the workers use, then forks them; they
    // record through the handles they inherited. Python's parent does the same.
    let s = every_type_and_mode();
    let rust_dir = tempfile::tempdir().expect("tempdir");
    let python_dir = tempfile::tempdir().expect("tempdir");
    let (workers, pids) = run_parent_metrics(&py, &s, rust_dir.path(), python_dir.path());
    let mut scrapes = scrape_pair(&py, rust_dir.path(), python_dir.path(), pids);
    // Left out here, as the next test is about them: the zeros a Python worker writes in mode
    // all/liveall for each series its parent created that it never touches.
    let rust_names = pid_names(&scrapes.pids.rust, scrapes.pids.rust_parent);
    let python_names = pid_names(&scrapes.pids.python, scrapes.pids.python_parent);
    drop_worker_zeros(&mut scrapes.ours_rust, &rust_names);
    drop_worker_zeros(&mut scrapes.theirs_rust, &rust_names);
    drop_worker_zeros(&mut scrapes.ours_python, &python_names);
    drop_worker_zeros(&mut scrapes.theirs_python, &python_names);
    let theirs = scrapes.check(&|| format!("parent metrics, scenario: {s:#}"), true);
    let shared = [("worker", "shared")];
    assert_eq!(value(&theirs, "g_sum", &shared), 53.75);
    assert_eq!(value(&theirs, "g_livemostrecent", &shared), 11.25);
    assert_eq!(
        value(&theirs, "g_all", &[("worker", "shared"), ("pid", "parent")]),
        0.0
    );
    assert_eq!(value(&theirs, "plain_total", &[]), 5.0);
    assert_eq!(
        pid_labels(&theirs, "u_all"),
        names(&["p0", "p2", "p3", "parent"])
    );
    let parent_files = assert_parent_files_untouched(rust_dir.path());
    assert!(parent_files >= 4, "the parent wrote {parent_files} files");
    workers.finish();
}

#[test]
fn forked_worker_writes_every_series_its_parent_created_like_python() {
    let Some(py) = common::python() else { return };
    // Python's worker, on its first operation after the fork, re-reads every value its
    // process knows from its own files: each series the parent created gets an entry there (0
    // until touched), in the parent's order of creation. So its scrape has a `pid` sample of
    // every all/liveall gauge for every worker that recorded anything at all.
    let metrics = json!([
        {"type": "counter", "name": "requests", "help": "Requests.", "labels": ["path"]},
        {"type": "gauge", "name": "workers", "help": "Per worker.", "mode": "all"},
        {"type": "gauge", "name": "queue", "help": "Per worker and queue.", "labels": ["q"], "mode": "liveall"},
        {"type": "histogram", "name": "seconds", "help": "Time.", "buckets": [1.0]},
    ]);
    let s = scenario(
        metrics,
        json!([
            {"ops": [op(0, &["/b"], "inc", 1.0), op(2, &["x"], "set", 2.0)]},
            {"ops": [op(3, &[], "observe", 0.5), op(0, &["/a"], "inc", 1.0)]},
            {"ops": []},
        ]),
    );
    let rust_dir = tempfile::tempdir().expect("tempdir");
    let python_dir = tempfile::tempdir().expect("tempdir");
    let start = now();
    let (workers, pids) = run_parent_metrics(&py, &s, rust_dir.path(), python_dir.path());
    let end = now();
    let scrapes = scrape_pair(&py, rust_dir.path(), python_dir.path(), pids.clone());
    scrapes.check(&|| format!("parent metrics, scenario: {s:#}"), true);
    let rust = files_by(
        rust_dir.path(),
        Some(&pid_names(&pids.rust, pids.rust_parent)),
    );
    let python = files_by(
        python_dir.path(),
        Some(&pid_names(&pids.python, pids.python_parent)),
    );
    assert_same_file_sets("files after fork", &rust, &python, start, end);
    workers.finish();
}

// ---------------------------------------------------------------- randomized scenarios

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
/// Bucket bounds to draw custom buckets from; the last three are never observed.
const BOUNDS: [f64; 12] = [
    -2.0, 0.0, 0.125, 0.25, 1.0, 2.5, 10.0, 1024.0, 4.5, 1e6, 2.5e-5, 1e21,
];

/// A value from `pool`, or now and then (if `non_finite`) NaN or an infinity.
fn random_value(rng: &mut Rng, pool: &[f64], non_finite: bool) -> f64 {
    match rng.below(40) {
        0 if non_finite => f64::NAN,
        1 if non_finite => f64::INFINITY,
        2 if non_finite => f64::NEG_INFINITY,
        _ => *rng.pick(pool),
    }
}

/// A random scenario: 1-5 metrics of random types, names, labels and gauge modes; 1-6
/// processes with 0-8 random operations each, some marked dead, some threaded (those only
/// increment gauges, so that the result does not depend on how the threads interleave).
/// Nothing reads the clock, so both directories must agree exactly.
fn random_scenario(rng: &mut Rng) -> Value {
    struct Spec {
        typ: &'static str,
        labels: usize,
        mode: &'static str,
        bounds: Vec<f64>,
    }
    let mut metrics = Vec::new();
    let mut specs = Vec::new();
    for i in 0..1 + rng.below(5) {
        let typ = *rng.pick(&["counter", "gauge", "gauge", "histogram", "summary"]);
        let mut name = format!(
            "{}{}_{i}",
            rng.pick(&["", "app:", "_", "Z"]),
            rng.pick(&["requests", "latency", "queue_depth", "bytes", "x"]),
        );
        if typ == "counter" && rng.chance(30) {
            name.push_str("_total");
        }
        let mut pool: Vec<&str> = LABEL_NAMES.to_vec();
        match typ {
            "gauge" => pool.push("le"),
            "counter" => pool.extend(["le", "quantile"]),
            "histogram" => pool.push("quantile"),
            _ => pool.push("le"),
        }
        let mut labels = Vec::new();
        for _ in 0..rng.below(4) {
            let l = *rng.pick(&pool);
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        let mut m = json!({"type": typ, "name": name, "help": rng.pick(&HELPS), "labels": labels});
        let mut spec = Spec {
            typ,
            labels: labels.len(),
            mode: "",
            bounds: Vec::new(),
        };
        if typ == "gauge" {
            spec.mode = *rng.pick(&common::GAUGE_MODES);
            m["mode"] = json!(spec.mode);
        }
        if typ == "histogram" {
            if rng.chance(40) {
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
                spec.bounds = b.into_iter().filter(|b| b.abs() <= 1e6).collect();
            }
        }
        metrics.push(m);
        specs.push(spec);
    }

    let mut processes = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let threads = if rng.chance(10) { 2 + rng.below(2) } else { 1 };
        let mut ops = Vec::new();
        for _ in 0..rng.below(9) {
            let m = rng.below(specs.len());
            let spec = &specs[m];
            let labels: Vec<&str> = (0..spec.labels).map(|_| *rng.pick(&NASTY)).collect();
            let o = match spec.typ {
                "counter" => {
                    if rng.chance(30) {
                        op0(m, &labels, "inc")
                    } else {
                        op(
                            m,
                            &labels,
                            "inc",
                            random_value(rng, &INCREMENTS, true).abs(),
                        )
                    }
                }
                "gauge" => {
                    // min/max: neither NaN nor an infinity (inc(inf) then dec(inf) is NaN).
                    let min_max = spec.mode.contains("min") || spec.mode.contains("max");
                    let v = random_value(rng, &GAUGE_VALUES, !min_max);
                    let set_only = spec.mode.contains("mostrecent");
                    match rng.below(5) {
                        _ if set_only => op(m, &labels, "set", v),
                        0 if threads == 1 => op(m, &labels, "set", v),
                        0 | 1 => op(m, &labels, "inc", v),
                        2 => op(m, &labels, "dec", v),
                        3 => op0(m, &labels, "inc"),
                        _ => op0(m, &labels, "dec"),
                    }
                }
                _ => {
                    let v = if !spec.bounds.is_empty() && rng.chance(40) {
                        *rng.pick(&spec.bounds)
                    } else {
                        random_value(rng, &OBSERVATIONS, true)
                    };
                    op(m, &labels, "observe", v)
                }
            };
            ops.push(o);
        }
        let mut p = json!({"ops": ops, "dead": rng.chance(30)});
        if threads > 1 {
            p["threads"] = json!(threads);
        }
        processes.push(p);
    }
    scenario(json!(metrics), json!(processes))
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
fn randomized_scenarios_give_the_same_scrape_from_rust_and_python_workers() {
    let Some(py) = common::python() else { return };
    let seed = env_u64("INTEROP_SEED").unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
        now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    });
    let count = env_u64("INTEROP_SCENARIOS").unwrap_or(24) as usize;
    eprintln!("randomized interop scenarios: INTEROP_SEED={seed} ({count} scenarios)");

    let scenarios: Vec<Value> = (0..count)
        .map(|i| {
            random_scenario(&mut Rng(
                seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
            ))
        })
        .collect();
    let root = tempfile::tempdir().expect("tempdir");
    let dir = |side: &str, i: usize| -> PathBuf {
        let d = root.path().join(format!("{side}{i:03}"));
        std::fs::create_dir(&d).expect("mkdir");
        d
    };
    let rust_dirs: Vec<PathBuf> = (0..count).map(|i| dir("rust", i)).collect();
    let python_dirs: Vec<PathBuf> = (0..count).map(|i| dir("python", i)).collect();
    let setups: Vec<Setup> = (0..count)
        .map(|i| [Setup::ChildRegistry, Setup::ParentRegistry][i % 2])
        .collect();

    let runs: Vec<(&Path, &Value)> = python_dirs
        .iter()
        .map(PathBuf::as_path)
        .zip(&scenarios)
        .collect();
    let python_pids = python_batch(&py, &runs);
    let rust_workers: Vec<Workers> = (0..count)
        .map(|i| {
            with_context(
                || format!("INTEROP_SEED={seed}, scenario {i}: {:#}", scenarios[i]),
                || run_rust_scenario(&rust_dirs[i], &scenarios[i], setups[i]),
            )
        })
        .collect();
    let rust_pids: Vec<Vec<u32>> = rust_workers.iter().map(|w| w.pids.clone()).collect();
    let all_dirs: Vec<&Path> = rust_dirs
        .iter()
        .chain(&python_dirs)
        .map(PathBuf::as_path)
        .collect();
    let mut theirs = python_collect_many(&py, &all_dirs);
    let theirs_python = theirs.split_off(count);

    let mut failures = String::new();
    let mut samples = 0;
    for i in 0..count {
        let what = || {
            format!(
                "INTEROP_SEED={seed}, scenario {i}, setup {:?} (Rust pids {:?}, Python pids {:?}):\n{:#}",
                setups[i], rust_pids[i], python_pids[i], scenarios[i]
            )
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            let scrapes = Scrapes {
                pids: Pids {
                    rust: rust_pids[i].clone(),
                    python: python_pids[i].clone(),
                    ..Pids::default()
                },
                ours_rust: scrape_ours(&rust_dirs[i]),
                theirs_rust: theirs[i]
                    .clone()
                    .unwrap_or_else(|e| panic!("Python cannot scrape the Rust directory: {e}")),
                ours_python: scrape_ours(&python_dirs[i]),
                theirs_python: theirs_python[i]
                    .clone()
                    .unwrap_or_else(|e| panic!("Python cannot scrape the Python directory: {e}")),
            };
            // Some scenarios leave nothing to see (no operation, or only dead processes' live
            // gauges): then the Rust side must be as empty.
            let theirs = scrapes.check(&String::new, false);
            samples += theirs.iter().map(|f| f.samples.len()).sum::<usize>();
        }));
        if let Err(payload) = result {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| format!("{}\n(non-string panic)", what()));
            let _ = writeln!(failures, "{}{msg}\n", what());
        }
    }
    let workers: usize = rust_pids.iter().map(Vec::len).sum();
    eprintln!("randomized interop scenarios: {workers} workers a side, {samples} samples compared");
    assert!(
        failures.is_empty(),
        "randomized scenarios differ between Rust and Python workers (INTEROP_SEED={seed}):\n{failures}"
    );
}

#[test]
fn metrics_of_several_registries_in_one_process_share_its_files_like_python() {
    let Some(py) = common::python() else { return };
    // Python keeps one file per type and process whatever creates the metrics; here every
    // metric comes from a registry of its own on the same directory.
    let metrics = json!([
        {"type": "counter", "name": "a", "help": "A.", "labels": ["k"]},
        {"type": "counter", "name": "b", "help": "B.", "labels": ["k"]},
        {"type": "gauge", "name": "g", "help": "G.", "labels": ["k"], "mode": "livesum"},
        {"type": "gauge", "name": "h", "help": "H.", "labels": ["k"], "mode": "livesum"},
    ]);
    // New series through each registry in turn, so that each appends after the other.
    let ops = vec![
        op(0, &["x"], "inc", 1.0),
        op(1, &["x"], "inc", 2.0),
        op(0, &["y"], "inc", 3.0),
        op(1, &["y"], "inc", 4.0),
        op(2, &["x"], "set", 5.0),
        op(3, &["x"], "set", 6.0),
        op(2, &["y"], "set", 7.0),
        op(3, &["y"], "set", 8.0),
    ];
    let s = one_process(metrics, ops);
    let python_dir = tempfile::tempdir().expect("tempdir");
    let rust_dir = tempfile::tempdir().expect("tempdir");
    let start = now();
    python_run(&py, python_dir.path(), &s);
    let workers = run_rust_scenario(rust_dir.path(), &s, Setup::RegistryPerMetric);
    let end = now();
    let scrape = Collector::new(rust_dir.path())
        .self_metrics(false)
        .collect()
        .expect("collect");
    assert!(scrape.bad_files.is_empty(), "{:?}", scrape.bad_files);
    assert_same_file_sets(
        "one registry per metric",
        &files_by_kind(rust_dir.path()),
        &files_by_kind(python_dir.path()),
        start,
        end,
    );
    workers.finish();
}
