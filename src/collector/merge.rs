//! Merging what was read: numbering the distinct keys across runs, checking them and writing
//! their series' identities, merging the values, finishing each family in order, and the view of
//! a merged family the encoders read (see `docs/design.md`).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;

use prometheus_multiproc_format::filename::{FileName, GaugeMode, MetricType};
use prometheus_multiproc_format::float::go_float;
use prometheus_multiproc_format::key::{decode_key_into, decode_key_ref, KeyError, KeyRef};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use super::order::{sort_rows, Order, Ranks};
use super::read::{load_chunk, Chunk, Input, KeyList, KeyTable, Loaded};
use super::{BadFile, BadFileReason, MetricFamily, Sample};
use crate::exposition::{is_valid_metric_name, label_name_piece, label_value_piece, FamilyView};

pub(super) struct Merge<'a> {
    pub(super) inputs: Vec<Input<'a>>,
}

/// Items made in runs of [`Runs::LEN`] on every core, indexed as one list without copying them
/// into one.
struct Runs<T>(Vec<Vec<T>>);

impl<T> Runs<T> {
    const SHIFT: u32 = 12;
    /// The length of every run but the last.
    const LEN: usize = 1 << Self::SHIFT;

    fn len(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }
}

impl<T> std::ops::Index<u32> for Runs<T> {
    type Output = T;
    fn index(&self, i: u32) -> &T {
        &self.0[(i >> Self::SHIFT) as usize][i as usize & (Self::LEN - 1)]
    }
}

/// A checked key with what the merge needs of it, found in parallel before the merge: its
/// family name, its `le` bound, and the identity of its series (see [`Row`]) for a family of the
/// type of the first file it was met in. Its labels are read again where needed, so that
/// hundreds of thousands of keys cost no label lists.
struct Decoded<'k> {
    raw: &'k [u8],
    metric: Cow<'k, str>,
    /// Why the key could not be decoded.
    error: Option<Box<KeyError>>,
    /// The numeric `le` label, if the key has an `le` label that parses as a float.
    le: Option<f64>,
    /// Whether the key has an `le` label at all.
    has_le: bool,
    /// The family type `ident` was made for.
    kind: MetricType,
    /// Whether a string of the key has a 0 byte (escaped in `ident`).
    zero: bool,
    ident: Row,
}

fn parse_le(s: &str) -> Option<f64> {
    // Python's float(): surrounding whitespace allowed, `+Inf`/`inf`/`nan` in any case.
    s.trim().parse::<f64>().ok()
}

impl<'k> Decoded<'k> {
    /// Whether the key makes a file bad: it could not be decoded, or its `le` is not a number
    /// (in a histogram's file; see [`check_keys`]).
    fn suspect(&self) -> bool {
        self.error.is_some() || (self.has_le && self.le.is_none())
    }

    /// Checks `raw` (decoding it into `scratch`), and appends the identity of its series in a
    /// family of type `kind` to `arena` (number `arena_id`).
    fn new(
        raw: &'k [u8],
        kind: MetricType,
        scratch: &mut KeyRef<'k>,
        arena: &mut String,
        arena_id: u32,
    ) -> Decoded<'k> {
        let mut d = Decoded {
            raw,
            metric: Cow::Borrowed(""),
            error: None,
            le: None,
            has_le: false,
            kind,
            zero: false,
            ident: Row::default(),
        };
        if let Err(e) = decode_key_into(raw, scratch) {
            d.error = Some(Box::new(e));
            return d;
        }
        let le_label = scratch.labels.iter().find(|(n, _)| n == "le");
        d.has_le = le_label.is_some();
        d.le = le_label.and_then(|(_, v)| parse_le(v));
        let bucket = (kind == MetricType::Histogram && d.has_le).then(|| d.le.unwrap_or(f64::NAN));
        // A 0 byte can only come from a `\u0000` escape, and a string with an escape is owned.
        let owned = |s: &Cow<str>| matches!(s, Cow::Owned(_));
        let zeros =
            owned(&scratch.sample) || scratch.labels.iter().any(|(n, v)| owned(n) || owned(v));
        let (ident, zero) = build_ident(arena, arena_id, scratch, kind, bucket, None, zeros);
        d.ident = ident;
        d.zero = zero;
        d.metric = std::mem::take(&mut scratch.metric);
        d
    }
}

/// The labels of the series of `key` in a family of type `kind`, sorted: a bucket's (`bucket`)
/// but `le`; a gauge's never keep a `pid` of the key, and `all` and `liveall` add the file's
/// (`pid`).
fn series_labels<'a>(
    key: &'a KeyRef,
    kind: MetricType,
    bucket: bool,
    pid: Option<&'a str>,
) -> impl Iterator<Item = (&'a str, &'a str)> + Clone {
    let skip = match bucket {
        true => Some("le"),
        false if kind == MetricType::Gauge => Some("pid"),
        false => None,
    };
    let kept = key
        .labels
        .iter()
        .map(|(n, v)| (n.as_ref(), v.as_ref()))
        .filter(move |(n, _)| Some(*n) != skip);
    // Without a pid to put in its place, nothing is compared with `pid`.
    let before_pid = move |(n, _): &(&str, &str)| pid.is_none() || *n < "pid";
    kept.clone()
        .take_while(before_pid)
        .chain(pid.map(|p| ("pid", p)))
        .chain(kept.skip_while(before_pid))
}

/// Appends to `arena` the identity of the series of `key` in a family of type `kind`: with
/// `bucket`, a histogram bucket of that bound; with `pid`, an `all`/`liveall` gauge's series of
/// that process; `zeros`: whether a string may have a 0 byte. Also tells whether one had.
fn build_ident(
    arena: &mut String,
    arena_id: u32,
    key: &KeyRef,
    kind: MetricType,
    bucket: Option<f64>,
    pid: Option<&str>,
    zeros: bool,
) -> (Row, bool) {
    let labels = series_labels(key, kind, bucket.is_some(), pid);
    let start = arena.len();
    let (end, mut zero) = sort_key_into(arena, labels, "", zeros);
    let labels_end = end - start;
    match bucket {
        Some(bound) => {
            arena.push('\0');
            push_bound(arena, bound);
        }
        None => {
            arena.push('\x01');
            zero |= escape_zeros(arena, &key.sample, zeros);
        }
    }
    let row = Row {
        arena: arena_id,
        start,
        len: (arena.len() - start) as u32,
        labels_end: labels_end as u32,
        member: 0,
    };
    (row, zero)
}

/// What the merge keeps of the values of one series.
#[derive(Clone, Copy)]
struct Acc {
    value: f64,
    /// The timestamp of the value kept, for `mostrecent` gauges; for `all` gauges, where it was
    /// written (file number, then entry number: the later entry wins when two keys name one
    /// series, as it would in Python).
    timestamp: f64,
    set: bool,
}

impl Default for Acc {
    fn default() -> Acc {
        Acc {
            value: 0.0,
            timestamp: 0.0,
            set: false,
        }
    }
}

impl Acc {
    /// Adds one file's value, per the family's gauge mode (`None`: summed).
    #[inline]
    fn apply(&mut self, mode: Option<GaugeMode>, value: f64, timestamp: f64, written: f64) {
        match mode {
            None | Some(GaugeMode::Sum | GaugeMode::LiveSum) => {
                self.value += value;
                self.set = true;
            }
            Some(GaugeMode::Min | GaugeMode::LiveMin) => {
                if !self.set || value < self.value {
                    self.value = value;
                }
                self.set = true;
            }
            Some(GaugeMode::Max | GaugeMode::LiveMax) => {
                if !self.set || value > self.value {
                    self.value = value;
                }
                self.set = true;
            }
            Some(GaugeMode::MostRecent | GaugeMode::LiveMostRecent) => {
                // Python keeps a value only when its timestamp is later than the latest seen,
                // starting from 0: a never-set gauge has no sample.
                if self.timestamp < timestamp {
                    self.value = value;
                    self.timestamp = timestamp;
                    self.set = true;
                }
            }
            Some(GaugeMode::All | GaugeMode::LiveAll) => {
                self.value = value;
                self.timestamp = written;
                self.set = true;
            }
        }
    }

    /// Merges the values of another key of the same series (keys that differ only in their
    /// help text or spelling).
    fn combine(&mut self, mode: Option<GaugeMode>, other: &Acc) {
        if !other.set {
            return;
        }
        if !self.set {
            *self = *other;
            return;
        }
        match mode {
            None | Some(GaugeMode::Sum | GaugeMode::LiveSum) => self.value += other.value,
            Some(GaugeMode::Min | GaugeMode::LiveMin) => {
                if other.value < self.value {
                    self.value = other.value;
                }
            }
            Some(GaugeMode::Max | GaugeMode::LiveMax) => {
                if other.value > self.value {
                    self.value = other.value;
                }
            }
            Some(
                GaugeMode::MostRecent
                | GaugeMode::LiveMostRecent
                | GaugeMode::All
                | GaugeMode::LiveAll,
            ) => {
                if other.timestamp > self.timestamp {
                    *self = *other;
                }
            }
        }
    }
}

/// A family while the files are merged.
struct FamilyAcc<'a> {
    name: String,
    help: String,
    kind: MetricType,
    mode: Option<GaugeMode>,
    /// For `all` and `liveall` gauges, whose series are per process: by key and pid.
    per_pid: FxHashMap<(u32, &'a str), Acc>,
}

impl FamilyAcc<'_> {
    fn keeps_pid(&self) -> bool {
        self.mode.is_some_and(GaugeMode::keeps_pid)
    }
}

/// One row of a family being finished: a series or a histogram bucket, with the bytes that
/// order it: [`sort_key_into`] of its labels (for a bucket, all but `le`), then `00` and the bound
/// (see [`push_bound`]) for a bucket, or `01` and the sample name; so a histogram's buckets
/// come first among the samples of its labels, in order of their bounds.
#[derive(Clone, Copy, Default)]
pub(super) struct Row {
    /// Where the identity is: which arena (see [`Arenas`]), from where, how long.
    pub(super) arena: u32,
    pub(super) start: usize,
    pub(super) len: u32,
    /// Where its labels' part ends.
    pub(super) labels_end: u32,
    /// Index of the series' key, process and values in the family's members.
    pub(super) member: u32,
}

/// Where identities are: the arenas of the keys (made while decoding them), then a family's
/// own (for series whose identity differs from their key's).
#[derive(Clone, Copy)]
pub(super) struct Arenas<'x> {
    pub(super) keys: &'x [String],
    pub(super) own: &'x [String],
}

impl<'x> Arenas<'x> {
    fn get(&self, arena: u32) -> &'x str {
        let arena = arena as usize;
        match self.keys.get(arena) {
            Some(a) => a,
            None => self
                .own
                .get(arena - self.keys.len())
                .map_or("", String::as_str),
        }
    }
}

impl Row {
    pub(super) fn ident<'i>(&self, arenas: Arenas<'i>) -> &'i str {
        let start = self.start;
        arenas
            .get(self.arena)
            .get(start..start + self.len as usize)
            .unwrap_or_default()
    }

    pub(super) fn labels<'i>(&self, arenas: Arenas<'i>) -> &'i str {
        self.ident(arenas)
            .get(..self.labels_end as usize)
            .unwrap_or_default()
    }
}

/// The labels and sample name held in an identity, when none of its strings had a 0 byte to
/// escape (nearly always): `None` otherwise, or for a bucket's (which has no name).
fn parse_ident<'i>(
    ident: &'i str,
    labels_end: usize,
    labels: &mut Vec<(&'i str, &'i str)>,
) -> Option<Option<&'i str>> {
    labels.clear();
    // `name 00 01 value 00 01` per label, then `00 00`.
    let mut rest = ident.get(..labels_end.checked_sub(2)?)?;
    let next = |rest: &mut &'i str| -> Option<&'i str> {
        let end = rest.as_bytes().iter().position(|&b| b == 0)?;
        if rest.as_bytes().get(end + 1) != Some(&1) {
            return None;
        }
        let s = rest.get(..end)?;
        *rest = rest.get(end + 2..)?;
        Some(s)
    };
    while !rest.is_empty() {
        let name = next(&mut rest)?;
        let value = next(&mut rest)?;
        labels.push((name, value));
    }
    match ident.as_bytes().get(labels_end)? {
        1 => {
            let name = ident.get(labels_end + 1..)?;
            if name.as_bytes().contains(&0) {
                return None;
            }
            Some(Some(name))
        }
        _ => Some(None),
    }
}

/// Appends `bound` as 16 hexadecimal digits that sort as [`f64::total_cmp`] orders bounds.
fn push_bound(arena: &mut String, bound: f64) {
    let bits = bound.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    };
    let _ = write!(arena, "{ordered:016x}");
}

/// A merged family: samples sorted, their names and labels in the identities of their rows.
pub(super) struct MergedFamily {
    pub(super) name: String,
    help: String,
    kind: MetricType,
    /// `{name}_bucket` and `{name}_count`, for histograms.
    bucket_name: String,
    count_name: String,
    /// The bucket bounds written as `le` values.
    bounds: Vec<String>,
    /// The family's own identities (see [`Arenas`]).
    arenas: Vec<String>,
    /// Sample names and labels of the rows whose identities cannot give them back (a string
    /// with a 0 byte, escaped there), by member.
    escaped: FxHashMap<u32, (String, Vec<(String, String)>)>,
    /// Its series' rows, by member.
    rows: Vec<Row>,
    samples: Vec<MergedSample>,
    /// The label text of a family sorted by ranks, each distinct name and value written once.
    written: Option<Written>,
}

/// A ranked family's label text (see [`crate::exposition::FamilyView::written`]).
struct Written {
    /// Per label field position (names and values alternate): where its rank is in a sample's
    /// key (shift, mask), and how each of its strings is written, by rank - 1.
    positions: Vec<(u32, u128, Vec<String>)>,
    tail_mask: u128,
    /// By rank - 1 of the rest of an identity: the sample name, if it is one written as it is.
    names: Vec<Option<String>>,
}

impl Written {
    /// The text of `ranks`' strings, if every label name is written as it is.
    fn new(ranks: &Ranks) -> Option<Written> {
        fn text(s: &[u8]) -> Option<&str> {
            std::str::from_utf8(s).ok()
        }
        let positions = ranks
            .positions
            .iter()
            .enumerate()
            .map(|(k, strings)| {
                let (shift, mask) = ranks.field(k);
                let pieces = strings
                    .iter()
                    .map(|s| match k % 2 {
                        0 => label_name_piece(k == 0, text(s)?),
                        _ => Some(label_value_piece(text(s)?)),
                    })
                    .collect::<Option<_>>()?;
                Some((shift, mask, pieces))
            })
            .collect::<Option<_>>()?;
        let names = ranks
            .tails
            .iter()
            .map(|tail| {
                let name = text(tail.strip_prefix(b"\x01")?)?;
                is_valid_metric_name(name).then(|| name.to_owned())
            })
            .collect();
        Some(Written {
            positions,
            tail_mask: ranks.tail_mask(),
            names,
        })
    }
}

/// A merged sample: the labels (and sample name) held in the identity of `row`, plus the `le`
/// label of a bucket.
#[derive(Clone, Copy)]
struct MergedSample {
    /// Its row, among the family's `rows`.
    row: u32,
    /// The row's identity as ranks, if the family was sorted by ranks.
    key: u128,
    name: SampleName,
    /// An index into the family's `bounds`, for a bucket.
    le: Option<u32>,
    value: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum SampleName {
    Key,
    Bucket,
    Count,
}

/// How long each stage of a scrape took, for the `debug` log line that tells where a slow
/// scrape spends its time.
pub(super) struct Stages {
    last: std::time::Instant,
    laps: Vec<(&'static str, std::time::Duration)>,
    keys: usize,
}

impl Stages {
    fn start() -> Stages {
        Stages {
            last: std::time::Instant::now(),
            laps: Vec::new(),
            keys: 0,
        }
    }

    pub(super) fn lap(&mut self, stage: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((stage, now - self.last));
        self.last = now;
    }

    /// Logs the stages at `debug` level.
    pub(super) fn log(&self, dir: &Path, files: usize) {
        if log::log_enabled!(log::Level::Debug) {
            let laps: Vec<String> = self
                .laps
                .iter()
                .map(|(stage, d)| format!("{stage} {:.1} ms", d.as_secs_f64() * 1e3))
                .collect();
            log::debug!(
                "scraped {} ({files} files, {} distinct keys): {}",
                dir.display(),
                self.keys,
                laps.join(", ")
            );
        }
    }
}

/// A merged directory: what [`super::Collector::collect`] turns into owned families and
/// [`super::Collector::encode_into`] writes directly.
pub(super) struct Merged {
    /// The identities of the keys' series (see [`Arenas`]).
    arenas: Vec<String>,
    pub(super) stages: Stages,
    pub(super) families: Vec<MergedFamily>,
    pub(super) bad: Vec<BadFile>,
    pub(super) files_read: usize,
}

/// A merged family with the identities it refers to, as the encoders read it.
pub(super) struct MergedView<'m> {
    pub(super) family: &'m MergedFamily,
    arenas: Arenas<'m>,
}

impl Merged {
    pub(super) fn views(&self) -> Vec<MergedView<'_>> {
        self.families
            .iter()
            .map(|family| MergedView {
                family,
                arenas: Arenas {
                    keys: &self.arenas,
                    own: &family.arenas,
                },
            })
            .collect()
    }

    /// The families with owned samples.
    pub(super) fn to_families(&self) -> Vec<MetricFamily> {
        self.views()
            .iter()
            .map(|family| MetricFamily {
                name: family.family.name.clone(),
                help: family.family.help.clone(),
                kind: family.family.kind,
                samples: (0..family.len())
                    .into_par_iter()
                    .map_init(Vec::new, |labels, i| {
                        let (name, value) = family.sample(i, labels);
                        Sample {
                            name: name.to_owned(),
                            labels: labels
                                .iter()
                                .map(|(n, v)| (n.to_string(), v.to_string()))
                                .collect(),
                            value,
                        }
                    })
                    .collect(),
            })
            .collect()
    }
}

impl FamilyView for MergedView<'_> {
    fn name(&self) -> &str {
        &self.family.name
    }
    fn help(&self) -> &str {
        &self.family.help
    }
    fn kind(&self) -> MetricType {
        self.family.kind
    }
    fn len(&self) -> usize {
        self.family.samples.len()
    }
    fn sample<'s>(&'s self, i: usize, labels: &mut Vec<(&'s str, &'s str)>) -> (&'s str, f64) {
        let fam = self.family;
        let s = &fam.samples[i];
        let row = &fam.rows[s.row as usize];
        let ident = row.ident(self.arenas);
        let name = match parse_ident(ident, row.labels_end as usize, labels) {
            Some(name) => name.unwrap_or_default(),
            None => {
                labels.clear();
                match fam.escaped.get(&row.member) {
                    Some((name, escaped)) => {
                        labels.extend(escaped.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                        name.as_str()
                    }
                    None => "",
                }
            }
        };
        if let Some(le) = s.le {
            let at = labels.partition_point(|(n, _)| *n < "le");
            labels.insert(at, ("le", fam.bounds[le as usize].as_str()));
        }
        let name = match s.name {
            SampleName::Key => name,
            SampleName::Bucket => fam.bucket_name.as_str(),
            SampleName::Count => fam.count_name.as_str(),
        };
        (name, s.value)
    }

    fn written<'s>(&'s self, i: usize, pieces: &mut Vec<&'s str>) -> Option<(&'s str, f64)> {
        let fam = self.family;
        let written = fam.written.as_ref()?;
        let s = &fam.samples[i];
        if s.name != SampleName::Key {
            return None;
        }
        let tail = (s.key & written.tail_mask) as usize;
        let name = written.names.get(tail.checked_sub(1)?)?.as_deref()?;
        pieces.clear();
        for (shift, mask, texts) in &written.positions {
            match ((s.key >> shift) & mask) as usize {
                0 => break,
                rank => pieces.push(texts.get(rank - 1)?),
            }
        }
        if !pieces.is_empty() {
            pieces.push("}");
        }
        Some((name, s.value))
    }
}

/// A family's series before they are put in order: its keys with a value, each with the merged
/// values of its key, then those of `all` and `liveall` gauges, one per key and process.
struct Members<'a> {
    keys: Vec<u32>,
    /// Where the processes' series start among the members, and their pid and values.
    plain: usize,
    processes: Vec<(&'a str, Acc)>,
    /// The merged values of every key.
    accs: &'a [Acc],
}

impl<'a> Members<'a> {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn pid(&self, member: usize) -> Option<&'a str> {
        let process = member.checked_sub(self.plain)?;
        Some(self.processes[process].0)
    }

    fn acc(&self, member: usize) -> Acc {
        match member.checked_sub(self.plain) {
            Some(process) => self.processes[process].1,
            None => self.accs[self.keys[member] as usize],
        }
    }
}

/// Finishes a family: its series in order, keys of one series merged, histogram buckets
/// accumulated by bound with their `_count`.
fn finish(
    fam: FamilyAcc,
    members: Members,
    decoded: &Runs<Decoded>,
    key_arenas: &[String],
) -> MergedFamily {
    let histogram = fam.kind == MetricType::Histogram;
    let bucket_of = |key: u32| {
        if !histogram {
            return None;
        }
        let d = &decoded[key];
        d.has_le.then(|| d.le.unwrap_or(f64::NAN))
    };
    // Each series' identity: its key's, unless the family's type is not the one it was made
    // for or the series is a process's (`all` gauges); those are made here, on every core.
    let reusable = |member: usize| {
        let d = &decoded[members.keys[member]];
        members.pid(member).is_none() && d.kind == fam.kind && !d.zero
    };
    let mut rows: Vec<Row> = (0..members.len())
        .into_par_iter()
        .map(|member| Row {
            member: member as u32,
            ..match reusable(member) {
                true => decoded[members.keys[member]].ident,
                false => Row::default(),
            }
        })
        .collect();
    let others: Vec<u32> = (0..members.len() as u32)
        .into_par_iter()
        .filter(|&member| !reusable(member as usize))
        .collect();
    const RUN: usize = 4096;
    type Built = (
        String,
        Vec<Row>,
        Vec<(u32, (String, Vec<(String, String)>))>,
    );
    let built: Vec<Built> = others
        .par_chunks(RUN)
        .enumerate()
        .map(|(run_id, run)| {
            let mut own = String::new();
            let mut rows = Vec::with_capacity(run.len());
            let mut escaped = Vec::new();
            let mut key = KeyRef::default();
            let own_id = (key_arenas.len() + run_id) as u32;
            for &member in run {
                let (k, pid) = (members.keys[member as usize], members.pid(member as usize));
                let d = &decoded[k];
                // Checked before the merge: this decodes.
                if decode_key_into(d.raw, &mut key).is_err() {
                    key = KeyRef::default();
                }
                let (row, zero) = if pid.is_none() && d.kind == fam.kind {
                    (d.ident, d.zero)
                } else {
                    build_ident(&mut own, own_id, &key, fam.kind, bucket_of(k), pid, true)
                };
                rows.push(Row { member, ..row });
                if zero {
                    // The identity escapes the 0 bytes: keep the strings themselves.
                    let labels = series_labels(&key, fam.kind, bucket_of(k).is_some(), pid)
                        .map(|(n, v)| (n.to_owned(), v.to_owned()))
                        .collect();
                    escaped.push((member, (key.sample.to_string(), labels)));
                }
            }
            (own, rows, escaped)
        })
        .collect();
    let mut own_arenas = Vec::with_capacity(built.len());
    let mut escaped = FxHashMap::default();
    for (bytes, run, run_escaped) in built {
        own_arenas.push(bytes);
        for row in run {
            rows[row.member as usize] = row;
        }
        escaped.extend(run_escaped);
    }
    let arenas = Arenas {
        keys: key_arenas,
        own: &own_arenas,
    };
    // A stored `_count` sample, as its identity ends.
    let mut count_ident = String::from("\x01");
    escape_zeros(&mut count_ident, &format!("{}_count", fam.name), true);
    let (mut order, sorted) = sort_rows(&rows, arenas, count_ident.as_bytes());
    let written = match &order {
        Order::Ranked(ranks) if escaped.is_empty() => Written::new(ranks),
        _ => None,
    };
    let mut out = MergedFamily {
        bucket_name: format!("{}_bucket", fam.name),
        count_name: format!("{}_count", fam.name),
        name: fam.name,
        help: fam.help,
        kind: fam.kind,
        bounds: Vec::new(),
        arenas: Vec::new(),
        escaped,
        rows: Vec::new(),
        samples: Vec::new(),
        written,
    };
    if !histogram {
        // Keys of one series are next to each other now: merged as they come.
        let ident = |i: usize| rows[sorted[i] as usize].ident(arenas);
        let same_as_prev = |i: usize| {
            i > 0
                && order
                    .same_as_prev(i)
                    .unwrap_or_else(|| ident(i - 1) == ident(i))
        };
        let sample = |(i, acc): (usize, Acc)| MergedSample {
            row: sorted[i],
            key: order.key(i),
            name: SampleName::Key,
            le: None,
            value: acc.value,
        };
        let mut samples = Vec::with_capacity(rows.len());
        let mut current: Option<(usize, Acc)> = None;
        for (i, &member) in sorted.iter().enumerate() {
            // A row's index is its member's.
            let acc = members.acc(member as usize);
            match &mut current {
                Some((_, merged)) if same_as_prev(i) => merged.combine(fam.mode, &acc),
                _ => samples.extend(current.replace((i, acc)).map(sample)),
            }
        }
        samples.extend(current.map(sample));
        out.samples = samples;
        out.rows = rows;
        out.arenas = own_arenas;
        return out;
    }
    let by_member = rows;
    let mut rows: Vec<Row> = sorted.par_iter().map(|&m| by_member[m as usize]).collect();
    // A histogram's rows: what the merge in order needs of each, found on every core (the rows
    // are read here and only their flags below).
    let flags: Vec<RowFlags> = (0..rows.len())
        .into_par_iter()
        .map(|i| {
            let row = &rows[i];
            let (key, acc) = (
                members.keys[row.member as usize],
                members.acc(row.member as usize),
            );
            let bucket = bucket_of(key);
            let prev = i.checked_sub(1).map(|p| &rows[p]);
            let labels_as_prev = order
                .labels_as_prev(i)
                .unwrap_or_else(|| prev.is_some_and(|p| p.labels(arenas) == row.labels(arenas)));
            // Keys of one series are next to each other now. Bounds compare as floats, as
            // Python's dict keys do (`-0.0 == 0.0`, `NaN` never equal).
            let same_as_prev = match (bucket, prev) {
                (_, None) => false,
                (Some(bound), Some(p)) => {
                    labels_as_prev && bucket_of(members.keys[p.member as usize]) == Some(bound)
                }
                (None, Some(p)) => order
                    .same_as_prev(i)
                    .unwrap_or_else(|| p.ident(arenas) == row.ident(arenas)),
            };
            RowFlags {
                acc,
                bucket,
                same_as_prev,
                labels_as_prev,
                stored_count: order.is_count(i).unwrap_or_else(|| {
                    row.ident(arenas).get(row.labels_end as usize..) == Some(&count_ident[..])
                }),
            }
        })
        .collect();
    // Merge the keys of one series, in place.
    let mut flags = flags;
    let mut kept = 0;
    for i in 0..rows.len() {
        if kept > 0 && flags[i].same_as_prev {
            let acc = flags[i].acc;
            flags[kept - 1].acc.combine(fam.mode, &acc);
        } else {
            rows[kept] = rows[i];
            flags[kept] = flags[i];
            order.move_key(i, kept);
            kept += 1;
        }
    }
    rows.truncate(kept);
    flags.truncate(kept);
    order.truncate(kept);
    out.samples.reserve(kept);
    let mut bounds: FxHashMap<u64, u32> = FxHashMap::default();
    let mut rows = rows.iter().zip(&flags).enumerate().peekable();
    while let Some((i, (row, f))) = rows.next() {
        let Some(first_bound) = f.bucket else {
            out.samples.push(MergedSample {
                row: row.member,
                key: order.key(i),
                name: SampleName::Key,
                le: None,
                value: f.acc.value,
            });
            continue;
        };
        // A histogram's buckets, accumulated in order of their bounds, then its `_count`.
        let mut total = 0.0;
        let mut bucket = Some((row, first_bound, f.acc));
        while let Some((r, bound, acc)) = bucket {
            total += acc.value;
            let next = out.bounds.len() as u32;
            let index = *bounds.entry(bound.to_bits()).or_insert_with(|| {
                out.bounds.push(go_float(bound));
                next
            });
            out.samples.push(MergedSample {
                row: r.member,
                key: 0,
                name: SampleName::Bucket,
                le: Some(index),
                value: total,
            });
            bucket = rows
                .next_if(|(_, (_, f))| f.bucket.is_some() && f.labels_as_prev)
                .map(|(_, (r, f))| (r, f.bucket.unwrap_or(f64::NAN), f.acc));
        }
        out.samples.push(MergedSample {
            row: row.member,
            key: 0,
            name: SampleName::Count,
            le: None,
            value: total,
        });
        // The accumulated `_count` replaces a stored one, as in Python.
        while rows
            .next_if(|(_, (_, f))| f.labels_as_prev && f.stored_count)
            .is_some()
        {}
    }
    drop(rows);
    out.rows = by_member;
    out.arenas = own_arenas;
    out
}

/// What finishing a family needs to know of one of its sorted rows.
#[derive(Clone, Copy)]
struct RowFlags {
    acc: Acc,
    /// The bound of a histogram's bucket.
    bucket: Option<f64>,
    /// Whether it is a key of the same series as the row before (to merge with it).
    same_as_prev: bool,
    /// Whether its labels are those of the row before (histograms only).
    labels_as_prev: bool,
    /// Whether it is a histogram's stored `_count` sample.
    stored_count: bool,
}

/// [`sort_key_into`] into a new string.
#[cfg(test)]
fn sort_key<N: AsRef<str>, V: AsRef<str>>(labels: &[(N, V)], name: &str) -> (String, usize) {
    let mut key = String::new();
    let (labels_end, _) = sort_key_into(
        &mut key,
        labels.iter().map(|(n, v)| (n.as_ref(), v.as_ref())),
        name,
        true,
    );
    (key, labels_end)
}

/// Appends to `key` text that sorts as `(labels, name)` compare: each string with its 0 bytes
/// escaped as `00 02` and ended by `00 01`, the labels ended by `00 00`. Comparing these with
/// one `memcmp` is much cheaper than comparing the label vectors pair by pair. Returns where the
/// labels' part ends (after its `00 00`; those bytes compare as the labels alone do), and
/// whether a string had a 0 byte.
pub(super) fn sort_key_into<'l>(
    key: &mut String,
    labels: impl IntoIterator<Item = (&'l str, &'l str)>,
    name: &str,
    zeros: bool,
) -> (usize, bool) {
    let mut zero = false;
    for (n, v) in labels {
        zero |= escape_zeros(key, n, zeros);
        key.push_str("\0\x01");
        zero |= escape_zeros(key, v, zeros);
        key.push_str("\0\x01");
    }
    // The end of the labels must sort below any label (`00 01` ends the first string of one).
    key.push_str("\0\0");
    let labels_end = key.len();
    zero |= escape_zeros(key, name, zeros);
    (labels_end, zero)
}

/// Appends `s` with its 0 bytes written as `00 02` (if `zeros`: it may have any); tells whether
/// it had any.
fn escape_zeros(key: &mut String, s: &str, zeros: bool) -> bool {
    if !zeros || !s.as_bytes().contains(&0) {
        key.push_str(s);
        return false;
    }
    for c in s.chars() {
        if c == '\0' {
            key.push_str("\0\x02");
        } else {
            key.push(c);
        }
    }
    true
}

impl Merge<'_> {
    /// Reads and merges the files.
    pub(super) fn run(self) -> Merged {
        let mut stages = Stages::start();
        // 1. Read the files in runs of consecutive files, one run per task, each through one
        //    buffer: only the distinct keys are kept, not the files' bytes.
        let per_chunk = self
            .inputs
            .len()
            .div_ceil(rayon::current_num_threads())
            .max(1);
        let chunks: Vec<Chunk> = self.inputs.par_chunks(per_chunk).map(load_chunk).collect();

        stages.lap("read");
        // 2. Number the distinct keys across runs: each is decoded once, however many files
        //    hold it.
        //    The keys are split among the threads by hash, each numbering its share.
        let shards = rayon::current_num_threads().max(1);
        let shard_of = |hash: u64| ((hash >> 32) as usize) % shards;
        // Per shard: its distinct keys (run, number in the run) in the order met, and every
        // key of the shard as (run, number in the run, number among the shard's distinct).
        type Shard = (Vec<(u32, u32)>, Vec<(u32, u32, u32)>);
        let total_keys: usize = chunks.iter().map(|c| c.keys.hashes.len()).sum();
        let numbered: Vec<Shard> = (0..shards)
            .into_par_iter()
            .map(|shard| {
                // Each shard gets about its share of the keys.
                let share = total_keys / shards + total_keys / (8 * shards) + 16;
                let mut index: hashbrown::HashTable<u32> =
                    hashbrown::HashTable::with_capacity(share);
                let mut firsts: Vec<(u32, u32)> = Vec::with_capacity(share);
                let mut refs: Vec<(u32, u32, u32)> = Vec::with_capacity(share);
                for (c, chunk) in chunks.iter().enumerate() {
                    for (id, &hash) in chunk.keys.hashes.iter().enumerate() {
                        if shard_of(hash) != shard {
                            continue;
                        }
                        let key = chunk.keys.key(id as u32);
                        let found = index.entry(
                            hash,
                            |&g| {
                                let (c, id) = firsts[g as usize];
                                chunks[c as usize].keys.key(id) == key
                            },
                            |&g| {
                                let (c, id) = firsts[g as usize];
                                chunks[c as usize].keys.hashes[id as usize]
                            },
                        );
                        let g = match found {
                            hashbrown::hash_table::Entry::Occupied(o) => *o.get(),
                            hashbrown::hash_table::Entry::Vacant(v) => {
                                let g = firsts.len() as u32;
                                firsts.push((c as u32, id as u32));
                                v.insert(g);
                                g
                            }
                        };
                        refs.push((c as u32, id as u32, g));
                    }
                }
                (firsts, refs)
            })
            .collect();
        let mut renumbered: Vec<Vec<u32>> =
            chunks.iter().map(|c| vec![0; c.keys.spans.len()]).collect();
        let mut distinct: Vec<(u32, u32)> = Vec::new();
        for (firsts, refs) in &numbered {
            let offset = distinct.len() as u32;
            for &(c, id, g) in refs {
                renumbered[c as usize][id as usize] = offset + g;
            }
            distinct.extend_from_slice(firsts);
        }
        drop(numbered);
        stages.lap("number");
        // 3. Decode the distinct keys, in parallel.
        let (tables, loaded): (Vec<KeyTable>, Vec<Vec<Loaded>>) =
            chunks.into_iter().map(|c| (c.keys, c.files)).unzip();
        let runs: Vec<(String, Vec<Decoded>, bool)> = distinct
            .par_chunks(Runs::<Decoded>::LEN)
            .enumerate()
            .map(|(arena_id, run)| {
                let mut arena = String::with_capacity(run.len() * 96);
                let mut scratch = KeyRef::default();
                let decoded = run
                    .iter()
                    .map(|&(c, id)| {
                        let table = &tables[c as usize];
                        let kind = table.kinds[id as usize];
                        Decoded::new(
                            table.key(id),
                            kind,
                            &mut scratch,
                            &mut arena,
                            arena_id as u32,
                        )
                    })
                    .collect::<Vec<_>>();
                let suspect = decoded.iter().any(Decoded::suspect);
                (arena, decoded, suspect)
            })
            .collect();
        // Whether any key can make a file bad (nearly never): if not, none is looked for.
        let suspect = runs.iter().any(|(_, _, suspect)| *suspect);
        let (arenas, decoded): (Vec<String>, Vec<Vec<Decoded>>) =
            runs.into_iter().map(|(a, d, _)| (a, d)).unzip();
        let decoded = Runs(decoded);
        let mut bad = Vec::new();
        let mut files = Vec::with_capacity(self.inputs.len());
        let loaded = loaded
            .into_iter()
            .zip(&renumbered)
            .flat_map(|(files, ids)| files.into_iter().map(move |f| (f, ids)));
        for (input, (loaded, ids)) in self.inputs.iter().zip(loaded) {
            match (loaded, &input.name) {
                (Loaded::Entries(entries), Ok(name)) => {
                    files.push((input.path.as_path(), name, entries, ids.as_slice()))
                }
                (Loaded::Bad(b), _) => bad.push(b),
                _ => {}
            }
        }
        let mut files_read = 0;

        stages.lap("decode");
        // 4. Merge file by file, in name order, into one accumulator per key (per key and
        //    process for `all` gauges); a file with a bad key is left out whole.
        const UNSEEN: u32 = u32::MAX;
        let mut family_of: Vec<u32> = vec![UNSEEN; decoded.len()];
        let mut accs: Vec<Acc> = vec![Acc::default(); decoded.len()];
        let mut families: Vec<FamilyAcc> = Vec::new();
        let mut family_index: FxHashMap<&str, u32> = FxHashMap::default();
        let mut last_family: Option<(&str, u32)> = None;
        for (number, (path, name, entries, ids)) in files.into_iter().enumerate() {
            let problem = suspect
                .then(|| check_keys(path, name, &entries.keys, ids, &decoded))
                .flatten();
            if let Some(problem) = problem {
                bad.push(problem);
                continue;
            }
            let kind = name.kind;
            let mut warned = UNSEEN;
            for (j, (&local, &value)) in entries.keys.ids.iter().zip(&entries.values).enumerate() {
                let key = ids[local as usize];
                let timestamp = entries.timestamps.get(j).copied().unwrap_or(0.0);
                let mut f = family_of[key as usize];
                if f == UNSEEN {
                    let d = &decoded[key];
                    f = match last_family {
                        // Keys of one family usually follow each other.
                        Some((name, f)) if name == d.metric => f,
                        _ => *family_index.entry(&d.metric).or_insert_with(|| {
                            // The help of the key that makes the family.
                            let help = decode_key_ref(d.raw).map(|k| k.help.into_owned());
                            families.push(FamilyAcc {
                                name: d.metric.to_string(),
                                help: help.unwrap_or_default(),
                                kind,
                                mode: name.mode,
                                per_pid: FxHashMap::default(),
                            });
                            families.len() as u32 - 1
                        }),
                    };
                    last_family = Some((&d.metric, f));
                    family_of[key as usize] = f;
                }
                let fam = &mut families[f as usize];
                if fam.kind != kind {
                    if warned != f {
                        log::warn!(
                            "{}: family {:?} is a {} in other files, its {} samples here are ignored",
                            path.display(),
                            fam.name,
                            fam.kind,
                            kind
                        );
                        warned = f;
                    }
                    continue;
                }
                if fam.keeps_pid() {
                    // Exact: fewer than 2^21 files of fewer than 2^32 entries.
                    let written = number as f64 * 4_294_967_296.0 + j as f64;
                    fam.per_pid
                        .entry((key, name.pid.as_str()))
                        .or_default()
                        .apply(fam.mode, value, timestamp, written);
                } else {
                    accs[key as usize].apply(fam.mode, value, timestamp, 0.0);
                }
            }
            files_read += 1;
        }
        drop(family_index);

        stages.lap("merge");
        // 5. Each family's series in order, on every core.
        let (family_of, accs) = (&family_of, &accs);
        let mut merged: Vec<MergedFamily> = families
            .into_par_iter()
            .enumerate()
            .map(|(f, mut fam)| {
                // Its keys with a value (and, for `all` gauges, processes), in key order.
                let f = f as u32;
                let mut keys: Vec<u32> =
                    Vec::with_capacity(family_of.iter().filter(|&&g| g == f).count());
                for (key, &g) in family_of.iter().enumerate() {
                    if g == f && accs[key].set {
                        keys.push(key as u32);
                    }
                }
                let plain = keys.len();
                let processes: Vec<(&str, Acc)> = std::mem::take(&mut fam.per_pid)
                    .into_iter()
                    .filter(|(_, acc)| acc.set)
                    .map(|((key, pid), acc)| {
                        keys.push(key);
                        (pid, acc)
                    })
                    .collect();
                let members = Members {
                    keys,
                    plain,
                    processes,
                    accs,
                };
                finish(fam, members, &decoded, &arenas)
            })
            .collect();
        merged.sort_by(|a, b| a.name.cmp(&b.name));
        stages.lap("finish");
        stages.keys = decoded.len();
        drop(decoded);
        Merged {
            arenas,
            stages,
            families: merged,
            bad,
            files_read,
        }
    }
}

/// The first bad key of a file, as a bad-file report.
fn check_keys(
    path: &Path,
    name: &FileName,
    keys: &KeyList,
    ids: &[u32],
    decoded: &Runs<Decoded>,
) -> Option<BadFile> {
    for (&local, &at) in keys.ids.iter().zip(&keys.offsets) {
        let at = at as usize;
        let d = &decoded[ids[local as usize]];
        let problem = match &d.error {
            Some(k) => Some((at + 4 + k.offset, format!("entry at offset {at}: {k}"))),
            None if name.kind == MetricType::Histogram && d.has_le && d.le.is_none() => Some((
                at + 4,
                format!("entry at offset {at}: `le` label is not a number"),
            )),
            None => None,
        };
        if let Some((offset, message)) = problem {
            return Some(BadFile {
                path: path.to_owned(),
                reason: BadFileReason::Corrupt,
                offset: Some(offset),
                message: format!("at offset {offset}: {message}"),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{parse_ident, sort_key};
    use proptest::prelude::*;

    fn labels() -> impl Strategy<Value = Vec<(String, String)>> {
        // Short strings over an alphabet with 0 bytes and near-0 bytes, where escaping matters.
        let s = "[\\x00\\x01ab\\xff]{0,3}";
        prop::collection::vec((s, s), 0..3)
    }

    proptest! {
        #[test]
        fn sort_key_orders_like_labels_then_name(
            a in labels(), an in "[\\x00a]{0,2}", b in labels(), bn in "[\\x00a]{0,2}"
        ) {
            let (ka, la) = sort_key(&a, &an);
            let (kb, lb) = sort_key(&b, &bn);
            prop_assert_eq!(ka.cmp(&kb), (&a, &an).cmp(&(&b, &bn)));
            // The labels' part alone compares as the labels do.
            prop_assert_eq!(ka[..la].cmp(&kb[..lb]), a.cmp(&b));
        }

        #[test]
        fn identities_give_back_their_labels_and_name(a in labels(), an in "[\\x00a]{0,2}") {
            let (mut ident, labels_end) = sort_key(&a, "");
            ident.push('\x01');
            ident.push_str(&an);
            let mut parsed = Vec::new();
            let got = parse_ident(&ident, labels_end, &mut parsed);
            let zeros = an.contains('\0') || a.iter().any(|(n, v)| n.contains('\0') || v.contains('\0'));
            if zeros {
                // Escaped 0 bytes: the caller reads the key instead.
                prop_assert_eq!(got, None);
            } else {
                prop_assert_eq!(got, Some(Some(an.as_str())));
                let want: Vec<(&str, &str)> = a.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                prop_assert_eq!(parsed, want);
            }
        }
    }
}
