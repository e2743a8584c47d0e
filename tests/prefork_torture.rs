//! The `prefork_server` example under load while its workers are `SIGKILL`ed at random: every
//! scrape of `/metrics` parses, the request counter never goes down, raw user ids never become
//! label values, the final count of requests lies between the responses received and the
//! requests sent, the live gauges show the live workers only, Python's `MultiProcessCollector`
//! reads the directory as we do, and `SIGTERM` stops the master and every worker.
//!
//! The example binary is the one `cargo test` builds next to this test (built here when
//! missing). Only loopback connections are made.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{PyFamily, PySample};
use prometheus_multiproc::collector::{BadFileReason, Collector};
use rand::Rng;

const WORKERS: usize = 3;
const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 375;
/// Pause between two requests of one client, so that the load lasts a few seconds.
const CLIENT_PAUSE: Duration = Duration::from_millis(6);
const KILL_EVERY: Duration = Duration::from_millis(200);
const SCRAPE_EVERY: Duration = Duration::from_millis(100);
/// User ids are taken from here up: numbers no pid, count or bucket bound looks like.
const FIRST_USER_ID: u64 = 987_650_000;

// ------------------------------------------------------------------ the example binary

/// `target/<profile>/examples/prefork_server`, next to `target/<profile>/deps/<this test>`.
/// `cargo test --test prefork_torture` does not build examples, so it is built here when
/// missing or older than a source it is built from (cargo does not hold its build lock while
/// tests run).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps");
    let binary = profile_dir.join("examples").join("prefork_server");
    let root = common::repo_root();
    let built = fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let sources = ["src", "crates/format/src", "examples", "Cargo.toml"];
    let stale = built.is_none_or(|built| {
        sources
            .iter()
            .any(|s| newest_modification(&root.join(s)).is_some_and(|m| m > built))
    });
    if stale {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "-p",
                "prometheus-multiproc",
                "--example",
                "prefork_server",
            ])
            .current_dir(&root);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --example prefork_server failed"
        );
    }
    assert!(
        binary.is_file(),
        "no example binary at {}",
        binary.display()
    );
    binary
}

/// The latest modification time of a file, or of the files under a directory.
fn newest_modification(path: &Path) -> Option<std::time::SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|e| newest_modification(&e.path()))
        .max()
}

// ------------------------------------------------------------------ processes

/// Fields of `/proc/PID/stat` after the command name: state is 0, ppid 1, start time 19.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not zombie) children of `parent`.
fn children_of(parent: u32) -> BTreeSet<u32> {
    all_pids()
        .into_iter()
        .filter(|p| stat_fields(*p).is_some_and(|f| f[1] == parent.to_string() && f[0] != "Z"))
        .collect()
}

/// Live processes whose environment names `dir` as their metrics directory.
fn processes_using(dir: &Path) -> Vec<u32> {
    let mut wanted = b"PROMETHEUS_MULTIPROC_DIR=".to_vec();
    wanted.extend_from_slice(dir.as_os_str().as_encoded_bytes());
    all_pids()
        .into_iter()
        .filter(|p| {
            let env = fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|v| v == wanted.as_slice())
                && stat_fields(*p).is_some_and(|f| f[0] != "Z")
        })
        .collect()
}

/// The running server; on drop (a failed test) its workers and then the master are killed.
struct Server {
    master: Child,
    addr: SocketAddr,
    /// Lines the master printed after the first one.
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Server {
    fn start(binary: &Path, dir: &Path) -> Server {
        let mut master = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--workers", &WORKERS.to_string()])
            .env("PROMETHEUS_MULTIPROC_DIR", dir)
            .env_remove("prometheus_multiproc_dir")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prefork_server");
        let stdout = master.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("prefork_server printed nothing");
        let addr = first
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in the first line: {first:?}"));
        Server {
            master,
            addr,
            lines,
            log: vec![first],
        }
    }

    fn pid(&self) -> u32 {
        self.master.id()
    }

    fn workers(&self) -> BTreeSet<u32> {
        children_of(self.pid())
    }

    /// Everything the master printed so far.
    fn log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.master.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: plain system calls on the master (our child) and its children.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGSTOP) };
        for w in self.workers() {
            // SAFETY: as above.
            unsafe { libc::kill(w as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

// ------------------------------------------------------------------ HTTP client

/// One `GET` over a fresh connection (`Connection: close`).
struct Response {
    status: u16,
    body: String,
}

enum Outcome {
    /// The request could not be written: the server cannot have counted it.
    NotSent(String),
    /// Written, but no complete response came back (the worker was killed, say).
    Lost(String),
    Done(Response),
}

fn get(addr: SocketAddr, path: &str) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return Outcome::NotSent(format!("connect: {e}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return Outcome::NotSent(format!("write: {e}"));
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        return Outcome::Lost(format!("read: {e}"));
    }
    match parse_response(&raw) {
        Ok(r) => Outcome::Done(r),
        Err(e) => Outcome::Lost(e),
    }
}

/// A complete HTTP/1.1 response: status line, headers and exactly `Content-Length` bytes of
/// body (the server always sends one).
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("incomplete response ({} bytes)", raw.len()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or("no Content-Length")?;
    if body.len() != length {
        return Err(format!("body of {} bytes, announced {length}", body.len()));
    }
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

// ------------------------------------------------------------------ text format parser

/// Parses the text exposition format 0.0.4 strictly enough to catch a torn or malformed
/// scrape: `# HELP` / `# TYPE` lines, then samples `name{label="value",...} value` of the
/// family just typed. Returns the families in the shape `collect.py` prints.
fn parse_text(text: &str) -> Result<Vec<PyFamily>, String> {
    let mut families: Vec<PyFamily> = Vec::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("no newline at the end".into());
    }
    for (n, line) in text.lines().enumerate() {
        let fail = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            helps.insert(name.to_owned(), unescape_help(help).map_err(|e| fail(&e))?);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, typ) = rest.split_once(' ').ok_or_else(|| fail("no type"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&typ) {
                return Err(fail("unknown type"));
            }
            if families.iter().any(|f| f.name == name) {
                return Err(fail("family typed twice"));
            }
            families.push(PyFamily {
                name: name.to_owned(),
                typ: typ.to_owned(),
                help: helps.get(name).cloned().unwrap_or_default(),
                samples: Vec::new(),
            });
        } else if line.starts_with('#') || line.is_empty() {
            return Err(fail("unexpected comment or blank line"));
        } else {
            let sample = parse_sample(line).map_err(|e| fail(&e))?;
            let family = families
                .last_mut()
                .ok_or_else(|| fail("sample before TYPE"))?;
            let suffixes: &[&str] = match family.typ.as_str() {
                "counter" => &["_total", "_created", ""],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                "summary" => &["_count", "_sum", "_created", ""],
                _ => &[""],
            };
            let ok = suffixes
                .iter()
                .any(|s| sample.name.strip_suffix(s) == Some(&family.name));
            if !ok {
                return Err(fail("sample outside its family"));
            }
            family.samples.push(sample);
        }
    }
    // Counters are named without `_total`, as Python's collector names them.
    for f in &mut families {
        if f.typ == "counter" {
            if let Some(base) = f.name.strip_suffix("_total") {
                f.name = base.to_owned();
            }
        }
    }
    Ok(families)
}

fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape \\{other:?} in HELP")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<PySample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or("no value after the sample name")?;
    let name = &line[..name_end];
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if name.is_empty() || !valid_name {
        return Err(format!("bad sample name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            let mut label = String::new();
            let mut closed = false;
            for (i, c) in chars.by_ref() {
                match c {
                    '=' => break,
                    '}' if label.is_empty() => {
                        closed = true;
                        rest = &inner[i + 1..];
                        break;
                    }
                    c if c.is_ascii_alphanumeric() || c == '_' => label.push(c),
                    c => return Err(format!("bad character {c:?} in a label name")),
                }
            }
            if closed {
                break;
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {label:?} without a quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape \\{other:?} in a label value")),
                    },
                    Some(c) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            if labels.insert(label.clone(), value).is_some() {
                return Err(format!("label {label:?} twice"));
            }
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &inner[i + 1..];
                    break;
                }
                other => return Err(format!("expected , or }} after a label, got {other:?}")),
            }
        }
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(PySample {
        name: name.to_owned(),
        labels,
        value,
    })
}

// ------------------------------------------------------------------ checks on one scrape

const REQUESTS: &str = "http_requests_total";

/// Checks a scrape's invariants and returns (all requests counted, requests other than to
/// `/metrics`).
fn check_scrape(families: &[PyFamily]) -> Result<(f64, f64), String> {
    let mut total = 0.0;
    let mut not_metrics = 0.0;
    for family in families {
        for s in &family.samples {
            for (k, v) in &s.labels {
                if v.starts_with("/users/") && v != "/users/{id}" {
                    return Err(format!("raw user path in label {k}={v:?} of {}", s.name));
                }
                if k != "pid" && v.contains(&FIRST_USER_ID.to_string()[..5]) {
                    return Err(format!("user id in label {k}={v:?} of {}", s.name));
                }
            }
            if s.name == REQUESTS {
                total += s.value;
                if s.labels.get("path").map(String::as_str) != Some("/metrics") {
                    not_metrics += s.value;
                }
            }
        }
        if family.typ == "histogram" {
            check_histogram(family)?;
        }
    }
    Ok((total, not_metrics))
}

/// A sample's labels, in name order.
type Labels = Vec<(String, String)>;

/// Buckets of each label set never decrease with `le`, and `+Inf` is `_count`.
fn check_histogram(family: &PyFamily) -> Result<(), String> {
    let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for s in &family.samples {
        let mut labels: Labels = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if s.name.ends_with("_bucket") {
            let le = labels
                .iter()
                .position(|(k, _)| k == "le")
                .map(|i| labels.remove(i).1)
                .ok_or("bucket without le")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().map_err(|_| format!("bad le {le:?}"))?
            };
            buckets.entry(labels).or_default().push((le, s.value));
        } else if s.name.ends_with("_count") {
            counts.insert(labels, s.value);
        }
    }
    for (labels, mut b) in buckets {
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        if b.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!(
                "{} buckets decrease: {labels:?} {b:?}",
                family.name
            ));
        }
        let inf = b.last().filter(|(le, _)| le.is_infinite()).map(|x| x.1);
        if inf != counts.get(&labels).copied() {
            return Err(format!(
                "{} +Inf bucket is not _count: {labels:?}",
                family.name
            ));
        }
    }
    Ok(())
}

fn sample_pids(families: &[PyFamily], name: &str) -> BTreeSet<u32> {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .filter_map(|s| s.labels.get("pid")?.parse().ok())
        .collect()
}

fn unlabelled(families: &[PyFamily], name: &str) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && s.labels.is_empty())
        .map(|s| s.value)
}

/// Scrapes `/metrics` until one complete answer comes back.
fn scrape_until_answered(addr: SocketAddr) -> Vec<PyFamily> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Outcome::Done(r) = get(addr, "/metrics") {
            assert_eq!(r.status, 200, "scrape failed: {}", r.body);
            return parse_text(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body));
        }
        assert!(Instant::now() < deadline, "no scrape answered");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Our collector's families in the shape `collect.py` prints, and whether Python's collector
/// can read the directory too.
///
/// A worker killed between creating a file and sizing it (microseconds, as with Python's own
/// writer) leaves a 0-byte `.db` file: we leave it out and say so; Python's whole scrape fails
/// on it. Any other bad file is a failure.
fn ours_as_python(dir: &Path, killed: &[u32]) -> (Vec<PyFamily>, bool) {
    let scrape = Collector::new(dir)
        .self_metrics(false)
        .collect()
        .expect("collect");
    for bad in &scrape.bad_files {
        let name = bad.path.file_name().unwrap().to_string_lossy();
        let of_killed = killed
            .iter()
            .any(|pid| name.ends_with(&format!("_{pid}.db")));
        assert!(
            bad.reason == BadFileReason::Empty && of_killed,
            "bad file: {bad}"
        );
    }
    let families = common::py_families(&scrape.families);
    if !scrape.bad_files.is_empty() {
        eprintln!(
            "a worker was killed while creating a file; Python cannot read {:?}",
            scrape.bad_files
        );
    }
    (families, scrape.bad_files.is_empty())
}

/// Compares with Python's scrape. Python sums the files in directory order, we in name
/// order: a histogram `_sum` over some tens of files (each killed worker leaves its own) may
/// round differently by a few ulps. Counts are whole numbers and agree exactly.
fn same_as_python(ours: &[PyFamily], theirs: &[PyFamily]) {
    common::assert_same_samples_with(ours, theirs, "prometheus_multiproc_", 64);
}

// ------------------------------------------------------------------ the test

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    lost: AtomicU64,
    not_sent: AtomicU64,
    /// The first few reasons requests failed, for the summary.
    reasons: Mutex<Vec<String>>,
}

impl Tally {
    fn note(&self, path: &str, why: &str) {
        let mut reasons = self.reasons.lock().unwrap();
        if reasons.len() < 5 {
            reasons.push(format!("GET {path}: {why}"));
        }
    }
}

#[test]
fn prefork_server_survives_random_worker_kills_under_load() {
    let binary = example_binary();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&binary, dir.path());
    let addr = server.addr;
    assert!(addr.ip().is_loopback());
    let master = server.pid();

    let deadline = Instant::now() + Duration::from_secs(10);
    while server.workers().len() < WORKERS {
        assert!(Instant::now() < deadline, "workers never started");
        thread::sleep(Duration::from_millis(10));
    }

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let seen_workers = Arc::new(Mutex::new(BTreeSet::new()));
    let killed = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let tally = Arc::clone(&tally);
            let failures = Arc::clone(&failures);
            thread::spawn(move || {
                for i in 0..REQUESTS_PER_CLIENT {
                    let n = c * REQUESTS_PER_CLIENT + i;
                    let (path, want, body) = match n % 3 {
                        0 => ("/".to_owned(), 200, "Hello".to_owned()),
                        1 => {
                            let id = FIRST_USER_ID + n as u64;
                            (format!("/users/{id}"), 200, format!("User {id},"))
                        }
                        _ => ("/nope".to_owned(), 404, String::new()),
                    };
                    match get(addr, &path) {
                        Outcome::NotSent(why) => {
                            tally.not_sent.fetch_add(1, Ordering::SeqCst);
                            tally.note(&path, &why);
                        }
                        Outcome::Lost(why) => {
                            tally.sent.fetch_add(1, Ordering::SeqCst);
                            tally.lost.fetch_add(1, Ordering::SeqCst);
                            tally.note(&path, &why);
                        }
                        Outcome::Done(r) => {
                            tally.sent.fetch_add(1, Ordering::SeqCst);
                            tally.answered.fetch_add(1, Ordering::SeqCst);
                            if r.status != want || !r.body.starts_with(&body) {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("GET {path}: {} {:?}", r.status, r.body));
                            }
                        }
                    }
                    thread::sleep(CLIENT_PAUSE);
                }
            })
        })
        .collect();

    let killer = {
        let stop = Arc::clone(&stop);
        let killed = Arc::clone(&killed);
        let seen_workers = Arc::clone(&seen_workers);
        thread::spawn(move || {
            let mut rng = rand::thread_rng();
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(KILL_EVERY);
                let workers: Vec<u32> = children_of(master).into_iter().collect();
                seen_workers.lock().unwrap().extend(workers.iter().copied());
                if workers.is_empty() {
                    continue;
                }
                let victim = workers[rng.gen_range(0..workers.len())];
                // SAFETY: plain system call; the victim was just listed as a child of the
                // master, which reaps it (so the pid cannot have been reused meanwhile).
                if unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) } == 0 {
                    killed.lock().unwrap().push(victim);
                }
            }
        })
    };

    let scraper = {
        let stop = Arc::clone(&stop);
        let failures = Arc::clone(&failures);
        let seen_workers = Arc::clone(&seen_workers);
        thread::spawn(move || {
            let mut totals: Vec<f64> = Vec::new();
            let mut lost = 0;
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(SCRAPE_EVERY);
                let r = match get(addr, "/metrics") {
                    Outcome::Done(r) => r,
                    _ => {
                        lost += 1;
                        continue;
                    }
                };
                let checked = if r.status == 200 {
                    parse_text(&r.body).and_then(|f| {
                        seen_workers
                            .lock()
                            .unwrap()
                            .extend(sample_pids(&f, "http_worker_requests_handled"));
                        check_scrape(&f)
                    })
                } else {
                    Err(format!("status {}", r.status))
                };
                match checked {
                    Ok((total, _)) => {
                        if let Some(last) = totals.last().filter(|l| total < **l) {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{REQUESTS} went down from {last} to {total}"));
                        }
                        totals.push(total);
                    }
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("bad scrape: {e}\n{}", r.body)),
                }
            }
            (totals, lost)
        })
    };

    for c in clients {
        c.join().expect("client thread");
    }
    stop.store(true, Ordering::SeqCst);
    killer.join().expect("killer thread");
    let (totals, lost_scrapes) = scraper.join().expect("scraper thread");
    let load_done = started.elapsed();

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let killed = killed.lock().unwrap().clone();
    let sent = tally.sent.load(Ordering::SeqCst) as f64;
    let answered = tally.answered.load(Ordering::SeqCst) as f64;
    assert!(killed.len() >= 5, "only {} workers killed", killed.len());
    assert!(
        totals.len() >= 5,
        "only {} scrapes answered ({lost_scrapes} lost)",
        totals.len()
    );
    assert!(
        answered >= sent * 0.5,
        "only {answered} of {sent} requests answered"
    );

    // Settle: the master has reaped, marked dead and replaced every killed worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    let workers = loop {
        let w = server.workers();
        let respawned = killed.iter().all(|pid| {
            server
                .log()
                .iter()
                .any(|l| l.contains(&format!("worker {pid} exited")))
        });
        if w.len() == WORKERS && respawned {
            thread::sleep(Duration::from_millis(300));
            if server.workers() == w {
                break w;
            }
        }
        assert!(
            Instant::now() < deadline,
            "workers not respawned: {w:?}; log:\n{}",
            server.log().join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    };
    for pid in &killed {
        if !workers.contains(pid) {
            for mode in ["liveall", "livesum"] {
                let file = dir.path().join(format!("gauge_{mode}_{pid}.db"));
                assert!(
                    !file.exists(),
                    "{} not removed by the master",
                    file.display()
                );
            }
        }
    }

    let last = scrape_until_answered(addr);
    let (_, counted) = check_scrape(&last).unwrap();
    assert!(
        answered <= counted && counted <= sent,
        "requests counted: {counted}, answered: {answered}, sent: {sent}"
    );
    // Live gauges: only the live workers, and only the scrape itself in progress.
    let handled_by = sample_pids(&last, "http_worker_requests_handled");
    assert_eq!(
        handled_by, workers,
        "liveall shows other workers than the live ones"
    );
    assert_eq!(unlabelled(&last, "http_requests_in_progress"), Some(1.0));

    // Python's collector reads the idle directory as ours does. The master has marked every
    // dead worker, so even the live gauges agree (Python has no liveness of its own).
    let (ours, readable) = ours_as_python(dir.path(), &killed);
    if readable {
        if let Some(py) = common::python() {
            same_as_python(&ours, &common::python_collect(&py, dir.path()));
        }
    }

    // SIGTERM: the master stops every worker and exits 0.
    let all_workers: BTreeSet<u32> = seen_workers
        .lock()
        .unwrap()
        .iter()
        .chain(&workers)
        .copied()
        .collect();
    // SAFETY: plain system call on our own child.
    unsafe { libc::kill(master as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = server.master.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "master still running 5 s after SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "master exit: {status}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = processes_using(dir.path());
        let orphans: Vec<u32> = all_workers
            .iter()
            .copied()
            .filter(|p| left.contains(p))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes still running after the master exited: {left:?} (workers among them: {orphans:?})"
        );
        thread::sleep(Duration::from_millis(20));
    }

    // After the shutdown the directory is final; both collectors still agree, and no live
    // gauge is left.
    let (ours, readable) = ours_as_python(dir.path(), &killed);
    for name in ["http_requests_in_progress", "http_worker_requests_handled"] {
        assert!(
            ours.iter().all(|f| f.name != name || f.samples.is_empty()),
            "{name} still served after shutdown"
        );
    }
    if readable {
        if let Some(py) = common::python() {
            same_as_python(&ours, &common::python_collect(&py, dir.path()));
        }
    }
    eprintln!(
        "prefork torture: {sent} sent ({} not sent), {answered} answered, {} lost, {counted} \
         counted, {} workers killed, {} scrapes ({lost_scrapes} lost), load {load_done:?}, \
         total {:?}; failed requests: {:?}",
        tally.not_sent.load(Ordering::SeqCst),
        tally.lost.load(Ordering::SeqCst),
        killed.len(),
        totals.len(),
        started.elapsed(),
        tally.reasons.lock().unwrap()
    );
}
