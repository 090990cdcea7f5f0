use crate::Batch;

/// What flows on every channel between subtasks: data and control, in band.
#[derive(Clone, Debug)]
pub enum Message {
    /// Rows.
    Data(Batch),
    /// Event time has advanced: no row with a smaller event time will follow.
    Watermark(Watermark),
    /// A checkpoint barrier (Chandy–Lamport marker).
    Barrier(CheckpointBarrier),
    /// The sender has no more data; it will send nothing after this.
    EndOfData,
}

/// An event-time watermark, or the statement that an input is idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watermark {
    /// No row with an event time (ms) at or below this value will follow.
    EventTime(i64),
    /// The input has no data for now; it does not hold back downstream event time.
    Idle,
}

impl Watermark {
    /// The final watermark: every window fires.
    pub const MAX: Watermark = Watermark::EventTime(i64::MAX);

    /// The event time, if not idle.
    pub fn event_time(self) -> Option<i64> {
        match self {
            Watermark::EventTime(t) => Some(t),
            Watermark::Idle => None,
        }
    }
}

/// Whether a barrier is for a periodic checkpoint or a user-requested savepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Periodic, owned by the system, garbage-collected.
    Checkpoint,
    /// Requested by a user, kept until deleted.
    Savepoint,
}

/// A checkpoint barrier, injected at sources and aligned by the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointBarrier {
    /// Monotonic checkpoint id.
    pub epoch: u64,
    /// When the coordinator triggered it (µs since the epoch).
    pub triggered_at_us: u64,
    /// Checkpoint or savepoint.
    pub kind: CheckpointKind,
    /// Stop the job once this checkpoint completes (stop-with-savepoint).
    pub then_stop: bool,
}
