//! The inputs of an operator task: per-input watermarks, idleness, barrier alignment.

use std::future::poll_fn;
use std::task::Poll;

use sluice_types::{CheckpointBarrier, Message, Watermark};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The inputs of an operator task: one channel per upstream subtask.
pub(crate) struct Inputs {
    pub(crate) receivers: Vec<mpsc::Receiver<Message>>,
    /// Which input edge of the head operator each receiver belongs to.
    pub(crate) input_of: Vec<usize>,
    pub(crate) watermarks: Vec<Option<Watermark>>,
    /// Largest event-time watermark each input reached (kept while it is idle).
    pub(crate) last_time: Vec<Option<i64>>,
    pub(crate) ended: Vec<bool>,
    pub(crate) blocked: Vec<bool>,
    /// Inputs that delivered the pending barrier.
    pub(crate) seen: Vec<bool>,
    /// Block inputs that delivered the barrier until all did (exactly-once).
    pub(crate) align: bool,
    pub(crate) pending_barrier: Option<CheckpointBarrier>,
    pub(crate) barrier_since: Option<Instant>,
    pub(crate) next: usize,
    pub(crate) live: usize,
    pub(crate) merged: Option<Watermark>,
    /// The largest event time forwarded.
    pub(crate) emitted_time: i64,
    /// Inputs whose upstream sent a stop-with-savepoint barrier (they may close early).
    pub(crate) stopping: Vec<bool>,
    /// An upstream task went away without ending its stream: it failed or was cancelled.
    pub(crate) upstream_gone: bool,
}

impl Inputs {
    #[cfg(test)]
    pub fn new(receivers: Vec<mpsc::Receiver<Message>>, align: bool) -> Self {
        let n = receivers.len();
        Self::with_inputs(receivers, vec![0; n], align)
    }

    /// Receivers with the input edge each belongs to.
    pub fn with_inputs(
        receivers: Vec<mpsc::Receiver<Message>>,
        input_of: Vec<usize>,
        align: bool,
    ) -> Self {
        let n = receivers.len();
        Self {
            receivers,
            input_of,
            watermarks: vec![None; n],
            last_time: vec![None; n],
            ended: vec![false; n],
            blocked: vec![false; n],
            seen: vec![false; n],
            align,
            pending_barrier: None,
            barrier_since: None,
            next: 0,
            live: n,
            merged: None,
            emitted_time: i64::MIN,
            stopping: vec![false; n],
            upstream_gone: false,
        }
    }

    /// The next message from any live, unblocked input; `None` once all inputs ended,
    /// or once an upstream task went away without ending its stream (`upstream_gone`):
    /// its input did not end, so nothing may be flushed as if it had.
    pub(crate) async fn next(&mut self) -> Option<(usize, Message)> {
        if self.live == 0 || self.upstream_gone {
            return None;
        }
        poll_fn(|cx| {
            let n = self.receivers.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.ended[i] || self.blocked[i] {
                    continue;
                }
                match self.receivers[i].poll_recv(cx) {
                    Poll::Ready(Some(m)) => {
                        self.next = (i + 1) % n;
                        return Poll::Ready(Some((i, m)));
                    }
                    // Closed after a stop-with-savepoint barrier: that input is done.
                    Poll::Ready(None) if self.stopping[i] => {
                        return Poll::Ready(Some((i, Message::EndOfData)));
                    }
                    // The sender went away without EndOfData: its task failed or was
                    // cancelled; the job reports that task's error. Treating it as the
                    // end of the input would fire windows with part of their rows.
                    Poll::Ready(None) => {
                        self.upstream_gone = true;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    pub(crate) fn queued(&self) -> u64 {
        self.receivers.iter().map(|r| r.len() as u64).sum()
    }

    /// Records a watermark from input `i`.
    pub(crate) fn set_watermark(&mut self, i: usize, w: Watermark) {
        if let Watermark::EventTime(t) = w {
            self.last_time[i] = Some(self.last_time[i].map_or(t, |old: i64| old.max(t)));
        }
        self.watermarks[i] = Some(w);
    }

    /// The next merged watermark to forward, if any; call until `None`.
    ///
    /// The minimum over live, active inputs; ended inputs count as +∞; idle inputs do not
    /// hold it back. When every live input is idle, event time first advances to the
    /// largest watermark any of them reached (as Flink's watermark valve does), then the
    /// merged stream is idle. Event time never moves backwards.
    pub(crate) fn merge(&mut self) -> Option<Watermark> {
        let candidate = if self.live == 0 {
            Watermark::MAX
        } else {
            let mut min: Option<i64> = None;
            let mut max_idle: Option<i64> = None;
            for i in 0..self.watermarks.len() {
                if self.ended[i] {
                    continue;
                }
                match self.watermarks[i] {
                    None => return None,
                    Some(Watermark::Idle) => max_idle = max_idle.max(self.last_time[i]),
                    Some(Watermark::EventTime(t)) => min = Some(min.map_or(t, |m: i64| m.min(t))),
                }
            }
            match (min, max_idle) {
                (Some(t), _) => Watermark::EventTime(t),
                (None, Some(t)) if t > self.emitted_time => Watermark::EventTime(t),
                (None, _) => Watermark::Idle,
            }
        };
        let out = match candidate {
            Watermark::EventTime(t) if t > self.emitted_time => {
                self.emitted_time = t;
                Some(candidate)
            }
            // Active again after idleness, without new event time: say so.
            Watermark::EventTime(_) if self.merged == Some(Watermark::Idle) => {
                Some(Watermark::EventTime(self.emitted_time))
            }
            Watermark::EventTime(_) => None,
            Watermark::Idle => (self.merged != Some(Watermark::Idle)).then_some(Watermark::Idle),
        };
        if out.is_some() {
            self.merged = out;
        }
        out
    }

    pub(crate) fn end(&mut self, i: usize) {
        if !self.ended[i] {
            self.ended[i] = true;
            self.blocked[i] = false;
            self.seen[i] = false;
            self.live -= 1;
        }
    }

    /// Records a barrier on input i; returns it (with the time alignment took) once every
    /// live input delivered it. Aligned (exactly-once): an input that delivered the
    /// barrier is not read until then. Unaligned (at-least-once): it goes on.
    pub(crate) fn barrier(
        &mut self,
        i: usize,
        b: CheckpointBarrier,
    ) -> Option<(CheckpointBarrier, std::time::Duration)> {
        self.stopping[i] |= b.then_stop;
        match self.pending_barrier {
            // A barrier of a checkpoint already superseded (given up): ignore it.
            Some(p) if p.epoch > b.epoch => return None,
            Some(p) if p.epoch < b.epoch => self.release_barrier(),
            _ => {}
        }
        if self.pending_barrier.is_none() {
            self.barrier_since = Some(Instant::now());
        }
        self.seen[i] = true;
        self.blocked[i] = self.align;
        self.pending_barrier = Some(b);
        self.aligned()
    }

    pub(crate) fn aligned(&mut self) -> Option<(CheckpointBarrier, std::time::Duration)> {
        let b = self.pending_barrier?;
        let all = (0..self.seen.len()).all(|i| self.ended[i] || self.seen[i]);
        if !all {
            return None;
        }
        let took = self.barrier_since.map(|t| t.elapsed()).unwrap_or_default();
        self.release_barrier();
        Some((b, took))
    }

    /// Forgets the pending barrier and unblocks every input.
    pub(crate) fn release_barrier(&mut self) {
        self.blocked.iter_mut().for_each(|x| *x = false);
        self.seen.iter_mut().for_each(|x| *x = false);
        self.pending_barrier = None;
        self.barrier_since = None;
    }

    /// Checkpoint `epoch` was given up: stop waiting for its barrier.
    pub(crate) fn abort_barrier(&mut self, epoch: u64) {
        if self.pending_barrier.is_some_and(|p| p.epoch <= epoch) {
            self.release_barrier();
        }
    }
}
