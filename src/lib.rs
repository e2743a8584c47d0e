//! Prometheus metrics for pre-forked, multi-process servers.
//!
//! Each worker process writes its samples into its own file in a shared directory
//! (`PROMETHEUS_MULTIPROC_DIR`), in the format Python's `prometheus_client` uses in
//! multiprocess mode; a scrape merges every file of the directory. Directories written by Python
//! workers, by Rust workers or by both are read alike, and Python's `MultiProcessCollector` reads
//! what this crate writes.
//!
//! - [`collector`]: reads and merges a directory into metric families, serving the healthy
//!   files when some are bad and reporting the bad ones;
//! - [`exposition`]: writes families in the Prometheus text format 0.0.4 or OpenMetrics 1.0.0;
//! - [`format`](mod@crate::format): the on-disk format itself (the `prometheus-multiproc-format` crate).
//!
//! ```
//! use prometheus_multiproc::collector::Collector;
//! use prometheus_multiproc::exposition::{encode, Format};
//! use prometheus_multiproc::format::{key::encode_key, layout::write_file};
//!
//! let dir = tempfile::tempdir().unwrap();
//! // Two workers, as Python writes them: each counted requests on `/`.
//! for (pid, n) in [(101, 2.0), (102, 3.0)] {
//!     let key = encode_key("requests", "requests_total", &[("path", "/")], "Requests served.");
//!     let file = write_file([(key.as_bytes(), n, 0.0)]);
//!     std::fs::write(dir.path().join(format!("counter_{pid}.db")), file).unwrap();
//! }
//! let scrape = Collector::new(dir.path()).self_metrics(false).collect().unwrap();
//! assert!(scrape.bad_files.is_empty());
//! assert_eq!(
//!     encode(&scrape.families, Format::Text),
//!     concat!(
//!         "# HELP requests_total Requests served.\n",
//!         "# TYPE requests_total counter\n",
//!         "requests_total{path=\"/\"} 5.0\n",
//!     )
//! );
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

mod children;
pub mod collector;
pub mod exposition;
#[cfg(feature = "http")]
pub mod http;
#[cfg(any(feature = "tikv", feature = "prometheus-client"))]
pub mod interop;
pub mod liveness;
pub mod metrics;
mod os;
pub mod process;
#[cfg(feature = "push")]
pub mod push;
pub mod registry;
pub mod writer;

/// The on-disk format: the `prometheus-multiproc-format` crate.
pub use prometheus_multiproc_format as format;

pub use format::filename::GaugeMode;
pub use metrics::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramVec, MetricError, MostRecentGauge,
    MostRecentGaugeVec, Summary, SummaryVec, DEFAULT_BUCKETS,
};
pub use registry::{Registry, RegistryError};
