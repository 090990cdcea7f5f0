//! The checkpoint protocol as pure logic: when to trigger, which acknowledgements are
//! missing, when a checkpoint times out, when it is complete. No I/O and no clock of its
//! own (the caller passes `now`), so every rule is unit tested.
//!
//! ```text
//!   idle ──(interval elapsed, min pause since the last end, sources running)──> trigger(e)
//!   trigger(e) ──ack from every task (or its end)──> all acked ──(caller: state written, manifest)──> completed
//!        │                                                     └──(write failed)──> failed
//!        ├──a task declines / a source cannot take the barrier──> aborted
//!        └──timeout──> aborted
//!   one checkpoint at a time; a savepoint request is served next, interval or not
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sluice_types::CheckpointKind;

/// Timing of periodic checkpoints.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Time between triggers; `None`: only savepoints.
    pub interval: Option<Duration>,
    /// Abort a checkpoint not complete after this long.
    pub timeout: Duration,
    /// Least time from the end of one checkpoint to the start of the next.
    pub min_pause: Duration,
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Inject a barrier for checkpoint `epoch` at every source.
    Trigger {
        /// The checkpoint id.
        epoch: u64,
        /// Checkpoint or savepoint.
        kind: CheckpointKind,
        /// Stop the job once it completes.
        then_stop: bool,
    },
    /// Every task acknowledged `epoch`: write the manifest, then report
    /// [`Coordinator::completed`] or [`Coordinator::failed`].
    Finalize {
        /// The checkpoint id.
        epoch: u64,
    },
    /// Give up on `epoch`; tasks that wait on it resume.
    Abort {
        /// The checkpoint id.
        epoch: u64,
        /// Why.
        reason: String,
    },
}

#[derive(Debug)]
struct Pending {
    epoch: u64,
    kind: CheckpointKind,
    then_stop: bool,
    started: Instant,
    acked: BTreeSet<usize>,
    finalizing: bool,
}

/// The coordinator's state.
#[derive(Debug)]
pub struct Coordinator {
    timing: Timing,
    tasks: usize,
    next_epoch: u64,
    pending: Option<Pending>,
    /// When the last checkpoint ended (completed, failed or aborted), or the job started.
    last_end: Instant,
    /// A savepoint was asked for: `Some(then_stop)`.
    savepoint_request: Option<bool>,
    /// Every source ended: no barrier can be injected any more.
    sources_ended: bool,
    /// Tasks whose input ended: their final state stands in for their acknowledgement
    /// (checkpoints go on after some tasks finish, as in Flink).
    finished: BTreeSet<usize>,
}

impl Coordinator {
    /// A coordinator for a job of `tasks` tasks (acknowledging units), numbering
    /// checkpoints from `first_epoch`.
    pub fn new(timing: Timing, tasks: usize, first_epoch: u64, now: Instant) -> Self {
        Self {
            timing,
            tasks,
            next_epoch: first_epoch,
            pending: None,
            last_end: now,
            savepoint_request: None,
            sources_ended: false,
            finished: BTreeSet::new(),
        }
    }

    /// The id the next checkpoint will get.
    pub fn next_epoch(&self) -> u64 {
        self.next_epoch
    }

    /// The checkpoint in flight.
    pub fn pending_epoch(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.epoch)
    }

    /// When [`Coordinator::poll`] has something to do next, if ever (without new events).
    pub fn next_deadline(&self) -> Option<Instant> {
        if let Some(p) = &self.pending {
            return (!p.finalizing).then_some(p.started + self.timing.timeout);
        }
        if self.sources_ended {
            return None;
        }
        let pause_end = self.last_end + self.timing.min_pause;
        if self.savepoint_request.is_some() {
            return Some(pause_end);
        }
        let interval = self.timing.interval?;
        Some(pause_end.max(self.last_end + interval))
    }

    /// Time-driven transitions: trigger the next checkpoint, or abort one that timed out.
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        if let Some(p) = &self.pending {
            if !p.finalizing && now >= p.started + self.timing.timeout {
                let epoch = p.epoch;
                self.end(now);
                return Some(Action::Abort {
                    epoch,
                    reason: format!("timed out after {:?}", self.timing.timeout),
                });
            }
            return None;
        }
        if self.next_deadline().is_none_or(|d| now < d) {
            return None;
        }
        let (kind, then_stop) = match self.savepoint_request.take() {
            Some(stop) => (CheckpointKind::Savepoint, stop),
            None => (CheckpointKind::Checkpoint, false),
        };
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.pending = Some(Pending {
            epoch,
            kind,
            then_stop,
            started: now,
            acked: BTreeSet::new(),
            finalizing: false,
        });
        Some(Action::Trigger {
            epoch,
            kind,
            then_stop,
        })
    }

    /// Asks for a savepoint (taken as soon as no checkpoint is in flight).
    pub fn request_savepoint(&mut self, then_stop: bool) {
        self.savepoint_request = Some(then_stop || self.savepoint_request.unwrap_or(false));
    }

    /// Task `task` acknowledged `epoch` (its state is handed over).
    pub fn ack(&mut self, epoch: u64, task: usize) -> Option<Action> {
        let p = self.pending.as_mut().filter(|p| p.epoch == epoch)?;
        p.acked.insert(task);
        self.all_in()
    }

    /// Task `task` finished (its final state is handed over): it counts as having
    /// acknowledged this checkpoint and every later one.
    pub fn task_finished(&mut self, task: usize) -> Option<Action> {
        self.finished.insert(task);
        self.all_in()
    }

    /// Finalize the pending checkpoint if every task acknowledged it or finished.
    fn all_in(&mut self) -> Option<Action> {
        let p = self.pending.as_mut()?;
        let all = (0..self.tasks).all(|t| p.acked.contains(&t) || self.finished.contains(&t));
        if all && !p.finalizing {
            p.finalizing = true;
            return Some(Action::Finalize { epoch: p.epoch });
        }
        None
    }

    /// A task could not take part in `epoch` (a source had ended, a snapshot failed).
    pub fn decline(&mut self, epoch: u64, reason: &str, now: Instant) -> Option<Action> {
        self.pending.as_ref().filter(|p| p.epoch == epoch)?;
        self.end(now);
        Some(Action::Abort {
            epoch,
            reason: reason.to_string(),
        })
    }

    /// The manifest of `epoch` is written: it is complete. Returns its kind and whether
    /// the job stops now.
    pub fn completed(&mut self, epoch: u64, now: Instant) -> Option<(CheckpointKind, bool)> {
        let p = self.pending.as_ref().filter(|p| p.epoch == epoch)?;
        let r = (p.kind, p.then_stop);
        self.end(now);
        Some(r)
    }

    /// Writing `epoch` failed; the next one is tried after the usual pause.
    pub fn failed(&mut self, epoch: u64, now: Instant) -> Option<Action> {
        self.decline(epoch, "writing the checkpoint failed", now)
    }

    /// Every source ended: no more checkpoints can be taken; an in-flight one is left to
    /// its acknowledgements or its timeout.
    pub fn sources_ended(&mut self) {
        self.sources_ended = true;
    }

    fn end(&mut self, now: Instant) {
        self.pending = None;
        self.last_end = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(interval_ms: u64) -> Timing {
        Timing {
            interval: Some(Duration::from_millis(interval_ms)),
            timeout: Duration::from_millis(1_000),
            min_pause: Duration::from_millis(0),
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn triggers_on_the_interval_and_completes_when_every_task_acked() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(timing(100), 3, 1, t0);
        assert_eq!(c.poll(ms(t0, 50)), None);
        assert_eq!(c.next_deadline(), Some(ms(t0, 100)));
        assert_eq!(
            c.poll(ms(t0, 100)),
            Some(Action::Trigger {
                epoch: 1,
                kind: CheckpointKind::Checkpoint,
                then_stop: false
            })
        );
        assert_eq!(c.poll(ms(t0, 250)), None, "one checkpoint at a time");
        assert_eq!(c.ack(1, 0), None);
        assert_eq!(c.ack(1, 0), None, "a repeated ack counts once");
        assert_eq!(c.ack(2, 1), None, "an ack for another epoch is ignored");
        assert_eq!(c.ack(1, 2), None);
        assert_eq!(c.ack(1, 1), Some(Action::Finalize { epoch: 1 }));
        assert_eq!(
            c.poll(ms(t0, 5_000)),
            None,
            "no timeout while the manifest is written"
        );
        assert_eq!(
            c.completed(1, ms(t0, 300)),
            Some((CheckpointKind::Checkpoint, false))
        );
        assert_eq!(
            c.next_deadline(),
            Some(ms(t0, 400)),
            "interval from the end"
        );
        assert!(matches!(
            c.poll(ms(t0, 400)),
            Some(Action::Trigger { epoch: 2, .. })
        ));
    }

    #[test]
    fn times_out_and_the_late_acks_are_ignored() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(timing(100), 2, 7, t0);
        assert!(matches!(
            c.poll(ms(t0, 100)),
            Some(Action::Trigger { epoch: 7, .. })
        ));
        c.ack(7, 0);
        assert_eq!(c.next_deadline(), Some(ms(t0, 1_100)));
        assert!(matches!(
            c.poll(ms(t0, 1_100)),
            Some(Action::Abort { epoch: 7, .. })
        ));
        assert_eq!(c.ack(7, 1), None, "the aborted checkpoint cannot complete");
        assert_eq!(c.completed(7, ms(t0, 1_100)), None);
        assert!(matches!(
            c.poll(ms(t0, 1_200)),
            Some(Action::Trigger { epoch: 8, .. })
        ));
    }

    #[test]
    fn min_pause_separates_checkpoints() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(
            Timing {
                min_pause: Duration::from_millis(500),
                ..timing(100)
            },
            1,
            1,
            t0,
        );
        assert_eq!(c.poll(ms(t0, 100)), None, "the pause counts from the start");
        assert!(c.poll(ms(t0, 500)).is_some());
        c.ack(1, 0);
        c.completed(1, ms(t0, 900));
        assert_eq!(c.poll(ms(t0, 1_000)), None);
        assert!(c.poll(ms(t0, 1_400)).is_some());
    }

    #[test]
    fn decline_aborts_and_failure_frees_the_slot() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(timing(10), 2, 1, t0);
        c.poll(ms(t0, 10));
        assert!(matches!(
            c.decline(1, "source ended", ms(t0, 11)),
            Some(Action::Abort { epoch: 1, .. })
        ));
        assert_eq!(c.decline(1, "again", ms(t0, 12)), None);
        c.poll(ms(t0, 30));
        c.ack(2, 0);
        assert_eq!(c.ack(2, 1), Some(Action::Finalize { epoch: 2 }));
        assert!(matches!(
            c.failed(2, ms(t0, 40)),
            Some(Action::Abort { epoch: 2, .. })
        ));
        assert!(matches!(
            c.poll(ms(t0, 50)),
            Some(Action::Trigger { epoch: 3, .. })
        ));
    }

    #[test]
    fn savepoints_without_an_interval_and_stop_after_them() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(
            Timing {
                interval: None,
                ..timing(0)
            },
            1,
            1,
            t0,
        );
        assert_eq!(c.next_deadline(), None, "no periodic checkpoints");
        c.request_savepoint(true);
        assert_eq!(
            c.poll(ms(t0, 1)),
            Some(Action::Trigger {
                epoch: 1,
                kind: CheckpointKind::Savepoint,
                then_stop: true
            })
        );
        c.ack(1, 0);
        assert_eq!(
            c.completed(1, ms(t0, 2)),
            Some((CheckpointKind::Savepoint, true))
        );
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn finished_tasks_count_as_acknowledged_for_this_and_later_checkpoints() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(timing(10), 3, 1, t0);
        assert!(matches!(
            c.poll(ms(t0, 10)),
            Some(Action::Trigger { epoch: 1, .. })
        ));
        assert_eq!(c.ack(1, 0), None);
        assert_eq!(c.task_finished(2), None);
        assert_eq!(c.ack(1, 1), Some(Action::Finalize { epoch: 1 }));
        assert!(c.completed(1, ms(t0, 11)).is_some());
        // The next one needs only the tasks still running.
        assert!(matches!(
            c.poll(ms(t0, 30)),
            Some(Action::Trigger { epoch: 2, .. })
        ));
        assert_eq!(c.ack(2, 1), None);
        assert_eq!(c.task_finished(0), Some(Action::Finalize { epoch: 2 }));
    }

    #[test]
    fn no_triggers_once_every_source_ended() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(timing(10), 1, 1, t0);
        c.sources_ended();
        c.request_savepoint(false);
        assert_eq!(c.poll(ms(t0, 100)), None);
        assert_eq!(c.next_deadline(), None);
    }
}
