//! One bad file never fails a scrape: each test lays out healthy files, as Python writes them,
//! next to one bad file, and checks that collecting does not panic, serves every healthy sample
//! with its exact value, leaves the bad file out whole, lists it with its path, reason and offset,
//! and counts it in the `prometheus_multiproc_bad_files` gauge.

mod support;

use std::fs;

use prometheus_multiproc::collector::{merge_files, BadFileReason, MetricFamily, Scrape};
use prometheus_multiproc::format::layout;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{
    assert_gauge_matches_bad_files, assert_no_bad_files, bad_file, bad_files_gauge, file_bytes,
    histogram, seed, summary, used_of, value, value_in, DirBuilder, Entry, DEFAULT_BUCKETS,
};

// ------------------------------------------------------------------ healthy files

/// Files of every type, as Python's writer leaves them.
fn healthy_files() -> Vec<(String, Vec<u8>)> {
    let req = |path: &str, v: f64| {
        Entry::new(
            "healthy_requests",
            "healthy_requests_total",
            &[("path", path)],
            "Requests.",
            v,
            0.0,
        )
    };
    let inflight = |v: f64| {
        Entry::new::<&str, &str>(
            "healthy_inflight",
            "healthy_inflight",
            &[],
            "In flight.",
            v,
            0.0,
        )
    };
    vec![
        (
            "counter_100.db".into(),
            file_bytes(&[req("/", 3.0), req("/a", 4.0)]),
        ),
        ("counter_200.db".into(), file_bytes(&[req("/", 5.0)])),
        ("gauge_livesum_100.db".into(), file_bytes(&[inflight(2.0)])),
        ("gauge_livesum_200.db".into(), file_bytes(&[inflight(3.0)])),
        (
            "gauge_all_100.db".into(),
            file_bytes(&[Entry::new::<&str, &str>(
                "healthy_temp",
                "healthy_temp",
                &[],
                "Temperature.",
                20.5,
                0.0,
            )]),
        ),
        (
            "histogram_100.db".into(),
            file_bytes(&histogram(
                "healthy_latency",
                "Latency.",
                &[],
                &DEFAULT_BUCKETS,
                &[0.25, 4.0],
            )),
        ),
        (
            "summary_200.db".into(),
            file_bytes(&summary("healthy_size", "Size.", &[], &[512.0])),
        ),
    ]
}

const HEALTHY_FILES: usize = 7;

/// Checks every healthy sample, with its exact value.
fn assert_healthy_families(families: &[MetricFamily]) {
    type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
    let expect: [Expected; 11] = [
        ("healthy_requests_total", &[("path", "/")], 8.0),
        ("healthy_requests_total", &[("path", "/a")], 4.0),
        ("healthy_inflight", &[], 5.0),
        ("healthy_temp", &[("pid", "100")], 20.5),
        ("healthy_latency_bucket", &[("le", "0.25")], 1.0),
        ("healthy_latency_bucket", &[("le", "5.0")], 2.0),
        ("healthy_latency_bucket", &[("le", "+Inf")], 2.0),
        ("healthy_latency_count", &[], 2.0),
        ("healthy_latency_sum", &[], 4.25),
        ("healthy_size_count", &[], 1.0),
        ("healthy_size_sum", &[], 512.0),
    ];
    for (name, labels, v) in expect {
        assert_eq!(
            value_in(families, name, labels),
            Some(v),
            "healthy sample {name}{labels:?}"
        );
    }
    let healthy: usize = families
        .iter()
        .filter(|f| f.name.starts_with("healthy_"))
        .map(|f| f.samples.len())
        .sum();
    // 2 + 1 + 1 + (15 buckets + count + sum) + 2
    assert_eq!(healthy, 23, "healthy samples");
}

fn healthy_dir() -> DirBuilder {
    let dir = DirBuilder::new();
    for (name, bytes) in healthy_files() {
        dir.bytes(&name, &bytes);
    }
    dir
}

/// Checks the scrape: healthy files all served, `name` the only bad file, with this reason and
/// offset, counted in the gauge.
fn assert_only_bad(
    dir: &DirBuilder,
    scrape: &Scrape,
    name: &str,
    reason: BadFileReason,
    offset: Option<usize>,
) {
    assert_healthy_families(&scrape.families);
    let path = dir.join(name);
    let bad = bad_file(scrape, &path)
        .unwrap_or_else(|| panic!("{name} not reported; bad files: {:?}", scrape.bad_files));
    assert_eq!(bad.reason, reason, "{bad:?}");
    assert_eq!(bad.offset, offset, "{bad:?}");
    assert!(!bad.message.is_empty());
    assert!(bad.to_string().contains(name), "{bad}");
    assert_eq!(scrape.bad_files.len(), 1, "{:?}", scrape.bad_files);
    assert_eq!(bad_files_gauge(scrape, reason), Some(1.0));
    assert_gauge_matches_bad_files(scrape);
    assert_eq!(scrape.files_read, HEALTHY_FILES);
}

/// Collects the healthy files plus `name` holding `bytes`, and checks the report.
fn check_bad_bytes(name: &str, bytes: &[u8], reason: BadFileReason, offset: Option<usize>) {
    let dir = healthy_dir();
    dir.bytes(name, bytes);
    let scrape = dir.collect();
    assert_only_bad(&dir, &scrape, name, reason, offset);
}

/// A victim counter file of three entries for the healthy family (so that any of its entries
/// leaking into the merge would change the healthy sums) and the offsets of its entries.
fn victim() -> (Vec<u8>, Vec<usize>) {
    let bytes = file_bytes(&[
        Entry::new(
            "healthy_requests",
            "healthy_requests_total",
            &[("path", "/")],
            "Requests.",
            1000.0,
            0.0,
        ),
        Entry::new(
            "healthy_requests",
            "healthy_requests_total",
            &[("path", "/victim")],
            "Requests.",
            2000.0,
            0.0,
        ),
        Entry::new::<&str, &str>("victim", "victim_total", &[], "Victim.", 3000.0, 0.0),
    ]);
    let offsets = layout::entries(&bytes)
        .unwrap()
        .map(|e| e.unwrap().offset)
        .collect();
    (bytes, offsets)
}

fn set_i32(bytes: &mut [u8], at: usize, v: i32) {
    bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

// ------------------------------------------------------------------ truncation

#[test]
fn file_cut_at_any_point_before_used_is_reported_not_half_merged() {
    let (full, _) = victim();
    let used = used_of(&full);
    let dir = healthy_dir();
    for len in 0..used {
        dir.bytes("counter_9.db", &full[..len]);
        let scrape = dir.collect();
        let reason = if len == 0 {
            BadFileReason::Empty
        } else {
            BadFileReason::Truncated
        };
        assert_only_bad(&dir, &scrape, "counter_9.db", reason, Some(0));
        assert_eq!(value(&scrape, "victim_total", &[]), None, "cut at {len}");
    }
    // Cut at or after `used`: nothing is missing.
    for len in [used, used + 1, used + 8, 4096, full.len()] {
        dir.bytes("counter_9.db", &full[..len]);
        let scrape = dir.collect();
        assert_no_bad_files(&scrape);
        assert_eq!(scrape.files_read, HEALTHY_FILES + 1);
        assert_eq!(
            value(&scrape, "healthy_requests_total", &[("path", "/")]),
            Some(1008.0),
            "cut at {len}"
        );
        assert_eq!(
            value(&scrape, "healthy_requests_total", &[("path", "/victim")]),
            Some(2000.0)
        );
        assert_eq!(value(&scrape, "victim_total", &[]), Some(3000.0));
    }
}

#[test]
fn zero_byte_file_is_reported_as_empty() {
    check_bad_bytes("counter_9.db", b"", BadFileReason::Empty, Some(0));
    // A live gauge file is skipped only when it is missing, not when it is empty.
    check_bad_bytes("gauge_livesum_9.db", b"", BadFileReason::Empty, Some(0));
    check_bad_bytes("histogram_9.db", b"", BadFileReason::Empty, Some(0));
}

#[test]
fn used_header_beyond_the_file_is_reported_as_truncated() {
    let (full, _) = victim();
    for used in [full.len() + 1, full.len() + 8, 1 << 20, i32::MAX as usize] {
        let mut bytes = full.clone();
        set_i32(&mut bytes, 0, used as i32);
        check_bad_bytes("counter_9.db", &bytes, BadFileReason::Truncated, Some(0));
    }
    // A header alone, shorter than the 8 bytes it takes.
    check_bad_bytes(
        "counter_9.db",
        &full[..4],
        BadFileReason::Truncated,
        Some(0),
    );
}

#[test]
fn negative_or_sub_header_used_is_reported_as_corrupt() {
    let (full, _) = victim();
    for used in [-1, -8, i32::MIN, 1, 7] {
        let mut bytes = full.clone();
        set_i32(&mut bytes, 0, used);
        check_bad_bytes("counter_9.db", &bytes, BadFileReason::Corrupt, Some(0));
    }
}

#[test]
fn fresh_zero_filled_file_is_not_bad() {
    // A writer that created its file but no entry yet (or a crash right after creating it).
    let dir = healthy_dir();
    dir.bytes("counter_9.db", &vec![0u8; layout::INITIAL_FILE_SIZE]);
    dir.bytes("gauge_all_9.db", &[8, 0, 0, 0, 0, 0, 0, 0]);
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_healthy_families(&scrape.families);
    assert_eq!(scrape.files_read, HEALTHY_FILES + 2);
}

#[test]
fn garbage_after_used_is_ignored() {
    let (mut bytes, _) = victim();
    let used = used_of(&bytes);
    for b in &mut bytes[used..used + 64] {
        *b = 0xa5;
    }
    let dir = healthy_dir();
    dir.bytes("counter_9.db", &bytes);
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_eq!(value(&scrape, "victim_total", &[]), Some(3000.0));
}

// ------------------------------------------------------------------ bad entries

#[test]
fn negative_key_length_is_reported_at_its_entry() {
    let (full, offsets) = victim();
    for &at in &offsets {
        for key_len in [-1, -4096, i32::MIN] {
            let mut bytes = full.clone();
            set_i32(&mut bytes, at, key_len);
            check_bad_bytes("counter_9.db", &bytes, BadFileReason::Corrupt, Some(at));
        }
    }
}

#[test]
fn key_length_near_i32_max_does_not_overflow() {
    let (full, offsets) = victim();
    for &at in &offsets {
        for key_len in [
            i32::MAX,
            i32::MAX - 1,
            i32::MAX - 3,
            i32::MAX - 19,
            i32::MAX - 20,
        ] {
            let mut bytes = full.clone();
            set_i32(&mut bytes, at, key_len);
            check_bad_bytes("counter_9.db", &bytes, BadFileReason::Corrupt, Some(at));
        }
    }
}

#[test]
fn key_length_leaving_no_room_for_the_value_is_reported() {
    // Python only checks that the key ends before `used`; the value and timestamp must fit too.
    let (full, offsets) = victim();
    let last = *offsets.last().unwrap();
    let used = used_of(&full);
    let mut bytes = full.clone();
    set_i32(&mut bytes, last, (used - last - 4) as i32);
    check_bad_bytes("counter_9.db", &bytes, BadFileReason::Corrupt, Some(last));
}

#[test]
fn somejunk_over_the_first_entry_is_reported() {
    // client_python's test_corruption_detected.
    let (mut bytes, _) = victim();
    bytes[8..16].copy_from_slice(b"somejunk");
    check_bad_bytes("counter_9.db", &bytes, BadFileReason::Corrupt, Some(8));
}

/// Replaces `from` in the key of the entry at `at` (same length) with `to`; returns the offset
/// in the file of the replaced bytes.
fn patch_key(bytes: &mut [u8], at: usize, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let key_len = i32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let key = &bytes[at + 4..at + 4 + key_len];
    let pos = key
        .windows(from.len())
        .position(|w| w == from)
        .expect("bytes to patch in key");
    let file_pos = at + 4 + pos;
    bytes[file_pos..file_pos + to.len()].copy_from_slice(to);
    file_pos
}

#[test]
fn invalid_utf8_in_a_key_is_reported_at_the_bad_byte() {
    let (full, offsets) = victim();
    for bad in [&b"\xff"[..], b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"] {
        let mut bytes = full.clone();
        let from = &b"/victim"[..bad.len()];
        let pos = patch_key(&mut bytes, offsets[1], from, bad);
        check_bad_bytes("counter_9.db", &bytes, BadFileReason::Corrupt, Some(pos));
    }
}

/// A file whose second entry has this raw key (between two good entries).
fn file_with_raw_key(key: &str) -> (Vec<u8>, usize) {
    let good = |n: &str, v| Entry::new::<&str, &str>(n, &format!("{n}_total"), &[], "h", v, 0.0);
    let bytes = file_bytes(&[
        good("victim_a", 1.0),
        Entry::raw(key, 2.0, 0.0),
        good("victim_b", 3.0),
    ]);
    let at = layout::entries(&bytes)
        .unwrap()
        .nth(1)
        .unwrap()
        .unwrap()
        .offset;
    (bytes, at)
}

#[test]
fn key_that_is_not_json_is_reported() {
    // `abc` is the key client_python's own mmap_dict tests use.
    let (bytes, at) = file_with_raw_key("abc");
    check_bad_bytes("counter_9.db", &bytes, BadFileReason::Corrupt, Some(at + 4));
    for key in [
        "",
        "[",
        "[\"a\", \"b\", {}, \"c\"",
        "[\"a\", \"b\", {}, \"c\"] trailing",
        "[\"a\", \"b\", {\"x\": 1}, \"c\"]",
        "[\"a\", \"b\", {}, \"c\", \"extra\"]",
        "[\"a\", \"b\", {}]",
        "[1, 2, 3, 4]",
        "{\"a\": \"b\"}",
        "[\"a\", \"b\", {}, \"\\ud800\"]",
        "[\"a\", \"b\", {}, \"c\\q\"]",
        "[\"a\", \"b\", {}, \"raw\u{1}control\"]",
    ] {
        let (bytes, at) = file_with_raw_key(key);
        let dir = healthy_dir();
        dir.bytes("counter_9.db", &bytes);
        let scrape = dir.collect();
        assert_healthy_families(&scrape.families);
        let bad = bad_file(&scrape, &dir.join("counter_9.db"))
            .unwrap_or_else(|| panic!("{key:?} not reported"));
        assert_eq!(bad.reason, BadFileReason::Corrupt, "{key:?}");
        let off = bad.offset.unwrap();
        assert!(
            (at + 4..=at + 4 + key.len()).contains(&off),
            "{key:?}: offset {off} outside the key at {}",
            at + 4
        );
        assert_gauge_matches_bad_files(&scrape);
        // The good entries of the bad file are left out with it.
        assert_eq!(value(&scrape, "victim_a_total", &[]), None);
        assert_eq!(value(&scrape, "victim_b_total", &[]), None);
    }
}

#[test]
fn histogram_bucket_with_non_numeric_le_is_reported() {
    let mut entries = histogram("victim_h", "h", &[], &DEFAULT_BUCKETS, &[1.0]);
    entries[3] = Entry::new(
        "victim_h",
        "victim_h_bucket",
        &[("le", "fast")],
        "h",
        1.0,
        0.0,
    );
    let bytes = file_bytes(&entries);
    let at = layout::entries(&bytes)
        .unwrap()
        .nth(3)
        .unwrap()
        .unwrap()
        .offset;
    check_bad_bytes(
        "histogram_9.db",
        &bytes,
        BadFileReason::Corrupt,
        Some(at + 4),
    );
}

#[test]
fn non_numeric_le_on_a_counter_is_only_a_label() {
    // Python parses `le` only in histogram files.
    let dir = healthy_dir();
    dir.file(
        "counter_9.db",
        &[("victim", "victim_total", &[("le", "fast")], "h", 4.0, 0.0)],
    );
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_healthy_families(&scrape.families);
    assert_eq!(value(&scrape, "victim_total", &[("le", "fast")]), Some(4.0));
}

// ------------------------------------------------------------------ random damage

/// Victim files for random damage: their families never share a name with a healthy one, so
/// that a damaged but still valid victim cannot change a healthy value.
fn victims() -> Vec<(&'static str, Vec<u8>)> {
    let e = |m: &str, s: &str, l: &[(&str, &str)], v| Entry::new(m, s, l, "Victim help.", v, 0.0);
    vec![
        (
            "counter_9.db",
            file_bytes(&[
                e("victim_c", "victim_c_total", &[("path", "/x")], 1.0),
                e("victim_c", "victim_c_total", &[("path", "/y")], 2.0),
                e("victim_d", "victim_d_total", &[], 3.0),
            ]),
        ),
        (
            "gauge_liveall_9.db",
            file_bytes(&[
                e("victim_g", "victim_g", &[("k", "\u{e9}\u{1f600}")], 1.5),
                e("victim_g", "victim_g", &[("k", "b")], -2.0),
            ]),
        ),
        (
            "histogram_9.db",
            file_bytes(&histogram(
                "victim_h",
                "Victim help.",
                &[("m", "GET")],
                &[0.5, 1.0, f64::INFINITY],
                &[0.7],
            )),
        ),
        (
            "summary_9.db",
            file_bytes(&summary("victim_s", "Victim help.", &[], &[3.0, 4.0])),
        ),
    ]
}

#[test]
fn random_byte_flips_never_panic_nor_hide_healthy_files() {
    let seed = seed("CORRUPT_FILES_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let healthy = healthy_files();
    let victims = victims();
    let (mut reported, mut served) = (0u32, 0u32);
    for iteration in 0..2000 {
        let (name, clean) = &victims[rng.gen_range(0..victims.len())];
        let used = used_of(clean);
        // Mostly the bytes in use plus a little of the zeros after them.
        let len = used + rng.gen_range(0..=24);
        let mut bytes = clean[..len].to_vec();
        match rng.gen_range(0..10) {
            // Whole garbage of any length.
            0 => {
                let n = rng.gen_range(0..256);
                bytes = (0..n).map(|_| rng.gen()).collect();
            }
            // Flips, then a cut.
            1 => {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] ^= 1 << rng.gen_range(0..8);
                bytes.truncate(rng.gen_range(0..=bytes.len()));
            }
            // One to four flipped bits or replaced bytes.
            _ => {
                for _ in 0..rng.gen_range(1..=4) {
                    let at = rng.gen_range(0..bytes.len());
                    if rng.gen_bool(0.5) {
                        bytes[at] ^= 1 << rng.gen_range(0..8);
                    } else {
                        bytes[at] = rng.gen();
                    }
                }
            }
        }
        let mut files: Vec<(&str, &[u8])> = healthy
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        files.insert(rng.gen_range(0..=files.len()), (name, &bytes));
        let (families, bad) = merge_files(&files);
        let ctx = format!("seed {seed}, iteration {iteration}, {name}");
        assert!(bad.len() <= 1, "{ctx}: {bad:?}");
        if let Some(b) = bad.first() {
            assert_eq!(b.path.to_str(), Some(*name), "{ctx}");
            assert!(b.offset.is_some_and(|o| o <= bytes.len()), "{ctx}: {b:?}");
            assert!(!b.message.is_empty(), "{ctx}");
            reported += 1;
        } else {
            served += 1;
        }
        // A healthy sample is never lost nor changed, whatever the victim holds.
        let healthy_check = std::panic::catch_unwind(|| assert_healthy_families(&families));
        assert!(healthy_check.is_ok(), "{ctx}: healthy samples changed");
    }
    eprintln!("random_byte_flips: {reported} victims reported, {served} served");
    assert!(reported > 0 && served > 0);
}

// ------------------------------------------------------------------ bad directory entries

#[test]
fn directory_named_like_a_db_file_is_reported_as_not_a_file() {
    for name in ["counter_7.db", "x.db"] {
        let dir = healthy_dir();
        fs::create_dir(dir.join(name)).unwrap();
        fs::write(dir.join(name).join("counter_1.db"), b"").unwrap();
        let scrape = dir.collect();
        assert_only_bad(&dir, &scrape, name, BadFileReason::NotAFile, None);
    }
}

#[test]
fn unreadable_file_is_reported_as_unreadable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = healthy_dir();
    dir.file(
        "counter_9.db",
        &[("victim", "victim_total", &[], "h", 3.0, 0.0)],
    );
    let path = dir.join("counter_9.db");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    let blocked = fs::read(&path).is_err();
    let scrape = dir.collect();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert_healthy_families(&scrape.families);
    assert_gauge_matches_bad_files(&scrape);
    if blocked {
        assert_only_bad(
            &dir,
            &scrape,
            "counter_9.db",
            BadFileReason::Unreadable,
            None,
        );
    } else {
        // Root (or CAP_DAC_OVERRIDE) reads a mode-000 file: nothing to report then.
        eprintln!("SKIPPED: unreadable-file check, this user can read a mode-000 file");
        assert_no_bad_files(&scrape);
        assert_eq!(value(&scrape, "victim_total", &[]), Some(3.0));
    }
}

#[test]
fn files_of_unknown_type_are_reported_and_siblings_served() {
    let names = [
        "info_1.db",
        "enum_1.db",
        "gauge_bogus_1.db",
        "gauge_1.db",
        "counter.db",
        "Counter_1.db",
    ];
    let dir = healthy_dir();
    // Valid contents: only the name is wrong.
    let (bytes, _) = victim();
    for name in names {
        dir.bytes(name, &bytes);
    }
    let scrape = dir.collect();
    assert_healthy_families(&scrape.families);
    assert_eq!(
        scrape.bad_files.len(),
        names.len(),
        "{:?}",
        scrape.bad_files
    );
    for name in names {
        let bad =
            bad_file(&scrape, &dir.join(name)).unwrap_or_else(|| panic!("{name} not reported"));
        assert_eq!(bad.reason, BadFileReason::UnknownType, "{name}");
        assert_eq!(bad.offset, None, "{name}");
    }
    assert_eq!(
        bad_files_gauge(&scrape, BadFileReason::UnknownType),
        Some(names.len() as f64)
    );
    assert_gauge_matches_bad_files(&scrape);
    assert_eq!(scrape.files_read, HEALTHY_FILES);
    // Sorted by path.
    let paths: Vec<_> = scrape.bad_files.iter().map(|b| b.path.clone()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
}

#[test]
fn hidden_and_non_db_files_are_ignored() {
    let dir = healthy_dir();
    dir.bytes(".x.db", b"garbage");
    dir.bytes(".counter_9.db", b"");
    dir.bytes("counter_9.db.tmp", b"garbage");
    dir.bytes("notes.txt", b"garbage");
    dir.bytes("counter_9.dbx", b"");
    fs::create_dir(dir.join(".hidden.db")).unwrap();
    let scrape = dir.collect();
    assert_no_bad_files(&scrape);
    assert_healthy_families(&scrape.families);
    assert_eq!(scrape.files_read, HEALTHY_FILES);
}

#[test]
fn bad_files_of_every_reason_are_counted_by_reason() {
    let dir = healthy_dir();
    let (full, _) = victim();
    let mut corrupt = full.clone();
    corrupt[8..16].copy_from_slice(b"somejunk");
    dir.bytes("counter_1.db", b"");
    dir.bytes("counter_2.db", &full[..40]);
    dir.bytes("counter_3.db", &full[..3]);
    dir.bytes("counter_4.db", &corrupt);
    dir.bytes("gauge_bogus_5.db", &full);
    fs::create_dir(dir.join("summary_6.db")).unwrap();
    let scrape = dir.collect();
    assert_healthy_families(&scrape.families);
    let want = [
        (BadFileReason::Empty, 1.0),
        (BadFileReason::Truncated, 2.0),
        (BadFileReason::Corrupt, 1.0),
        (BadFileReason::UnknownType, 1.0),
        (BadFileReason::NotAFile, 1.0),
        (BadFileReason::Unreadable, 0.0),
    ];
    for (reason, n) in want {
        assert_eq!(bad_files_gauge(&scrape, reason), Some(n), "{reason}");
    }
    assert_eq!(scrape.bad_files.len(), 6);
    assert_gauge_matches_bad_files(&scrape);
    assert_eq!(scrape.files_read, HEALTHY_FILES);
}

#[test]
fn fifo_named_like_a_db_file_does_not_hang_the_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("counter_9.db");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: mkfifo is not available");
        return;
    }
    let key = prometheus_multiproc::format::key::encode_key("c", "c_total", &[("a", "1")], "h");
    let healthy = prometheus_multiproc::format::layout::write_file([(key.as_bytes(), 4.0, 0.0)]);
    std::fs::write(dir.path().join("counter_1.db"), healthy).unwrap();
    let path = dir.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(prometheus_multiproc::collector::Collector::new(path).collect());
    });
    let scrape = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the scrape hung on a FIFO")
        .unwrap();
    assert_eq!(scrape.bad_files.len(), 1);
    assert_eq!(scrape.bad_files[0].path, fifo);
    assert_eq!(
        scrape.bad_files[0].reason,
        prometheus_multiproc::collector::BadFileReason::NotAFile
    );
    let c = scrape.families.iter().find(|f| f.name == "c").unwrap();
    assert_eq!(c.samples[0].value, 4.0);
}
