//! Our expositions against real parsers: the text format must pass `promtool check metrics`
//! and Python's text parser, OpenMetrics must pass Python's OpenMetrics parser, and both must
//! parse to the samples Python's `MultiProcessCollector` gives for the same files. The directory
//! holds every metric type, all ten gauge modes, text that needs escaping, and bad files (which
//! we leave out and count, where Python's scrape would fail).
//!
//! Python's OpenMetrics parser is strict about counter-like samples: no NaN in `_total`, `_sum`,
//! `_count` or `_bucket`, nothing negative there, and no `_sum` next to negative buckets; the
//! directory here keeps to that (NaN and infinities are in gauges, +Inf in a counter).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use common::PyFamily;
use prometheus_multiproc::collector::{BadFileReason, Collector, Scrape};
use prometheus_multiproc::exposition::{encode, Format};
use prometheus_multiproc::format::layout::write_file;
use serde_json::{json, Value};

/// Label values that need escaping or are not ASCII.
const LABEL_VALUES: [&str; 12] = [
    "",
    "GET",
    "/users/{id}",
    "say \"hi\"",
    "back\\slash",
    "trailing backslash\\",
    "two\nlines",
    "tab\tand\rcarriage return",
    "a,b=c}{",
    "ünïcödé — 日本語",
    "astral 😀 𝄞",
    "# HELP not a comment",
];

fn num(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(v)
    }
}

fn op(metric: usize, labels: &[&str], op: &str, value: f64) -> Value {
    json!({"metric": metric, "labels": labels, "op": op, "value": num(value)})
}

/// Every metric type and gauge mode, escaping in help texts and label values, written by
/// three Python workers, the second marked dead.
fn rich_scenario() -> Value {
    let mut metrics = vec![
        json!({"type": "counter", "name": "http_requests", "help": "Requests \"served\", by method.", "labels": ["method"]}),
        json!({"type": "counter", "name": "errors_total", "help": "Errors, a backslash \\ and\na newline."}),
        json!({"type": "counter", "name": "overflowed", "help": "Reached +Inf.", "labels": ["k"]}),
        json!({"type": "histogram", "name": "latency_seconds", "help": "Ünïcödé 😀 latency.", "labels": ["route"]}),
        json!({"type": "histogram", "name": "size_bytes", "help": "Tiny and huge bounds.",
               "buckets": [0.0001, 1.0, 123456.0, 1e6, 1e21]}),
        json!({"type": "summary", "name": "payload_bytes", "help": "Payload {braces} = signs, commas.", "labels": ["code"]}),
        json!({"type": "gauge", "name": "odd_values", "help": "NaN and infinities.", "labels": ["k"], "mode": "all"}),
        json!({"type": "gauge", "name": "ns:colon_gauge", "help": "", "mode": "max"}),
    ];
    let first_gauge = metrics.len();
    for mode in common::GAUGE_MODES {
        metrics.push(json!({"type": "gauge", "name": format!("gauge_{mode}"),
                            "help": format!("Gauge, {mode} mode."), "labels": ["worker"], "mode": mode}));
    }
    let processes: Vec<Value> = (0..3)
        .map(|p| {
            let k = p as f64;
            let mut ops = Vec::new();
            for (i, v) in LABEL_VALUES.iter().enumerate() {
                if (i + p) % 2 == 0 {
                    ops.push(op(0, &[v], "inc", (i + 1) as f64));
                }
            }
            ops.push(op(1, &[], "inc", k));
            ops.push(op(
                2,
                &["a"],
                "inc",
                if p == 1 { f64::INFINITY } else { 1.0 },
            ));
            for (j, route) in ["/", "/api", "two\nlines"].iter().enumerate() {
                for v in [0.005, 0.1, 1.0, 10.0, 11.0, j as f64] {
                    ops.push(op(3, &[route], "observe", v));
                }
            }
            for v in [0.0001, 1.0, 1e6, 1e21, 2e21, 0.5 + k] {
                ops.push(op(4, &[], "observe", v));
            }
            ops.push(op(5, &[["200", "404", "500"][p]], "observe", 512.0 * k));
            ops.push(op(5, &["say \"hi\""], "observe", 1.0));
            ops.push(op(6, &["nan"], "set", f64::NAN));
            ops.push(op(6, &["inf"], "set", f64::INFINITY));
            ops.push(op(6, &["-inf"], "set", f64::NEG_INFINITY));
            ops.push(op(7, &[], "set", k * 2.5 - 1.0));
            for (m, mode) in common::GAUGE_MODES.iter().enumerate() {
                let g = first_gauge + m;
                ops.push(op(g, &["shared"], "set", k * 3.0 - 2.0));
                if !mode.contains("mostrecent") {
                    ops.push(op(g, &[LABEL_VALUES[p + 3]], "inc", 1.5));
                }
            }
            json!({"ops": ops, "dead": p == 1})
        })
        .collect();
    json!({"metrics": metrics, "processes": processes})
}

/// The bad files added to a directory, by name, with the reason we must give.
fn add_bad_files(dir: &Path) -> Vec<(&'static str, BadFileReason)> {
    let write =
        |name: &str, bytes: &[u8]| fs::write(dir.join(name), bytes).expect("write bad file");
    // A 0-byte file, as a worker killed right after creating it leaves.
    write("counter_990001.db", b"");
    // A header claiming more bytes than there are.
    let good = write_file([(
        &br#"["trunc", "trunc_sum", {}, "Truncated."]"#[..],
        1.0,
        0.0,
    )]);
    write("histogram_990002.db", &good[..20]);
    // An entry whose key length runs past the end of what is used.
    let mut garbage = vec![0u8; 64];
    garbage[..4].copy_from_slice(&64i32.to_ne_bytes());
    garbage[8..12].copy_from_slice(&1000i32.to_ne_bytes());
    write("summary_990003.db", &garbage);
    // A well-formed file whose key is not JSON.
    write(
        "gauge_all_990004.db",
        &write_file([(&b"not json at all"[..], 1.0, 0.0)]),
    );
    // Names of no metric type, or of no gauge mode.
    let valid = write_file([(&br#"["stray", "stray", {}, "Stray."]"#[..], 1.0, 0.0)]);
    write("foo_990005.db", &valid);
    write("gauge_bogus_990006.db", &valid);
    // A directory named like a file.
    fs::create_dir(dir.join("counter_990007.db")).expect("mkdir");
    // Ignored by Python's glob, and by us: hidden, and not `*.db`.
    write(".hidden_990008.db", b"garbage");
    write("notes.txt", b"not a metrics file");
    vec![
        ("counter_990001.db", BadFileReason::Empty),
        ("histogram_990002.db", BadFileReason::Truncated),
        ("summary_990003.db", BadFileReason::Corrupt),
        ("gauge_all_990004.db", BadFileReason::Corrupt),
        ("foo_990005.db", BadFileReason::UnknownType),
        ("gauge_bogus_990006.db", BadFileReason::UnknownType),
        ("counter_990007.db", BadFileReason::NotAFile),
    ]
}

/// A directory written by Python workers, Python's scrape of it (taken before the bad files
/// were added: they would fail it), then our scrape with the bad files in.
struct Rich {
    _dir: tempfile::TempDir,
    theirs: Vec<PyFamily>,
    scrape: Scrape,
}

fn rich(py: &Path) -> Rich {
    let dir = tempfile::tempdir().expect("tempdir");
    common::run_scenario(py, dir.path(), &rich_scenario().to_string());
    let theirs = common::python_collect(py, dir.path());
    let bad = add_bad_files(dir.path());
    let scrape = Collector::new(dir.path()).collect().expect("collect");
    let got: BTreeSet<(String, BadFileReason)> = scrape
        .bad_files
        .iter()
        .map(|b| {
            let name = b.path.file_name().expect("file name").to_string_lossy();
            (name.into_owned(), b.reason)
        })
        .collect();
    let want: BTreeSet<(String, BadFileReason)> =
        bad.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    assert_eq!(got, want, "bad files reported");
    Rich {
        _dir: dir,
        theirs,
        scrape,
    }
}

/// Checks what a parser made of our exposition against Python's scrape, and that our
/// bad-files gauge counted the bad files.
fn check_parsed(parsed: &[PyFamily], theirs: &[PyFamily], exposition: &str, bad: usize) {
    let counted: f64 = parsed
        .iter()
        .filter(|f| f.name == "prometheus_multiproc_bad_files")
        .flat_map(|f| &f.samples)
        .map(|s| s.value)
        .sum();
    assert_eq!(counted, bad as f64, "bad files counted in:\n{exposition}");
    let result =
        std::panic::catch_unwind(|| common::assert_same_samples(parsed, theirs, common::OURS_ONLY));
    if result.is_err() {
        panic!("the parse of our exposition differs from Python's scrape (see above); ours:\n{exposition}");
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn text_passes_promtool_check_metrics() {
    let Some(promtool) = common::promtool() else {
        return;
    };
    let Some(py) = common::python() else { return };
    let rich = rich(&py);
    let text = encode(&rich.scrape.families, Format::Text);
    for exposition in [text.as_str(), ""] {
        promtool_check(&promtool, exposition);
    }
    // A directory of nothing but bad files still gives a valid exposition.
    let dir = tempfile::tempdir().expect("tempdir");
    add_bad_files(dir.path());
    let scrape = Collector::new(dir.path()).collect().expect("collect");
    promtool_check(&promtool, &encode(&scrape.families, Format::Text));
}

/// Runs `promtool check metrics` on `exposition` (on stdin). promtool exits 0 when all is well,
/// 3 when the exposition parses but has lint problems (names without `_total` or a unit,
/// `_count`-looking gauges and such: Python's names are the user's, not ours to change), and 1
/// when it does not parse ("error while linting: text format parsing error ..."). Only the last
/// is a failure.
fn promtool_check(promtool: &Path, exposition: &str) {
    let mut cmd = std::process::Command::new(promtool);
    cmd.args(["check", "metrics"]);
    let out = common::run_command(cmd, Some(exposition.as_bytes()));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 3)) && !said.contains("error while linting"),
        "promtool check metrics rejects our text ({}):\n{said}\n--- exposition ---\n{exposition}",
        out.status
    );
}

#[test]
fn text_passes_python_text_parser_with_the_same_samples() {
    let Some(py) = common::python() else { return };
    let rich = rich(&py);
    let text = encode(&rich.scrape.families, Format::Text);
    let parsed = common::python_parse(&py, "text", text.as_bytes());
    check_parsed(&parsed, &rich.theirs, &text, rich.scrape.bad_files.len());
    // Help and type come through for every family of Python's.
    let names: BTreeSet<&str> = parsed.iter().map(|f| f.name.as_str()).collect();
    for f in &rich.theirs {
        assert!(names.contains(f.name.as_str()), "family {} missing", f.name);
    }
}

#[test]
fn openmetrics_passes_python_openmetrics_parser_with_the_same_samples() {
    let Some(py) = common::python() else { return };
    let rich = rich(&py);
    let om = encode(&rich.scrape.families, Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"), "no # EOF at the end:\n{om}");
    let out = common::try_run_python(&py, "parse.py", &["openmetrics"], Some(om.as_bytes()));
    assert!(
        out.status.success(),
        "Python's OpenMetrics parser rejects our exposition:\n{}\n--- exposition ---\n{om}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = common::parse_families_json(&out.stdout);
    check_parsed(&parsed, &rich.theirs, &om, rich.scrape.bad_files.len());
}

#[test]
fn empty_and_all_bad_directories_give_valid_expositions() {
    let Some(py) = common::python() else { return };
    let empty = tempfile::tempdir().expect("tempdir");
    let all_bad = tempfile::tempdir().expect("tempdir");
    let bad = add_bad_files(all_bad.path());
    for (dir, n_bad) in [(empty.path(), 0), (all_bad.path(), bad.len())] {
        let scrape = Collector::new(dir).collect().expect("collect");
        assert_eq!(scrape.bad_files.len(), n_bad);
        for (format, name) in [(Format::Text, "text"), (Format::OpenMetrics, "openmetrics")] {
            let exposition = encode(&scrape.families, format);
            let parsed = common::python_parse(&py, name, exposition.as_bytes());
            check_parsed(&parsed, &[], &exposition, n_bad);
        }
    }
}
