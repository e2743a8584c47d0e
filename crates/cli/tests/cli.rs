//! The `prom-multiproc` binary as a user runs it: output, exit codes and error messages.

use std::path::Path;
use std::process::{Command, Output};

use prometheus_multiproc_format::{key::encode_key, layout::write_file};

fn prom_multiproc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prom-multiproc"))
        .args(args)
        .env_remove("PROMETHEUS_MULTIPROC_DIR")
        .env_remove("prometheus_multiproc_dir")
        .output()
        .expect("run prom-multiproc")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A directory with two healthy counter files (2 + 3 requests) and, if asked, a truncated one.
fn directory(with_bad_file: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let key = encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
    for (pid, n) in [(1, 2.0), (2, 3.0)] {
        let bytes = write_file([(key.as_bytes(), n, 0.0)]);
        std::fs::write(dir.path().join(format!("counter_{pid}.db")), bytes).unwrap();
    }
    if with_bad_file {
        let bytes = write_file([(key.as_bytes(), 100.0, 0.0)]);
        std::fs::write(dir.path().join("counter_3.db"), &bytes[..20]).unwrap();
    }
    dir
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn dump_prints_the_merged_text_exposition() {
    let dir = directory(false);
    let out = prom_multiproc(&["dump", "--dir", arg(dir.path())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("# TYPE requests_total counter\nrequests_total{path=\"/\"} 5.0\n"),
        "{text}"
    );
    assert!(text.contains("prometheus_multiproc_bad_files{reason=\"truncated\"} 0.0\n"));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn dump_reads_the_directory_from_the_environment() {
    let dir = directory(false);
    let out = Command::new(env!("CARGO_BIN_EXE_prom-multiproc"))
        .arg("dump")
        .env("PROMETHEUS_MULTIPROC_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("requests_total{path=\"/\"} 5.0\n"));
}

#[test]
fn dump_openmetrics_ends_with_eof() {
    let dir = directory(false);
    let out = prom_multiproc(&["dump", "--dir", arg(dir.path()), "--format", "openmetrics"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("# TYPE requests counter\n"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn dump_serves_healthy_files_and_lists_the_bad_one_on_stderr() {
    let dir = directory(true);
    let out = prom_multiproc(&["dump", "--dir", arg(dir.path())]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("requests_total{path=\"/\"} 5.0\n"));
    assert!(stdout(&out).contains("prometheus_multiproc_bad_files{reason=\"truncated\"} 1.0\n"));
    let err = stderr(&out);
    assert!(err.contains("counter_3.db"), "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn dump_of_a_missing_directory_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = prom_multiproc(&["dump", "--dir", arg(&missing)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(arg(&missing)), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn dump_without_a_directory_exits_2_saying_how_to_give_one() {
    let out = prom_multiproc(&["dump"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("PROMETHEUS_MULTIPROC_DIR"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_passes_a_clean_directory() {
    let dir = directory(false);
    let out = prom_multiproc(&["check", "--dir", arg(dir.path())]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("2 files ok, 0 bad"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_names_the_bad_file_and_the_offset() {
    let dir = directory(true);
    let out = prom_multiproc(&["check", "--dir", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("counter_3.db (truncated)"), "{text}");
    assert!(text.contains("at offset 0"), "{text}");
    assert!(text.contains("2 files ok, 1 bad"), "{text}");
}

#[test]
fn inspect_prints_each_entry() {
    let dir = directory(false);
    let out = prom_multiproc(&["inspect", arg(&dir.path().join("counter_2.db"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("type counter pid 2"), "{text}");
    assert!(text.contains("size 65536 used "), "{text}");
    assert!(
        text.contains("requests_total {path=\"/\"} family=\"requests\" help=\"Requests.\" value=3.0 timestamp=0.0"),
        "{text}"
    );
}

#[test]
fn inspect_of_a_corrupt_file_exits_1_with_the_offset() {
    let dir = directory(false);
    let path = dir.path().join("counter_1.db");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&(-3i32).to_ne_bytes());
    std::fs::write(&path, bytes).unwrap();
    let out = prom_multiproc(&["inspect", arg(&path)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("error at offset 8: entry has a negative key length -3"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn mark_dead_removes_only_live_gauge_files_of_that_pid() {
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "gauge_livesum_7.db",
        "gauge_liveall_7.db",
        "gauge_all_7.db",
        "counter_7.db",
        "gauge_livesum_8.db",
    ];
    for name in names {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    let out = prom_multiproc(&["mark-dead", "7", "--dir", arg(dir.path())]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("removed 2 live gauge files of process 7"));
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["counter_7.db", "gauge_all_7.db", "gauge_livesum_8.db"]
    );
}

#[test]
fn mark_dead_refuses_a_pid_that_is_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = prom_multiproc(&["mark-dead", "../x", "--dir", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a process id"),
        "{}",
        stderr(&out)
    );
}

/// A directory whose output is over two megabytes (pieces of one are written): three files, each of 20,000 counter series
/// of which half are shared with the next file, and histograms whose buckets are spread over
/// the files.
fn large_directory() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in 0..3 {
        let keys: Vec<String> = (0..20_000)
            .map(|i| {
                let series = f * 10_000 + i;
                encode_key(
                    "requests",
                    "requests_total",
                    &[
                        ("path", format!("/item/{series}").as_str()),
                        ("code", "200"),
                    ],
                    "Requests.",
                )
            })
            .collect();
        let counters = write_file(keys.iter().map(|k| (k.as_bytes(), 1.0, 0.0)));
        std::fs::write(dir.path().join(format!("counter_{f}.db")), counters).unwrap();
        let buckets: Vec<String> = (0..3_000)
            .flat_map(|route| {
                ["0.1", "1.0", "+Inf"].map(move |le| {
                    encode_key(
                        "latency",
                        "latency_bucket",
                        &[("le", le), ("route", format!("r{route}").as_str())],
                        "Latency.",
                    )
                })
            })
            .collect();
        let histogram = write_file(buckets.iter().map(|k| (k.as_bytes(), 2.0, 0.0)));
        std::fs::write(dir.path().join(format!("histogram_{f}.db")), histogram).unwrap();
    }
    dir
}

#[test]
fn dump_of_a_large_directory_writes_what_the_library_encodes() {
    use prometheus_multiproc::collector::Collector;
    use prometheus_multiproc::exposition::Format;

    let dir = large_directory();
    for (flag, format) in [("text", Format::Text), ("openmetrics", Format::OpenMetrics)] {
        let out = prom_multiproc(&["dump", "--dir", arg(dir.path()), "--format", flag]);
        assert!(out.status.success(), "{}", stderr(&out));
        let mut want = String::new();
        Collector::new(dir.path())
            .encode_into(format, &mut want)
            .unwrap();
        assert!(want.len() > 2 << 20, "only {} bytes: not large", want.len());
        // Streamed in pieces, the same bytes as the text made whole.
        assert!(
            stdout(&out) == want,
            "dump --format {flag} differs from encode_into"
        );
        assert!(
            want.contains("requests_total{code=\"200\",path=\"/item/15000\"} 2.0\n"),
            "a series of two files is summed"
        );
        assert!(want.contains("latency_bucket{le=\"+Inf\",route=\"r7\"} 18.0\n"));
    }
}

#[test]
fn dump_into_a_reader_that_stops_early_exits_quietly() {
    use std::io::Read;
    use std::process::Stdio;

    let dir = large_directory();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prom-multiproc"))
        .args(["dump", "--dir", arg(dir.path())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is closed now: the rest of the output meets a broken pipe.
    let out = child.wait_with_output().unwrap();
    assert!(first.starts_with(b"# HELP latency"));
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn dump_to_a_full_disk_exits_1_naming_the_problem() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("SKIPPED: no /dev/full on this system");
        return;
    }
    let dir = directory(false);
    let out = Command::new(env!("CARGO_BIN_EXE_prom-multiproc"))
        .args(["dump", "--dir", arg(dir.path())])
        .stdout(std::fs::OpenOptions::new().write(true).open(full).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write output: No space left on device"),
        "{}",
        stderr(&out)
    );
}
