//! Idle-state retention over event time (Flink's `table.exec.state.ttl`): a key not
//! written for the TTL is forgotten. The rule and its sweep schedule live here; each
//! keyed operator keeps its keys' last-write times next to its own state and asks these
//! two when to sweep and what to drop.
//!
//! ```text
//!  watermark ──> Sweeps::due(t, every)?  (at most every tenth of the interval)
//!                  └─ for each key: Ttl::expired(last, t)?  → the operator drops it
//! ```

/// A key's last write when it is not known (state restored from a checkpoint taken
/// without a TTL): the first sweep stamps it, so it lives one TTL from there.
pub(crate) const UNKNOWN_WRITE: i64 = i64::MAX;

/// When a keyed operator last swept its state for keys it may forget (a state TTL, a
/// frame no row can see): a sweep visits every key, so it runs at most every tenth of
/// the interval, in event time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sweeps {
    at: i64,
}

impl Default for Sweeps {
    fn default() -> Self {
        Self { at: i64::MIN }
    }
}

impl Sweeps {
    /// Whether a sweep is due at `watermark` (never at the end of input); records it.
    pub(crate) fn due(&mut self, watermark: i64, interval: i64) -> bool {
        if watermark == i64::MAX || watermark.saturating_sub(self.at) < (interval / 10).max(1) {
            return false;
        }
        self.at = watermark;
        true
    }
}

/// A state TTL in milliseconds of event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ttl {
    ms: i64,
}

impl Ttl {
    /// The TTL an operator was planned with, if any.
    pub(crate) fn of(ms: Option<i64>) -> Option<Self> {
        ms.map(|ms| Self { ms: ms.max(0) })
    }

    /// Milliseconds.
    pub(crate) fn ms(self) -> i64 {
        self.ms
    }

    /// Whether a key last written at `last` is forgotten at watermark `now`; an unknown
    /// time ([`UNKNOWN_WRITE`]) is stamped `now` first.
    pub(crate) fn expired(self, last: &mut i64, now: i64) -> bool {
        if *last == UNKNOWN_WRITE {
            *last = now;
        }
        self.expired_at(*last, now)
    }

    /// Whether a write at `written` has expired at `now`: one TTL later, as Flink's
    /// state TTL has it (`written + ttl <= now`).
    pub(crate) fn expired_at(self, written: i64, now: i64) -> bool {
        written.saturating_add(self.ms) <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_one_ttl_after_their_last_write_and_unknown_ones_from_the_first_sweep() {
        let ttl = Ttl::of(Some(100)).unwrap();
        let mut last = 1_000;
        assert!(!ttl.expired(&mut last, 1_099));
        assert!(ttl.expired(&mut last, 1_100));
        let mut unknown = UNKNOWN_WRITE;
        assert!(!ttl.expired(&mut unknown, 5_000));
        assert_eq!(unknown, 5_000);
        assert!(ttl.expired(&mut unknown, 5_100));
    }

    #[test]
    fn sweeps_run_at_most_every_tenth_of_the_interval_and_never_at_the_end() {
        let mut s = Sweeps::default();
        assert!(s.due(0, 1_000));
        assert!(!s.due(99, 1_000));
        assert!(s.due(100, 1_000));
        assert!(!s.due(i64::MAX, 1_000));
    }
}
