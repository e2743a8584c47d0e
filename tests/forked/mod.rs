//! Forked children for the multi-process tests: a child runs a closure under `catch_unwind`,
//! reports a failure through a pipe and leaves with `_exit`, never returning into the test
//! harness; the parent waits with a deadline and kills a child that hangs. Also a few `u64`s
//! shared with children through an anonymous shared mapping.
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicU64;
use std::thread;
use std::time::{Duration, Instant};

/// Fails the enclosing `Result<(), String>` function with a message naming the line.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("line {}: {}", line!(), format!($($msg)+)));
        }
    };
}

/// A forked child process, killed and reaped on drop if the test did not wait for it.
pub struct Forked {
    pid: libc::pid_t,
    /// Read end of the pipe the child writes its failure message to.
    messages: libc::c_int,
    reaped: bool,
}

/// Forks a child that runs `work` and exits: 0 on `Ok`, 1 on `Err` (the message goes to the
/// parent through a pipe), 2 on a panic. The child never returns from this function.
pub fn fork_child(work: impl FnOnce() -> Result<(), String>) -> Forked {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: the child only runs `work` and then `_exit`s, never returning into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(fds[0]) };
        let (code, message) = match catch_unwind(AssertUnwindSafe(work)) {
            Ok(Ok(())) => (0, String::new()),
            Ok(Err(m)) => (1, m),
            Err(payload) => (2, panic_text(payload.as_ref())),
        };
        // At most what a pipe holds without blocking.
        let bytes = &message.as_bytes()[..message.len().min(4096)];
        // SAFETY: writing a valid buffer, then leaving without running any destructor or
        // atexit handler of the harness.
        unsafe {
            libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
            libc::_exit(code)
        }
    }
    // SAFETY: closing the parent's copy of the write end; the read end becomes non-blocking so
    // that a write end inherited by another test's child can never block the read.
    unsafe {
        libc::close(fds[1]);
        libc::fcntl(fds[0], libc::F_SETFL, libc::O_NONBLOCK);
    }
    Forked {
        pid,
        messages: fds[0],
        reaped: false,
    }
}

pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned());
    format!("panicked: {text}")
}

impl Forked {
    /// The child's outcome if it has exited (it is then reaped): `Ok` for exit status 0.
    pub fn try_wait(&mut self) -> Option<Result<(), String>> {
        let mut status = 0;
        // SAFETY: waiting for our own child only.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r == 0 {
            return None;
        }
        assert_eq!(r, self.pid, "waitpid: {}", std::io::Error::last_os_error());
        self.reaped = true;
        let message = self.message();
        Some(
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(())
            } else if libc::WIFEXITED(status) {
                Err(format!(
                    "child {} exited with {}: {message}",
                    self.pid,
                    libc::WEXITSTATUS(status)
                ))
            } else {
                Err(format!(
                    "child {} killed by signal {}",
                    self.pid,
                    libc::WTERMSIG(status)
                ))
            },
        )
    }

    /// Waits for the child until `timeout`, then kills it. `Ok` when it exited with status 0.
    pub fn wait(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(outcome) = self.try_wait() {
                return outcome;
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "child {} still running after {timeout:?} (deadlocked?); killed",
                    self.pid
                ));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn kill(&mut self) {
        if !self.reaped {
            let mut status = 0;
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut status, 0);
            }
            self.reaped = true;
        }
    }

    pub fn message(&self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a buffer we own from our non-blocking read end.
            let n = unsafe { libc::read(self.messages, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        self.kill();
        // SAFETY: closing the read end we own.
        unsafe { libc::close(self.messages) };
    }
}

/// A few `u64`s shared with forked children (an anonymous shared mapping).
pub struct Shared {
    ptr: *mut AtomicU64,
    len: usize,
}

// SAFETY: the memory is only accessed through atomics.
unsafe impl Sync for Shared {}
// SAFETY: as above.
unsafe impl Send for Shared {}

impl Shared {
    pub fn new(len: usize) -> Shared {
        // SAFETY: a fresh anonymous mapping, zero-filled, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        Shared {
            ptr: ptr.cast(),
            len,
        }
    }

    pub fn at(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.len);
        // SAFETY: in bounds, 8-byte aligned (page-aligned start), zero-initialised.
        unsafe { &*self.ptr.add(i) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len * 8) };
    }
}

pub fn getpid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() as u32 }
}
