//! Adapters to the other Rust Prometheus crates, so that a merged multiprocess directory can be
//! served by a registry an application already has.
//!
//! - `TikvCollector` (feature `tikv`): a collector for the `prometheus` crate (tikv), to register
//!   in a `prometheus::Registry` and encode with its `TextEncoder` or `ProtobufEncoder`;
//! - `ClientCollector` (feature `prometheus-client`): a collector for the `prometheus-client`
//!   crate, to register with `Registry::register_collector` and encode with its OpenMetrics
//!   text encoder.
//!
//! Both read the directory on every collection, through a [`Collector`] (whose options, such as
//! [`self_metrics`](Collector::self_metrics) and
//! [`process_metrics`](Collector::process_metrics), apply), and map each merged family to the
//! other crate's model:
//!
//! | ours | tikv `prometheus` | `prometheus-client` |
//! |---|---|---|
//! | counter `x` (samples `x_total`) | counter `x_total` | counter `x` (written `x_total`) |
//! | gauge | gauge | gauge |
//! | histogram | histogram: cumulative buckets, sample count and sum | histogram |
//! | summary (`_count`, `_sum`) | summary: sample count and sum | two `unknown` families, `x_count` and `x_sum` |
//!
//! `prometheus-client` has no summary type, hence the two families, which keep the sample
//! names, labels and values (so queries over `x_sum` and `x_count` work unchanged); `unknown`
//! rather than `gauge` because the values only grow. Samples that fit no part of their family's
//! type (none that Python's or this crate's writers store) become gauges named after the
//! sample. Names are escaped as [`crate::exposition`] escapes them (invalid characters become
//! `_`), since neither crate checks what a collector hands it. Counts (bucket counts, sample
//! counts) are whole numbers in both crates' models, and are rounded down there.
//!
//! A directory that cannot be read gives no families (the error is logged), so the rest of the
//! registry is still served.

use crate::collector::{Collector, MetricFamily, Sample};
use prometheus_multiproc_format::filename::MetricType;

/// How a family is exported by the adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

/// One series of a [`Group`].
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// A counter's or a gauge's value.
    Single(f64),
    /// Cumulative `(le, count)` buckets in `le` order (`+Inf` included when stored), the
    /// count and the sum.
    Histogram {
        buckets: Vec<(f64, f64)>,
        count: Option<f64>,
        sum: f64,
    },
    /// `(quantile, value)` pairs, the count and the sum.
    Summary {
        quantiles: Vec<(f64, f64)>,
        count: f64,
        sum: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Series {
    /// Escaped names, each at most once; values as stored.
    labels: Vec<(String, String)>,
    value: Value,
}

/// A family in the adapters' terms: a valid name (for a counter, without `_total`), a type,
/// and series.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    name: String,
    help: String,
    kind: Kind,
    series: Vec<Series>,
}

/// `name` with every character a legacy metric (or, if `label`, label) name may not hold at
/// its position replaced by `_`, and `_` for an empty name, as the exposition writes it.
fn escape_name(name: &str, label: bool) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphabetic()
                || c == '_'
                || (i > 0 && c.is_ascii_digit())
                || (c == ':' && !label);
            if ok {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Escaped labels, without `skip` (`le`, `quantile`), keeping the first of names that become
/// equal once escaped (as the exposition does).
fn escape_labels(labels: &[(String, String)], skip: Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(labels.len());
    for (name, value) in labels {
        if Some(name.as_str()) == skip {
            continue;
        }
        let name = escape_name(name, true);
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, value.clone()));
        }
    }
    out
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The series of `labels` in `series`, added with `make` if missing.
fn series_for(
    series: &mut Vec<Series>,
    labels: Vec<(String, String)>,
    make: impl FnOnce() -> Value,
) -> &mut Value {
    let at = match series.iter().position(|s| s.labels == labels) {
        Some(at) => at,
        None => {
            series.push(Series {
                labels,
                value: make(),
            });
            series.len() - 1
        }
    };
    &mut series[at].value
}

/// Maps merged families to groups, in order; samples that fit no part of their family's type
/// follow it as gauges named after the sample.
fn groups(families: &[MetricFamily]) -> Vec<Group> {
    let mut out = Vec::with_capacity(families.len());
    for family in families {
        let mut extra: Vec<Group> = Vec::new();
        let mut add_extra = |sample: &Sample| {
            let name = escape_name(&sample.name, false);
            let labels = escape_labels(&sample.labels, None);
            let at = match extra.iter().position(|g| g.name == name) {
                Some(at) => at,
                None => {
                    extra.push(Group {
                        name,
                        help: family.help.clone(),
                        kind: Kind::Gauge,
                        series: Vec::new(),
                    });
                    extra.len() - 1
                }
            };
            extra[at].series.push(Series {
                labels,
                value: Value::Single(sample.value),
            });
        };
        let mut group = Group {
            name: String::new(),
            help: family.help.clone(),
            kind: Kind::Gauge,
            series: Vec::new(),
        };
        match family.kind {
            MetricType::Counter => {
                let base = match family.name.strip_suffix("_total") {
                    Some(base) if !base.is_empty() => base,
                    _ => family.name.as_str(),
                };
                let total = format!("{base}_total");
                group.name = escape_name(base, false);
                group.kind = Kind::Counter;
                for sample in &family.samples {
                    if sample.name == total {
                        group.series.push(Series {
                            labels: escape_labels(&sample.labels, None),
                            value: Value::Single(sample.value),
                        });
                    } else {
                        add_extra(sample);
                    }
                }
            }
            MetricType::Gauge => {
                group.name = escape_name(&family.name, false);
                for sample in &family.samples {
                    if sample.name == family.name {
                        group.series.push(Series {
                            labels: escape_labels(&sample.labels, None),
                            value: Value::Single(sample.value),
                        });
                    } else {
                        add_extra(sample);
                    }
                }
            }
            MetricType::Histogram => {
                group.name = escape_name(&family.name, false);
                group.kind = Kind::Histogram;
                let new = || Value::Histogram {
                    buckets: Vec::new(),
                    count: None,
                    sum: 0.0,
                };
                for sample in &family.samples {
                    let suffix = sample.name.strip_prefix(family.name.as_str());
                    let le = label(&sample.labels, "le").and_then(|v| v.trim().parse::<f64>().ok());
                    let skip = if suffix == Some("_bucket") {
                        Some("le")
                    } else {
                        None
                    };
                    let labels = escape_labels(&sample.labels, skip);
                    match (suffix, le) {
                        (Some("_bucket"), Some(le)) if !le.is_nan() => {
                            if let Value::Histogram { buckets, .. } =
                                series_for(&mut group.series, labels, new)
                            {
                                buckets.push((le, sample.value));
                            }
                        }
                        (Some("_count"), _) => {
                            if let Value::Histogram { count, .. } =
                                series_for(&mut group.series, labels, new)
                            {
                                *count = Some(sample.value);
                            }
                        }
                        (Some("_sum"), _) => {
                            if let Value::Histogram { sum, .. } =
                                series_for(&mut group.series, labels, new)
                            {
                                *sum = sample.value;
                            }
                        }
                        _ => add_extra(sample),
                    }
                }
                for series in &mut group.series {
                    if let Value::Histogram { buckets, .. } = &mut series.value {
                        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    }
                }
            }
            MetricType::Summary => {
                group.name = escape_name(&family.name, false);
                group.kind = Kind::Summary;
                let new = || Value::Summary {
                    quantiles: Vec::new(),
                    count: 0.0,
                    sum: 0.0,
                };
                for sample in &family.samples {
                    let suffix = sample.name.strip_prefix(family.name.as_str());
                    let quantile = label(&sample.labels, "quantile")
                        .and_then(|v| v.trim().parse::<f64>().ok());
                    match (suffix, quantile) {
                        (Some(""), Some(q)) => {
                            let labels = escape_labels(&sample.labels, Some("quantile"));
                            if let Value::Summary { quantiles, .. } =
                                series_for(&mut group.series, labels, new)
                            {
                                quantiles.push((q, sample.value));
                            }
                        }
                        (Some("_count"), _) => {
                            let labels = escape_labels(&sample.labels, None);
                            if let Value::Summary { count, .. } =
                                series_for(&mut group.series, labels, new)
                            {
                                *count = sample.value;
                            }
                        }
                        (Some("_sum"), _) => {
                            let labels = escape_labels(&sample.labels, None);
                            if let Value::Summary { sum, .. } =
                                series_for(&mut group.series, labels, new)
                            {
                                *sum = sample.value;
                            }
                        }
                        _ => add_extra(sample),
                    }
                }
            }
        }
        if !group.series.is_empty() {
            out.push(group);
        }
        out.append(&mut extra);
    }
    out
}

/// A count as a whole number: rounded down, negative and NaN as 0, saturating.
fn whole(v: f64) -> u64 {
    v as u64
}

/// The families of one collection, or none (logged) if the directory cannot be read.
fn collect(collector: &Collector) -> Vec<MetricFamily> {
    match collector.collect() {
        Ok(scrape) => scrape.families,
        Err(e) => {
            log::error!("{e}");
            Vec::new()
        }
    }
}

#[cfg(feature = "tikv")]
pub use tikv::{to_tikv, TikvCollector};

#[cfg(feature = "tikv")]
mod tikv {
    use prometheus::core::Desc;
    use prometheus::proto;

    use super::{collect, groups, whole, Kind, Value};
    use crate::collector::{Collector, MetricFamily};

    /// A merged multiprocess directory as a collector of the tikv `prometheus` crate
    /// (`prometheus::core::Collector`), read anew on every `gather`.
    ///
    /// It describes no metrics (`desc` is empty): the families of a directory are only known
    /// when it is read, and change as workers create metrics. The `prometheus` crate's
    /// registry accepts one such collector per registry (a second is refused with
    /// `AlreadyReg`), and does not check its names against the registry's other metrics: a
    /// metric registered directly under a name the directory also holds would be written
    /// twice. Register one adapter per registry, over one directory.
    ///
    /// ```
    /// use prometheus::Encoder as _;
    /// use prometheus_multiproc::collector::Collector;
    /// use prometheus_multiproc::interop::TikvCollector;
    /// use prometheus_multiproc::Registry;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let workers = Registry::new(dir.path()).unwrap();
    /// workers.counter("jobs_total", "Jobs done.").unwrap().inc_by(3.0).unwrap();
    /// workers.histogram("duration_seconds", "Duration.", &[0.5, 1.0]).unwrap().observe(0.7);
    ///
    /// let registry = prometheus::Registry::new();
    /// let merged = Collector::new(dir.path()).self_metrics(false);
    /// registry.register(Box::new(TikvCollector::new(merged))).unwrap();
    /// let mut text = Vec::new();
    /// prometheus::TextEncoder::new().encode(&registry.gather(), &mut text).unwrap();
    /// assert_eq!(
    ///     String::from_utf8(text).unwrap(),
    ///     concat!(
    ///         "# HELP duration_seconds Duration.\n",
    ///         "# TYPE duration_seconds histogram\n",
    ///         "duration_seconds_bucket{le=\"0.5\"} 0\n",
    ///         "duration_seconds_bucket{le=\"1\"} 1\n",
    ///         "duration_seconds_bucket{le=\"+Inf\"} 1\n",
    ///         "duration_seconds_sum 0.7\n",
    ///         "duration_seconds_count 1\n",
    ///         "# HELP jobs_total Jobs done.\n",
    ///         "# TYPE jobs_total counter\n",
    ///         "jobs_total 3\n",
    ///     )
    /// );
    /// ```
    #[derive(Debug, Clone)]
    pub struct TikvCollector {
        collector: Collector,
    }

    impl TikvCollector {
        /// An adapter collecting with `collector`.
        pub fn new(collector: Collector) -> TikvCollector {
            TikvCollector { collector }
        }

        /// The collector it reads the directory with.
        pub fn collector(&self) -> &Collector {
            &self.collector
        }
    }

    impl prometheus::core::Collector for TikvCollector {
        fn desc(&self) -> Vec<&Desc> {
            Vec::new()
        }

        fn collect(&self) -> Vec<proto::MetricFamily> {
            to_tikv(&collect(&self.collector))
        }
    }

    /// Our merged families in the tikv `prometheus` crate's model, as [`TikvCollector`]
    /// collects them (see [the module](super) for the mapping).
    ///
    /// Histogram buckets are cumulative, with their upper bounds; the `+Inf` bucket is left
    /// out (the count stands for it, and the crate's encoders write it from the count).
    ///
    /// ```
    /// use prometheus::proto::MetricType;
    /// use prometheus_multiproc::collector::{MetricFamily, Sample};
    /// use prometheus_multiproc::format::filename::MetricType as Ours;
    /// use prometheus_multiproc::interop::to_tikv;
    ///
    /// let families = [MetricFamily {
    ///     name: "tasks".into(),
    ///     help: "Tasks run.".into(),
    ///     kind: Ours::Summary,
    ///     samples: vec![
    ///         Sample { name: "tasks_count".into(), labels: vec![], value: 4.0 },
    ///         Sample { name: "tasks_sum".into(), labels: vec![], value: 9.5 },
    ///     ],
    /// }];
    /// let converted = to_tikv(&families);
    /// assert_eq!(converted[0].name(), "tasks");
    /// assert_eq!(converted[0].get_field_type(), MetricType::SUMMARY);
    /// let summary = converted[0].get_metric()[0].get_summary();
    /// assert_eq!((summary.sample_count(), summary.sample_sum()), (4, 9.5));
    /// ```
    pub fn to_tikv(families: &[MetricFamily]) -> Vec<proto::MetricFamily> {
        groups(families)
            .into_iter()
            .map(|group| {
                let mut family = proto::MetricFamily::default();
                let (name, kind) = match group.kind {
                    Kind::Counter => (format!("{}_total", group.name), proto::MetricType::COUNTER),
                    Kind::Gauge => (group.name, proto::MetricType::GAUGE),
                    Kind::Histogram => (group.name, proto::MetricType::HISTOGRAM),
                    Kind::Summary => (group.name, proto::MetricType::SUMMARY),
                };
                family.set_name(name);
                family.set_help(group.help);
                family.set_field_type(kind);
                let metrics = group
                    .series
                    .into_iter()
                    .map(|series| {
                        let mut metric = proto::Metric::default();
                        metric.set_label(
                            series
                                .labels
                                .into_iter()
                                .map(|(name, value)| {
                                    let mut pair = proto::LabelPair::default();
                                    pair.set_name(name);
                                    pair.set_value(value);
                                    pair
                                })
                                .collect(),
                        );
                        match (group.kind, series.value) {
                            (Kind::Counter, Value::Single(v)) => {
                                let mut counter = proto::Counter::default();
                                counter.set_value(v);
                                metric.set_counter(counter);
                            }
                            (_, Value::Single(v)) => {
                                let mut gauge = proto::Gauge::default();
                                gauge.set_value(v);
                                metric.set_gauge(gauge);
                            }
                            (
                                _,
                                Value::Histogram {
                                    buckets,
                                    count,
                                    sum,
                                },
                            ) => {
                                let inf = buckets
                                    .iter()
                                    .find(|(le, _)| *le == f64::INFINITY)
                                    .map(|(_, v)| *v);
                                let mut histogram = proto::Histogram::default();
                                histogram.set_sample_count(whole(count.or(inf).unwrap_or(0.0)));
                                histogram.set_sample_sum(sum);
                                histogram.set_bucket(
                                    buckets
                                        .into_iter()
                                        .filter(|(le, _)| *le != f64::INFINITY)
                                        .map(|(le, v)| {
                                            let mut bucket = proto::Bucket::default();
                                            bucket.set_upper_bound(le);
                                            bucket.set_cumulative_count(whole(v));
                                            bucket
                                        })
                                        .collect(),
                                );
                                metric.set_histogram(histogram);
                            }
                            (
                                _,
                                Value::Summary {
                                    quantiles,
                                    count,
                                    sum,
                                },
                            ) => {
                                let mut summary = proto::Summary::default();
                                summary.set_sample_count(whole(count));
                                summary.set_sample_sum(sum);
                                summary.set_quantile(
                                    quantiles
                                        .into_iter()
                                        .map(|(q, v)| {
                                            let mut quantile = proto::Quantile::default();
                                            quantile.set_quantile(q);
                                            quantile.set_value(v);
                                            quantile
                                        })
                                        .collect(),
                                );
                                metric.set_summary(summary);
                            }
                        }
                        metric
                    })
                    .collect();
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

#[cfg(feature = "prometheus-client")]
pub use client::ClientCollector;

#[cfg(feature = "prometheus-client")]
mod client {
    use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
    use prometheus_client::metrics::MetricType as ClientType;

    use super::{collect, groups, whole, Kind, Series, Value};
    use crate::collector::Collector;

    /// A merged multiprocess directory as a collector of the `prometheus-client` crate
    /// (`prometheus_client::collector::Collector`), read anew on every encoding.
    ///
    /// That crate's text encoder writes help texts and label values as it is handed them, so
    /// this adapter hands them over escaped for its OpenMetrics text (`\`, newline and `"`);
    /// with the crate's protobuf encoder, such characters would arrive escaped.
    ///
    /// ```
    /// use prometheus_client::encoding::text::encode;
    /// use prometheus_multiproc::collector::Collector;
    /// use prometheus_multiproc::interop::ClientCollector;
    /// use prometheus_multiproc::{GaugeMode, Registry};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let workers = Registry::new(dir.path()).unwrap();
    /// let requests = workers.counter_vec("requests_total", "Requests.", &["path"]).unwrap();
    /// requests.with_label_values(&["/"]).inc();
    /// workers.gauge("queue", "Queue length.", GaugeMode::LiveSum).unwrap().set(2.5);
    ///
    /// let mut registry = prometheus_client::registry::Registry::default();
    /// let merged = Collector::new(dir.path()).self_metrics(false);
    /// registry.register_collector(Box::new(ClientCollector::new(merged)));
    /// let mut text = String::new();
    /// encode(&mut text, &registry).unwrap();
    /// assert_eq!(
    ///     text,
    ///     concat!(
    ///         "# HELP queue Queue length.\n",
    ///         "# TYPE queue gauge\n",
    ///         "queue 2.5\n",
    ///         "# HELP requests Requests.\n",
    ///         "# TYPE requests counter\n",
    ///         "requests_total{path=\"/\"} 1.0\n",
    ///         "# EOF\n",
    ///     )
    /// );
    /// ```
    #[derive(Debug, Clone)]
    pub struct ClientCollector {
        collector: Collector,
    }

    impl ClientCollector {
        /// An adapter collecting with `collector`.
        pub fn new(collector: Collector) -> ClientCollector {
            ClientCollector { collector }
        }

        /// The collector it reads the directory with.
        pub fn collector(&self) -> &Collector {
            &self.collector
        }
    }

    /// `s` escaped for OpenMetrics text: `\`, newline and `"`.
    fn escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '"' => out.push_str("\\\""),
                c => out.push(c),
            }
        }
        out
    }

    /// Encodes one series: with its labels, unless it has none (the encoder would write `{}`).
    fn encode_series(
        metric: &mut MetricEncoder,
        series: &Series,
        encode: impl FnOnce(&mut MetricEncoder) -> Result<(), std::fmt::Error>,
    ) -> Result<(), std::fmt::Error> {
        if series.labels.is_empty() {
            encode(metric)
        } else {
            let labels: Vec<(&str, String)> = series
                .labels
                .iter()
                .map(|(name, value)| (name.as_str(), escape(value)))
                .collect();
            encode(&mut metric.encode_family(&labels)?)
        }
    }

    impl prometheus_client::collector::Collector for ClientCollector {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            for group in groups(&collect(&self.collector)) {
                let help = escape(&group.help);
                match group.kind {
                    Kind::Summary => {
                        // No summary type in this crate: `_count` and `_sum` as two families.
                        for (suffix, count) in [("_count", true), ("_sum", false)] {
                            let name = format!("{}{suffix}", group.name);
                            let mut metric = encoder.encode_descriptor(
                                &name,
                                &help,
                                None,
                                ClientType::Unknown,
                            )?;
                            for series in &group.series {
                                if let Value::Summary {
                                    count: c, sum: s, ..
                                } = &series.value
                                {
                                    let v = if count { *c } else { *s };
                                    encode_series(&mut metric, series, |m| m.encode_gauge(&v))?;
                                }
                            }
                        }
                    }
                    kind => {
                        let client_kind = match kind {
                            Kind::Counter => ClientType::Counter,
                            Kind::Histogram => ClientType::Histogram,
                            _ => ClientType::Gauge,
                        };
                        let mut metric =
                            encoder.encode_descriptor(&group.name, &help, None, client_kind)?;
                        for series in &group.series {
                            encode_series(&mut metric, series, |m| match &series.value {
                                Value::Single(v) if kind == Kind::Counter => {
                                    m.encode_counter::<NoLabelSet, f64, f64>(v, None)
                                }
                                Value::Single(v) => m.encode_gauge(v),
                                Value::Histogram {
                                    buckets,
                                    count,
                                    sum,
                                } => {
                                    let total = count
                                        .or_else(|| buckets.last().map(|b| b.1))
                                        .unwrap_or(0.0);
                                    // Per-bucket counts, `+Inf` written as the crate expects
                                    // it (`f64::MAX`), and added if missing.
                                    let mut per_bucket = Vec::with_capacity(buckets.len() + 1);
                                    let mut below = 0u64;
                                    for &(le, cumulative) in buckets {
                                        let cumulative = whole(cumulative);
                                        let bound = if le == f64::INFINITY { f64::MAX } else { le };
                                        per_bucket.push((bound, cumulative.saturating_sub(below)));
                                        below = cumulative.max(below);
                                    }
                                    if per_bucket.last().is_none_or(|b| b.0 != f64::MAX) {
                                        per_bucket
                                            .push((f64::MAX, whole(total).saturating_sub(below)));
                                    }
                                    m.encode_histogram::<NoLabelSet>(
                                        *sum,
                                        whole(total),
                                        &per_bucket,
                                        None,
                                    )
                                }
                                Value::Summary { .. } => Ok(()),
                            })?;
                        }
                    }
                }
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::escape;

        #[test]
        fn escapes_like_openmetrics() {
            assert_eq!(escape("a\\b\n\"c\""), "a\\\\b\\n\\\"c\\\"");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Sample;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    #[test]
    fn histogram_groups_by_labels_without_le() {
        let family = MetricFamily {
            name: "h".into(),
            help: "H.".into(),
            kind: MetricType::Histogram,
            samples: vec![
                sample("h_bucket", &[("a", "1"), ("le", "1.0")], 1.0),
                sample("h_bucket", &[("a", "1"), ("le", "+Inf")], 2.0),
                sample("h_count", &[("a", "1")], 2.0),
                sample("h_sum", &[("a", "1")], 3.5),
                sample("h_created", &[("a", "1")], 7.0),
            ],
        };
        let g = groups(&[family]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].kind, Kind::Histogram);
        assert_eq!(
            g[0].series,
            [Series {
                labels: vec![("a".into(), "1".into())],
                value: Value::Histogram {
                    buckets: vec![(1.0, 1.0), (f64::INFINITY, 2.0)],
                    count: Some(2.0),
                    sum: 3.5,
                },
            }]
        );
        assert_eq!((g[1].name.as_str(), g[1].kind), ("h_created", Kind::Gauge));
    }

    #[test]
    fn names_are_escaped() {
        let family = MetricFamily {
            name: "a-b_total".into(),
            help: String::new(),
            kind: MetricType::Counter,
            samples: vec![sample("a-b_total", &[("x-y", "1"), ("x_y", "2")], 1.0)],
        };
        let g = groups(&[family]);
        assert_eq!(g[0].name, "a_b");
        assert_eq!(g[0].series[0].labels, [("x_y".to_owned(), "1".to_owned())]);
    }
}
