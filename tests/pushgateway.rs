//! The Pushgateway client against the real `prometheus-pushgateway` (Debian's package): what
//! is pushed, added and deleted shows on the gateway's own `/metrics`; and, against small fake
//! servers, the requests sent, the errors for non-2xx answers, timeouts and refused connections.
#![cfg(feature = "push")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use prometheus_multiproc::collector::{MetricFamily, Sample};
use prometheus_multiproc::exposition::{encode, Format};
use prometheus_multiproc::format::filename::MetricType;
use prometheus_multiproc::format::key::encode_key;
use prometheus_multiproc::format::layout::write_file;
use prometheus_multiproc::push::{PushError, Pushgateway};
use prometheus_multiproc::{GaugeMode, Registry};

// ---------------------------------------------------------------- a real Pushgateway

/// A Pushgateway on a free local port, without persistence, killed on drop.
struct Gateway {
    child: Child,
    url: String,
}

impl Gateway {
    fn start(binary: &Path) -> Gateway {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(binary)
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--persistence.file=")
                .arg("--log.level=error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // The port was taken meanwhile: try another.
                }
                if ureq::get(&format!("{url}/-/ready")).call().is_ok() {
                    return Gateway { child, url };
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the Pushgateway did not start");
    }

    /// The gateway's own `/metrics`: `(name, labels, value)` of every sample.
    fn metrics(&self) -> Vec<(String, Labels, f64)> {
        let text = ureq::get(&format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        parse_samples(&text)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
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

type Labels = BTreeMap<String, String>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The sample lines of a text exposition; `le` values as numbers written one way.
fn parse_samples(text: &str) -> Vec<(String, Labels, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a sample line has a value");
        let name = line[..name_end].to_owned();
        let mut labels = Labels::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            let end;
            loop {
                let (i, c) = chars.next().expect("unterminated labels");
                match c {
                    '}' => {
                        end = i + 1;
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("unterminated value").1 {
                                '"' => break,
                                '\\' => match chars.next().expect("dangling escape").1 {
                                    'n' => value.push('\n'),
                                    c => value.push(c),
                                },
                                c => value.push(c),
                            }
                        }
                        if key == "le" {
                            value = format!("{:?}", value.parse::<f64>().unwrap());
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
            rest = &body[end..];
        }
        let value = rest.split_whitespace().next().expect("a value");
        out.push((name, labels, value.parse().unwrap()));
    }
    out
}

fn find(samples: &[(String, Labels, f64)], name: &str, want: &Labels) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == want)
        .map(|(_, _, v)| *v)
}

/// The samples of one group (its job label).
fn of_job<'a>(samples: &'a [(String, Labels, f64)], job: &str) -> Vec<&'a (String, Labels, f64)> {
    samples
        .iter()
        .filter(|(_, l, _)| l.get("job").map(String::as_str) == Some(job))
        .collect()
}

fn gateway_binary() -> Option<PathBuf> {
    common::pushgateway().or_else(|| {
        let debian = PathBuf::from("/usr/bin/prometheus-pushgateway");
        debian.is_file().then_some(debian)
    })
}

/// A directory as a batch job leaves it: a counter, a histogram and a summary recorded by this
/// process, and a file of a Python worker that counted rows too.
fn batch_dir(dir: &Path) -> Registry {
    let r = Registry::new(dir).unwrap();
    let rows = r
        .counter_vec("batch_rows_total", "Rows processed.", &["table"])
        .unwrap();
    rows.with_label_values(&["users"]).inc_by(40.0).unwrap();
    rows.with_label_values(&["orders"])
        .inc_by(1234567.0)
        .unwrap();
    let duration = r
        .histogram("batch_duration_seconds", "Duration.", &[1.0, 60.0, 3600.0])
        .unwrap();
    duration.observe(42.5);
    duration.observe(0.5);
    r.summary("batch_chunk_seconds", "Chunks.")
        .unwrap()
        .observe(2.25);
    r.most_recent_gauge(
        "batch_last_success_unixtime",
        "Last success.",
        GaugeMode::MostRecent,
    )
    .unwrap()
    .set(1.7e9);
    // A Python worker's file: 5 more rows of `users`.
    let key = encode_key(
        "batch_rows",
        "batch_rows_total",
        &[("table", "users")],
        "Rows processed.",
    );
    std::fs::write(
        dir.join("counter_999999.db"),
        write_file([(key.as_bytes(), 5.0, 0.0)]),
    )
    .unwrap();
    r
}

fn counter(name: &str, help: &str, value: f64) -> MetricFamily {
    MetricFamily {
        name: name.to_owned(),
        help: help.to_owned(),
        kind: MetricType::Counter,
        samples: vec![Sample {
            name: format!("{name}_total"),
            labels: Vec::new(),
            value,
        }],
    }
}

#[test]
fn push_push_add_and_delete_show_on_the_gateway() {
    let Some(binary) = gateway_binary() else {
        return;
    };
    let gateway = Gateway::start(&binary);
    let client = Pushgateway::new(&gateway.url).timeout(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let registry = batch_dir(dir.path());

    // A job name and a grouping value with `/`, an empty value: the base64 forms.
    let job = "nightly/import";
    let grouping = [("shard", "eu/1"), ("instance", "host-1"), ("attempt", "")];
    let group = |extra: &[(&str, &str)]| {
        let mut l = labels(&[
            ("job", job),
            ("shard", "eu/1"),
            ("instance", "host-1"),
            ("attempt", ""),
        ]);
        l.extend(labels(extra));
        l
    };
    client.push_dir(job, &grouping, dir.path()).unwrap();
    // Another group, which the calls below must leave alone.
    client
        .push("other", &[], &[counter("other_runs", "Runs.", 1.0)])
        .unwrap();

    let m = gateway.metrics();
    assert_eq!(
        find(&m, "batch_rows_total", &group(&[("table", "users")])),
        Some(45.0),
        "{m:#?}"
    );
    assert_eq!(
        find(&m, "batch_rows_total", &group(&[("table", "orders")])),
        Some(1234567.0)
    );
    for (le, count) in [("1.0", 1.0), ("60.0", 2.0), ("3600.0", 2.0), ("inf", 2.0)] {
        assert_eq!(
            find(&m, "batch_duration_seconds_bucket", &group(&[("le", le)])),
            Some(count),
            "le={le}"
        );
    }
    assert_eq!(
        find(&m, "batch_duration_seconds_sum", &group(&[])),
        Some(43.0)
    );
    assert_eq!(
        find(&m, "batch_duration_seconds_count", &group(&[])),
        Some(2.0)
    );
    assert_eq!(find(&m, "batch_chunk_seconds_sum", &group(&[])), Some(2.25));
    assert_eq!(
        find(&m, "batch_chunk_seconds_count", &group(&[])),
        Some(1.0)
    );
    assert_eq!(
        find(&m, "batch_last_success_unixtime", &group(&[])),
        Some(1.7e9)
    );
    assert!(find(&m, "push_time_seconds", &group(&[])).is_some());
    // The directory's bad-files gauge is not pushed.
    assert!(!m
        .iter()
        .any(|(n, _, _)| n.starts_with("prometheus_multiproc_")));
    assert_eq!(
        find(
            &m,
            "other_runs_total",
            &labels(&[("job", "other"), ("instance", "")])
        ),
        Some(1.0)
    );

    // push_add (POST): the families pushed replace theirs, the others stay.
    registry
        .counter("batch_retries_total", "Retries.")
        .unwrap()
        .inc_by(3.0)
        .unwrap();
    let mut added = registry.gather();
    added.retain(|f| f.name == "batch_retries" || f.name == "batch_rows");
    for sample in &mut added
        .iter_mut()
        .find(|f| f.name == "batch_rows")
        .unwrap()
        .samples
    {
        sample.value += 100.0;
    }
    client.push_add(job, &grouping, &added).unwrap();
    let m = gateway.metrics();
    assert_eq!(find(&m, "batch_retries_total", &group(&[])), Some(3.0));
    assert_eq!(
        find(&m, "batch_rows_total", &group(&[("table", "users")])),
        Some(145.0)
    );
    assert_eq!(
        find(&m, "batch_duration_seconds_count", &group(&[])),
        Some(2.0),
        "families not pushed stay"
    );

    // push (PUT): the group holds only what is pushed now.
    client
        .push(job, &grouping, &[counter("batch_runs", "Runs.", 7.0)])
        .unwrap();
    let m = gateway.metrics();
    let names: Vec<&str> = of_job(&m, job)
        .iter()
        .map(|(n, _, _)| n.as_str())
        .filter(|n| !n.starts_with("push_"))
        .collect();
    assert_eq!(names, ["batch_runs_total"]);
    assert_eq!(find(&m, "batch_runs_total", &group(&[])), Some(7.0));

    // delete: the group is gone, the other one stays.
    client.delete(job, &grouping).unwrap();
    let m = gateway.metrics();
    assert!(of_job(&m, job).is_empty(), "{:#?}", of_job(&m, job));
    assert!(!of_job(&m, "other").is_empty());

    // A group that differs only in the empty value is another group.
    client
        .push(
            job,
            &[("attempt", "")],
            &[counter("batch_runs", "Runs.", 1.0)],
        )
        .unwrap();
    client
        .push(
            job,
            &[("attempt", "2")],
            &[counter("batch_runs", "Runs.", 2.0)],
        )
        .unwrap();
    let m = gateway.metrics();
    for (attempt, v) in [("", 1.0), ("2", 2.0)] {
        assert_eq!(
            find(
                &m,
                "batch_runs_total",
                &labels(&[("job", job), ("attempt", attempt), ("instance", "")])
            ),
            Some(v)
        );
    }
}

#[test]
fn gateway_refusal_is_a_clear_error() {
    let Some(binary) = gateway_binary() else {
        return;
    };
    let gateway = Gateway::start(&binary);
    let client = Pushgateway::new(&gateway.url);
    client
        .push("a", &[], &[counter("jobs", "Jobs.", 1.0)])
        .unwrap();
    // The same name as a gauge in another group: inconsistent, refused with 400.
    let gauge = MetricFamily {
        name: "jobs_total".into(),
        help: "Jobs.".into(),
        kind: MetricType::Gauge,
        samples: vec![Sample {
            name: "jobs_total".into(),
            labels: Vec::new(),
            value: 1.0,
        }],
    };
    let e = client.push("b", &[], &[gauge]).unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    let PushError::Status { url, body, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(url, &format!("{}/metrics/job/b", gateway.url));
    assert!(!body.is_empty());
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "PUT {}/metrics/job/b: the Pushgateway answered with status 400: ",
            gateway.url
        )),
        "{shown}"
    );
    // Nothing of the refused push landed; the gateway noted the failure.
    let m = gateway.metrics();
    let b: Vec<&str> = of_job(&m, "b").iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(!b.contains(&"jobs_total"), "{b:?}");
    let failed = find(
        &m,
        "push_failure_time_seconds",
        &labels(&[("job", "b"), ("instance", "")]),
    );
    assert!(failed.is_some_and(|t| t > 0.0), "{m:#?}");

    // Refused before sending: no job.
    let e = client.push("", &[], &[]).unwrap_err();
    assert!(matches!(e, PushError::InvalidGroup { .. }), "{e}");
}

// ---------------------------------------------------------------- fake servers

/// One HTTP request as a server reads it.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> Request {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap().to_owned();
    let path = parts.next().unwrap().to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    Request {
        method,
        path,
        headers,
        body,
    }
}

/// A server answering each of `answers` to one request, in order; returns the requests.
fn fake_server(answers: Vec<&'static str>) -> (String, thread::JoinHandle<Vec<Request>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let mut requests = Vec::new();
        for answer in answers {
            let (mut stream, _) = listener.accept().unwrap();
            requests.push(read_request(&mut stream));
            stream.write_all(answer.as_bytes()).unwrap();
        }
        requests
    });
    (url, handle)
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const ACCEPTED: &str = "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

#[test]
fn requests_are_what_python_sends() {
    let (url, server) = fake_server(vec![OK, OK, ACCEPTED]);
    let client = Pushgateway::new(&url).basic_auth("batch", "s3cr:et");
    let families = [counter("rows", "Rows.", 12.0)];
    let grouping = [("path", "/srv/data x"), ("host", "a b"), ("zone", "")];
    client.push("etl", &grouping, &families).unwrap();
    client.push_add("etl", &grouping, &families).unwrap();
    client.delete("etl", &grouping).unwrap();
    let requests = server.join().unwrap();

    let path = "/metrics/job/etl/host@base64/YSBi/path@base64/L3Nydi9kYXRhIHg=/zone@base64/=";
    let methods: Vec<&str> = requests.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["PUT", "POST", "DELETE"]);
    for r in &requests {
        assert_eq!(r.path, path);
        assert_eq!(
            r.headers["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        // base64("batch:s3cr:et")
        assert_eq!(r.headers["authorization"], "Basic YmF0Y2g6czNjcjpldA==");
    }
    let body = encode(&families, Format::Text);
    assert_eq!(String::from_utf8_lossy(&requests[0].body), body);
    assert_eq!(String::from_utf8_lossy(&requests[1].body), body);
    assert!(requests[2].body.is_empty());

    // The same URL path as Python's push_to_gateway builds.
    if let Some(py) = common::python() {
        let code = "from prometheus_client.exposition import _escape_grouping_key as e\n\
                    g = {'path': '/srv/data x', 'host': 'a b', 'zone': ''}\n\
                    print('/metrics/{}/{}'.format(*e('job', 'etl')) + ''.join(\
                    '/{}/{}'.format(*e(k, v)) for k, v in sorted(g.items())))";
        let mut cmd = Command::new(py);
        cmd.args(["-c", code]);
        let out = common::run_command(cmd, None);
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path);
    }
}

#[test]
fn non_2xx_answers_name_the_status_and_the_reason() {
    let (url, server) = fake_server(vec![
        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\nConnection: close\r\n\r\nUnauthorized\n",
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ]);
    let client = Pushgateway::new(&url);
    let e = client.push("j", &[], &[]).unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert_eq!(
        e.to_string(),
        format!("PUT {url}/metrics/job/j: the Pushgateway answered with status 401: Unauthorized")
    );
    let e = client.delete("j", &[("a", "b")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("DELETE {url}/metrics/job/j/a/b: the Pushgateway answered with status 503")
    );
    server.join().unwrap();
}

#[test]
fn a_silent_gateway_times_out_quickly() {
    // Connections are accepted (by the kernel) but never answered.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let client = Pushgateway::new(&url).timeout(Duration::from_millis(300));
    let started = Instant::now();
    let e = client
        .push("j", &[], &[counter("rows", "Rows.", 1.0)])
        .unwrap_err();
    let took = started.elapsed();
    assert!(e.is_timeout(), "{e:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        e.to_string(),
        format!("PUT {url}/metrics/job/j: timed out, no complete answer within 300ms")
    );
    drop(listener);
}

#[test]
fn a_missing_gateway_is_a_connection_error() {
    let port = free_port(); // Nothing listens there any more.
    let client = Pushgateway::new(&format!("127.0.0.1:{port}"));
    let e = client.delete("j", &[]).unwrap_err();
    let PushError::Connection { url, message, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(url, &format!("http://127.0.0.1:{port}/metrics/job/j"));
    assert!(!message.is_empty());
    assert!(
        e.to_string()
            .starts_with(&format!("DELETE {url}: cannot reach the Pushgateway: ")),
        "{e}"
    );
}

#[test]
fn an_unreadable_directory_pushes_nothing() {
    let client = Pushgateway::new("127.0.0.1:9");
    let e = client
        .push_dir("j", &[], "/nonexistent/prometheus-multiproc")
        .unwrap_err();
    assert!(matches!(e, PushError::Collect(_)), "{e:?}");
    assert!(e.to_string().starts_with("nothing pushed: "), "{e}");
}
