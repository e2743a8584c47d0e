//! The scrape path (`Collector::encode_into`, `write_to`) writes a merged family's lines from
//! label text it keeps per distinct name and value, where it can; `collect()` then `encode`
//! writes every line label by label. These tests check that both write the same bytes on
//! inputs Python's writer never produces and where the shortcut must step aside: label names
//! that are not valid (escaped, two of them equal once escaped), sample names that are not
//! valid, label values with quotes, backslashes, newlines, 0 bytes and non-ASCII characters,
//! series of one family with different label names, and samples that the text format moves
//! into families of their own (`_created`, `_gsum`, `_gcount`).

mod support;

use prometheus_multiproc::collector::Collector;
use prometheus_multiproc::exposition::{encode, Format};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{clean_scrape, seed, DirBuilder, Entry};

/// Encodes `dir` both ways, in both formats, and asserts they are equal; returns the text.
fn assert_paths_agree(dir: &DirBuilder) -> String {
    let scrape = Collector::new(dir.path()).collect().expect("collect");
    for format in [Format::Text, Format::OpenMetrics] {
        let mut direct = String::new();
        Collector::new(dir.path())
            .encode_into(format, &mut direct)
            .expect("encode_into");
        let collected = encode(&scrape.families, format);
        assert!(
            direct == collected,
            "encode_into differs from collect + encode ({format:?}):\n--- encode_into ---\n\
             {direct}\n--- collect + encode ---\n{collected}"
        );
    }
    encode(&scrape.families, Format::Text)
}

fn counter(labels: &[(&str, &str)], value: f64) -> Entry {
    Entry::new("odd", "odd_total", labels, "Odd labels.", value, 0.0)
}

#[test]
fn invalid_label_names_are_escaped_and_deduplicated_as_label_by_label() {
    let dir = DirBuilder::new();
    dir.entries(
        "counter_1.db",
        &[
            counter(&[("a-b", "1"), ("a_b", "2")], 1.0),
            counter(&[("a-b", "3"), ("c", "4")], 2.0),
            counter(&[("0x", "5")], 3.0),
            counter(&[("ok", "6")], 4.0),
        ],
    );
    let text = assert_paths_agree(&dir);
    // `a-b` and `a_b` are both written `a_b`: only the first is kept.
    assert!(text.contains("odd_total{a_b=\"1\"} 1.0\n"), "{text}");
    assert!(
        text.contains("odd_total{a_b=\"3\",c=\"4\"} 2.0\n"),
        "{text}"
    );
    assert!(text.contains("odd_total{_x=\"5\"} 3.0\n"), "{text}");
}

#[test]
fn label_values_are_escaped_as_label_by_label() {
    let dir = DirBuilder::new();
    dir.entries(
        "counter_1.db",
        &[
            counter(&[("v", "quote \" backslash \\ newline \n end")], 1.0),
            counter(&[("v", "caf\u{e9} \u{1f600}")], 2.0),
            counter(&[("v", "")], 3.0),
            counter(&[("v", "plain")], 4.0),
        ],
    );
    let text = assert_paths_agree(&dir);
    assert!(
        text.contains("odd_total{v=\"quote \\\" backslash \\\\ newline \\n end\"} 1.0\n"),
        "{text}"
    );
    assert!(text.contains("odd_total{v=\"\"} 3.0\n"), "{text}");
}

#[test]
fn zero_bytes_in_names_and_values_are_written_as_label_by_label() {
    let dir = DirBuilder::new();
    dir.entries(
        "counter_1.db",
        &[
            counter(&[("v", "a\0b")], 1.0),
            counter(&[("v", "a")], 2.0),
            Entry::new("odd", "odd\0total", &[("v", "a")], "Odd labels.", 3.0, 0.0),
        ],
    );
    let text = assert_paths_agree(&dir);
    assert!(text.contains("odd_total{v=\"a\0b\"} 1.0\n"), "{text}");
}

#[test]
fn series_with_different_label_names_and_invalid_sample_names() {
    let dir = DirBuilder::new();
    dir.entries(
        "counter_1.db",
        &[
            counter(&[], 1.0),
            counter(&[("a", "1")], 2.0),
            counter(&[("a", "1"), ("b", "2")], 3.0),
            counter(&[("b", "2")], 4.0),
            Entry::new("odd", "odd-total", &[("a", "1")], "Odd labels.", 5.0, 0.0),
            Entry::new("odd", "0dd_total", &[("a", "1")], "Odd labels.", 6.0, 0.0),
        ],
    );
    let text = assert_paths_agree(&dir);
    // Samples by labels, then by name as stored (`0dd_total` < `odd-total` < `odd_total`).
    assert!(
        text.contains(
            "odd_total 1.0\n_dd_total{a=\"1\"} 6.0\nodd_total{a=\"1\"} 5.0\n\
             odd_total{a=\"1\"} 2.0\nodd_total{a=\"1\",b=\"2\"} 3.0\nodd_total{b=\"2\"} 4.0\n"
        ),
        "{text}"
    );
}

#[test]
fn samples_the_text_format_moves_out_of_their_family() {
    let dir = DirBuilder::new();
    let g = |sample: &str, labels: &[(&str, &str)], v| {
        Entry::new("moved", sample, labels, "Moved.", v, 0.0)
    };
    dir.entries(
        "gauge_max_1.db",
        &[
            g("moved", &[("a", "1")], 1.0),
            g("moved_gsum", &[("a", "1")], 2.0),
            g("moved_created", &[("a", "1")], 3.0),
            g("moved_gcount", &[("a", "2")], 4.0),
            g("moved", &[("a", "2")], 5.0),
        ],
    );
    let text = assert_paths_agree(&dir);
    assert!(
        text.contains("# TYPE moved_gsum gauge\nmoved_gsum{a=\"1\"} 2.0\n"),
        "{text}"
    );
}

/// Random directories of every type, label names and values drawn from pools of valid,
/// invalid and special strings, several files each.
#[test]
fn random_directories_are_written_the_same_both_ways() {
    let seed = seed("ENCODE_PATHS_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    const NAMES: [&str; 8] = ["a", "b", "method", "path", "a-b", "a_b", "pid", "le"];
    const VALUES: [&str; 10] = [
        "", "1", "2", "GET", "/x/1", "/x/2", "q\"", "b\\s", "n\nl", "\u{e9}",
    ];
    const FILES: [(&str, &str); 6] = [
        ("counter", ""),
        ("gauge_all", "gauge"),
        ("gauge_max", "gauge"),
        ("gauge_livesum", "gauge"),
        ("summary", "summary"),
        ("histogram", "histogram"),
    ];
    for round in 0..60 {
        let dir = DirBuilder::new();
        for file in 0..rng.gen_range(1..4) {
            let (prefix, kind) = FILES[rng.gen_range(0..FILES.len())];
            let mut entries = Vec::new();
            for _ in 0..rng.gen_range(1..40) {
                let family = format!("{}_{}", kind.replace('_', ""), rng.gen_range(0..2));
                let suffix = match kind {
                    "" => "_total",
                    "summary" => ["_sum", "_count"][rng.gen_range(0..2)],
                    "histogram" => ["_bucket", "_sum", "_count"][rng.gen_range(0..3)],
                    _ => ["", "", "_gsum"][rng.gen_range(0..3)],
                };
                let mut labels: Vec<(String, String)> = (0..rng.gen_range(0..4))
                    .map(|_| {
                        // A histogram's `le` must be a number: only its buckets get one.
                        let names = match kind {
                            "histogram" => &NAMES[..6],
                            _ => &NAMES[..],
                        };
                        let name = names[rng.gen_range(0..names.len())];
                        let value = VALUES[rng.gen_range(0..VALUES.len())];
                        (name.to_owned(), value.to_owned())
                    })
                    .collect();
                if suffix == "_bucket" {
                    let le = ["0.1", "1.0", "+Inf"][rng.gen_range(0..3)];
                    labels.retain(|(n, _)| n != "le");
                    labels.push(("le".to_owned(), le.to_owned()));
                }
                let value = f64::from(rng.gen_range(0..100u32)) / 4.0;
                entries.push(Entry::new(
                    &family,
                    &format!("{family}{suffix}"),
                    &labels,
                    "Random.",
                    value,
                    0.0,
                ));
            }
            dir.entries(&format!("{prefix}_{}.db", 100 + file), &entries);
        }
        println!("round {round}");
        clean_scrape(dir.path());
        assert_paths_agree(&dir);
    }
}
