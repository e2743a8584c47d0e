//! The registry: metrics bound to a multiprocess directory, recording into this process's files.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus_multiproc_format::filename::GaugeMode;

use crate::collector::{dir_from_env, DIR_ENV};
use crate::metrics::{
    bucket_bounds, unlabelled, valid_label_name, valid_metric_name, Counter, CounterVec, Desc,
    Gauge, GaugeVec, Histogram, HistogramVec, MetricError, MetricVec, MostRecentGauge,
    MostRecentGaugeVec, Summary, SummaryVec, Variant,
};
use crate::os::AppendList;
use crate::writer::Files;

/// The directory cannot be used for metrics.
#[derive(Debug)]
pub struct RegistryError {
    /// The directory (empty when none was configured).
    pub dir: PathBuf,
    /// What is wrong.
    pub source: io::Error,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dir.as_os_str().is_empty() {
            write!(f, "no multiprocess directory: {}", self.source)
        } else {
            write!(
                f,
                "cannot use multiprocess directory {}: {}",
                self.dir.display(),
                self.source
            )
        }
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Registered family names, with their type and label names. A lock-free list: a lock held by
/// another thread at the moment of `fork()` would stay held forever in the child, and
/// registering there would deadlock.
struct Families(AppendList<(String, Variant, Vec<String>)>);

impl Default for Families {
    fn default() -> Families {
        Families(AppendList::new())
    }
}

impl fmt::Debug for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _, _)| name))
            .finish()
    }
}

/// Creates metrics that record into this process's files in a multiprocess directory.
///
/// Cloning is cheap; clones share everything. Files are created lazily, on the first metric of
/// each type, named as Python names them, so Python's `MultiProcessCollector` and
/// `mark_process_dead` understand them.
///
/// ```
/// use prometheus_multiproc::{GaugeMode, Registry};
/// use prometheus_multiproc::collector::Collector;
/// use prometheus_multiproc::exposition::{encode, Format};
///
/// let dir = tempfile::tempdir().unwrap();
/// let registry = Registry::new(dir.path()).unwrap();
/// let jobs = registry.counter("jobs_total", "Jobs done.").unwrap();
/// let queue = registry.gauge("queue_length", "Jobs waiting.", GaugeMode::LiveSum).unwrap();
/// jobs.inc();
/// queue.set(3.0);
///
/// let scrape = Collector::new(dir.path()).self_metrics(false).collect().unwrap();
/// assert_eq!(
///     encode(&scrape.families, Format::Text),
///     concat!(
///         "# HELP jobs_total Jobs done.\n",
///         "# TYPE jobs_total counter\n",
///         "jobs_total 1.0\n",
///         "# HELP queue_length Jobs waiting.\n",
///         "# TYPE queue_length gauge\n",
///         "queue_length 3.0\n",
///     )
/// );
/// ```
#[derive(Debug, Clone)]
pub struct Registry {
    files: Arc<Files>,
    families: Arc<Families>,
}

impl Registry {
    /// A registry writing into `PROMETHEUS_MULTIPROC_DIR` (or the legacy lower-case variable,
    /// with a deprecation warning logged).
    pub fn from_env() -> Result<Registry, RegistryError> {
        match dir_from_env() {
            Some(dir) => Registry::new(dir),
            None => Err(RegistryError {
                dir: PathBuf::new(),
                source: io::Error::new(io::ErrorKind::NotFound, format!("{DIR_ENV} is not set")),
            }),
        }
    }

    /// A registry writing into `dir`, which must exist and be writable.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Registry, RegistryError> {
        Registry::with_process_id(dir, crate::os::pid)
    }

    /// A registry whose files are named with `process_id()` instead of the pid, like Python's
    /// `MultiProcessValue(process_identifier)`. It is called once per process (again in a
    /// forked child) and must return distinct values for processes alive at the same time; the
    /// liveness lock is taken under that id.
    pub fn with_process_id(
        dir: impl Into<PathBuf>,
        process_id: fn() -> u32,
    ) -> Result<Registry, RegistryError> {
        let dir = dir.into();
        let err = |source| RegistryError {
            dir: dir.clone(),
            source,
        };
        let meta = std::fs::metadata(&dir).map_err(err)?;
        if !meta.is_dir() {
            return Err(err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        // Writable? A probe whose name does not end in `.db`, so no collector ever reads it.
        let probe = dir.join(format!(
            ".prometheus-multiproc-probe-{}",
            std::process::id()
        ));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .map_err(err)?;
        let _ = std::fs::remove_file(&probe);
        Ok(Registry {
            files: Files::shared(dir, process_id),
            families: Arc::default(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.files.dir()
    }

    /// The pid this process's files are named with (the child's own after a fork).
    pub fn pid(&self) -> u32 {
        self.files.pid()
    }

    /// The merged metrics of this registry's directory: every process's files, as a scrape
    /// would serve them, without the `prometheus_multiproc_bad_files` gauge (bad files are
    /// logged and left out). Empty, with an error logged, if the directory cannot be read any
    /// more.
    ///
    /// ```
    /// use prometheus_multiproc::Registry;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let registry = Registry::new(dir.path()).unwrap();
    /// registry.counter("jobs_total", "Jobs done.").unwrap().inc_by(2.0).unwrap();
    /// let families = registry.gather();
    /// assert_eq!(families.len(), 1);
    /// assert_eq!(families[0].samples[0].name, "jobs_total");
    /// assert_eq!(families[0].samples[0].value, 2.0);
    /// ```
    pub fn gather(&self) -> Vec<crate::collector::MetricFamily> {
        match crate::collector::Collector::new(self.dir())
            .self_metrics(false)
            .collect()
        {
            Ok(scrape) => scrape.families,
            Err(e) => {
                log::error!("{e}");
                Vec::new()
            }
        }
    }

    fn desc(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        variant: Variant,
    ) -> Result<Arc<Desc>, MetricError> {
        let name = match variant {
            Variant::Counter => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        if !valid_metric_name(name) {
            return Err(MetricError::InvalidName(name.to_owned()));
        }
        for (i, l) in labels.iter().enumerate() {
            if !valid_label_name(l) {
                return Err(MetricError::InvalidLabelName((*l).to_owned()));
            }
            if labels[..i].contains(l) {
                return Err(MetricError::DuplicateLabelName((*l).to_owned()));
            }
            let reserved = match (&variant, *l) {
                (Variant::Histogram(_), "le") => Some("histograms"),
                (Variant::Summary, "quantile") => Some("summaries"),
                (Variant::Gauge(m), "pid") if m.keeps_pid() => {
                    Some("gauges in mode all and liveall, which add it")
                }
                _ => None,
            };
            if let Some(kind) = reserved {
                return Err(MetricError::ReservedLabelName {
                    label: (*l).to_owned(),
                    kind,
                });
            }
        }
        let label_names: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        // The first registration of a name wins, also when threads race.
        let (_, v, l) = self.families.0.find_or_push(
            |(n, _, _)| n == name,
            || (name.to_owned(), variant.clone(), label_names.clone()),
        );
        if *v != variant || *l != label_names {
            return Err(MetricError::AlreadyRegistered(name.to_owned()));
        }
        Ok(Arc::new(Desc {
            files: Arc::clone(&self.files),
            name: name.to_owned(),
            help: help.to_owned(),
            label_names,
            variant,
        }))
    }

    /// An unlabelled counter. A name ending in `_total` is stored as Python stores it: family
    /// without the suffix, sample with it.
    pub fn counter(&self, name: &str, help: &str) -> Result<Counter, MetricError> {
        unlabelled(self.desc(name, help, &[], Variant::Counter)?)
    }

    /// A labelled counter family.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<CounterVec, MetricError> {
        Ok(MetricVec::new(self.desc(
            name,
            help,
            labels,
            Variant::Counter,
        )?))
    }

    fn gauge_mode(mode: GaugeMode, most_recent: bool) -> Result<Variant, MetricError> {
        if mode.is_most_recent() != most_recent {
            return Err(MetricError::WrongGaugeMode(mode));
        }
        Ok(Variant::Gauge(mode))
    }

    /// An unlabelled gauge merged across processes by `mode` (any mode but the most-recent
    /// ones, which [`most_recent_gauge`](Self::most_recent_gauge) creates).
    pub fn gauge(&self, name: &str, help: &str, mode: GaugeMode) -> Result<Gauge, MetricError> {
        unlabelled(self.desc(name, help, &[], Self::gauge_mode(mode, false)?)?)
    }

    /// A labelled gauge family.
    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        mode: GaugeMode,
    ) -> Result<GaugeVec, MetricError> {
        Ok(MetricVec::new(self.desc(
            name,
            help,
            labels,
            Self::gauge_mode(mode, false)?,
        )?))
    }

    /// An unlabelled gauge in mode `mostrecent` or `livemostrecent`: only set, never
    /// incremented.
    pub fn most_recent_gauge(
        &self,
        name: &str,
        help: &str,
        mode: GaugeMode,
    ) -> Result<MostRecentGauge, MetricError> {
        unlabelled(self.desc(name, help, &[], Self::gauge_mode(mode, true)?)?)
    }

    /// A labelled most-recent gauge family.
    pub fn most_recent_gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        mode: GaugeMode,
    ) -> Result<MostRecentGaugeVec, MetricError> {
        Ok(MetricVec::new(self.desc(
            name,
            help,
            labels,
            Self::gauge_mode(mode, true)?,
        )?))
    }

    /// An unlabelled histogram with these bucket bounds (`+Inf` is added);
    /// [`DEFAULT_BUCKETS`](crate::metrics::DEFAULT_BUCKETS) are Python's.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, MetricError> {
        let bounds = bucket_bounds(buckets)?;
        unlabelled(self.desc(name, help, &[], Variant::Histogram(bounds))?)
    }

    /// A labelled histogram family.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<HistogramVec, MetricError> {
        let bounds = bucket_bounds(buckets)?;
        Ok(MetricVec::new(self.desc(
            name,
            help,
            labels,
            Variant::Histogram(bounds),
        )?))
    }

    /// An unlabelled summary (count and sum).
    pub fn summary(&self, name: &str, help: &str) -> Result<Summary, MetricError> {
        unlabelled(self.desc(name, help, &[], Variant::Summary)?)
    }

    /// A labelled summary family.
    pub fn summary_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<SummaryVec, MetricError> {
        Ok(MetricVec::new(self.desc(
            name,
            help,
            labels,
            Variant::Summary,
        )?))
    }
}
