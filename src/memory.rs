//! Giving freed heap memory back to the system. glibc only; elsewhere these do nothing.
//!
//! glibc's malloc gives threads that allocate at the same time arenas of their own (up to
//! eight per core) and keeps what is freed inside them. A reader thread per connection
//! allocates the message bodies that the router and the store writer free later, so after a
//! load the master kept most of its peak: 131 MiB after the comparison's mixed load, with
//! 32 MiB of bodies allowed in memory (BENCHMARKS.md). Two measures:
//! - `limit_arenas`, called by `main` before any thread starts, caps the arenas at `ARENAS`;
//! - `spawn_trimmer` starts the `memory-trim` thread, which calls `malloc_trim` every
//!   `TRIM_PERIOD` while the broker runs: it returns the free pages inside the arenas, not only
//!   at their tops. It holds one arena's lock at a time.
//!
//! Calls nothing else in the broker.

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// Arenas at most: one for the main thread, one more for all the others.
const ARENAS: i32 = 2;
/// How often freed memory is returned.
const TRIM_PERIOD: Duration = Duration::from_secs(2);

/// Cap glibc's arenas at `ARENAS`. Call it before starting threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; no thread allocates concurrently yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Return the free pages of every arena to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim locks each arena itself; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The running `memory-trim` thread; `stop` ends it at once.
pub struct Trimmer {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

/// Start the thread that calls `trim` every `TRIM_PERIOD` until stopped.
pub fn spawn_trimmer() -> std::io::Result<Trimmer> {
    let (stop, stopped) = bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name("memory-trim".to_string())
        .spawn(move || {
            // At once too: the master starts after a recovery, whose rows are freed by now.
            trim();
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TRIM_PERIOD) {
                trim();
            }
        })?;
    Ok(Trimmer { stop, thread })
}

impl Trimmer {
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
