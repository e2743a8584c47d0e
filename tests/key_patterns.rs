//! Whatever way the files share their keys, every series is the sum of its values in all files.
//!
//! The reader avoids work on repeated keys in three ways, each chosen by what the files hold: a
//! key at the same place as in the previous file is recognised without hashing; a run of files
//! read by one thread looks each new key up in its own table; and once files bring nearly only
//! new keys, their keys are added without that lookup, left for the numbering across runs to
//! match. These tests lay out directories that move the reader from one way to another part way
//! through, and check every merged value against sums computed here.

mod support;

use std::collections::HashMap;

use prometheus_multiproc::collector::Collector;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use support::{assert_no_bad_files, family, DirBuilder, Entry};

/// The key of series `n`.
fn entry(n: usize, value: f64) -> Entry {
    Entry::new(
        "pattern",
        "pattern_total",
        &[
            ("path", format!("/item/{n}").as_str()),
            ("shard", &(n % 7).to_string()),
        ],
        "Patterns.",
        value,
        0.0,
    )
}

/// Writes `files` (each a list of series numbers) and checks the merge against the sums.
fn check(files: &[Vec<usize>]) {
    let dir = DirBuilder::new();
    let mut want: HashMap<usize, f64> = HashMap::new();
    for (f, series) in files.iter().enumerate() {
        let entries: Vec<Entry> = series
            .iter()
            .map(|&n| {
                let value = (f + 1) as f64;
                *want.entry(n).or_default() += value;
                entry(n, value)
            })
            .collect();
        dir.entries(&format!("counter_{}.db", 1000 + f), &entries);
    }
    let scrape = Collector::new(dir.path()).collect().expect("collect");
    assert_no_bad_files(&scrape);
    let family = family(&scrape, "pattern").expect("the family");
    assert_eq!(family.samples.len(), want.len(), "one sample per series");
    for sample in &family.samples {
        let path = &sample
            .labels
            .iter()
            .find(|(n, _)| n == "path")
            .expect("path")
            .1;
        let n: usize = path
            .trim_start_matches("/item/")
            .parse()
            .expect("series number");
        assert_eq!(sample.value, want[&n], "series {n}");
    }
}

#[test]
fn distinct_files_then_files_repeating_them_in_another_order() {
    // Four files of new keys (the reader stops looking keys up), then twelve that repeat them,
    // shuffled, mixing the keys of two earlier files each.
    let mut rng = StdRng::seed_from_u64(7);
    let set = |k: usize| (k * 1500..(k + 1) * 1500).collect::<Vec<_>>();
    let mut files: Vec<Vec<usize>> = (0..4).map(set).collect();
    for f in 4..16 {
        let mut keys: Vec<usize> = set(f % 4)
            .into_iter()
            .step_by(2)
            .chain(set((f + 1) % 4).into_iter().skip(1).step_by(2))
            .collect();
        keys.shuffle(&mut rng);
        files.push(keys);
    }
    check(&files);
}

#[test]
fn the_same_keys_in_a_different_order_in_every_file() {
    let mut rng = StdRng::seed_from_u64(11);
    let files: Vec<Vec<usize>> = (0..12)
        .map(|_| {
            let mut keys: Vec<usize> = (0..3000).collect();
            keys.shuffle(&mut rng);
            keys
        })
        .collect();
    check(&files);
}

#[test]
fn the_same_keys_in_the_same_order_then_new_keys_then_both() {
    let same: Vec<usize> = (0..2000).collect();
    let mut files = vec![same.clone(), same.clone(), same.clone()];
    files.extend((1..5).map(|k| (k * 10_000..k * 10_000 + 2000).collect::<Vec<_>>()));
    files.push(same.iter().copied().chain(10_000..12_000).collect());
    files.push(same);
    check(&files);
}

#[test]
fn series_with_too_many_distinct_labels_to_rank_are_ordered_and_summed_all_the_same() {
    // 14 labels of 300 distinct values each: their ranks take more than 128 bits, so the family
    // is sorted by comparing identities. Two files hold every series, in opposite orders.
    let names: Vec<String> = (0..14).map(|l| format!("l{l:02}")).collect();
    let series = |n: usize| -> Vec<(String, String)> {
        names
            .iter()
            .enumerate()
            .map(|(l, name)| (name.clone(), format!("{:03}", (n * 7 + l * 13) % 300)))
            .collect()
    };
    let dir = DirBuilder::new();
    for (f, order) in [
        (1, (0..300).collect::<Vec<_>>()),
        (2, (0..300).rev().collect()),
    ] {
        let entries: Vec<Entry> = order
            .iter()
            .map(|&n| Entry::new("wide", "wide_total", &series(n), "Wide.", f as f64, 0.0))
            .collect();
        dir.entries(&format!("counter_{f}.db"), &entries);
    }
    let scrape = Collector::new(dir.path()).collect().expect("collect");
    assert_no_bad_files(&scrape);
    let family = family(&scrape, "wide").expect("the family");
    assert_eq!(family.samples.len(), 300);
    let mut want: Vec<Vec<(String, String)>> = (0..300).map(series).collect();
    want.sort();
    let got: Vec<Vec<(String, String)>> = family.samples.iter().map(|s| s.labels.clone()).collect();
    assert_eq!(got, want, "sorted by labels");
    assert!(
        family.samples.iter().all(|s| s.value == 3.0),
        "1 + 2 for every series"
    );
}
