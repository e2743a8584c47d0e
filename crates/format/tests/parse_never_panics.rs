//! The parser's promises, checked against arbitrary, truncated and corrupted bytes: it never
//! panics, never reads past `used` or past the bytes it was given, and every error points at a
//! byte offset inside what it was given.
//!
//! Each test is named after the failure it guards against.

use prometheus_multiproc_format::key::{self, Key};
use prometheus_multiproc_format::layout::{self, ErrorKind, LayoutError};
use proptest::prelude::*;

/// What a walk over a file's bytes found.
#[derive(Debug)]
struct Walk {
    /// `used` as the iterator reported it; `None` when the header was rejected.
    used: Option<usize>,
    /// (key, value bits, timestamp bits) of every good entry, in file order.
    entries: Vec<(Vec<u8>, u64, u64)>,
    /// The error that ended the walk, if any.
    error: Option<LayoutError>,
}

/// Walks `data` as a reader does, decodes every key, and asserts every bound the parser
/// promises along the way.
fn walk(data: &[u8]) -> Walk {
    let mut it = match layout::entries(data) {
        Ok(it) => it,
        Err(e) => {
            check_error(&e, data.len());
            assert!(
                matches!(
                    e.kind,
                    ErrorKind::Empty
                        | ErrorKind::ShortHeader { .. }
                        | ErrorKind::InvalidUsed { .. }
                        | ErrorKind::UsedBeyondEnd { .. }
                ),
                "header error of an entry kind: {e:?}"
            );
            assert_eq!(e.offset, 0, "header errors are at offset 0: {e:?}");
            return Walk {
                used: None,
                entries: Vec::new(),
                error: Some(e),
            };
        }
    };
    let used = it.used();
    assert!(used >= layout::HEADER_LEN, "used {used} inside the header");
    assert!(
        used <= data.len(),
        "used {used} past the {} bytes given",
        data.len()
    );
    let mut entries = Vec::new();
    let mut error = None;
    let mut expected_offset = layout::HEADER_LEN;
    for item in it.by_ref() {
        match item {
            Ok(e) => {
                let len = e.key.len();
                assert_eq!(e.offset, expected_offset, "entries are back to back");
                assert!(e.offset >= layout::HEADER_LEN);
                assert_eq!(e.value_offset, e.offset + 4 + layout::padded_key_len(len));
                assert!(
                    e.value_offset + 16 <= used,
                    "value past used: {e:?} used {used}"
                );
                assert!(e.offset + layout::entry_len(len) <= used);
                // The entry is exactly the bytes it claims to come from.
                let key_len = i32::from_ne_bytes(data[e.offset..e.offset + 4].try_into().unwrap());
                assert_eq!(key_len as usize, len);
                assert_eq!(e.key, &data[e.offset + 4..e.offset + 4 + len]);
                let value = &data[e.value_offset..e.value_offset + 8];
                let timestamp = &data[e.value_offset + 8..e.value_offset + 16];
                assert_eq!(e.value.to_ne_bytes(), value);
                assert_eq!(e.timestamp.to_ne_bytes(), timestamp);
                check_key(e.key);
                entries.push((e.key.to_vec(), e.value.to_bits(), e.timestamp.to_bits()));
                expected_offset = e.offset + layout::entry_len(len);
            }
            Err(e) => {
                check_error(&e, data.len());
                assert_eq!(e.offset, expected_offset, "an entry error is at the entry");
                assert!(e.offset < used);
                assert!(
                    matches!(
                        e.kind,
                        ErrorKind::NegativeKeyLength { .. } | ErrorKind::EntryBeyondUsed { .. }
                    ),
                    "entry error of a header kind: {e:?}"
                );
                assert_eq!(e.reason(), "corrupt");
                error = Some(e);
                break;
            }
        }
    }
    assert!(it.next().is_none(), "the iterator goes on after an error");
    if error.is_none() {
        assert_eq!(
            expected_offset, used,
            "good entries cover exactly the used bytes"
        );
    }
    Walk {
        used: Some(used),
        entries,
        error,
    }
}

fn check_error(e: &LayoutError, len: usize) {
    assert!(
        e.offset <= len,
        "error offset {} past {len} bytes: {e:?}",
        e.offset
    );
    assert!(["empty", "truncated", "corrupt"].contains(&e.reason()));
    assert!(!e.to_string().is_empty());
}

/// Decodes a key; when it decodes, encoding the result and decoding again gives it back.
fn check_key(bytes: &[u8]) -> Option<Key> {
    match key::decode_key(bytes) {
        Ok(k) => {
            assert!(
                k.labels.windows(2).all(|w| w[0].0 < w[1].0),
                "labels sorted and unique: {k:?}"
            );
            let again = key::encode_key(&k.metric, &k.sample, &k.labels, &k.help);
            assert_eq!(key::decode_key(again.as_bytes()).as_ref(), Ok(&k));
            Some(k)
        }
        Err(e) => {
            assert!(
                e.offset <= bytes.len(),
                "key error {e} past {} bytes",
                bytes.len()
            );
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

/// A file with entries of every padding length (1..=8 spaces), an empty key, keys with
/// escapes and one key that is not valid UTF-8.
fn sample_entries() -> Vec<(Vec<u8>, f64, f64)> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for extra in 0..8 {
        let help = "h".repeat(extra);
        keys.push(
            key::encode_key(
                "requests",
                "requests_total",
                &[("path", "/"), ("method", "GET")],
                &help,
            )
            .into_bytes(),
        );
    }
    keys.push(Vec::new());
    keys.push(
        key::encode_key("h", "h_bucket", &[("le", "+Inf"), ("é", "\"\\\n😀")], "").into_bytes(),
    );
    keys.push(b"[\"a\", \"a\", {}, \"\xff\"]".to_vec());
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            (
                k.clone(),
                i as f64 * 1.5,
                if i % 2 == 0 { 0.0 } else { 1.7e9 },
            )
        })
        .collect()
}

fn sample_file() -> (Vec<u8>, usize, Vec<usize>) {
    let entries = sample_entries();
    let file = layout::write_file(entries.iter().map(|(k, v, t)| (k.as_slice(), *v, *t)));
    let used = layout::used(&file).unwrap();
    let offsets = layout::entries(&file)
        .unwrap()
        .map(|e| e.unwrap().offset)
        .collect();
    (file, used, offsets)
}

fn expected_entries() -> Vec<(Vec<u8>, u64, u64)> {
    sample_entries()
        .into_iter()
        .map(|(k, v, t)| (k, v.to_bits(), t.to_bits()))
        .collect()
}

fn put_i32(data: &mut [u8], at: usize, v: i32) {
    data[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Bytes that a JSON key is made of, and bytes that break it, so that random keys get past
/// the first character often.
fn key_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        6 => prop::sample::select(&b"[]{}\",: \\u/bfnrt0d8Ac9aE"[..]),
        2 => any::<u8>(),
        1 => prop::sample::select(&[0u8, 0x1f, 0x7f, 0xc3, 0xa9, 0xf0, 0x9f, 0x98, 0x80, 0xed, 0xa0, 0xff][..]),
    ]
}

/// A valid key's bytes with a few bytes replaced, inserted or removed.
fn mutated_key() -> impl Strategy<Value = Vec<u8>> {
    let base = prop::sample::select(vec![
        key::encode_key("a", "a_total", &[("x", "1"), ("y", "é")], "Help 😀").into_bytes(),
        key::encode_key::<&str, &str>("m", "m", &[], "").into_bytes(),
        br#" [ "m" , "s" , { "b" : "\ud83d\ude00" , "a" : "\/\"" } , "h" ] "#.to_vec(),
    ]);
    (
        base,
        prop::collection::vec((any::<prop::sample::Index>(), key_byte(), 0u8..3), 1..4),
    )
        .prop_map(|(mut k, edits)| {
            for (at, byte, op) in edits {
                let i = at.index(k.len() + 1);
                match op {
                    0 if i < k.len() => k[i] = byte,
                    1 if i < k.len() => {
                        k.remove(i);
                    }
                    _ => k.insert(i, byte),
                }
            }
            k
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    // (a) Arbitrary bytes.

    #[test]
    fn arbitrary_bytes_never_panic_or_read_past_used(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        walk(&data);
    }

    /// Random `used` values are almost always past the end; patch in one that fits so that the
    /// entry walk itself sees arbitrary bytes.
    #[test]
    fn arbitrary_entries_under_a_plausible_used_never_panic_or_read_past_used(
        mut data in prop::collection::vec(any::<u8>(), 8..4096),
        used in any::<prop::sample::Index>(),
        small_key_lens in prop::collection::vec((any::<prop::sample::Index>(), 0i32..64), 0..8),
    ) {
        let used = used.index(data.len() + 1) as i32;
        put_i32(&mut data, 0, used);
        // Sprinkle small key lengths so that several entries in a row get parsed.
        if data.len() >= 12 {
            for (at, len) in small_key_lens {
                let at = 8 + at.index(data.len() - 11);
                put_i32(&mut data, at, len);
            }
        }
        let w = walk(&data);
        if used == 0 || used >= 8 {
            prop_assert_eq!(w.used, Some(used.max(8) as usize));
        }
    }

    #[test]
    fn arbitrary_key_bytes_never_panic_and_errors_point_inside_the_key(
        k in prop::collection::vec(key_byte(), 0..256)
    ) {
        check_key(&k);
    }

    #[test]
    fn mutated_valid_keys_never_panic_and_errors_point_inside_the_key(k in mutated_key()) {
        check_key(&k);
    }

    #[test]
    fn arbitrary_key_bytes_inside_a_valid_entry_are_returned_verbatim(
        k in prop::collection::vec(key_byte(), 0..300),
        v in any::<f64>(),
        t in any::<f64>(),
    ) {
        let file = layout::write_file([(k.as_slice(), v, t)]);
        let w = walk(&file);
        prop_assert!(w.error.is_none());
        prop_assert_eq!(w.entries, vec![(k, v.to_bits(), t.to_bits())]);
    }

    // (c) Corruption of a valid file.

    #[test]
    fn single_byte_flip_never_panics_and_errors_point_inside_the_file(
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let (mut file, used, _) = sample_file();
        let at = at.index(used + 16);
        file[at] ^= xor;
        let w = walk(&file);
        if at >= used {
            // The zero tail after `used` is never looked at.
            prop_assert!(w.error.is_none());
            prop_assert_eq!(w.entries, expected_entries());
        }
    }

    #[test]
    fn i32_overwrite_at_an_entry_boundary_never_panics_and_errors_point_inside_the_file(
        boundary in any::<prop::sample::Index>(),
        v in prop_oneof![
            Just(0i32), Just(-1), Just(i32::MIN), Just(i32::MAX), Just(i32::MAX - 3),
            -16i32..300, any::<i32>(),
        ],
    ) {
        let (mut file, used, offsets) = sample_file();
        // The `used` header, every key length, and the first byte after the last entry.
        let mut boundaries = vec![0];
        boundaries.extend(&offsets);
        boundaries.push(used);
        let at = boundaries[boundary.index(boundaries.len())];
        put_i32(&mut file, at, v);
        let w = walk(&file);
        let expected = expected_entries();
        if at == 0 {
            match v {
                0 => prop_assert!(w.entries.is_empty() && w.error.is_none()),
                1..=7 | i32::MIN..=-1 => prop_assert_eq!(w.error.unwrap().reason(), "corrupt"),
                _ if v as usize > file.len() => {
                    prop_assert_eq!(w.error.unwrap().reason(), "truncated")
                }
                _ => {}
            }
        } else if at == used {
            prop_assert!(w.error.is_none());
            prop_assert_eq!(w.entries, expected);
        } else {
            // Everything before the damaged entry is still read as written.
            let i = offsets.iter().position(|&o| o == at).unwrap();
            prop_assert_eq!(&w.entries[..i], &expected[..i]);
            if v < 0 {
                prop_assert_eq!(w.entries.len(), i);
                let e = w.error.unwrap();
                prop_assert_eq!(e.offset, at);
                prop_assert_eq!(e.kind, ErrorKind::NegativeKeyLength { key_len: i64::from(v) });
            }
        }
    }
}

// (b) Truncation.

#[test]
fn truncated_file_is_reported_truncated_never_partially_read() {
    let (file, used, _) = sample_file();
    let expected = expected_entries();
    for len in 0..=used + 8 {
        let w = walk(&file[..len]);
        match &w.error {
            Some(e) => {
                assert!(len < used, "cut at {len} of {used} used: {e}");
                let want = match len {
                    0 => "empty",
                    _ => "truncated",
                };
                assert_eq!(e.reason(), want, "cut at {len}: {e}");
                assert!(
                    w.entries.is_empty(),
                    "cut at {len} read entries of a truncated file"
                );
            }
            None => {
                // Cutting inside the zero tail after `used` loses nothing.
                assert!(
                    len >= used,
                    "cut at {len} of {used} used read without error"
                );
                assert_eq!(w.entries, expected, "cut at {len}");
            }
        }
    }
}

/// A writer publishes `used` only after the entry is in place, so a reader that trusts a
/// smaller `used` than the file's sees whole entries and then, at most, one error.
#[test]
fn used_cut_mid_entry_yields_whole_entries_then_one_error_never_a_partial_entry() {
    let (file, used, offsets) = sample_file();
    let expected = expected_entries();
    for cut in layout::HEADER_LEN..=used {
        let mut f = file[..cut].to_vec();
        put_i32(&mut f, 0, cut as i32);
        let w = walk(&f);
        let whole = offsets
            .iter()
            .zip(&expected)
            .filter(|(o, (k, _, _))| *o + layout::entry_len(k.len()) <= cut)
            .count();
        assert_eq!(w.entries, expected[..whole], "used cut to {cut}");
        let at_boundary = cut == used || offsets.contains(&cut);
        assert_eq!(
            w.error.is_none(),
            at_boundary,
            "used cut to {cut}: {:?}",
            w.error
        );
        if let Some(e) = w.error {
            assert!(matches!(e.kind, ErrorKind::EntryBeyondUsed { .. }), "{e:?}");
        }
    }
}

// (d) Hostile headers and lengths.

#[test]
fn used_beyond_file_end_is_truncated_not_read() {
    let (mut file, _, _) = sample_file();
    let len = file.len();
    put_i32(&mut file, 0, len as i32 + 1);
    let e = layout::entries(&file).unwrap_err();
    assert_eq!(e.reason(), "truncated");
    assert_eq!(
        e.kind,
        ErrorKind::UsedBeyondEnd {
            used: file.len() + 1,
            len: file.len()
        }
    );
}

#[test]
fn used_i32_max_is_truncated_not_read_or_allocated() {
    let mut file = vec![0u8; 64];
    put_i32(&mut file, 0, i32::MAX);
    let e = layout::entries(&file).unwrap_err();
    assert_eq!(e.offset, 0);
    assert_eq!(
        e.kind,
        ErrorKind::UsedBeyondEnd {
            used: i32::MAX as usize,
            len: 64
        }
    );
}

#[test]
fn used_negative_or_inside_the_header_is_corrupt() {
    for used in [i32::MIN, -8, -1, 1, 4, 7] {
        let mut file = vec![0u8; 64];
        put_i32(&mut file, 0, used);
        let e = layout::entries(&file).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::InvalidUsed {
                used: i64::from(used)
            },
            "used {used}"
        );
        assert_eq!(e.reason(), "corrupt");
    }
}

#[test]
fn used_zero_means_a_fresh_file_with_no_entries() {
    let mut file = vec![0u8; 64];
    // Garbage after the header of a fresh file is not read.
    file[8..].fill(0xff);
    let it = layout::entries(&file).unwrap();
    assert_eq!(it.used(), 8);
    assert_eq!(it.count(), 0);
}

#[test]
fn header_shorter_than_8_bytes_is_truncated_not_read() {
    assert_eq!(layout::entries(&[]).unwrap_err().kind, ErrorKind::Empty);
    for len in 1..8 {
        let e = layout::entries(&[0xff; 8][..len]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ShortHeader { len });
        assert_eq!(e.reason(), "truncated");
    }
}

#[test]
fn negative_key_length_is_corrupt_at_the_entry_offset() {
    for key_len in [-1, -4, i32::MIN] {
        let (mut file, _, offsets) = sample_file();
        put_i32(&mut file, offsets[2], key_len);
        let w = walk(&file);
        assert_eq!(w.entries, expected_entries()[..2]);
        let e = w.error.unwrap();
        assert_eq!(e.offset, offsets[2]);
        assert_eq!(
            e.kind,
            ErrorKind::NegativeKeyLength {
                key_len: i64::from(key_len)
            }
        );
    }
}

#[test]
fn key_len_i32_max_does_not_overflow_or_read_past_used() {
    for key_len in [i32::MAX, i32::MAX - 3, i32::MAX - 4, (1 << 30) + 5] {
        let (mut file, used, offsets) = sample_file();
        put_i32(&mut file, offsets[0], key_len);
        let e = layout::entries(&file).unwrap().next().unwrap().unwrap_err();
        assert_eq!(e.offset, 8);
        assert_eq!(
            e.kind,
            ErrorKind::EntryBeyondUsed {
                needs: layout::entry_len(key_len as usize),
                used
            }
        );
    }
}

/// Python only checks that the key fits before `used`; we also need the value and timestamp.
#[test]
fn entry_whose_value_straddles_used_is_corrupt_not_read_past_used() {
    let file = layout::write_file([(&b"abc"[..], 1.0, 2.0)]);
    let used = layout::used(&file).unwrap();
    for cut in [used - 1, used - 8, used - 16, 8 + 4 + 3] {
        let mut f = file.clone();
        put_i32(&mut f, 0, cut as i32);
        let e = layout::entries(&f).unwrap().next().unwrap().unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::EntryBeyondUsed {
                needs: used - 8,
                used: cut
            }
        );
    }
}

#[test]
fn entry_length_field_cut_by_used_is_corrupt_not_read_past_used() {
    let file = layout::write_file([(&b"abc"[..], 1.0, 2.0)]);
    for cut in 9..12 {
        let mut f = file.clone();
        put_i32(&mut f, 0, cut);
        let e = layout::entries(&f).unwrap().next().unwrap().unwrap_err();
        assert_eq!(e.offset, 8);
        assert_eq!(
            e.kind,
            ErrorKind::EntryBeyondUsed {
                needs: 4,
                used: cut as usize
            }
        );
    }
}

#[test]
fn empty_key_is_a_valid_entry_but_not_a_valid_key() {
    let file = layout::write_file([(&b""[..], 1.0, 0.0)]);
    let w = walk(&file);
    assert_eq!(w.used, Some(8 + 4 + 4 + 16));
    assert_eq!(w.entries, vec![(Vec::new(), 1f64.to_bits(), 0)]);
    assert_eq!(key::decode_key(b"").unwrap_err().offset, 0);
}

#[test]
fn invalid_utf8_in_a_key_is_an_error_with_its_offset_not_a_panic() {
    let cases: &[(&[u8], usize)] = &[
        (b"[\"\xff\", \"s\", {}, \"h\"]", 2),
        (b"[\"m\", \"s\", {\"a\xc3\": \"v\"}, \"h\"]", 14),
        (b"[\"m\", \"s\", {}, \"ok \xe2\x82\"]", 19),
        // An encoded surrogate half is not UTF-8 either.
        (b"[\"m\", \"s\", {}, \"\xed\xa0\x80\"]", 16),
        (b"[\"m\", \"s\", {}, \"\xf0\x9f\x98\"]", 16),
    ];
    for (bytes, offset) in cases {
        let e = key::decode_key(bytes).unwrap_err();
        assert_eq!(e.reason, "invalid UTF-8", "{bytes:?}");
        assert_eq!(e.offset, *offset, "{bytes:?}");
    }
    // The layout does not look inside keys: a file with such a key still reads.
    let (file, _, _) = sample_file();
    let w = walk(&file);
    assert!(w.error.is_none());
    assert!(key::decode_key(&w.entries.last().unwrap().0).is_err());
}

#[test]
fn every_padding_length_from_1_to_8_reads_back_aligned() {
    let (file, _, _) = sample_file();
    let mut paddings = std::collections::BTreeSet::new();
    for e in layout::entries(&file).unwrap() {
        let e = e.unwrap();
        let pad = e.value_offset - (e.offset + 4 + e.key.len());
        assert!(file[e.offset + 4 + e.key.len()..e.value_offset]
            .iter()
            .all(|&b| b == b' '));
        assert_eq!(e.value_offset % 8, 0);
        paddings.insert(pad);
    }
    assert_eq!(
        paddings.into_iter().collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
}
