//! `prom-multiproc`: dump, check and inspect a Prometheus multiprocess directory.
#![forbid(unsafe_code)]

// A scrape of a large directory allocates hundreds of megabytes, then frees them: glibc's
// malloc maps and unmaps them each time, and the page faults of touching fresh memory were a
// third of such a scrape's time; mimalloc keeps its memory mapped for the next allocations. The
// binary never forks, so how an allocator behaves across fork() does not matter here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use prometheus_multiproc::collector::{dir_from_env, Collector, WriteError, DIR_ENV};
use prometheus_multiproc::exposition::Format;
use prometheus_multiproc::liveness::mark_process_dead;
use prometheus_multiproc_format::{filename::FileName, float::python_repr, key, layout};

mod serve;

/// Exit code for a usage or environment problem (missing or unreadable directory).
const EXIT_USAGE: u8 = 2;
/// Exit code for bad files found by `check` or `inspect`.
const EXIT_BAD: u8 = 1;

#[derive(Parser)]
#[command(
    name = "prom-multiproc",
    version,
    about = "Read Prometheus multiprocess directories (Python prometheus_client compatible)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the merged metrics of a directory; bad files are listed on stderr and left out.
    Dump {
        /// The directory [default: $PROMETHEUS_MULTIPROC_DIR].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The exposition format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Check every file of a directory; exits 1 naming each bad file and the offset of the problem.
    Check {
        /// The directory [default: $PROMETHEUS_MULTIPROC_DIR].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the entries of one file.
    Inspect {
        /// The file.
        file: PathBuf,
    },
    /// Remove a dead process's `gauge_live*_{PID}.db` files, as Python's mark_process_dead does.
    MarkDead {
        /// The process id (the pid part of its file names).
        pid: String,
        /// The directory [default: $PROMETHEUS_MULTIPROC_DIR].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Serve the merged metrics of a directory over HTTP (a sidecar for Python deployments).
    Serve(serve::ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    Openmetrics,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Dump { dir, format } => dump(dir, format),
        Command::Check { dir } => check(dir),
        Command::Inspect { file } => inspect(&file),
        Command::MarkDead { pid, dir } => mark_dead(&pid, dir),
        Command::Serve(args) => serve::serve(args),
    }
}

fn collector(dir: Option<PathBuf>) -> Result<Collector, ExitCode> {
    match dir.or_else(dir_from_env) {
        Some(dir) => Ok(Collector::new(dir)),
        None => {
            eprintln!("prom-multiproc: no directory given: pass --dir or set {DIR_ENV}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn dump(dir: Option<PathBuf>, format: OutputFormat) -> ExitCode {
    let collector = match collector(dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let format = match format {
        OutputFormat::Text => Format::Text,
        OutputFormat::Openmetrics => Format::OpenMetrics,
    };
    // Written as it is made; a reader that goes away (`| head`) is no error.
    let summary = match collector.write_to(format, std::io::stdout().lock()) {
        Ok(s) => s,
        Err(WriteError::Collect(e)) => {
            eprintln!("prom-multiproc: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(WriteError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("prom-multiproc: {e}");
            return ExitCode::from(EXIT_BAD);
        }
    };
    for bad in &summary.bad_files {
        eprintln!("prom-multiproc: skipped bad file ({}) {bad}", bad.reason);
    }
    ExitCode::SUCCESS
}

fn check(dir: Option<PathBuf>) -> ExitCode {
    let collector = match collector(dir) {
        Ok(c) => c.self_metrics(false),
        Err(code) => return code,
    };
    let scrape = match collector.collect() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("prom-multiproc: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for bad in &scrape.bad_files {
        println!(
            "BAD {} ({}): {}",
            bad.path.display(),
            bad.reason,
            bad.message
        );
    }
    println!(
        "{} files ok, {} bad in {}",
        scrape.files_read,
        scrape.bad_files.len(),
        collector.dir().display()
    );
    if scrape.bad_files.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BAD)
    }
}

fn mark_dead(pid: &str, dir: Option<PathBuf>) -> ExitCode {
    let collector = match collector(dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if pid.is_empty() || pid.contains(['/', '_']) || pid.starts_with('.') {
        eprintln!("prom-multiproc: {pid:?} is not a process id");
        return ExitCode::from(EXIT_USAGE);
    }
    if !collector.dir().is_dir() {
        eprintln!(
            "prom-multiproc: {} is not a directory",
            collector.dir().display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    match mark_process_dead(collector.dir(), pid) {
        Ok(n) => {
            println!("removed {n} live gauge files of process {pid}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("prom-multiproc: {e}");
            ExitCode::from(EXIT_BAD)
        }
    }
}

fn inspect(path: &Path) -> ExitCode {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("prom-multiproc: cannot read {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut out = String::new();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    match FileName::parse(&name) {
        Ok(n) => out.push_str(&format!(
            "file {} type {}{} pid {}\n",
            path.display(),
            n.kind,
            n.mode.map(|m| format!(" mode {m}")).unwrap_or_default(),
            n.pid
        )),
        Err(e) => out.push_str(&format!("file {} ({e})\n", path.display())),
    }
    let mut ok = true;
    match layout::entries(&bytes) {
        Err(e) => {
            out.push_str(&format!("error {e}\n"));
            ok = false;
        }
        Ok(entries) => {
            out.push_str(&format!("size {} used {}\n", bytes.len(), entries.used()));
            for entry in entries {
                match entry {
                    Err(e) => {
                        out.push_str(&format!("error {e}\n"));
                        ok = false;
                    }
                    Ok(e) => {
                        let shown = match key::decode_key(e.key) {
                            Ok(k) => {
                                let labels: Vec<String> =
                                    k.labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
                                format!(
                                    "{} {{{}}} family={:?} help={:?}",
                                    k.sample,
                                    labels.join(","),
                                    k.metric,
                                    k.help
                                )
                            }
                            Err(err) => {
                                ok = false;
                                format!("<{err}> raw={:?}", String::from_utf8_lossy(e.key))
                            }
                        };
                        out.push_str(&format!(
                            "@{} {} value={} timestamp={}\n",
                            e.offset,
                            shown,
                            python_repr(e.value),
                            python_repr(e.timestamp)
                        ));
                    }
                }
            }
        }
    }
    print!("{out}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BAD)
    }
}
