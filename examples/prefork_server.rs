//! A pre-forked HTTP server: a master binds one listening socket, prepares the metrics
//! directory and forks `--workers N` workers that all accept on it; `/metrics`, answered by
//! whichever worker gets the request, merges every worker's file.
//!
//! The master reaps workers that die, marks them dead and respawns them, and stops everything
//! on Ctrl-C or SIGTERM.
//!
//! ```sh
//! cargo run --release --example prefork_server -- --workers 4 --listen 127.0.0.1:8000
//! curl http://127.0.0.1:8000/users/42
//! curl http://127.0.0.1:8000/metrics
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use prometheus_multiproc::collector::{dir_from_env, Collector};
use prometheus_multiproc::http::scrape_response;
use prometheus_multiproc::liveness::{mark_process_dead, prepare_dir};
use prometheus_multiproc::{CounterVec, Gauge, GaugeMode, HistogramVec, Registry, DEFAULT_BUCKETS};

#[derive(Parser)]
#[command(about = "A pre-forked HTTP server exporting merged multi-process metrics")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// Number of worker processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.workers == 0 {
        eprintln!("prefork_server: --workers must be at least 1");
        return ExitCode::from(2);
    }
    // PROMETHEUS_MULTIPROC_DIR, or a fresh directory removed on exit.
    let (dir, _temp) = match dir_from_env() {
        Some(dir) => (dir, None),
        None => match tempfile::Builder::new()
            .prefix("prometheus-multiproc-")
            .tempdir()
        {
            Ok(t) => (t.path().to_owned(), Some(t)),
            Err(e) => {
                eprintln!("prefork_server: cannot create a metrics directory: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if let Err(e) = prepare_dir(&dir, false) {
        eprintln!("prefork_server: {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("prefork_server: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let addr = listener.local_addr().expect("bound socket has an address");
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).expect("install signal handler");
    }
    println!(
        "prefork_server: listening on http://{addr} with {} workers",
        args.workers
    );
    println!("prefork_server: metrics directory {}", dir.display());
    println!("prefork_server: try  curl http://{addr}/users/42  and  curl http://{addr}/metrics");
    let _ = std::io::stdout().flush();

    let mut workers = HashSet::new();
    for _ in 0..args.workers {
        workers.insert(spawn_worker(&listener, &dir));
    }
    while !stop.load(Ordering::Relaxed) {
        for (pid, status) in reap(false) {
            workers.remove(&pid);
            let _ = mark_process_dead(&dir, &pid.to_string());
            if stop.load(Ordering::Relaxed) {
                break;
            }
            println!("prefork_server: worker {pid} exited ({status}), respawning");
            workers.insert(spawn_worker(&listener, &dir));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    println!("prefork_server: stopping {} workers", workers.len());
    for pid in &workers {
        // SAFETY: plain system call; the pid is our own child.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !workers.is_empty() {
        for (pid, _) in reap(false) {
            workers.remove(&pid);
            let _ = mark_process_dead(&dir, &pid.to_string());
        }
        if Instant::now() > deadline {
            for pid in &workers {
                // SAFETY: as above.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            for (pid, _) in reap(true) {
                workers.remove(&pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("prefork_server: stopped");
    ExitCode::SUCCESS
}

/// Exited children, with a description of how they ended.
fn reap(block: bool) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        let flags = if block { 0 } else { libc::WNOHANG };
        // SAFETY: waitpid with a valid pointer to an int.
        let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
        if pid <= 0 {
            return out;
        }
        let how = if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exit code {}", libc::WEXITSTATUS(status))
        };
        out.push((pid, how));
    }
}

fn spawn_worker(listener: &TcpListener, dir: &Path) -> i32 {
    // SAFETY: the master is single-threaded (no runtime, no other threads), so the child may
    // run arbitrary code; it never returns from this function.
    match unsafe { libc::fork() } {
        -1 => panic!("fork failed: {}", std::io::Error::last_os_error()),
        0 => {
            // The master's signal flags are not the worker's: default actions again.
            for signal in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: resetting a disposition to the default has no preconditions.
                unsafe { libc::signal(signal, libc::SIG_DFL) };
            }
            let code = match worker(listener, dir) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("prefork_server: worker {}: {e}", std::process::id());
                    1
                }
            };
            // SAFETY: ends the child without running the master's destructors (its temp dir).
            unsafe { libc::_exit(code) }
        }
        pid => pid,
    }
}

/// The metrics of one worker, as the seed's Flask middleware defines them.
#[derive(Clone)]
struct Metrics {
    dir: PathBuf,
    requests: CounterVec,
    latency: HistogramVec,
    in_progress: Gauge,
    handled_by_worker: Gauge,
}

impl Metrics {
    fn new(dir: &Path) -> Result<Metrics, Box<dyn std::error::Error>> {
        let registry = Registry::new(dir)?;
        Ok(Metrics {
            dir: dir.to_owned(),
            requests: registry.counter_vec(
                "http_requests_total",
                "HTTP requests, by method, normalized path and status.",
                &["method", "path", "status"],
            )?,
            latency: registry.histogram_vec(
                "http_request_duration_seconds",
                "HTTP request latency in seconds.",
                &["method", "path"],
                DEFAULT_BUCKETS,
            )?,
            in_progress: registry.gauge(
                "http_requests_in_progress",
                "HTTP requests being served, over live workers.",
                GaugeMode::LiveSum,
            )?,
            handled_by_worker: registry.gauge(
                "http_worker_requests_handled",
                "Requests handled by each live worker.",
                GaugeMode::LiveAll,
            )?,
        })
    }
}

fn worker(listener: &TcpListener, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Metrics::new(dir)?;
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = Router::new()
            .route("/", get(|| async { "Hello from a pre-forked worker.\n" }))
            .route("/users/{id}", get(user))
            .route("/metrics", get(scrape))
            .layer(middleware::from_fn_with_state(metrics.clone(), track))
            .with_state(metrics);
        axum::serve(listener, app).await
    })?;
    Ok(())
}

async fn user(axum::extract::Path(id): axum::extract::Path<String>) -> String {
    format!("User {id}, served by worker {}.\n", std::process::id())
}

/// Counts every request under its route template (`/users/{id}`, not the raw id), times it and
/// tracks it in progress.
async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let _in_progress = metrics.in_progress.track_inprogress();
    let timer = std::time::Instant::now();
    let response = next.run(request).await;
    metrics
        .latency
        .with_label_values(&[&method, &path])
        .observe(timer.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[&method, &path, response.status().as_str()])
        .inc();
    metrics.handled_by_worker.inc();
    response
}

/// Merges the directory: the same answer from whichever worker gets the request, in the format
/// the scraper asks for (OpenMetrics or text, gzip or not), as the crate's endpoint answers.
async fn scrape(State(metrics): State<Metrics>, request: Request) -> Response {
    let dir = metrics.dir.clone();
    let (parts, _body) = request.into_parts();
    let request = Request::from_parts(parts, ());
    let answered =
        tokio::task::spawn_blocking(move || scrape_response(&Collector::new(dir), &request)).await;
    match answered {
        Ok(response) => response.map(axum::body::Body::from),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
