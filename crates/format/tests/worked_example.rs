//! The worked example of docs/format.md: its hex dump is what `layout::write_file` writes, so the
//! document cannot drift from the code.

use prometheus_multiproc_format::{key, layout};

/// The `xxd` lines of the first fenced `text` block after the "A worked example" heading, as
/// bytes.
fn dump_in_docs(doc: &str) -> Vec<u8> {
    let section = doc
        .split("\n## A worked example\n")
        .nth(1)
        .expect("docs/format.md has a section \"A worked example\"");
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the worked example has a ```text block");
    let mut bytes = Vec::new();
    for (i, line) in block.lines().enumerate() {
        let (offset, rest) = line.split_once(": ").expect("xxd line");
        assert_eq!(
            usize::from_str_radix(offset, 16).unwrap(),
            i * 16,
            "offset of line {line:?}"
        );
        // The hex columns end where xxd's two-space gap before the text column starts.
        let hex: String = rest[..39.min(rest.len())]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        for at in (0..hex.len()).step_by(2) {
            bytes.push(u8::from_str_radix(&hex[at..at + 2], 16).unwrap());
        }
    }
    bytes
}

#[test]
fn docs_worked_example_hex_dump_is_what_write_file_writes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/format.md");
    let doc = std::fs::read_to_string(path).expect("docs/format.md");
    let dump = dump_in_docs(&doc);

    let k = key::encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
    assert_eq!(
        k,
        r#"["requests", "requests_total", {"path": "/"}, "Requests."]"#
    );
    let file = layout::write_file([(k.as_bytes(), 3.0, 0.0)]);
    let used = layout::used(&file).unwrap();
    assert_eq!(used, 88);
    assert_eq!(dump.len(), used, "the dump shows exactly the used bytes");
    assert_eq!(dump, &file[..used]);
    assert_eq!(file.len(), 65536);
    assert!(file[used..].iter().all(|&b| b == 0));

    // And the fields the document's table names.
    let e = layout::entries(&file).unwrap().next().unwrap().unwrap();
    assert_eq!((e.offset, e.key.len(), e.value_offset), (8, 58, 0x48));
    assert_eq!((e.value, e.timestamp), (3.0, 0.0));
}
