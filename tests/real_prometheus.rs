//! A real Prometheus server scrapes `prom-multiproc serve` and the `prefork_server` example on
//! loopback, and its HTTP API must return the series values the directory holds.
//!
//! Needs the `prometheus` binary on `PATH` (Debian's package, installed by `scripts/test` when
//! run as root): without it the tests print `SKIPPED:` and pass, unless `CI` is set, where they
//! fail. Prometheus listens on 127.0.0.1 only, scrapes every second and keeps its data in a
//! temporary directory; no alerting, remote write or anything else that would leave the machine
//! is configured. Every process started here runs in its own process group, killed whole when
//! the test ends, failed or not.
#![cfg(unix)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use prometheus_multiproc::format::key::encode_key;
use prometheus_multiproc::format::layout::write_file;
use serde_json::Value;

/// How long Prometheus may take to start and show a value.
const PATIENCE: Duration = Duration::from_secs(40);

// ------------------------------------------------------------------ binaries

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// `prometheus` from `PATH`; `None` (SKIPPED) without it, a failure when `CI` is set.
fn prometheus_binary() -> Option<PathBuf> {
    match common::which("prometheus") {
        Some(p) => Some(p),
        None if in_ci() => panic!("CI is set but prometheus is not on PATH; run scripts/test"),
        None => {
            eprintln!(
                "SKIPPED: prometheus not found on PATH (run scripts/test as root to install it)"
            );
            None
        }
    }
}

/// `target/<profile>`, the parent of `target/<profile>/deps/<this test>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_owned()
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

/// `binary` under the profile directory, built with `cargo build <build_args>` when missing or
/// older than a source it is built from (cargo does not hold its build lock while tests run).
fn built(binary: &str, build_args: &[&str], sources: &[&str]) -> PathBuf {
    let profile = profile_dir();
    let path = profile.join(binary);
    let root = common::repo_root();
    let stale = fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .is_none_or(|built| {
            sources
                .iter()
                .any(|s| newest_modification(&root.join(s)).is_some_and(|m| m > built))
        });
    if stale {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.arg("build").args(build_args).current_dir(&root);
        if profile.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build {build_args:?} failed");
    }
    assert!(path.is_file(), "no binary at {}", path.display());
    path
}

fn cli_binary() -> PathBuf {
    built(
        "prom-multiproc",
        &["-p", "prometheus-multiproc-cli", "--bin", "prom-multiproc"],
        &[
            "src",
            "crates/format/src",
            "crates/cli/src",
            "Cargo.toml",
            "crates/cli/Cargo.toml",
        ],
    )
}

fn example_binary() -> PathBuf {
    built(
        "examples/prefork_server",
        &["-p", "prometheus-multiproc", "--example", "prefork_server"],
        &["src", "crates/format/src", "examples", "Cargo.toml"],
    )
}

// ------------------------------------------------------------------ processes

/// A child process in its own process group; on drop the group gets SIGTERM, then SIGKILL.
struct Proc {
    name: &'static str,
    child: Child,
    /// stderr lines, as they come.
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Proc {
    /// Starts `cmd` with stdout piped; returns it with its first stdout line.
    fn start(name: &'static str, mut cmd: Command) -> (Proc, String) {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = line_tx.send(first);
            }
            // Keep draining, so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let stderr = child.stderr.take().unwrap();
        let (err_tx, err_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = err_tx.send(line);
            }
        });
        let mut proc = Proc {
            name,
            child,
            stderr: err_rx,
            stderr_seen: Vec::new(),
        };
        let first = line_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                proc.drain_stderr();
                panic!("{name} printed nothing; stderr: {:#?}", proc.stderr_seen)
            });
        (proc, first)
    }

    /// Starts `cmd` without waiting for any output.
    fn start_quiet(name: &'static str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let (err_tx, err_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = err_tx.send(line);
            }
        });
        Proc {
            name,
            child,
            stderr: err_rx,
            stderr_seen: Vec::new(),
        }
    }

    fn drain_stderr(&mut self) -> &[String] {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
        &self.stderr_seen
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            self.drain_stderr();
            panic!(
                "{} exited ({status}); stderr: {:#?}",
                self.name, self.stderr_seen
            );
        }
    }

    fn signal_group(&self, signal: libc::c_int) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: a plain system call on the process group of our own child.
        unsafe { libc::kill(-pgid, signal) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal_group(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever is left of the group (workers of a master that did not stop them).
        self.signal_group(libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The address in a line like `serving http://127.0.0.1:1234/metrics from ...`.
fn address_in(line: &str) -> SocketAddr {
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ' ']).next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

// ------------------------------------------------------------------ HTTP

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An HTTP/1.0 GET (so the answer is never chunked): status and body.
fn http_get(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

// ------------------------------------------------------------------ Prometheus

struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Prometheus {
    /// Prometheus scraping each `(job, target)` every second.
    fn start(binary: &Path, jobs: &[(&str, SocketAddr)]) -> Prometheus {
        let data = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n",
        );
        for (job, target) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_file = data.path().join("prometheus.yml");
        fs::write(&config_file, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(data.path());
        let proc = Proc::start_quiet("prometheus", cmd);
        let mut prometheus = Prometheus {
            proc,
            addr,
            _data: data,
        };
        let started = Instant::now();
        loop {
            prometheus.proc.assert_running();
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                break;
            }
            assert!(started.elapsed() < PATIENCE, "prometheus never got ready");
            thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    fn api(&mut self, target: &str) -> Value {
        self.proc.assert_running();
        let (status, body) = http_get(self.addr, target).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "{target}: {body}");
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["status"], "success", "{body}");
        value["data"].clone()
    }

    /// The instant vector of `promql`: each series' labels (without `__name__`, `job` and `instance`)
    /// and value.
    fn query(&mut self, promql: &str) -> Vec<(Vec<(String, String)>, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(promql)));
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let mut labels: Vec<(String, String)> = series["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "job" | "instance" | "__name__"))
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                labels.sort();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// Polls `promql` until its result, sorted, equals `expected`.
    fn wait_for(&mut self, promql: &str, expected: &[(&[(&str, &str)], f64)]) {
        let mut expected: Vec<(Vec<(String, String)>, f64)> = expected
            .iter()
            .map(|(labels, v)| {
                let mut labels: Vec<(String, String)> = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                labels.sort();
                (labels, *v)
            })
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let started = Instant::now();
        loop {
            let mut got = self.query(promql);
            got.sort_by(|a, b| a.0.cmp(&b.0));
            if got == expected {
                return;
            }
            if started.elapsed() > PATIENCE {
                let targets = self.api("/api/v1/targets");
                panic!(
                    "{promql}: got {got:?}, expected {expected:?}\ntargets: {targets:#}\n\
                     prometheus stderr: {:#?}",
                    self.proc.drain_stderr()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Every active target is up, with no scrape error.
    fn assert_targets_healthy(&mut self, jobs: &[&str]) {
        let data = self.api("/api/v1/targets");
        let targets = data["activeTargets"].as_array().unwrap();
        assert_eq!(targets.len(), jobs.len(), "{data:#}");
        for target in targets {
            assert_eq!(target["health"], "up", "{target:#}");
            assert_eq!(target["lastError"], "", "{target:#}");
            let job = target["labels"]["job"].as_str().unwrap();
            assert!(jobs.contains(&job), "{target:#}");
        }
    }
}

// ------------------------------------------------------------------ the directory

fn write_counter(dir: &Path, pid: u32, path: &str, value: f64) {
    let key = encode_key("requests", "requests_total", &[("path", path)], "Requests.");
    let bytes = write_file([(key.as_bytes(), value, 0.0)]);
    // Written whole, then renamed: a scrape never sees half a file.
    let tmp = dir.join(format!(".counter_{pid}.tmp"));
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, dir.join(format!("counter_{pid}.db"))).unwrap();
}

/// What two Python workers would leave: counters, an `all` gauge, a histogram, and one
/// truncated file.
fn python_like_directory() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_counter(d, 101, "/", 2.0);
    let users = encode_key(
        "requests",
        "requests_total",
        &[("path", "/users/{id}")],
        "Requests.",
    );
    let root = encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
    fs::write(
        d.join("counter_102.db"),
        write_file([(root.as_bytes(), 3.0, 0.0), (users.as_bytes(), 7.0, 0.0)]),
    )
    .unwrap();
    for pid in [101u32, 102] {
        let key = encode_key(
            "temperature",
            "temperature",
            &[] as &[(&str, &str)],
            "Temp.",
        );
        fs::write(
            d.join(format!("gauge_all_{pid}.db")),
            write_file([(key.as_bytes(), f64::from(pid) / 4.0, 0.0)]),
        )
        .unwrap();
        let help = "Latency.";
        let no_labels: &[(&str, &str)] = &[];
        let sum = encode_key("latency", "latency_sum", no_labels, help);
        let fast = encode_key("latency", "latency_bucket", &[("le", "0.5")], help);
        let slow = encode_key("latency", "latency_bucket", &[("le", "+Inf")], help);
        fs::write(
            d.join(format!("histogram_{pid}.db")),
            write_file([
                (sum.as_bytes(), 0.75, 0.0),
                (fast.as_bytes(), 1.0, 0.0),
                (slow.as_bytes(), 1.0, 0.0),
            ]),
        )
        .unwrap();
    }
    let key = encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
    let bytes = write_file([(key.as_bytes(), 1000.0, 0.0)]);
    fs::write(d.join("counter_103.db"), &bytes[..20]).unwrap();
    dir
}

fn serve(dir: &Path) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(cli_binary());
    cmd.arg("serve")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
        .env_remove("PROMETHEUS_MULTIPROC_DIR");
    let (proc, first) = Proc::start("prom-multiproc serve", cmd);
    (proc, address_in(&first))
}

// ------------------------------------------------------------------ the tests

#[test]
fn prometheus_scrapes_prom_multiproc_serve() {
    let Some(prometheus_bin) = prometheus_binary() else {
        return;
    };
    let dir = python_like_directory();
    let (mut serve, addr) = serve(dir.path());
    let mut prometheus = Prometheus::start(&prometheus_bin, &[("serve", addr)]);

    prometheus.wait_for(
        "requests_total",
        &[(&[("path", "/")], 5.0), (&[("path", "/users/{id}")], 7.0)],
    );
    prometheus.wait_for(
        "temperature",
        &[(&[("pid", "101")], 25.25), (&[("pid", "102")], 25.5)],
    );
    prometheus.wait_for(
        "latency_bucket",
        &[(&[("le", "0.5")], 2.0), (&[("le", "+Inf")], 4.0)],
    );
    prometheus.wait_for("latency_count", &[(&[], 4.0)]);
    prometheus.wait_for("latency_sum", &[(&[], 1.5)]);
    prometheus.wait_for(
        "prometheus_multiproc_bad_files{reason=\"truncated\"}",
        &[(&[("reason", "truncated")], 1.0)],
    );
    prometheus.wait_for("up{job=\"serve\"}", &[(&[], 1.0)]);
    prometheus.assert_targets_healthy(&["serve"]);

    // Prometheus asked for OpenMetrics and gzip, and got both.
    let line = serve_log_line(&mut serve, "\"GET /metrics\": 200");
    assert!(
        line.contains(
            "\"GET /metrics\": 200 application/openmetrics-text; version=1.0.0; charset=utf-8 gzip "
        ),
        "{line}"
    );
    // ...and parsed it as OpenMetrics: the counter's family is `requests`, not `requests_total`.
    let metadata = prometheus.api("/api/v1/metadata?metric=requests");
    assert_eq!(metadata["requests"][0]["type"], "counter", "{metadata:#}");

    // A worker counts on: the next scrapes see it.
    write_counter(dir.path(), 101, "/", 12.0);
    prometheus.wait_for(
        "requests_total",
        &[(&[("path", "/")], 15.0), (&[("path", "/users/{id}")], 7.0)],
    );
    prometheus.wait_for("rate(up{job=\"serve\"}[5s])", &[(&[], 0.0)]);
    serve.assert_running();
}

/// The first stderr line of `serve` holding `needle`, waiting for it.
fn serve_log_line(serve: &mut Proc, needle: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(line) = serve.drain_stderr().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no {needle:?} in {:#?}",
            serve.stderr_seen
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn prometheus_scrapes_the_prefork_server_and_its_sidecar() {
    let Some(prometheus_bin) = prometheus_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(example_binary());
    cmd.args(["--listen", "127.0.0.1:0", "--workers", "2"])
        .env("PROMETHEUS_MULTIPROC_DIR", dir.path());
    let (mut example, first) = Proc::start("prefork_server", cmd);
    let app = address_in(&first);
    // The same directory, served by the sidecar too.
    let (mut sidecar, sidecar_addr) = serve(dir.path());

    const USERS: usize = 7;
    for i in 0..USERS {
        let (status, body) = http_get(app, &format!("/users/{i}")).unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let mut prometheus =
        Prometheus::start(&prometheus_bin, &[("app", app), ("sidecar", sidecar_addr)]);
    for job in ["app", "sidecar"] {
        prometheus.wait_for(
            &format!(
                "sum(http_requests_total{{job=\"{job}\",path=\"/users/{{id}}\",method=\"GET\",status=\"200\"}})"
            ),
            &[(&[], USERS as f64)],
        );
        prometheus.wait_for(
            &format!(
                "sum(http_request_duration_seconds_count{{job=\"{job}\",path=\"/users/{{id}}\"}})"
            ),
            &[(&[], USERS as f64)],
        );
        prometheus.wait_for(&format!("up{{job=\"{job}\"}}"), &[(&[], 1.0)]);
    }
    // Both workers' live gauges, through both endpoints.
    prometheus.wait_for(
        "count(http_worker_requests_handled{job=\"sidecar\"}) >= bool 1",
        &[(&[], 1.0)],
    );
    prometheus.assert_targets_healthy(&["app", "sidecar"]);
    example.assert_running();
    sidecar.assert_running();
}
