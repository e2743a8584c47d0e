//! The scrape endpoint over HTTP.
