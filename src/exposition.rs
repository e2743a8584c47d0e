//! Writing metric families in the Prometheus text format 0.0.4 and in OpenMetrics 1.0.0.
//!
//! Both encoders write what `prometheus_client` 0.26 writes for the same families (its
//! `generate_latest` and `openmetrics.exposition.generate_latest`), byte for byte, with a few
//! deliberate exceptions where Python's output would not parse or would be mistyped. Names come
//! from files and may be anything, so they are escaped as Python's default `underscores` escaping
//! does: every character that a legacy Prometheus name may not hold at its position becomes `_`.
//! The exceptions:
//!
//! - Python keeps a name that ends in a newline (its validity regex uses `$`, which matches
//!   before a final newline) and writes an empty name as nothing at all; here both are escaped
//!   (`bad\n` becomes `bad_`, an empty name becomes `_`), so no name can break a line.
//! - When escaping makes two label names of one sample equal (`a-b` and `a_b`), Python writes
//!   both and Prometheus rejects the whole scrape; here the first of them (in label order) is kept.
//! - In OpenMetrics, Python turns `:` into `_` in sample names but not in the `# HELP`/`# TYPE`
//!   name, so the samples of `job:requests` leave their family and lose their type; here sample
//!   names are escaped as metric names (keeping `:`), as in the text format.
//! - A counter family whose stored name ends in `_total` (never the case for Python's writers)
//!   is written under the name without that suffix, which keeps its `x_total` samples its own.

use prometheus_multiproc_format::filename::MetricType;
use prometheus_multiproc_format::float::write_go_float;

use crate::collector::{MetricFamily, Sample};

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The Prometheus text format 0.0.4, as `prometheus_client.generate_latest` writes it.
    Text,
    /// OpenMetrics 1.0.0, as `prometheus_client.openmetrics.exposition.generate_latest` writes it.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` header value of a response in this format.
    ///
    /// ```
    /// use prometheus_multiproc::exposition::Format;
    /// assert_eq!(Format::Text.content_type(), "text/plain; version=0.0.4; charset=utf-8");
    /// assert_eq!(
    ///     Format::OpenMetrics.content_type(),
    ///     "application/openmetrics-text; version=1.0.0; charset=utf-8"
    /// );
    /// ```
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Writes `families` in `format`, families and samples in the order given.
///
/// Counter families are named with `_total` in the text format's `# HELP` and `# TYPE` lines and
/// without it in OpenMetrics; OpenMetrics output ends with `# EOF`.
///
/// ```
/// use prometheus_multiproc::collector::{MetricFamily, Sample};
/// use prometheus_multiproc::exposition::{encode, Format};
/// use prometheus_multiproc::format::filename::MetricType;
///
/// let families = [MetricFamily {
///     name: "requests".into(),
///     help: "Requests served.".into(),
///     kind: MetricType::Counter,
///     samples: vec![Sample {
///         name: "requests_total".into(),
///         labels: vec![("path".into(), "/".into())],
///         value: 5.0,
///     }],
/// }];
/// assert_eq!(
///     encode(&families, Format::Text),
///     "# HELP requests_total Requests served.\n# TYPE requests_total counter\n\
///      requests_total{path=\"/\"} 5.0\n"
/// );
/// assert_eq!(
///     encode(&families, Format::OpenMetrics),
///     "# HELP requests Requests served.\n# TYPE requests counter\n\
///      requests_total{path=\"/\"} 5.0\n# EOF\n"
/// );
/// assert_eq!(encode(&[], Format::Text), "");
/// assert_eq!(encode(&[], Format::OpenMetrics), "# EOF\n");
/// ```
pub fn encode(families: &[MetricFamily], format: Format) -> String {
    let mut out = String::new();
    encode_into(families, format, &mut out);
    out
}

/// Appends `families` written in `format` to `out`; see [`encode`].
pub fn encode_into(families: &[MetricFamily], format: Format, out: &mut String) {
    let views: Vec<&dyn FamilyView> = families.iter().map(|f| f as &dyn FamilyView).collect();
    encode_views(&views, format, out);
}

/// A family as the encoders read it: what [`MetricFamily`] holds, or a merged family that
/// borrows its strings from the files' keys (see `Collector::encode_into`).
pub(crate) trait FamilyView: Sync {
    /// The stored family name.
    fn name(&self) -> &str;
    fn help(&self) -> &str;
    fn kind(&self) -> MetricType;
    fn len(&self) -> usize;
    /// Sample `i`: its name and value, its labels (sorted by name) put in `labels`.
    fn sample<'s>(&'s self, i: usize, labels: &mut Vec<(&'s str, &'s str)>) -> (&'s str, f64);
    /// Sample `i` as the view keeps it written, when it does: its name (a valid metric name, so
    /// written as it is) and value, and in `pieces` its labels as written (see
    /// [`label_name_piece`] and [`label_value_piece`]), `}` last, or nothing for no labels.
    /// `None`: ask [`FamilyView::sample`].
    fn written<'s>(&'s self, _i: usize, _pieces: &mut Vec<&'s str>) -> Option<(&'s str, f64)> {
        None
    }
}

/// How a label name is written in a sample line, with what comes before it (`{` for the first
/// label, `,` for the others) and after it (`="`); `None` if the name is not a valid label name
/// (those are written by [`write_labels`], which may leave one out).
pub(crate) fn label_name_piece(first: bool, name: &str) -> Option<String> {
    if !is_valid_name(name, NameKind::Label) {
        return None;
    }
    let mut piece = String::with_capacity(name.len() + 3);
    write_label_name(&mut piece, first, name);
    Some(piece)
}

/// How a label value is written in a sample line, with its closing quote.
pub(crate) fn label_value_piece(value: &str) -> String {
    let mut piece = String::with_capacity(value.len() + 1);
    write_label_value(&mut piece, value);
    piece
}

/// Whether a sample name is written as it is.
pub(crate) fn is_valid_metric_name(name: &str) -> bool {
    is_valid_name(name, NameKind::Metric)
}

impl FamilyView for MetricFamily {
    fn name(&self) -> &str {
        &self.name
    }
    fn help(&self) -> &str {
        &self.help
    }
    fn kind(&self) -> MetricType {
        self.kind
    }
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn sample<'s>(&'s self, i: usize, labels: &mut Vec<(&'s str, &'s str)>) -> (&'s str, f64) {
        let s: &Sample = &self.samples[i];
        labels.clear();
        labels.extend(s.labels.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        (&s.name, s.value)
    }
}

/// Families of at least this many samples are written on every core, in runs of this many.
const PARALLEL_RUN: usize = 8192;

/// Where encoded text goes: a string kept whole, or a writer that takes it in pieces.
pub(crate) trait Sink {
    /// The text written so far and not yet handed on.
    fn text(&mut self) -> &mut String;
    /// Called where the text so far may be handed on.
    fn flush(&mut self) -> std::io::Result<()>;
    /// Whether the text is kept whole, so worth reserving room for.
    fn keeps_all(&self) -> bool {
        false
    }
    /// Appends a finished piece of text (a writer takes it as it is, without copying it).
    fn push(&mut self, piece: &str) -> std::io::Result<()> {
        self.text().push_str(piece);
        Ok(())
    }
}

impl Sink for String {
    fn keeps_all(&self) -> bool {
        true
    }
    fn text(&mut self) -> &mut String {
        self
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer that gets the text in pieces of about [`Self::PIECE`] bytes.
pub(crate) struct WriteSink<W> {
    pub(crate) text: String,
    pub(crate) out: W,
}

impl<W> WriteSink<W> {
    const PIECE: usize = 1 << 20;

    pub(crate) fn new(out: W) -> WriteSink<W> {
        WriteSink {
            text: String::with_capacity(2 * Self::PIECE),
            out,
        }
    }
}

impl<W: std::io::Write> Sink for WriteSink<W> {
    fn text(&mut self) -> &mut String {
        &mut self.text
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.text.len() >= Self::PIECE {
            self.out.write_all(self.text.as_bytes())?;
            self.text.clear();
        }
        Ok(())
    }
    fn push(&mut self, piece: &str) -> std::io::Result<()> {
        if piece.len() < Self::PIECE / 16 {
            self.text.push_str(piece);
            return Ok(());
        }
        if !self.text.is_empty() {
            self.out.write_all(self.text.as_bytes())?;
            self.text.clear();
        }
        self.out.write_all(piece.as_bytes())
    }
}

/// Writes `families` in `format`, in the order given, into a string.
pub(crate) fn encode_views(families: &[&dyn FamilyView], format: Format, out: &mut String) {
    // A string takes every piece.
    let _ = encode_views_to(families, format, out);
}

/// Writes `families` in `format`, in the order given, into `sink`; the sink's text may hold
/// the end of the output when this returns.
pub(crate) fn encode_views_to(
    families: &[&dyn FamilyView],
    format: Format,
    sink: &mut dyn Sink,
) -> std::io::Result<()> {
    if sink.keeps_all() {
        sink.text().reserve(estimated_len(families));
    }
    // Large families are written on every core, a batch of runs at a time, each run into a
    // buffer kept for the next batch (fresh memory costs more than writing the text).
    let mut buffers: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
    let mut deferred = Vec::new();
    for &family in families {
        let text = format == Format::Text;
        let name = family_name(family);
        let suffix = if text && family.kind() == MetricType::Counter {
            "_total"
        } else {
            ""
        };
        let kind = family.kind().as_str();
        write_header(sink.text(), name, suffix, family.help(), kind, !text);
        deferred.clear();
        if family.len() < 2 * PARALLEL_RUN {
            write_samples(sink.text(), family, 0..family.len(), text, &mut deferred);
        } else {
            use rayon::prelude::*;
            if buffers.is_empty() {
                buffers.resize_with(2 * rayon::current_num_threads(), Default::default);
            }
            let batch = PARALLEL_RUN * buffers.len();
            for batch_start in (0..family.len()).step_by(batch) {
                buffers
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(i, (text_run, run_deferred))| {
                        text_run.clear();
                        run_deferred.clear();
                        let start = batch_start + i * PARALLEL_RUN;
                        let end = (start + PARALLEL_RUN).min(family.len());
                        if start < end {
                            write_samples(text_run, family, start..end, text, run_deferred);
                        }
                    });
                for (text_run, run_deferred) in &buffers {
                    sink.push(text_run)?;
                    deferred.extend_from_slice(run_deferred);
                }
                sink.flush()?;
            }
        }
        // Python's text encoder moves these samples out of their family, each suffix into a
        // gauge family of its own after the family's other samples.
        let mut labels = Vec::new();
        for (which, suffix) in TEXT_GAUGE_SUFFIXES.iter().enumerate() {
            let mut samples = deferred.iter().filter(|&&(w, _)| w == which).peekable();
            if samples.peek().is_some() {
                write_header(
                    sink.text(),
                    family.name(),
                    suffix,
                    family.help(),
                    "gauge",
                    false,
                );
                for &(_, index) in samples {
                    let (name, value) = family.sample(index, &mut labels);
                    write_sample(sink.text(), name, &labels, value);
                }
            }
        }
        sink.flush()?;
    }
    if format == Format::OpenMetrics {
        sink.text().push_str("# EOF\n");
    }
    Ok(())
}

/// Writes the samples `range` of `family`; in the text format, those whose names end in one of
/// [`TEXT_GAUGE_SUFFIXES`] go to `deferred` instead, as (suffix, index).
fn write_samples(
    out: &mut String,
    family: &dyn FamilyView,
    range: std::ops::Range<usize>,
    text: bool,
    deferred: &mut Vec<(usize, usize)>,
) {
    let mut labels = Vec::new();
    let mut pieces = Vec::new();
    for index in range {
        let written = family.written(index, &mut pieces);
        let (name, value) = match written {
            Some(sample) => sample,
            None => family.sample(index, &mut labels),
        };
        if text {
            let gauge_suffix = name.strip_prefix(family.name()).and_then(|rest| {
                TEXT_GAUGE_SUFFIXES
                    .iter()
                    .position(|&suffix| suffix == rest)
            });
            if let Some(which) = gauge_suffix {
                deferred.push((which, index));
                continue;
            }
        }
        match written {
            Some(_) => {
                out.push_str(name);
                for piece in &pieces {
                    out.push_str(piece);
                }
                end_sample(out, value);
            }
            None => write_sample(out, name, &labels, value),
        }
    }
}

/// A guess at the encoded size, so that large outputs are not copied over and over as they grow.
fn estimated_len(families: &[&dyn FamilyView]) -> usize {
    let mut labels = Vec::new();
    families
        .iter()
        .map(|family| {
            let line = if family.len() == 0 {
                0
            } else {
                let (name, _) = family.sample(0, &mut labels);
                name.len()
                    + labels
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 4)
                        .sum::<usize>()
                    + 26
            };
            2 * (family.name().len() + 24) + family.help().len() + line * family.len()
        })
        .sum::<usize>()
        + 6
}

/// Suffixes of samples that Python's text encoder moves out of their family, in the order it
/// writes them (sorted), each into a gauge family of its own after the family's other samples.
const TEXT_GAUGE_SUFFIXES: [&str; 3] = ["_created", "_gcount", "_gsum"];

/// The name a family is written under: the stored name, except for a counter stored as
/// `x_total`.
///
/// Python's writers never store such a counter (`Counter("x_total")` is stored as `x`), and
/// Python would write `# TYPE x_total counter` in OpenMetrics, where `x_total` samples then clash
/// with the counter's own `x_total` series and the parser rejects the exposition (and
/// `# TYPE x_total_total counter` in the text format, where `x_total` samples fall out of the
/// family). Dropping the suffix, as Python does when a counter is created, gives
/// `# TYPE x counter` / `# TYPE x_total counter`, under which `x_total` samples are the counter's
/// own; samples named `x_total_total` still parse, as an untyped family of their own.
fn family_name(family: &dyn FamilyView) -> &str {
    let name = family.name();
    match family.kind() {
        MetricType::Counter => match name.strip_suffix("_total") {
            Some(base) if !base.is_empty() => base,
            _ => name,
        },
        _ => name,
    }
}

/// Writes the `# HELP` and `# TYPE` lines of `name` followed by `suffix`. OpenMetrics escapes
/// `"` in the help text too (`quote_help`); both escape `\` and newlines.
fn write_header(
    out: &mut String,
    name: &str,
    suffix: &str,
    help: &str,
    kind: &str,
    quote_help: bool,
) {
    out.push_str("# HELP ");
    write_name(out, name, suffix, NameKind::Metric);
    out.push(' ');
    write_escaped(out, help, quote_help);
    out.push_str("\n# TYPE ");
    write_name(out, name, suffix, NameKind::Metric);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// Writes one sample line: `name{label="value",...} value`.
fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    write_name(out, name, "", NameKind::Metric);
    write_labels(out, labels);
    end_sample(out, value);
}

/// Ends a sample line after its labels: ` value` and the newline.
fn end_sample(out: &mut String, value: f64) {
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

/// Appends `value` as `floatToGoString` writes it.
///
/// Counts (counters, buckets, `_count`) are whole numbers, written here without going through
/// the general float formatting: `floatToGoString` writes a whole number as its digits and `.0`
/// from above -1e16 (where Python's `repr` switches to exponents) to below 1e6 (where Go's
/// formatting does, for positive numbers only), except -0.0.
fn write_value(out: &mut String, value: f64) {
    if value.fract() == 0.0
        && value > -1e16
        && value < 1e6
        && (value != 0.0 || value.is_sign_positive())
    {
        write_integer(out, value as i64);
        out.push_str(".0");
    } else {
        write_go_float(out, value);
    }
}

/// Appends the decimal digits of `n`.
fn write_integer(out: &mut String, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// Writes `{a="1",b="2"}`, or nothing for no labels. Of labels whose names become equal once
/// escaped, only the first is written.
fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    // Two names can only become equal if at least one of them was escaped.
    let mut escaped_before = false;
    for (index, (name, value)) in labels.iter().enumerate() {
        let escaped = !is_valid_name(name, NameKind::Label);
        if (escaped || escaped_before)
            && labels[..index].iter().any(|(earlier, _)| {
                escape_name(earlier, NameKind::Label).eq(escape_name(name, NameKind::Label))
            })
        {
            escaped_before |= escaped;
            continue;
        }
        escaped_before |= escaped;
        write_label_name(out, index == 0, name);
        write_label_value(out, value);
    }
    out.push('}');
}

/// Writes `{name="` for the first label, `,name="` for the others.
fn write_label_name(out: &mut String, first: bool, name: &str) {
    out.push(if first { '{' } else { ',' });
    write_name(out, name, "", NameKind::Label);
    out.push_str("=\"");
}

/// Writes a label's value, escaped, and its closing quote.
fn write_label_value(out: &mut String, value: &str) {
    write_escaped(out, value, true);
    out.push('"');
}

/// Appends `s` with `\` and newlines escaped, and `"` too if `quote`.
fn write_escaped(out: &mut String, s: &str, quote: bool) {
    if !s
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"'))
    {
        out.push_str(s);
        return;
    }
    let mut start = 0;
    for (index, byte) in s.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'"' if quote => "\\\"",
            _ => continue,
        };
        // The bytes escaped are ASCII, so `index` is on a character boundary.
        out.push_str(&s[start..index]);
        out.push_str(escaped);
        start = index + 1;
    }
    out.push_str(&s[start..]);
}

/// Which legacy name syntax a name must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameKind {
    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`
    Metric,
    /// `[a-zA-Z_][a-zA-Z0-9_]*`
    Label,
}

/// Whether `c` may stand in a legacy name of `kind`, as its first character if `first`.
fn is_name_char(c: char, first: bool, kind: NameKind) -> bool {
    c.is_ascii_alphabetic()
        || c == '_'
        || (!first && c.is_ascii_digit())
        || (c == ':' && kind == NameKind::Metric)
}

/// Bytes a legacy name may hold after its first: `[a-zA-Z0-9_]`, and `:` for metric names.
const NAME_BYTES: [[bool; 256]; 2] = {
    let mut tables = [[false; 256]; 2];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let ok = c.is_ascii_alphanumeric() || c == b'_';
        tables[0][b] = ok || c == b':';
        tables[1][b] = ok;
        b += 1;
    }
    tables
};

/// Whether `name` is a valid legacy name of `kind`.
fn is_valid_name(name: &str, kind: NameKind) -> bool {
    // Bytes of multi-byte characters are never valid, so checking bytes is checking characters.
    let table = &NAME_BYTES[match kind {
        NameKind::Metric => 0,
        NameKind::Label => 1,
    }];
    match name.as_bytes().split_first() {
        Some((first, rest)) => {
            !first.is_ascii_digit()
                && table[usize::from(*first)]
                && rest.iter().all(|&b| table[usize::from(b)])
        }
        None => false,
    }
}

/// `name` with every character a legacy name may not hold at its position replaced by `_`
/// (Python's `underscores` escaping), and `_` for an empty name.
fn escape_name(name: &str, kind: NameKind) -> impl Iterator<Item = char> + '_ {
    let empty = name.is_empty().then_some('_');
    empty
        .into_iter()
        .chain(name.chars().enumerate().map(move |(index, c)| {
            if is_name_char(c, index == 0, kind) {
                c
            } else {
                '_'
            }
        }))
}

/// Appends `name` escaped, followed by `suffix` (a valid name tail such as `_total`).
fn write_name(out: &mut String, name: &str, suffix: &str, kind: NameKind) {
    if is_valid_name(name, kind) {
        out.push_str(name);
    } else {
        out.extend(escape_name(name, kind));
    }
    out.push_str(suffix);
}

#[cfg(test)]
mod tests {
    //! Expected outputs marked "as Python writes it" were produced by `prometheus_client` 0.26's
    //! two `generate_latest` functions from the same families (a collector yielding `Metric`
    //! objects with these samples) and pasted here unchanged.

    use super::*;
    use prometheus_multiproc_format::float::go_float;

    type RawSample<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

    fn family(name: &str, help: &str, kind: MetricType, samples: &[RawSample]) -> MetricFamily {
        MetricFamily {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples: samples
                .iter()
                .map(|&(name, labels, value)| Sample {
                    name: name.to_owned(),
                    labels: labels
                        .iter()
                        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    value,
                })
                .collect(),
        }
    }

    fn check(families: &[MetricFamily], text: &str, openmetrics: &str) {
        assert_eq!(encode(families, Format::Text), text);
        assert_eq!(encode(families, Format::OpenMetrics), openmetrics);
    }

    #[test]
    fn counter_with_labels() {
        let families = [family(
            "requests",
            "Requests served.",
            MetricType::Counter,
            &[
                ("requests_total", &[("method", "get"), ("path", "/")], 5.0),
                (
                    "requests_total",
                    &[("method", "post"), ("path", "/api/v1")],
                    1234567.0,
                ),
            ],
        )];
        // As Python writes it.
        check(
            &families,
            "# HELP requests_total Requests served.\n\
             # TYPE requests_total counter\n\
             requests_total{method=\"get\",path=\"/\"} 5.0\n\
             requests_total{method=\"post\",path=\"/api/v1\"} 1.234567e+06\n",
            "# HELP requests Requests served.\n\
             # TYPE requests counter\n\
             requests_total{method=\"get\",path=\"/\"} 5.0\n\
             requests_total{method=\"post\",path=\"/api/v1\"} 1.234567e+06\n\
             # EOF\n",
        );
    }

    #[test]
    fn gauge() {
        let families = [family(
            "temperature",
            "Current temperature.",
            MetricType::Gauge,
            &[
                ("temperature", &[], -3.5),
                ("temperature", &[("pid", "101")], 0.0),
                ("temperature", &[("pid", "102")], 1e20),
                ("temperature", &[("pid", "103")], 1e-5),
                ("temperature", &[("pid", "104")], 123456.0),
            ],
        )];
        // As Python writes it.
        check(
            &families,
            "# HELP temperature Current temperature.\n\
             # TYPE temperature gauge\n\
             temperature -3.5\n\
             temperature{pid=\"101\"} 0.0\n\
             temperature{pid=\"102\"} 1e+20\n\
             temperature{pid=\"103\"} 1e-05\n\
             temperature{pid=\"104\"} 123456.0\n",
            "# HELP temperature Current temperature.\n\
             # TYPE temperature gauge\n\
             temperature -3.5\n\
             temperature{pid=\"101\"} 0.0\n\
             temperature{pid=\"102\"} 1e+20\n\
             temperature{pid=\"103\"} 1e-05\n\
             temperature{pid=\"104\"} 123456.0\n\
             # EOF\n",
        );
    }

    #[test]
    fn histogram() {
        let le: Vec<String> = [0.005, 0.1, 1.0, 1e6, f64::INFINITY]
            .into_iter()
            .map(go_float)
            .collect();
        let families = [family(
            "latency_seconds",
            "Request latency.",
            MetricType::Histogram,
            &[
                ("latency_seconds_sum", &[("path", "/")], 7.25),
                (
                    "latency_seconds_bucket",
                    &[("le", &le[0]), ("path", "/")],
                    0.0,
                ),
                (
                    "latency_seconds_bucket",
                    &[("le", &le[1]), ("path", "/")],
                    2.0,
                ),
                (
                    "latency_seconds_bucket",
                    &[("le", &le[2]), ("path", "/")],
                    3.0,
                ),
                (
                    "latency_seconds_bucket",
                    &[("le", &le[3]), ("path", "/")],
                    4.0,
                ),
                (
                    "latency_seconds_bucket",
                    &[("le", &le[4]), ("path", "/")],
                    5.0,
                ),
                ("latency_seconds_count", &[("path", "/")], 5.0),
            ],
        )];
        // As Python writes it.
        check(
            &families,
            "# HELP latency_seconds Request latency.\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_sum{path=\"/\"} 7.25\n\
             latency_seconds_bucket{le=\"0.005\",path=\"/\"} 0.0\n\
             latency_seconds_bucket{le=\"0.1\",path=\"/\"} 2.0\n\
             latency_seconds_bucket{le=\"1.0\",path=\"/\"} 3.0\n\
             latency_seconds_bucket{le=\"1e+06\",path=\"/\"} 4.0\n\
             latency_seconds_bucket{le=\"+Inf\",path=\"/\"} 5.0\n\
             latency_seconds_count{path=\"/\"} 5.0\n",
            "# HELP latency_seconds Request latency.\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_sum{path=\"/\"} 7.25\n\
             latency_seconds_bucket{le=\"0.005\",path=\"/\"} 0.0\n\
             latency_seconds_bucket{le=\"0.1\",path=\"/\"} 2.0\n\
             latency_seconds_bucket{le=\"1.0\",path=\"/\"} 3.0\n\
             latency_seconds_bucket{le=\"1e+06\",path=\"/\"} 4.0\n\
             latency_seconds_bucket{le=\"+Inf\",path=\"/\"} 5.0\n\
             latency_seconds_count{path=\"/\"} 5.0\n\
             # EOF\n",
        );
    }

    #[test]
    fn summary() {
        let families = [family(
            "rpc_duration_seconds",
            "RPC duration.",
            MetricType::Summary,
            &[
                ("rpc_duration_seconds_count", &[("service", "auth")], 12.0),
                ("rpc_duration_seconds_sum", &[("service", "auth")], 0.3),
            ],
        )];
        // As Python writes it.
        check(
            &families,
            "# HELP rpc_duration_seconds RPC duration.\n\
             # TYPE rpc_duration_seconds summary\n\
             rpc_duration_seconds_count{service=\"auth\"} 12.0\n\
             rpc_duration_seconds_sum{service=\"auth\"} 0.3\n",
            "# HELP rpc_duration_seconds RPC duration.\n\
             # TYPE rpc_duration_seconds summary\n\
             rpc_duration_seconds_count{service=\"auth\"} 12.0\n\
             rpc_duration_seconds_sum{service=\"auth\"} 0.3\n\
             # EOF\n",
        );
    }

    #[test]
    fn escaping_of_help_and_label_values() {
        let families = [family(
            "app_info",
            "Help with \\ backslash,\nnewline, \"quotes\", é, 日本 and 🎉.",
            MetricType::Gauge,
            &[(
                "app_info",
                &[
                    ("lang", "français 日本語"),
                    ("party", "🎉"),
                    ("path", "C:\\dir\\\"quoted\"\nline2"),
                    ("tab", "a\tb\rc"),
                ],
                1.0,
            )],
        )];
        // As Python writes it: the text format leaves `"` alone in help, OpenMetrics escapes it.
        check(
            &families,
            "# HELP app_info Help with \\\\ backslash,\\nnewline, \"quotes\", é, 日本 and 🎉.\n\
             # TYPE app_info gauge\n\
             app_info{lang=\"français 日本語\",party=\"🎉\",\
             path=\"C:\\\\dir\\\\\\\"quoted\\\"\\nline2\",tab=\"a\tb\rc\"} 1.0\n",
            "# HELP app_info Help with \\\\ backslash,\\nnewline, \\\"quotes\\\", é, 日本 and 🎉.\n\
             # TYPE app_info gauge\n\
             app_info{lang=\"français 日本語\",party=\"🎉\",\
             path=\"C:\\\\dir\\\\\\\"quoted\\\"\\nline2\",tab=\"a\tb\rc\"} 1.0\n\
             # EOF\n",
        );
    }

    #[test]
    fn special_values() {
        let families = [family(
            "odd_values",
            "NaN and infinities.",
            MetricType::Gauge,
            &[
                ("odd_values", &[("v", "nan")], f64::NAN),
                ("odd_values", &[("v", "+inf")], f64::INFINITY),
                ("odd_values", &[("v", "-inf")], f64::NEG_INFINITY),
                ("odd_values", &[("v", "negzero")], -0.0),
                ("odd_values", &[("v", "big")], f64::MAX),
            ],
        )];
        // As Python writes it.
        check(
            &families,
            "# HELP odd_values NaN and infinities.\n\
             # TYPE odd_values gauge\n\
             odd_values{v=\"nan\"} NaN\n\
             odd_values{v=\"+inf\"} +Inf\n\
             odd_values{v=\"-inf\"} -Inf\n\
             odd_values{v=\"negzero\"} -0.0\n\
             odd_values{v=\"big\"} 1.7976931348623157e+308\n",
            "# HELP odd_values NaN and infinities.\n\
             # TYPE odd_values gauge\n\
             odd_values{v=\"nan\"} NaN\n\
             odd_values{v=\"+inf\"} +Inf\n\
             odd_values{v=\"-inf\"} -Inf\n\
             odd_values{v=\"negzero\"} -0.0\n\
             odd_values{v=\"big\"} 1.7976931348623157e+308\n\
             # EOF\n",
        );
    }

    #[test]
    fn no_families() {
        // As Python writes it.
        check(&[], "", "# EOF\n");
    }

    #[test]
    fn empty_help_keeps_the_space() {
        let families = [family("x", "", MetricType::Gauge, &[("x", &[], 1.0)])];
        // As Python writes it.
        check(
            &families,
            "# HELP x \n# TYPE x gauge\nx 1.0\n",
            "# HELP x \n# TYPE x gauge\nx 1.0\n# EOF\n",
        );
    }

    #[test]
    fn invalid_names_become_underscores() {
        let families = [
            family(
                "my-app.requests",
                "Dotted and dashed.",
                MetricType::Counter,
                &[(
                    "my-app.requests_total",
                    &[
                        ("1st", "a"),
                        ("content-type", "text/html"),
                        ("ok_label", "c"),
                        ("é", "b"),
                    ],
                    3.0,
                )],
            ),
            family(
                "2xx rate🎉",
                "Leading digit, space, emoji.",
                MetricType::Gauge,
                &[("2xx rate🎉", &[("a:b", "colon")], 1.0)],
            ),
        ];
        // As Python writes it: labels stay in the order of their unescaped names.
        check(
            &families,
            "# HELP my_app_requests_total Dotted and dashed.\n\
             # TYPE my_app_requests_total counter\n\
             my_app_requests_total{_st=\"a\",content_type=\"text/html\",ok_label=\"c\",_=\"b\"} 3.0\n\
             # HELP _xx_rate_ Leading digit, space, emoji.\n\
             # TYPE _xx_rate_ gauge\n\
             _xx_rate_{a_b=\"colon\"} 1.0\n",
            "# HELP my_app_requests Dotted and dashed.\n\
             # TYPE my_app_requests counter\n\
             my_app_requests_total{_st=\"a\",content_type=\"text/html\",ok_label=\"c\",_=\"b\"} 3.0\n\
             # HELP _xx_rate_ Leading digit, space, emoji.\n\
             # TYPE _xx_rate_ gauge\n\
             _xx_rate_{a_b=\"colon\"} 1.0\n\
             # EOF\n",
        );
    }

    #[test]
    fn colons_stay_in_metric_names() {
        let families = [
            family(
                "job:requests",
                "Colon counter.",
                MetricType::Counter,
                &[("job:requests_total", &[], 2.0)],
            ),
            family(
                "h:lat",
                "Colon histogram.",
                MetricType::Histogram,
                &[
                    ("h:lat_bucket", &[("le", "+Inf")], 1.0),
                    ("h:lat_count", &[], 1.0),
                    ("h:lat_sum", &[], 0.5),
                ],
            ),
        ];
        // The text format as Python writes it. In OpenMetrics Python writes the samples as
        // `job_requests_total`, `h_lat_bucket`, ... under `# TYPE job:requests counter` and
        // `# TYPE h:lat histogram`, which leaves both families empty and their samples untyped.
        check(
            &families,
            "# HELP job:requests_total Colon counter.\n\
             # TYPE job:requests_total counter\n\
             job:requests_total 2.0\n\
             # HELP h:lat Colon histogram.\n\
             # TYPE h:lat histogram\n\
             h:lat_bucket{le=\"+Inf\"} 1.0\n\
             h:lat_count 1.0\n\
             h:lat_sum 0.5\n",
            "# HELP job:requests Colon counter.\n\
             # TYPE job:requests counter\n\
             job:requests_total 2.0\n\
             # HELP h:lat Colon histogram.\n\
             # TYPE h:lat histogram\n\
             h:lat_bucket{le=\"+Inf\"} 1.0\n\
             h:lat_count 1.0\n\
             h:lat_sum 0.5\n\
             # EOF\n",
        );
    }

    #[test]
    fn newlines_and_empty_names_cannot_break_lines() {
        let families = [
            family(
                "bad\n",
                "x",
                MetricType::Gauge,
                &[("bad\n", &[("l\n", "v")], 1.0)],
            ),
            family("e", "x", MetricType::Gauge, &[("", &[("", "v")], 1.0)]),
            family("", "x", MetricType::Counter, &[("_total", &[], 1.0)]),
        ];
        // Python writes `# HELP bad\n x`, `bad\n{l\n="v"} 1.0` (a name ending in a newline passes
        // its validity regex) and `{="v"} 1.0`, which no parser accepts.
        check(
            &families,
            "# HELP bad_ x\n\
             # TYPE bad_ gauge\n\
             bad_{l_=\"v\"} 1.0\n\
             # HELP e x\n\
             # TYPE e gauge\n\
             _{_=\"v\"} 1.0\n\
             # HELP __total x\n\
             # TYPE __total counter\n\
             _total 1.0\n",
            "# HELP bad_ x\n\
             # TYPE bad_ gauge\n\
             bad_{l_=\"v\"} 1.0\n\
             # HELP e x\n\
             # TYPE e gauge\n\
             _{_=\"v\"} 1.0\n\
             # HELP _ x\n\
             # TYPE _ counter\n\
             _total 1.0\n\
             # EOF\n",
        );
    }

    #[test]
    fn label_names_equal_once_escaped_are_written_once() {
        let families = [family(
            "d",
            "x",
            MetricType::Gauge,
            &[
                ("d", &[("a-b", "1"), ("a_b", "2")], 1.0),
                (
                    "d",
                    &[
                        ("a", "0"),
                        ("a.b", "1"),
                        ("a:b", "2"),
                        ("a_b", "3"),
                        ("b", "4"),
                    ],
                    2.0,
                ),
                ("d", &[("a_b", "1"), ("a_c", "2")], 3.0),
            ],
        )];
        // Python writes `d{a_b="1",a_b="2"} 1.0`, which Prometheus and Python's own parsers reject.
        check(
            &families,
            "# HELP d x\n\
             # TYPE d gauge\n\
             d{a_b=\"1\"} 1.0\n\
             d{a=\"0\",a_b=\"1\",b=\"4\"} 2.0\n\
             d{a_b=\"1\",a_c=\"2\"} 3.0\n",
            "# HELP d x\n\
             # TYPE d gauge\n\
             d{a_b=\"1\"} 1.0\n\
             d{a=\"0\",a_b=\"1\",b=\"4\"} 2.0\n\
             d{a_b=\"1\",a_c=\"2\"} 3.0\n\
             # EOF\n",
        );
    }

    #[test]
    fn counter_stored_with_total_suffix() {
        let families = [
            family(
                "c_total",
                "x",
                MetricType::Counter,
                &[("c_total", &[], 1.0)],
            ),
            family(
                "d_total",
                "y",
                MetricType::Counter,
                &[("d_total_total", &[], 2.0)],
            ),
        ];
        // Python writes `# TYPE c_total_total counter` and `# TYPE c_total counter` (OpenMetrics)
        // over `c_total 1.0`; its OpenMetrics parser rejects the latter ("Clashing name").
        check(
            &families,
            "# HELP c_total x\n\
             # TYPE c_total counter\n\
             c_total 1.0\n\
             # HELP d_total y\n\
             # TYPE d_total counter\n\
             d_total_total 2.0\n",
            "# HELP c x\n\
             # TYPE c counter\n\
             c_total 1.0\n\
             # HELP d y\n\
             # TYPE d counter\n\
             d_total_total 2.0\n\
             # EOF\n",
        );
    }

    #[test]
    fn text_moves_created_gsum_and_gcount_samples_into_gauges() {
        let families = [family(
            "k",
            "h\\elp",
            MetricType::Counter,
            &[
                ("k_created", &[("a", "1")], 5.0),
                ("k_total", &[("a", "1")], 1.0),
                ("k_gsum", &[], 1.0),
                ("k_gcount", &[], 1.0),
            ],
        )];
        // As Python writes it.
        check(
            &families,
            "# HELP k_total h\\\\elp\n\
             # TYPE k_total counter\n\
             k_total{a=\"1\"} 1.0\n\
             # HELP k_created h\\\\elp\n\
             # TYPE k_created gauge\n\
             k_created{a=\"1\"} 5.0\n\
             # HELP k_gcount h\\\\elp\n\
             # TYPE k_gcount gauge\n\
             k_gcount 1.0\n\
             # HELP k_gsum h\\\\elp\n\
             # TYPE k_gsum gauge\n\
             k_gsum 1.0\n",
            "# HELP k h\\\\elp\n\
             # TYPE k counter\n\
             k_created{a=\"1\"} 5.0\n\
             k_total{a=\"1\"} 1.0\n\
             k_gsum 1.0\n\
             k_gcount 1.0\n\
             # EOF\n",
        );
    }

    #[test]
    fn whole_numbers_are_written_as_floattogostring_writes_them() {
        let mut values = vec![
            0.0,
            -0.0,
            999_999.0,
            1e6,
            1_234_567.0,
            -1e6,
            -1_234_567.0,
            5e15,
        ];
        values.extend([
            -9_999_999_999_999_998.0,
            -1e16,
            -1e17,
            1e16,
            2f64.powi(53),
            -2f64.powi(53),
        ]);
        values.extend((-2000..2000).map(f64::from));
        values.extend((0..20).flat_map(|e| [10f64.powi(e), -(10f64.powi(e)), 10f64.powi(e) - 1.0]));
        for value in values {
            let mut out = String::new();
            write_value(&mut out, value);
            assert_eq!(out, go_float(value), "{value:e}");
        }
    }

    #[test]
    fn encode_into_appends() {
        let families = [family("x", "h", MetricType::Gauge, &[("x", &[], 1.0)])];
        let mut out = String::from("# existing\n");
        encode_into(&families, Format::Text, &mut out);
        encode_into(&families, Format::OpenMetrics, &mut out);
        assert_eq!(
            out,
            "# existing\n\
             # HELP x h\n# TYPE x gauge\nx 1.0\n\
             # HELP x h\n# TYPE x gauge\nx 1.0\n# EOF\n"
        );
    }

    #[test]
    fn large_families_written_on_every_core_keep_their_order() {
        // Enough samples for several parallel runs, every third one a `_created` sample that
        // the text format moves after the others.
        let n = 5 * PARALLEL_RUN + 123;
        let samples: Vec<Sample> = (0..n)
            .map(|i| Sample {
                name: if i.is_multiple_of(3) {
                    "c_created"
                } else {
                    "c_total"
                }
                .to_owned(),
                labels: vec![("i".to_owned(), format!("{i:06}"))],
                value: i as f64,
            })
            .collect();
        let families = [MetricFamily {
            name: "c".into(),
            help: "h".into(),
            kind: MetricType::Counter,
            samples,
        }];
        let line = |i: usize| {
            let name = if i.is_multiple_of(3) {
                "c_created"
            } else {
                "c_total"
            };
            format!("{name}{{i=\"{i:06}\"}} {i}.0\n")
        };
        let mut text = String::from("# HELP c_total h\n# TYPE c_total counter\n");
        text.extend((0..n).filter(|i| !i.is_multiple_of(3)).map(line));
        text.push_str("# HELP c_created h\n# TYPE c_created gauge\n");
        text.extend((0..n).filter(|i| i.is_multiple_of(3)).map(line));
        assert_eq!(encode(&families, Format::Text), text);

        let mut openmetrics = String::from("# HELP c h\n# TYPE c counter\n");
        openmetrics.extend((0..n).map(line));
        openmetrics.push_str("# EOF\n");
        assert_eq!(encode(&families, Format::OpenMetrics), openmetrics);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Format::Text.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            Format::OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }
}
