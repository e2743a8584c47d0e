//! `prom-multiproc serve` as a user runs it: the address it prints, scrapes over loopback, log
//! lines on stderr, SIGTERM and SIGINT, and exit code 2 for bad arguments.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use prometheus_multiproc_format::{key::encode_key, layout::write_file};

const BIN: &str = env!("CARGO_BIN_EXE_prom-multiproc");

/// A directory with two counter files: `requests_total{path="/"}` 2 + 3.
fn directory() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let key = encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
    for (pid, n) in [(1, 2.0), (2, 3.0)] {
        let bytes = write_file([(key.as_bytes(), n, 0.0)]);
        std::fs::write(dir.path().join(format!("counter_{pid}.db")), bytes).unwrap();
    }
    dir
}

/// The running `serve`; killed on drop if the test failed before stopping it.
struct Serve {
    child: Child,
    addr: SocketAddr,
    first_line: String,
    stderr: mpsc::Receiver<String>,
}

impl Serve {
    fn start(args: &[&str], env_dir: Option<&Path>) -> Serve {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("PROMETHEUS_MULTIPROC_DIR")
            .env_remove("prometheus_multiproc_dir")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = env_dir {
            cmd.env("PROMETHEUS_MULTIPROC_DIR", dir);
        }
        let mut child = cmd.spawn().expect("start prom-multiproc serve");
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(line);
        });
        let stderr = child.stderr.take().unwrap();
        let (err_tx, err_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first_line = line_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve printed its address");
        let addr = first_line
            .strip_prefix("serving http://")
            .or_else(|| first_line.strip_prefix("serving https://"))
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first_line:?}"));
        Serve {
            child,
            addr,
            first_line,
            stderr: err_rx,
        }
    }

    /// Waits for a stderr line holding `needle`; every line read so far is returned on failure.
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no stderr line with {needle:?}; stderr: {seen:#?}");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn get(addr: SocketAddr, path: &str, headers: &str) -> String {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"),
    )
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PROMETHEUS_MULTIPROC_DIR")
        .env_remove("prometheus_multiproc_dir")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn serves_scrapes_logs_failures_and_stops_on_sigterm() {
    let dir = directory();
    let mut serve = Serve::start(
        &[
            "--dir",
            dir.path().to_str().unwrap(),
            "--log-level",
            "debug",
        ],
        None,
    );
    assert_eq!(
        serve.first_line.trim_end(),
        format!(
            "serving http://{}/metrics from {}",
            serve.addr,
            dir.path().display()
        )
    );
    let text = get(serve.addr, "/metrics", "");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert!(text.contains("\nrequests_total{path=\"/\"} 5.0\n"));
    let om = get(
        serve.addr,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0\r\n",
    );
    assert!(om.contains(
        "\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
    ));
    assert!(om.ends_with("# EOF\n"));
    // One debug line per scrape, with the format.
    serve.wait_for_log("\"GET /metrics\": 200 application/openmetrics-text");
    // A failure is one clear line, with a timestamp and a level.
    let bad = exchange(serve.addr, "NONSENSE\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    let line = serve.wait_for_log("malformed request");
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert!(stamp.len() == 24 && stamp.ends_with('Z'), "{line}");
    assert!(rest.starts_with("WARN 127.0.0.1:"), "{line}");
    assert!(get(serve.addr, "/metrics", "").starts_with("HTTP/1.1 200 OK\r\n"));

    serve.signal("TERM");
    let status = serve.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
    serve.wait_for_log("SIGTERM received, stopping");
    assert!(TcpStream::connect(serve.addr).is_err());
}

#[test]
fn reads_the_directory_from_the_environment_and_stops_on_sigint() {
    let dir = directory();
    let mut serve = Serve::start(&["--path", "/custom"], Some(dir.path()));
    assert!(serve.first_line.contains("/custom from "));
    assert!(get(serve.addr, "/custom", "").contains("requests_total{path=\"/\"} 5.0\n"));
    assert!(get(serve.addr, "/metrics", "").starts_with("HTTP/1.1 404 "));
    serve.signal("INT");
    assert_eq!(serve.wait().code(), Some(0));
}

#[test]
fn basic_auth_from_a_password_file() {
    let dir = directory();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "hunter2\n").unwrap();
    let serve = Serve::start(
        &[
            "--dir",
            dir.path().to_str().unwrap(),
            "--basic-auth-user",
            "scraper",
            "--basic-auth-password-file",
            secret.to_str().unwrap(),
        ],
        None,
    );
    let refused = get(serve.addr, "/metrics", "");
    assert!(refused.starts_with("HTTP/1.1 401 "), "{refused}");
    assert!(refused.contains("\r\nwww-authenticate: Basic realm=\"metrics\""));
    serve.wait_for_log("no credentials, answered 401");
    // "scraper:hunter2" and "scraper:wrong".
    let ok = get(
        serve.addr,
        "/metrics",
        "Authorization: Basic c2NyYXBlcjpodW50ZXIy\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    let wrong = get(
        serve.addr,
        "/metrics",
        "Authorization: Basic c2NyYXBlcjp3cm9uZw==\r\n",
    );
    assert!(wrong.starts_with("HTTP/1.1 401 "));
    serve.wait_for_log("wrong credentials, answered 401");
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    let dir = directory();
    let d = dir.path().to_str().unwrap();
    let missing = dir.path().join("missing");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve"], "no directory given"),
        (
            vec!["serve", "--dir", missing.to_str().unwrap()],
            "is not a directory",
        ),
        (
            vec!["serve", "--dir", d, "--listen", "not-an-address"],
            "cannot listen on not-an-address",
        ),
        (
            vec!["serve", "--dir", d, "--path", "metrics"],
            "must start with /",
        ),
        (
            vec!["serve", "--dir", d, "--max-concurrent", "0"],
            "at least 1",
        ),
        (
            vec!["serve", "--dir", d, "--header-timeout", "0"],
            "--header-timeout must be a positive number of seconds",
        ),
        (
            vec!["serve", "--dir", d, "--basic-auth-user", "u"],
            "--basic-auth-password-file",
        ),
        (
            vec![
                "serve",
                "--dir",
                d,
                "--basic-auth-user",
                "u",
                "--basic-auth-password-file",
                missing.to_str().unwrap(),
            ],
            "cannot read the password file",
        ),
        (
            vec!["serve", "--dir", d, "--tls-cert", "cert.pem"],
            "--tls-key",
        ),
        (
            vec![
                "serve",
                "--dir",
                d,
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                missing.to_str().unwrap(),
            ],
            "TLS: cannot read",
        ),
    ];
    for (args, message) in cases {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let out = run(&["serve", "--dir", d, "--listen", &port]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}
