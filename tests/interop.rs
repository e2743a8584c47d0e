//! The adapters to the tikv `prometheus` crate and to `prometheus-client`: what those crates'
//! encoders write for a registry holding our merged directory parses to the same samples as our
//! own exposition of the directory (with our own small parser, and with Python's parsers when
//! the oracle is installed), and the tikv protobuf encoding decodes back to the same values.
#![cfg(any(feature = "tikv", feature = "prometheus-client"))]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use prometheus_multiproc::collector::Collector;
use prometheus_multiproc::exposition::{encode, Format};
use prometheus_multiproc::{GaugeMode, Registry, DEFAULT_BUCKETS};

/// Fills `dir` with every metric type, labels and help texts that need escaping, large
/// numbers and bucket bounds that the encoders write differently (`1e+06` / `1000000`).
fn fill(dir: &Path) {
    let r = Registry::new(dir).unwrap();
    let requests = r
        .counter_vec(
            "http_requests_total",
            "Requests \"served\", with \\ and\nnewline.",
            &["method", "path"],
        )
        .unwrap();
    requests
        .with_label_values(&["GET", "/a\"b\\c\nd"])
        .inc_by(3.0)
        .unwrap();
    requests
        .with_label_values(&["POST", "/"])
        .inc_by(1234567.0)
        .unwrap();
    r.counter("plain", "Counter named without _total.")
        .unwrap()
        .inc();
    r.gauge("temperature_all", "Per process.", GaugeMode::All)
        .unwrap()
        .set(-3.25);
    r.gauge_vec(
        "in_progress",
        "In progress.",
        &["queue"],
        GaugeMode::LiveSum,
    )
    .unwrap()
    .with_label_values(&["default"])
    .set(2.0);
    r.gauge("peak", "Max.", GaugeMode::Max).unwrap().set(1e21);
    r.most_recent_gauge("last_run", "Most recent.", GaugeMode::MostRecent)
        .unwrap()
        .set(1.7e9);
    let latency = r
        .histogram_vec("latency_seconds", "Latency.", &["route"], DEFAULT_BUCKETS)
        .unwrap();
    for (route, v) in [("/a", 0.003), ("/a", 0.2), ("/a", 42.0), ("/b", 0.07)] {
        latency.with_label_values(&[route]).observe(v);
    }
    let sizes = r
        .histogram("sizes_bytes", "Sizes.", &[1000.0, 1e6, 1e9])
        .unwrap();
    sizes.observe(5e5);
    sizes.observe(2e6);
    let tasks = r
        .summary_vec("task_seconds", "Task time.", &["queue"])
        .unwrap();
    tasks.with_label_values(&["q1"]).observe(1.5);
    tasks.with_label_values(&["q1"]).observe(0.25);
    tasks.with_label_values(&["q2"]).observe(3.0);
}

type Labels = BTreeMap<String, String>;

/// `le` and `quantile` values as numbers written one way (`1e+06`, `1000000`, `1000000.0` and
/// `+Inf`, `inf` agree).
fn normalize(labels: Labels) -> Labels {
    labels
        .into_iter()
        .map(|(k, v)| {
            if k == "le" || k == "quantile" {
                let n: f64 = v
                    .parse()
                    .unwrap_or_else(|_| panic!("{k}={v:?} is not a number"));
                (k, format!("{n:?}"))
            } else {
                (k, v)
            }
        })
        .collect()
}

/// A small parser of the sample lines of the text format and OpenMetrics: `(name, labels,
/// value)`, in order.
fn parse_samples(text: &str) -> Vec<(String, Labels, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a sample line has a value");
        let name = line[..name_end].to_owned();
        let mut labels = Labels::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let mut key = String::new();
            let end;
            loop {
                let (i, c) = chars.next().expect("unterminated labels");
                match c {
                    '}' => {
                        end = i + 1;
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("unterminated value").1 {
                                '"' => break,
                                '\\' => match chars.next().expect("dangling escape").1 {
                                    'n' => value.push('\n'),
                                    c => value.push(c),
                                },
                                c => value.push(c),
                            }
                        }
                        assert!(
                            labels.insert(std::mem::take(&mut key), value).is_none(),
                            "duplicate label in {line}"
                        );
                    }
                    c => key.push(c),
                }
            }
            rest = &body[end..];
        }
        let value = rest.split_whitespace().next().expect("a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value {value:?} in {line:?}"));
        out.push((name, normalize(labels), value));
    }
    out
}

/// Samples as a multiset keyed by name and labels, values sorted.
fn sample_set(samples: Vec<(String, Labels, f64)>) -> BTreeMap<(String, Labels), Vec<u64>> {
    let mut set: BTreeMap<(String, Labels), Vec<u64>> = BTreeMap::new();
    for (name, labels, value) in samples {
        set.entry((name, labels)).or_default().push(value.to_bits());
    }
    for values in set.values_mut() {
        values.sort_unstable();
    }
    set
}

fn assert_same_sample_sets(ours: &str, theirs: &str) {
    let a = sample_set(parse_samples(ours));
    let b = sample_set(parse_samples(theirs));
    let missing: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing from theirs: {missing:#?}\nextra in theirs: {extra:#?}\n--- ours\n{ours}\n--- theirs\n{theirs}"
    );
    for (key, values) in &a {
        let got: Vec<f64> = b[key].iter().map(|v| f64::from_bits(*v)).collect();
        let want: Vec<f64> = values.iter().map(|v| f64::from_bits(*v)).collect();
        assert_eq!(got, want, "values of {key:?}");
    }
    assert_eq!(a.len(), b.len());
}

/// Python's parse of an exposition, with `le` and `quantile` written one way.
fn python_parse_normalized(py: &Path, format: &str, exposition: &str) -> Vec<common::PyFamily> {
    let mut families = common::python_parse(py, format, exposition.as_bytes());
    for family in &mut families {
        for sample in &mut family.samples {
            sample.labels = normalize(std::mem::take(&mut sample.labels));
        }
    }
    families
}

#[cfg(feature = "tikv")]
mod tikv {
    use super::*;
    use prometheus::proto;
    use prometheus::Encoder as _;
    use prometheus_multiproc::interop::{to_tikv, TikvCollector};

    fn registry_with_adapter(dir: &Path) -> prometheus::Registry {
        let registry = prometheus::Registry::new();
        let adapter = TikvCollector::new(Collector::new(dir));
        registry
            .register(Box::new(adapter))
            .expect("a collector without descriptors registers");
        registry
    }

    #[test]
    fn text_encoder_output_parses_to_our_samples() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path());
        let ours = encode(
            &Collector::new(dir.path()).collect().unwrap().families,
            Format::Text,
        );
        let registry = registry_with_adapter(dir.path());
        let theirs = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        // The encoders differ in how they write numbers: a real difference to compare through.
        assert!(ours.contains("le=\"1e+06\""), "{ours}");
        assert!(theirs.contains("le=\"1000000\""), "{theirs}");
        assert_same_sample_sets(&ours, &theirs);

        let Some(py) = common::python() else { return };
        let ours = python_parse_normalized(&py, "text", &ours);
        let theirs = python_parse_normalized(&py, "text", &theirs);
        common::assert_same_samples_with(&ours, &theirs, "", 0);
    }

    #[test]
    fn protobuf_encoding_decodes_to_our_values() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path());
        let families = Collector::new(dir.path()).collect().unwrap().families;
        let registry = registry_with_adapter(dir.path());
        let mut bytes = Vec::new();
        prometheus::ProtobufEncoder::new()
            .encode(&registry.gather(), &mut bytes)
            .unwrap();

        let mut input = protobuf::CodedInputStream::from_bytes(&bytes);
        let mut decoded = Vec::new();
        while !input.eof().unwrap() {
            decoded.push(input.read_message::<proto::MetricFamily>().unwrap());
        }
        let mut expected = to_tikv(&families);
        expected.sort_by(|a, b| a.name().cmp(b.name()));
        assert_eq!(decoded.len(), expected.len());
        // Same families; metrics in the registry's order (sorted by label values).
        for (got, want) in decoded.iter().zip(&expected) {
            assert_eq!(got.name(), want.name());
            assert_eq!(got.help(), want.help());
            assert_eq!(got.get_field_type(), want.get_field_type());
            let mut got = got.get_metric().to_vec();
            let mut want = want.get_metric().to_vec();
            let key = |m: &proto::Metric| format!("{:?}", m.get_label());
            got.sort_by_key(key);
            want.sort_by_key(key);
            assert_eq!(got, want, "metrics of a family");
        }

        // And the decoded values are our samples.
        let mut samples = Vec::new();
        for family in &decoded {
            for m in family.get_metric() {
                let labels: Labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().to_owned()))
                    .collect();
                let with = |k: &str, v: f64| {
                    let mut l = labels.clone();
                    l.insert(k.to_owned(), format!("{v:?}"));
                    l
                };
                let name = family.name();
                match family.get_field_type() {
                    proto::MetricType::COUNTER => {
                        samples.push((name.to_owned(), labels.clone(), m.get_counter().value()))
                    }
                    proto::MetricType::GAUGE => {
                        samples.push((name.to_owned(), labels.clone(), m.get_gauge().value()))
                    }
                    proto::MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        for b in h.get_bucket() {
                            samples.push((
                                format!("{name}_bucket"),
                                with("le", b.upper_bound()),
                                b.cumulative_count() as f64,
                            ));
                        }
                        let count = h.get_sample_count() as f64;
                        samples.push((format!("{name}_bucket"), with("le", f64::INFINITY), count));
                        samples.push((format!("{name}_count"), labels.clone(), count));
                        samples.push((format!("{name}_sum"), labels.clone(), h.get_sample_sum()));
                    }
                    proto::MetricType::SUMMARY => {
                        let s = m.get_summary();
                        samples.push((
                            format!("{name}_count"),
                            labels.clone(),
                            s.sample_count() as f64,
                        ));
                        samples.push((format!("{name}_sum"), labels.clone(), s.sample_sum()));
                    }
                    t => panic!("unexpected type {t:?}"),
                }
            }
        }
        let ours: Vec<(String, Labels, f64)> = families
            .iter()
            .flat_map(|f| &f.samples)
            .map(|s| {
                (
                    s.name.clone(),
                    normalize(s.labels.iter().cloned().collect()),
                    s.value,
                )
            })
            .collect();
        assert_eq!(sample_set(samples), sample_set(ours));
    }

    #[test]
    fn registers_beside_the_registrys_own_metrics() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path());
        let registry = registry_with_adapter(dir.path());
        let own = prometheus::IntCounter::new("own_events_total", "Own events.").unwrap();
        registry.register(Box::new(own.clone())).unwrap();
        own.inc_by(7);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("\nown_events_total 7\n"), "{text}");
        assert!(text.contains("\nplain_total 1\n"), "{text}");
        // The directory is read at every gather.
        Registry::new(dir.path())
            .unwrap()
            .counter("late_total", "Created after registration.")
            .unwrap()
            .inc();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("\nlate_total 1\n"), "{text}");

        // Documented: a registry takes one collector without descriptors.
        let second = TikvCollector::new(Collector::new(dir.path()));
        assert!(matches!(
            registry.register(Box::new(second)),
            Err(prometheus::Error::AlreadyReg)
        ));
    }

    #[test]
    fn unreadable_directory_gives_no_families() {
        let registry = registry_with_adapter(Path::new("/nonexistent/prometheus-multiproc"));
        assert!(registry.gather().is_empty());
    }
}

#[cfg(feature = "prometheus-client")]
mod client {
    use super::*;
    use prometheus_multiproc::interop::ClientCollector;

    fn openmetrics(dir: &Path) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ClientCollector::new(Collector::new(dir))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn openmetrics_output_parses_to_our_samples() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path());
        let ours = encode(
            &Collector::new(dir.path()).collect().unwrap().families,
            Format::OpenMetrics,
        );
        let theirs = openmetrics(dir.path());
        assert!(theirs.ends_with("# EOF\n"), "{theirs}");
        assert_same_sample_sets(&ours, &theirs);

        let Some(py) = common::python() else { return };
        let ours = python_parse_normalized(&py, "openmetrics", &ours);
        let theirs = python_parse_normalized(&py, "openmetrics", &theirs);
        // Summaries become two `unknown` families (`_count`, `_sum`); everything else keeps
        // its family, type and help.
        let summaries: Vec<&str> = ours
            .iter()
            .filter(|f| f.typ == "summary")
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(summaries, ["task_seconds"]);
        let split: Vec<common::PyFamily> = ours
            .iter()
            .flat_map(|f| {
                if f.typ != "summary" {
                    return vec![f.clone()];
                }
                ["_count", "_sum"]
                    .iter()
                    .map(|suffix| common::PyFamily {
                        name: format!("{}{suffix}", f.name),
                        typ: "unknown".into(),
                        help: f.help.clone(),
                        samples: f
                            .samples
                            .iter()
                            .filter(|s| s.name == format!("{}{suffix}", f.name))
                            .cloned()
                            .collect(),
                    })
                    .collect()
            })
            .collect();
        common::assert_same_samples_with(&split, &theirs, "", 0);
    }

    #[test]
    fn empty_and_unreadable_directories() {
        let dir = tempfile::tempdir().unwrap();
        let text = openmetrics(dir.path());
        // Only the bad-files gauge of the (empty) scrape.
        assert!(
            text.starts_with("# HELP prometheus_multiproc_bad_files "),
            "{text}"
        );
        assert_eq!(
            openmetrics(Path::new("/nonexistent/prometheus-multiproc")),
            "# EOF\n"
        );
    }
}
