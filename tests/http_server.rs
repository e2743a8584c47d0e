//! The standalone scrape server over real HTTP on loopback: content negotiation, gzip, `HEAD`,
//! routing, Python's `name[]` filter, basic auth and TLS; and abuse: malformed requests,
//! oversized headers, slow and silent clients, a client that never reads, many concurrent
//! scrapes. After each of these, the server must still answer a normal scrape.
//!
//! Raw requests go through `std::net::TcpStream`, so the bytes on the wire are exactly the
//! test's. Every read has a timeout and every loop a bound.
#![cfg(feature = "http")]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use prometheus_multiproc::collector::Collector;
use prometheus_multiproc::format::key::encode_key;
use prometheus_multiproc::format::layout::write_file;
use prometheus_multiproc::http::{start, BasicAuth, ServerConfig, ServerHandle};

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Accept` header Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const IO_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ fixtures

/// A directory two Python-format workers wrote: `requests_total{path="/"}` 2 + 3, a
/// `temperature` gauge (mode `all`, one sample per pid) and a `latency` histogram.
fn directory() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let requests = encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
    for (pid, n) in [(101, 2.0), (102, 3.0)] {
        let bytes = write_file([(requests.as_bytes(), n, 0.0)]);
        std::fs::write(dir.path().join(format!("counter_{pid}.db")), bytes).unwrap();
        let temp = encode_key(
            "temperature",
            "temperature",
            &[] as &[(&str, &str)],
            "Temp.",
        );
        let bytes = write_file([(temp.as_bytes(), f64::from(pid), 0.0)]);
        std::fs::write(dir.path().join(format!("gauge_all_{pid}.db")), bytes).unwrap();
    }
    let sum = encode_key("latency", "latency_sum", &[] as &[(&str, &str)], "Latency.");
    let b1 = encode_key("latency", "latency_bucket", &[("le", "0.5")], "Latency.");
    let b2 = encode_key("latency", "latency_bucket", &[("le", "+Inf")], "Latency.");
    let bytes = write_file([
        (sum.as_bytes(), 1.5, 0.0),
        (b1.as_bytes(), 1.0, 0.0),
        (b2.as_bytes(), 1.0, 0.0),
    ]);
    std::fs::write(dir.path().join("histogram_101.db"), bytes).unwrap();
    dir
}

/// `files` counter files of `series` series each.
fn big_directory(files: usize, series: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..series)
        .map(|i| {
            let id = i.to_string();
            encode_key("big", "big_total", &[("id", id.as_str())], "Many series.")
        })
        .collect();
    for f in 0..files {
        let bytes = write_file(keys.iter().map(|k| (k.as_bytes(), 1.0, 0.0)));
        std::fs::write(dir.path().join(format!("counter_{f}.db")), bytes).unwrap();
    }
    dir
}

fn server(dir: &Path, config: ServerConfig) -> ServerHandle {
    capture_logs();
    start(Collector::new(dir), config).expect("start the server")
}

// ------------------------------------------------------------------ the server's log lines

/// Every log line of this test process (tests run in parallel: look lines up by peer address).
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("prometheus_multiproc") {
            let line = format!("{} {}", record.level(), record.args());
            LOG.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    if log::set_logger(&Capture).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

/// The first log line holding every one of `needles`, waiting up to 5 s for it.
fn log_line(needles: &[&str]) -> String {
    let started = Instant::now();
    loop {
        if let Some(line) = LOG
            .lock()
            .unwrap()
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return line.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no log line with {needles:?} in {:#?}",
            LOG.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// How the server names the client end of `stream` in its log lines.
fn peer(stream: &TcpStream) -> String {
    stream.local_addr().unwrap().to_string()
}

fn loopback() -> ServerConfig {
    ServerConfig::new("127.0.0.1:0")
}

// ------------------------------------------------------------------ a raw HTTP client

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    /// The headers, without `date`, for comparing two answers.
    fn stable_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(n, _)| n != "date")
            .cloned()
            .collect()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Splits a whole response (read until the server closed) into status, headers and body.
fn parse(bytes: &[u8]) -> Reply {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    }
}

/// Sends `raw` on a new connection and reads until the server closes it.
fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = connect(addr);
    stream.write_all(raw).expect("send");
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read the answer");
    parse(&bytes)
}

fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    exchange(addr, raw.as_bytes())
}

fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", target, headers)
}

/// A plain scrape must still work: the server keeps answering.
fn assert_healthy(addr: SocketAddr) {
    let reply = get(addr, "/metrics", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.text().contains("requests_total{path=\"/\"} 5.0\n"),
        "{}",
        reply.text()
    );
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

// ------------------------------------------------------------------ the protocol

#[test]
fn negotiates_text_and_openmetrics_with_exact_content_types() {
    let dir = directory();
    let server = server(dir.path(), loopback());
    let addr = server.local_addr();

    let text = get(addr, "/metrics", &[]);
    assert_eq!(text.status, 200);
    assert_eq!(text.header("content-type"), Some(TEXT));
    assert_eq!(
        text.header("content-length"),
        Some(text.body.len().to_string().as_str())
    );
    assert_eq!(text.header("vary"), Some("Accept, Accept-Encoding"));
    let body = text.text();
    assert!(body.contains("# TYPE requests_total counter\nrequests_total{path=\"/\"} 5.0\n"));
    assert!(body.contains("temperature{pid=\"101\"} 101.0\n"));
    assert!(body.contains("latency_bucket{le=\"+Inf\"} 2.0\nlatency_count 2.0\n"));
    assert!(!body.contains("# EOF"));

    for accept in [
        PROMETHEUS_ACCEPT,
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        "text/plain;q=0.5, application/openmetrics-text",
    ] {
        let om = get(addr, "/metrics", &[("Accept", accept)]);
        assert_eq!(om.status, 200);
        assert_eq!(om.header("content-type"), Some(OPENMETRICS), "{accept}");
        let body = om.text();
        assert!(body.contains("# TYPE requests counter\nrequests_total{path=\"/\"} 5.0\n"));
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
    for accept in [
        "text/plain",
        "text/plain;version=0.0.4",
        "*/*",
        "application/openmetrics-text;q=0",
        "application/openmetrics-text;q=0.2, text/plain",
        "application/json",
    ] {
        let reply = get(addr, "/metrics", &[("Accept", accept)]);
        assert_eq!(reply.header("content-type"), Some(TEXT), "{accept}");
        assert_eq!(reply.body, text.body, "{accept}");
    }
    server.shutdown().unwrap();
}

#[test]
fn gzip_when_accepted_decodes_to_the_plain_body() {
    let dir = directory();
    let server = server(dir.path(), loopback());
    let addr = server.local_addr();
    for (accept, content_type) in [("text/plain", TEXT), (PROMETHEUS_ACCEPT, OPENMETRICS)] {
        let plain = get(addr, "/metrics", &[("Accept", accept)]);
        assert_eq!(plain.header("content-encoding"), None);
        for encoding in ["gzip", "gzip, deflate, br", "deflate;q=1, gzip;q=0.5", "*"] {
            let zipped = get(
                addr,
                "/metrics",
                &[("Accept", accept), ("Accept-Encoding", encoding)],
            );
            assert_eq!(zipped.status, 200);
            assert_eq!(zipped.header("content-type"), Some(content_type));
            assert_eq!(
                zipped.header("content-encoding"),
                Some("gzip"),
                "{encoding}"
            );
            assert_eq!(
                zipped.header("content-length"),
                Some(zipped.body.len().to_string().as_str())
            );
            assert_eq!(gunzip(&zipped.body), plain.body, "{encoding}");
        }
        for encoding in ["gzip;q=0", "identity", "deflate", "*, gzip;q=0"] {
            let reply = get(
                addr,
                "/metrics",
                &[("Accept", accept), ("Accept-Encoding", encoding)],
            );
            assert_eq!(reply.header("content-encoding"), None, "{encoding}");
            assert_eq!(reply.body, plain.body);
        }
    }
    server.shutdown().unwrap();
}

#[test]
fn head_answers_the_headers_of_get_without_a_body() {
    let dir = directory();
    let server = server(dir.path(), loopback());
    let addr = server.local_addr();
    for headers in [
        &[][..],
        &[("Accept", PROMETHEUS_ACCEPT)][..],
        &[("Accept-Encoding", "gzip")][..],
    ] {
        let get = request(addr, "GET", "/metrics", headers);
        let head = request(addr, "HEAD", "/metrics", headers);
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty(), "{head:?}");
        assert!(!get.body.is_empty());
        assert_eq!(head.stable_headers(), get.stable_headers());
    }
    server.shutdown().unwrap();
}

#[test]
fn other_paths_methods_and_bodies() {
    let dir = directory();
    let server = server(dir.path(), loopback());
    let addr = server.local_addr();

    let missing = get(addr, "/metrics/extra", &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(get(addr, "/favicon.ico", &[]).status, 404);
    assert_eq!(request(addr, "HEAD", "/nope", &[]).status, 404);

    let index = get(addr, "/", &[]);
    assert_eq!(index.status, 200);
    assert!(index.text().contains("href=\"/metrics\""));

    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let reply = request(addr, method, "/metrics", &[]);
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    }

    // A scrape with a body is refused unread, and its connection closed.
    let reply = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(reply.status, 413);
    assert_eq!(reply.header("connection"), Some("close"));
    log_line(&["request with a body, answered 413"]);
    let reply = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(reply.status, 413);

    // Python's filter.
    let filtered = get(
        addr,
        "/metrics?name[]=requests_total&name%5B%5D=latency_sum",
        &[],
    );
    assert_eq!(filtered.status, 200);
    assert_eq!(
        filtered.text(),
        "# HELP latency Latency.\n# TYPE latency histogram\nlatency_sum 1.5\n\
         # HELP requests_total Requests.\n# TYPE requests_total counter\n\
         requests_total{path=\"/\"} 5.0\n"
    );
    assert_healthy(addr);
    server.shutdown().unwrap();
}

#[test]
fn a_custom_path_and_an_unreadable_directory() {
    let dir = directory();
    let server = server(dir.path(), loopback().path("/internal/metrics"));
    let addr = server.local_addr();
    assert_eq!(get(addr, "/metrics", &[]).status, 404);
    let reply = get(addr, "/internal/metrics", &[]);
    assert_eq!(reply.status, 200);
    assert!(get(addr, "/", &[]).text().contains("/internal/metrics"));
    server.shutdown().unwrap();

    let gone = dir.path().join("gone");
    let server = self::server(&gone, loopback());
    let reply = get(server.local_addr(), "/metrics", &[]);
    assert_eq!(reply.status, 503);
    assert!(
        reply.text().contains("cannot read multiprocess directory"),
        "{}",
        reply.text()
    );
    let line = log_line(&["scrape failed, answered 503", &gone.display().to_string()]);
    assert!(line.starts_with("ERROR "), "{line}");
    // The directory appears: served at the next scrape.
    std::fs::create_dir(&gone).unwrap();
    assert_eq!(get(server.local_addr(), "/metrics", &[]).status, 200);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let dir = directory();
    let server = server(dir.path(), loopback());
    let mut stream = connect(server.local_addr());
    let one = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    // Ten pipelined requests, then one that closes.
    let mut raw = one.repeat(10);
    raw.extend_from_slice(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(&raw).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 11);
    assert_eq!(text.matches("requests_total{path=\"/\"} 5.0\n").count(), 11);
}

// ------------------------------------------------------------------ abuse

#[test]
fn malformed_requests_get_400_and_the_server_keeps_answering() {
    let dir = directory();
    let server = server(dir.path(), loopback());
    let addr = server.local_addr();
    let cases: [&[u8]; 7] = [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        b"GET /me trics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ];
    for raw in cases {
        let mut stream = connect(addr);
        stream.write_all(raw).unwrap();
        let mut bytes = Vec::new();
        // The server answers 400 and closes (a reset counts as closed too).
        let _ = stream.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{raw:?} -> {text:?}"
        );
        let line = log_line(&[&peer(&stream), "malformed request"]);
        assert!(line.starts_with("WARN "), "{line}");
        assert_healthy(addr);
    }
    // An HTTP/2 preface on an HTTP/1.1 server, and a TLS hello on plain HTTP: closed.
    for raw in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"[..],
    ] {
        let mut stream = connect(addr);
        stream.write_all(raw).unwrap();
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        assert!(!String::from_utf8_lossy(&bytes).contains(" 200 "));
        assert_healthy(addr);
    }
    server.shutdown().unwrap();
}

#[test]
fn oversized_headers_get_431_and_the_server_keeps_answering() {
    let dir = directory();
    let server = server(dir.path(), loopback().max_header_bytes(16 * 1024));
    let addr = server.local_addr();
    // Just under the limit: answered.
    let fits = "a".repeat(12 * 1024);
    assert_eq!(get(addr, "/metrics", &[("X-Fill", &fits)]).status, 200);
    for size in [17 * 1024, 64 * 1024, 1024 * 1024] {
        let big = "a".repeat(size);
        let mut stream = connect(addr);
        let raw = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        // The server may close before reading it all: a failed write is fine.
        let _ = stream.write_all(raw.as_bytes());
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431 "),
            "{size}: {text:?}"
        );
        log_line(&[&peer(&stream), "over 16384 bytes, answered 431"]);
        assert_healthy(addr);
    }
    // Many small headers over the limit in total.
    let mut raw = String::from("GET /metrics HTTP/1.1\r\nHost: x\r\n");
    for i in 0..90 {
        raw.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(300)));
    }
    raw.push_str("\r\n");
    let mut stream = connect(addr);
    let _ = stream.write_all(raw.as_bytes());
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431 "),
        "{text:?}"
    );
    // A request line far too long.
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(100_000));
    let mut stream = connect(addr);
    let _ = stream.write_all(long.as_bytes());
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431 ") || text.starts_with("HTTP/1.1 414 "),
        "{text:?}"
    );
    assert_healthy(addr);
    server.shutdown().unwrap();
}

/// Reads from `stream` until the server closes it; how long that took, or `None` if it did
/// not within `limit`.
fn time_until_closed(
    stream: &mut TcpStream,
    started: Instant,
    limit: Duration,
) -> Option<Duration> {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn slow_and_silent_clients_are_dropped_while_scrapes_go_on() {
    let dir = directory();
    let timeout = Duration::from_millis(800);
    let server = server(dir.path(), loopback().header_read_timeout(timeout));
    let addr = server.local_addr();

    // Scrapes every 50 ms from another thread while the slow clients hang on.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut latencies = Vec::new();
            for _ in 0..200 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                assert_healthy(addr);
                latencies.push(t.elapsed());
                thread::sleep(Duration::from_millis(50));
            }
            latencies
        })
    };

    let started = Instant::now();
    // A slowloris: a request line, then one header byte every 100 ms, never the end.
    let mut slowloris = connect(addr);
    slowloris
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A client that connects and says nothing.
    let mut silent = connect(addr);
    // A client that sends half a request line.
    let mut half = connect(addr);
    half.write_all(b"GET /metr").unwrap();

    let mut slowloris_closed = None;
    for _ in 0..50 {
        if slowloris.write_all(b"X").is_err() {
            slowloris_closed = Some(started.elapsed());
            break;
        }
        slowloris
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        match slowloris.read(&mut buf) {
            Ok(0) => {
                slowloris_closed = Some(started.elapsed());
                break;
            }
            Ok(n) => panic!(
                "slowloris got an answer: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                slowloris_closed = Some(started.elapsed());
                break;
            }
        }
    }
    let limit = Duration::from_secs(5);
    let silent_closed = time_until_closed(&mut silent, started, limit);
    let half_closed = time_until_closed(&mut half, started, limit);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let latencies = scraper.join().expect("scrapes went on");

    for (what, closed) in [
        ("slowloris", slowloris_closed),
        ("silent", silent_closed),
        ("half a request line", half_closed),
    ] {
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        assert!(
            closed >= timeout.mul_f64(0.9) && closed < timeout * 3,
            "{what}: closed after {closed:?}, header timeout {timeout:?}"
        );
    }
    for stream in [&slowloris, &silent, &half] {
        log_line(&[&peer(stream), "request headers not received within 800ms"]);
    }
    assert!(latencies.len() >= 5, "{latencies:?}");
    let slowest = latencies.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(2),
        "scrapes were held up: {latencies:?}"
    );
    assert_healthy(addr);
    server.shutdown().unwrap();
}

#[test]
fn a_client_that_never_reads_is_dropped() {
    // A 2 MB help text makes every answer 2 MB, however small the directory.
    let dir = tempfile::tempdir().unwrap();
    let help = "h".repeat(2 << 20);
    let key = encode_key("big_help", "big_help_total", &[] as &[(&str, &str)], &help);
    let bytes = write_file([(key.as_bytes(), 1.0, 0.0)]);
    std::fs::write(dir.path().join("counter_1.db"), bytes).unwrap();
    let requests = encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
    let bytes = write_file([(requests.as_bytes(), 5.0, 0.0)]);
    std::fs::write(dir.path().join("counter_2.db"), bytes).unwrap();
    let server = server(
        dir.path(),
        loopback().request_timeout(Duration::from_secs(1)),
    );
    let addr = server.local_addr();

    // 40 pipelined scrapes (80 MB of answers), never read: more than the socket buffers hold.
    let mut stream = connect(addr);
    let raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(40);
    stream.write_all(&raw).unwrap();
    thread::sleep(Duration::from_secs(4));
    // Meanwhile, and after, others are served.
    assert_healthy(addr);
    // The stalled connection was dropped: draining it ends before all 40 answers.
    let started = Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(started.elapsed() < IO_TIMEOUT, "never closed");
    }
    assert!(
        total < 40 * (2 << 20),
        "read {total} bytes: the connection was not dropped"
    );
    log_line(&[&peer(&stream), "read nothing of the response for 1s"]);
    server.shutdown().unwrap();
}

#[test]
fn fifty_concurrent_scrapes_succeed_or_get_a_fast_503() {
    // A directory large enough that scrapes overlap.
    let dir = big_directory(32, 2_000);
    std::fs::write(
        dir.path().join("counter_extra.db"),
        write_file([(
            encode_key("requests", "requests_total", &[("path", "/")], "Requests.").as_bytes(),
            5.0,
            0.0,
        )]),
    )
    .unwrap();
    let max = 3;
    let server = server(dir.path(), loopback().max_concurrent_scrapes(max));
    let addr = server.local_addr();
    let barrier = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut stream = connect(addr);
                barrier.wait();
                let t = Instant::now();
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut bytes = Vec::new();
                stream.read_to_end(&mut bytes).unwrap();
                (parse(&bytes), t.elapsed())
            })
        })
        .collect();
    let results: Vec<(Reply, Duration)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok: Vec<_> = results.iter().filter(|(r, _)| r.status == 200).collect();
    let refused: Vec<_> = results.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(
        ok.len() + refused.len(),
        50,
        "{:?}",
        results.iter().map(|(r, _)| r.status).collect::<Vec<_>>()
    );
    assert!(!ok.is_empty());
    let full_body = &ok[0].0.body;
    for (reply, _) in &ok {
        assert_eq!(&reply.body, full_body, "every 200 is the whole scrape");
    }
    let slowest_ok = ok.iter().map(|(_, t)| *t).max().unwrap();
    for (reply, took) in &refused {
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert!(reply.text().contains("too many scrapes in progress"));
        log_line(&["\"GET /metrics\": 3 scrapes already in progress (the limit), answered 503"]);
        // Refused without waiting for the scrapes in progress.
        assert!(
            *took <= slowest_ok + Duration::from_millis(500),
            "refused after {took:?}, slowest scrape {slowest_ok:?}"
        );
    }
    println!(
        "{} answered 200 (slowest {slowest_ok:?}), {} refused with 503",
        ok.len(),
        refused.len()
    );
    assert_healthy(addr);
    server.shutdown().unwrap();
}

#[test]
fn a_scrape_over_the_request_timeout_gets_503() {
    let dir = big_directory(64, 500);
    let requests = encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
    std::fs::write(
        dir.path().join("counter_extra.db"),
        write_file([(requests.as_bytes(), 5.0, 0.0)]),
    )
    .unwrap();
    let server = server(
        dir.path(),
        loopback().request_timeout(Duration::from_millis(1)),
    );
    let reply = get(server.local_addr(), "/metrics", &[]);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.text().contains("the scrape took over"));
    log_line(&["\"GET /metrics\": the scrape took over 1ms, answered 503"]);
    server.shutdown().unwrap();
}

#[test]
fn connections_beyond_the_limit_wait_then_are_served() {
    let dir = directory();
    let server = server(dir.path(), loopback().max_connections(2));
    let addr = server.local_addr();
    let mut idle: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    // Both slots taken by idle connections: a third connects (backlog) but waits.
    let waiting = thread::spawn(move || {
        let t = Instant::now();
        let reply = get(addr, "/metrics", &[]);
        (reply.status, t.elapsed())
    });
    thread::sleep(Duration::from_millis(300));
    idle.clear();
    let (status, took) = waiting.join().unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert_healthy(addr);
}

// ------------------------------------------------------------------ basic auth

#[test]
fn basic_auth_refuses_missing_and_wrong_credentials() {
    use base64::Engine as _;
    let dir = directory();
    let server = server(
        dir.path(),
        loopback().basic_auth(BasicAuth::new("prometheus", "s3cret:with colon")),
    );
    let addr = server.local_addr();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    let refused = get(addr, "/metrics", &[]);
    assert_eq!(refused.status, 401);
    log_line(&["\"GET /metrics\": no credentials, answered 401"]);
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Basic realm=\"metrics\", charset=\"UTF-8\"")
    );
    for value in [
        format!("Basic {}", b64("prometheus:wrong")),
        format!("Basic {}", b64("other:s3cret:with colon")),
        format!("Basic {}", b64("prometheus:s3cret:with colo")),
        format!("Basic {}", b64("prometheus:s3cret:with colonn")),
        format!("Bearer {}", b64("prometheus:s3cret:with colon")),
        "Basic !!!".to_owned(),
        "Basic".to_owned(),
    ] {
        let reply = get(addr, "/metrics", &[("Authorization", &value)]);
        assert_eq!(reply.status, 401, "{value}");
        assert!(!reply.text().contains("requests_total"));
    }
    log_line(&["\"GET /metrics\": wrong credentials, answered 401"]);
    // The password is never logged.
    assert!(!LOG.lock().unwrap().iter().any(|l| l.contains("s3cret")));
    // Other paths are behind the credentials too.
    assert_eq!(get(addr, "/nope", &[]).status, 401);
    let right = format!("Basic {}", b64("prometheus:s3cret:with colon"));
    let reply = get(addr, "/metrics", &[("Authorization", &right)]);
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("requests_total{path=\"/\"} 5.0\n"));
    let reply = get(
        addr,
        "/metrics",
        &[("authorization", &right.replace("Basic", "basic"))],
    );
    assert_eq!(reply.status, 200);
    server.shutdown().unwrap();
}

// ------------------------------------------------------------------ lifecycle

#[test]
fn shutdown_stops_listening_and_a_second_server_can_bind() {
    let dir = directory();
    let server = server(dir.path(), loopback());
    let addr = server.local_addr();
    assert_healthy(addr);
    // An idle keep-alive connection does not hold the shutdown up.
    let _idle = connect(addr);
    let t = Instant::now();
    server.shutdown().unwrap();
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    // The same port is free again.
    let again = self::server(dir.path(), ServerConfig::new(addr.to_string()));
    assert_healthy(again.local_addr());
    drop(again);
}

#[test]
fn bad_configurations_are_refused() {
    let dir = directory();
    for config in [
        loopback().path("metrics"),
        loopback().max_concurrent_scrapes(0),
        loopback().max_connections(0),
        loopback().header_read_timeout(Duration::ZERO),
        ServerConfig::new("not an address"),
    ] {
        assert!(start(Collector::new(dir.path()), config).is_err());
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = start(
        Collector::new(dir.path()),
        ServerConfig::new(taken.local_addr().unwrap().to_string()),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("cannot listen on 127.0.0.1:"),
        "{err}"
    );
}

// ------------------------------------------------------------------ the same as Python's endpoint

/// Sorted lines of an exposition, for comparing two writers that order families differently.
fn line_set(text: &str) -> BTreeSet<String> {
    text.lines().map(str::to_owned).collect()
}

#[test]
fn serves_what_pythons_own_endpoint_serves() {
    let Some(py) = common::python() else { return };
    let dir = directory();
    let server = start(Collector::new(dir.path()).self_metrics(false), loopback()).unwrap();
    // Python's start_http_server over a MultiProcessCollector of the same directory.
    let script = "import sys, time\n\
        from prometheus_client import CollectorRegistry, start_http_server\n\
        from prometheus_client.multiprocess import MultiProcessCollector\n\
        registry = CollectorRegistry()\n\
        MultiProcessCollector(registry, path=sys.argv[1])\n\
        server, _ = start_http_server(0, addr='127.0.0.1', registry=registry)\n\
        print(server.server_port, flush=True)\n\
        sys.stdin.read()\n";
    let mut child = Command::new(&py)
        .args(["-c", script])
        .arg(dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PROMETHEUS_MULTIPROC_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start Python");
    let mut port = String::new();
    {
        use std::io::BufRead;
        let stdout = child.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut port)
            .unwrap();
    }
    let python: SocketAddr = format!("127.0.0.1:{}", port.trim()).parse().unwrap();
    for (accept, content_type) in [(None, TEXT), (Some(PROMETHEUS_ACCEPT), OPENMETRICS)] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let ours = get(server.local_addr(), "/metrics", &headers);
        let theirs = get(python, "/metrics", &headers);
        assert_eq!(theirs.status, 200);
        assert_eq!(ours.header("content-type"), Some(content_type));
        assert_eq!(
            theirs
                .header("content-type")
                .map(|c| c.replace("; escaping=underscores", "")),
            Some(content_type.to_owned())
        );
        assert_eq!(line_set(&ours.text()), line_set(&theirs.text()));
        // Gzip too.
        let mut zipped = headers.clone();
        zipped.push(("Accept-Encoding", "gzip"));
        let ours_gz = get(server.local_addr(), "/metrics", &zipped);
        let theirs_gz = get(python, "/metrics", &zipped);
        assert_eq!(theirs_gz.header("content-encoding"), Some("gzip"));
        assert_eq!(
            line_set(&String::from_utf8(gunzip(&ours_gz.body)).unwrap()),
            line_set(&String::from_utf8(gunzip(&theirs_gz.body)).unwrap())
        );
    }
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    server.shutdown().unwrap();
}

// ------------------------------------------------------------------ TLS

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use prometheus_multiproc::http::TlsConfig;
    use tokio_rustls::rustls;

    fn openssl(args: &[&str], dir: &Path) -> bool {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the
    /// CA, made with the `openssl` command; `None` (SKIPPED) without it.
    fn certificates() -> Option<tempfile::TempDir> {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ok = openssl(
            &[
                &["req", "-x509"][..],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=test CA",
                ],
            ]
            .concat(),
            d,
        ) && std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .is_ok()
            && std::fs::write(
                d.join("client.ext"),
                "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n",
            )
            .is_ok()
            && ["server", "client"].iter().all(|who| {
                openssl(
                    &[
                        &["req"][..],
                        &ec[..],
                        &[
                            "-keyout",
                            &format!("{who}.key"),
                            "-out",
                            &format!("{who}.csr"),
                            "-subj",
                            &format!("/CN={who}"),
                        ],
                    ]
                    .concat(),
                    d,
                ) && openssl(
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &format!("{who}.csr"),
                        "-CA",
                        "ca.pem",
                        "-CAkey",
                        "ca.key",
                        "-CAcreateserial",
                        "-days",
                        "2",
                        "-out",
                        &format!("{who}.pem"),
                        "-extfile",
                        &format!("{who}.ext"),
                    ],
                    d,
                )
            });
        if ok {
            Some(dir)
        } else if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!("CI is set but the openssl command could not make test certificates");
        } else {
            eprintln!("SKIPPED: the openssl command is missing or failed: no TLS test");
            None
        }
    }

    fn pem_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_file_iter(path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn client_config(certs: &Path, with_client_cert: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(&certs.join("ca.pem")) {
            roots.add(cert).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = if with_client_cert {
            use rustls::pki_types::pem::PemObject;
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_file(certs.join("client.key")).unwrap();
            builder
                .with_client_auth_cert(pem_certs(&certs.join("client.pem")), key)
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }

    /// One HTTPS request; the raw answer, or the error.
    fn https_get(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        headers: &str,
    ) -> std::io::Result<Reply> {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, connect(addr));
        write!(
            tls,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
        )?;
        let mut bytes = Vec::new();
        match tls.read_to_end(&mut bytes) {
            Ok(_) => {}
            // Some servers close without close_notify; what was read is the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !bytes.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(parse(&bytes))
    }

    #[test]
    fn https_with_a_certificate_and_the_plain_port_refuses_http() {
        let Some(certs) = certificates() else { return };
        let dir = directory();
        let c = certs.path();
        let server = server(
            dir.path(),
            loopback().tls(TlsConfig::new(c.join("server.pem"), c.join("server.key"))),
        );
        let addr = server.local_addr();
        let config = client_config(c, false);
        let reply = https_get(addr, Arc::clone(&config), "").unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some(TEXT));
        assert!(reply.text().contains("requests_total{path=\"/\"} 5.0\n"));
        let reply = https_get(
            addr,
            Arc::clone(&config),
            &format!("Accept: {PROMETHEUS_ACCEPT}\r\nAccept-Encoding: gzip\r\n"),
        )
        .unwrap();
        assert_eq!(reply.header("content-type"), Some(OPENMETRICS));
        assert!(String::from_utf8(gunzip(&reply.body))
            .unwrap()
            .ends_with("# EOF\n"));

        // Plain HTTP to the TLS port: no answer, and the server goes on.
        let mut stream = connect(addr);
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        assert!(!String::from_utf8_lossy(&bytes).contains("HTTP/1.1 200"));
        log_line(&[&peer(&stream), "TLS handshake failed"]);
        // A client that never starts the handshake does not hold anything up.
        let _silent = connect(addr);
        assert_eq!(https_get(addr, config, "").unwrap().status, 200);
        server.shutdown().unwrap();
    }

    #[test]
    fn client_certificates_when_a_client_ca_is_given() {
        let Some(certs) = certificates() else { return };
        let dir = directory();
        let c = certs.path();
        let server = server(
            dir.path(),
            loopback().tls(
                TlsConfig::new(c.join("server.pem"), c.join("server.key"))
                    .client_ca(c.join("ca.pem")),
            ),
        );
        let addr = server.local_addr();
        assert!(https_get(addr, client_config(c, false), "").is_err());
        let reply = https_get(addr, client_config(c, true), "").unwrap();
        assert_eq!(reply.status, 200);
        server.shutdown().unwrap();
    }

    #[test]
    fn unreadable_or_mismatched_tls_files_are_refused() {
        let dir = directory();
        let missing = TlsConfig::new(dir.path().join("nope.pem"), dir.path().join("nope.key"));
        let err = start(Collector::new(dir.path()), loopback().tls(missing)).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let Some(certs) = certificates() else { return };
        let c = certs.path();
        // The client's key with the server's certificate.
        let mismatched = TlsConfig::new(c.join("server.pem"), c.join("client.key"));
        assert!(start(Collector::new(dir.path()), loopback().tls(mismatched)).is_err());
        // A key file given as the certificate.
        let swapped = TlsConfig::new(c.join("server.key"), c.join("server.key"));
        assert!(start(Collector::new(dir.path()), loopback().tls(swapped)).is_err());
    }
}

// ------------------------------------------------------------------ axum

#[cfg(feature = "axum")]
#[test]
fn the_axum_router_mounts_in_one_line() {
    use axum::routing::get as axum_get;
    use prometheus_multiproc::http::{axum_route, axum_router};

    let dir = directory();
    let app = axum::Router::new()
        .route("/hello", axum_get(|| async { "hello\n" }))
        .route("/other/metrics", axum_route(Collector::new(dir.path())))
        .merge(axum_router(Collector::new(dir.path())));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    for path in ["/metrics", "/other/metrics"] {
        let text = get(addr, path, &[]);
        assert_eq!(text.status, 200);
        assert_eq!(text.header("content-type"), Some(TEXT));
        assert!(text.text().contains("requests_total{path=\"/\"} 5.0\n"));
        let om = get(
            addr,
            path,
            &[("Accept", PROMETHEUS_ACCEPT), ("Accept-Encoding", "gzip")],
        );
        assert_eq!(om.header("content-type"), Some(OPENMETRICS));
        assert_eq!(om.header("content-encoding"), Some("gzip"));
        assert!(String::from_utf8(gunzip(&om.body))
            .unwrap()
            .ends_with("# EOF\n"));
        let head = request(addr, "HEAD", path, &[]);
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(head.header("content-type"), Some(TEXT));
    }
    assert_eq!(get(addr, "/hello", &[]).text(), "hello\n");
    assert_eq!(request(addr, "POST", "/metrics", &[]).status, 405);
    let _ = stop_tx.send(());
    server.join().unwrap();
}
