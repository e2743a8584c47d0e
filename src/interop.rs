//! Adapters to the other Rust Prometheus crates.
