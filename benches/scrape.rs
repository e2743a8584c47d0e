//! Scrape benchmark: our merge of a multiprocess directory against Python's, on the same bytes.
//!
//! `cargo bench --bench scrape` (or `scripts/bench`) writes two directories of 64 files x 10,000
//! counter series with Python's own writer (`benches/python/make_dir.py`), one where every file
//! holds the same series and one where each file holds its own, then times, in one run:
//!
//! - reading every file's bytes from the page cache (`std::fs::read`, one thread and all threads),
//!   and only the bytes in use (what Python and the collector read): the floor any reader pays;
//! - ours in-process: `Collector::encode_into(Text)` (what a scrape endpoint and `dump` do), and
//!   the owned-families API: `Collector::collect`, `encode(Text)` of its families, and both;
//! - ours as a process: `prom-multiproc dump --dir DIR > /dev/null`, end to end;
//! - Python in-process: `generate_latest` over a `MultiProcessCollector`
//!   (`benches/python/scrape.py`), and checks that both outputs hold the same lines.
//!
//! It prints a table of times and ratios and writes it as Markdown to
//! `target/bench-results/scrape.md`, with a bar chart in `target/bench-results/scrape.svg`.
//! Speed is reported, never asserted.
//!
//! Environment:
//! - `SCRAPE_BENCH_QUICK=1`: 8 files x 2,000 series instead of 64 x 10,000;
//! - `PROMETHEUS_MULTIPROC_PYTHON`: the Python with `prometheus-client` (default `.venv/bin/python`);
//!   without one, the Python rows print SKIPPED and the directories are written by a Rust copy of
//!   the generator that writes the same bytes;
//! - `SCRAPE_BENCH_WRITER=rust`: write the directories with the Rust copy even when Python is here;
//! - `SCRAPE_BENCH_PY_ITER`: Python scrapes to time after its warm-up (default 3);
//! - `PROM_MULTIPROC_BIN`: the `prom-multiproc` binary to time (default: built here with cargo).
//!
//! Run without `--bench` (as `cargo test --all-targets` does), it only checks on a tiny directory
//! that the generator and the merge work, and that the Rust generator writes Python's bytes.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cli_binary, Env};
use prometheus_multiproc::collector::{merge_files, Collector, MetricFamily};
use prometheus_multiproc::exposition::{encode, Format};
use prometheus_multiproc::format::key::{decode_key_into, encode_key, KeyRef};
use prometheus_multiproc::format::layout::{self, write_file};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

/// Bumped whenever the generated series change, so that old directories are written again.
const GENERATOR: &str = "make_dir.py v1";

const MODES: [Mode; 2] = [Mode::Same, Mode::Distinct];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every file holds the same series.
    Same,
    /// Each file holds its own series.
    Distinct,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Same => "same",
            Mode::Distinct => "distinct",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Same => "same series in every file",
            Mode::Distinct => "distinct series per file",
        }
    }
}

// ------------------------------------------------------------------ the generator (Rust copy)

// Keep in step with benches/python/make_dir.py.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
const STATUSES: [&str; 10] = [
    "200", "201", "204", "301", "304", "400", "401", "404", "500", "503",
];
const RESOURCES: [&str; 8] = [
    "users", "orders", "products", "carts", "invoices", "sessions", "search", "reviews",
];
const QUEUES: [&str; 4] = ["default", "emails", "reports", "billing"];
const TASKS: [&str; 5] = [
    "send_welcome",
    "render_pdf",
    "charge_card",
    "sync_inventory",
    "rebuild_index",
];
const OUTCOMES: [&str; 3] = ["success", "retry", "failure"];

/// The key of series `i` of a file; `g` numbers the series across the directory.
fn series_key(i: usize, series: usize, g: usize) -> String {
    let tenth = i * 10 / series;
    if tenth < 9 {
        let (family, sample, help) = if tenth < 5 {
            (
                "http_requests",
                "http_requests_total",
                "HTTP requests served.",
            )
        } else {
            (
                "http_response_bytes",
                "http_response_bytes_total",
                "HTTP response body bytes sent.",
            )
        };
        let path = format!("/api/v1/{}/{}", RESOURCES[(g / 50) % 8], g / 50);
        let labels = [
            ("method", METHODS[g % 5]),
            ("path", path.as_str()),
            ("status", STATUSES[(g / 5) % 10]),
        ];
        encode_key(family, sample, &labels, help)
    } else {
        let task = format!("{}_{}", TASKS[(g / 12) % 5], g / 12);
        let labels = [
            ("queue", QUEUES[(g / 3) % 4]),
            ("task", task.as_str()),
            ("outcome", OUTCOMES[g % 3]),
        ];
        encode_key(
            "jobs_processed",
            "jobs_processed_total",
            &labels,
            "Background jobs processed.",
        )
    }
}

fn series_value(g: usize, f: usize) -> f64 {
    ((g as u64 * 2_654_435_761 + f as u64 * 40_503) % 100_000) as f64
}

/// Writes the directory as `make_dir.py` does, with the format crate's writer.
fn write_dir_rust(dir: &Path, mode: Mode, files: usize, series: usize) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let same: Vec<String> = match mode {
        Mode::Same => (0..series).map(|i| series_key(i, series, i)).collect(),
        Mode::Distinct => Vec::new(),
    };
    (0..files).into_par_iter().try_for_each(|f| {
        let own: Vec<String>;
        let (keys, base) = match mode {
            Mode::Same => (&same, 0),
            Mode::Distinct => {
                own = (0..series)
                    .map(|i| series_key(i, series, f * series + i))
                    .collect();
                (&own, f * series)
            }
        };
        let bytes = write_file(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_bytes(), series_value(base + i, f), 0.0)),
        );
        fs::write(dir.join(format!("counter_{}.db", f + 1)), bytes)
    })
}

// ------------------------------------------------------------------ environment

impl Env {
    fn script(&self, name: &str) -> PathBuf {
        self.root.join("benches/python").join(name)
    }

    /// Writes a directory with `make_dir.py`.
    fn write_dir_python(
        &self,
        dir: &Path,
        mode: Mode,
        files: usize,
        series: usize,
    ) -> Result<(), String> {
        let python = self.python.as_ref().map_err(Clone::clone)?;
        let out = Command::new(python)
            .arg(self.script("make_dir.py"))
            .arg(dir)
            .args([mode.as_str(), &files.to_string(), &series.to_string()])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "make_dir.py failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// The generated directory for a mode, written once and kept in `target/bench-data`.
fn data_dir(env: &Env, mode: Mode, files: usize, series: usize) -> (PathBuf, String) {
    let base = env.target.join("bench-data");
    let dir = base.join(format!("{}-{files}x{series}", mode.as_str()));
    let stamp_prefix = format!("{GENERATOR} {} {files} {series}", mode.as_str());
    let complete = fs::read_to_string(dir.join("generator.txt"))
        .ok()
        .filter(|s| s.starts_with(&stamp_prefix))
        .filter(|_| count_db_files(&dir) == files);
    if let Some(stamp) = complete {
        let writer = stamp
            .trim()
            .rsplit("writer=")
            .next()
            .unwrap_or("?")
            .to_owned();
        return (dir, writer);
    }
    let partial = base.join(format!("{}-{files}x{series}.partial", mode.as_str()));
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(&dir);
    let force_rust = std::env::var("SCRAPE_BENCH_WRITER").is_ok_and(|w| w == "rust");
    let started = Instant::now();
    let writer = if env.python.is_ok() && !force_rust {
        env.write_dir_python(&partial, mode, files, series)
            .unwrap_or_else(|e| panic!("{e}"));
        "python"
    } else {
        write_dir_rust(&partial, mode, files, series)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", partial.display()));
        "rust"
    };
    // Not a `*.db` name: neither collector reads it.
    fs::write(
        partial.join("generator.txt"),
        format!("{stamp_prefix} writer={writer}\n"),
    )
    .expect("write generator.txt");
    fs::rename(&partial, &dir).expect("rename the generated directory");
    println!(
        "wrote {} with the {writer} writer in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    (dir, writer.to_owned())
}

fn db_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "db"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
}

fn count_db_files(dir: &Path) -> usize {
    db_files(dir).len()
}

// ------------------------------------------------------------------ timing

#[derive(Clone)]
struct Stats {
    min: Duration,
    median: Duration,
    runs: usize,
}

impl Stats {
    fn from_times(mut times: Vec<Duration>) -> Stats {
        times.sort();
        let n = times.len();
        let median = if n % 2 == 1 {
            times[n / 2]
        } else {
            (times[n / 2 - 1] + times[n / 2]) / 2
        };
        Stats {
            min: times[0],
            median,
            runs: n,
        }
    }

    fn from_secs(min: f64, median: f64, runs: usize) -> Stats {
        Stats {
            min: Duration::from_secs_f64(min),
            median: Duration::from_secs_f64(median),
            runs,
        }
    }
}

/// Runs `f` once to warm up, then as many times as fit in `budget` (at least 5, at most 30).
fn measure(budget: Duration, mut f: impl FnMut()) -> Stats {
    let start = Instant::now();
    f();
    let first = start.elapsed().max(Duration::from_micros(1));
    let runs = (budget.as_secs_f64() / first.as_secs_f64()).clamp(5.0, 30.0) as usize;
    let times = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    Stats::from_times(times)
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn fmt_ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

// ------------------------------------------------------------------ one mode

struct Python {
    stats: Stats,
    bytes: usize,
    version: String,
}

struct ModeResult {
    mode: Mode,
    files: usize,
    series: usize,
    file_bytes: u64,
    writer: String,
    output_bytes: usize,
    output_samples: usize,
    read_seq: Stats,
    read_used: Stats,
    read_par: Stats,
    collect: Stats,
    encode: Stats,
    owned: Stats,
    ours: Stats,
    dump: Result<Stats, String>,
    python: Result<Python, String>,
    same_output: Option<Result<usize, String>>,
    entries: usize,
    phases: Vec<(String, Stats)>,
}

fn run_mode(
    env: &Env,
    bin: &Result<PathBuf, String>,
    mode: Mode,
    files: usize,
    series: usize,
    quick: bool,
) -> ModeResult {
    let budget = Duration::from_secs(if quick { 1 } else { 3 });
    let (dir, writer) = data_dir(env, mode, files, series);
    let paths = db_files(&dir);
    let file_bytes: u64 = paths
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "\n== {} ({files} files x {series} series, {:.0} MiB, {}) ==",
        mode.describe(),
        file_bytes as f64 / (1 << 20) as f64,
        dir.display()
    );

    // (a) The floor: the same bytes, read from the page cache (warmed by the first run).
    let read_seq = measure(budget, || {
        let n: usize = paths.iter().map(|p| fs::read(p).expect("read").len()).sum();
        black_box(n);
    });
    report("read files, 1 thread", &read_seq);
    let read_used = measure(budget, || {
        let n: usize = paths.iter().map(|p| read_in_use(p).len()).sum();
        black_box(n);
    });
    report("read the bytes in use, 1 thread", &read_used);
    let read_par = measure(budget, || {
        let n: usize = paths
            .par_iter()
            .map(|p| fs::read(p).expect("read").len())
            .sum();
        black_box(n);
    });
    report(
        &format!("read files, {} threads", rayon::current_num_threads()),
        &read_par,
    );

    // (b) Ours, in-process.
    let collector = Collector::new(&dir);
    let scrape = collector.collect().expect("collect");
    assert!(
        scrape.bad_files.is_empty(),
        "bad files in {}: {:?}",
        dir.display(),
        scrape.bad_files
    );
    let text = encode(&scrape.families, Format::Text);
    let output_samples = scrape.families.iter().map(|f| f.samples.len()).sum();
    let collect = measure(budget, || {
        black_box(collector.collect().expect("collect"));
    });
    report("ours: Collector::collect", &collect);
    let encode_stats = measure(budget, || {
        black_box(encode(&scrape.families, Format::Text));
    });
    report("ours: encode(Text)", &encode_stats);
    drop(scrape);
    let owned = measure(budget, || {
        let scrape = collector.collect().expect("collect");
        black_box(encode(&scrape.families, Format::Text).len());
    });
    report("ours: collect + encode", &owned);
    let mut direct = String::new();
    collector
        .encode_into(Format::Text, &mut direct)
        .expect("encode_into");
    assert!(
        direct == text,
        "Collector::encode_into and collect + encode differ"
    );
    let ours = measure(budget, || {
        let mut out = String::new();
        collector
            .encode_into(Format::Text, &mut out)
            .expect("encode_into");
        black_box(out.len());
    });
    report("ours: Collector::encode_into(Text)", &ours);
    let (entries, phases) = phases(&paths, budget);
    for (what, s) in &phases {
        report(&format!("  {what}"), s);
    }

    // (c) Ours, as a process.
    let dump = bin.clone().and_then(|bin| {
        let run = || {
            let status = Command::new(&bin)
                .args(["dump", "--dir"])
                .arg(&dir)
                .stdout(Stdio::null())
                .status();
            match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("{} dump: {s}", bin.display())),
                Err(e) => Err(format!("cannot run {}: {e}", bin.display())),
            }
        };
        run()?;
        Ok(measure(budget, || run().expect("prom-multiproc dump")))
    });
    match &dump {
        Ok(s) => report("ours: prom-multiproc dump (process)", s),
        Err(e) => println!("{:<58} SKIPPED: {e}", "ours: prom-multiproc dump (process)"),
    }

    // (d) Python, in-process, and whether it says the same.
    let results = env.target.join("bench-results");
    fs::create_dir_all(&results).expect("create target/bench-results");
    let py_out = results.join(format!("python-{}.txt", mode.as_str()));
    let python = run_python(env, &dir, &py_out);
    let same_output = match &python {
        Ok(p) => {
            report("Python: generate_latest", &p.stats);
            let same = compare_outputs(&text, &py_out);
            match &same {
                Ok(n) => println!(
                    "output: same {n} lines as Python's (ours sorted, plus our bad-files gauge)"
                ),
                Err(e) => println!("output: DIFFERS from Python's: {e}"),
            }
            let _ = fs::remove_file(&py_out);
            Some(same)
        }
        Err(e) => {
            println!("{:<58} SKIPPED: {e}", "Python: generate_latest");
            None
        }
    };

    ModeResult {
        mode,
        files,
        series,
        file_bytes,
        writer,
        output_bytes: text.len(),
        output_samples,
        read_seq,
        read_used,
        read_par,
        collect,
        encode: encode_stats,
        owned,
        ours,
        dump,
        python,
        same_output,
        entries,
        phases,
    }
}

/// Pieces of a scrape timed one by one on bytes already read, with public functions: walking
/// the entries, hashing every key, decoding the distinct keys, the whole merge (`merge_files`,
/// which builds owned families), freeing its result. The collector's own stages are in its
/// `debug` log. Also the number of entries.
fn phases(paths: &[PathBuf], budget: Duration) -> (usize, Vec<(String, Stats)>) {
    let budget = budget / 2;
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let bytes: Vec<Vec<u8>> = paths
        .par_iter()
        .map(|p| fs::read(p).expect("read"))
        .collect();
    let mut out = Vec::new();
    type Entry<'a> = (&'a [u8], f64, f64);
    let parse = || -> Vec<Vec<Entry>> {
        bytes
            .par_iter()
            .map(|b| {
                layout::entries(b)
                    .expect("layout")
                    .map(|e| e.map(|e| (e.key, e.value, e.timestamp)).expect("entry"))
                    .collect()
            })
            .collect()
    };
    out.push((
        "layout: walk every file's entries (all threads)".to_owned(),
        measure(budget, || {
            black_box(parse());
        }),
    ));
    let entries = parse();
    let total = entries.iter().map(Vec::len).sum();
    let number = || {
        let mut ids: FxHashMap<&[u8], u32> = FxHashMap::default();
        let mut distinct: Vec<&[u8]> = Vec::new();
        let numbered: Vec<Vec<u32>> = entries
            .iter()
            .map(|file| {
                file.iter()
                    .map(|(key, _, _)| {
                        let next = distinct.len() as u32;
                        *ids.entry(key).or_insert_with(|| {
                            distinct.push(key);
                            next
                        })
                    })
                    .collect()
            })
            .collect();
        (distinct, numbered)
    };
    out.push((
        format!("number the {total} entries, hashing every key (1 thread)"),
        measure(budget, || {
            black_box(number());
        }),
    ));
    let (distinct, _) = number();
    out.push((
        format!(
            "decode_key_into the {} distinct keys, one reused key (1 thread)",
            distinct.len()
        ),
        measure(budget, || {
            let mut key = KeyRef::default();
            for k in &distinct {
                decode_key_into(k, &mut key).expect("key");
                black_box(&key);
            }
        }),
    ));
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&bytes)
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    out.push((
        "merge_files: the whole merge, without I/O".to_owned(),
        measure(budget, || {
            black_box(merge_files(&files));
        }),
    ));
    let (families, _) = merge_files(&files);
    let times = (0..5)
        .map(|_| {
            let copy: Vec<MetricFamily> = families.clone();
            let start = Instant::now();
            drop(black_box(copy));
            start.elapsed()
        })
        .collect();
    out.push((
        "drop the merged families (a scrape's last step)".to_owned(),
        Stats::from_times(times),
    ));
    (total, out)
}

/// What Python's reader and the collector read of a file: the first page, then the rest of the
/// bytes in use (the rest of the file is zeros waiting for entries).
fn read_in_use(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut file = fs::File::open(path).expect("open");
    let mut bytes = Vec::with_capacity(4096);
    (&mut file)
        .take(4096)
        .read_to_end(&mut bytes)
        .expect("read");
    let used = bytes
        .get(..4)
        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let rest = usize::try_from(used)
        .unwrap_or(0)
        .saturating_sub(bytes.len());
    bytes.reserve(rest);
    file.take(rest as u64)
        .read_to_end(&mut bytes)
        .expect("read");
    bytes
}

fn report(what: &str, s: &Stats) {
    println!(
        "{what:<58} min {:>9} ms   median {:>9} ms   ({} runs)",
        ms(s.min),
        ms(s.median),
        s.runs
    );
}

fn run_python(env: &Env, dir: &Path, out: &Path) -> Result<Python, String> {
    let python = env.python.as_ref().map_err(Clone::clone)?;
    let iterations = std::env::var("SCRAPE_BENCH_PY_ITER")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let output = Command::new(python)
        .arg(env.script("scrape.py"))
        .arg(dir)
        .arg(iterations.to_string())
        .arg("--out")
        .arg(out)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "scrape.py failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let json = String::from_utf8_lossy(&output.stdout);
    let num = |field: &str| -> Result<f64, String> {
        json_field(&json, field)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {field} in scrape.py output: {json}"))
    };
    Ok(Python {
        stats: Stats::from_secs(num("min_s")?, num("median_s")?, iterations),
        bytes: num("bytes")? as usize,
        version: format!(
            "{} / prometheus_client {}",
            json_field(&json, "python").unwrap_or("?"),
            json_field(&json, "prometheus_client").unwrap_or("?")
        ),
    })
}

/// The raw value of a top-level field of the flat JSON object scrape.py prints.
fn json_field<'a>(json: &'a str, field: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{field}\":"))? + field.len() + 3;
    let rest = json[at..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return s.split('"').next();
    }
    rest.split([',', '}']).next().map(str::trim)
}

/// Whether our output and Python's hold the same lines, in any order (Python's order is that
/// of its dicts, ours is sorted); our own bad-files gauge is left out. The number of lines.
fn compare_outputs(ours: &str, python_file: &Path) -> Result<usize, String> {
    let python = fs::read_to_string(python_file).map_err(|e| e.to_string())?;
    let mut a: Vec<&str> = ours
        .lines()
        .filter(|l| !l.contains("prometheus_multiproc_bad_files"))
        .collect();
    let mut b: Vec<&str> = python.lines().collect();
    a.par_sort_unstable();
    b.par_sort_unstable();
    if a == b {
        return Ok(a.len());
    }
    let only_ours = a.iter().find(|l| b.binary_search(l).is_err());
    let only_python = b.iter().find(|l| a.binary_search(l).is_err());
    Err(format!(
        "{} lines against {}; only ours: {:?}; only Python's: {:?}",
        a.len(),
        b.len(),
        only_ours,
        only_python
    ))
}

// ------------------------------------------------------------------ reports

struct Machine {
    cpus: usize,
    model: String,
    memory: String,
    kernel: String,
    rustc: String,
    load_at_start: String,
}

/// The 1-minute load average: other work on the machine shows here.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Machine {
    fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(format!("{:.1} GiB", kib / (1 << 20) as f64))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let rustc = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .arg("-V")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            model,
            memory,
            kernel,
            rustc,
            load_at_start: load_average(),
        }
    }
}

fn goal(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

fn markdown(machine: &Machine, results: &[ModeResult], quick: bool) -> String {
    let mut md = String::new();
    let threads = rayon::current_num_threads();
    let _ = writeln!(md, "<!-- written by `cargo bench --bench scrape` -->");
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}), {} memory, Linux {}, {}. Load average (1 min) {} at the start, {} at the end.{}\n",
        machine.cpus,
        machine.model,
        machine.memory,
        machine.kernel,
        machine.rustc,
        machine.load_at_start,
        load_average(),
        if quick {
            " Quick run (`SCRAPE_BENCH_QUICK=1`)."
        } else {
            ""
        }
    );
    for r in results {
        let _ = writeln!(
            md,
            "### {}: {} files x {} series\n",
            r.mode.describe(),
            r.files,
            r.series
        );
        let python_line = match &r.python {
            Ok(p) => format!("Python {}: {} bytes of output", p.version, p.bytes),
            Err(e) => format!("Python: SKIPPED ({e})"),
        };
        let same = match &r.same_output {
            Some(Ok(n)) => format!("the same {n} lines as Python's"),
            Some(Err(e)) => format!("**different from Python's**: {e}"),
            None => "not compared with Python's".to_owned(),
        };
        let _ = writeln!(
            md,
            "{:.0} MiB of files (written by the {} writer); {} samples out, {} bytes of text, {same}. {python_line}.\n",
            r.file_bytes as f64 / (1 << 20) as f64,
            r.writer,
            r.output_samples,
            r.output_bytes,
        );
        let _ = writeln!(
            md,
            "| what | min ms | median ms | runs | median / read, 1 thread |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        let base = r.read_seq.median;
        let row = |md: &mut String, what: &str, s: &Stats| {
            let _ = writeln!(
                md,
                "| {what} | {} | {} | {} | {} |",
                ms(s.min),
                ms(s.median),
                s.runs,
                fmt_ratio(ratio(s.median, base))
            );
        };
        row(
            &mut md,
            "read every file (`std::fs::read`), 1 thread",
            &r.read_seq,
        );
        row(
            &mut md,
            "read the bytes in use (first page, then up to `used`), 1 thread",
            &r.read_used,
        );
        row(
            &mut md,
            &format!("read every file (`std::fs::read`), {threads} threads"),
            &r.read_par,
        );
        row(
            &mut md,
            "ours: `Collector::collect` (owned families)",
            &r.collect,
        );
        row(&mut md, "ours: `encode(Text)` of those families", &r.encode);
        row(&mut md, "ours: collect + encode", &r.owned);
        row(
            &mut md,
            "**ours: `Collector::encode_into(Text)`, in-process**",
            &r.ours,
        );
        match &r.dump {
            Ok(s) => row(
                &mut md,
                "**ours: `prom-multiproc dump` > /dev/null, a process**",
                s,
            ),
            Err(e) => {
                let _ = writeln!(md, "| ours: `prom-multiproc dump` | SKIPPED: {e} | | | |");
            }
        }
        match &r.python {
            Ok(p) => row(
                &mut md,
                "**Python: `generate_latest`, in-process**",
                &p.stats,
            ),
            Err(_) => {
                let _ = writeln!(md, "| Python: `generate_latest` | SKIPPED | | | |");
            }
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "Pieces of a scrape timed one by one, files already read, with public functions ({} entries):\n",
            r.entries
        );
        let _ = writeln!(md, "| step | median ms | ns per entry |");
        let _ = writeln!(md, "|---|---:|---:|");
        for (what, s) in &r.phases {
            let _ = writeln!(
                md,
                "| {what} | {} | {:.0} |",
                ms(s.median),
                s.median.as_secs_f64() * 1e9 / r.entries as f64
            );
        }
        let _ = writeln!(
            md,
            "| `encode(Text)` | {} | {:.0} |\n",
            ms(r.encode.median),
            r.encode.median.as_secs_f64() * 1e9 / r.entries as f64
        );
    }

    let _ = writeln!(md, "### Ratios\n");
    let _ = writeln!(
        md,
        "Of medians, and of minimums (the run least disturbed by other work on the machine).\n"
    );
    let _ = writeln!(
        md,
        "| mode | of | Python / `dump` (goal ≥ 50x) | Python / in-process | `dump` / read, 1 thread (goal ≤ 3x) | in-process / read, 1 thread | in-process / read, {threads} threads |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for r in results {
        let cell = |x: Option<f64>, met: Option<bool>| match (x, met) {
            (Some(x), Some(m)) => format!("{} ({})", fmt_ratio(x), goal(m)),
            (Some(x), None) => fmt_ratio(x),
            (None, _) => "SKIPPED".to_owned(),
        };
        for (of, pick) in [
            ("medians", (|s: &Stats| s.median) as fn(&Stats) -> Duration),
            ("minimums", |s: &Stats| s.min),
        ] {
            let py = r.python.as_ref().ok().map(|p| pick(&p.stats));
            let dump = r.dump.as_ref().ok().map(pick);
            let (ours, read_seq, read_par) = (pick(&r.ours), pick(&r.read_seq), pick(&r.read_par));
            let py_dump = py.zip(dump).map(|(p, d)| ratio(p, d));
            let py_ours = py.map(|p| ratio(p, ours));
            let dump_read = dump.map(|d| ratio(d, read_seq));
            let _ = writeln!(
                md,
                "| {} | {of} | {} | {} | {} | {} | {} |",
                r.mode.describe(),
                cell(py_dump, py_dump.map(|x| x >= 50.0)),
                cell(py_ours, None),
                cell(dump_read, dump_read.map(|x| x <= 3.0)),
                fmt_ratio(ratio(ours, read_seq)),
                fmt_ratio(ratio(ours, read_par)),
            );
        }
    }
    md
}

/// A labelled bar: a median, or none when skipped.
type Bar = (String, Option<Duration>);

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration for the chart: `79.3 ms`, `4.48 s`.
fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{} ms", ms(d))
    }
}

/// A bar chart of median time per scrape, one panel per mode, on a log scale, with the two
/// goals as dashed lines.
fn svg(results: &[ModeResult]) -> String {
    let threads = rayon::current_num_threads();
    let colors = ["#9aa5b1", "#c3cbd3", "#2b8a3e", "#5c940d", "#c92a2a"];
    let (read_goal_color, python_goal_color) = ("#1c7ed6", "#e8590c");
    struct Panel {
        title: String,
        bars: Vec<Bar>,
        goals: Vec<(String, &'static str, f64)>,
    }
    let panels: Vec<Panel> = results
        .iter()
        .map(|r| {
            let python = r.python.as_ref().ok().map(|p| p.stats.median);
            let mut goals = vec![(
                "goal for ours: ≤ 3 × read, 1 thread".to_owned(),
                read_goal_color,
                3.0 * r.read_seq.median.as_secs_f64() * 1e3,
            )];
            if let Some(p) = python {
                goals.push((
                    "goal for ours: ≥ 50x faster than Python".to_owned(),
                    python_goal_color,
                    p.as_secs_f64() * 1e3 / 50.0,
                ));
            }
            Panel {
                title: format!(
                    "{}: {} files x {} series",
                    r.mode.describe(),
                    r.files,
                    thousands(r.series)
                ),
                bars: vec![
                    ("read files, 1 thread".to_owned(), Some(r.read_seq.median)),
                    (
                        format!("read files, {threads} threads"),
                        Some(r.read_par.median),
                    ),
                    ("ours, in-process".to_owned(), Some(r.ours.median)),
                    (
                        "ours, prom-multiproc dump".to_owned(),
                        r.dump.as_ref().ok().map(|s| s.median),
                    ),
                    ("Python generate_latest".to_owned(), python),
                ],
                goals,
            }
        })
        .collect();
    let all_ms: Vec<f64> = panels
        .iter()
        .flat_map(|p| {
            p.bars
                .iter()
                .filter_map(|(_, d)| d.map(|d| d.as_secs_f64() * 1e3))
                .chain(p.goals.iter().map(|g| g.2))
        })
        .collect();
    // From the decade below the shortest bar (one more when that bar would be a stub) to a
    // little past the longest, so the value labels fit.
    let shortest = all_ms.iter().cloned().fold(f64::INFINITY, f64::min).log10();
    let mut lo = shortest.floor();
    if shortest - lo < 0.3 {
        lo -= 1.0;
    }
    let hi = (all_ms
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .log10()
        + 0.3)
        .max(lo + 1.0);
    let (left, plot_w, bar_h, gap) = (200.0, 560.0, 22.0, 8.0);
    let width = left + plot_w + 100.0;
    let panel_h = 26.0 + 5.0 * (bar_h + gap) + 62.0;
    let height = 40.0 + panel_h * panels.len() as f64;
    let x = |v: f64| left + (v.log10() - lo) / (hi - lo) * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" font-weight="bold" text-anchor="middle">Time per scrape, median (log scale; shorter is faster)</text>"#,
        width / 2.0
    );
    for (p, panel) in panels.iter().enumerate() {
        let top = 40.0 + p as f64 * panel_h;
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
            top + 16.0,
            panel.title
        );
        let plot_top = top + 26.0;
        let plot_bottom = plot_top + 5.0 * (bar_h + gap);
        let mut decade = lo;
        while decade <= hi {
            let v = 10f64.powf(decade);
            let gx = x(v);
            let label = if v >= 1000.0 {
                format!("{} s", v / 1000.0)
            } else {
                format!("{v} ms")
            };
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{plot_top}" x2="{gx:.1}" y2="{plot_bottom}" stroke="#dddddd"/><text x="{gx:.1}" y="{}" text-anchor="middle" fill="#555555">{label}</text>"##,
                plot_bottom + 14.0
            );
            decade += 1.0;
        }
        for (g, (label, color, v)) in panel.goals.iter().enumerate() {
            let gx = x(*v);
            let _ = writeln!(
                s,
                r#"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{plot_bottom}" stroke="{color}" stroke-width="2" stroke-dasharray="6,4"/>"#,
                plot_top - 2.0
            );
            let ly = plot_bottom + 32.0 + g as f64 * 16.0;
            let _ = writeln!(
                s,
                r#"<line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="6,4"/><text x="{}" y="{ly:.1}" fill="{color}">{label}: {}</text>"#,
                ly - 4.0,
                left + 24.0,
                ly - 4.0,
                left + 30.0,
                human(Duration::from_secs_f64(v / 1e3))
            );
        }
        for (i, (label, d)) in panel.bars.iter().enumerate() {
            let y = plot_top + i as f64 * (bar_h + gap) + gap / 2.0;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
                left - 8.0,
                y + bar_h * 0.7
            );
            match d {
                Some(d) => {
                    let w = (x(d.as_secs_f64() * 1e3) - left).max(1.0);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{left}" y="{y:.1}" width="{w:.1}" height="{bar_h}" fill="{}"/><text x="{:.1}" y="{:.1}" paint-order="stroke" stroke="white" stroke-width="4">{}</text>"#,
                        colors[i],
                        left + w + 6.0,
                        y + bar_h * 0.7,
                        human(*d)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{}" y="{:.1}" fill="#888888">skipped</text>"##,
                        left + 6.0,
                        y + bar_h * 0.7
                    );
                }
            }
        }
    }
    let _ = writeln!(s, "</svg>");
    s
}

// ------------------------------------------------------------------ main

fn main() {
    // Criterion-style arguments (`--bench`, filters) are accepted; only `--bench` matters.
    let benching = std::env::args().any(|a| a == "--bench");
    let env = Env::find();
    if !benching {
        smoke(&env);
        return;
    }
    let quick = std::env::var("SCRAPE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let (files, series) = if quick { (8, 2_000) } else { (64, 10_000) };
    let machine = Machine::probe();
    println!(
        "scrape benchmark: {files} files x {series} series; {} CPUs ({}), {}",
        machine.cpus, machine.model, machine.memory
    );
    if let Err(why) = &env.python {
        println!("Python: SKIPPED ({why})");
    }
    let bin = cli_binary(&env);
    let results: Vec<ModeResult> = MODES
        .iter()
        .map(|&mode| run_mode(&env, &bin, mode, files, series, quick))
        .collect();
    let md = markdown(&machine, &results, quick);
    let out = env.target.join("bench-results");
    fs::create_dir_all(&out).expect("create target/bench-results");
    fs::write(out.join("scrape.md"), &md).expect("write scrape.md");
    fs::write(out.join("scrape.svg"), svg(&results)).expect("write scrape.svg");
    println!("\n{md}");
    println!(
        "written: {} and {}",
        out.join("scrape.md").display(),
        out.join("scrape.svg").display()
    );
}

/// Without `--bench`: a check on a tiny directory that the generators and the merge work.
fn smoke(env: &Env) {
    let base = env.target.join("bench-data/smoke");
    let _ = fs::remove_dir_all(&base);
    for mode in MODES {
        let (files, series) = (3, 40);
        let rust = base.join(format!("{}-rust", mode.as_str()));
        write_dir_rust(&rust, mode, files, series).expect("write the smoke directory");
        let scrape = Collector::new(&rust).collect().expect("collect");
        assert!(scrape.bad_files.is_empty(), "{:?}", scrape.bad_files);
        assert_eq!(scrape.files_read, files);
        let samples: usize = scrape
            .families
            .iter()
            .filter(|f| f.name != "prometheus_multiproc_bad_files")
            .map(|f| f.samples.len())
            .sum();
        let expect = match mode {
            Mode::Same => series,
            Mode::Distinct => files * series,
        };
        assert_eq!(samples, expect, "{} mode", mode.as_str());
        assert!(!encode(&scrape.families, Format::Text).is_empty());
        if env.python.is_ok() {
            let python = base.join(format!("{}-python", mode.as_str()));
            env.write_dir_python(&python, mode, files, series)
                .unwrap_or_else(|e| panic!("{e}"));
            for f in 1..=files {
                let name = format!("counter_{f}.db");
                assert!(
                    fs::read(rust.join(&name)).ok() == fs::read(python.join(&name)).ok(),
                    "{name} ({} mode): the Rust generator no longer writes make_dir.py's bytes",
                    mode.as_str()
                );
            }
        }
    }
    let _ = fs::remove_dir_all(&base);
    match &env.python {
        Ok(_) => println!("scrape bench smoke check: ok (Rust and Python generators agree)"),
        Err(why) => {
            println!("scrape bench smoke check: ok; SKIPPED the generator comparison: {why}")
        }
    }
    println!("run the benchmark with: cargo bench --bench scrape");
}
