//! What a file name says: `counter_{pid}.db`, `gauge_{mode}_{pid}.db`, `histogram_{pid}.db`,
//! `summary_{pid}.db`.

use std::fmt;

/// The metric types that have multiprocess files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricType {
    /// `counter_{pid}.db`
    Counter,
    /// `gauge_{mode}_{pid}.db`
    Gauge,
    /// `histogram_{pid}.db`
    Histogram,
    /// `summary_{pid}.db`
    Summary,
}

impl MetricType {
    /// The name used in file names and in `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
        }
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the values of one gauge from several processes are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GaugeMode {
    /// Every process's value, with a `pid` label.
    All,
    /// As `All`, for live processes only.
    LiveAll,
    /// The smallest value.
    Min,
    /// The smallest value among live processes.
    LiveMin,
    /// The largest value.
    Max,
    /// The largest value among live processes.
    LiveMax,
    /// The sum.
    Sum,
    /// The sum over live processes.
    LiveSum,
    /// The value with the latest timestamp.
    MostRecent,
    /// The value with the latest timestamp among live processes.
    LiveMostRecent,
}

impl GaugeMode {
    /// Every mode, in the order Python documents them.
    pub const ALL: [GaugeMode; 10] = [
        GaugeMode::All,
        GaugeMode::LiveAll,
        GaugeMode::Min,
        GaugeMode::LiveMin,
        GaugeMode::Max,
        GaugeMode::LiveMax,
        GaugeMode::Sum,
        GaugeMode::LiveSum,
        GaugeMode::MostRecent,
        GaugeMode::LiveMostRecent,
    ];

    /// The mode's name as Python spells it (`livesum`).
    pub fn as_str(self) -> &'static str {
        match self {
            GaugeMode::All => "all",
            GaugeMode::LiveAll => "liveall",
            GaugeMode::Min => "min",
            GaugeMode::LiveMin => "livemin",
            GaugeMode::Max => "max",
            GaugeMode::LiveMax => "livemax",
            GaugeMode::Sum => "sum",
            GaugeMode::LiveSum => "livesum",
            GaugeMode::MostRecent => "mostrecent",
            GaugeMode::LiveMostRecent => "livemostrecent",
        }
    }

    /// Parses a mode name as Python spells it.
    pub fn parse(s: &str) -> Option<GaugeMode> {
        GaugeMode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether only live processes count (`live*` modes, whose files `mark_process_dead` removes).
    pub fn is_live(self) -> bool {
        self.as_str().starts_with("live")
    }

    /// Whether the merged samples keep a `pid` label (`all`, `liveall`).
    pub fn keeps_pid(self) -> bool {
        matches!(self, GaugeMode::All | GaugeMode::LiveAll)
    }

    /// Whether the gauge keeps the most recently set value (`inc`/`dec` are refused).
    pub fn is_most_recent(self) -> bool {
        matches!(self, GaugeMode::MostRecent | GaugeMode::LiveMostRecent)
    }
}

impl fmt::Display for GaugeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileName {
    /// The metric type.
    pub kind: MetricType,
    /// The gauge mode; `None` for other types.
    pub mode: Option<GaugeMode>,
    /// The process identifier part of the name (usually a decimal pid).
    pub pid: String,
}

impl FileName {
    /// The file name for a metric type, gauge mode and pid, as Python names it.
    ///
    /// ```
    /// use prometheus_multiproc_format::filename::{FileName, MetricType, GaugeMode};
    /// let f = FileName { kind: MetricType::Gauge, mode: Some(GaugeMode::LiveSum), pid: "42".into() };
    /// assert_eq!(f.to_string(), "gauge_livesum_42.db");
    /// assert_eq!(FileName::parse("gauge_livesum_42.db"), Ok(f));
    /// ```
    pub fn parse(name: &str) -> Result<FileName, FileNameError> {
        let stem = name.strip_suffix(".db").ok_or(FileNameError::NotDb)?;
        let mut parts = stem.split('_');
        let typ = parts.next().unwrap_or("");
        let kind = match typ {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "summary" => MetricType::Summary,
            _ => return Err(FileNameError::UnknownType(typ.to_owned())),
        };
        let mode = if kind == MetricType::Gauge {
            let m = parts.next().unwrap_or("");
            Some(GaugeMode::parse(m).ok_or_else(|| FileNameError::UnknownMode(m.to_owned()))?)
        } else {
            None
        };
        // Python takes the next part as the pid; a name with more parts is not one it writes.
        let pid = parts.next().unwrap_or("");
        if pid.is_empty() || parts.next().is_some() {
            return Err(FileNameError::BadPid);
        }
        Ok(FileName {
            kind,
            mode,
            pid: pid.to_owned(),
        })
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            Some(mode) => write!(f, "{}_{}_{}.db", self.kind, mode, self.pid),
            None => write!(f, "{}_{}.db", self.kind, self.pid),
        }
    }
}

/// Why a file name is not one of a multiprocess directory's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileNameError {
    /// It does not end in `.db`.
    NotDb,
    /// The part before the first `_` is not a metric type with multiprocess files.
    UnknownType(String),
    /// A gauge file with a mode Python does not have.
    UnknownMode(String),
    /// No process identifier, or extra `_` parts.
    BadPid,
}

impl fmt::Display for FileNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileNameError::NotDb => write!(f, "file name does not end in .db"),
            FileNameError::UnknownType(t) => write!(
                f,
                "unknown metric type {t:?} in file name (expected counter, gauge, histogram or summary)"
            ),
            FileNameError::UnknownMode(m) => write!(f, "unknown gauge mode {m:?} in file name"),
            FileNameError::BadPid => write!(f, "file name has no process id or extra '_' parts"),
        }
    }
}

impl std::error::Error for FileNameError {}
