//! Compares this crate with the real Python `prometheus_client` (0.26): key encoding, float
//! formatting and whole files written by `MmapedDict`, byte for byte.
//!
//! The Python used is `$PROMETHEUS_MULTIPROC_PYTHON`, else `<workspace>/.venv/bin/python` when it
//! exists. Without one the tests print `SKIPPED: ...` and pass, unless `$CI` is set, where they
//! fail. Each test makes a single call to `tests/python_oracle.py` with all its cases.
//!
//! Random cases come from a seeded generator; the seed is printed, and
//! `PROMETHEUS_MULTIPROC_ORACLE_SEED=<seed>` replays a run.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use prometheus_multiproc_format::key::{self, Key};
use prometheus_multiproc_format::{float, layout};

const PYTHON_ENV: &str = "PROMETHEUS_MULTIPROC_PYTHON";
const SEED_ENV: &str = "PROMETHEUS_MULTIPROC_ORACLE_SEED";

// ---------------------------------------------------------------------------------------------
// Finding and calling Python.

/// The Python to compare with, or `None` (after saying so) when there is none and the tests
/// should skip. Panics on CI, where the comparison must run.
fn python_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    for venv in [".venv/bin/python", ".venv/Scripts/python.exe"] {
        let p = root.join(venv);
        if p.exists() {
            return Some(p);
        }
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!(
            "{test}: no Python to compare with: set {PYTHON_ENV} to a Python with \
             prometheus-client==0.26.0, or create {}/.venv with it (CI is set, so this test \
             does not skip)",
            root.display()
        );
    }
    eprintln!(
        "SKIPPED: {test}: no Python with prometheus_client ({PYTHON_ENV} unset and no \
         {}/.venv/bin/python)",
        root.display()
    );
    None
}

/// Runs `python_oracle.py MODE ARGS...` with `input` on stdin and returns its output lines,
/// after the version line.
fn oracle(python: &Path, mode: &str, args: &[&str], input: String) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python_oracle.py");
    let mut child = Command::new(python)
        .arg(&script)
        .arg(mode)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{} {} {mode} failed ({}); is prometheus-client==0.26.0 installed?\n{}",
        python.display(),
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("oracle output is ASCII");
    let mut lines = text.lines().map(str::to_owned);
    let version = lines.next().expect("oracle printed its version");
    if !version.starts_with("0.26.") {
        eprintln!("warning: comparing with prometheus_client {version}, not 0.26");
    }
    lines.collect()
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness and hex.

/// SplitMix64: small, seedable, good enough to draw test cases.
struct Rng(u64);

impl Rng {
    /// A generator from `$PROMETHEUS_MULTIPROC_ORACLE_SEED` or the clock, with the seed printed.
    fn seeded(test: &str) -> Rng {
        let seed = match std::env::var(SEED_ENV) {
            Ok(s) => s
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_ENV}={s} is not a u64")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("{test}: seed {seed} (replay with {SEED_ENV}={seed})");
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("bad hex: {s}")))
        .collect()
}

/// A float as the big-endian hex of its bits, as the oracle reads it.
fn bits_hex(x: f64) -> String {
    format!("{:016x}", x.to_bits())
}

// ---------------------------------------------------------------------------------------------
// (a) Keys.

const BMP: &[char] = &[
    'é', 'ß', 'ÿ', '\u{80}', '\u{a0}', '\u{ad}', 'к', 'л', 'ю', 'ч', '中', '文', 'Ω', '€',
    '\u{2028}', '\u{2029}', '\u{200b}', '\u{feff}', '\u{fffd}', '\u{ffff}', '\u{e000}', '\u{d7ff}',
    '\u{f8ff}', '\u{fdd0}',
];
const ASTRAL: &[char] = &[
    '😀',
    '🦀',
    '𝄞',
    '\u{10000}',
    '\u{10ffff}',
    '\u{1f1fa}',
    '\u{1f3fd}',
    '\u{2070e}',
    '\u{e0001}',
];
const COMBINING: &[char] = &[
    '\u{300}', '\u{301}', '\u{308}', '\u{327}', '\u{20dd}', '\u{fe0f}', '\u{200d}', '\u{36f}',
];
const SPECIAL_ASCII: &[char] = &['"', '\\', '/', '\'', '{', '}', '[', ']', ':', ',', ' '];

fn random_char(rng: &mut Rng) -> char {
    match rng.below(12) {
        0..=3 => char::from(0x20 + rng.below(0x5f) as u8),
        4 => rng.pick(SPECIAL_ASCII),
        // Every control character JSON must escape, plus DEL, which Python escapes too.
        5 => match rng.below(33) {
            32 => '\u{7f}',
            c => char::from(c as u8),
        },
        6 => rng.pick(BMP),
        7 => rng.pick(ASTRAL),
        8 => rng.pick(COMBINING),
        9 => loop {
            if let Some(c) = char::from_u32(0x80 + rng.below(0x10000 - 0x80) as u32) {
                break c;
            }
        },
        _ => loop {
            if let Some(c) = char::from_u32(rng.below(0x11_0000) as u32) {
                break c;
            }
        },
    }
}

fn random_string(rng: &mut Rng) -> String {
    let len = match rng.below(8) {
        0 => 0,
        1 => 1,
        7 => rng.below(40),
        _ => rng.below(12),
    };
    (0..len).map(|_| random_char(rng)).collect()
}

struct KeyCase {
    metric: String,
    sample: String,
    labels: Vec<(String, String)>,
    help: String,
}

fn random_key_case(rng: &mut Rng) -> KeyCase {
    let realistic = rng.chance(4);
    let metric = if realistic {
        format!("metric_{}", rng.below(1000))
    } else {
        random_string(rng)
    };
    let sample = if realistic {
        format!(
            "{metric}{}",
            rng.pick(&["", "_total", "_bucket", "_sum", "_count"])
        )
    } else {
        random_string(rng)
    };
    let mut labels: Vec<(String, String)> = Vec::new();
    for _ in 0..rng.below(6) {
        // Now and then repeat a name: the last value must win, as in a Python dict.
        let name = if !labels.is_empty() && rng.chance(4) {
            labels[rng.below(labels.len() as u64) as usize].0.clone()
        } else if rng.chance(3) {
            rng.pick(&["le", "path", "method", "a", "A", "_", "é", "😀"])
                .to_owned()
        } else {
            random_string(rng)
        };
        labels.push((name, random_string(rng)));
    }
    KeyCase {
        metric,
        sample,
        labels,
        help: random_string(rng),
    }
}

/// What decoding must give back: labels sorted, the last of a repeated name winning.
fn expected_key(c: &KeyCase) -> Key {
    let mut labels: Vec<(String, String)> = Vec::new();
    for (n, v) in &c.labels {
        match labels.iter_mut().find(|(name, _)| name == n) {
            Some(slot) => slot.1 = v.clone(),
            None => labels.push((n.clone(), v.clone())),
        }
    }
    labels.sort();
    Key {
        metric: c.metric.clone(),
        sample: c.sample.clone(),
        labels,
        help: c.help.clone(),
    }
}

/// (metric and sample, labels, help)
type FixedKey = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn key_encoding_matches_python_json_dumps_byte_for_byte() {
    const TEST: &str = "key_encoding_matches_python_json_dumps_byte_for_byte";
    let Some(python) = python_or_skip(TEST) else {
        return;
    };
    let mut rng = Rng::seeded(TEST);
    let mut cases: Vec<KeyCase> = (0..1500).map(|_| random_key_case(&mut rng)).collect();
    // Fixed cases that must always be there, whatever the seed.
    let fixed: &[FixedKey] = &[
        ("", &[], ""),
        (
            "\u{0}\u{1f}\u{7f}\u{80}",
            &[("\u{0}", "\u{0}")],
            "\"\\/\u{8}\u{c}\n\r\t",
        ),
        (
            "😀",
            &[("b", "1"), ("a", "2"), ("b", "3")],
            "e\u{301} \u{10ffff}",
        ),
        (
            "x",
            &[
                ("é", ""),
                ("z", ""),
                ("Z", ""),
                ("😀", ""),
                ("\u{ffff}", ""),
            ],
            "\u{2028}",
        ),
    ];
    for (s, labels, help) in fixed {
        cases.push(KeyCase {
            metric: s.to_string(),
            sample: s.to_string(),
            labels: labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            help: help.to_string(),
        });
    }

    let mut input = String::new();
    for c in &cases {
        let labels: Vec<String> = c
            .labels
            .iter()
            .map(|(n, v)| format!("[\"{}\", \"{}\"]", hex(n.as_bytes()), hex(v.as_bytes())))
            .collect();
        input.push_str(&format!(
            "[\"{}\", \"{}\", [{}], \"{}\"]\n",
            hex(c.metric.as_bytes()),
            hex(c.sample.as_bytes()),
            labels.join(", "),
            hex(c.help.as_bytes())
        ));
    }
    let out = oracle(&python, "keys", &[], input);
    assert_eq!(out.len(), cases.len());

    let mut failures = Vec::new();
    for (c, py_hex) in cases.iter().zip(&out) {
        let py = String::from_utf8(unhex(py_hex)).unwrap();
        let ours = key::encode_key(&c.metric, &c.sample, &c.labels, &c.help);
        if ours != py {
            failures.push(format!("encode: python {py:?}\n        ours   {ours:?}"));
            continue;
        }
        match key::decode_key(py.as_bytes()) {
            Ok(k) if k == expected_key(c) => {}
            got => failures.push(format!("decode {py:?}: {got:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} keys differ from Python (seed printed above); first ones:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// (b) Floats.

fn exact_power_of_ten(e: i32) -> f64 {
    format!("1e{e}").parse().unwrap()
}

fn float_cases(rng: &mut Rng) -> Vec<f64> {
    let mut xs = vec![
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        f64::EPSILON,
        5e-324,
        1e-4,
        1e-5,
        1e16,
        1e22,
        1e23,
        9007199254740992.0,
        9007199254740993.0,
        999999.9999999999,
        1e6,
        0.1 + 0.2,
    ];
    // The default histogram buckets, and the exponential ones people configure.
    xs.extend([
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ]);
    // Random bit patterns: every exponent, NaN payloads, subnormals.
    for _ in 0..500 {
        xs.push(f64::from_bits(rng.next_u64()));
    }
    // Around every power of ten from 1e-5 to 1e22: the exact power, its neighbours, and random
    // values with that exponent. Python and Go switch notation at some of these.
    for e in -5..=22 {
        let p = exact_power_of_ten(e);
        xs.extend([
            p,
            f64::from_bits(p.to_bits() - 1),
            f64::from_bits(p.to_bits() + 1),
        ]);
        for _ in 0..20 {
            let m = 1.0 + rng.below(1 << 20) as f64 / (1 << 20) as f64 * 9.0;
            xs.push(m * p);
            // Short decimals, as people write them.
            let short = format!("{}.{}e{e}", 1 + rng.below(9), rng.below(1000));
            xs.push(short.parse().unwrap());
        }
    }
    // Integers, small and past 2^53.
    for _ in 0..200 {
        xs.push(rng.below(1_000_000) as f64);
        xs.push((rng.next_u64() >> rng.below(64)) as f64);
    }
    // Tiny subnormals.
    for _ in 0..100 {
        xs.push(f64::from_bits(rng.below(1 << 52)));
        xs.push(f64::from_bits(rng.below(1 << 12)));
    }
    let negatives: Vec<f64> = xs.iter().map(|x| -x).collect();
    xs.extend(negatives);
    xs
}

#[test]
fn float_formatting_matches_python_repr_and_float_to_go_string() {
    const TEST: &str = "float_formatting_matches_python_repr_and_float_to_go_string";
    let Some(python) = python_or_skip(TEST) else {
        return;
    };
    let mut rng = Rng::seeded(TEST);
    let xs = float_cases(&mut rng);
    assert!(xs.len() >= 2000, "only {} floats", xs.len());
    let input: String = xs.iter().map(|x| bits_hex(*x) + "\n").collect();
    let out = oracle(&python, "floats", &[], input);
    assert_eq!(out.len(), xs.len());

    let mut failures = Vec::new();
    for (x, line) in xs.iter().zip(&out) {
        let (py_repr, py_go) = line.split_once(' ').unwrap();
        let (repr, go) = (float::python_repr(*x), float::go_float(*x));
        if repr != py_repr || go != py_go {
            failures.push(format!(
                "bits {}: python repr {py_repr} go {py_go}; ours repr {repr} go {go}",
                bits_hex(*x)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} floats differ from Python (seed printed above); first ones:\n{}",
        failures.len(),
        xs.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// (c) Whole files.

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "prometheus-multiproc-format-{test}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Has Python's `MmapedDict` apply `writes` (key, value, timestamp) to a new file, builds the
/// file `layout::write_file` writes for the same final values, and asserts they are identical.
/// Returns Python's file.
fn assert_same_file_as_python(python: &Path, test: &str, writes: &[(String, f64, f64)]) -> Vec<u8> {
    let dir = TempDir::new(test);
    let path = dir.0.join("counter_4242.db");
    let input: String = writes
        .iter()
        .map(|(k, v, t)| format!("{} {} {}\n", hex(k.as_bytes()), bits_hex(*v), bits_hex(*t)))
        .collect();
    let out = oracle(python, "layout", &[path.to_str().unwrap()], input);
    let python_file = std::fs::read(&path).unwrap();
    assert_eq!(out, vec![python_file.len().to_string()]);

    // A key written again is updated in place: keep the first position and the last values.
    let mut order: Vec<&str> = Vec::new();
    let mut last: HashMap<&str, (f64, f64)> = HashMap::new();
    for (k, v, t) in writes {
        if last.insert(k, (*v, *t)).is_none() {
            order.push(k);
        }
    }
    let ours = layout::write_file(order.iter().map(|k| {
        let (v, t) = last[k];
        (k.as_bytes(), v, t)
    }));
    assert_eq!(ours.len(), python_file.len(), "file sizes differ");
    if let Some(at) = ours.iter().zip(&python_file).position(|(a, b)| a != b) {
        let end = (at + 32).min(ours.len());
        panic!(
            "files differ from byte {at}:\npython {}\nours   {}",
            hex(&python_file[at..end]),
            hex(&ours[at..end])
        );
    }

    // And our reader reads Python's file back as written.
    let entries: Vec<_> = layout::entries(&python_file)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(entries.len(), order.len());
    for (e, k) in entries.iter().zip(&order) {
        let (v, t) = last[k];
        assert_eq!(e.key, k.as_bytes());
        assert_eq!(
            (e.value.to_bits(), e.timestamp.to_bits()),
            (v.to_bits(), t.to_bits())
        );
        assert_eq!(e.value_offset % 8, 0);
    }
    python_file
}

/// A JSON key of exactly `len` bytes (`len` at least 40).
fn key_of_len(name: &str, len: usize) -> String {
    let base = key::encode_key(name, &format!("{name}_total"), &[("path", "/")], "");
    assert!(base.len() <= len, "{base} longer than {len}");
    let k = key::encode_key(
        name,
        &format!("{name}_total"),
        &[("path", "/")],
        &"x".repeat(len - base.len()),
    );
    assert_eq!(k.len(), len);
    k
}

#[test]
fn file_layout_matches_python_mmaped_dict_byte_for_byte() {
    const TEST: &str = "file_layout_matches_python_mmaped_dict_byte_for_byte";
    let Some(python) = python_or_skip(TEST) else {
        return;
    };
    let mut rng = Rng::seeded(TEST);
    let mut value = || loop {
        let x = f64::from_bits(rng.next_u64());
        if x.is_finite() {
            break x;
        }
    };
    let mut writes: Vec<(String, f64, f64)> = vec![(
        key::encode_key("requests", "requests_total", &[("path", "/")], "Requests."),
        3.0,
        0.0,
    )];
    // Every padding length: key lengths 92..100 cover every `(len + 4) % 8`; 92 and 100 (and
    // 108, 4 + 8k) are padded with a full 8 spaces.
    for len in 92..=100 {
        writes.push((key_of_len(&format!("pad{len}"), len), value(), 0.0));
    }
    writes.push((key_of_len("eight", 108), 1.0, 1_700_000_000.25));
    // Keys that are not JSON at all: the layout does not care, and lengths are in bytes.
    writes.push((String::new(), f64::NAN, 0.0));
    writes.push(("ключ 😀 é".to_owned(), f64::INFINITY, -0.0));
    writes.push(("é".repeat(10), f64::NEG_INFINITY, f64::MAX));
    // Histogram-shaped keys, as Python writes them.
    for le in [0.005, 0.1, 1.0, 1e6, f64::INFINITY] {
        writes.push((
            key::encode_key(
                "latency",
                "latency_bucket",
                &[("le", float::go_float(le).as_str()), ("route", "/é")],
                "Latency 😀.",
            ),
            value(),
            0.0,
        ));
    }
    // Two keys of 70,000 bytes: the file doubles past 64 KiB, then again past 128 KiB.
    writes.push((key_of_len("big_one", 70_000), 2.0, 0.0));
    writes.push((key_of_len("big_two", 70_000), 3.0, 0.0));
    // A key of 4 + 8k bytes after the big ones, and updates in place of earlier keys.
    writes.push((key_of_len("after_big", 68), 4.0, 0.0));
    writes.push((writes[0].0.clone(), 42.0, 1_700_000_123.5));
    writes.push((writes[3].0.clone(), -1.0, 0.0));

    let file = assert_same_file_as_python(&python, TEST, &writes);
    assert_eq!(file.len(), 4 * layout::INITIAL_FILE_SIZE, "doubled twice");
}

#[test]
fn single_counter_file_matches_python_and_the_worked_example_in_docs() {
    const TEST: &str = "single_counter_file_matches_python_and_the_worked_example_in_docs";
    let Some(python) = python_or_skip(TEST) else {
        return;
    };
    let k = key::encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
    let file = assert_same_file_as_python(&python, TEST, &[(k, 3.0, 0.0)]);
    assert_eq!(file.len(), layout::INITIAL_FILE_SIZE);
    assert_eq!(&file[..88], WORKED_EXAMPLE);
    assert!(file[88..].iter().all(|&b| b == 0));
}

#[test]
fn file_without_entries_matches_python_mmaped_dict() {
    const TEST: &str = "file_without_entries_matches_python_mmaped_dict";
    let Some(python) = python_or_skip(TEST) else {
        return;
    };
    // Python stores `used` = 8 as soon as it creates the file.
    let file = assert_same_file_as_python(&python, TEST, &[]);
    assert_eq!(file.len(), layout::INITIAL_FILE_SIZE);
    assert_eq!(&file[..8], &[8, 0, 0, 0, 0, 0, 0, 0]);
}

/// The first 88 bytes (`used`) of the worked example in docs/format.md, as Python writes them.
const WORKED_EXAMPLE: &[u8] = b"\
\x58\x00\x00\x00\x00\x00\x00\x00\x3a\x00\x00\x00\
[\"requests\", \"requests_total\", {\"path\": \"/\"}, \"Requests.\"]  \
\x00\x00\x00\x00\x00\x00\x08\x40\
\x00\x00\x00\x00\x00\x00\x00\x00";
