//! Pushgateway client, for batch jobs (cron jobs, Celery tasks) that do not live long enough to
//! be scraped.
//!
//! A [`Pushgateway`] sends metric families in the text format to a Prometheus Pushgateway, under
//! a *group*: a job name and optional grouping labels. As in Python's `push_to_gateway`,
//! `pushadd_to_gateway` and `delete_from_gateway`:
//!
//! - [`push`](Pushgateway::push) (`PUT`) replaces every metric of the group;
//! - [`push_add`](Pushgateway::push_add) (`POST`) replaces only the families pushed, keeping
//!   the group's other families;
//! - [`delete`](Pushgateway::delete) (`DELETE`) removes the group.
//!
//! The group's URL is built exactly as Python builds it: `/metrics/job/<job>{/<label>/<value>}`
//! with the grouping labels sorted by name, each value percent-encoded, and a value that holds a
//! `/` or a space written in the Pushgateway's base64 form (`<label>@base64/<url-safe base64>`),
//! an empty value as `<label>@base64/=`. Beyond Python, `.` and `..`, which HTTP clients and
//! servers would resolve as relative path segments, also use the base64 form, and the job and
//! label names are checked before anything is sent.
//!
//! Any metric families can be pushed: those of a [`Registry`](crate::Registry) (its whole
//! merged directory, see [`Registry::gather`](crate::Registry::gather)), of a directory written
//! by Python workers ([`push_dir`](Pushgateway::push_dir)), or built by hand.
//!
//! ```no_run
//! use prometheus_multiproc::push::Pushgateway;
//! use prometheus_multiproc::Registry;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let registry = Registry::new(dir.path())?;
//! let rows = registry.counter("rows_processed_total", "Rows processed.")?;
//! rows.inc_by(1234.0)?;
//!
//! let gateway = Pushgateway::new("http://pushgateway.example.org:9091")
//!     .timeout(Duration::from_secs(10));
//! gateway.push("nightly_import", &[("shard", "eu/1")], &registry.gather())?;
//! # Ok(())
//! # }
//! ```
//!
//! Plain `http://` only: this crate builds its HTTP client without TLS, and a request to an
//! `https://` Pushgateway fails with a [`PushError::Connection`] that says so.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

use crate::collector::{CollectError, Collector, MetricFamily};
use crate::exposition::{encode, Format};

/// The default timeout of a request, as in Python's `push_to_gateway`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most bytes of a Pushgateway's error answer kept in a [`PushError::Status`].
const MAX_ERROR_BODY: usize = 4096;

/// A Pushgateway: its URL, a timeout and optional basic authentication.
///
/// Cloning is cheap, and clones share their connections.
///
/// ```
/// use prometheus_multiproc::push::Pushgateway;
///
/// let gateway = Pushgateway::new("localhost:9091/");
/// assert_eq!(gateway.url(), "http://localhost:9091");
/// assert_eq!(
///     gateway.group_url("backup", &[("instance", "db-1")]).unwrap(),
///     "http://localhost:9091/metrics/job/backup/instance/db-1"
/// );
/// ```
#[derive(Clone)]
pub struct Pushgateway {
    url: String,
    timeout: Duration,
    user: Option<String>,
    authorization: Option<String>,
    agent: ureq::Agent,
}

impl fmt::Debug for Pushgateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password stays out of logs.
        f.debug_struct("Pushgateway")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("basic_auth_user", &self.user)
            .finish()
    }
}

/// The HTTP method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Put,
    Post,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

impl Pushgateway {
    /// A Pushgateway at `url`: `http://host:port`, optionally with a path prefix. As in Python,
    /// a URL without an `http://` or `https://` scheme gets `http://`, and trailing slashes are
    /// dropped. The timeout is [`DEFAULT_TIMEOUT`].
    ///
    /// ```
    /// use prometheus_multiproc::push::Pushgateway;
    ///
    /// assert_eq!(Pushgateway::new("http://gw:9091").url(), "http://gw:9091");
    /// assert_eq!(Pushgateway::new("gw:9091//").url(), "http://gw:9091");
    /// assert_eq!(Pushgateway::new("http://gw/prefix/").url(), "http://gw/prefix");
    /// ```
    pub fn new(url: &str) -> Pushgateway {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        let url = if lower.starts_with("http://") || lower.starts_with("https://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        Pushgateway {
            url: url.trim_end_matches('/').to_owned(),
            timeout: DEFAULT_TIMEOUT,
            user: None,
            authorization: None,
            agent: agent(DEFAULT_TIMEOUT),
        }
    }

    /// The longest a request may take, connecting, sending and reading the answer included;
    /// past it the request fails with [`PushError::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Pushgateway {
        self.timeout = timeout;
        self.agent = agent(timeout);
        self
    }

    /// Sends HTTP basic authentication with every request.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Pushgateway {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.user = Some(user.to_owned());
        self.authorization = Some(format!("Basic {token}"));
        self
    }

    /// The Pushgateway's URL, normalized.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of the group of `job` and `grouping`, as Python's `push_to_gateway` builds it.
    ///
    /// Fails if `job` is empty, or a grouping label name is not a valid Prometheus label name,
    /// is reserved (`job`, or starting with `__`), or is given twice.
    ///
    /// ```
    /// use prometheus_multiproc::push::{PushError, Pushgateway};
    ///
    /// let gateway = Pushgateway::new("http://gw:9091");
    /// assert_eq!(
    ///     gateway
    ///         .group_url(
    ///             "import",
    ///             &[("path", "/var/data"), ("zone", ""), ("host", "a+b é"), ("id", "x~1.2")],
    ///         )
    ///         .unwrap(),
    ///     "http://gw:9091/metrics/job/import\
    ///      /host@base64/YStiIMOp/id/x~1.2/path@base64/L3Zhci9kYXRh/zone@base64/="
    /// );
    /// assert_eq!(
    ///     gateway.group_url("a/b", &[("tag", "100%")]).unwrap(),
    ///     "http://gw:9091/metrics/job@base64/YS9i/tag/100%25"
    /// );
    /// assert!(matches!(gateway.group_url("", &[]), Err(PushError::InvalidGroup { .. })));
    /// assert!(matches!(
    ///     gateway.group_url("import", &[("bad-name", "x")]),
    ///     Err(PushError::InvalidGroup { .. })
    /// ));
    /// ```
    pub fn group_url(&self, job: &str, grouping: &[(&str, &str)]) -> Result<String, PushError> {
        let invalid = |message: String| PushError::InvalidGroup {
            job: job.to_owned(),
            message,
        };
        if job.is_empty() {
            return Err(invalid("the job name is empty".to_owned()));
        }
        let mut labels: Vec<(&str, &str)> = grouping.to_vec();
        labels.sort_by(|a, b| a.0.cmp(b.0));
        for (i, (name, _)) in labels.iter().enumerate() {
            if !valid_label_name(name) {
                return Err(invalid(format!(
                    "grouping label name {name:?} is not a valid label name"
                )));
            }
            if *name == "job" || name.starts_with("__") {
                return Err(invalid(format!("grouping label name {name:?} is reserved")));
            }
            if i > 0 && labels[i - 1].0 == *name {
                return Err(invalid(format!("grouping label {name:?} is given twice")));
            }
        }
        let mut url = format!("{}/metrics", self.url);
        push_segment(&mut url, "job", job);
        for (name, value) in labels {
            push_segment(&mut url, name, value);
        }
        Ok(url)
    }

    /// Replaces every metric of the group of `job` and `grouping` with `families` (`PUT`), as
    /// Python's `push_to_gateway` does.
    pub fn push(
        &self,
        job: &str,
        grouping: &[(&str, &str)],
        families: &[MetricFamily],
    ) -> Result<(), PushError> {
        self.send(Method::Put, job, grouping, Some(families))
    }

    /// Adds `families` to the group of `job` and `grouping` (`POST`), replacing the families of
    /// the same names and keeping the others, as Python's `pushadd_to_gateway` does.
    pub fn push_add(
        &self,
        job: &str,
        grouping: &[(&str, &str)],
        families: &[MetricFamily],
    ) -> Result<(), PushError> {
        self.send(Method::Post, job, grouping, Some(families))
    }

    /// Deletes the group of `job` and `grouping` (`DELETE`), as Python's
    /// `delete_from_gateway` does.
    pub fn delete(&self, job: &str, grouping: &[(&str, &str)]) -> Result<(), PushError> {
        self.send(Method::Delete, job, grouping, None)
    }

    /// Replaces the group's metrics (`PUT`) with the merged metrics of the multiprocess
    /// directory `dir`, as a scrape of it would serve them, whoever wrote its files (Python or
    /// Rust workers).
    ///
    /// The `prometheus_multiproc_bad_files` gauge is left out: a pushed group stays on the
    /// Pushgateway until it is replaced, and that gauge describes one scrape, not the job. Bad
    /// files are logged and left out, as in a scrape; to push the gauge too, push the families
    /// of [`Collector::collect`] yourself.
    pub fn push_dir(
        &self,
        job: &str,
        grouping: &[(&str, &str)],
        dir: impl AsRef<Path>,
    ) -> Result<(), PushError> {
        let scrape = Collector::new(dir.as_ref())
            .self_metrics(false)
            .collect()
            .map_err(PushError::Collect)?;
        self.push(job, grouping, &scrape.families)
    }

    fn send(
        &self,
        method: Method,
        job: &str,
        grouping: &[(&str, &str)],
        families: Option<&[MetricFamily]>,
    ) -> Result<(), PushError> {
        let url = self.group_url(job, grouping)?;
        if self
            .url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            return Err(PushError::Connection {
                method: method.as_str(),
                url,
                message: "https is not supported: the HTTP client is built without TLS".to_owned(),
            });
        }
        let mut request = self
            .agent
            .request(method.as_str(), &url)
            // Sent with DELETE too, as Python does.
            .set("Content-Type", Format::Text.content_type());
        if let Some(authorization) = &self.authorization {
            request = request.set("Authorization", authorization);
        }
        let result = match families {
            Some(families) => request.send_string(&encode(families, Format::Text)),
            None => request.call(),
        };
        let status_error = |response: ureq::Response| {
            let status = response.status();
            let mut body = response.into_string().unwrap_or_default();
            if body.len() > MAX_ERROR_BODY {
                let mut end = MAX_ERROR_BODY;
                while !body.is_char_boundary(end) {
                    end -= 1;
                }
                body.truncate(end);
                body.push_str("...");
            }
            PushError::Status {
                method: method.as_str(),
                url: url.clone(),
                status,
                body: body.trim().to_owned(),
            }
        };
        match result {
            Ok(response) if (200..300).contains(&response.status()) => Ok(()),
            Ok(response) | Err(ureq::Error::Status(_, response)) => Err(status_error(response)),
            Err(ureq::Error::Transport(transport)) => {
                if timed_out(&transport) {
                    Err(PushError::Timeout {
                        method: method.as_str(),
                        url,
                        timeout: self.timeout,
                    })
                } else {
                    Err(PushError::Connection {
                        method: method.as_str(),
                        url,
                        message: transport_message(&transport),
                    })
                }
            }
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(timeout)
        .user_agent(concat!("prometheus-multiproc/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Whether a transport error is a timeout: an I/O error of kind `TimedOut` (or `WouldBlock`,
/// what a socket read timeout gives on some systems) anywhere in its causes.
fn timed_out(transport: &ureq::Transport) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(transport);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

/// What went wrong with a transport error, without the URL (which the error names already).
fn transport_message(transport: &ureq::Transport) -> String {
    let mut message = transport.kind().to_string();
    if let Some(detail) = transport.message() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if let Some(source) = std::error::Error::source(transport) {
        message.push_str(": ");
        message.push_str(&source.to_string());
    }
    message
}

/// Appends `/<name>/<value>` to `url`, escaped as Python's `_escape_grouping_key` does.
fn push_segment(url: &mut String, name: &str, value: &str) {
    url.push('/');
    url.push_str(name);
    if value.is_empty() {
        // Per the Pushgateway: an empty value can only be written in base64.
        url.push_str("@base64/=");
    } else if value.contains(['/', ' ']) || value == "." || value == ".." {
        url.push_str("@base64/");
        url.push_str(&base64::engine::general_purpose::URL_SAFE.encode(value));
    } else {
        url.push('/');
        // Python's `quote_plus` with no safe characters: all but the unreserved ones.
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-' | b'~') {
                url.push(byte as char);
            } else {
                url.push_str(&format!("%{byte:02X}"));
            }
        }
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why a push or a delete failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PushError {
    /// The job or the grouping labels cannot name a group; nothing was sent.
    InvalidGroup {
        /// The job.
        job: String,
        /// What is wrong.
        message: String,
    },
    /// The Pushgateway answered with a status other than 2xx.
    Status {
        /// The request's method.
        method: &'static str,
        /// The group's URL.
        url: String,
        /// The status code.
        status: u16,
        /// The answer's body (the Pushgateway's reason), trimmed, at most 4 KiB of it.
        body: String,
    },
    /// No complete answer came within the timeout.
    Timeout {
        /// The request's method.
        method: &'static str,
        /// The group's URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The Pushgateway could not be reached, or the connection failed (refused, reset, name
    /// not resolved, unsupported scheme).
    Connection {
        /// The request's method.
        method: &'static str,
        /// The group's URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The directory to push could not be read.
    Collect(CollectError),
}

impl PushError {
    /// The HTTP status of a [`PushError::Status`].
    ///
    /// ```
    /// use prometheus_multiproc::push::PushError;
    ///
    /// let e = PushError::Status {
    ///     method: "PUT",
    ///     url: "http://gw:9091/metrics/job/j".into(),
    ///     status: 400,
    ///     body: "text format parsing error in line 1".into(),
    /// };
    /// assert_eq!(e.status(), Some(400));
    /// assert_eq!(
    ///     e.to_string(),
    ///     "PUT http://gw:9091/metrics/job/j: the Pushgateway answered with status 400: \
    ///      text format parsing error in line 1"
    /// );
    /// ```
    pub fn status(&self) -> Option<u16> {
        match self {
            PushError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the request timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, PushError::Timeout { .. })
    }
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::InvalidGroup { job, message } => {
                write!(f, "cannot push job {job:?}: {message}")
            }
            PushError::Status {
                method,
                url,
                status,
                body,
            } => {
                write!(
                    f,
                    "{method} {url}: the Pushgateway answered with status {status}"
                )?;
                if body.is_empty() {
                    Ok(())
                } else {
                    write!(f, ": {body}")
                }
            }
            PushError::Timeout {
                method,
                url,
                timeout,
            } => write!(
                f,
                "{method} {url}: timed out, no complete answer within {timeout:?}"
            ),
            PushError::Connection {
                method,
                url,
                message,
            } => write!(f, "{method} {url}: cannot reach the Pushgateway: {message}"),
            PushError::Collect(e) => write!(f, "nothing pushed: {e}"),
        }
    }
}

impl std::error::Error for PushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PushError::Collect(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_matches_python() {
        // Expected URLs from prometheus_client 0.26's `_escape_grouping_key` and
        // `_use_gateway` for the same job and grouping key, except for `..`, which Python
        // sends as is.
        let gw = Pushgateway::new("gw");
        assert_eq!(
            gw.group_url("j", &[("a", "x y"), ("b", "ü?&=#"), ("c", "-_.~")])
                .unwrap(),
            "http://gw/metrics/job/j/a@base64/eCB5/b/%C3%BC%3F%26%3D%23/c/-_.~"
        );
        // Base64 with padding, URL-safe alphabet.
        assert_eq!(
            gw.group_url("j", &[("p", "/?>")]).unwrap(),
            "http://gw/metrics/job/j/p@base64/Lz8-"
        );
        assert_eq!(
            gw.group_url("j", &[("p", "a/b")]).unwrap(),
            "http://gw/metrics/job/j/p@base64/YS9i"
        );
        assert_eq!(
            gw.group_url("j", &[("p", "..")]).unwrap(),
            "http://gw/metrics/job/j/p@base64/Li4="
        );
    }

    #[test]
    fn invalid_groups() {
        let gw = Pushgateway::new("gw");
        for grouping in [
            &[("job", "x")][..],
            &[("__name", "x")],
            &[("1a", "x")],
            &[("", "x")],
            &[("a", "1"), ("a", "2")],
        ] {
            let e = gw.group_url("j", grouping).unwrap_err();
            assert!(matches!(e, PushError::InvalidGroup { .. }), "{e}");
        }
    }

    #[test]
    fn https_is_refused_with_a_reason() {
        let gw = Pushgateway::new("https://127.0.0.1:1");
        let e = gw.delete("j", &[]).unwrap_err();
        let PushError::Connection { message, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(message.contains("TLS"), "{e}");
    }

    #[test]
    fn debug_hides_the_password() {
        let gw = Pushgateway::new("gw").basic_auth("me", "s3cret");
        let shown = format!("{gw:?}");
        assert!(shown.contains("me") && !shown.contains("s3cret"), "{shown}");
    }
}
