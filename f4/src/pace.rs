//! [`Pace`]: holds a stream of work (bytes read, encoded, rebuilt or
//! scrubbed) to a rate, by waiting until the clock catches up with the
//! bytes taken so far.

use std::time::{Duration, Instant};

/// Idle time a pace may make up for by going faster than its rate.
const MAX_CREDIT: Duration = Duration::from_secs(1);

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

    /// How long to wait after `bytes` more, to hold the rate. Time spent
    /// idle earns at most [`MAX_CREDIT`] of bytes ahead of the rate, so a
    /// pace resumed after a pause does not burst.
    fn after(&mut self, bytes: u64) -> Option<Duration> {
        if self.bytes_per_second == 0 {
            return None;
        }
        let rate = self.bytes_per_second as f64;
        let elapsed = self.started.elapsed();
        let due = Duration::from_secs_f64(self.taken as f64 / rate);
        if elapsed > due + MAX_CREDIT {
            // Forget the idle time beyond the credit.
            let now = Instant::now();
            self.started = now.checked_sub(MAX_CREDIT).unwrap_or(now);
            self.taken = 0;
        }
        self.taken += bytes;
        let due = Duration::from_secs_f64(self.taken as f64 / rate);
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

    #[test]
    fn idle_time_earns_at_most_a_second_of_credit() {
        let mut pace = Pace::new(1000);
        pace.started -= Duration::from_secs(60);
        // A minute idle: a second's worth goes at once, the next waits.
        assert_eq!(pace.after(900), None);
        let wait = pace.after(1000).expect("past the credit");
        assert!(wait > Duration::from_millis(800), "{wait:?}");
    }
}
