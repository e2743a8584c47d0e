//! The operating-system layer, and the only module with unsafe code: files mapped into memory,
//! atomic `f64` slots inside them, and fork detection.
//!
//! # Invariants
//!
//! - A [`MappedFile`] maps a fixed, large range of address space once ([`RESERVED`] bytes) over its
//!   file, and the file grows underneath by `posix_fallocate`, which allocates disk blocks first,
//!   so a full disk is an `ENOSPC` error and never a `SIGBUS`. The mapping never moves, so slots
//!   handed out stay valid while their [`Slot`] (which holds the file) lives. Nothing here ever
//!   touches a byte at or beyond the allocated length, and files are never shrunk.
//! - A slot is 16 bytes at an 8-byte aligned offset: the value, then the timestamp, each an `f64`
//!   read and written only through `AtomicU64` on its bit pattern.
//! - After `fork()`, a `pthread_atfork` child handler bumps [`generation`]: handles compare one
//!   relaxed load with the generation they were resolved in, and re-resolve in the child's own
//!   files when it changed, so a child never writes into its parent's files.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

/// Address space reserved for each file: the largest size `used` (an `i32`) can describe.
pub(crate) const RESERVED: usize = 1 << 31;

/// A file mapped read-write and shared, growable without moving.
#[derive(Debug)]
pub(crate) struct MappedFile {
    file: File,
    map: MmapRaw,
    /// Bytes of the file allocated on disk and safe to touch.
    len: AtomicUsize,
}

impl MappedFile {
    /// Opens (creating it if needed) and maps `path`, allocating at least `min_len` bytes.
    pub(crate) fn open(path: &Path, min_len: usize) -> io::Result<MappedFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let current = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        if current > RESERVED {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than 2 GiB", path.display()),
            ));
        }
        // The mapping is larger than the file, which is allowed; only the first `len` bytes
        // (allocated on disk) are ever touched, so no access can fault with SIGBUS. The mapping
        // lives as long as `self`, and every pointer into it is tied to an `Arc<MappedFile>`
        // (see `Slot`).
        let map = MmapOptions::new().len(RESERVED).map_raw(&file)?;
        let mapped = MappedFile {
            file,
            map,
            len: AtomicUsize::new(current),
        };
        if current < min_len {
            mapped.allocate(min_len)?;
        }
        Ok(mapped)
    }

    /// The bytes safe to touch.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Grows the file to `new_len` bytes, allocating its disk blocks first.
    ///
    /// Callers serialize growth (the writer's append lock).
    pub(crate) fn allocate(&self, new_len: usize) -> io::Result<()> {
        if new_len > RESERVED {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "multiprocess file would grow past 2 GiB",
            ));
        }
        let len = libc::off_t::try_from(new_len).map_err(io::Error::other)?;
        // SAFETY: plain system call on a file descriptor we own.
        let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, len) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        self.len.fetch_max(new_len, Ordering::AcqRel);
        Ok(())
    }

    /// Writes `bytes` at `offset`, beyond the bytes in use, where no slot has been handed out.
    pub(crate) fn write_at(&self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(bytes.len()).filter(|&e| e <= self.len());
        if end.is_none() {
            return Err(io::Error::other("write past the allocated file"));
        }
        // SAFETY: the range is inside the allocated part of the mapping (checked above), and
        // no reference or slot covers it yet: entries are appended past `used` only.
        unsafe {
            ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// Publishes the `used` header, after the entries it covers are written.
    pub(crate) fn publish_used(&self, used: i32) {
        // SAFETY: offset 0 is 8-byte aligned (page aligned) and inside the file (at least 8
        // bytes are allocated before any entry is written); the header is only ever accessed
        // atomically by this process.
        let header = unsafe { AtomicI32::from_ptr(self.map.as_mut_ptr().cast::<i32>()) };
        header.store(used, Ordering::Release);
    }

    /// The 16-byte slot at `value_offset`.
    pub(crate) fn slot(self: &Arc<Self>, value_offset: usize) -> io::Result<Slot> {
        let in_bounds = value_offset
            .checked_add(16)
            .is_some_and(|end| end <= self.len());
        if !value_offset.is_multiple_of(8) || !in_bounds {
            return Err(io::Error::other(format!(
                "slot at offset {value_offset} is misaligned or outside the file"
            )));
        }
        // SAFETY: in bounds of the allocated file and 8-byte aligned (checked above).
        let value = unsafe { self.map.as_mut_ptr().add(value_offset) }.cast::<AtomicU64>();
        Ok(Slot {
            value,
            _owner: Owner::File(Arc::clone(self)),
        })
    }
}

/// A value and its timestamp: 16 bytes inside a mapped file, or on the heap for a series whose
/// file could not be written (so that counting goes on in memory, see `Slot::detached`).
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    value: *const AtomicU64,
    /// Keeps the memory alive as long as the slot.
    _owner: Owner,
}

#[derive(Debug, Clone)]
enum Owner {
    File(#[allow(dead_code)] Arc<MappedFile>),
    Heap(#[allow(dead_code)] Arc<[AtomicU64; 2]>),
}

// SAFETY: the pointer targets memory accessed only through atomics, and the memory it points
// into is kept alive by `_owner`.
unsafe impl Send for Slot {}
// SAFETY: as above; `&Slot` only gives out `&AtomicU64`.
unsafe impl Sync for Slot {}

impl Slot {
    /// A slot in process memory only, starting at `value`.
    pub(crate) fn detached(value: f64) -> Slot {
        let heap = Arc::new([AtomicU64::new(value.to_bits()), AtomicU64::new(0)]);
        Slot {
            value: heap.as_ptr(),
            _owner: Owner::Heap(heap),
        }
    }

    /// The value's bits.
    #[inline]
    pub(crate) fn value(&self) -> &AtomicU64 {
        // SAFETY: checked aligned and in bounds when the slot was made; the memory outlives
        // `self` through `_owner`.
        unsafe { &*self.value }
    }

    /// The timestamp's bits.
    #[inline]
    pub(crate) fn timestamp(&self) -> &AtomicU64 {
        // SAFETY: as for `value`; the timestamp is the next 8 bytes of the 16-byte slot.
        unsafe { &*self.value.add(1) }
    }
}

/// One value per fork generation: a handle's slot, or a registry's open files.
///
/// [`get`](GenCell::get) answers with one relaxed load of the generation and one of the head
/// pointer. A stale value (from before a fork) is never used again but stays allocated until
/// the cell drops, so references handed out never dangle; no lock is involved, so a lock held by
/// another thread at the moment of `fork()` cannot deadlock the child.
pub(crate) struct GenCell<T> {
    head: AtomicPtr<Node<T>>,
}

struct Node<T> {
    generation: u64,
    value: T,
    prev: *mut Node<T>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for GenCell<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenCell")
            .field("current", &self.get())
            .finish()
    }
}

impl<T> GenCell<T> {
    /// A cell holding `value` for the current generation.
    pub(crate) fn new(value: T) -> GenCell<T> {
        let node = Box::new(Node {
            generation: init_fork_detection(),
            value,
            prev: ptr::null_mut(),
        });
        GenCell {
            head: AtomicPtr::new(Box::into_raw(node)),
        }
    }

    /// The value, if it belongs to the current generation.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // SAFETY: `head` always points to a live node: nodes are freed only in `drop`.
        let node = unsafe { &*self.head.load(Ordering::Acquire) };
        (node.generation == generation()).then_some(&node.value)
    }

    /// The value of the current generation, made by `make` if there is none yet.
    pub(crate) fn get_or_try_insert_with<E>(
        &self,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<&T, E> {
        if let Some(v) = self.get() {
            return Ok(v);
        }
        let generation = generation();
        let node = Box::into_raw(Box::new(Node {
            generation,
            value: make()?,
            prev: ptr::null_mut(),
        }));
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            // SAFETY: `head` is live (see `get`).
            let current = unsafe { &*head };
            if current.generation == generation {
                // Another thread of this generation won the race: use its value.
                // SAFETY: `node` came from `Box::into_raw` above and was never shared.
                drop(unsafe { Box::from_raw(node) });
                return Ok(&current.value);
            }
            // SAFETY: `node` is ours until the exchange below publishes it.
            unsafe { (*node).prev = head };
            match self
                .head
                .compare_exchange(head, node, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: published; lives until `drop`.
                Ok(_) => return Ok(unsafe { &(*node).value }),
                Err(actual) => head = actual,
            }
        }
    }
}

impl<T> Drop for GenCell<T> {
    fn drop(&mut self) {
        let mut node = *self.head.get_mut();
        while !node.is_null() {
            // SAFETY: every node came from `Box::into_raw` and is reachable once, from `head`.
            let boxed = unsafe { Box::from_raw(node) };
            node = boxed.prev;
        }
    }
}

// SAFETY: the cell owns its nodes; sending it sends the `T`s.
unsafe impl<T: Send> Send for GenCell<T> {}
// SAFETY: shared access hands out `&T` and publishes nodes with release/acquire ordering.
unsafe impl<T: Send + Sync> Sync for GenCell<T> {}

static GENERATION: AtomicU64 = AtomicU64::new(0);
static PID: AtomicU32 = AtomicU32::new(0);
/// Whether the fork handler is installed: `INSTALLED`, or `INSTALLING` with the installing
/// process's id in the high 32 bits, or 0.
static ATFORK: AtomicU64 = AtomicU64::new(0);
const INSTALLING: u64 = 1;
const INSTALLED: u64 = 2;

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: atomics and getpid only.
    GENERATION.fetch_add(1, Ordering::Relaxed);
    // SAFETY: getpid has no preconditions.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
}

/// Installs the fork handler (once per process) and returns the current generation.
#[inline]
pub(crate) fn init_fork_detection() -> u64 {
    if ATFORK.load(Ordering::Acquire) != INSTALLED {
        install_fork_handler();
    }
    generation()
}

/// Installs the handler, or waits for the thread installing it. Not a `std::sync::Once`: a
/// process forked while another of its threads was inside `call_once` would wait forever in the
/// child, where that thread does not exist. Here the child sees that the installer was another
/// process, and installs the handler itself (a handler registered twice only counts forks twice).
#[cold]
fn install_fork_handler() {
    install_once(&ATFORK, std::process::id(), || {
        PID.store(std::process::id(), Ordering::Relaxed);
        // SAFETY: registers a handler that only touches atomics and calls getpid.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        if rc != 0 {
            log::error!(
                "pthread_atfork failed ({rc}): forked children may write into their parent's \
                 files"
            );
        }
    });
}

/// Runs `install` once per process `me` (see [`install_fork_handler`]): unless `state` says it
/// is done; waiting while another thread of this process runs it; taking over from a thread of
/// another process (the parent this one was forked from).
fn install_once(state: &AtomicU64, me: u32, install: impl FnOnce()) {
    let me = u64::from(me);
    let mut seen = 0;
    loop {
        match state.compare_exchange(
            seen,
            me << 32 | INSTALLING,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => break,
            Err(INSTALLED) => return,
            Err(other) if other >> 32 != me => seen = other,
            Err(_) => {
                std::thread::yield_now();
                seen = 0;
            }
        }
    }
    install();
    state.store(INSTALLED, Ordering::Release);
}

/// How many forks this process descends from since the handler was installed.
#[inline]
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// The current process id, kept up to date across forks without a system call.
pub(crate) fn pid() -> u32 {
    init_fork_detection();
    PID.load(Ordering::Relaxed)
}

fn byte_lock(kind: libc::c_short, byte: i64) -> libc::flock {
    // SAFETY: `flock` is plain old data; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte as libc::off_t;
    lock.l_len = 1;
    lock
}

/// Takes a POSIX record lock (`fcntl(F_SETLK)`) on one byte of the file (locks may lie past
/// its end): held by this process only (a forked child does not inherit it) and released by the
/// kernel when the process dies, `SIGKILL` included. `Ok(false)` when another process holds it.
///
/// Beware the POSIX rule: closing any descriptor of the file in this process releases the lock,
/// so the liveness layer keeps one descriptor per lock file and never opens it again.
pub(crate) fn try_record_lock(file: &File, byte: i64) -> io::Result<bool> {
    let lock = byte_lock(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: fcntl with F_SETLK and a valid `flock` pointer on a descriptor we own.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Whether another process holds a record lock on one byte of the file (`fcntl(F_GETLK)`).
pub(crate) fn record_lock_held(file: &File, byte: i64) -> io::Result<bool> {
    let mut lock = byte_lock(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: fcntl with F_GETLK and a valid, writable `flock` pointer.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

/// Clock ticks per second, the unit of CPU times in `/proc/PID/stat`.
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The memory page size, the unit of sizes in `/proc/PID/statm`.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// A lock-free, append-only list that never frees its entries: for process-wide tables that
/// must stay usable in a forked child (a mutex held by another thread at `fork()` would stay
/// locked in the child forever).
pub(crate) struct AppendList<T> {
    head: AtomicPtr<ListNode<T>>,
}

struct ListNode<T> {
    value: T,
    next: *mut ListNode<T>,
}

impl<T> AppendList<T> {
    pub(crate) const fn new() -> AppendList<T> {
        AppendList {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The entries, newest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        let mut node = self.head.load(Ordering::Acquire);
        std::iter::from_fn(move || {
            if node.is_null() {
                return None;
            }
            // SAFETY: nodes are published with release ordering and never freed while `self`
            // lives (the lists are statics or outlive every reader).
            let n = unsafe { &*node };
            node = n.next;
            Some(&n.value)
        })
    }

    /// Adds an entry.
    pub(crate) fn push(&self, value: T) -> &T {
        let node = Box::into_raw(Box::new(ListNode {
            value,
            next: ptr::null_mut(),
        }));
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            // SAFETY: `node` is ours until the exchange publishes it.
            unsafe { (*node).next = head };
            match self
                .head
                .compare_exchange(head, node, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: published and never freed while `self` lives.
                Ok(_) => return unsafe { &(*node).value },
                Err(actual) => head = actual,
            }
        }
    }

    /// The oldest entry matching `pred`, or a new one made by `make`. When two threads race to
    /// add matching entries, both get the older one.
    pub(crate) fn find_or_push(&self, pred: impl Fn(&T) -> bool, make: impl FnOnce() -> T) -> &T {
        if let Some(v) = self.iter().filter(|v| pred(v)).last() {
            return v;
        }
        let pushed = self.push(make());
        self.iter().filter(|v| pred(v)).last().unwrap_or(pushed)
    }
}

impl<T> Drop for AppendList<T> {
    fn drop(&mut self) {
        let mut node = *self.head.get_mut();
        while !node.is_null() {
            // SAFETY: every node came from `Box::into_raw` and is reachable once.
            let boxed = unsafe { Box::from_raw(node) };
            node = boxed.next;
        }
    }
}

// SAFETY: the list owns its entries; shared access only hands out `&T`.
unsafe impl<T: Send> Send for AppendList<T> {}
// SAFETY: entries are published with release/acquire ordering and never mutated.
unsafe impl<T: Send + Sync> Sync for AppendList<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn install_once_runs_once_and_takes_over_from_a_parent_process() {
        let runs = AtomicUsize::new(0);
        let run = || {
            runs.fetch_add(1, Ordering::SeqCst);
        };
        // Fresh: installs; then never again.
        let state = AtomicU64::new(0);
        install_once(&state, 10, run);
        install_once(&state, 10, run);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(state.load(Ordering::SeqCst), INSTALLED);

        // Left half-done by process 9 (forked from while one of its threads installed): process
        // 10 installs instead of waiting forever.
        let state = AtomicU64::new(9 << 32 | INSTALLING);
        install_once(&state, 10, run);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(state.load(Ordering::SeqCst), INSTALLED);
    }

    #[test]
    fn install_once_waits_for_another_thread_of_the_same_process() {
        let state = AtomicU64::new(10 << 32 | INSTALLING);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                state.store(INSTALLED, Ordering::Release);
            });
            let mut ran = false;
            install_once(&state, 10, || ran = true);
            assert!(!ran, "installed twice in one process");
            assert_eq!(state.load(Ordering::SeqCst), INSTALLED);
        });
    }
}
