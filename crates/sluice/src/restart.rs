//! Restart strategies (Flink's `restart-strategy.type`): what to do when a job fails.
//! Every restart restores from the latest completed checkpoint. Pure logic over the
//! times it is given, so the timings are unit tested without a clock.
//!
//! ```text
//!  none              fail at once
//!  fixed-delay       up to N restarts, D apart
//!  exponential-delay D, D·m, D·m², … capped at MAX, ± jitter; back to D after a
//!                    stable run of RESET; optionally at most N restarts
//!  failure-rate      restart after D unless more than N failures fell within INTERVAL
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use sluice_types::{Result, SluiceError};

/// How a failed job is restarted.
#[derive(Clone, Debug, PartialEq)]
pub enum RestartStrategy {
    /// A failure fails the job.
    None,
    /// At most `attempts` restarts, `delay` apart.
    FixedDelay {
        /// Restarts allowed over the job's life.
        attempts: usize,
        /// Wait before each.
        delay: Duration,
    },
    /// Growing delays: `initial`, then times `multiplier`, at most `max`, each moved by
    /// up to ± `jitter` (a fraction); back to `initial` after a run of `reset_after`
    /// without failure.
    ExponentialDelay {
        /// The first delay.
        initial: Duration,
        /// The largest delay.
        max: Duration,
        /// Growth per failure.
        multiplier: f64,
        /// Fraction of random spread, 0 to 1.
        jitter: f64,
        /// A run this long without failure resets the delay.
        reset_after: Duration,
        /// Restarts allowed over the job's life (`None`: no limit).
        attempts: Option<usize>,
    },
    /// Restarts after `delay` while at most `max_failures` failures fall within any
    /// `interval`.
    FailureRate {
        /// Failures allowed per interval.
        max_failures: usize,
        /// The sliding interval.
        interval: Duration,
        /// Wait before each restart.
        delay: Duration,
    },
}

impl RestartStrategy {
    /// Checks the numbers (at start-up, not at the first failure).
    pub fn validate(&self) -> Result<()> {
        match self {
            RestartStrategy::ExponentialDelay {
                initial,
                max,
                multiplier,
                jitter,
                ..
            } => {
                if *multiplier < 1.0 || !multiplier.is_finite() {
                    return Err(SluiceError::user(format!(
                        "the restart multiplier must be at least 1, not {multiplier}"
                    )));
                }
                if !(0.0..=1.0).contains(jitter) {
                    return Err(SluiceError::user(format!(
                        "the restart jitter is a fraction from 0 to 1, not {jitter}"
                    )));
                }
                if max < initial {
                    return Err(SluiceError::user(format!(
                        "the largest restart delay ({max:?}) is below the first ({initial:?})"
                    )));
                }
                Ok(())
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                ..
            } if *max_failures == 0 || interval.is_zero() => Err(SluiceError::user(
                "the failure-rate strategy needs at least one failure per non-zero interval",
            )),
            _ => Ok(()),
        }
    }
}

/// A restart strategy as settings give it, from the command line or the REST API
/// (durations in milliseconds): the one place the defaults live.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestartSpec {
    /// `none`, `fixed-delay`, `exponential-delay`, `failure-rate`; absent: fixed-delay
    /// when `attempts` is given, else none.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Restarts allowed (fixed-delay, 1 by default; exponential-delay when given).
    #[serde(default)]
    pub attempts: Option<usize>,
    /// Delay before a restart (the first, for exponential-delay); 1 000 by default.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// The largest exponential delay; 60 000 by default.
    #[serde(default)]
    pub max_delay_ms: Option<u64>,
    /// Growth per failure; 2 by default.
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Random spread (fraction); 0.1 by default.
    #[serde(default)]
    pub jitter: Option<f64>,
    /// A stable run this long resets the exponential delay; an hour by default.
    #[serde(default)]
    pub reset_after_ms: Option<u64>,
    /// Failures allowed per interval (failure-rate); 1 by default.
    #[serde(default)]
    pub max_failures: Option<usize>,
    /// The failure-rate interval; a minute by default.
    #[serde(default)]
    pub interval_ms: Option<u64>,
}

impl RestartSpec {
    /// The strategy these settings describe, checked.
    pub fn strategy(&self) -> Result<RestartStrategy> {
        use Duration as D;
        let delay = D::from_millis(self.delay_ms.unwrap_or(1000));
        let kind = match (&self.strategy, self.attempts) {
            (Some(k), _) => k.as_str(),
            (None, None | Some(0)) => "none",
            (None, Some(_)) => "fixed-delay",
        };
        let r = match kind {
            "none" => RestartStrategy::None,
            "fixed-delay" => RestartStrategy::FixedDelay {
                attempts: self.attempts.unwrap_or(1),
                delay,
            },
            "exponential-delay" => RestartStrategy::ExponentialDelay {
                initial: delay,
                max: D::from_millis(self.max_delay_ms.unwrap_or(60_000)),
                multiplier: self.multiplier.unwrap_or(2.0),
                jitter: self.jitter.unwrap_or(0.1),
                reset_after: D::from_millis(self.reset_after_ms.unwrap_or(3_600_000)),
                attempts: self.attempts.filter(|&a| a > 0),
            },
            "failure-rate" => RestartStrategy::FailureRate {
                max_failures: self.max_failures.unwrap_or(1),
                interval: D::from_millis(self.interval_ms.unwrap_or(60_000)),
                delay,
            },
            other => {
                return Err(SluiceError::user(format!(
                    "unknown restart strategy `{other}`; use none, fixed-delay, exponential-delay or failure-rate"
                )));
            }
        };
        r.validate()?;
        Ok(r)
    }
}

/// `d` times `factor`, saturating at the largest duration (any finite factor at least 1
/// is valid, and `Duration::mul_f64` panics past the largest).
fn scaled(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// Applies a strategy to a job's failures.
#[derive(Debug)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    restarts: usize,
    /// When failures happened (for failure-rate).
    failures: VecDeque<Duration>,
    /// The next exponential delay before jitter.
    backoff: Duration,
    seed: u64,
}

impl RestartTracker {
    /// A tracker for `strategy`; `seed` drives the jitter.
    pub fn new(strategy: RestartStrategy, seed: u64) -> Self {
        let backoff = match &strategy {
            RestartStrategy::ExponentialDelay { initial, .. } => *initial,
            _ => Duration::ZERO,
        };
        Self {
            strategy,
            restarts: 0,
            failures: VecDeque::new(),
            backoff,
            seed: seed | 1,
        }
    }

    /// Restarts so far.
    pub fn restarts(&self) -> usize {
        self.restarts
    }

    /// The job failed at `now` (time since the job first started) after its latest
    /// attempt ran for `ran`: how long to wait before restarting, or `None` to give up.
    pub fn on_failure(&mut self, now: Duration, ran: Duration) -> Option<Duration> {
        let delay = match &self.strategy {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => {
                (self.restarts < *attempts).then_some(*delay)
            }
            RestartStrategy::ExponentialDelay {
                initial,
                max,
                multiplier,
                jitter,
                reset_after,
                attempts,
            } => {
                if attempts.is_some_and(|a| self.restarts >= a) {
                    None
                } else {
                    if ran >= *reset_after {
                        self.backoff = *initial;
                    }
                    let base = self.backoff.min(*max);
                    self.backoff = scaled(base, *multiplier).min(*max);
                    // xorshift: a factor in [1 - jitter, 1 + jitter].
                    self.seed ^= self.seed << 13;
                    self.seed ^= self.seed >> 7;
                    self.seed ^= self.seed << 17;
                    let unit = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
                    Some(scaled(base, 1.0 + jitter * (2.0 * unit - 1.0)).min(*max))
                }
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => {
                self.failures.push_back(now);
                while self
                    .failures
                    .front()
                    .is_some_and(|&t| now.saturating_sub(t) > *interval)
                {
                    self.failures.pop_front();
                }
                (self.failures.len() <= *max_failures).then_some(*delay)
            }
        };
        if delay.is_some() {
            self.restarts += 1;
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_in_one_place() {
        let none = RestartSpec::default();
        assert_eq!(none.strategy().unwrap(), RestartStrategy::None);
        let attempts = RestartSpec {
            attempts: Some(3),
            ..Default::default()
        };
        assert_eq!(
            attempts.strategy().unwrap(),
            RestartStrategy::FixedDelay {
                attempts: 3,
                delay: Duration::from_secs(1)
            }
        );
        let exp = RestartSpec {
            strategy: Some("exponential-delay".into()),
            ..Default::default()
        };
        assert_eq!(
            exp.strategy().unwrap(),
            RestartStrategy::ExponentialDelay {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                multiplier: 2.0,
                jitter: 0.1,
                reset_after: Duration::from_secs(3600),
                attempts: None,
            }
        );
        let bad = RestartSpec {
            strategy: Some("sometimes".into()),
            ..Default::default()
        };
        assert!(
            bad.strategy()
                .unwrap_err()
                .to_string()
                .contains("unknown restart strategy")
        );
        let bad_jitter = RestartSpec {
            strategy: Some("exponential-delay".into()),
            jitter: Some(3.0),
            ..Default::default()
        };
        assert!(bad_jitter.strategy().is_err());
    }

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn none_gives_up_at_once_and_fixed_delay_after_n() {
        let mut t = RestartTracker::new(RestartStrategy::None, 1);
        assert_eq!(t.on_failure(s(1), s(1)), None);
        let mut t = RestartTracker::new(
            RestartStrategy::FixedDelay {
                attempts: 2,
                delay: s(3),
            },
            1,
        );
        assert_eq!(t.on_failure(s(1), s(1)), Some(s(3)));
        assert_eq!(t.on_failure(s(5), s(1)), Some(s(3)));
        assert_eq!(t.on_failure(s(9), s(1)), None);
        assert_eq!(t.restarts(), 2);
    }

    #[test]
    fn exponential_delays_grow_cap_and_reset_after_a_stable_run() {
        let mut t = RestartTracker::new(
            RestartStrategy::ExponentialDelay {
                initial: s(1),
                max: s(10),
                multiplier: 2.0,
                jitter: 0.0,
                reset_after: s(60),
                attempts: None,
            },
            7,
        );
        let delays: Vec<_> = (0..6).map(|i| t.on_failure(s(i), s(1)).unwrap()).collect();
        assert_eq!(delays, vec![s(1), s(2), s(4), s(8), s(10), s(10)]);
        // A run of a minute without failure: back to the first delay.
        assert_eq!(t.on_failure(s(100), s(61)), Some(s(1)));
        assert_eq!(t.on_failure(s(101), s(1)), Some(s(2)));
    }

    #[test]
    fn huge_multipliers_and_delays_saturate_at_the_largest_delay() {
        for (multiplier, max) in [
            (1e300, s(10)),
            (f64::MAX, Duration::MAX),
            (1e10, Duration::from_millis(u64::MAX)),
        ] {
            let mut t = RestartTracker::new(
                RestartStrategy::ExponentialDelay {
                    initial: Duration::from_millis(10),
                    max,
                    multiplier,
                    jitter: 1.0,
                    reset_after: Duration::MAX,
                    attempts: Some(5),
                },
                99,
            );
            for i in 0..5 {
                let d = t.on_failure(s(i), s(1)).unwrap();
                assert!(d <= max, "{multiplier}: {d:?}");
            }
            assert_eq!(t.on_failure(s(9), s(1)), None);
        }
        // Settings as the API takes them: accepted, and the first failure does not panic.
        let spec: RestartSpec = serde_json::from_str(
            r#"{"strategy": "exponential-delay", "multiplier": 1e300,
                "delay_ms": 18446744073709551615, "max_delay_ms": 18446744073709551615}"#,
        )
        .unwrap();
        let mut t = RestartTracker::new(spec.strategy().unwrap(), 3);
        assert!(t.on_failure(s(1), s(1)).is_some());
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_attempts_are_counted() {
        let mut t = RestartTracker::new(
            RestartStrategy::ExponentialDelay {
                initial: s(4),
                max: s(4),
                multiplier: 1.5,
                jitter: 0.25,
                reset_after: s(60),
                attempts: Some(50),
            },
            12345,
        );
        let mut distinct = std::collections::BTreeSet::new();
        for i in 0..50 {
            let d = t.on_failure(s(i), s(1)).unwrap();
            assert!(d >= s(3) && d <= s(4), "{d:?}");
            distinct.insert(d);
        }
        assert!(distinct.len() > 10, "jitter spreads the delays");
        assert_eq!(t.on_failure(s(99), s(1)), None);
    }

    #[test]
    fn failure_rate_gives_up_when_too_many_failures_fall_in_the_interval() {
        let mut t = RestartTracker::new(
            RestartStrategy::FailureRate {
                max_failures: 2,
                interval: s(60),
                delay: s(1),
            },
            1,
        );
        assert_eq!(t.on_failure(s(0), s(0)), Some(s(1)));
        assert_eq!(t.on_failure(s(30), s(29)), Some(s(1)));
        // The first failure left the window: two within 60 s again.
        assert_eq!(t.on_failure(s(61), s(30)), Some(s(1)));
        // Three within 60 s (30, 61, 70): give up.
        assert_eq!(t.on_failure(s(70), s(8)), None);
    }

    #[test]
    fn bad_numbers_fail_at_start_up() {
        let e = RestartStrategy::ExponentialDelay {
            initial: s(5),
            max: s(1),
            multiplier: 2.0,
            jitter: 0.1,
            reset_after: s(60),
            attempts: None,
        };
        assert!(e.validate().is_err());
        assert!(
            RestartStrategy::FailureRate {
                max_failures: 0,
                interval: s(1),
                delay: s(1)
            }
            .validate()
            .is_err()
        );
    }
}
