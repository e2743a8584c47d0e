//! The on-disk format of Python `prometheus_client`'s multiprocess mode, over plain byte slices.
//!
//! Each worker process of a multi-process server writes its samples into files named
//! `counter_{pid}.db`, `gauge_{mode}_{pid}.db`, `histogram_{pid}.db` and `summary_{pid}.db` in one
//! directory. This crate reads and writes those files and their keys exactly as
//! `prometheus_client` 0.26 does, and knows nothing about processes, files on disk or merging:
//!
//! - [`layout`]: the file layout (`used` header, padded keys, value and timestamp), parsed without
//!   ever panicking or reading out of bounds, and written byte for byte as Python writes it;
//! - [`key`]: the JSON key `[metric, sample, {labels}, help]` as `json.dumps(..., sort_keys=True)`
//!   writes it, and a decoder for it;
//! - [`filename`]: what a file name says (metric type, gauge mode, pid);
//! - [`float`]: floats written as Python's `repr` and `floatToGoString` write them.
//!
//! ```
//! use prometheus_multiproc_format::{key, layout};
//!
//! let k = key::encode_key("requests", "requests_total", &[("path", "/")], "Requests.");
//! assert_eq!(k, r#"["requests", "requests_total", {"path": "/"}, "Requests."]"#);
//!
//! let file = layout::write_file([(k.as_bytes(), 3.0, 0.0)]);
//! assert_eq!(file.len(), 65536);
//! let entries: Vec<_> = layout::entries(&file).unwrap().collect::<Result<_, _>>().unwrap();
//! assert_eq!(entries[0].key, k.as_bytes());
//! assert_eq!(entries[0].value, 3.0);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

pub mod filename;
pub mod float;
pub mod key;
pub mod layout;
