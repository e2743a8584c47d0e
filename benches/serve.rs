//! Scrapes per second over HTTP: `prom-multiproc serve` (and the in-process server of
//! `http::start`) on a directory of 64 files x 1,000 series, against the same scrape done
//! in-process, and against Python's own `start_http_server` over a `MultiProcessCollector`.
//!
//! `cargo bench --bench serve` writes the directory (64 worker files holding the same 1,000
//! counter series, as a pre-forked server's workers do), then, format by format (text or
//! OpenMetrics, plain or gzip; Prometheus asks for OpenMetrics and gzip):
//!
//! - scrapes per second of `Collector::encode_into` (+ gzip) in a loop in this process, no HTTP;
//! - scrapes per second of each server, with 1 and 4 client threads scraping back to back over
//!   keep-alive connections (Python's server closes each connection: its client reconnects);
//! - what HTTP adds to one scrape: alternating short rounds of in-process and one-client HTTP
//!   scrapes, the median of the differences (load from other processes drifts over seconds on a
//!   shared machine, and hits both sides of a round alike);
//!
//! and the floor: scrapes per second of an empty directory over HTTP. It prints a Markdown
//! report and writes it to `target/bench-results/serve.md`. Speed is reported, never asserted.
//!
//! Environment:
//! - `SERVE_BENCH_SECONDS`: seconds per measurement (default 5);
//! - `SERVE_BENCH_CLIENTS`: comma-separated client thread counts (default `1,4`);
//! - `PROM_MULTIPROC_BIN`: the `prom-multiproc` binary (default: built here, release, by cargo);
//! - `PROMETHEUS_MULTIPROC_PYTHON`: the Python with `prometheus-client` (default
//!   `.venv/bin/python`); without one, the Python rows are left out.
//!
//! Run without `--bench` (as `cargo test --all-targets` does), it only checks on a small
//! directory that every server answers and the clients count right.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{cli_binary, Env};
use prometheus_multiproc::collector::Collector;
use prometheus_multiproc::exposition::Format;
use prometheus_multiproc::format::key::encode_key;
use prometheus_multiproc::format::layout::write_file;
use prometheus_multiproc::http::{start, ServerConfig};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
const STATUSES: [&str; 10] = [
    "200", "201", "204", "301", "304", "400", "401", "404", "500", "503",
];

/// `files` worker files, each with the same `series` counter series (values differ by file).
fn write_directory(dir: &Path, files: usize, series: usize) {
    let keys: Vec<String> = (0..series)
        .map(|g| {
            let path = format!("/api/v1/resource{}/{{id}}", g / 50);
            encode_key(
                "http_requests",
                "http_requests_total",
                &[
                    ("method", METHODS[g % 5]),
                    ("path", path.as_str()),
                    ("status", STATUSES[(g / 5) % 10]),
                ],
                "HTTP requests served.",
            )
        })
        .collect();
    fs::create_dir_all(dir).unwrap();
    for f in 0..files {
        let bytes = write_file(
            keys.iter()
                .enumerate()
                .map(|(g, k)| (k.as_bytes(), ((g * 7 + f * 13) % 1000) as f64, 0.0)),
        );
        fs::write(dir.join(format!("counter_{}.db", 1000 + f)), bytes).unwrap();
    }
}

// ------------------------------------------------------------------ the client

#[derive(Clone, Copy, PartialEq, Eq)]
struct Flavour {
    openmetrics: bool,
    gzip: bool,
}

impl Flavour {
    const ALL: [Flavour; 4] = [
        Flavour {
            openmetrics: false,
            gzip: false,
        },
        Flavour {
            openmetrics: true,
            gzip: false,
        },
        Flavour {
            openmetrics: false,
            gzip: true,
        },
        Flavour {
            openmetrics: true,
            gzip: true,
        },
    ];

    fn name(self) -> &'static str {
        match (self.openmetrics, self.gzip) {
            (false, false) => "text",
            (true, false) => "OpenMetrics",
            (false, true) => "text + gzip",
            (true, true) => "OpenMetrics + gzip",
        }
    }

    fn request(self, addr: SocketAddr) -> String {
        let mut r = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n");
        if self.openmetrics {
            r.push_str(
                "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
            );
        }
        if self.gzip {
            r.push_str("Accept-Encoding: gzip\r\n");
        }
        r.push_str("\r\n");
        r
    }
}

/// One connection scraping in a loop: kept alive while the server allows it (Python's server
/// closes after each answer: then a new connection per scrape, as Prometheus would get).
struct Client {
    addr: SocketAddr,
    reader: Option<BufReader<TcpStream>>,
    request: Vec<u8>,
    body: Vec<u8>,
}

impl Client {
    fn new(addr: SocketAddr, flavour: Flavour) -> Client {
        Client {
            addr,
            reader: None,
            request: flavour.request(addr).into_bytes(),
            body: Vec::new(),
        }
    }

    fn connection(&mut self) -> &mut BufReader<TcpStream> {
        let addr = self.addr;
        self.reader.get_or_insert_with(|| {
            let stream = TcpStream::connect(addr).expect("connect");
            stream.set_nodelay(true).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            BufReader::with_capacity(1 << 16, stream)
        })
    }

    /// One scrape; the body length. Panics on anything but `200`.
    fn scrape(&mut self) -> usize {
        let request = std::mem::take(&mut self.request);
        let mut body = std::mem::take(&mut self.body);
        let reader = self.connection();
        reader.get_mut().write_all(&request).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("HTTP/1.") && line.contains(" 200 "),
            "{line:?}"
        );
        let mut keep_alive = line.starts_with("HTTP/1.1");
        let mut length = None;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("connection") {
                    keep_alive = value.trim().eq_ignore_ascii_case("keep-alive");
                }
            }
        }
        match length {
            Some(length) => {
                body.resize(length, 0);
                reader.read_exact(&mut body).unwrap();
            }
            None => {
                body.clear();
                reader.read_to_end(&mut body).unwrap();
                keep_alive = false;
            }
        }
        if !keep_alive {
            self.reader = None;
        }
        let n = body.len();
        self.body = body;
        self.request = request;
        n
    }
}

struct Rate {
    scrapes_per_s: f64,
    mean_latency: Duration,
    body_bytes: usize,
}

/// `clients` threads scraping `addr` for `duration` (after one warm-up scrape each).
fn measure(addr: SocketAddr, flavour: Flavour, clients: usize, duration: Duration) -> Rate {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut client = Client::new(addr, flavour);
                let bytes = client.scrape();
                barrier.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    client.scrape();
                    n += 1;
                }
                (n, bytes)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut body_bytes = 0;
    for t in threads {
        let (n, bytes) = t.join().expect("client thread");
        total += n;
        body_bytes = bytes;
    }
    // The clients finish the scrape in flight after `stop`: count the time they took.
    let elapsed = started.elapsed().as_secs_f64();
    let scrapes_per_s = total as f64 / elapsed;
    Rate {
        scrapes_per_s,
        mean_latency: Duration::from_secs_f64(clients as f64 / scrapes_per_s.max(1e-9)),
        body_bytes,
    }
}

// ------------------------------------------------------------------ in-process

/// Scrapes per second of `f` called back to back for `duration` in this thread (after one
/// warm-up call).
fn in_process_rate(duration: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        f();
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

// ------------------------------------------------------------------ the servers

/// A server process, killed on drop.
struct ChildServer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

fn start_cli(bin: &Path, dir: &Path, max_concurrent: usize) -> ChildServer {
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .args(["--max-concurrent", &max_concurrent.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start prom-multiproc serve");
    let line = first_line(&mut child);
    let addr = line
        .strip_prefix("serving http://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    ChildServer { child, addr }
}

fn start_python(py: &Path, dir: &Path) -> ChildServer {
    let script = "import sys\n\
        from prometheus_client import CollectorRegistry, start_http_server\n\
        from prometheus_client.multiprocess import MultiProcessCollector\n\
        registry = CollectorRegistry()\n\
        MultiProcessCollector(registry, path=sys.argv[1])\n\
        server, _ = start_http_server(0, addr='127.0.0.1', registry=registry)\n\
        print(server.server_port, flush=True)\n\
        sys.stdin.read()\n";
    let mut child = Command::new(py)
        .args(["-c", script])
        .arg(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start Python");
    let port = first_line(&mut child);
    let addr = format!("127.0.0.1:{}", port.trim()).parse().unwrap();
    ChildServer { child, addr }
}

fn python_version(py: &Path) -> String {
    Command::new(py)
        .args([
            "-c",
            "import sys, importlib.metadata as m; \
             print(sys.version.split()[0], m.version('prometheus_client'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

// ------------------------------------------------------------------ reporting

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs available, {mem_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let env = Env::find();
    let (files, series) = if bench { (64, 1000) } else { (4, 50) };
    let seconds: f64 = if bench {
        env_or("SERVE_BENCH_SECONDS", 5.0)
    } else {
        0.2
    };
    let duration = Duration::from_secs_f64(seconds);
    let client_counts: Vec<usize> = if bench {
        std::env::var("SERVE_BENCH_CLIENTS")
            .unwrap_or_else(|_| "1,4".into())
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .filter(|&c| c > 0)
            .collect()
    } else {
        vec![1, 2]
    };
    let max_clients = client_counts.iter().copied().max().unwrap_or(1);

    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("metrics");
    write_directory(&dir, files, series);
    println!("directory: {files} files x {series} series (the same series in every file)");

    // The servers.
    let in_proc_server = start(
        Collector::new(&dir),
        ServerConfig::new("127.0.0.1:0").max_concurrent_scrapes(max_clients),
    )
    .expect("start the in-process server");
    let empty = data.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let empty_server = start(Collector::new(&empty), ServerConfig::new("127.0.0.1:0"))
        .expect("start the server of the empty directory");
    let cli = if bench {
        cli_binary(&env)
            .map_err(|e| {
                println!("SKIPPED: cannot build prom-multiproc ({e}): no row for the binary")
            })
            .ok()
    } else {
        std::env::var_os("PROM_MULTIPROC_BIN").map(PathBuf::from)
    };
    let cli_server = cli.as_deref().map(|b| start_cli(b, &dir, max_clients));
    let py = env
        .python
        .as_ref()
        .map_err(|e| println!("SKIPPED: {e}: no Python row"))
        .ok()
        .cloned();
    let py_server = py.as_deref().map(|p| start_python(p, &dir));

    // Columns: one per server and client count, then Python's (one client).
    let mut columns: Vec<(String, SocketAddr, usize)> = Vec::new();
    for &clients in &client_counts {
        if let Some(s) = &cli_server {
            columns.push((format!("`serve`, {clients} client(s)"), s.addr, clients));
        }
        columns.push((
            format!("`http::start`, {clients} client(s)"),
            in_proc_server.local_addr(),
            clients,
        ));
    }
    if let Some(s) = &py_server {
        columns.push(("Python `start_http_server`, 1 client".into(), s.addr, 1));
    }

    struct Row {
        flavour: Flavour,
        body_bytes: usize,
        in_process: f64,
        rates: Vec<Rate>,
        /// Per column with one client (not Python's): the medians of alternating rounds of
        /// in-process and HTTP scrapes, in ms per scrape, and of their differences.
        overhead: Vec<Option<(f64, f64, f64)>>,
    }
    let (rounds, round) = if bench {
        (10, Duration::from_millis(500))
    } else {
        (2, Duration::from_millis(50))
    };
    let collector = Collector::new(&dir);
    let mut rows = Vec::new();
    // Measured flavour by flavour, in-process first, so that each row's figures are close in
    // time (other load on the machine drifts).
    for flavour in Flavour::ALL {
        let format = if flavour.openmetrics {
            Format::OpenMetrics
        } else {
            Format::Text
        };
        let scrape_in_process = || {
            let mut text = String::new();
            collector.encode_into(format, &mut text).unwrap();
            if flavour.gzip {
                std::hint::black_box(gzip(text.as_bytes()));
            } else {
                std::hint::black_box(text);
            }
        };
        let in_process = in_process_rate(duration, scrape_in_process);
        println!(
            "{:>18} {:>40}: {in_process:>8.1} scrapes/s",
            flavour.name(),
            "in-process Collector::encode_into"
        );
        let mut rates = Vec::new();
        for (name, addr, clients) in &columns {
            let python = name.starts_with("Python");
            // Python is far slower: give it enough time for a few scrapes.
            let d = if python && bench {
                duration.max(Duration::from_secs(5))
            } else {
                duration
            };
            let rate = measure(*addr, flavour, *clients, d);
            println!(
                "{:>18} {name:>40}: {:>8.1} scrapes/s, {:>7.2} ms latency, {} bytes",
                flavour.name(),
                rate.scrapes_per_s,
                rate.mean_latency.as_secs_f64() * 1e3,
                rate.body_bytes
            );
            rates.push(rate);
        }
        // What HTTP adds to a scrape: alternating short rounds of in-process and HTTP scrapes
        // (one client), so that drifting load on the machine hits both alike.
        let overhead = columns
            .iter()
            .map(|(name, addr, clients)| {
                if *clients != 1 || name.starts_with("Python") {
                    return None;
                }
                let mut local = Vec::new();
                let mut http = Vec::new();
                let mut diff = Vec::new();
                for _ in 0..rounds {
                    let l = 1e3 / in_process_rate(round, scrape_in_process);
                    let h = measure(*addr, flavour, 1, round).mean_latency.as_secs_f64() * 1e3;
                    local.push(l);
                    http.push(h);
                    diff.push(h - l);
                }
                Some((median(&mut local), median(&mut http), median(&mut diff)))
            })
            .collect();
        rows.push(Row {
            flavour,
            body_bytes: rates.first().map_or(0, |r| r.body_bytes),
            in_process,
            rates,
            overhead,
        });
    }

    if !bench {
        println!("run the benchmark with: cargo bench --bench serve");
        return;
    }

    // The Markdown tables.
    let mut md = String::new();
    let _ = writeln!(md, "<!-- written by `cargo bench --bench serve` -->");
    let _ = writeln!(
        md,
        "Directory: {files} worker files x {series} counter series (the same series in every \
         file, merged into {series} series). Scrapes per second, each figure over {seconds} s of \
         back-to-back scrapes by keep-alive clients on loopback (Python's server closes the \
         connection after each answer, so its client reconnects, as Prometheus does). \
         \"In-process\" is `Collector::encode_into` (+ gzip) called in a loop in one \
         thread, without HTTP.\n"
    );
    let mut header = String::from("| format | body bytes | in-process |");
    let mut rule = String::from("|---|---:|---:|");
    for (name, _, _) in &columns {
        header.push_str(&format!(" {name} |"));
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for row in &rows {
        let mut line = format!(
            "| {} | {} | {:.1} |",
            row.flavour.name(),
            row.body_bytes,
            row.in_process
        );
        for rate in &row.rates {
            line.push_str(&format!(" {:.1} |", rate.scrapes_per_s));
        }
        let _ = writeln!(md, "{line}");
    }
    // The time HTTP adds to one scrape, with one client.
    let _ = writeln!(
        md,
        "\nWhat HTTP adds to one scrape, one client: medians over {rounds} alternating rounds of \
         {:.1} s in-process and {:.1} s over HTTP (ms per scrape):\n",
        round.as_secs_f64(),
        round.as_secs_f64()
    );
    let one: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, (name, _, clients))| *clients == 1 && !name.starts_with("Python"))
        .map(|(i, _)| i)
        .collect();
    let mut header = String::from("| format |");
    let mut rule = String::from("|---|");
    for &i in &one {
        let name = columns[i].0.split(',').next().unwrap_or_default();
        header.push_str(&format!(" in-process | {name} | HTTP adds |"));
        rule.push_str("---:|---:|---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for row in &rows {
        let mut line = format!("| {} |", row.flavour.name());
        for &i in &one {
            if let Some((local, http, diff)) = row.overhead[i] {
                line.push_str(&format!(" {local:.2} | {http:.2} | {diff:+.2} |"));
            }
        }
        let _ = writeln!(md, "{line}");
    }
    let floor = measure(empty_server.local_addr(), Flavour::ALL[0], 1, duration);
    let _ = writeln!(
        md,
        "\nThe floor, an empty directory over HTTP (one client, text): {:.0} scrapes/s, {:.3} ms \
         per scrape.",
        floor.scrapes_per_s,
        floor.mean_latency.as_secs_f64() * 1e3
    );
    if let (Some(py), Some(python_col)) =
        (&py, columns.iter().position(|c| c.0.starts_with("Python")))
    {
        let prometheus_like = &rows[3];
        let ours = one
            .iter()
            .find(|&&i| columns[i].0.starts_with("`serve`"))
            .or_else(|| one.first())
            .map(|&i| prometheus_like.rates[i].scrapes_per_s);
        if let Some(ours) = ours {
            let _ = writeln!(
                md,
                "\nAsked for OpenMetrics and gzip (as Prometheus asks) by one client, `serve` \
                 answers {:.0}x as many scrapes per second as Python's own endpoint on the same \
                 directory (Python and prometheus-client: {}).",
                ours / prometheus_like.rates[python_col].scrapes_per_s,
                python_version(py)
            );
        }
    }
    let _ = writeln!(md, "\nMachine: {}.", machine());
    println!("\n{md}");
    let out = env.target.join("bench-results");
    if fs::create_dir_all(&out).is_ok() {
        let path = out.join("serve.md");
        if fs::write(&path, &md).is_ok() {
            println!("written to {}", path.display());
        }
    }
    drop(py_server);
    drop(cli_server);
    in_proc_server.shutdown().unwrap();
    empty_server.shutdown().unwrap();
}
