//! A worker that gets the process id of a dead one (a respawned worker with a reused pid, or a
//! fixed `process_id` as Python's `process_identifier` allows) does not inherit the dead
//! worker's `live*` gauges, while both workers' counters are kept.
//!
//! Real pid reuse is made certain with pid namespaces: each worker runs as pid 1 of its own
//! namespace (`unshare --pid --fork --mount-proc`), as a re-run of this test binary. Where
//! namespaces are not permitted that part is skipped; a fixed process id in forked children
//! covers the same logic everywhere.
//!
//! Namespaces also check that a live worker stays live for collectors that see its start time
//! otherwise than it does: inside a pid namespace that kept the outer `/proc`, and outside a
//! time namespace.
//!
//! A forked child never returns into the test harness: it works under `catch_unwind`, reports
//! through a pipe, and leaves with `_exit`.

use std::fs;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use prometheus_multiproc::collector::{Collector, Scrape};
use prometheus_multiproc::format::key::decode_key;
use prometheus_multiproc::format::layout;
use prometheus_multiproc::liveness::{liveness, Liveness};
use prometheus_multiproc::{GaugeMode, Registry};

// ------------------------------------------------------------------ scrapes and files

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

/// The value of the unlabelled sample `name`, if present.
fn value(scrape: &Scrape, name: &str) -> Option<f64> {
    let found: Vec<f64> = scrape
        .families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .collect();
    assert!(found.len() <= 1, "{name} has several samples: {found:?}");
    found.first().copied()
}

/// The (sample name, value) entries of one file, read straight from its bytes.
fn file_entries(path: &Path) -> Vec<(String, f64)> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    layout::entries(&bytes)
        .expect("well-formed file")
        .map(|e| {
            let e = e.expect("well-formed entry");
            (decode_key(e.key).expect("valid key").sample, e.value)
        })
        .collect()
}

fn db_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".db"))
        .collect();
    names.sort();
    names
}

// ------------------------------------------------------------------ (a) pid namespaces

/// Set in the environment of a re-run of this binary that must act as a namespace worker.
const NS_DIR_ENV: &str = "PID_REUSE_WORKER_DIR";
/// The value the worker adds to its `livesum` gauge.
const NS_VALUE_ENV: &str = "PID_REUSE_WORKER_VALUE";
/// A file the worker creates, holding its pid, once its metrics are written.
const NS_READY_ENV: &str = "PID_REUSE_WORKER_READY";
/// `exit` to exit once ready; otherwise the worker sleeps until killed.
const NS_MODE_ENV: &str = "PID_REUSE_WORKER_MODE";

/// Not a test of its own: the body of a worker run in fresh namespaces by the tests below,
/// as a re-run of this binary. Without its environment it does nothing.
///
/// It records, then asks a forked child (a collector inside the same namespaces, another
/// process than the writer) what it sees, and reports `{its pid} {livesum seen}` in the ready
/// file.
#[test]
#[ignore = "run by other tests inside namespaces"]
fn namespace_worker() {
    let Some(dir) = std::env::var_os(NS_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let value: f64 = std::env::var(NS_VALUE_ENV).unwrap().parse().unwrap();
    let ready = PathBuf::from(std::env::var_os(NS_READY_ENV).unwrap());
    let registry = Registry::new(&dir).unwrap();
    // `add`, not `set`: a file inherited from the dead worker would show the sum.
    registry
        .gauge("livesum", "A gauge.", GaugeMode::LiveSum)
        .unwrap()
        .add(value);
    registry.counter("work", "Work done.").unwrap().inc();
    let seen = livesum_seen_by_a_child(&dir);
    let tmp = ready.with_extension("tmp");
    fs::write(&tmp, format!("{} {seen}", std::process::id())).unwrap();
    fs::rename(&tmp, &ready).unwrap();
    if std::env::var(NS_MODE_ENV).as_deref() == Ok("exit") {
        return;
    }
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

/// The `livesum` a forked child's scrape of `dir` shows (`none` when absent).
fn livesum_seen_by_a_child(dir: &Path) -> String {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only scrapes, writes to the pipe and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let seen = catch_unwind(AssertUnwindSafe(|| {
            match Collector::new(dir).self_metrics(false).collect() {
                Ok(s) => value(&s, "livesum").map_or("none".to_owned(), |v| v.to_string()),
                Err(e) => format!("error:{e}"),
            }
        }))
        .unwrap_or_else(|_| "panicked".to_owned());
        // SAFETY: writing a valid buffer, then leaving without running the harness's
        // destructors.
        unsafe {
            libc::write(fds[1], seen.as_ptr().cast(), seen.len());
            libc::_exit(0)
        }
    }
    let mut status = 0;
    let mut buf = [0u8; 256];
    // SAFETY: closing our write end, reaping our own child, reading into a buffer we own
    // (the child has exited, so the pipe holds all it wrote).
    let n = unsafe {
        libc::close(fds[1]);
        libc::waitpid(pid, &mut status, 0);
        let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
        libc::close(fds[0]);
        n
    };
    String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned()
}

/// Whether this machine lets us run `unshare ARGS`: `Err` says why not.
fn unshare_permitted(args: &[&str]) -> Result<String, String> {
    let out = Command::new("unshare")
        .args(args)
        .args(["sh", "-c", "echo $$"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "unshare {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `unshare ARGS` if permitted (`SKIPPED` otherwise: not a missing test tool, and the
/// fixed-process-id test below covers the pid reuse logic everywhere).
fn namespaces(args: &[&str], pid_namespace: bool) -> bool {
    match unshare_permitted(args) {
        Ok(pid) if !pid_namespace || pid == "1" => true,
        Ok(pid) => {
            eprintln!("SKIPPED: unshare {} gave pid {pid}, not 1", args.join(" "));
            false
        }
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            false
        }
    }
}

/// A re-run of this binary as [`namespace_worker`] in new namespaces.
struct NamespaceWorker {
    unshare: Child,
    ready: PathBuf,
    stderr: PathBuf,
}

impl NamespaceWorker {
    fn start(unshare: &[&str], dir: &Path, value: f64, name: &str, mode: &str) -> NamespaceWorker {
        let exe = std::env::current_exe().unwrap();
        let scratch = dir.parent().unwrap();
        let ready = scratch.join(format!("{name}.ready"));
        let stderr = scratch.join(format!("{name}.stderr"));
        let unshare = Command::new("unshare")
            .args(unshare)
            .arg(exe)
            .args([
                "--exact",
                "namespace_worker",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(NS_DIR_ENV, dir)
            .env(NS_VALUE_ENV, value.to_string())
            .env(NS_READY_ENV, &ready)
            .env(NS_MODE_ENV, mode)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start unshare");
        NamespaceWorker {
            unshare,
            ready,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the worker has written its metrics; returns its pid inside the namespace
    /// and the `livesum` a collector inside the namespace saw.
    fn wait_ready(&mut self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(report) = fs::read_to_string(&self.ready) {
                let (pid, seen) = report.split_once(' ').expect("pid and value");
                return (pid.to_owned(), seen.to_owned());
            }
            if let Some(status) = self.unshare.try_wait().unwrap() {
                panic!(
                    "namespace worker ended before it was ready ({status}):\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "namespace worker never got ready:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `SIGKILL`s the namespace's init (which takes the namespace down), then reaps `unshare`,
    /// which waits for it: once this returns, the worker is gone.
    fn kill(&mut self) {
        let parent = self.unshare.id();
        for pid in children_of(parent) {
            // SAFETY: plain system call on a child of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.unshare.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.unshare.kill();
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for NamespaceWorker {
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

/// The pids whose parent is `parent` (from `/proc/*/stat`).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: count from the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(&parent.to_string()) {
            out.push(pid);
        }
    }
    out
}

/// A new pid namespace with its own `/proc`.
const PID_NAMESPACE: &[&str] = &["--pid", "--fork", "--mount-proc"];

#[test]
fn worker_reusing_a_dead_workers_pid_in_a_namespace_starts_fresh_live_gauges() {
    if !namespaces(PID_NAMESPACE, true) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("metrics");
    fs::create_dir(&dir).unwrap();

    let mut a = NamespaceWorker::start(PID_NAMESPACE, &dir, 5.0, "a", "stay");
    assert_eq!(
        a.wait_ready(),
        ("1".to_owned(), "5".to_owned()),
        "worker A: pid in its namespace, livesum seen there"
    );
    assert_eq!(
        db_names(&dir),
        ["counter_1.db", "gauge_livesum_1.db"],
        "worker A's files"
    );
    let alive = scrape(&dir);
    assert_eq!(value(&alive, "livesum"), Some(5.0));
    assert_eq!(value(&alive, "work_total"), Some(1.0));

    a.kill();
    let dead = scrape(&dir);
    assert_eq!(value(&dead, "livesum"), None, "killed worker A still live");
    assert_eq!(value(&dead, "work_total"), Some(1.0));

    let mut b = NamespaceWorker::start(PID_NAMESPACE, &dir, 7.0, "b", "stay");
    assert_eq!(
        b.wait_ready(),
        ("1".to_owned(), "7".to_owned()),
        "worker B: pid in its namespace, livesum seen there"
    );
    assert_eq!(db_names(&dir), ["counter_1.db", "gauge_livesum_1.db"]);
    let reused = scrape(&dir);
    assert_eq!(
        value(&reused, "livesum"),
        Some(7.0),
        "worker B inherited worker A's live gauge"
    );
    assert_eq!(
        value(&reused, "work_total"),
        Some(2.0),
        "the counters of both workers are kept"
    );
    assert_eq!(
        file_entries(&dir.join("gauge_livesum_1.db")),
        [("livesum".to_owned(), 7.0)]
    );

    b.kill();
    let gone = scrape(&dir);
    assert_eq!(value(&gone, "livesum"), None);
    assert_eq!(value(&gone, "work_total"), Some(2.0));
}

#[test]
fn live_worker_stays_live_in_a_pid_namespace_that_kept_the_outer_proc() {
    // `unshare --pid --fork` without remounting `/proc`: inside, `/proc/1` is the outer
    // namespace's pid 1, not the worker, so its start time cannot be compared with the stamp.
    let args = ["--pid", "--fork"];
    if !namespaces(&args, true) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("metrics");
    fs::create_dir(&dir).unwrap();
    let mut worker = NamespaceWorker::start(&args, &dir, 5.0, "w", "stay");
    let (pid, seen) = worker.wait_ready();
    assert_eq!(pid, "1");
    assert_eq!(
        seen, "5",
        "a collector in the namespace drops the live gauge of live worker 1"
    );
    assert_eq!(value(&scrape(&dir), "livesum"), Some(5.0));
    worker.kill();
    assert_eq!(value(&scrape(&dir), "livesum"), None);
}

#[test]
fn live_worker_stays_live_in_another_time_namespace() {
    // In a time namespace, start times in `/proc/PID/stat` are shifted by its boottime offset:
    // the worker's stamp is not the start time a collector outside reads.
    let args = ["--time", "--boottime", "100000", "--fork"];
    if !namespaces(&args, false) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("metrics");
    fs::create_dir(&dir).unwrap();
    let mut worker = NamespaceWorker::start(&args, &dir, 5.0, "w", "stay");
    let (_, seen) = worker.wait_ready();
    assert_eq!(seen, "5", "a collector in the same time namespace");
    assert_eq!(
        value(&scrape(&dir), "livesum"),
        Some(5.0),
        "a collector outside the time namespace drops the live gauge of a live worker"
    );
    worker.kill();
    assert_eq!(value(&scrape(&dir), "livesum"), None);
}

// ------------------------------------------------------------------ (b), (c) fixed process id

/// A forked child, killed and reaped on drop unless the test reaped it.
struct Forked {
    pid: libc::pid_t,
    /// Read end of the child's reports: `R` when ready, `E` and a message on failure.
    report: libc::c_int,
    /// Write end of the parent's go-ahead.
    go: libc::c_int,
    reaped: bool,
}

/// Forks a child that runs `setup`, reports ready, waits for [`Forked::release`] (or to be
/// killed), then exits 0. A failure or panic is reported through the pipe, exit 1.
fn fork_child(setup: impl FnOnce() -> Result<(), String>) -> Forked {
    let mut report = [0 as libc::c_int; 2];
    let mut go = [0 as libc::c_int; 2];
    // SAFETY: both arrays have room for two descriptors.
    unsafe {
        assert_eq!(libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC), 0);
        assert_eq!(libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC), 0);
    }
    // SAFETY: the child only runs `setup`, waits and `_exit`s; it never returns here.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let write = |bytes: &[u8]| {
            let bytes = &bytes[..bytes.len().min(4096)];
            // SAFETY: writing a valid buffer to our write end.
            unsafe { libc::write(report[1], bytes.as_ptr().cast(), bytes.len()) };
        };
        let code = match catch_unwind(AssertUnwindSafe(setup)) {
            Ok(Ok(())) => {
                write(b"R");
                let mut byte = 0u8;
                // SAFETY: blocking read of one byte into a byte we own.
                unsafe { libc::read(go[0], (&mut byte as *mut u8).cast(), 1) };
                0
            }
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
    // SAFETY: closing the parent's copies of the child's ends.
    unsafe {
        libc::close(report[1]);
        libc::close(go[0]);
    }
    Forked {
        pid,
        report: report[0],
        go: go[1],
        reaped: false,
    }
}

impl Forked {
    /// Waits until the child reports ready; panics on a failure, an early exit or a timeout.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut poll = libc::pollfd {
                fd: self.report,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut poll, 1, 20) } > 0 {
                let mut buf = [0u8; 4096];
                // SAFETY: reading into a buffer we own.
                let n = unsafe { libc::read(self.report, buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
                    assert!(
                        text.starts_with('R'),
                        "child {} failed: {}",
                        self.pid,
                        &text[1..]
                    );
                    return;
                }
            }
            let mut status = 0;
            // SAFETY: polling our own child.
            if unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } == self.pid {
                self.reaped = true;
                panic!(
                    "child {} exited before it was ready ({status:#x})",
                    self.pid
                );
            }
            assert!(
                Instant::now() < deadline,
                "child {} never got ready",
                self.pid
            );
        }
    }

    /// `SIGKILL`s and reaps the child.
    fn kill(&mut self) {
        let mut status = 0;
        // SAFETY: signalling and reaping our own child.
        let r = unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, &mut status, 0)
        };
        assert_eq!(r, self.pid);
        self.reaped = true;
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
    }

    /// Lets the child exit normally, and reaps it.
    fn release(&mut self) {
        let mut status = 0;
        // SAFETY: writing one byte we own, then reaping our own child.
        let r = unsafe {
            libc::write(self.go, b"g".as_ptr().cast(), 1);
            libc::waitpid(self.pid, &mut status, 0)
        };
        assert_eq!(r, self.pid);
        self.reaped = true;
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child {} did not exit cleanly ({status:#x})",
            self.pid
        );
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if !self.reaped {
            let mut status = 0;
            // SAFETY: as in `kill`.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
        // SAFETY: closing the descriptors we own.
        unsafe {
            libc::close(self.report);
            libc::close(self.go);
        }
    }
}

const FIXED_ID: u32 = 4242;

fn fixed_id() -> u32 {
    FIXED_ID
}

/// A child recording under process id 4242: `add`s `value` to `livesum` (so a file inherited
/// from a predecessor would show the sum), counts once, and sets the gauges named in `extra`.
fn spawn_fixed_id_worker(dir: &Path, value: f64, extra: &'static [&'static str]) -> Forked {
    let dir = dir.to_owned();
    let mut child = fork_child(move || {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let registry = Registry::with_process_id(&dir, fixed_id).map_err(|x| e(&x))?;
        registry
            .gauge("livesum", "A gauge.", GaugeMode::LiveSum)
            .map_err(|x| e(&x))?
            .add(value);
        for name in extra {
            registry
                .gauge(name, "A gauge.", GaugeMode::LiveSum)
                .map_err(|x| e(&x))?
                .set(1.0);
        }
        registry
            .counter("work", "Work done.")
            .map_err(|x| e(&x))?
            .inc();
        Ok(())
    });
    child.wait_ready();
    child
}

#[test]
fn worker_reusing_a_dead_workers_process_id_starts_fresh_live_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let livesum_file = dir.path().join(format!("gauge_livesum_{FIXED_ID}.db"));
    let lock_file = dir.path().join(format!("live_{FIXED_ID}.lock"));

    let mut a = spawn_fixed_id_worker(dir.path(), 5.0, &["only_a"]);
    let alive = scrape(dir.path());
    assert_eq!(value(&alive, "livesum"), Some(5.0));
    assert_eq!(value(&alive, "only_a"), Some(1.0));
    assert!(lock_file.exists());

    a.kill();
    let dead = scrape(dir.path());
    assert_eq!(value(&dead, "livesum"), None, "killed worker A still live");
    assert_eq!(value(&dead, "only_a"), None);
    assert_eq!(value(&dead, "work_total"), Some(1.0));
    assert!(livesum_file.exists(), "left out, not removed, by a scrape");

    // (b) B gets the same id: it removes A's live gauge files and starts a fresh one.
    let mut b = spawn_fixed_id_worker(dir.path(), 7.0, &[]);
    let reused = scrape(dir.path());
    assert_eq!(
        value(&reused, "livesum"),
        Some(7.0),
        "worker B inherited worker A's live gauge"
    );
    assert_eq!(value(&reused, "only_a"), None);
    assert_eq!(
        value(&reused, "work_total"),
        Some(2.0),
        "the counters of both workers are kept"
    );
    assert!(lock_file.exists());
    assert_eq!(
        file_entries(&livesum_file),
        [("livesum".to_owned(), 7.0)],
        "worker A's values are still in {}",
        livesum_file.display()
    );
    assert_eq!(
        db_names(dir.path()),
        [
            format!("counter_{FIXED_ID}.db"),
            format!("gauge_livesum_{FIXED_ID}.db")
        ]
    );

    // (c) B exits normally, and nobody calls mark_process_dead: its lock is released, so its
    // live gauge is left out, while its file and counters stay.
    b.release();
    let exited = scrape(dir.path());
    assert_eq!(
        value(&exited, "livesum"),
        None,
        "worker B exited but its live gauge is still served"
    );
    assert_eq!(value(&exited, "work_total"), Some(2.0));
    assert!(livesum_file.exists());
}

#[test]
fn dead_workers_live_gauges_stay_out_while_a_successor_holds_only_its_claim_lock() {
    let dir = tempfile::tempdir().unwrap();
    let id = FIXED_ID.to_string();
    let mut a = spawn_fixed_id_worker(dir.path(), 5.0, &[]);
    assert_eq!(liveness(dir.path(), &id), Liveness::Alive);
    a.kill();
    assert_eq!(liveness(dir.path(), &id), Liveness::Dead);

    // A successor between taking the claim lock (byte 0) and the ready lock (byte 1): it is
    // removing A's live gauges, which must not be served meanwhile.
    let lock = dir.path().join(format!("live_{FIXED_ID}.lock"));
    let mut successor = fork_child(move || {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&lock)
            .map_err(|e| e.to_string())?;
        // SAFETY: `flock` is plain old data; all-zero is a valid value.
        let mut claim: libc::flock = unsafe { std::mem::zeroed() };
        claim.l_type = libc::F_WRLCK as libc::c_short;
        claim.l_whence = libc::SEEK_SET as libc::c_short;
        claim.l_start = 0;
        claim.l_len = 1;
        // SAFETY: fcntl with F_SETLK and a valid `flock` on a descriptor we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &claim) } != 0 {
            return Err(format!("lock: {}", std::io::Error::last_os_error()));
        }
        // Held until the child exits.
        std::mem::forget(file);
        Ok(())
    });
    successor.wait_ready();
    assert_eq!(liveness(dir.path(), &id), Liveness::Dead);
    assert_eq!(value(&scrape(dir.path()), "livesum"), None);
    successor.release();
    assert_eq!(liveness(dir.path(), &id), Liveness::Dead);
}
