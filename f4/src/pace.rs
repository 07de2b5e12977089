//! [`Pace`]: holds a stream of work (bytes read, encoded, rebuilt or
//! scrubbed) to a rate, by waiting until the clock catches up with the
//! bytes taken so far.

use std::time::{Duration, Instant};

/// A byte rate held since the pace was made (0 bytes a second: no limit).
#[derive(Debug)]
pub struct Pace {
    bytes_per_second: u64,
    started: Instant,
    taken: u64,
}

impl Pace {
    /// A pace of `bytes_per_second`, starting now.
    pub fn new(bytes_per_second: u64) -> Pace {
        Pace {
            bytes_per_second,
            started: Instant::now(),
            taken: 0,
        }
    }

    /// How long to wait after `bytes` more, to hold the rate.
    fn after(&mut self, bytes: u64) -> Option<Duration> {
        self.taken += bytes;
        if self.bytes_per_second == 0 {
            return None;
        }
        let due = Duration::from_secs_f64(self.taken as f64 / self.bytes_per_second as f64);
        due.checked_sub(self.started.elapsed())
    }

    /// Counts `bytes` and waits as long as the rate asks.
    pub async fn take(&mut self, bytes: u64) {
        if let Some(wait) = self.after(bytes) {
            tokio::time::sleep(wait).await;
        }
    }

    /// [`Pace::take`] for a blocking thread.
    pub fn take_blocking(&mut self, bytes: u64) {
        if let Some(wait) = self.after(bytes) {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_waits_for_the_clock_and_no_limit_never_waits() {
        let mut free = Pace::new(0);
        assert_eq!(free.after(u64::MAX / 2), None);
        let mut pace = Pace::new(1000);
        let wait = pace.after(500).expect("half a second ahead");
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        let wait = pace.after(500).expect("a second ahead");
        assert!(wait > Duration::from_millis(900));
    }
}
