//! Progress lines on stderr, at most one every two seconds per phase.

use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(2);

/// `bench: <label> 120000/200000 (60%), 34512/s`
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    last: Instant,
    last_done: u64,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Progress {
        Progress {
            label: label.to_owned(),
            total,
            last: Instant::now(),
            last_done: 0,
        }
    }

    /// Prints `done` and the rate since the last line, if the last line is two seconds old.
    pub fn update(&mut self, done: u64) {
        self.update_with(done, "");
    }

    /// [`update`](Self::update), with `extra` appended to the line.
    pub fn update_with(&mut self, done: u64, extra: &str) {
        let elapsed = self.last.elapsed();
        if elapsed < EVERY {
            return;
        }
        let rate = done.saturating_sub(self.last_done) as f64 / elapsed.as_secs_f64();
        let percent = done as f64 * 100.0 / self.total.max(1) as f64;
        eprintln!(
            "bench: {} {done}/{} ({percent:.0}%), {rate:.0}/s{extra}",
            self.label, self.total
        );
        self.last = Instant::now();
        self.last_done = done;
    }
}
