//! Pushgateway client.
