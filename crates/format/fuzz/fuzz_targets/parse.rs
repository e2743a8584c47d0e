//! Any bytes as a multiprocess file: parsing must never panic, never read past `used`, and
//! every error must point inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prometheus_multiproc_format::{key, layout};

fuzz_target!(|data: &[u8]| {
    let entries = match layout::entries(data) {
        Ok(entries) => entries,
        Err(e) => {
            assert!(e.offset <= data.len());
            let _ = e.to_string();
            return;
        }
    };
    let used = entries.used();
    assert!((layout::HEADER_LEN..=data.len()).contains(&used));
    for entry in entries {
        match entry {
            Ok(e) => {
                assert!(e.offset + 4 + e.key.len() <= e.value_offset);
                assert!(e.value_offset + 16 <= used);
                match key::decode_key(e.key) {
                    Ok(k) => {
                        // What decodes re-encodes to a key that decodes the same.
                        let again = key::encode_key(&k.metric, &k.sample, &k.labels, &k.help);
                        assert_eq!(key::decode_key(again.as_bytes()), Ok(k));
                    }
                    Err(err) => assert!(err.offset <= e.key.len()),
                }
            }
            Err(e) => assert!(e.offset < used),
        }
    }
    // Keys on their own, from the same bytes.
    if let Err(err) = key::decode_key(data) {
        assert!(err.offset <= data.len());
    }
});
