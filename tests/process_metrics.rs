//! Process metrics: the same families, help texts and values as Python's `ProcessCollector`
//! (on a made-up `/proc` tree, bit for bit, and on this very process), and values that follow
//! what the process does.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_multiproc::collector::{Collector, MetricFamily};
use prometheus_multiproc::exposition::{encode, Format};
use prometheus_multiproc::format::filename::MetricType;
use prometheus_multiproc::process::{process_families, process_families_from};
use prometheus_multiproc::{GaugeMode, Registry};

/// The tests run one at a time: some count this process's descriptors, which the others open.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn has_proc() -> bool {
    Path::new("/proc/self/stat").is_file()
}

fn value(families: &[MetricFamily], name: &str) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name)
        .map(|s| s.value)
}

/// Python's `ProcessCollector(proc=PROC, pid=lambda: PID).collect()`, as
/// `{family: (type, help, {sample: value})}`.
type PyProcess = BTreeMap<String, (String, String, BTreeMap<String, f64>)>;

fn python_process_collector(py: &Path, proc: &Path, pid: &str) -> PyProcess {
    let code = r#"
import json, sys
from prometheus_client.process_collector import ProcessCollector
c = ProcessCollector(proc=sys.argv[1], pid=lambda: sys.argv[2], registry=None)
print(json.dumps([
    {"name": f.name, "type": f.type, "help": f.documentation,
     "samples": [[s.name, float(s.value).hex()] for s in f.samples]}
    for f in c.collect()
]))
"#;
    let mut cmd = std::process::Command::new(py);
    cmd.args(["-c", code])
        .arg(proc)
        .arg(pid)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = common::run_command(cmd, None);
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let samples = f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let v = s[1].as_str().unwrap();
                    (
                        s[0].as_str().unwrap().to_owned(),
                        common::parse_float_hex(v).unwrap_or_else(|| panic!("bad hex {v}")),
                    )
                })
                .collect();
            (
                f["name"].as_str().unwrap().to_owned(),
                (
                    f["type"].as_str().unwrap().to_owned(),
                    f["help"].as_str().unwrap().to_owned(),
                    samples,
                ),
            )
        })
        .collect()
}

fn ours_as_python(families: &[MetricFamily]) -> PyProcess {
    families
        .iter()
        .map(|f| {
            assert!(f.samples.iter().all(|s| s.labels.is_empty()));
            (
                f.name.clone(),
                (
                    f.kind.as_str().to_owned(),
                    f.help.clone(),
                    f.samples
                        .iter()
                        .map(|s| (s.name.clone(), s.value))
                        .collect(),
                ),
            )
        })
        .collect()
}

/// A `/proc` tree with one process, `4242`, whose command name holds spaces and parentheses.
fn fake_proc(dir: &Path, limits: &str) {
    fs::write(
        dir.join("stat"),
        "cpu  10 0 5 100 0 0 0 0 0 0\nintr 1 2 3\nbtime 1712345678\nprocesses 99\n",
    )
    .unwrap();
    let pid = dir.join("4242");
    fs::create_dir_all(pid.join("fd")).unwrap();
    for fd in ["0", "1", "2", "7"] {
        fs::write(pid.join("fd").join(fd), "").unwrap();
    }
    fs::write(
        pid.join("stat"),
        "4242 (my (odd) worker) S 1 4242 4242 0 -1 4194560 5000 0 3 0 1234 567 0 0 20 0 4 0 \
         98765 987654321 12345 18446744073709551615 1 1 0 0 0 0 0 4096 17987 0 0 0 17 1 0 0 0 0 0\n",
    )
    .unwrap();
    fs::write(pid.join("limits"), limits).unwrap();
}

const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            65536                524288               files     
Max locked memory         8388608              8388608              bytes     
";

#[test]
fn same_as_python_on_a_made_up_proc_tree() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    fake_proc(dir.path(), LIMITS);
    let ours = process_families_from(dir.path(), "4242");
    assert_eq!(ours.len(), 6);
    let names: Vec<&str> = ours.iter().map(|f| f.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert_eq!(value(&ours, "process_open_fds"), Some(4.0));
    assert_eq!(value(&ours, "process_max_fds"), Some(65536.0));
    assert_eq!(
        value(&ours, "process_virtual_memory_bytes"),
        Some(987654321.0)
    );

    let Some(py) = common::python() else { return };
    let theirs = python_process_collector(&py, dir.path(), "4242");
    assert_eq!(ours_as_python(&ours), theirs);

    // Without the descriptor files, both leave out the two descriptor families only.
    fs::remove_file(dir.path().join("4242/limits")).unwrap();
    let ours = process_families_from(dir.path(), "4242");
    assert_eq!(ours.len(), 4);
    assert_eq!(
        ours_as_python(&ours),
        python_process_collector(&py, dir.path(), "4242")
    );
    // Without the boot time, nothing at all.
    fs::write(dir.path().join("stat"), "cpu  1 2 3\n").unwrap();
    assert!(process_families_from(dir.path(), "4242").is_empty());
    assert!(python_process_collector(&py, dir.path(), "4242").is_empty());
}

#[test]
fn unreadable_or_odd_proc_never_panics() {
    let _serial = serial();
    assert!(process_families_from(Path::new("/nonexistent/proc"), "self").is_empty());
    let dir = tempfile::tempdir().unwrap();
    fake_proc(
        dir.path(),
        "Limit Soft Hard Units\nMax open files unlimited unlimited files\n",
    );
    // A truncated stat: its four families are left out, the descriptor ones stay.
    fs::write(dir.path().join("4242/stat"), "4242 (x) S 1 2").unwrap();
    let families = process_families_from(dir.path(), "4242");
    let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["process_max_fds", "process_open_fds"]);
    assert_eq!(value(&families, "process_max_fds"), Some(f64::INFINITY));
    // No such process.
    assert!(process_families_from(dir.path(), "999999").is_empty());
    // Garbage everywhere.
    fs::write(dir.path().join("4242/stat"), [0xff, 0xfe, b')', 0]).unwrap();
    fs::write(dir.path().join("4242/limits"), [0xff; 64]).unwrap();
    let families = process_families_from(dir.path(), "4242");
    let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["process_open_fds"]);
}

#[test]
fn same_as_python_for_this_process() {
    if !has_proc() {
        eprintln!("SKIPPED: no /proc");
        return;
    }
    let Some(py) = common::python() else { return };
    let _serial = serial();
    let pid = std::process::id().to_string();
    let before = process_families();
    let theirs = python_process_collector(&py, Path::new("/proc"), &pid);
    let after = process_families();
    let py_value = |family: &str, sample: &str| theirs[family].2[sample];

    // Same families, types and help texts.
    let shape = |p: &PyProcess| -> Vec<(String, String, String)> {
        p.iter()
            .map(|(n, (t, h, _))| (n.clone(), t.clone(), h.clone()))
            .collect()
    };
    assert_eq!(shape(&ours_as_python(&before)), shape(&theirs));

    // Computed the same way from the same numbers: identical.
    for name in ["process_start_time_seconds", "process_max_fds"] {
        assert_eq!(value(&before, name), Some(py_value(name, name)), "{name}");
    }
    // Read at different moments: bracketed, or close.
    let cpu = py_value("process_cpu_seconds", "process_cpu_seconds_total");
    let tick = 1.0 / 100.0;
    assert!(value(&before, "process_cpu_seconds_total").unwrap() <= cpu + tick);
    assert!(cpu <= value(&after, "process_cpu_seconds_total").unwrap() + tick);
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
    ] {
        let ours = value(&before, name).unwrap();
        let python = py_value(name, name);
        assert!(
            (ours - python).abs() <= 0.25 * ours.max(python),
            "{name}: ours {ours}, Python's {python}"
        );
    }
    // Python lists our descriptors from outside; we list them from inside, with one more
    // open for the listing, and the pipes to Python come and go around it.
    let fds = value(&before, "process_open_fds").unwrap();
    let python_fds = py_value("process_open_fds", "process_open_fds");
    assert!(
        (fds - python_fds).abs() <= 4.0,
        "ours {fds}, Python's {python_fds}"
    );
}

#[test]
fn values_follow_the_process() {
    if !has_proc() {
        eprintln!("SKIPPED: no /proc");
        return;
    }
    let _serial = serial();
    let families = process_families();
    assert_eq!(families.len(), 6);

    // Start time: this process started before now, and not long ago.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value(&families, "process_start_time_seconds").unwrap();
    assert!(
        start <= now + 1.0 && start > now - 3600.0,
        "start {start}, now {now}"
    );

    // Memory: a plausible resident size, no more than the virtual size.
    let rss = value(&families, "process_resident_memory_bytes").unwrap();
    let vsize = value(&families, "process_virtual_memory_bytes").unwrap();
    assert!(rss > 1e5 && rss <= vsize, "rss {rss}, vsize {vsize}");

    // Descriptors: one more while a file is open, counted as listing the directory counts.
    let open = |f: &[MetricFamily]| value(f, "process_open_fds").unwrap();
    let listed = fs::read_dir("/proc/self/fd").unwrap().count() as f64;
    let before = open(&process_families());
    assert_eq!(before, listed);
    let file = fs::File::open("/proc/self/stat").unwrap();
    assert_eq!(open(&process_families()), before + 1.0);
    drop(file);
    assert_eq!(open(&process_families()), before);
    let max = value(&families, "process_max_fds").unwrap();
    assert!(max >= before, "max {max}, open {before}");

    // CPU time grows while the process computes.
    let cpu = |f: &[MetricFamily]| value(f, "process_cpu_seconds_total").unwrap();
    let start_cpu = cpu(&process_families());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut x = 0u64;
    while cpu(&process_families()) < start_cpu + 0.05 {
        for i in 0..100_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        assert!(Instant::now() < deadline, "CPU time did not grow ({x})");
    }
}

#[test]
fn collector_adds_them_in_name_order() {
    if !has_proc() {
        eprintln!("SKIPPED: no /proc");
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::new(dir.path()).unwrap();
    r.counter("aaa_total", "First.").unwrap().inc();
    r.counter("zzz_total", "Last.").unwrap().inc();
    // A family of the directory wins over the process's own of the same name.
    r.gauge("process_open_fds", "From the workers.", GaugeMode::Sum)
        .unwrap()
        .set(12345.0);

    let plain = Collector::new(dir.path()).collect().unwrap();
    assert!(!plain.families.iter().any(|f| f.name == "process_max_fds"));

    let scrape = Collector::new(dir.path())
        .process_metrics(true)
        .collect()
        .unwrap();
    let names: Vec<&str> = scrape.families.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "aaa",
            "process_cpu_seconds",
            "process_max_fds",
            "process_open_fds",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_virtual_memory_bytes",
            "prometheus_multiproc_bad_files",
            "zzz",
        ]
    );
    let fds = scrape
        .families
        .iter()
        .find(|f| f.name == "process_open_fds")
        .unwrap();
    assert_eq!(fds.help, "From the workers.");
    assert_eq!(fds.samples[0].value, 12345.0);
    let cpu = &scrape.families[1];
    assert_eq!(cpu.kind, MetricType::Counter);

    // The endpoint's path, written straight from the keys, puts them in the same places.
    let mut direct = String::new();
    Collector::new(dir.path())
        .process_metrics(true)
        .encode_into(Format::Text, &mut direct)
        .unwrap();
    let typed = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        typed(&direct),
        typed(&encode(&scrape.families, Format::Text)),
        "{direct}"
    );
    assert!(
        direct.contains("# HELP process_open_fds From the workers.\n# TYPE process_open_fds gauge\nprocess_open_fds 12345.0\n"),
        "{direct}"
    );

    // The exposition is what Python's parser reads back.
    let text = encode(&scrape.families, Format::Text);
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "),
        "{text}"
    );
    let Some(py) = common::python() else { return };
    for (format, body) in [
        ("text", text),
        ("openmetrics", encode(&scrape.families, Format::OpenMetrics)),
    ] {
        let parsed = common::python_parse(&py, format, body.as_bytes());
        let start = parsed
            .iter()
            .find(|f| f.name == "process_start_time_seconds")
            .unwrap();
        assert_eq!(
            start.samples[0].value,
            value(&scrape.families, "process_start_time_seconds").unwrap()
        );
    }
}
