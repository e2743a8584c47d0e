//! The cost of recording one sample, against the tikv `prometheus` crate's in-process metrics
//! and against Python's `prometheus_client` in multiprocess mode, in one run.
//!
//! Criterion groups, each with a `prometheus_multiproc` (ours, writing into files in a temporary
//! directory) and a `tikv_prometheus` function:
//!
//! - `counter_inc`: `counter.inc()` on an unlabelled `f64` counter;
//! - `gauge_set`: `gauge.set(v)`;
//! - `histogram_observe`: `histogram.observe(0.3)` with Python's default buckets (0.3 falls in
//!   `le="0.5"`, the 8th of 15 bounds);
//! - `labelled_inc_3_labels`: `family.with_label_values(&["GET", "/users/{id}", "200"]).inc()`
//!   on a child that already exists;
//! - `counter_inc_contended_4_threads`: 4 threads incrementing the same counter; the time is
//!   wall time per increment, all threads together.
//!
//! Then each runs again, ours and tikv alternating in short batches, for a ratio that load from
//! other processes (which comes and goes over seconds, and can shift one criterion function
//! against the other) affects alike; `benches/python/hot_path.py` times the same four operations
//! with Python's `prometheus_client` (multiprocess mode, and single-process mode for context);
//! and a table of medians and ratios against the targets is printed and written to
//! `target/bench-results/hot_path.md`.
//!
//! ```text
//! cargo bench --bench hot_path                 # everything, about a minute and a half
//! cargo bench --bench hot_path -- counter_inc  # a criterion filter (the table shows what ran)
//! ```
//!
//! - `PROMETHEUS_MULTIPROC_PYTHON`: the Python with `prometheus-client` (default
//!   `.venv/bin/python`); without one, the Python columns print SKIPPED.
//! - `HOT_PATH_BENCH_QUICK=1`: shorter criterion and Python runs, for a first look.
//!
//! Without `--bench` (`cargo test --benches`), every function runs once and the Python script
//! runs in its quick mode, as a check that both sides work.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime};

use common::Env;
use criterion::{Criterion, SamplingMode};
use prometheus_multiproc::{GaugeMode, Registry, DEFAULT_BUCKETS};

/// The label values of the labelled case.
const LABELS: [&str; 3] = ["GET", "/users/{id}", "200"];
/// The value observed by the histogram case: in the middle of the default buckets.
const OBSERVED: f64 = 0.3;
const CONTENDING_THREADS: usize = 4;

/// Operations timed on both sides, with their targets against tikv (ours / tikv at most this
/// much) and against Python's multiprocess mode (Python / ours at least this much).
const OPS: &[Op] = &[
    Op {
        group: "counter_inc",
        what: "`counter.inc()`",
        tikv_target: Some(1.2),
        python: true,
        python_target: Some(100.0),
    },
    Op {
        group: "gauge_set",
        what: "`gauge.set(v)`",
        tikv_target: None,
        python: true,
        python_target: None,
    },
    Op {
        group: "histogram_observe",
        what: "`histogram.observe(0.3)`, default buckets",
        tikv_target: Some(1.2),
        python: true,
        python_target: None,
    },
    Op {
        group: "labelled_inc_3_labels",
        what: "`with_label_values(&[3 values]).inc()`, existing child",
        tikv_target: Some(1.0),
        python: true,
        python_target: None,
    },
    Op {
        group: "counter_inc_contended_4_threads",
        what: "`counter.inc()`, 4 threads on one counter (wall time per inc)",
        tikv_target: None,
        python: false,
        python_target: None,
    },
];

struct Op {
    group: &'static str,
    what: &'static str,
    tikv_target: Option<f64>,
    /// Whether Python times it too.
    python: bool,
    python_target: Option<f64>,
}

const OURS: &str = "prometheus_multiproc";
const TIKV: &str = "tikv_prometheus";

// ------------------------------------------------------------------ the benchmarks

/// Both sides' metrics, created once; ours record into files in `_dir`.
struct Fixture {
    counter: prometheus_multiproc::Counter,
    tikv_counter: prometheus::Counter,
    gauge: prometheus_multiproc::Gauge,
    tikv_gauge: prometheus::Gauge,
    histogram: prometheus_multiproc::Histogram,
    tikv_histogram: prometheus::Histogram,
    family: prometheus_multiproc::CounterVec,
    tikv_family: prometheus::CounterVec,
    shared: prometheus_multiproc::Counter,
    tikv_shared: prometheus::Counter,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("hot-path-")
            .tempdir()
            .expect("temporary directory");
        let registry = Registry::new(dir.path()).expect("registry in the temporary directory");
        let family = registry
            .counter_vec("requests_total", "Requests.", &["method", "path", "code"])
            .unwrap();
        let tikv_family = prometheus::CounterVec::new(
            prometheus::Opts::new("requests_total", "Requests."),
            &["method", "path", "code"],
        )
        .unwrap();
        // The timed lookups find an existing child.
        family.with_label_values(&LABELS).inc();
        tikv_family.with_label_values(&LABELS).inc();
        Fixture {
            counter: registry.counter("jobs_total", "Jobs.").unwrap(),
            tikv_counter: prometheus::Counter::new("jobs_total", "Jobs.").unwrap(),
            gauge: registry
                .gauge("queue_length", "Queue.", GaugeMode::All)
                .unwrap(),
            tikv_gauge: prometheus::Gauge::new("queue_length", "Queue.").unwrap(),
            histogram: registry
                .histogram("latency_seconds", "Latency.", DEFAULT_BUCKETS)
                .unwrap(),
            tikv_histogram: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new("latency_seconds", "Latency.")
                    .buckets(DEFAULT_BUCKETS.to_vec()),
            )
            .unwrap(),
            family,
            tikv_family,
            shared: registry.counter("shared_total", "Shared.").unwrap(),
            tikv_shared: prometheus::Counter::new("shared_total", "Shared.").unwrap(),
            _dir: dir,
        }
    }
}

fn benches(c: &mut Criterion, f: &Fixture) {
    let mut g = c.benchmark_group("counter_inc");
    g.bench_function(OURS, |b| b.iter(|| f.counter.inc()));
    g.bench_function(TIKV, |b| b.iter(|| f.tikv_counter.inc()));
    g.finish();

    let mut g = c.benchmark_group("gauge_set");
    g.bench_function(OURS, |b| b.iter(|| f.gauge.set(black_box(42.0))));
    g.bench_function(TIKV, |b| b.iter(|| f.tikv_gauge.set(black_box(42.0))));
    g.finish();

    let mut g = c.benchmark_group("histogram_observe");
    g.bench_function(OURS, |b| {
        b.iter(|| f.histogram.observe(black_box(OBSERVED)))
    });
    g.bench_function(TIKV, |b| {
        b.iter(|| f.tikv_histogram.observe(black_box(OBSERVED)))
    });
    g.finish();

    let mut g = c.benchmark_group("labelled_inc_3_labels");
    g.bench_function(OURS, |b| {
        b.iter(|| f.family.with_label_values(black_box(&LABELS)).inc())
    });
    g.bench_function(TIKV, |b| {
        b.iter(|| f.tikv_family.with_label_values(black_box(&LABELS)).inc())
    });
    g.finish();

    let mut g = c.benchmark_group("counter_inc_contended_4_threads");
    // Every sample starts its threads afresh; with equal (large) iteration counts per sample
    // that cost is spread thin.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(20);
    g.bench_function(OURS, |b| {
        b.iter_custom(|iters| contended(iters, || f.shared.inc()))
    });
    g.bench_function(TIKV, |b| {
        b.iter_custom(|iters| contended(iters, || f.tikv_shared.inc()))
    });
    g.finish();
}

/// `iters` calls of `inc` spread over [`CONTENDING_THREADS`] threads started together; the
/// wall time from the common start to the last thread's end.
fn contended(iters: u64, inc: impl Fn() + Sync) -> Duration {
    let per_thread = iters.div_ceil(CONTENDING_THREADS as u64);
    let start = Barrier::new(CONTENDING_THREADS + 1);
    let started = std::thread::scope(|s| {
        for _ in 0..CONTENDING_THREADS {
            s.spawn(|| {
                start.wait();
                for _ in 0..per_thread {
                    inc();
                }
            });
        }
        start.wait();
        Instant::now()
        // Leaving the scope joins every thread.
    });
    started.elapsed()
}

// ------------------------------------------------------------------ interleaved ratios

/// Ours against tikv in alternating short batches, so that both sides see the same machine:
/// on a shared machine, load from other processes comes and goes over seconds, and shifts one
/// criterion function against the other. The median of the per-round ratios.
#[derive(Clone, Copy)]
struct Interleaved {
    ratio: f64,
    rounds: usize,
}

const BATCH: u64 = 20_000;

/// Nanoseconds per call of `f`, over `n` calls.
#[inline(never)]
fn batch<F: Fn()>(f: &F, n: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// `rounds` pairs of batches (each closure times one batch, in ns per operation), alternating
/// which side goes first.
fn interleave(
    mut ours: impl FnMut() -> f64,
    mut tikv: impl FnMut() -> f64,
    rounds: usize,
) -> Interleaved {
    ours();
    tikv();
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|i| {
            let (o, t) = if i % 2 == 0 {
                let o = ours();
                (o, tikv())
            } else {
                let t = tikv();
                (ours(), t)
            };
            o / t
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    Interleaved {
        ratio: ratios[ratios.len() / 2],
        rounds,
    }
}

fn interleaved(f: &Fixture, group: &str, rounds: usize) -> Option<Interleaved> {
    Some(match group {
        "counter_inc" => interleave(
            || batch(&|| f.counter.inc(), BATCH),
            || batch(&|| f.tikv_counter.inc(), BATCH),
            rounds,
        ),
        "gauge_set" => interleave(
            || batch(&|| f.gauge.set(black_box(42.0)), BATCH),
            || batch(&|| f.tikv_gauge.set(black_box(42.0)), BATCH),
            rounds,
        ),
        "histogram_observe" => interleave(
            || batch(&|| f.histogram.observe(black_box(OBSERVED)), BATCH),
            || batch(&|| f.tikv_histogram.observe(black_box(OBSERVED)), BATCH),
            rounds,
        ),
        "labelled_inc_3_labels" => interleave(
            || {
                batch(
                    &|| f.family.with_label_values(black_box(&LABELS)).inc(),
                    BATCH,
                )
            },
            || {
                batch(
                    &|| f.tikv_family.with_label_values(black_box(&LABELS)).inc(),
                    BATCH,
                )
            },
            rounds,
        ),
        "counter_inc_contended_4_threads" => {
            // Larger batches: each starts its threads.
            let n = 20 * BATCH;
            let ns = |d: Duration| d.as_nanos() as f64 / n as f64;
            interleave(
                || ns(contended(n, || f.shared.inc())),
                || ns(contended(n, || f.tikv_shared.inc())),
                rounds.div_ceil(5),
            )
        }
        _ => return None,
    })
}

// ------------------------------------------------------------------ criterion's figures

/// One function's median and the 95% confidence interval of that median, in nanoseconds.
#[derive(Clone, Copy)]
struct Estimate {
    median: f64,
    low: f64,
    high: f64,
}

/// What criterion wrote for `group/function` in this run (older files are ignored, so a filtered
/// run shows only what it measured).
fn estimate(
    criterion_dir: &Path,
    group: &str,
    function: &str,
    since: SystemTime,
) -> Option<Estimate> {
    let path = criterion_dir
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let fresh = fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= since);
    if !fresh {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).ok()?).ok()?;
    let median = &json["median"];
    Some(Estimate {
        median: median["point_estimate"].as_f64()?,
        low: median["confidence_interval"]["lower_bound"].as_f64()?,
        high: median["confidence_interval"]["upper_bound"].as_f64()?,
    })
}

// ------------------------------------------------------------------ the Python side

struct Python {
    version: String,
    json: serde_json::Value,
}

impl Python {
    /// Median ns per operation in `mode` (`multiprocess` or `single_process`).
    fn median(&self, mode: &str, op: &str) -> Option<f64> {
        self.json[mode][op]["median_ns"].as_f64()
    }
}

/// Runs `hot_path.py` with `PROMETHEUS_MULTIPROC_DIR` set to a fresh temporary directory.
fn run_python(env: &Env, quick: bool) -> Result<Python, String> {
    let python = env.python.as_ref().map_err(Clone::clone)?;
    let dir = tempfile::Builder::new()
        .prefix("hot-path-py-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let mut cmd = Command::new(python);
    cmd.arg(env.root.join("benches/python/hot_path.py"))
        .env("PROMETHEUS_MULTIPROC_DIR", dir.path())
        .env_remove("prometheus_multiproc_dir");
    if quick {
        cmd.arg("--quick");
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "hot_path.py failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("hot_path.py printed no JSON ({e})"))?;
    let version = format!(
        "Python {} / prometheus_client {}",
        json["python"].as_str().unwrap_or("?"),
        json["prometheus_client"].as_str().unwrap_or("?")
    );
    Ok(Python { version, json })
}

// ------------------------------------------------------------------ the report

struct Machine {
    cpus: usize,
    model: String,
    rustc: String,
    /// The 1-minute load average when the run started: other processes' share of the CPUs.
    load: String,
}

impl Machine {
    fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let rustc = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .arg("-V")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let load = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            model,
            rustc,
            load,
        }
    }
}

/// One operation's figures.
struct Row {
    op: &'static Op,
    ours: Option<Estimate>,
    tikv: Option<Estimate>,
    interleaved: Option<Interleaved>,
}

fn ns(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn with_ci(e: &Estimate) -> String {
    format!("{} ({}–{})", ns(e.median), ns(e.low), ns(e.high))
}

fn verdict(ratio: f64, target: Option<f64>, at_most: bool) -> String {
    match target {
        None if at_most => format!("{ratio:.2}x"),
        None => format!("{ratio:.0}x"),
        Some(t) if at_most => format!(
            "{ratio:.2}x (≤ {t}x: {})",
            if ratio <= t { "met" } else { "**missed**" }
        ),
        Some(t) => format!(
            "{ratio:.0}x (≥ {t:.0}x: {})",
            if ratio >= t { "met" } else { "**missed**" }
        ),
    }
}

fn markdown(
    machine: &Machine,
    rows: &[Row],
    python: &Result<Python, String>,
    quick: bool,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} CPUs ({}), load average {} at the start; {}; {}.{}\n",
        machine.cpus,
        machine.model,
        machine.load,
        machine.rustc,
        match python {
            Ok(p) => p.version.clone(),
            Err(e) => format!("Python SKIPPED ({e})"),
        },
        if quick {
            " Quick run (HOT_PATH_BENCH_QUICK)."
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "| operation | ours (ns) | tikv `prometheus` (ns) | ours / tikv | ours / tikv, interleaved | Python multiprocess (ns) | Python single-process (ns) | Python multiprocess / ours |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let op = row.op;
        let cell = |e: &Option<Estimate>| e.as_ref().map_or("not run".to_owned(), with_ci);
        let (plain, paired) = match (&row.ours, &row.tikv) {
            (Some(o), Some(t)) => (
                format!("{:.2}x", o.median / t.median),
                row.interleaved
                    .map_or("–".to_owned(), |i| verdict(i.ratio, op.tikv_target, true)),
            ),
            _ => ("–".to_owned(), "–".to_owned()),
        };
        let (py_mp, py_sp, vs_python) = match (python, op.python) {
            (_, false) => ("–".to_owned(), "–".to_owned(), "–".to_owned()),
            (Err(_), true) => (
                "SKIPPED".to_owned(),
                "SKIPPED".to_owned(),
                "SKIPPED".to_owned(),
            ),
            (Ok(p), true) => {
                let mp = p.median("multiprocess", op.group);
                let sp = p.median("single_process", op.group);
                let ratio = match (mp, &row.ours) {
                    (Some(mp), Some(o)) => verdict(mp / o.median, op.python_target, false),
                    _ => "–".to_owned(),
                };
                (
                    mp.map_or("?".to_owned(), ns),
                    sp.map_or("?".to_owned(), ns),
                    ratio,
                )
            }
        };
        let _ = writeln!(
            md,
            "| `{}`: {} | {} | {} | {plain} | {paired} | {py_mp} | {py_sp} | {vs_python} |",
            op.group,
            op.what,
            cell(&row.ours),
            cell(&row.tikv),
        );
    }
    let rounds = rows
        .iter()
        .find_map(|r| r.interleaved.map(|i| i.rounds))
        .unwrap_or(0);
    let contended_rounds = rows
        .iter()
        .filter(|r| r.op.group.contains("contended"))
        .find_map(|r| r.interleaved.map(|i| i.rounds))
        .unwrap_or(0);
    let _ = writeln!(
        md,
        "\nNanoseconds per operation: criterion's median with its 95% confidence interval, and \
         the median of Python's `timeit` repeats. \"Interleaved\": the median ratio over {rounds} \
         rounds of alternating 20,000-operation batches of each side ({contended_rounds} rounds of \
         400,000 for the contended case), which load from other processes affects alike; the \
         targets are judged on it. Targets: ours / tikv ≤ 1.2x for \
         `counter_inc` and `histogram_observe`, ≤ 1.0x for `labelled_inc_3_labels`; Python's \
         multiprocess `counter.inc()` ≥ 100x ours. Reproduce with `cargo bench --bench hot_path`."
    );
    md
}

// ------------------------------------------------------------------ main

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let quick = std::env::var("HOT_PATH_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let env = Env::find();
    let machine = Machine::probe();
    let criterion_dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| env.target.join("criterion"));
    let (measure, warm_up, rounds) = if quick {
        (Duration::from_millis(500), Duration::from_millis(300), 21)
    } else {
        (Duration::from_secs(2), Duration::from_secs(1), 101)
    };
    let mut criterion = Criterion::default()
        .measurement_time(measure)
        .warm_up_time(warm_up)
        .output_directory(&criterion_dir)
        .configure_from_args();

    let fixture = Fixture::new();
    // A second's slack under the file times criterion writes.
    let since = SystemTime::now() - Duration::from_secs(1);
    benches(&mut criterion, &fixture);
    criterion.final_summary();

    if !benching {
        match run_python(&env, true) {
            Ok(p) => println!("hot_path bench check: ok ({})", p.version),
            Err(e) => println!("hot_path bench check: ok; Python SKIPPED: {e}"),
        }
        println!("run the benchmark with: cargo bench --bench hot_path");
        return;
    }

    println!("\nours against tikv in alternating batches...");
    let rows: Vec<Row> = OPS
        .iter()
        .filter_map(|op| {
            let ours = estimate(&criterion_dir, op.group, OURS, since);
            let tikv = estimate(&criterion_dir, op.group, TIKV, since);
            if ours.is_none() && tikv.is_none() {
                return None; // filtered out of this run
            }
            let interleaved = interleaved(&fixture, op.group, rounds);
            Some(Row {
                op,
                ours,
                tikv,
                interleaved,
            })
        })
        .collect();

    println!("Python's prometheus_client, same operations (benches/python/hot_path.py)...");
    let python = run_python(&env, quick);
    if let Err(e) = &python {
        println!("Python: SKIPPED ({e})");
    }
    let md = markdown(&machine, &rows, &python, quick);
    let out = env.target.join("bench-results");
    fs::create_dir_all(&out).expect("create target/bench-results");
    fs::write(out.join("hot_path.md"), &md).expect("write hot_path.md");
    println!("\n{md}");
    println!("written: {}", out.join("hot_path.md").display());
}
