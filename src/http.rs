//! The scrape endpoint over HTTP (feature `http`, on by default).
//!
//! Three layers, from the bottom up:
//!
//! - [`scrape_response`] and [`respond`]: a transport-independent handler. Given a
//!   [`Collector`] and a request (the `http` crate's types, re-exported here), they merge the
//!   directory and build the whole response: OpenMetrics 1.0.0 when the `Accept` header asks for
//!   `application/openmetrics-text`, the text format 0.0.4 otherwise, each with its exact
//!   `Content-Type`; gzip when `Accept-Encoding` allows it; `HEAD` with the headers of `GET` and
//!   no body; `405` for other methods; `404` for other paths; `503` with a log line when the
//!   directory cannot be read. The `?name[]=NAME` filter of Python's handler keeps only the
//!   samples of those names.
//! - A standalone server on hyper 1 and tokio, like Python's `start_http_server`: [`start`] runs
//!   it on a background thread and returns a [`ServerHandle`]; [`serve`] blocks; [`Server`]
//!   gives the bound address before running, and runs inside an existing tokio runtime. See
//!   [`ServerConfig`] for its limits: concurrent scrapes (excess ones get a fast `503`),
//!   connections, header size (`431`), header read and request timeouts, and optional basic
//!   auth and TLS (feature `tls`, rustls).
//! - With feature `axum`, `axum_router` and `axum_route` mount `/metrics` in an axum
//!   application in one line.
//!
//! Every failure is logged (with the `log` crate) on one line naming the peer: malformed
//! requests, oversized headers, timeouts, refused credentials, refused scrapes beyond the
//! concurrency limit and unreadable directories.
//!
//! ```
//! use std::io::{Read, Write};
//! use prometheus_multiproc::collector::Collector;
//! use prometheus_multiproc::http::{start, ServerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // Port 0 picks a free port; `local_addr` tells which.
//! let server = start(Collector::new(dir.path()), ServerConfig::new("127.0.0.1:0"))?;
//!
//! let mut stream = std::net::TcpStream::connect(server.local_addr())?;
//! stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
//! let mut response = String::new();
//! stream.read_to_string(&mut response)?;
//! assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
//! assert!(response.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"));
//! assert!(response.contains("\nprometheus_multiproc_bad_files{reason=\"corrupt\"} 0.0\n"));
//!
//! server.shutdown()?;
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
#[cfg(feature = "tls")]
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;
use http_body_util::Full;
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::collector::{CollectError, Collector, MetricFamily};
use crate::exposition::{encode_into, Format};

pub use hyper::http::{Method, Request, Response, StatusCode};

/// The default path of the metrics endpoint.
pub const DEFAULT_PATH: &str = "/metrics";
/// The default limit on scrapes in progress at once; further ones get `503` at once.
pub const DEFAULT_MAX_CONCURRENT_SCRAPES: usize = 4;
/// The default limit on open connections; further ones wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// The default time a client has to send a request's headers (and, on an idle keep-alive
/// connection, to start the next request).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a scrape may take, and a response may take to be written.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The default limit on the size of a request's line and headers, in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// The smallest header limit hyper accepts for its read buffer.
const MIN_READ_BUFFER: usize = 8 * 1024;
/// How long in-flight connections may take to finish once the server is asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

// ------------------------------------------------------------------ negotiation

/// Splits a comma-separated header value into items: the value before the first `;`, lower-cased
/// and trimmed, its parameters, and its quality (`q`, 1 when absent, 0 when not a number).
fn list_items(value: &str) -> impl Iterator<Item = (String, &str, f32)> + '_ {
    value.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let token = parts.next()?.trim().to_ascii_lowercase();
        if token.is_empty() {
            return None;
        }
        let params = item.find(';').map(|at| &item[at + 1..]).unwrap_or("");
        let mut q = 1.0;
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("q") {
                q = value
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| q.is_finite())
                    .map_or(0.0, |q| q.clamp(0.0, 1.0));
            }
        }
        Some((token, params, q))
    })
}

/// The exposition format a client asks for in its `Accept` header.
///
/// OpenMetrics 1.0.0 when `application/openmetrics-text` is listed with a quality above zero
/// and at least that of any range matching the text format (`text/plain`, `text/*`, `*/*`); the
/// text format 0.0.4 otherwise, an absent or empty header included. Versions are not compared
/// (as in Python's `prometheus_client`): the answer's `Content-Type` names the version written.
///
/// ```
/// use prometheus_multiproc::exposition::Format;
/// use prometheus_multiproc::http::negotiate;
///
/// // What Prometheus sends.
/// let prometheus = "application/openmetrics-text;version=1.0.0,\
///     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// assert_eq!(negotiate(prometheus), Format::OpenMetrics);
/// assert_eq!(negotiate("application/openmetrics-text"), Format::OpenMetrics);
/// assert_eq!(negotiate("application/openmetrics-text;q=0"), Format::Text);
/// assert_eq!(negotiate("text/plain, application/openmetrics-text;q=0.5"), Format::Text);
/// assert_eq!(negotiate("*/*"), Format::Text);
/// assert_eq!(negotiate(""), Format::Text);
/// ```
pub fn negotiate(accept: &str) -> Format {
    let mut openmetrics: f32 = 0.0;
    let mut text: f32 = 0.0;
    for (range, _, q) in list_items(accept) {
        match range.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// Whether an `Accept-Encoding` header allows a gzip-encoded answer: `gzip` (or `x-gzip`) with
/// a quality above zero, or `*` with a quality above zero and `gzip` not refused.
///
/// ```
/// use prometheus_multiproc::http::accepts_gzip;
///
/// assert!(accepts_gzip("gzip"));
/// assert!(accepts_gzip("deflate, gzip;q=0.5"));
/// assert!(accepts_gzip("*"));
/// assert!(!accepts_gzip("gzip;q=0"));
/// assert!(!accepts_gzip("*, gzip;q=0"));
/// assert!(!accepts_gzip("identity"));
/// assert!(!accepts_gzip(""));
/// ```
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    let mut gzip = None;
    let mut any = None;
    for (coding, _, q) in list_items(accept_encoding) {
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(gzip.unwrap_or(0.0f32).max(q)),
            "*" => any = Some(any.unwrap_or(0.0f32).max(q)),
            _ => {}
        }
    }
    match gzip {
        Some(q) => q > 0.0,
        None => any.is_some_and(|q| q > 0.0),
    }
}

/// Every value of a header, joined by commas (how HTTP defines repeated list headers).
fn joined(headers: &HeaderMap, name: header::HeaderName) -> String {
    let mut out = String::new();
    for value in headers.get_all(name) {
        if let Ok(v) = value.to_str() {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(v);
        }
    }
    out
}

// ------------------------------------------------------------------ the handler

/// `%XX` and `+` decoding of a query string component; `None` if it is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The sample names of Python's `?name[]=NAME&name[]=...` filter, if the query has any.
fn requested_names(query: Option<&str>) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for pair in query?.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key).as_deref() == Some("name[]") {
            if let Some(value) = percent_decode(value) {
                names.push(value);
            }
        }
    }
    (!names.is_empty()).then_some(names)
}

/// Keeps only the samples named in `names`, and the families left with samples (Python's
/// `restricted_registry`).
fn restrict(families: &mut Vec<MetricFamily>, names: &[String]) {
    families.retain_mut(|family| {
        family.samples.retain(|s| names.contains(&s.name));
        !family.samples.is_empty()
    });
}

/// A short `text/plain` answer.
fn plain(status: StatusCode, message: impl Into<String>) -> Response<Vec<u8>> {
    let mut body = message.into().into_bytes();
    if !body.ends_with(b"\n") {
        body.push(b'\n');
    }
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    set_length(&mut response);
    response
}

fn set_length(response: &mut Response<Vec<u8>>) {
    let len = response.body().len();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// For `HEAD`: the headers of `GET`, `Content-Length` included, and no body.
fn strip_body_for_head(method: &Method, mut response: Response<Vec<u8>>) -> Response<Vec<u8>> {
    if method == Method::HEAD {
        response.body_mut().clear();
        response.body_mut().shrink_to_fit();
    }
    response
}

fn method_not_allowed(method: &Method) -> Response<Vec<u8>> {
    let mut response = plain(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed: use GET or HEAD"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

fn is_get_or_head(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Scrapes `collector` and answers `request` with the exposition: the whole metrics endpoint,
/// without routing (see [`respond`] for that). Blocking: it reads the directory.
///
/// - `GET` answers `200` with the merged families in the format [`negotiate`] picks from the
///   `Accept` header, with its exact `Content-Type` ([`Format::content_type`]), gzip-encoded
///   (`Content-Encoding: gzip`) when [`accepts_gzip`] allows it, and `Vary: Accept,
///   Accept-Encoding`; `HEAD` answers the same headers without the body.
/// - The filter of Python's handler, `?name[]=NAME` (repeatable), keeps only the samples of
///   those names. (Python's own answer to it over a `MultiProcessCollector` is empty, as that
///   collector does not describe its metrics in advance.)
/// - Other methods get `405` with `Allow: GET, HEAD`.
/// - A directory that cannot be read gets `503` with the reason, and a log line at `error` level.
///   Bad files do not fail the scrape (see [`Collector::collect`]).
///
/// ```
/// use prometheus_multiproc::collector::Collector;
/// use prometheus_multiproc::http::{scrape_response, Request, StatusCode};
///
/// let dir = tempfile::tempdir().unwrap();
/// let collector = Collector::new(dir.path());
/// let request = Request::get("/metrics")
///     .header("accept", "application/openmetrics-text; version=1.0.0")
///     .body(())
///     .unwrap();
/// let response = scrape_response(&collector, &request);
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(
///     response.headers()["content-type"],
///     "application/openmetrics-text; version=1.0.0; charset=utf-8"
/// );
/// assert!(response.body().ends_with(b"# EOF\n"));
///
/// let missing = Collector::new(dir.path().join("missing"));
/// let response = scrape_response(&missing, &request);
/// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// ```
pub fn scrape_response<B>(collector: &Collector, request: &Request<B>) -> Response<Vec<u8>> {
    let method = request.method();
    if !is_get_or_head(method) {
        return method_not_allowed(method);
    }
    let headers = request.headers();
    let format = negotiate(&joined(headers, header::ACCEPT));
    let gzip = accepts_gzip(&joined(headers, header::ACCEPT_ENCODING));
    let failed = |e: CollectError| {
        log::error!("scrape failed, answered 503: {e}");
        strip_body_for_head(
            method,
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("scrape failed: {e}"),
            ),
        )
    };
    let mut text = String::new();
    match requested_names(request.uri().query()) {
        // Only some samples: the owned families, filtered.
        Some(names) => match collector.collect() {
            Ok(mut scrape) => {
                restrict(&mut scrape.families, &names);
                encode_into(&scrape.families, format, &mut text);
            }
            Err(e) => return failed(e),
        },
        None => {
            if let Err(e) = collector.encode_into(format, &mut text) {
                return failed(e);
            }
        }
    }
    let mut body = text.into_bytes();
    let mut response_headers = HeaderMap::new();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response_headers.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if gzip {
        let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 8), Compression::fast());
        // Writing into a Vec cannot fail.
        let compressed = encoder
            .write_all(&body)
            .and_then(|()| encoder.finish())
            .expect("gzip into memory");
        body = compressed;
        response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let mut response = Response::new(body);
    *response.headers_mut() = response_headers;
    set_length(&mut response);
    strip_body_for_head(method, response)
}

/// The small page answered on `/` when the metrics are elsewhere.
fn index(metrics_path: &str, method: &Method) -> Response<Vec<u8>> {
    if !is_get_or_head(method) {
        return method_not_allowed(method);
    }
    let escaped = metrics_path
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>Prometheus multiprocess metrics</title></head>\n\
         <body><h1>Prometheus multiprocess metrics</h1>\
         <p><a href=\"{escaped}\">{escaped}</a></p></body></html>\n"
    );
    let mut response = Response::new(body.into_bytes());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    set_length(&mut response);
    strip_body_for_head(method, response)
}

/// Routes `request`: [`scrape_response`] on `metrics_path`; on `/` (when the metrics are
/// elsewhere) a small HTML page linking to them; `404` on any other path. Blocking on the
/// metrics path.
///
/// ```
/// use prometheus_multiproc::collector::Collector;
/// use prometheus_multiproc::http::{respond, Request, StatusCode};
///
/// let dir = tempfile::tempdir().unwrap();
/// let collector = Collector::new(dir.path());
/// let get = |path: &str| Request::get(path).body(()).unwrap();
/// assert_eq!(respond(&collector, "/metrics", &get("/metrics")).status(), StatusCode::OK);
/// assert_eq!(respond(&collector, "/metrics", &get("/")).status(), StatusCode::OK);
/// assert_eq!(respond(&collector, "/metrics", &get("/other")).status(), StatusCode::NOT_FOUND);
/// let post = Request::post("/metrics").body(()).unwrap();
/// assert_eq!(respond(&collector, "/metrics", &post).status(), StatusCode::METHOD_NOT_ALLOWED);
/// ```
pub fn respond<B>(
    collector: &Collector,
    metrics_path: &str,
    request: &Request<B>,
) -> Response<Vec<u8>> {
    match route(metrics_path, request.uri().path()) {
        Route::Metrics => scrape_response(collector, request),
        Route::Index => index(metrics_path, request.method()),
        Route::NotFound => not_found(request.method(), request.uri().path()),
    }
}

fn not_found(method: &Method, path: &str) -> Response<Vec<u8>> {
    let shown: String = path.chars().take(200).collect();
    strip_body_for_head(
        method,
        plain(StatusCode::NOT_FOUND, format!("no such path: {shown}")),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
}

fn route(metrics_path: &str, path: &str) -> Route {
    if path == metrics_path {
        Route::Metrics
    } else if path == "/" {
        Route::Index
    } else {
        Route::NotFound
    }
}

// ------------------------------------------------------------------ the async scrape

/// A collector behind a limit on concurrent scrapes; the scrape runs on tokio's blocking pool.
#[derive(Debug)]
struct Scraper {
    collector: Collector,
    limit: Arc<Semaphore>,
    max: usize,
}

impl Scraper {
    fn new(collector: Collector, max: usize) -> Scraper {
        Scraper {
            collector,
            limit: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The permit for one more scrape, or the `503` answer when `max` are in progress.
    fn admit(
        &self,
        parts: &Parts,
        peer: &Peer,
    ) -> Result<OwnedSemaphorePermit, Box<Response<Vec<u8>>>> {
        self.limit.clone().try_acquire_owned().map_err(|_| {
            log::warn!(
                "{peer} \"{} {}\": {} scrapes already in progress (the limit), answered 503",
                parts.method,
                parts.uri.path(),
                self.max
            );
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "too many scrapes in progress (limit {}), retry later",
                    self.max
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Box::new(strip_body_for_head(&parts.method, response))
        })
    }

    /// Scrapes on the blocking pool, holding `permit` until the scrape is over (even when the
    /// caller stops waiting for it).
    async fn scrape(
        self: &Arc<Self>,
        parts: Parts,
        permit: OwnedSemaphorePermit,
    ) -> Result<Response<Vec<u8>>, tokio::task::JoinError> {
        let scraper = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            scrape_response(&scraper.collector, &Request::from_parts(parts, ()))
        })
        .await
    }
}

/// How a peer is named in log lines.
#[derive(Debug, Clone, Copy)]
struct Peer(Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("client"),
        }
    }
}

// ------------------------------------------------------------------ configuration

/// Credentials for HTTP basic authentication (RFC 7617) of the standalone server.
///
/// Every request must carry `Authorization: Basic base64(username:password)`; any other gets
/// `401` with `WWW-Authenticate: Basic realm="metrics", charset="UTF-8"` and a log line. The
/// comparison takes the same time whatever the bytes are (only the length of the expected
/// credentials can show through timing). `Debug` does not print the password.
///
/// ```
/// use prometheus_multiproc::http::{BasicAuth, ServerConfig};
///
/// let config = ServerConfig::new("127.0.0.1:9464").basic_auth(BasicAuth::new("prometheus", "s3cret"));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct BasicAuth {
    username: String,
    expected: Vec<u8>,
}

impl BasicAuth {
    /// Credentials: a user name (without `:`, per RFC 7617) and a password.
    pub fn new(username: impl Into<String>, password: impl AsRef<str>) -> BasicAuth {
        let username = username.into();
        let expected = format!("{username}:{}", password.as_ref()).into_bytes();
        BasicAuth { username, expected }
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// `Ok` when `headers` carry these credentials; otherwise why not, for the log line.
    fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err("no credentials");
        };
        let value = value.as_bytes();
        let Some(scheme) = value.get(..6) else {
            return Err("malformed Authorization header");
        };
        if !scheme.eq_ignore_ascii_case(b"basic ") {
            return Err("not basic authentication");
        }
        let encoded = value[6..].trim_ascii();
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return Err("malformed Authorization header");
        };
        if constant_time_eq(&decoded, &self.expected) {
            Ok(())
        } else {
            Err("wrong credentials")
        }
    }
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Compares in a time that depends on `expected.len()` only.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        // Out-of-range positions compare against a byte that differs from `e`.
        let g = given.get(i).copied().unwrap_or(!*e);
        diff |= g ^ e;
    }
    std::hint::black_box(diff) == 0
}

/// TLS for the standalone server (feature `tls`): a certificate chain and its private key,
/// in PEM files, and optionally the CA certificates client certificates must chain to (which
/// makes a client certificate required, as Python's `client_auth_required`).
///
/// ```no_run
/// use prometheus_multiproc::http::{ServerConfig, TlsConfig};
///
/// let config = ServerConfig::new("0.0.0.0:9464")
///     .tls(TlsConfig::new("/etc/metrics/cert.pem", "/etc/metrics/key.pem"));
/// ```
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
pub struct TlsConfig {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[cfg(feature = "tls")]
impl TlsConfig {
    /// The certificate chain (leaf first) and the private key (PKCS#8, PKCS#1 or SEC1), in PEM.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
        }
    }

    /// Requires clients to present a certificate that chains to one of the CA certificates in
    /// this PEM file.
    pub fn client_ca(mut self, path: impl Into<PathBuf>) -> TlsConfig {
        self.client_ca = Some(path.into());
        self
    }

    /// Reads the files and builds the acceptor.
    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
        use tokio_rustls::rustls;
        let tls_err = |what: String| ServeError::Tls(what);
        let open = |path: &Path| {
            std::fs::File::open(path)
                .map(io::BufReader::new)
                .map_err(|e| tls_err(format!("cannot read {}: {e}", path.display())))
        };
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_reader_iter(open(&self.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(format!("{}: {e}", self.cert.display())))?;
        if certs.is_empty() {
            return Err(tls_err(format!(
                "{}: no PEM certificate in the file",
                self.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_reader(open(&self.key)?).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => tls_err(format!(
                "{}: no PEM private key in the file",
                self.key.display()
            )),
            e => tls_err(format!("{}: {e}", self.key.display())),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_reader_iter(open(ca)?) {
                    let cert = cert.map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
                }
                if roots.is_empty() {
                    return Err(tls_err(format!(
                        "{}: no PEM certificate in the file",
                        ca.display()
                    )));
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            tls_err(format!(
                "{} and {}: {e}",
                self.cert.display(),
                self.key.display()
            ))
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// How the standalone server listens and what it allows. Built from [`ServerConfig::new`] with
/// the defaults below, then adjusted by its methods.
///
/// ```
/// use std::time::Duration;
/// use prometheus_multiproc::http::ServerConfig;
///
/// let config = ServerConfig::new("0.0.0.0:9464")
///     .path("/metrics")
///     .max_concurrent_scrapes(2)
///     .header_read_timeout(Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    listen: String,
    path: String,
    max_concurrent_scrapes: usize,
    max_connections: usize,
    header_read_timeout: Duration,
    request_timeout: Duration,
    max_header_bytes: usize,
    basic_auth: Option<BasicAuth>,
    #[cfg(feature = "tls")]
    tls: Option<TlsConfig>,
}

impl ServerConfig {
    /// Listening on `listen` (`host:port`; port 0 picks a free port), with the defaults:
    /// path [`DEFAULT_PATH`], [`DEFAULT_MAX_CONCURRENT_SCRAPES`], [`DEFAULT_MAX_CONNECTIONS`],
    /// [`DEFAULT_HEADER_READ_TIMEOUT`], [`DEFAULT_REQUEST_TIMEOUT`], [`DEFAULT_MAX_HEADER_BYTES`],
    /// no authentication, no TLS.
    pub fn new(listen: impl Into<String>) -> ServerConfig {
        ServerConfig {
            listen: listen.into(),
            path: DEFAULT_PATH.to_owned(),
            max_concurrent_scrapes: DEFAULT_MAX_CONCURRENT_SCRAPES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            basic_auth: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The path of the metrics endpoint (must start with `/`).
    pub fn path(mut self, path: impl Into<String>) -> ServerConfig {
        self.path = path.into();
        self
    }

    /// The most scrapes in progress at once (at least 1); a scrape beyond it is answered `503`
    /// with `Retry-After: 1` at once, so requests never pile up behind a slow directory.
    pub fn max_concurrent_scrapes(mut self, n: usize) -> ServerConfig {
        self.max_concurrent_scrapes = n;
        self
    }

    /// The most connections open at once (at least 1); further clients wait in the kernel's
    /// listen backlog until one closes.
    pub fn max_connections(mut self, n: usize) -> ServerConfig {
        self.max_connections = n;
        self
    }

    /// The time a client has to send a request line and headers, and to start its next request
    /// on a keep-alive connection (also the limit on a TLS handshake). A client that does not
    /// is disconnected (with a log line unless it was an idle keep-alive connection).
    pub fn header_read_timeout(mut self, timeout: Duration) -> ServerConfig {
        self.header_read_timeout = timeout;
        self
    }

    /// The time a scrape may take before it is answered `503` (the directory read goes on in
    /// the background, still counted against the concurrency limit), and the time writing a
    /// response may stall before the connection is dropped.
    pub fn request_timeout(mut self, timeout: Duration) -> ServerConfig {
        self.request_timeout = timeout;
        self
    }

    /// The limit on a request's line and headers together, in bytes; a request beyond it is
    /// answered `431` and its connection closed. Values below 8 KiB still allow headers of up
    /// to that size to be buffered, but are enforced.
    pub fn max_header_bytes(mut self, n: usize) -> ServerConfig {
        self.max_header_bytes = n;
        self
    }

    /// Requires HTTP basic authentication.
    pub fn basic_auth(mut self, auth: BasicAuth) -> ServerConfig {
        self.basic_auth = Some(auth);
        self
    }

    /// Serves HTTPS instead of HTTP (feature `tls`).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsConfig) -> ServerConfig {
        self.tls = Some(tls);
        self
    }

    /// The address to listen on, as given.
    pub fn listen_addr(&self) -> &str {
        &self.listen
    }

    /// The path of the metrics endpoint.
    pub fn metrics_path(&self) -> &str {
        &self.path
    }

    fn validate(&self) -> Result<(), ServeError> {
        let bad = |m: String| Err(ServeError::Config(m));
        if !self.path.starts_with('/') {
            return bad(format!("the path {:?} must start with /", self.path));
        }
        if self.max_concurrent_scrapes == 0 {
            return bad("the concurrent scrape limit must be at least 1".into());
        }
        if self.max_connections == 0 {
            return bad("the connection limit must be at least 1".into());
        }
        if self.max_concurrent_scrapes > Semaphore::MAX_PERMITS
            || self.max_connections > Semaphore::MAX_PERMITS
            || u32::try_from(self.max_connections).is_err()
        {
            return bad("limit too large".into());
        }
        if self.header_read_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("timeouts must be above zero".into());
        }
        if self.max_header_bytes == 0 {
            return bad("the header size limit must be above zero".into());
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    /// [`ServerConfig::new`] on `127.0.0.1:9464`.
    fn default() -> ServerConfig {
        ServerConfig::new("127.0.0.1:9464")
    }
}

/// Why the standalone server could not start or stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be resolved or bound.
    Bind {
        /// The address, as given.
        addr: String,
        /// The error.
        source: io::Error,
    },
    /// The TLS certificate or key could not be read or used.
    Tls(String),
    /// The runtime or its thread could not be started.
    Runtime(io::Error),
    /// An invalid [`ServerConfig`].
    Config(String),
    /// The server's thread panicked.
    Panicked,
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServeError::Tls(m) => write!(f, "TLS: {m}"),
            ServeError::Runtime(e) => write!(f, "cannot start the server's runtime: {e}"),
            ServeError::Config(m) => write!(f, "invalid server configuration: {m}"),
            ServeError::Panicked => f.write_str("the server thread panicked"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Bind { source, .. } => Some(source),
            ServeError::Runtime(e) => Some(e),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------ the server

/// What every connection shares.
struct Shared {
    scraper: Arc<Scraper>,
    path: String,
    header_read_timeout: Duration,
    request_timeout: Duration,
    max_header_bytes: usize,
    basic_auth: Option<BasicAuth>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Shared");
        s.field("scraper", &self.scraper)
            .field("path", &self.path)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("basic_auth", &self.basic_auth);
        #[cfg(feature = "tls")]
        s.field("tls", &self.tls.is_some());
        s.finish()
    }
}

/// A bound standalone server, not yet running: [`Server::local_addr`] tells the address before
/// any request is accepted. Run it with [`Server::run`] (blocking, its own runtime) or
/// [`Server::run_until`] (in a tokio runtime).
///
/// ```
/// use prometheus_multiproc::collector::Collector;
/// use prometheus_multiproc::http::{Server, ServerConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let server = Server::bind(Collector::new(dir.path()), ServerConfig::new("127.0.0.1:0"))?;
/// println!("serving http://{}/metrics", server.local_addr());
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// // Stops at once here; a real server would wait for a signal.
/// runtime.block_on(server.run_until(async {}))?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    max_connections: usize,
    shared: Arc<Shared>,
}

impl Server {
    /// Checks `config`, reads the TLS files if any and binds the listening socket.
    pub fn bind(collector: Collector, config: ServerConfig) -> Result<Server, ServeError> {
        config.validate()?;
        #[cfg(feature = "tls")]
        let tls = config.tls.as_ref().map(TlsConfig::acceptor).transpose()?;
        let bind_err = |source| ServeError::Bind {
            addr: config.listen.clone(),
            source,
        };
        let listener = std::net::TcpListener::bind(&config.listen).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(Server {
            listener,
            addr,
            max_connections: config.max_connections,
            shared: Arc::new(Shared {
                scraper: Arc::new(Scraper::new(collector, config.max_concurrent_scrapes)),
                path: config.path,
                header_read_timeout: config.header_read_timeout,
                request_timeout: config.request_timeout,
                max_header_bytes: config.max_header_bytes,
                basic_auth: config.basic_auth,
                #[cfg(feature = "tls")]
                tls,
            }),
        })
    }

    /// The bound address (with the port picked when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.shared.tls.is_some()
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, lets the connections in flight
    /// finish their current request (for up to 5 seconds) and returns. Must run inside a tokio
    /// runtime with I/O and time enabled; scrapes run on its blocking pool.
    pub async fn run_until<F: Future<Output = ()>>(self, shutdown: F) -> Result<(), ServeError> {
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(|source| {
            ServeError::Bind {
                addr: self.addr.to_string(),
                source,
            }
        })?;
        let connections = Arc::new(Semaphore::new(self.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut at_limit = false;
        tokio::pin!(shutdown);
        loop {
            let permit = match Arc::clone(&connections).try_acquire_owned() {
                Ok(permit) => {
                    at_limit = false;
                    permit
                }
                Err(_) => {
                    if !at_limit {
                        log::warn!(
                            "{} connections open (the limit): new connections wait until one closes",
                            self.max_connections
                        );
                        at_limit = true;
                    }
                    tokio::select! {
                        permit = Arc::clone(&connections).acquire_owned() => {
                            permit.expect("the connection semaphore is never closed")
                        }
                        () = &mut shutdown => break,
                    }
                }
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        log::error!("accept on {} failed: {e}", self.addr);
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let shared = Arc::clone(&self.shared);
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                connection(stream, Peer(Some(peer)), shared, stop).await;
                drop(permit);
            });
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let all = u32::try_from(self.max_connections).expect("validated");
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.acquire_many(all))
            .await
            .is_err()
        {
            log::warn!("connections still open after {SHUTDOWN_GRACE:?}: dropping them");
        }
        Ok(())
    }

    /// Serves forever on a runtime of its own (two worker threads and the blocking pool),
    /// blocking the calling thread. Returns only if the runtime cannot start.
    pub fn run(self) -> Result<(), ServeError> {
        let runtime = runtime()?;
        runtime.block_on(self.run_until(std::future::pending()))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("prom-multiproc-http")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)
}

/// Serves the metrics of `collector` as `config` says, blocking the calling thread (see
/// [`start`] for a server on a background thread).
pub fn serve(collector: Collector, config: ServerConfig) -> Result<(), ServeError> {
    Server::bind(collector, config)?.run()
}

/// Starts the standalone server on a background thread with its own tokio runtime, as Python's
/// `start_http_server` does, and returns once it listens. The server stops when the returned
/// handle is dropped or [`ServerHandle::shutdown`] is called.
///
/// ```
/// use prometheus_multiproc::collector::Collector;
/// use prometheus_multiproc::http::{start, ServerConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let server = start(Collector::new(dir.path()), ServerConfig::new("127.0.0.1:0"))?;
/// assert_ne!(server.local_addr().port(), 0);
/// server.shutdown()?;
/// # Ok(())
/// # }
/// ```
pub fn start(collector: Collector, config: ServerConfig) -> Result<ServerHandle, ServeError> {
    let server = Server::bind(collector, config)?;
    let addr = server.local_addr();
    let runtime = runtime()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("prom-multiproc-http".into())
        .spawn(move || {
            let result = runtime.block_on(server.run_until(async {
                let _ = stopped.await;
            }));
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        })
        .map_err(ServeError::Runtime)?;
    Ok(ServerHandle {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The standalone server started by [`start`]; dropping it stops the server.
#[derive(Debug)]
#[must_use = "dropping the handle stops the server"]
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (for up to a few seconds) and waits for
    /// the server's thread to end.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| ServeError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            log::error!("metrics server on {}: {e}", self.addr);
        }
    }
}

/// Per connection: how many requests it carried and how many bytes had been read when the last
/// one arrived, to tell an idle keep-alive connection from a slow client when a timeout ends it.
#[derive(Debug, Default)]
struct ConnStats {
    bytes_read: AtomicU64,
    requests: AtomicU64,
    bytes_at_last_request: AtomicU64,
    write_timed_out: AtomicBool,
}

/// The socket (or TLS stream) of a connection: counts bytes read, and fails a write that
/// makes no progress for `write_timeout` (a client that stopped reading its response).
struct GuardedIo<S> {
    inner: S,
    write_timeout: Duration,
    write_stall: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<ConnStats>,
}

impl<S> GuardedIo<S> {
    fn new(inner: S, write_timeout: Duration, stats: Arc<ConnStats>) -> GuardedIo<S> {
        GuardedIo {
            inner,
            write_timeout,
            write_stall: None,
            stats,
        }
    }

    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.write_stall = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                let stall = self
                    .write_stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.stats.write_timed_out.store(true, Ordering::Relaxed);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client did not read the response",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let n = (buf.filled().len() - before) as u64;
            this.stats.bytes_read.fetch_add(n, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, data);
        this.guard(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, poll)
    }
}

/// One accepted connection: the TLS handshake if any, then HTTP/1.1 until the client leaves,
/// a limit is hit or the server stops.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: Peer,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    #[cfg(feature = "tls")]
    if let Some(acceptor) = &shared.tls {
        let handshake = acceptor.accept(stream);
        match tokio::time::timeout(shared.header_read_timeout, handshake).await {
            Ok(Ok(tls)) => http(tls, peer, Arc::clone(&shared), stop).await,
            Ok(Err(e)) => log::warn!("{peer}: TLS handshake failed: {e}"),
            Err(_) => log::warn!(
                "{peer}: TLS handshake not done after {:?}, closed the connection",
                shared.header_read_timeout
            ),
        }
        return;
    }
    http(stream, peer, shared, stop).await;
}

async fn http<S>(stream: S, peer: Peer, shared: Arc<Shared>, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stats = Arc::new(ConnStats::default());
    let io = GuardedIo::new(stream, shared.request_timeout, Arc::clone(&stats));
    let service = {
        let shared = Arc::clone(&shared);
        let stats = Arc::clone(&stats);
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let read = stats.bytes_read.load(Ordering::Relaxed);
            stats.bytes_at_last_request.store(read, Ordering::Relaxed);
            async move {
                let response = handle(&shared, request, peer).await;
                Ok::<_, Infallible>(response.map(|body| Full::new(Bytes::from(body))))
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.header_read_timeout)
        .max_buf_size(shared.max_header_bytes.max(MIN_READ_BUFFER))
        .max_header_size(shared.max_header_bytes)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        log_connection_error(&e, peer, &shared, &stats);
    }
}

/// One log line for a connection that ended in an error.
fn log_connection_error(e: &hyper::Error, peer: Peer, shared: &Shared, stats: &ConnStats) {
    let requests = stats.requests.load(Ordering::Relaxed);
    if e.is_timeout() {
        let idle = requests > 0
            && stats.bytes_read.load(Ordering::Relaxed)
                == stats.bytes_at_last_request.load(Ordering::Relaxed);
        if idle {
            log::debug!(
                "{peer}: idle keep-alive connection closed after {:?}",
                shared.header_read_timeout
            );
        } else {
            log::warn!(
                "{peer}: request headers not received within {:?}, closed the connection",
                shared.header_read_timeout
            );
        }
    } else if e.is_parse_too_large() {
        log::warn!(
            "{peer}: request line and headers over {} bytes, answered 431 and closed the connection",
            shared.max_header_bytes
        );
    } else if e.is_parse() {
        log::warn!("{peer}: malformed request ({e}), answered 400 and closed the connection");
    } else if stats.write_timed_out.load(Ordering::Relaxed) {
        log::warn!(
            "{peer}: the client read nothing of the response for {:?}, closed the connection",
            shared.request_timeout
        );
    } else if e.is_incomplete_message() {
        log::warn!("{peer}: the client closed the connection in the middle of a request");
    } else {
        log::info!("{peer}: connection ended with an error: {e}");
    }
}

/// Answers one request of the standalone server.
async fn handle(shared: &Shared, request: Request<Incoming>, peer: Peer) -> Response<Vec<u8>> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    if let Some(auth) = &shared.basic_auth {
        if let Err(why) = auth.check(&parts.headers) {
            log::warn!(
                "{peer} \"{} {}\": {why}, answered 401",
                parts.method,
                parts.uri.path()
            );
            let mut response = plain(StatusCode::UNAUTHORIZED, "authentication required");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"metrics\", charset=\"UTF-8\""),
            );
            return strip_body_for_head(&parts.method, response);
        }
    }
    match route(&shared.path, parts.uri.path()) {
        Route::Metrics => {}
        Route::Index => return index(&shared.path, &parts.method),
        Route::NotFound => {
            log::debug!(
                "{peer} \"{} {}\": answered 404",
                parts.method,
                parts.uri.path()
            );
            return not_found(&parts.method, parts.uri.path());
        }
    }
    if !is_get_or_head(&parts.method) {
        log::info!(
            "{peer} \"{} {}\": answered 405",
            parts.method,
            parts.uri.path()
        );
        return method_not_allowed(&parts.method);
    }
    // A scrape carries no body; one that announces a body is refused without reading it, and
    // its connection closed rather than drained.
    if !body.is_end_stream() {
        log::warn!(
            "{peer} \"{} {}\": request with a body, answered 413 and closed the connection",
            parts.method,
            parts.uri.path()
        );
        let mut response = plain(StatusCode::PAYLOAD_TOO_LARGE, "a scrape has no body");
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    drop(body);
    let scraper = &shared.scraper;
    let permit = match scraper.admit(&parts, &peer) {
        Ok(permit) => permit,
        Err(response) => return *response,
    };
    let (method, path) = (parts.method.clone(), parts.uri.path().to_owned());
    match tokio::time::timeout(shared.request_timeout, scraper.scrape(parts, permit)).await {
        Ok(Ok(response)) => {
            log::debug!(
                "{peer} \"{method} {path}\": {} {} {}{} bytes in {:?}",
                response.status().as_u16(),
                response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                if response.headers().contains_key(header::CONTENT_ENCODING) {
                    "gzip "
                } else {
                    ""
                },
                response
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0"),
                started.elapsed()
            );
            response
        }
        Ok(Err(e)) => {
            log::error!("{peer} \"{method} {path}\": the scrape failed ({e}), answered 500");
            strip_body_for_head(
                &method,
                plain(StatusCode::INTERNAL_SERVER_ERROR, "the scrape failed"),
            )
        }
        Err(_) => {
            log::warn!(
                "{peer} \"{method} {path}\": the scrape took over {:?}, answered 503",
                shared.request_timeout
            );
            strip_body_for_head(
                &method,
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the scrape took over {:?}", shared.request_timeout),
                ),
            )
        }
    }
}

// ------------------------------------------------------------------ axum

/// A `GET` (and `HEAD`) route answering [`scrape_response`] for `collector`, on axum's blocking
/// pool, with at most [`DEFAULT_MAX_CONCURRENT_SCRAPES`] scrapes at once (`503` beyond).
/// Mount it on any path (feature `axum`):
///
/// ```
/// use axum::Router;
/// use prometheus_multiproc::collector::Collector;
/// use prometheus_multiproc::http::axum_route;
///
/// let app: Router = Router::new().route("/internal/metrics", axum_route(Collector::new("/tmp/metrics")));
/// ```
#[cfg(feature = "axum")]
pub fn axum_route<S>(collector: Collector) -> axum::routing::MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let scraper = Arc::new(Scraper::new(collector, DEFAULT_MAX_CONCURRENT_SCRAPES));
    axum::routing::get(move |request: axum::extract::Request| {
        let scraper = Arc::clone(&scraper);
        async move {
            let (parts, _body) = request.into_parts();
            let peer = Peer(
                parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<SocketAddr>>()
                    .map(|info| info.0),
            );
            let response = match scraper.admit(&parts, &peer) {
                Err(response) => *response,
                Ok(permit) => {
                    let method = parts.method.clone();
                    match scraper.scrape(parts, permit).await {
                        Ok(response) => response,
                        Err(e) => {
                            log::error!("{peer}: the scrape failed ({e}), answered 500");
                            strip_body_for_head(
                                &method,
                                plain(StatusCode::INTERNAL_SERVER_ERROR, "the scrape failed"),
                            )
                        }
                    }
                }
            };
            response.map(axum::body::Body::from)
        }
    })
}

/// A router answering the metrics of `collector` on `/metrics` (see `axum_route`); merge it
/// into an application in one line (feature `axum`):
///
/// ```
/// use axum::{routing::get, Router};
/// use prometheus_multiproc::collector::Collector;
/// use prometheus_multiproc::http::axum_router;
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .merge(axum_router(Collector::new("/tmp/metrics")));
/// ```
#[cfg(feature = "axum")]
pub fn axum_router<S>(collector: Collector) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    axum::Router::new().route(DEFAULT_PATH, axum_route(collector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("name%5B%5D").as_deref(), Some("name[]"));
        assert_eq!(percent_decode("a+b%2").as_deref(), Some("a b%2"));
        assert_eq!(percent_decode("%").as_deref(), Some("%"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn names_from_the_query() {
        assert_eq!(requested_names(None), None);
        assert_eq!(requested_names(Some("x=1")), None);
        assert_eq!(
            requested_names(Some("name[]=a_total&name%5B%5D=b&other=c")),
            Some(vec!["a_total".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"user:pass", b"user:pass"));
        assert!(!constant_time_eq(b"user:pasS", b"user:pass"));
        assert!(!constant_time_eq(b"user:pas", b"user:pass"));
        assert!(!constant_time_eq(b"user:passs", b"user:pass"));
        assert!(!constant_time_eq(b"", b"user:pass"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn basic_auth_check() {
        let auth = BasicAuth::new("u", "p");
        let mut headers = HeaderMap::new();
        assert_eq!(auth.check(&headers), Err("no credentials"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpw"),
        );
        assert_eq!(auth.check(&headers), Ok(()));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("basic  dTpw "),
        );
        assert_eq!(auth.check(&headers), Ok(()));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpx"),
        );
        assert_eq!(auth.check(&headers), Err("wrong credentials"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer dTpw"),
        );
        assert_eq!(auth.check(&headers), Err("not basic authentication"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(auth.check(&headers), Err("malformed Authorization header"));
    }

    #[test]
    fn head_keeps_the_length_of_get() {
        let dir = tempfile::tempdir().unwrap();
        let collector = Collector::new(dir.path());
        let get = Request::get("/metrics").body(()).unwrap();
        let head = Request::head("/metrics").body(()).unwrap();
        let g = scrape_response(&collector, &get);
        let h = scrape_response(&collector, &head);
        assert!(!g.body().is_empty());
        assert!(h.body().is_empty());
        assert_eq!(g.headers(), h.headers());
        assert_eq!(
            g.headers()[header::CONTENT_LENGTH],
            g.body().len().to_string().as_str()
        );
    }
}
