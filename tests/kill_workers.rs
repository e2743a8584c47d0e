//! Automatic liveness with real forked workers and real `SIGKILL`s: when a worker dies without
//! anyone calling `mark_process_dead`, the next scrape leaves out its `live*` gauges (its
//! liveness lock was released by the kernel) while its counters, histograms and non-live gauges
//! stay, so counter totals never go down. Files written by Python carry no lock and keep
//! Python's rule: live until `mark_process_dead`.
//!
//! A forked child never returns into the test harness: it works under `catch_unwind`, reports
//! readiness (or its failure) through a pipe, and leaves with `_exit`.

mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use prometheus_multiproc::collector::{Collector, Scrape};
use prometheus_multiproc::format::key::decode_key;
use prometheus_multiproc::format::layout;
use prometheus_multiproc::{GaugeMode, Registry};

// ------------------------------------------------------------------ forked workers

/// A forked worker process, killed and reaped on drop unless the test reaped it.
struct Worker {
    pid: libc::pid_t,
    /// Read end of the pipe the worker reports on: `R` when ready, `E` and a message on failure.
    report: libc::c_int,
    reaped: bool,
}

/// Forks a worker that runs `setup`, reports ready, then runs `run` (which may loop until the
/// worker is killed) and exits 0. A failure or panic is reported through the pipe, exit 1.
fn fork_worker(setup: impl FnOnce() -> Result<Box<dyn FnOnce()>, String>) -> Worker {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: the child only runs `setup` and `run`, then `_exit`s; it never returns here.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let write = |bytes: &[u8]| {
            let bytes = &bytes[..bytes.len().min(4096)];
            // SAFETY: writing a valid buffer to our write end.
            unsafe { libc::write(fds[1], bytes.as_ptr().cast(), bytes.len()) };
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| match setup() {
            Ok(run) => {
                write(b"R");
                run();
                Ok(())
            }
            Err(m) => Err(m),
        }));
        let code = match outcome {
            Ok(Ok(())) => 0,
            Ok(Err(m)) => {
                write(format!("E{m}").as_bytes());
                1
            }
            Err(_) => {
                write(b"Epanicked");
                1
            }
        };
        // SAFETY: leaves without running the harness's destructors or atexit handlers.
        unsafe { libc::_exit(code) }
    }
    // SAFETY: closing the parent's copy of the write end.
    unsafe { libc::close(fds[1]) };
    Worker {
        pid,
        report: fds[0],
        reaped: false,
    }
}

impl Worker {
    fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Waits until the worker reports ready; panics on a failure report, an early exit or a
    /// timeout. (End of file cannot be relied on: other tests' children may hold the write end.)
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut poll = libc::pollfd {
                fd: self.report,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut poll, 1, 20) };
            if n > 0 {
                let mut buf = [0u8; 4096];
                // SAFETY: reading into a buffer we own.
                let got = unsafe { libc::read(self.report, buf.as_mut_ptr().cast(), buf.len()) };
                if got > 0 {
                    let text = String::from_utf8_lossy(&buf[..got as usize]).into_owned();
                    assert!(
                        text.starts_with('R'),
                        "worker {} failed: {}",
                        self.pid,
                        &text[1..]
                    );
                    return;
                }
            }
            let mut status = 0;
            // SAFETY: polling our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                panic!(
                    "worker {} exited before it was ready ({status:#x})",
                    self.pid
                );
            }
            assert!(
                Instant::now() < deadline,
                "worker {} never got ready",
                self.pid
            );
        }
    }

    /// Sends `SIGKILL` and reaps the worker, asserting that the signal is what ended it.
    fn kill(&mut self) {
        let mut status = 0;
        // SAFETY: signalling and reaping our own child.
        let r = unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, &mut status, 0)
        };
        assert_eq!(r, self.pid, "waitpid: {}", std::io::Error::last_os_error());
        self.reaped = true;
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
            "worker {} ended otherwise than by SIGKILL ({status:#x})",
            self.pid
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.reaped {
            let mut status = 0;
            // SAFETY: as in `kill`.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
        // SAFETY: closing the read end we own.
        unsafe { libc::close(self.report) };
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A worker with the gauges of every kind this file checks, each set to `value`, then a
/// counter and a histogram updated in a tight loop until the worker is killed.
fn spawn_loaded_worker(dir: &Path, value: f64) -> Worker {
    let dir = dir.to_owned();
    let mut worker = fork_worker(move || {
        let registry = Registry::new(&dir).map_err(err)?;
        let gauge = |name: &str, mode| registry.gauge(name, "A gauge.", mode).map_err(err);
        gauge("livesum", GaugeMode::LiveSum)?.set(value);
        gauge("liveall", GaugeMode::LiveAll)?.set(value);
        gauge("all", GaugeMode::All)?.set(value);
        gauge("sum", GaugeMode::Sum)?.set(value);
        let work = registry.counter("work_total", "Work done.").map_err(err)?;
        let latency = registry
            .histogram("latency_seconds", "Latency.", &[0.01, 0.1, 1.0])
            .map_err(err)?;
        work.inc();
        latency.observe(0.05);
        Ok(Box::new(move || {
            let mut i: u64 = 0;
            loop {
                work.inc();
                latency.observe((i % 3) as f64 * 0.05);
                i += 1;
                if i.is_multiple_of(4096) {
                    // Two cores are shared with the rest of the suite.
                    thread::yield_now();
                }
            }
        }) as Box<dyn FnOnce()>)
    });
    worker.wait_ready();
    worker
}

// ------------------------------------------------------------------ scrapes

fn scrape(dir: &Path) -> Scrape {
    let scrape = Collector::new(dir)
        .self_metrics(false)
        .collect()
        .expect("collect");
    assert!(
        scrape.bad_files.is_empty(),
        "bad files: {:?}",
        scrape.bad_files
    );
    scrape
}

/// Values of the samples named `name`, with their labels.
fn samples<'a>(scrape: &'a Scrape, name: &str) -> Vec<(&'a [(String, String)], f64)> {
    scrape
        .families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .map(|s| (s.labels.as_slice(), s.value))
        .collect()
}

/// The value of the unlabelled sample `name`, if present.
fn value(scrape: &Scrape, name: &str) -> Option<f64> {
    let found = samples(scrape, name);
    assert!(found.len() <= 1, "{name} has several samples: {found:?}");
    found.first().map(|(_, v)| *v)
}

/// The `pid` label values of the samples named `name`, sorted, with their values.
fn by_pid(scrape: &Scrape, name: &str) -> Vec<(u32, f64)> {
    let mut out: Vec<(u32, f64)> = samples(scrape, name)
        .into_iter()
        .map(|(labels, v)| {
            let pid = labels
                .iter()
                .find(|(k, _)| k == "pid")
                .unwrap_or_else(|| panic!("{name} sample without pid: {labels:?}"));
            (pid.1.parse().expect("numeric pid"), v)
        })
        .collect();
    out.sort_by_key(|(pid, _)| *pid);
    out
}

fn histogram_count(scrape: &Scrape) -> f64 {
    let count = value(scrape, "latency_seconds_count").expect("histogram count");
    let inf = samples(scrape, "latency_seconds_bucket")
        .into_iter()
        .find(|(labels, _)| labels.iter().any(|(k, v)| k == "le" && v == "+Inf"))
        .map(|(_, v)| v)
        .expect("+Inf bucket");
    assert_eq!(count, inf, "histogram _count is not its +Inf bucket");
    count
}

/// The values of the entries of sample `sample` in one file, read straight from its bytes.
fn file_values(path: &Path, sample: &str) -> Vec<f64> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    layout::entries(&bytes)
        .expect("well-formed file")
        .map(|e| e.expect("well-formed entry"))
        .filter(|e| decode_key(e.key).expect("valid key").sample == sample)
        .map(|e| e.value)
        .collect()
}

fn file_sum(path: &Path, sample: &str) -> f64 {
    file_values(path, sample).iter().sum()
}

/// Tracks totals across scrapes and asserts that none ever goes down.
#[derive(Default)]
struct Monotonic {
    counters: Vec<f64>,
    counts: Vec<f64>,
}

impl Monotonic {
    fn record(&mut self, scrape: &Scrape) {
        let counter = value(scrape, "work_total").expect("counter present");
        let count = histogram_count(scrape);
        if let (Some(&c), Some(&h)) = (self.counters.last(), self.counts.last()) {
            assert!(
                counter >= c,
                "counter total went down: {c} then {counter} (all: {:?})",
                self.counters
            );
            assert!(
                count >= h,
                "histogram count went down: {h} then {count} (all: {:?})",
                self.counts
            );
        }
        self.counters.push(counter);
        self.counts.push(count);
    }
}

const VALUES: [f64; 3] = [1.0, 10.0, 100.0];

// ------------------------------------------------------------------ tests

#[test]
fn killed_worker_live_gauges_vanish_while_its_counters_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut workers: Vec<Worker> = VALUES
        .iter()
        .map(|v| spawn_loaded_worker(dir.path(), *v))
        .collect();
    let pids: Vec<u32> = workers.iter().map(Worker::pid).collect();
    let mut totals = Monotonic::default();

    let before = scrape(dir.path());
    totals.record(&before);
    assert_eq!(value(&before, "livesum"), Some(111.0));
    assert_eq!(value(&before, "sum"), Some(111.0));
    let mut all: Vec<(u32, f64)> = pids.iter().copied().zip(VALUES).collect();
    all.sort_by_key(|(pid, _)| *pid);
    assert_eq!(by_pid(&before, "liveall"), all);
    assert_eq!(by_pid(&before, "all"), all);

    // The workers are busy: the counter grows between scrapes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        thread::sleep(Duration::from_millis(20));
        let s = scrape(dir.path());
        totals.record(&s);
        if totals.counters.last() > totals.counters.first() {
            break;
        }
        assert!(Instant::now() < deadline, "the workers do not count");
    }

    // SIGKILL the middle worker in the middle of its loop; nobody calls mark_process_dead.
    let killed = pids[1];
    workers[1].kill();
    let dead_counter = file_sum(
        &dir.path().join(format!("counter_{killed}.db")),
        "work_total",
    );
    assert!(dead_counter >= 1.0);
    assert!(
        dir.path()
            .join(format!("gauge_livesum_{killed}.db"))
            .exists(),
        "the live gauge file is left out of scrapes, not removed"
    );

    let after = scrape(dir.path());
    totals.record(&after);
    assert_eq!(
        value(&after, "livesum"),
        Some(101.0),
        "livesum still counts the killed worker"
    );
    let live: Vec<(u32, f64)> = all.iter().copied().filter(|(p, _)| *p != killed).collect();
    assert_eq!(
        by_pid(&after, "liveall"),
        live,
        "liveall still shows the killed worker"
    );
    // Non-live gauges keep a dead worker's value, as Python's do.
    assert_eq!(by_pid(&after, "all"), all);
    assert_eq!(value(&after, "sum"), Some(111.0));
    assert!(value(&after, "work_total").unwrap() >= dead_counter);

    for _ in 0..5 {
        thread::sleep(Duration::from_millis(10));
        let s = scrape(dir.path());
        totals.record(&s);
        assert_eq!(value(&s, "livesum"), Some(101.0));
    }

    // Kill the rest: the final totals are exactly the sums of every worker's files.
    for w in &mut workers {
        if !w.reaped {
            w.kill();
        }
    }
    let last = scrape(dir.path());
    totals.record(&last);
    let counter_sum: f64 = pids
        .iter()
        .map(|p| file_sum(&dir.path().join(format!("counter_{p}.db")), "work_total"))
        .sum();
    assert_eq!(value(&last, "work_total"), Some(counter_sum));
    // The count is the total of the buckets, which is all a file stores (with the sum).
    let count_sum: f64 = pids
        .iter()
        .map(|p| {
            file_sum(
                &dir.path().join(format!("histogram_{p}.db")),
                "latency_seconds_bucket",
            )
        })
        .sum();
    assert_eq!(histogram_count(&last), count_sum);
    assert_eq!(value(&last, "livesum"), None, "every worker is dead");
    assert!(by_pid(&last, "liveall").is_empty());
    assert_eq!(by_pid(&last, "all"), all);
    assert_eq!(value(&last, "sum"), Some(111.0));
    assert!(totals.counters.len() >= 4);
}

#[test]
fn live_gauge_of_an_exited_python_worker_stays_until_mark_process_dead() {
    let Some(py) = common::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Python workers leave no lock file: the one not marked dead counts as alive, as in
    // Python; the one marked dead has no live gauge file left.
    let scenario = serde_json::json!({
        "metrics": [
            {"type": "gauge", "name": "livesum", "help": "A gauge.", "mode": "livesum"},
            {"type": "gauge", "name": "liveall", "help": "A gauge.", "mode": "liveall"},
            {"type": "counter", "name": "work", "help": "Work done."}
        ],
        "processes": [
            {"ops": [
                {"metric": 0, "op": "set", "value": 3},
                {"metric": 1, "op": "set", "value": 3},
                {"metric": 2, "op": "inc"}
            ]},
            {"ops": [
                {"metric": 0, "op": "set", "value": 1000},
                {"metric": 1, "op": "set", "value": 1000},
                {"metric": 2, "op": "inc"}
            ], "dead": true}
        ]
    });
    let py_pids = common::run_scenario(&py, dir.path(), &scenario.to_string());
    assert_eq!(py_pids.len(), 2);
    for p in &py_pids {
        assert!(!dir.path().join(format!("live_{p}.lock")).exists());
    }

    // A Rust worker in the same directory, killed without mark_process_dead.
    let dir_path = dir.path().to_owned();
    let mut rust = fork_worker(move || {
        let registry = Registry::new(&dir_path).map_err(err)?;
        registry
            .gauge("livesum", "A gauge.", GaugeMode::LiveSum)
            .map_err(err)?
            .set(5.0);
        registry
            .gauge("liveall", "A gauge.", GaugeMode::LiveAll)
            .map_err(err)?
            .set(5.0);
        registry.counter("work", "Work done.").map_err(err)?.inc();
        Ok(Box::new(|| loop {
            thread::sleep(Duration::from_secs(1));
        }) as Box<dyn FnOnce()>)
    });
    rust.wait_ready();
    let alive = scrape(dir.path());
    assert_eq!(value(&alive, "livesum"), Some(8.0));
    rust.kill();

    let ours = scrape(dir.path());
    assert_eq!(
        value(&ours, "livesum"),
        Some(3.0),
        "the exited Python worker stays live, the killed Rust worker does not"
    );
    assert_eq!(by_pid(&ours, "liveall"), vec![(py_pids[0], 3.0)]);
    assert_eq!(value(&ours, "work_total"), Some(3.0));

    // Python's own collector has no liveness: it still counts the killed Rust worker, until
    // mark_process_dead; then both agree.
    let theirs = common::python_collect(&py, dir.path());
    assert_eq!(
        common::sample_value(&theirs, "livesum", &[]),
        Some(8.0),
        "Python's collector is expected to count every live gauge file"
    );
    let marked =
        prometheus_multiproc::liveness::mark_process_dead(dir.path(), &rust.pid().to_string())
            .unwrap();
    assert_eq!(marked, 2);
    let theirs = common::python_collect(&py, dir.path());
    assert_eq!(common::sample_value(&theirs, "livesum", &[]), Some(3.0));
    assert_eq!(value(&scrape(dir.path()), "livesum"), Some(3.0));
}
