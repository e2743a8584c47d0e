//! Which processes of a directory are alive, and cleaning up after the dead ones.
//!
//! Python needs the master to call `mark_process_dead(pid)` when a worker exits, or the
//! worker's `live*` gauges stay forever; a reused pid mixes two workers' data. This crate does
//! that (see [`mark_process_dead`]) and also knows by itself:
//!
//! - each process that records into a directory holds POSIX record locks on `live_{pid}.lock`
//!   (not `*.db`, so Python's collector never reads it). The kernel releases them when the
//!   process dies, `SIGKILL` included, and a forked child does not inherit them;
//! - two locks, on two bytes: a process that reuses a dead worker's pid first takes the *claim*
//!   lock (byte 0), removes the dead worker's `gauge_live*_{pid}.db` files, and only then takes
//!   the *ready* lock (byte 1). So a reused pid is told apart from the dead process without
//!   reading `/proc`, in any pid or time namespace;
//! - the collector leaves out `live*` gauge files whose ready lock is free (dead, or a
//!   successor still removing them). Files without a lock file (written by Python) keep
//!   Python's semantics: live until `mark_process_dead`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prometheus_multiproc_format::filename::{FileName, GaugeMode, MetricType};

use crate::os::{self, AppendList, GenCell};

/// The lock file of process `id` in `dir`.
pub fn lock_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("live_{id}.lock"))
}

/// Lock files this process holds, per fork generation (a child holds none of its parent's).
fn claims() -> &'static GenCell<Mutex<HashMap<PathBuf, File>>> {
    // An append-only list rather than a `OnceLock`: a process forked while another of its
    // threads was initializing a `OnceLock` would wait for that thread forever.
    static CLAIMS: AppendList<GenCell<Mutex<HashMap<PathBuf, File>>>> = AppendList::new();
    CLAIMS.find_or_push(|_| true, || GenCell::new(Mutex::new(HashMap::new())))
}

fn claimed() -> std::sync::MutexGuard<'static, HashMap<PathBuf, File>> {
    let cell = claims();
    let table = match cell
        .get_or_try_insert_with(|| Ok::<_, std::convert::Infallible>(Mutex::new(HashMap::new())))
    {
        Ok(t) => t,
        Err(never) => match never {},
    };
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// Byte of the lock file locked by a process that has claimed its id.
const CLAIM_BYTE: i64 = 0;
/// Byte of the lock file locked once the claimer removed its predecessor's live gauges.
const READY_BYTE: i64 = 1;

/// Takes this process's liveness lock for process id `id` in `dir`, once per fork generation,
/// removing a dead predecessor's `live*` gauge files first. Without the lock (another live
/// process uses the same id, or locks are unsupported) liveness falls back to Python's rules.
pub(crate) fn claim(dir: &Path, id: u32) {
    let path = lock_path(dir, &id.to_string());
    let mut table = claimed();
    if table.contains_key(&path) {
        return;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            log::warn!(
                "cannot create {}: {e}; dead-process detection is off",
                path.display()
            );
            return;
        }
    };
    match os::try_record_lock(&file, CLAIM_BYTE) {
        Ok(true) => {}
        Ok(false) => {
            log::warn!(
                "{} is held by another live process with the same id {id}; dead-process detection is off for this one",
                path.display()
            );
            return;
        }
        Err(e) => {
            log::warn!(
                "cannot lock {}: {e}; dead-process detection is off",
                path.display()
            );
            return;
        }
    }
    // The lock was free: whoever had this id before is dead, and its live gauges with it.
    if let Err(e) = mark_process_dead(dir, &id.to_string()) {
        log::warn!("cannot remove stale live gauges of process {id}: {e}");
    }
    match os::try_record_lock(&file, READY_BYTE) {
        Ok(true) => {}
        Ok(false) => log::warn!("{}: ready lock held by another process", path.display()),
        Err(e) => log::warn!("cannot lock {}: {e}", path.display()),
    }
    // For people reading the directory: the real pid behind the id.
    let _ = file
        .set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
    // Kept open for the life of the process: closing any descriptor of it would drop the lock.
    table.insert(path, file);
}

/// Whether a process id of a directory is alive, as far as the directory tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its ready lock is held.
    Alive,
    /// Its ready lock is free (dead, or a successor cleaning up): its `live*` gauges are stale.
    Dead,
    /// No lock file: written by Python or by an older writer. Python's rule applies (alive
    /// until `mark_process_dead`).
    Unknown,
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
        })
    }
}

/// Whether process `id` (the pid part of its file names) of `dir` is alive.
pub fn liveness(dir: &Path, id: &str) -> Liveness {
    let path = lock_path(dir, id);
    if claimed().contains_key(&path) {
        return Liveness::Alive;
    }
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(_) => return Liveness::Unknown,
    };
    match os::record_lock_held(&file, READY_BYTE) {
        Ok(true) => Liveness::Alive,
        // Dead, or a successor with the same id still removing the dead one's live gauges.
        Ok(false) => Liveness::Dead,
        Err(e) => {
            log::debug!("cannot query {}: {e}", path.display());
            Liveness::Unknown
        }
    }
}

/// Removes process `pid`'s `gauge_live*_{pid}.db` files and nothing else, exactly as Python's
/// `prometheus_client.multiprocess.mark_process_dead` does. Returns how many were removed.
///
/// ```
/// use prometheus_multiproc::liveness::mark_process_dead;
///
/// let dir = tempfile::tempdir().unwrap();
/// for name in ["gauge_livesum_7.db", "gauge_all_7.db", "counter_7.db", "gauge_livesum_8.db"] {
///     std::fs::write(dir.path().join(name), b"").unwrap();
/// }
/// assert_eq!(mark_process_dead(dir.path(), "7").unwrap(), 1);
/// assert!(!dir.path().join("gauge_livesum_7.db").exists());
/// assert!(dir.path().join("gauge_all_7.db").exists());
/// assert!(dir.path().join("counter_7.db").exists());
/// ```
pub fn mark_process_dead(dir: &Path, pid: &str) -> io::Result<usize> {
    let mut removed = 0;
    for mode in GaugeMode::ALL.into_iter().filter(|m| m.is_live()) {
        let name = FileName {
            kind: MetricType::Gauge,
            mode: Some(mode),
            pid: pid.to_owned(),
        };
        match fs::remove_file(dir.join(name.to_string())) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Why [`prepare_dir`] refused or failed.
#[derive(Debug)]
pub enum PrepareError {
    /// The directory holds files that are not a multiprocess directory's: not wiped.
    Foreign(Vec<PathBuf>),
    /// Processes still hold locks in the directory: another server is using it.
    InUse(Vec<String>),
    /// An I/O error on this path.
    Io(PathBuf, io::Error),
}

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrepareError::Foreign(paths) => {
                write!(
                    f,
                    "refusing to wipe a directory holding files that are not metric files:"
                )?;
                for p in paths.iter().take(10) {
                    write!(f, " {}", p.display())?;
                }
                if paths.len() > 10 {
                    write!(f, " and {} more", paths.len() - 10)?;
                }
                write!(f, " (force to wipe anyway)")
            }
            PrepareError::InUse(ids) => write!(
                f,
                "directory is in use by live processes {} (force to wipe anyway)",
                ids.join(", ")
            ),
            PrepareError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for PrepareError {}

/// Whether a file name is one this crate or Python writes into a multiprocess directory.
fn is_metric_file(name: &str) -> bool {
    FileName::parse(name).is_ok()
        || (name.starts_with("live_") && name.ends_with(".lock"))
        || name.starts_with(".prometheus-multiproc-probe-")
        || name.contains(".db.corrupt-")
}

/// Prepares a directory for a fresh start of a multi-process server, as Python's docs ask the
/// master to do before forking: creates it if missing, then removes the files of the previous
/// run. Refuses a directory holding other files, or one that live processes still use, unless
/// `force` is set (which removes other files too, but never subdirectories).
///
/// ```
/// use prometheus_multiproc::liveness::prepare_dir;
///
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("counter_1.db"), b"old").unwrap();
/// prepare_dir(dir.path(), false).unwrap();
/// assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
///
/// std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
/// assert!(prepare_dir(dir.path(), false).is_err());
/// assert!(dir.path().join("notes.txt").exists());
/// ```
pub fn prepare_dir(dir: &Path, force: bool) -> Result<(), PrepareError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |e| PrepareError::Io(p, e)
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut ours = Vec::new();
    let mut foreign = Vec::new();
    let mut live = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| !t.is_dir()).unwrap_or(false);
        if is_file && is_metric_file(&name) {
            if let Some(id) = name
                .strip_prefix("live_")
                .and_then(|n| n.strip_suffix(".lock"))
            {
                if liveness(dir, id) == Liveness::Alive {
                    live.push(id.to_owned());
                }
            }
            ours.push(path);
        } else {
            foreign.push(path);
        }
    }
    if !force {
        if !foreign.is_empty() {
            foreign.sort();
            return Err(PrepareError::Foreign(foreign));
        }
        if !live.is_empty() {
            live.sort();
            return Err(PrepareError::InUse(live));
        }
    }
    // Subdirectories are never removed, even when forced.
    let forced = foreign.iter().filter(|p| force && !p.is_dir());
    for path in ours.iter().chain(forced) {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PrepareError::Io(path.clone(), e)),
        }
    }
    Ok(())
}
