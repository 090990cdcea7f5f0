//! Rate limiting for generators.

use std::time::Duration;

use tokio::time::Instant;

/// Paces a generator to `rate` items per second of wall-clock time.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    start: Option<Instant>,
    emitted: u64,
}

impl Pacer {
    /// A pacer for `rate` items per second (`rate > 0`).
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            start: None,
            emitted: 0,
        }
    }

    /// Waits until the next item is due, then returns how many are due now (at least 1).
    /// Cancel-safe: dropping the future changes nothing.
    pub async fn due(&mut self) -> u64 {
        let start = *self.start.get_or_insert_with(Instant::now);
        let next_ns = ((self.emitted + 1) as f64 * 1e9 / self.rate).ceil() as u64;
        tokio::time::sleep_until(start + Duration::from_nanos(next_ns)).await;
        let due = (start.elapsed().as_nanos() as f64 * self.rate / 1e9) as u64;
        // After the sleep item `emitted + 1` is due even if float rounding says otherwise.
        due.max(self.emitted + 1) - self.emitted
    }

    /// Records that `n` items were produced.
    pub fn emitted(&mut self, n: u64) {
        self.emitted += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_and_always_makes_progress() {
        let mut p = Pacer::new(1000.0);
        let t0 = Instant::now();
        let mut total = 0;
        while total < 5_000 {
            let n = p.due().await;
            assert!(n >= 1);
            let n = n.min(7);
            p.emitted(n);
            total += n;
        }
        // Virtual time: advanced only by the pacer's sleeps.
        let secs = t0.elapsed().as_secs_f64();
        assert!((4.9..=5.1).contains(&secs), "{secs}");
    }
}
