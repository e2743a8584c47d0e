//! Metric types that record into this process's files: [`Counter`], [`Gauge`],
//! [`MostRecentGauge`], [`Histogram`], [`Summary`], and [`MetricVec`] of each for labelled
//! families.
//!
//! Every handle is cheap to clone and thread-safe. Recording is a lock-free atomic update of an
//! `f64` in the mapped file, with no system call, lock or allocation; after a `fork()` the first
//! use in the child moves the handle to the child's own files (Python's semantics: the child
//! starts from what its own files hold, and never writes into its parent's).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::children::Children;
use prometheus_multiproc_format::filename::{GaugeMode, MetricType};
use prometheus_multiproc_format::float::go_float;
use prometheus_multiproc_format::key::encode_key;

use crate::os::{GenCell, Slot};
use crate::writer::{FileKind, Files, WriteError};

/// Python's default histogram buckets: `.005` to `10` seconds (`+Inf` is added to every
/// histogram).
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A metric could not be created or updated as asked.
#[derive(Debug)]
pub enum MetricError {
    /// Not a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    InvalidName(String),
    /// Not a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`).
    InvalidLabelName(String),
    /// A label name this metric type reserves (`le` for histograms, `quantile` for summaries,
    /// `pid` for gauges whose mode adds it).
    ReservedLabelName {
        /// The label name.
        label: String,
        /// The metric type that reserves it.
        kind: &'static str,
    },
    /// The same label name twice.
    DuplicateLabelName(String),
    /// Label values do not match the label names.
    LabelCount {
        /// Label names of the family.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A label-map lookup named a label the family does not have (or missed one).
    UnknownLabel(String),
    /// A counter can only go up.
    NegativeIncrement(f64),
    /// Bucket bounds must be increasing, and there must be at least one besides `+Inf`.
    InvalidBuckets(String),
    /// `gauge()` was asked for a most-recent mode, or `most_recent_gauge()` for another one.
    WrongGaugeMode(GaugeMode),
    /// The name is already registered as another type or with other labels.
    AlreadyRegistered(String),
    /// The process's file could not be written.
    Write(WriteError),
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricError::InvalidName(n) => write!(f, "invalid metric name {n:?}"),
            MetricError::InvalidLabelName(n) => write!(f, "invalid label name {n:?}"),
            MetricError::ReservedLabelName { label, kind } => {
                write!(f, "label name {label:?} is reserved for {kind}")
            }
            MetricError::DuplicateLabelName(n) => write!(f, "duplicate label name {n:?}"),
            MetricError::LabelCount { expected, got } => {
                write!(f, "expected {expected} label values, got {got}")
            }
            MetricError::UnknownLabel(n) => {
                write!(f, "label {n:?} does not match the family's labels")
            }
            MetricError::NegativeIncrement(v) => {
                write!(
                    f,
                    "counters can only be incremented by non-negative amounts, got {v}"
                )
            }
            MetricError::InvalidBuckets(why) => write!(f, "invalid histogram buckets: {why}"),
            MetricError::WrongGaugeMode(m) => write!(
                f,
                "gauge mode {m} needs {}",
                if m.is_most_recent() {
                    "most_recent_gauge(), which only sets values (inc/dec are refused, as in Python)"
                } else {
                    "gauge(); most_recent_gauge() takes mostrecent or livemostrecent"
                }
            ),
            MetricError::AlreadyRegistered(n) => {
                write!(
                    f,
                    "metric {n:?} is already registered with another type or labels"
                )
            }
            MetricError::Write(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for MetricError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetricError::Write(e) => Some(e),
            _ => None,
        }
    }
}

impl From<WriteError> for MetricError {
    fn from(e: WriteError) -> MetricError {
        MetricError::Write(e)
    }
}

pub(crate) fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | 'A'..='Z' | '_' | ':'))
        && chars.all(|c| matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | ':'))
}

pub(crate) fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | 'A'..='Z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '_'))
        && !name.starts_with("__")
}

/// What kind of metric a family is, with what it needs to lay out its entries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Variant {
    Counter,
    Gauge(GaugeMode),
    Histogram(Arc<[f64]>),
    Summary,
}

impl Variant {
    pub(crate) fn file_kind(&self) -> FileKind {
        match self {
            Variant::Counter => FileKind {
                kind: MetricType::Counter,
                mode: None,
            },
            Variant::Gauge(m) => FileKind {
                kind: MetricType::Gauge,
                mode: Some(*m),
            },
            Variant::Histogram(_) => FileKind {
                kind: MetricType::Histogram,
                mode: None,
            },
            Variant::Summary => FileKind {
                kind: MetricType::Summary,
                mode: None,
            },
        }
    }
}

/// A family's description: name, help, label names, type.
#[derive(Debug)]
pub(crate) struct Desc {
    pub(crate) files: Arc<Files>,
    /// The family name as stored in keys (`requests` for a counter named `requests_total`).
    pub(crate) name: String,
    pub(crate) help: String,
    pub(crate) label_names: Vec<String>,
    pub(crate) variant: Variant,
}

impl Desc {
    /// The keys of one child's entries, in the order Python creates them.
    fn keys(&self, values: &[&str]) -> Vec<String> {
        let labels: Vec<(&str, &str)> = self
            .label_names
            .iter()
            .map(String::as_str)
            .zip(values.iter().copied())
            .collect();
        let key = |sample: &str, labels: &[(&str, &str)]| {
            encode_key(&self.name, sample, labels, &self.help)
        };
        match &self.variant {
            Variant::Counter => vec![key(&format!("{}_total", self.name), &labels)],
            Variant::Gauge(_) => vec![key(&self.name, &labels)],
            Variant::Summary => vec![
                key(&format!("{}_count", self.name), &labels),
                key(&format!("{}_sum", self.name), &labels),
            ],
            Variant::Histogram(bounds) => {
                let mut keys = vec![key(&format!("{}_sum", self.name), &labels)];
                let bucket = format!("{}_bucket", self.name);
                for b in bounds.iter() {
                    let le = go_float(*b);
                    let mut with_le = labels.clone();
                    with_le.push(("le", &le));
                    keys.push(key(&bucket, &with_le));
                }
                keys
            }
        }
    }
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("name", &self.desc.name)
            .field("keys", &self.keys)
            .finish()
    }
}

impl Child {
    fn new(desc: Arc<Desc>, values: &[&str]) -> Result<Child, MetricError> {
        let keys = desc.keys(values);
        let slots = resolve(&desc, &keys)?;
        Ok(Child {
            desc,
            keys,
            slots: GenCell::new(slots),
        })
    }

    #[inline]
    fn slots(&self) -> &[Slot] {
        match self.slots.get() {
            Some(s) => s,
            None => self.slots_after_fork(),
        }
    }

    /// First use in a forked child: the same series in the child's own files.
    #[cold]
    fn slots_after_fork(&self) -> &[Slot] {
        let resolved = self.slots.get_or_try_insert_with(|| {
            Ok::<_, std::convert::Infallible>(resolve(&self.desc, &self.keys).unwrap_or_else(|e| {
                log::error!("{e}; values of {} are kept in memory only", self.desc.name);
                self.keys.iter().map(|_| Slot::detached(0.0)).collect()
            }))
        });
        match resolved {
            Ok(s) => s,
            Err(never) => match never {},
        }
    }
}

fn resolve(desc: &Desc, keys: &[String]) -> Result<Vec<Slot>, MetricError> {
    let kind = desc.variant.file_kind();
    keys.iter()
        .map(|k| desc.files.slot(kind, k).map_err(MetricError::from))
        .collect()
}

#[inline]
fn add(a: &AtomicU64, v: f64) {
    let mut current = a.load(Ordering::Relaxed);
    loop {
        let new = (f64::from_bits(current) + v).to_bits();
        match a.compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

#[inline]
fn load(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A value that only goes up: requests served, bytes sent, errors.
///
/// Stored as `{name}_total` in `counter_{pid}.db`; a name given with `_total` has it removed
/// for the family name, as in Python.
#[derive(Debug, Clone)]
pub struct Counter(&'static Child);

impl Counter {
    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        add(self.0.slots()[0].value(), 1.0);
    }

    /// Adds `v`, which must not be negative.
    #[inline]
    pub fn inc_by(&self, v: f64) -> Result<(), MetricError> {
        if v < 0.0 {
            return Err(MetricError::NegativeIncrement(v));
        }
        add(self.0.slots()[0].value(), v);
        Ok(())
    }

    /// The value in this process's file.
    pub fn get(&self) -> f64 {
        load(self.0.slots()[0].value())
    }
}

/// A value that goes up and down, merged across processes by its [`GaugeMode`] (any but the
/// most-recent modes: see [`MostRecentGauge`]).
#[derive(Debug, Clone)]
pub struct Gauge(&'static Child);

impl Gauge {
    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        add(self.0.slots()[0].value(), 1.0);
    }

    /// Subtracts 1.
    #[inline]
    pub fn dec(&self) {
        add(self.0.slots()[0].value(), -1.0);
    }

    /// Adds `v`.
    #[inline]
    pub fn add(&self, v: f64) {
        add(self.0.slots()[0].value(), v);
    }

    /// Subtracts `v`.
    #[inline]
    pub fn sub(&self, v: f64) {
        add(self.0.slots()[0].value(), -v);
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.slots()[0]
            .value()
            .store(v.to_bits(), Ordering::Relaxed);
    }

    /// Sets the value to the current Unix time in seconds.
    pub fn set_to_current_time(&self) {
        self.set(now());
    }

    /// The value in this process's file.
    pub fn get(&self) -> f64 {
        load(self.0.slots()[0].value())
    }

    /// Adds 1 now and subtracts it when the guard drops: requests in progress.
    pub fn track_inprogress(&self) -> InProgress<'_> {
        self.inc();
        InProgress(self)
    }
}

/// Returned by [`Gauge::track_inprogress`]: decrements the gauge when dropped.
#[derive(Debug)]
#[must_use = "the gauge is decremented when this guard drops"]
pub struct InProgress<'a>(&'a Gauge);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A gauge in mode `mostrecent` or `livemostrecent`: the merged value is the one set last,
/// across processes. It can only be set (Python refuses `inc` and `dec` on these modes).
#[derive(Debug, Clone)]
pub struct MostRecentGauge(&'static Child);

impl MostRecentGauge {
    /// Sets the value, stamped with the current time.
    pub fn set(&self, v: f64) {
        let slot = &self.0.slots()[0];
        slot.value().store(v.to_bits(), Ordering::Relaxed);
        slot.timestamp().store(now().to_bits(), Ordering::Relaxed);
    }

    /// Sets the value to the current Unix time in seconds.
    pub fn set_to_current_time(&self) {
        self.set(now());
    }

    /// The value in this process's file.
    pub fn get(&self) -> f64 {
        load(self.0.slots()[0].value())
    }
}

/// Observations counted in buckets: request latencies, sizes.
#[derive(Debug, Clone)]
pub struct Histogram {
    child: &'static Child,
    bounds: &'static [f64],
}

impl Histogram {
    /// Records one observation: one bucket (the first whose bound is at least `v`) and the sum.
    #[inline]
    pub fn observe(&self, v: f64) {
        let slots = self.child.slots();
        // slots[0] is `_sum`, then one per bound; `+Inf` is the last bound.
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            add(slots[i + 1].value(), 1.0);
        }
        add(slots[0].value(), v);
    }

    /// Starts a timer that observes the elapsed seconds when dropped (or on
    /// [`observe_duration`](HistogramTimer::observe_duration)).
    pub fn start_timer(&self) -> HistogramTimer<'_> {
        HistogramTimer {
            histogram: self,
            start: Instant::now(),
            done: false,
        }
    }

    /// Runs `f` and observes how long it took, in seconds.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let _timer = self.start_timer();
        f()
    }

    /// The bucket upper bounds, ending with `+Inf`.
    pub fn bounds(&self) -> &[f64] {
        self.bounds
    }
}

/// Returned by [`Histogram::start_timer`]: observes the elapsed time when dropped.
#[derive(Debug)]
#[must_use = "the duration is observed when this timer drops"]
pub struct HistogramTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
    done: bool,
}

impl HistogramTimer<'_> {
    /// Observes the elapsed seconds now and returns them.
    pub fn observe_duration(mut self) -> Duration {
        self.done = true;
        let d = self.start.elapsed();
        self.histogram.observe(d.as_secs_f64());
        d
    }

    /// Stops without observing.
    pub fn stop_and_discard(mut self) {
        self.done = true;
    }
}

impl Drop for HistogramTimer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.histogram.observe(self.start.elapsed().as_secs_f64());
        }
    }
}

/// Observations counted and summed (`_count` and `_sum`; Python's multiprocess mode has no
/// quantiles).
#[derive(Debug, Clone)]
pub struct Summary(&'static Child);

impl Summary {
    /// Records one observation.
    #[inline]
    pub fn observe(&self, v: f64) {
        let slots = self.0.slots();
        add(slots[0].value(), 1.0);
        add(slots[1].value(), v);
    }

    /// Runs `f` and observes how long it took, in seconds.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.observe(start.elapsed().as_secs_f64());
        out
    }
}

/// Bucket bounds growing linearly: `start`, `start + width`, ... (`count` of them).
pub fn linear_buckets(start: f64, width: f64, count: usize) -> Result<Vec<f64>, MetricError> {
    if count == 0 || width.is_nan() || width <= 0.0 || !start.is_finite() {
        return Err(MetricError::InvalidBuckets(format!(
            "linear buckets need count > 0, a positive width and a finite start (got {start}, {width}, {count})"
        )));
    }
    Ok((0..count).map(|i| start + width * i as f64).collect())
}

/// Bucket bounds growing exponentially: `start`, `start * factor`, ... (`count` of them).
pub fn exponential_buckets(start: f64, factor: f64, count: usize) -> Result<Vec<f64>, MetricError> {
    if count == 0
        || start.is_nan()
        || start <= 0.0
        || factor.is_nan()
        || factor <= 1.0
        || !start.is_finite()
    {
        return Err(MetricError::InvalidBuckets(format!(
            "exponential buckets need count > 0, start > 0 and factor > 1 (got {start}, {factor}, {count})"
        )));
    }
    Ok((0..count).map(|i| start * factor.powi(i as i32)).collect())
}

/// Checks bounds and appends `+Inf` when missing, as Python does.
pub(crate) fn bucket_bounds(buckets: &[f64]) -> Result<Arc<[f64]>, MetricError> {
    if buckets.iter().any(|b| b.is_nan()) {
        return Err(MetricError::InvalidBuckets("NaN bound".into()));
    }
    if !buckets.windows(2).all(|w| w[0] < w[1]) {
        return Err(MetricError::InvalidBuckets(format!(
            "bounds must be strictly increasing, got {buckets:?}"
        )));
    }
    let mut bounds = buckets.to_vec();
    if bounds.last() != Some(&f64::INFINITY) {
        bounds.push(f64::INFINITY);
    }
    if bounds.len() < 2 {
        return Err(MetricError::InvalidBuckets(
            "at least one bound besides +Inf is needed".into(),
        ));
    }
    Ok(bounds.into())
}

mod sealed {
    use super::*;

    /// One series' slots (one per entry), re-resolved in the child after a fork.
    #[allow(unnameable_types)]
    pub struct Child {
        pub(super) desc: Arc<Desc>,
        pub(super) keys: Vec<String>,
        pub(super) slots: GenCell<Vec<Slot>>,
    }

    pub trait Sealed {
        fn from_child(child: &'static Child) -> Self;
    }
}

use sealed::Child;

/// A metric type that can be a child of a [`MetricVec`]: [`Counter`], [`Gauge`],
/// [`MostRecentGauge`], [`Histogram`], [`Summary`].
pub trait Metric: Clone + sealed::Sealed {}

impl Metric for Counter {}
impl sealed::Sealed for Counter {
    fn from_child(child: &'static Child) -> Self {
        Counter(child)
    }
}
impl Metric for Gauge {}
impl sealed::Sealed for Gauge {
    fn from_child(child: &'static Child) -> Self {
        Gauge(child)
    }
}
impl Metric for MostRecentGauge {}
impl sealed::Sealed for MostRecentGauge {
    fn from_child(child: &'static Child) -> Self {
        MostRecentGauge(child)
    }
}
impl Metric for Histogram {}
impl sealed::Sealed for Histogram {
    fn from_child(child: &'static Child) -> Self {
        let bounds = match &child.desc.variant {
            Variant::Histogram(b) => b,
            _ => &[f64::INFINITY][..],
        };
        Histogram { child, bounds }
    }
}
impl Metric for Summary {}
impl sealed::Sealed for Summary {
    fn from_child(child: &'static Child) -> Self {
        Summary(child)
    }
}

pub(crate) fn unlabelled<M: Metric>(desc: Arc<Desc>) -> Result<M, MetricError> {
    Ok(M::from_child(keep(Child::new(desc, &[])?)))
}

/// A series' child lives as long as the process, as its entry in the file and the open file
/// itself do: handles are then plain references, which cost no reference counting when a
/// labelled lookup hands one out (two atomic read-modify-writes fewer than an `Arc`). The
/// memory is a few hundred bytes per series ever created, which the file outgrows anyway.
fn keep(child: Child) -> &'static Child {
    Box::leak(Box::new(child))
}

/// A labelled family: one child metric per combination of label values.
///
/// ```
/// use prometheus_multiproc::Registry;
///
/// let dir = tempfile::tempdir().unwrap();
/// let registry = Registry::new(dir.path()).unwrap();
/// let requests = registry
///     .counter_vec("http_requests_total", "Requests.", &["method", "path"])
///     .unwrap();
/// requests.with_label_values(&["GET", "/users/{id}"]).inc();
/// requests.with_label_values(&["GET", "/users/{id}"]).inc();
/// assert_eq!(requests.with_label_values(&["GET", "/users/{id}"]).get(), 2.0);
/// assert!(requests.get_metric_with_label_values(&["GET"]).is_err());
/// ```
pub struct MetricVec<M: Metric> {
    desc: Arc<Desc>,
    /// One table per fork generation: a forked child starts with an empty one, since the
    /// parent's may have been locked by another thread at the moment of `fork()` (and would stay
    /// locked forever in the child); the child's series live in its own files anyway.
    children: Arc<GenCell<Children<M>>>,
}

impl<M: Metric> Clone for MetricVec<M> {
    fn clone(&self) -> Self {
        MetricVec {
            desc: Arc::clone(&self.desc),
            children: Arc::clone(&self.children),
        }
    }
}

impl<M: Metric> fmt::Debug for MetricVec<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricVec")
            .field("name", &self.desc.name)
            .field("label_names", &self.desc.label_names)
            .finish()
    }
}

/// A labelled [`Counter`] family.
pub type CounterVec = MetricVec<Counter>;
/// A labelled [`Gauge`] family.
pub type GaugeVec = MetricVec<Gauge>;
/// A labelled [`MostRecentGauge`] family.
pub type MostRecentGaugeVec = MetricVec<MostRecentGauge>;
/// A labelled [`Histogram`] family.
pub type HistogramVec = MetricVec<Histogram>;
/// A labelled [`Summary`] family.
pub type SummaryVec = MetricVec<Summary>;

/// A hash of label values for the children table, which compares the values themselves after a
/// match, so a collision only costs time. Each value is folded into one word (its length, its
/// first and last bytes, or every 8 bytes of a long one) and multiplied by a constant of its
/// position; the products are independent of each other, so the processor computes them side by
/// side instead of one after the other as a streaming hasher does.
#[inline]
fn hash_values(values: &[&str]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut acc = values.len() as u64;
    for (i, v) in values.iter().enumerate() {
        let b = v.as_bytes();
        let n = b.len();
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        let half = |at: usize| {
            u64::from(u32::from_le_bytes(
                b[at..at + 4].try_into().unwrap_or([0; 4]),
            ))
        };
        let folded = match n {
            0 => 0,
            1..=3 => u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16,
            4..=7 => half(0) | half(n - 4) << 32,
            8..=16 => word(0) ^ word(n - 8).rotate_left(29),
            _ => {
                let mut h = word(n - 8);
                for chunk in b.chunks_exact(8) {
                    let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
                    h = (h.rotate_left(5) ^ w).wrapping_mul(K);
                }
                h
            }
        };
        let position = K.wrapping_add((i as u64) << 1);
        acc ^= (folded ^ (n as u64) << 56).wrapping_mul(position | 1);
    }
    // The table indexes by the high bits: mix the low ones up into them.
    (acc ^ acc >> 32).wrapping_mul(K)
}

impl<M: Metric> MetricVec<M> {
    pub(crate) fn new(desc: Arc<Desc>) -> MetricVec<M> {
        MetricVec {
            desc,
            children: Arc::new(GenCell::new(Children::default())),
        }
    }

    /// This generation's table of children.
    #[inline]
    fn table(&self) -> &Children<M> {
        match self.children.get() {
            Some(t) => t,
            None => self.table_after_fork(),
        }
    }

    /// First lookup in a forked child: a fresh table.
    #[cold]
    fn table_after_fork(&self) -> &Children<M> {
        match self
            .children
            .get_or_try_insert_with(|| Ok::<_, std::convert::Infallible>(Children::default()))
        {
            Ok(t) => t,
            Err(never) => match never {},
        }
    }

    /// The child for these label values (in the order of the label names), created on first use.
    ///
    /// # Panics
    ///
    /// When the number of values differs from the number of label names, like the other Rust
    /// Prometheus crates; [`get_metric_with_label_values`](Self::get_metric_with_label_values)
    /// returns an error instead. A child whose file cannot be written (full disk) is not a panic:
    /// it counts in memory and the error is logged.
    #[inline]
    pub fn with_label_values(&self, values: &[&str]) -> M {
        match self.lookup(values) {
            Ok(m) => m,
            Err(MetricError::Write(e)) => {
                log::error!("{e}; values of {} are kept in memory only", self.desc.name);
                self.insert_detached(values)
            }
            Err(e) => panic!("{}: {e}", self.desc.name),
        }
    }

    /// The child for these label values, or an error naming what is wrong.
    pub fn get_metric_with_label_values(&self, values: &[&str]) -> Result<M, MetricError> {
        self.lookup(values)
    }

    /// The child for a map of label names to values.
    pub fn with(&self, labels: &HashMap<&str, &str>) -> Result<M, MetricError> {
        if labels.len() != self.desc.label_names.len() {
            return Err(MetricError::LabelCount {
                expected: self.desc.label_names.len(),
                got: labels.len(),
            });
        }
        let values: Vec<&str> = self
            .desc
            .label_names
            .iter()
            .map(|n| {
                labels
                    .get(n.as_str())
                    .copied()
                    .ok_or_else(|| MetricError::UnknownLabel(n.clone()))
            })
            .collect::<Result<_, _>>()?;
        self.lookup(&values)
    }

    /// Forgets the child for these label values: an error if there is none, and
    /// [`get_metric_with_label_values`](Self::get_metric_with_label_values) makes it again. As
    /// in Python, its entry stays in the file (so a counter never goes down), and the same
    /// values later give a child that continues from it. Its memory is kept for that, as a
    /// series' memory is for the life of the process.
    pub fn remove_label_values(&self, values: &[&str]) -> Result<(), MetricError> {
        self.check_count(values)?;
        if self.table().remove(hash_values(values), values) {
            Ok(())
        } else {
            Err(MetricError::UnknownLabel(values.join(",")))
        }
    }

    fn check_count(&self, values: &[&str]) -> Result<(), MetricError> {
        if values.len() != self.desc.label_names.len() {
            return Err(MetricError::LabelCount {
                expected: self.desc.label_names.len(),
                got: values.len(),
            });
        }
        Ok(())
    }

    #[inline]
    fn lookup(&self, values: &[&str]) -> Result<M, MetricError> {
        self.check_count(values)?;
        let h = hash_values(values);
        match self.table().get(h, values) {
            Some(m) => Ok(m),
            None => self.create(h, values),
        }
    }

    #[cold]
    fn create(&self, h: u64, values: &[&str]) -> Result<M, MetricError> {
        self.table().get_or_insert_with(h, values, || {
            Ok(M::from_child(keep(Child::new(
                Arc::clone(&self.desc),
                values,
            )?)))
        })
    }

    /// A child counting in memory only, kept in the table so that later lookups of the same
    /// values find it (and go on counting) instead of retrying the file each time.
    #[cold]
    fn insert_detached(&self, values: &[&str]) -> M {
        let made = self
            .table()
            .get_or_insert_with(hash_values(values), values, || {
                let keys = self.desc.keys(values);
                let slots = keys.iter().map(|_| Slot::detached(0.0)).collect();
                Ok::<_, std::convert::Infallible>(M::from_child(keep(Child {
                    desc: Arc::clone(&self.desc),
                    keys,
                    slots: GenCell::new(slots),
                })))
            });
        match made {
            Ok(m) => m,
            Err(never) => match never {},
        }
    }
}
