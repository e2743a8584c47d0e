//! Helpers shared by the integration tests: locating the Python oracle
//! (prometheus_client 0.26.0) and promtool, running the scripts under
//! `tests/python/`, and comparing scraped samples.
//!
//! Tools that are missing make a test skip (with a `SKIPPED:` line on
//! stderr), except when `CI` is set, where they make it fail:
//!
//! ```ignore
//! mod common;
//!
//! #[test]
//! fn python_reads_our_files() {
//!     let Some(py) = common::python() else { return };
//!     // ...
//! }
//! ```
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The prometheus_client version the oracle must be.
pub const PROMETHEUS_CLIENT_VERSION: &str = "0.26.0";

/// Env var naming the Python interpreter to use (set by `scripts/test`).
pub const PYTHON_ENV: &str = "PROMETHEUS_MULTIPROC_PYTHON";

// ---------------------------------------------------------------- locating tools

/// The repository root: the first ancestor of this package's manifest
/// directory that holds `tests/python/scenario.py` (so that crates of the
/// workspace can share this module too).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("tests/python/scenario.py").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(manifest)
}

/// Path of `tests/python/<name>`.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("tests/python").join(name)
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Applies the skip/fail policy to a tool lookup.
fn require(found: &Result<PathBuf, String>, what: &str) -> Option<PathBuf> {
    match found {
        Ok(path) => Some(path.clone()),
        Err(reason) => {
            if in_ci() {
                panic!("CI is set but no {what} found ({reason}); run scripts/test");
            }
            eprintln!("SKIPPED: {reason} (run scripts/test to install it)");
            None
        }
    }
}

/// Asks `py` which prometheus_client it has.
fn prometheus_client_version(py: &Path) -> Result<String, String> {
    let out = Command::new(py)
        .args([
            "-c",
            "import importlib.metadata as m, prometheus_client.multiprocess; \
             print(m.version('prometheus_client'))",
        ])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} cannot import prometheus_client: {}",
            py.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn find_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(PYTHON_ENV).filter(|v| !v.is_empty()) {
        // Named explicitly: anything wrong with it is an error, not a skip.
        let py = PathBuf::from(p);
        match prometheus_client_version(&py) {
            Ok(v) if v == PROMETHEUS_CLIENT_VERSION => return Ok(py),
            Ok(v) => panic!(
                "{PYTHON_ENV}={} has prometheus-client {v}, need {PROMETHEUS_CLIENT_VERSION}",
                py.display()
            ),
            Err(e) => panic!("{PYTHON_ENV} is set but unusable: {e}"),
        }
    }
    let root = repo_root();
    let candidates = [
        root.join(".venv/bin/python"),
        root.join(".venv/Scripts/python.exe"),
    ];
    let Some(py) = candidates.into_iter().find(|p| p.is_file()) else {
        return Err(format!(
            "no Python with prometheus-client {PROMETHEUS_CLIENT_VERSION}: \
             {PYTHON_ENV} is unset and {} does not exist",
            root.join(".venv/bin/python").display()
        ));
    };
    match prometheus_client_version(&py)? {
        v if v == PROMETHEUS_CLIENT_VERSION => Ok(py),
        v => Err(format!(
            "{} has prometheus-client {v}, need {PROMETHEUS_CLIENT_VERSION}",
            py.display()
        )),
    }
}

/// The Python interpreter with prometheus_client 0.26.0: `$PROMETHEUS_MULTIPROC_PYTHON`,
/// else `<repo>/.venv/bin/python`. `None` (after printing `SKIPPED: ...`) when
/// there is none; panics instead when `CI` is set.
pub fn python() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    require(
        FOUND.get_or_init(find_python),
        "Python with prometheus-client 0.26.0",
    )
}

/// Finds an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

fn find_on_path(names: &[&str]) -> Result<PathBuf, String> {
    names
        .iter()
        .find_map(|n| which(n))
        .ok_or_else(|| format!("{} not found on PATH", names.join(" / ")))
}

/// `promtool` from `PATH`, with the same skip/fail policy as [`python`].
pub fn promtool() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    require(
        FOUND.get_or_init(|| find_on_path(&["promtool"])),
        "promtool",
    )
}

/// The Pushgateway binary from `PATH` (`prometheus-pushgateway` as Debian
/// names it, or `pushgateway`), with the same skip/fail policy as [`python`].
pub fn pushgateway() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    require(
        FOUND.get_or_init(|| find_on_path(&["prometheus-pushgateway", "pushgateway"])),
        "pushgateway",
    )
}

// ---------------------------------------------------------------- running scripts

/// Runs `tests/python/<script>` with `py`, feeding `stdin` if given.
/// Returns the output whatever the exit status.
pub fn try_run_python(py: &Path, script_name: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(py);
    cmd.arg(script(script_name))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUTF8", "1")
        // The scripts set it themselves where it matters; never inherit one.
        .env_remove("PROMETHEUS_MULTIPROC_DIR")
        .env_remove("prometheus_multiproc_dir");
    run_command(cmd, stdin)
}

/// Like [`try_run_python`], but panics (showing stderr) unless it exits 0.
pub fn run_python(py: &Path, script_name: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let out = try_run_python(py, script_name, args, stdin);
    if !out.status.success() {
        panic!(
            "python {script_name} {args:?} failed ({})\n--- stderr ---\n{}\n--- stdout (first 4000 bytes) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(4000)]),
        );
    }
    out
}

/// Runs a command to completion, writing `stdin` from a separate thread so
/// that large inputs and outputs cannot deadlock.
pub fn run_command(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let program = cmd.get_program().to_os_string();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", Path::new(&program).display()));
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let data = data.to_vec();
        std::thread::spawn(move || {
            // A child that exits early closes the pipe: not our error to report.
            let _ = pipe.write_all(&data);
        })
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {}: {e}", Path::new(&program).display()));
    if let Some(w) = writer {
        w.join().expect("stdin writer thread panicked");
    }
    out
}

/// Runs `scenario.py DIR <scenario>` (the scenario JSON as text) and returns
/// the worker pids in order.
pub fn run_scenario(py: &Path, dir: &Path, scenario_json: &str) -> Vec<u32> {
    let file = scenario_file(scenario_json);
    let out = run_python(
        py,
        "scenario.py",
        &[path_str(dir), path_str(file.path())],
        None,
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "scenario.py printed no pid list ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn scenario_file(scenario_json: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .prefix("scenario-")
        .suffix(".json")
        .tempfile()
        .expect("create scenario file");
    file.write_all(scenario_json.as_bytes())
        .expect("write scenario file");
    file.flush().expect("flush scenario file");
    file
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("path is not UTF-8: {}", p.display()))
}

/// Python's scrape of `dir` (`collect.py DIR`), decoded.
pub fn python_collect(py: &Path, dir: &Path) -> Vec<PyFamily> {
    let out = run_python(py, "collect.py", &[path_str(dir)], None);
    parse_families_json(&out.stdout)
}

/// Python's text exposition of `dir` (`collect.py DIR --text`).
pub fn python_collect_text(py: &Path, dir: &Path) -> Vec<u8> {
    run_python(py, "collect.py", &[path_str(dir), "--text"], None).stdout
}

/// Python's parse of an exposition; `format` is `"text"` or `"openmetrics"`.
/// Panics (showing Python's error) if Python rejects it.
pub fn python_parse(py: &Path, format: &str, exposition: &[u8]) -> Vec<PyFamily> {
    let out = run_python(py, "parse.py", &[format], Some(exposition));
    parse_families_json(&out.stdout)
}

/// The key Python's `mmap_key` builds, from `json_keys.py` (one call; for
/// many keys, feed `json_keys.py` many lines at once).
pub fn python_key(
    py: &Path,
    metric: &str,
    sample: &str,
    labels: &[(&str, &str)],
    help: &str,
) -> Vec<u8> {
    let line = json_keys_request(metric, sample, labels, help);
    let out = run_python(
        py,
        "json_keys.py",
        &[],
        Some(format!("{line}\n").as_bytes()),
    );
    let text = String::from_utf8(out.stdout).expect("json_keys.py prints ASCII");
    unhex(text.trim()).expect("json_keys.py prints hex")
}

/// One input line for `json_keys.py`.
pub fn json_keys_request(
    metric: &str,
    sample: &str,
    labels: &[(&str, &str)],
    help: &str,
) -> String {
    let labels: Vec<serde_json::Value> = labels
        .iter()
        .map(|(k, v)| serde_json::json!([hex(k.as_bytes()), hex(v.as_bytes())]))
        .collect();
    serde_json::json!({
        "metric": hex(metric.as_bytes()),
        "sample": hex(sample.as_bytes()),
        "labels": labels,
        "help": hex(help.as_bytes()),
    })
    .to_string()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Decodes hex (either case); `None` if malformed.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// ---------------------------------------------------------------- families

/// One sample as printed by `collect.py` / `parse.py`.
#[derive(Debug, Clone, PartialEq)]
pub struct PySample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family as printed by `collect.py` / `parse.py`.
#[derive(Debug, Clone, PartialEq)]
pub struct PyFamily {
    pub name: String,
    pub typ: String,
    pub help: String,
    pub samples: Vec<PySample>,
}

/// Our families in the shape `collect.py` prints, for a direct comparison with Python's.
pub fn py_families(families: &[prometheus_multiproc::collector::MetricFamily]) -> Vec<PyFamily> {
    families
        .iter()
        .map(|f| PyFamily {
            name: f.name.clone(),
            typ: f.kind.as_str().to_owned(),
            help: f.help.clone(),
            samples: f
                .samples
                .iter()
                .map(|s| PySample {
                    name: s.name.clone(),
                    labels: s.labels.iter().cloned().collect(),
                    value: s.value,
                })
                .collect(),
        })
        .collect()
}

/// Our own families' name prefix, left out of every comparison with Python.
pub const OURS_ONLY: &str = "prometheus_multiproc_";

/// Python's ten gauge modes, as its `multiprocess_mode` argument names them.
pub const GAUGE_MODES: [&str; 10] = [
    "all",
    "liveall",
    "min",
    "livemin",
    "max",
    "livemax",
    "sum",
    "livesum",
    "mostrecent",
    "livemostrecent",
];

/// Decodes the JSON printed by `collect.py` and `parse.py`.
pub fn parse_families_json(json: &[u8]) -> Vec<PyFamily> {
    let root: serde_json::Value = serde_json::from_slice(json).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&json[..json.len().min(2000)])
        )
    });
    let str_field = |v: &serde_json::Value, key: &str| -> String {
        v.get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_else(|| panic!("field {key:?} missing or not a string in {v}"))
            .to_string()
    };
    root.as_array()
        .unwrap_or_else(|| panic!("expected a JSON list, got {root}"))
        .iter()
        .map(|fam| PyFamily {
            name: str_field(fam, "name"),
            typ: str_field(fam, "type"),
            help: str_field(fam, "help"),
            samples: fam
                .get("samples")
                .and_then(serde_json::Value::as_array)
                .unwrap_or_else(|| panic!("no samples list in {fam}"))
                .iter()
                .map(|s| PySample {
                    name: str_field(s, "name"),
                    labels: s
                        .get("labels")
                        .and_then(serde_json::Value::as_object)
                        .unwrap_or_else(|| panic!("no labels object in {s}"))
                        .iter()
                        .map(|(k, v)| {
                            let v = v
                                .as_str()
                                .unwrap_or_else(|| panic!("label value not a string in {s}"));
                            (k.clone(), v.to_string())
                        })
                        .collect(),
                    value: {
                        let text = str_field(s, "value");
                        parse_float_hex(&text)
                            .unwrap_or_else(|| panic!("bad float.hex value {text:?}"))
                    },
                })
                .collect(),
        })
        .collect()
}

/// The value of the sample `name` with exactly these labels, if present.
pub fn sample_value(families: &[PyFamily], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// Parses Python's `float.hex()` output (`0x1.8000000000000p+0`,
/// `-0x0.0p+0`, `0x0.0000000000001p-1022`) and `nan`, `inf`, `-inf`.
/// Also accepts `0x1p+3`-style short forms. `None` if malformed or if the
/// value would need rounding (more than 64 significant bits).
pub fn parse_float_hex(s: &str) -> Option<f64> {
    let (negative, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = match body.to_ascii_lowercase().as_str() {
        "nan" => f64::NAN,
        "inf" | "infinity" => f64::INFINITY,
        lower => {
            let rest = lower.strip_prefix("0x")?;
            let (digits, exp) = match rest.split_once('p') {
                Some((d, e)) => (d, parse_exponent(e)?),
                None => (rest, 0),
            };
            let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
            if int_part.is_empty() && frac_part.is_empty() {
                return None;
            }
            let mut mantissa: u64 = 0;
            for c in int_part.chars().chain(frac_part.chars()) {
                let d = u64::from(c.to_digit(16)?);
                if mantissa >> 60 != 0 {
                    return None;
                }
                mantissa = mantissa << 4 | d;
            }
            let frac_bits = 4 * i64::try_from(frac_part.len()).ok()?;
            ldexp_exact(mantissa, exp.checked_sub(frac_bits)?)?
        }
    };
    Some(if negative { -magnitude } else { magnitude })
}

fn parse_exponent(e: &str) -> Option<i64> {
    let digits = e.strip_prefix('+').unwrap_or(e);
    let (neg, digits) = match digits.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, digits),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Clamp absurd exponents (such values are rejected as out of range anyway).
    let v: i64 = digits.parse().unwrap_or(i64::from(i32::MAX));
    let v = v.min(100_000);
    Some(if neg { -v } else { v })
}

/// `mantissa * 2^exp`, or `None` when that needs rounding.
fn ldexp_exact(mantissa: u64, exp: i64) -> Option<f64> {
    if mantissa == 0 {
        return Some(0.0);
    }
    // Normalise to an odd mantissa so exactness is easy to check.
    let shift = mantissa.trailing_zeros();
    let m = mantissa >> shift;
    let e = exp + i64::from(shift);
    if 64 - m.leading_zeros() > 53 {
        return None;
    }
    let top = e + i64::from(63 - m.leading_zeros()); // exponent of the leading bit
    if top > 1023 {
        return None; // overflow
    }
    if e < -1074 {
        return None; // below the smallest subnormal: would need rounding
    }
    // m < 2^53 is exact as f64; scale by powers of two in safe steps.
    let mut v = m as f64;
    let mut e = e;
    while e > 0 {
        let step = e.min(1000);
        v *= pow2(step);
        e -= step;
    }
    while e < 0 {
        let step = e.max(-1000);
        v *= pow2(step);
        e -= step;
    }
    Some(v)
}

/// 2^e for -1022 <= e <= 1023.
fn pow2(e: i64) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// Python's `float.hex()` of `v` (`nan`, `inf`, `-inf` for the non-finite),
/// e.g. to pass exact values to `scenario.py`.
pub fn float_hex(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let bits = v.to_bits();
    let sign = if bits >> 63 != 0 { "-" } else { "" };
    let biased = ((bits >> 52) & 0x7ff) as i64;
    let frac = bits & ((1u64 << 52) - 1);
    if biased == 0 && frac == 0 {
        return format!("{sign}0x0.0p+0");
    }
    let (lead, exp) = if biased == 0 {
        (0, -1022)
    } else {
        (1, biased - 1023)
    };
    format!("{sign}0x{lead}.{frac:013x}p{exp:+}")
}

// ---------------------------------------------------------------- comparison

fn format_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

fn format_value(v: f64) -> String {
    format!("{v:?} ({})", float_hex(v))
}

/// Whether two values match: both NaN, the same bits, or (when `max_ulps` > 0)
/// finite values of the same sign at most `max_ulps` apart. `0.0` and `-0.0`
/// differ (they print differently).
pub fn values_match(a: f64, b: f64, max_ulps: u64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.to_bits() == b.to_bits() {
        return true;
    }
    if !a.is_finite() || !b.is_finite() || a.is_sign_negative() != b.is_sign_negative() {
        return false;
    }
    // Same sign: the bit patterns are ordered like the magnitudes.
    a.to_bits().abs_diff(b.to_bits()) <= max_ulps
}

type SampleKey = (String, BTreeMap<String, String>);

struct SampleSet {
    /// (sample name, labels) -> (family name, values)
    samples: BTreeMap<SampleKey, (String, Vec<f64>)>,
    families: BTreeMap<(String, String, String), usize>,
}

fn sample_set(families: &[PyFamily], ignore_prefix: &str) -> SampleSet {
    let mut set = SampleSet {
        samples: BTreeMap::new(),
        families: BTreeMap::new(),
    };
    for fam in families {
        if !ignore_prefix.is_empty() && fam.name.starts_with(ignore_prefix) {
            continue;
        }
        *set.families
            .entry((fam.name.clone(), fam.typ.clone(), fam.help.clone()))
            .or_default() += 1;
        for s in &fam.samples {
            set.samples
                .entry((s.name.clone(), s.labels.clone()))
                .or_insert_with(|| (fam.name.clone(), Vec::new()))
                .1
                .push(s.value);
        }
    }
    for (_, values) in set.samples.values_mut() {
        values.sort_by(f64::total_cmp);
    }
    set
}

/// Compares two scrapes: families as sets of (name, type, help), samples as
/// multisets keyed by (sample name, labels), values equal bit for bit, NaN
/// equal to NaN, or at most 4 ulps apart (summation order may differ).
/// Families of `ours` whose name starts with `ignore_prefix` (if non-empty)
/// are left out. Panics with a readable diff.
pub fn assert_same_samples(ours: &[PyFamily], theirs: &[PyFamily], ignore_prefix: &str) {
    // Sums over processes are added in file order: Python's is the directory's order, ours the
    // names' order. Float addition is commutative but not associative, so with three or more
    // processes the two sums may round apart by a few ulps.
    assert_same_samples_with(ours, theirs, ignore_prefix, 4);
}

/// [`assert_same_samples`] with a chosen tolerance (`0`: bit for bit).
pub fn assert_same_samples_with(
    ours: &[PyFamily],
    theirs: &[PyFamily],
    ignore_prefix: &str,
    max_ulps: u64,
) {
    let ours_set = sample_set(ours, ignore_prefix);
    let theirs_set = sample_set(theirs, "");
    let mut diff = String::new();

    for (fam, n) in &ours_set.families {
        let m = theirs_set.families.get(fam).copied().unwrap_or(0);
        if *n != m {
            let _ = writeln!(
                diff,
                "family {} type={} help={:?}: {n} in ours, {m} in theirs",
                fam.0, fam.1, fam.2
            );
        }
    }
    for (fam, m) in &theirs_set.families {
        if !ours_set.families.contains_key(fam) {
            let _ = writeln!(
                diff,
                "family {} type={} help={:?}: 0 in ours, {m} in theirs",
                fam.0, fam.1, fam.2
            );
        }
    }

    for (key, (fam, ours_values)) in &ours_set.samples {
        let shown = format!("{}{} [family {fam}]", key.0, format_labels(&key.1));
        match theirs_set.samples.get(key) {
            None => {
                for v in ours_values {
                    let _ = writeln!(diff, "extra in ours:     {shown} = {}", format_value(*v));
                }
            }
            Some((_, theirs_values)) => {
                let same = ours_values.len() == theirs_values.len()
                    && ours_values
                        .iter()
                        .zip(theirs_values)
                        .all(|(a, b)| values_match(*a, *b, max_ulps));
                if !same {
                    let fmt = |vs: &[f64]| {
                        vs.iter()
                            .map(|v| format_value(*v))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let _ = writeln!(
                        diff,
                        "different:         {shown}: ours [{}], theirs [{}]",
                        fmt(ours_values),
                        fmt(theirs_values)
                    );
                }
            }
        }
    }
    for (key, (fam, theirs_values)) in &theirs_set.samples {
        if !ours_set.samples.contains_key(key) {
            let shown = format!("{}{} [family {fam}]", key.0, format_labels(&key.1));
            for v in theirs_values {
                let _ = writeln!(diff, "missing from ours: {shown} = {}", format_value(*v));
            }
        }
    }

    if !diff.is_empty() {
        panic!(
            "scrapes differ ({} families / {} sample keys in ours, {} / {} in theirs):\n{diff}",
            ours_set.families.len(),
            ours_set.samples.len(),
            theirs_set.families.len(),
            theirs_set.samples.len(),
        );
    }
}

// ---------------------------------------------------------------- randomized scenarios

/// SplitMix64: small, and stable across versions of anything.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Help texts that need escaping in keys and in the exposition.
pub const HELPS: [&str; 9] = [
    "",
    "Plain help.",
    "Help with \"quotes\".",
    "Back\\slash \\n literal",
    "Multi\nline",
    "Ünïcödé hélp ✓",
    "Astral 😀 𝄞",
    "Ends with a backslash \\",
    "{braces}, commas = signs",
];
