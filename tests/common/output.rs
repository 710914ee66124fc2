//! A child process's output lines, captured as they are written by a thread per stream, with
//! the time each was read, and waits on them that end as soon as the line comes.

use super::process::tail;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How many of the last lines a failed wait reports.
const TAIL_LINES: usize = 40;

/// The output lines of a process (stdout and stderr interleaved as read).
pub struct Output {
    name: String,
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputState {
    lines: Vec<String>,
    /// When each line of `lines` was read (same index).
    times: Vec<Instant>,
    open_streams: usize,
}

/// Why [`Output::try_wait_for_nth`] gave up, for the caller's panic message.
pub struct Missed {
    /// Every stream closed without the line; otherwise the timeout passed.
    pub closed: bool,
    /// The timeout that was given.
    pub timeout: Duration,
    /// The last lines at that moment, indented (see [`tail`]).
    pub tail: String,
}

impl Missed {
    /// `timed out after T`, or `closed` (what to say when every stream closed).
    pub fn why(&self, closed: &str) -> String {
        if self.closed {
            closed.to_string()
        } else {
            format!("timed out after {:?}", self.timeout)
        }
    }
}

impl Output {
    /// An empty output; `name` prefixes the lines echoed to the test's stderr.
    pub fn new(name: &str) -> Arc<Output> {
        Arc::new(Output {
            name: name.to_string(),
            state: Mutex::new(OutputState::default()),
            changed: Condvar::new(),
        })
    }

    /// Reads `stream` line by line into this output on a thread of its own, echoing each line
    /// to the test's stderr (shown when the test fails).
    pub fn capture(self: &Arc<Self>, stream: impl Read + Send + 'static) {
        self.lock().open_streams += 1;
        let output = Arc::clone(self);
        thread::Builder::new()
            .name(format!("{}-output", self.name))
            .spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    eprintln!("[{}] {line}", output.name);
                    let mut state = output.lock();
                    state.lines.push(line);
                    state.times.push(Instant::now());
                    drop(state);
                    output.changed.notify_all();
                    buf.clear();
                }
                output.lock().open_streams -= 1;
                output.changed.notify_all();
            })
            .expect("cannot start an output reader thread");
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lock()
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The last `n` lines, indented, for panic messages.
    pub fn tail(&self, n: usize) -> String {
        tail(&self.lock().lines, n)
    }

    /// The first line containing `needle` (see [`Output::wait_for_nth`]).
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_nth(needle, 1, timeout).0
    }

    /// Waits until `n` lines contain `needle`; returns the `n`-th such line and when it was
    /// read. Panics with the output's tail on timeout, or as soon as every stream has closed
    /// without it.
    pub fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) -> (String, Instant) {
        self.try_wait_for_nth(needle, n, timeout)
            .unwrap_or_else(|missed| {
                panic!(
                    "{}: {} waiting for line #{n} containing {needle:?}; last lines:\n{}",
                    self.name,
                    missed.why("its output closed"),
                    missed.tail
                )
            })
    }

    /// Like [`Output::wait_for_nth`], but returns why it gave up instead of panicking, for
    /// callers that say more in their panic message.
    pub fn try_wait_for_nth(
        &self,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<(String, Instant), Missed> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let found = state
                .lines
                .iter()
                .zip(&state.times)
                .filter(|(line, _)| line.contains(needle))
                .nth(n - 1);
            if let Some((line, time)) = found {
                return Ok((line.clone(), *time));
            }
            let now = Instant::now();
            if state.open_streams == 0 || now >= deadline {
                return Err(Missed {
                    closed: now < deadline,
                    timeout,
                    tail: tail(&state.lines, TAIL_LINES),
                });
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
