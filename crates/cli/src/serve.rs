//! `prom-multiproc serve`: the merged metrics of a directory over HTTP.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use prometheus_multiproc::http::{
    BasicAuth, Server, ServerConfig, TlsConfig, DEFAULT_MAX_CONCURRENT_SCRAPES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_PATH,
};

use super::{collector, EXIT_USAGE};

/// Exit code when the server stops on an error after it started.
const EXIT_FAILED: u8 = 1;

#[derive(Args)]
pub struct ServeArgs {
    /// The directory [default: $PROMETHEUS_MULTIPROC_DIR].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The address to listen on, host:port (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: String,
    /// The path of the metrics endpoint.
    #[arg(long, default_value = DEFAULT_PATH)]
    path: String,
    /// The most scrapes in progress at once; more are answered 503 at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONCURRENT_SCRAPES)]
    max_concurrent: usize,
    /// The most open connections; more wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a client has to send its request headers (and to start its next request on a
    /// keep-alive connection).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a scrape may take before it is answered 503, and a response may stall.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    request_timeout: f64,
    /// The most bytes of request line and headers; more are answered 431.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    max_header_bytes: usize,
    /// Require HTTP basic authentication with this user name.
    #[arg(long, value_name = "USER", requires = "basic_auth_password_file")]
    basic_auth_user: Option<String>,
    /// The file holding the basic authentication password (one trailing newline is ignored).
    #[arg(long, value_name = "FILE", requires = "basic_auth_user")]
    basic_auth_password_file: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates that chain to a CA in this PEM file.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// The least severe log lines written to stderr (each failure is a `warn` or `error` line;
    /// `debug` adds one line per scrape).
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
        }
    }
}

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("prom-multiproc: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn seconds(name: &str, value: f64) -> Result<Duration, ExitCode> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| usage_error(format!("--{name} must be a positive number of seconds")))
}

fn config(args: &ServeArgs) -> Result<ServerConfig, ExitCode> {
    let mut config = ServerConfig::new(&args.listen)
        .path(&args.path)
        .max_concurrent_scrapes(args.max_concurrent)
        .max_connections(args.max_connections)
        .header_read_timeout(seconds("header-timeout", args.header_timeout)?)
        .request_timeout(seconds("request-timeout", args.request_timeout)?)
        .max_header_bytes(args.max_header_bytes);
    if let (Some(user), Some(file)) = (&args.basic_auth_user, &args.basic_auth_password_file) {
        if user.is_empty() || user.contains(':') {
            return Err(usage_error(
                "--basic-auth-user must be non-empty and hold no ':'",
            ));
        }
        let password = std::fs::read_to_string(file).map_err(|e| {
            usage_error(format!(
                "cannot read the password file {}: {e}",
                file.display()
            ))
        })?;
        let password = password
            .strip_suffix('\n')
            .map(|p| p.strip_suffix('\r').unwrap_or(p))
            .unwrap_or(&password);
        if password.is_empty() {
            return Err(usage_error(format!(
                "the password file {} is empty",
                file.display()
            )));
        }
        config = config.basic_auth(BasicAuth::new(user, password));
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let mut tls = TlsConfig::new(cert, key);
        if let Some(ca) = &args.tls_client_ca {
            tls = tls.client_ca(ca);
        }
        config = config.tls(tls);
    }
    Ok(config)
}

pub fn serve(args: ServeArgs) -> ExitCode {
    Logger::install(args.log_level.filter());
    let collector = match collector(args.dir.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !collector.dir().is_dir() {
        return usage_error(format!("{} is not a directory", collector.dir().display()));
    }
    let dir = collector.dir().to_owned();
    let config = match config(&args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let server = match Server::bind(collector, config) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("prom-multiproc-http")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("prom-multiproc: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let scheme = if server.is_tls() { "https" } else { "http" };
    println!(
        "serving {scheme}://{}{} from {}",
        server.local_addr(),
        args.path,
        dir.display()
    );
    let _ = std::io::stdout().flush();
    match runtime.block_on(server.run_until(shutdown_signal())) {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    let name = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    log::info!("{name} received, stopping");
}

/// Log lines on stderr: `2024-05-01T12:00:00.123Z WARN message`. Records of other crates (TLS
/// debugging, say) are shown from `warn` up only.
struct Logger {
    level: log::LevelFilter,
}

impl Logger {
    fn install(level: log::LevelFilter) {
        if log::set_logger(Box::leak(Box::new(Logger { level }))).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let ours = metadata.target().starts_with("prometheus_multiproc")
            || metadata.target().starts_with("prom_multiproc");
        metadata.level() <= self.level && (ours || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {} {}\n", timestamp(), record.level(), record.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// The current time in UTC, RFC 3339 with milliseconds.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600,
        rest / 60 % 60,
        rest % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_shape() {
        let t = super::timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
