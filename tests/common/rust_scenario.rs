//! Rust workers for the scenarios of `tests/python/scenario.py`: the same JSON, applied by
//! processes forked from the test that record through this crate's [`Registry`].
//!
//! Every process of the scenario is a `fork()` of the test process. It creates the metrics
//! (or uses those the parent created before forking, see [`Setup`]), applies its operations
//! as Python's worker does, then tells the parent through a pipe that it is done and, once
//! released, leaves with `_exit`, never returning into the test harness. Processes run one after another, each
//! finished before the next starts (so the timestamps of mostrecent gauges are ordered like
//! the processes), and none is reaped before all have run, so their pids are distinct.
//! A process marked `"dead": true` exits, then its `gauge_live*_{pid}.db` files are deleted
//! exactly as Python's `mark_process_dead` does; the others stay alive, parked, until the
//! [`Workers`] returned are dropped (see there why).
//!
//! Operations map to the Rust API as follows: `inc` on a counter is `inc()` without a value
//! and `inc_by(v)` with one; `inc`/`dec` on a gauge are `inc()`/`dec()` without a value and
//! `add(v)`/`sub(v)` with one; `set`, `observe` and `set_to_current_time` keep their names;
//! gauges in mode `mostrecent`/`livemostrecent` are [`MostRecentGauge`]s. Labelled children
//! are looked up in turn with `with_label_values`, `get_metric_with_label_values` and `with`.
//!
//! The module needs `mod common;` in the test crate's root (for `parse_float_hex`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Barrier;

use prometheus_multiproc::{
    Counter, CounterVec, Gauge, GaugeMode, GaugeVec, Histogram, HistogramVec, MostRecentGauge,
    MostRecentGaugeVec, Registry, Summary, SummaryVec, DEFAULT_BUCKETS,
};
use serde_json::Value;

/// Where the registry and the metrics are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Each worker creates its own registry and metrics after the fork.
    ChildRegistry,
    /// Each worker creates one registry per metric (all on the same directory), as separate
    /// libraries of one program might: the process's files must still be shared, as Python's
    /// are by every metric of a process.
    RegistryPerMetric,
    /// The parent creates one registry before forking (and no metric); each worker creates
    /// the metrics from it, so the registry must notice that it now is another process.
    ParentRegistry,
    /// The parent creates the registry, every metric and every labelled child the operations
    /// use, before forking (as a pre-forking server that loads its application first); the
    /// workers record through the handles they inherited. The parent's own files (entries of
    /// value 0, named with the test process's pid) stay in the directory.
    ParentMetrics,
}

// ---------------------------------------------------------------- the scenario

/// What a metric is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Counter,
    Gauge(GaugeMode),
    /// Bucket bounds as given (`None`: Python's defaults).
    Histogram(Option<Vec<f64>>),
    Summary,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricSpec {
    pub kind: Kind,
    pub name: String,
    pub help: String,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Inc,
    Dec,
    Set,
    Observe,
    SetToCurrentTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub metric: usize,
    pub labels: Vec<String>,
    pub kind: OpKind,
    /// `None` where the JSON has none (`inc`/`dec` then mean 1).
    pub value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub ops: Vec<Op>,
    pub dead: bool,
    pub threads: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub metrics: Vec<MetricSpec>,
    pub processes: Vec<ProcessSpec>,
}

/// A number as `scenario.py`'s `to_float` reads it: a JSON number, or a string holding a
/// decimal float, `NaN`, `Infinity`, `-Infinity`, `inf`, or a `float.hex()` form.
pub fn to_float(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n
            .as_f64()
            .unwrap_or_else(|| panic!("number out of range: {n}")),
        Value::String(s) => {
            let t = s.trim();
            t.parse::<f64>()
                .ok()
                .or_else(|| crate::common::parse_float_hex(t))
                .unwrap_or_else(|| panic!("not a number: {s:?}"))
        }
        other => panic!("not a number: {other}"),
    }
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .unwrap_or_else(|| panic!("not a string: {s}"))
                    .to_owned()
            })
            .collect(),
        Some(other) => panic!("not a list of strings: {other}"),
    }
}

impl Scenario {
    /// Reads the JSON `scenario.py` takes; panics on anything it would refuse.
    pub fn parse(scenario: &Value) -> Scenario {
        let empty = Vec::new();
        let list = |key: &str| -> &Vec<Value> {
            match scenario.get(key) {
                None => &empty,
                Some(v) => v
                    .as_array()
                    .unwrap_or_else(|| panic!("{key:?} is not a list")),
            }
        };
        let metrics: Vec<MetricSpec> = list("metrics")
            .iter()
            .map(|m| {
                let typ = m["type"].as_str().unwrap_or("");
                let kind = match typ {
                    "counter" => Kind::Counter,
                    "gauge" => {
                        let mode = m.get("mode").and_then(Value::as_str).unwrap_or("all");
                        Kind::Gauge(
                            GaugeMode::parse(mode)
                                .unwrap_or_else(|| panic!("unknown gauge mode {mode:?}")),
                        )
                    }
                    "histogram" => Kind::Histogram(m.get("buckets").map(|b| {
                        b.as_array()
                            .unwrap_or_else(|| panic!("buckets not a list: {b}"))
                            .iter()
                            .map(to_float)
                            .collect()
                    })),
                    "summary" => Kind::Summary,
                    other => panic!("unknown metric type {other:?}"),
                };
                MetricSpec {
                    kind,
                    name: m["name"].as_str().expect("metric name").to_owned(),
                    help: m
                        .get("help")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    labels: str_list(m.get("labels")),
                }
            })
            .collect();
        let processes = list("processes")
            .iter()
            .map(|p| {
                let ops = p
                    .get("ops")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                    .iter()
                    .map(|o| {
                        let kind = match o["op"].as_str().unwrap_or("") {
                            "inc" => OpKind::Inc,
                            "dec" => OpKind::Dec,
                            "set" => OpKind::Set,
                            "observe" => OpKind::Observe,
                            "set_to_current_time" => OpKind::SetToCurrentTime,
                            other => panic!("unknown op {other:?}"),
                        };
                        let metric = o["metric"].as_u64().expect("metric index") as usize;
                        assert!(metric < metrics.len(), "bad metric index {metric}");
                        let value = o.get("value").map(to_float);
                        if matches!(kind, OpKind::Set | OpKind::Observe) {
                            assert!(value.is_some(), "op {o} needs a value");
                        }
                        Op {
                            metric,
                            labels: str_list(o.get("labels")),
                            kind,
                            value,
                        }
                    })
                    .collect();
                ProcessSpec {
                    ops,
                    dead: p.get("dead").and_then(Value::as_bool).unwrap_or(false),
                    threads: p.get("threads").and_then(Value::as_u64).unwrap_or(1) as usize,
                }
            })
            .collect();
        Scenario { metrics, processes }
    }
}

// ---------------------------------------------------------------- metrics

enum Handle {
    Counter(Counter),
    CounterVec(CounterVec),
    Gauge(Gauge),
    GaugeVec(GaugeVec),
    Recent(MostRecentGauge),
    RecentVec(MostRecentGaugeVec),
    Histogram(Histogram),
    HistogramVec(HistogramVec),
    Summary(Summary),
    SummaryVec(SummaryVec),
}

fn create(registry: &Registry, m: &MetricSpec) -> Result<Handle, String> {
    let labels: Vec<&str> = m.labels.iter().map(String::as_str).collect();
    let (name, help) = (m.name.as_str(), m.help.as_str());
    let labelled = !labels.is_empty();
    let handle = match &m.kind {
        Kind::Counter if labelled => registry
            .counter_vec(name, help, &labels)
            .map(Handle::CounterVec),
        Kind::Counter => registry.counter(name, help).map(Handle::Counter),
        Kind::Gauge(mode) if mode.is_most_recent() && labelled => registry
            .most_recent_gauge_vec(name, help, &labels, *mode)
            .map(Handle::RecentVec),
        Kind::Gauge(mode) if mode.is_most_recent() => registry
            .most_recent_gauge(name, help, *mode)
            .map(Handle::Recent),
        Kind::Gauge(mode) if labelled => registry
            .gauge_vec(name, help, &labels, *mode)
            .map(Handle::GaugeVec),
        Kind::Gauge(mode) => registry.gauge(name, help, *mode).map(Handle::Gauge),
        Kind::Histogram(b) => {
            let buckets = b.as_deref().unwrap_or(DEFAULT_BUCKETS);
            if labelled {
                registry
                    .histogram_vec(name, help, &labels, buckets)
                    .map(Handle::HistogramVec)
            } else {
                registry
                    .histogram(name, help, buckets)
                    .map(Handle::Histogram)
            }
        }
        Kind::Summary if labelled => registry
            .summary_vec(name, help, &labels)
            .map(Handle::SummaryVec),
        Kind::Summary => registry.summary(name, help).map(Handle::Summary),
    };
    handle.map_err(|e| format!("creating {name}: {e}"))
}

fn create_all(registry: &Registry, scenario: &Scenario) -> Result<Vec<Handle>, String> {
    scenario
        .metrics
        .iter()
        .map(|m| create(registry, m))
        .collect()
}

/// One child of a labelled family, looked up in one of the three ways (by `how`).
fn child<M: prometheus_multiproc::metrics::Metric>(
    vec: &prometheus_multiproc::metrics::MetricVec<M>,
    spec: &MetricSpec,
    values: &[String],
    how: usize,
) -> Result<M, String> {
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    match how % 3 {
        0 => Ok(vec.with_label_values(&values)),
        1 => vec
            .get_metric_with_label_values(&values)
            .map_err(|e| e.to_string()),
        _ => {
            let map: HashMap<&str, &str> = spec
                .labels
                .iter()
                .map(String::as_str)
                .zip(values.iter().copied())
                .collect();
            vec.with(&map).map_err(|e| e.to_string())
        }
    }
}

fn apply(handles: &[Handle], scenario: &Scenario, op: &Op, how: usize) -> Result<(), String> {
    let spec = &scenario.metrics[op.metric];
    let bad = || {
        format!(
            "op {:?} does not apply to {} ({:?})",
            op.kind, spec.name, spec.kind
        )
    };
    let value = || op.value.ok_or_else(|| format!("op {op:?} needs a value"));
    let unlabelled = || -> Result<(), String> {
        if !op.labels.is_empty() {
            return Err(format!("{}: label values {:?}", spec.name, op.labels));
        }
        Ok(())
    };
    let counter = |c: &Counter| match (op.kind, op.value) {
        (OpKind::Inc, None) => {
            c.inc();
            Ok(())
        }
        (OpKind::Inc, Some(v)) => c.inc_by(v).map_err(|e| e.to_string()),
        _ => Err(bad()),
    };
    let gauge = |g: &Gauge| {
        match (op.kind, op.value) {
            (OpKind::Inc, None) => g.inc(),
            (OpKind::Inc, Some(v)) => g.add(v),
            (OpKind::Dec, None) => g.dec(),
            (OpKind::Dec, Some(v)) => g.sub(v),
            (OpKind::Set, Some(v)) => g.set(v),
            (OpKind::SetToCurrentTime, _) => g.set_to_current_time(),
            _ => return Err(bad()),
        }
        Ok(())
    };
    let recent = |g: &MostRecentGauge| {
        match op.kind {
            OpKind::Set => g.set(value()?),
            OpKind::SetToCurrentTime => g.set_to_current_time(),
            _ => return Err(bad()),
        }
        Ok(())
    };
    let histogram = |h: &Histogram| match op.kind {
        OpKind::Observe => {
            h.observe(value()?);
            Ok(())
        }
        _ => Err(bad()),
    };
    let summary = |s: &Summary| match op.kind {
        OpKind::Observe => {
            s.observe(value()?);
            Ok(())
        }
        _ => Err(bad()),
    };
    let labels = &op.labels;
    match &handles[op.metric] {
        Handle::Counter(c) => unlabelled().and_then(|()| counter(c)),
        Handle::CounterVec(v) => counter(&child(v, spec, labels, how)?),
        Handle::Gauge(g) => unlabelled().and_then(|()| gauge(g)),
        Handle::GaugeVec(v) => gauge(&child(v, spec, labels, how)?),
        Handle::Recent(g) => unlabelled().and_then(|()| recent(g)),
        Handle::RecentVec(v) => recent(&child(v, spec, labels, how)?),
        Handle::Histogram(h) => unlabelled().and_then(|()| histogram(h)),
        Handle::HistogramVec(v) => histogram(&child(v, spec, labels, how)?),
        Handle::Summary(s) => unlabelled().and_then(|()| summary(s)),
        Handle::SummaryVec(v) => summary(&child(v, spec, labels, how)?),
    }
}

/// Creates (or looks up) every labelled child the operations of all processes use, in the
/// order they are first used.
fn create_children(handles: &[Handle], scenario: &Scenario) -> Result<(), String> {
    for op in scenario.processes.iter().flat_map(|p| &p.ops) {
        if op.labels.is_empty() {
            continue;
        }
        let spec = &scenario.metrics[op.metric];
        let labels = &op.labels;
        match &handles[op.metric] {
            Handle::CounterVec(v) => {
                child(v, spec, labels, 1)?;
            }
            Handle::GaugeVec(v) => {
                child(v, spec, labels, 1)?;
            }
            Handle::RecentVec(v) => {
                child(v, spec, labels, 1)?;
            }
            Handle::HistogramVec(v) => {
                child(v, spec, labels, 1)?;
            }
            Handle::SummaryVec(v) => {
                child(v, spec, labels, 1)?;
            }
            _ => return Err(format!("{}: label values {labels:?}", spec.name)),
        }
    }
    Ok(())
}

fn run_ops(handles: &[Handle], scenario: &Scenario, proc: &ProcessSpec) -> Result<(), String> {
    for (i, op) in proc.ops.iter().enumerate() {
        apply(handles, scenario, op, i)?;
    }
    Ok(())
}

/// The body of one worker, in the forked child.
fn worker(
    scenario: &Scenario,
    index: usize,
    dir: &Path,
    registry: Option<&Registry>,
    inherited: Option<&[Handle]>,
) -> Result<(), String> {
    let owned;
    let handles = match inherited {
        Some(h) => h,
        None => {
            let registry = match registry {
                Some(r) => r.clone(),
                None => Registry::new(dir).map_err(|e| e.to_string())?,
            };
            owned = create_all(&registry, scenario)?;
            &owned[..]
        }
    };
    let proc = &scenario.processes[index];
    if proc.threads <= 1 {
        return run_ops(handles, scenario, proc);
    }
    let barrier = Barrier::new(proc.threads);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..proc.threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    run_ops(handles, scenario, proc)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect::<Result<Vec<()>, String>>()
            .map(drop)
    })
}

// ---------------------------------------------------------------- processes

/// How long a finished worker waits to be released before it leaves by itself (should the
/// test never release it).
const PARK_TIMEOUT_MS: libc::c_int = 300_000;

/// One forked worker, not reaped yet.
#[derive(Debug)]
struct Worker {
    pid: libc::pid_t,
    /// The write end of the pipe the worker waits on before it exits; -1 once released.
    release: libc::c_int,
}

impl Worker {
    /// Lets the worker exit (it is reaped later).
    fn release(&mut self) {
        if self.release >= 0 {
            write_all(self.release, b"x");
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(self.release) };
            self.release = -1;
        }
    }

    /// Releases the worker and waits until it has exited, leaving it unreaped so that its pid
    /// stays taken.
    fn release_and_wait_exited(&mut self) {
        self.release();
        loop {
            // SAFETY: `siginfo_t` is plain data; all-zero is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: plain system call on our own child, with a valid `siginfo_t` pointer.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
        }
    }
}

/// The Rust workers of a scenario run.
///
/// Workers whose process is not marked dead stay alive (parked, after their operations) until
/// this is dropped: a live process holds its liveness lock, and this crate's collector leaves
/// out the `live*` gauges of processes that have exited, where Python's keeps them until
/// `mark_process_dead`. Parking the live workers makes both rules give the same answer.
/// Dropping releases and reaps every worker.
#[derive(Debug)]
pub struct Workers {
    /// The workers' pids, in the order of the scenario's processes.
    pub pids: Vec<u32>,
    workers: Vec<Worker>,
}

impl Workers {
    /// Lets every worker exit, and reaps them.
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.release();
        }
        for w in &self.workers {
            let mut status = 0;
            // SAFETY: plain system call on our own child.
            unsafe { libc::waitpid(w.pid, &mut status, 0) };
        }
    }
}

fn write_all(fd: libc::c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid buffer of its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Reads from `fd` until EOF, or until the first byte is `K` (success).
fn read_report(fd: libc::c_int) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is a valid buffer of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
        if out.first() == Some(&b'K') {
            break;
        }
    }
    out
}

/// In the worker: waits for a byte on `fd` (or EOF, or the timeout).
fn park(fd: libc::c_int) {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`.
    while unsafe { libc::poll(&mut poll, 1, PARK_TIMEOUT_MS) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

fn pipe() -> Result<[libc::c_int; 2], String> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    Ok(fds)
}

fn close(fds: &[libc::c_int]) {
    for &fd in fds {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
    }
}

/// Forks a worker that runs `body`, reports `K` (done) or `E<message>` through a pipe, then
/// (when done) waits to be released before it `_exit`s. Returns once the worker has reported
/// (or died); the worker is then in `workers`, not reaped.
fn fork_worker(
    workers: &mut Vec<Worker>,
    body: impl FnOnce() -> Result<(), String>,
) -> Result<u32, String> {
    let [report_read, report_write] = pipe()?;
    let [release_read, release_write] = match pipe() {
        Ok(fds) => fds,
        Err(e) => {
            close(&[report_read, report_write]);
            return Err(e);
        }
    };
    // SAFETY: the worker only runs `body` (the crate under test, allocation, file system
    // calls), then leaves with `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        close(&[report_read, report_write, release_read, release_write]);
        return Err(format!("fork: {e}"));
    }
    if pid == 0 {
        close(&[report_read, release_write]);
        let report = match catch_unwind(AssertUnwindSafe(body)) {
            Ok(Ok(())) => b"K".to_vec(),
            Ok(Err(e)) => format!("E{e}").into_bytes(),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "non-string panic".into());
                format!("Epanic: {msg}").into_bytes()
            }
        };
        write_all(report_write, &report);
        let code = if report == b"K" {
            park(release_read);
            0
        } else {
            1
        };
        // SAFETY: ends the worker without running the harness's destructors or atexit
        // handlers.
        unsafe { libc::_exit(code) };
    }
    close(&[report_write, release_read]);
    workers.push(Worker {
        pid,
        release: release_write,
    });
    let report = read_report(report_read);
    close(&[report_read]);
    match report.first() {
        Some(b'K') => Ok(pid as u32),
        Some(_) => Err(format!(
            "worker (pid {pid}) failed: {}",
            String::from_utf8_lossy(&report[1..])
        )),
        None => Err(format!("worker (pid {pid}) died without a report")),
    }
}

/// Deletes `gauge_live*_{pid}.db` in `dir`, as Python's `mark_process_dead(pid, dir)` does.
pub fn mark_process_dead(dir: &Path, pid: u32) {
    for mode in GaugeMode::ALL.into_iter().filter(|m| m.is_live()) {
        let path = dir.join(format!("gauge_{}_{pid}.db", mode.as_str()));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", path.display()),
        }
    }
}

/// Runs `scenario` (the JSON `scenario.py` takes) with Rust worker processes writing into
/// `dir`. Panics if a worker fails. A process marked dead has exited and had its live gauges
/// removed when this returns; the others stay alive until the result is dropped.
pub fn run_rust_scenario(dir: &Path, scenario: &Value, setup: Setup) -> Workers {
    run_rust_scenario_with(dir, scenario, setup, &|_, _| {})
}

/// [`run_rust_scenario`], calling `before(index, pid)` in each worker (with its own pid) before
/// it creates or touches any metric.
pub fn run_rust_scenario_with(
    dir: &Path,
    scenario: &Value,
    setup: Setup,
    before: &(dyn Fn(usize, u32) + Sync),
) -> Workers {
    let parsed = Scenario::parse(scenario);
    let registry = match setup {
        Setup::ChildRegistry | Setup::RegistryPerMetric => None,
        Setup::ParentRegistry | Setup::ParentMetrics => {
            Some(Registry::new(dir).unwrap_or_else(|e| panic!("{e}")))
        }
    };
    let inherited = match setup {
        Setup::ParentMetrics => {
            let registry = registry.as_ref().expect("registry");
            let handles = create_all(registry, &parsed).unwrap_or_else(|e| panic!("{e}"));
            create_children(&handles, &parsed).unwrap_or_else(|e| panic!("{e}"));
            Some(handles)
        }
        _ => None,
    };
    let per_metric = setup == Setup::RegistryPerMetric;
    let mut run = Workers {
        pids: Vec::new(),
        workers: Vec::new(),
    };
    for (index, proc) in parsed.processes.iter().enumerate() {
        let result = fork_worker(&mut run.workers, || {
            // SAFETY: getpid has no preconditions.
            before(index, unsafe { libc::getpid() } as u32);
            if per_metric {
                let handles = parsed
                    .metrics
                    .iter()
                    .map(|m| {
                        let registry = Registry::new(dir).map_err(|e| e.to_string())?;
                        create(&registry, m)
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                return worker(&parsed, index, dir, None, Some(&handles));
            }
            worker(&parsed, index, dir, registry.as_ref(), inherited.as_deref())
        });
        let pid = result.unwrap_or_else(|e| {
            panic!("Rust worker {index} of scenario failed: {e}\nscenario: {scenario:#}")
        });
        run.pids.push(pid);
        if proc.dead {
            run.workers
                .last_mut()
                .expect("the worker just forked")
                .release_and_wait_exited();
            mark_process_dead(dir, pid);
        }
    }
    let mut distinct = run.pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        run.pids.len(),
        "worker pids not distinct: {:?}",
        run.pids
    );
    run
}
