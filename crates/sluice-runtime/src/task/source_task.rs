//! The loop of a source task: adaptive batching, event time, per-split watermarks,
//! barrier injection.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use arrow::array::{Array, RecordBatch, TimestampMillisecondArray};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, TimeUnit};
use sluice_types::{Batch, IngestTime, Result, SluiceError, Watermark, now_micros};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::checkpoint::{Notice, SourceControl, SubtaskSnapshot, TaskEvent};
use crate::operator::{OperatorContext, Timers};
use crate::source::{ReadResult, SourceReader};

use super::operator_task::{finish_checkpoints, next_notice};
use super::*;

/// How a source derives `_timestamp` from what its reader returns.
#[derive(Clone)]
pub(crate) enum EventTimeColumn {
    /// Column index in the reader's rows.
    Column(usize),
    /// An expression over the reader's rows (a computed column).
    Expr(Arc<dyn datafusion_physical_expr::PhysicalExpr>),
    /// Wall-clock time of ingestion.
    Ingestion,
    /// Wall-clock time of ingestion, and watermarks that follow the wall clock.
    ProcessingTime,
}

/// How often a processing-time source advances its watermark without rows.
pub(crate) const PROCESSING_TIME_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Everything a source task needs.
pub(crate) struct SourceTask {
    pub reader: Box<dyn SourceReader>,
    pub ctx: OperatorContext,
    pub event_time: EventTimeColumn,
    pub out_of_orderness_ms: i64,
    pub idle_timeout: Option<std::time::Duration>,
    pub max_rows: usize,
    pub linger: std::time::Duration,
    pub control: mpsc::Receiver<SourceControl>,
    /// The watermark reached before a restore: event time resumes from there.
    pub restored_watermark: Option<i64>,
    pub checkpoints: Option<TaskCheckpoints>,
}

impl SourceTask {
    /// The source's own state: where its splits stand and its watermark.
    pub(crate) fn snapshot(
        &self,
        clocks: &SplitClocks,
        positions: bool,
    ) -> Result<SubtaskSnapshot> {
        let positions = match positions {
            true => self
                .reader
                .positions()
                .map_err(|e| e.in_operator(&self.ctx.task.operator_name))?,
            false => Vec::new(),
        };
        let meta = match clocks.emitted {
            i64::MIN => serde_json::Value::Null,
            w => serde_json::json!({ "watermark": w }),
        };
        Ok(SubtaskSnapshot {
            node: self.ctx.task.operator_id,
            subtask: self.ctx.task.subtask,
            state: crate::state::OperatorState {
                keyed: Default::default(),
                meta,
            },
            timers: Timers::default(),
            positions,
        })
    }
}

/// Per-split event-time clocks of one source subtask. A split counts from its first
/// batch (an empty batch announces it) until it ends, as lazily assigned splits do in
/// Flink; a split without rows for the idle timeout does not hold back event time until
/// it has rows again.
pub(crate) struct SplitClocks {
    pub(crate) splits: std::collections::BTreeMap<usize, SplitClock>,
    pub(crate) bound: i64,
    pub(crate) idle_timeout: Option<std::time::Duration>,
    /// The largest event-time watermark emitted: the watermark never moves back.
    pub(crate) emitted: i64,
    /// The reader reports each split's watermark; rows do not move it.
    pub(crate) reported: bool,
    /// When the splits were last shown in the metrics.
    pub(crate) shown: Option<Instant>,
}

pub(crate) struct SplitClock {
    pub(crate) max_ts: i64,
    pub(crate) last_rows: Instant,
}

impl SplitClocks {
    pub(crate) fn new(bound: i64, idle_timeout: Option<std::time::Duration>) -> Self {
        Self {
            splits: Default::default(),
            bound,
            idle_timeout,
            emitted: i64::MIN,
            reported: false,
            shown: None,
        }
    }

    /// Clocks whose splits' watermarks the reader reports ([`ReadResult::Watermark`]).
    pub(crate) fn reported(idle_timeout: Option<std::time::Duration>) -> Self {
        Self {
            reported: true,
            ..Self::new(0, idle_timeout)
        }
    }

    /// Rows of `split` arrived, the largest event time among them `max_ts`.
    pub(crate) fn observe(&mut self, split: usize, max_ts: Option<i64>, now: Instant) {
        let reported = self.reported;
        let c = self.splits.entry(split).or_insert(SplitClock {
            max_ts: i64::MIN,
            last_rows: now,
        });
        c.last_rows = now;
        if let Some(t) = max_ts.filter(|_| !reported) {
            c.max_ts = c.max_ts.max(t);
        }
    }

    /// The reader reported `split`'s watermark (its rows from now on are later).
    pub(crate) fn report(&mut self, split: usize, watermark: i64, now: Instant) {
        let c = self.splits.entry(split).or_insert(SplitClock {
            max_ts: i64::MIN,
            last_rows: now,
        });
        c.max_ts = c.max_ts.max(watermark);
    }

    /// Each split's own watermark (splits that had rows or a reported watermark).
    pub(crate) fn split_watermarks(&self) -> Vec<(usize, i64)> {
        self.splits
            .keys()
            .filter_map(|&s| Some((s, self.split_watermark(s)?)))
            .collect()
    }

    /// Split `split`'s own watermark, once it had rows or a reported watermark.
    pub(crate) fn split_watermark(&self, split: usize) -> Option<i64> {
        let c = self.splits.get(&split)?;
        (c.max_ts != i64::MIN).then(|| c.max_ts.saturating_sub(self.bound))
    }

    /// The splits as the per-split view shows them (at most every half second).
    fn show(&mut self, src: &SourceTask, now: Instant) {
        if self
            .shown
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_millis(500))
        {
            return;
        }
        self.shown = Some(now);
        let states: Vec<crate::metrics::SplitState> = self
            .splits
            .iter()
            .map(|(&split, c)| crate::metrics::SplitState {
                split,
                name: src.reader.split_name(split),
                watermark_ms: self.split_watermark(split),
                idle: self.idle(c, now),
                last_rows_ms_ago: now.duration_since(c.last_rows).as_millis() as u64,
            })
            .collect();
        *src.ctx
            .metrics
            .splits
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = states;
    }

    /// `split` has no more rows.
    pub(crate) fn end(&mut self, split: usize) {
        self.splits.remove(&split);
    }

    pub(crate) fn idle(&self, c: &SplitClock, now: Instant) -> bool {
        self.idle_timeout.is_some_and(|t| c.last_rows + t <= now)
    }

    /// When the next active split turns idle (the watermark may then advance).
    pub(crate) fn next_idle_at(&self, now: Instant) -> Option<Instant> {
        let t = self.idle_timeout?;
        self.splits
            .values()
            .filter(|c| !self.idle(c, now))
            .map(|c| c.last_rows + t)
            .min()
    }

    /// The subtask's watermark now: the minimum over active splits (never below what was
    /// emitted), `Idle` when every split it reads is idle, `None` while nothing is known.
    pub(crate) fn watermark(&mut self, now: Instant) -> Option<Watermark> {
        let mut min: Option<i64> = None;
        let mut any_idle = false;
        for c in self.splits.values() {
            if self.idle(c, now) {
                any_idle = true;
            } else {
                min = Some(min.map_or(c.max_ts, |m| m.min(c.max_ts)));
            }
        }
        match min {
            Some(i64::MIN) => None,
            Some(m) => {
                self.emitted = self.emitted.max(m.saturating_sub(self.bound));
                Some(Watermark::EventTime(self.emitted))
            }
            None if any_idle => Some(Watermark::Idle),
            None => None,
        }
    }
}

pub(crate) struct Pending {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) rows: usize,
    pub(crate) first_us: u64,
    pub(crate) last_us: u64,
    pub(crate) since: Option<Instant>,
}

/// Runs a source task: adaptive batching (`max_rows` or `linger`), event time,
/// watermarks (bounded out-of-orderness), barrier injection, and a clean end.
pub(crate) async fn run_source_task(mut src: SourceTask, mut chain: Chain) -> Result<()> {
    chain.start().await?;
    let name = src.ctx.task.operator_name.clone();
    src.reader
        .open(&mut src.ctx)
        .await
        .map_err(|e| e.in_operator(&name))?;
    let mut pending = Pending {
        batches: Vec::new(),
        rows: 0,
        first_us: 0,
        last_us: 0,
        since: None,
    };
    let mut clocks = match src.reader.reports_watermarks() {
        true => SplitClocks::reported(src.idle_timeout),
        false => SplitClocks::new(src.out_of_orderness_ms, src.idle_timeout),
    };
    if let Some(w) = src.restored_watermark {
        clocks.emitted = w;
    }
    let mut cp = src.checkpoints.take();
    let mut last_wm: Option<Watermark> = None;
    let started = Instant::now();
    // Positions recorded at barriers, until their checkpoint completes.
    let mut recorded: std::collections::BTreeMap<u64, Vec<crate::checkpoint::SplitPosition>> =
        Default::default();
    loop {
        // A generator's read never waits, so without this the task would never give its
        // thread back: control messages (checkpoint barriers) would wait for the end of
        // input, and other tasks on the thread would starve. Yields once tokio's
        // cooperative budget is spent.
        tokio::task::consume_budget().await;
        let deadline = pending.since.map(|t| t + src.linger);
        let want = src.max_rows - pending.rows;
        // A split turning idle may let the watermark advance; a subtask that never had
        // rows is idle after the timeout.
        let processing_time = matches!(src.event_time, EventTimeColumn::ProcessingTime);
        let tick = processing_time.then(|| {
            let ms = PROCESSING_TIME_TICK.as_millis() as i64;
            (epoch_ms() / ms + 1) * ms
        });
        let idle_at = match (src.idle_timeout, last_wm) {
            _ if processing_time => None,
            (Some(_), Some(Watermark::Idle)) => None,
            (Some(t), None) if clocks.splits.is_empty() => Some(started + t),
            _ if pending.rows > 0 => None,
            _ => clocks.next_idle_at(Instant::now()),
        };
        let timer = chain.next_processing_timer();
        tokio::select! {
            biased;
            _ = sleep_until_epoch_ms(timer.unwrap_or(i64::MAX)), if timer.is_some() => {
                chain.fire_processing_timers(epoch_ms()).await?;
            }
            notice = next_notice(&mut cp) => {
                if let Notice::Committed(e) = notice {
                    chain.commit(e).await?;
                    // Positions of this checkpoint go to the reader; older ones are moot.
                    let positions = recorded.remove(&e);
                    recorded.retain(|&k, _| k > e);
                    if let Some(p) = positions {
                        src.reader.checkpoint_complete(&p).map_err(|err| err.in_operator(&name))?;
                    }
                }
            }
            ctrl = src.control.recv() => match ctrl {
                Some(SourceControl::Barrier(b)) => {
                    flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                    src.reader.split_watermarks(&clocks.split_watermarks());
                    let own = src.snapshot(&clocks, cp.is_some())?;
                    if cp.is_some() {
                        recorded.insert(b.epoch, own.positions.clone());
                    }
                    let mut snapshots = vec![own];
                    snapshots.extend(chain.barrier(b).await?);
                    if let Some(cp) = cp.as_mut() {
                        cp.send(TaskEvent::Ack { epoch: b.epoch, task: cp.task, snapshots, alignment_us: 0 });
                        if b.then_stop && cp.wait_for(b.epoch, &mut chain).await? {
                            // Stopped with a savepoint: nothing after the barrier is read.
                            src.reader.close(&mut src.ctx).await.map_err(|e| e.in_operator(&name))?;
                            return Ok(());
                        }
                    }
                }
                Some(SourceControl::Stop) | None => break,
            },
            _ = sleep_until_epoch_ms(tick.unwrap_or(i64::MAX)), if tick.is_some() => {
                // The wall clock moved: rows read so far go out, then the watermark.
                flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                emit_watermark(&mut src, &mut chain, &mut clocks, &mut last_wm).await?;
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
            }
            _ = sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                if clocks.splits.is_empty() {
                    last_wm = Some(Watermark::Idle);
                    src.ctx.metrics.watermark.store(i64::MIN, Relaxed);
                    chain.watermark(Watermark::Idle).await?;
                } else {
                    emit_watermark(&mut src, &mut chain, &mut clocks, &mut last_wm).await?;
                }
            }
            r = src.reader.read(want, &mut src.ctx) => {
                match r.map_err(|e| e.in_operator(&name))? {
                    ReadResult::Batch { split, rows: b } => {
                        let now = now_micros();
                        // An empty batch announces a split: it holds back event time from
                        // now on, until it has rows, idles or ends.
                        let t = match b.num_rows() {
                            0 => None,
                            _ => max_event_time(&src, &b, now)?,
                        };
                        clocks.observe(split, t, Instant::now());
                        if pending.since.is_none() {
                            pending.since = Some(Instant::now());
                            pending.first_us = now;
                        }
                        pending.last_us = now;
                        pending.rows += b.num_rows();
                        if b.num_rows() > 0 {
                            pending.batches.push(b);
                        }
                        if pending.rows >= src.max_rows {
                            flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                        }
                    }
                    ReadResult::Idle => {
                        flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                        if last_wm != Some(Watermark::Idle) && last_wm.is_some() {
                            last_wm = Some(Watermark::Idle);
                            chain.watermark(Watermark::Idle).await?;
                        }
                    }
                    ReadResult::SplitEnd(split) => {
                        // Rows read so far go out before the split stops holding back.
                        flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                        if let Some(w) = clocks.split_watermark(split) {
                            src.reader.split_watermarks(&[(split, w)]);
                        }
                        clocks.end(split);
                        emit_watermark(&mut src, &mut chain, &mut clocks, &mut last_wm).await?;
                    }
                    ReadResult::Watermark { split, watermark } => {
                        // Rows read so far are before it: they go out first.
                        flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                        clocks.report(split, watermark, Instant::now());
                        emit_watermark(&mut src, &mut chain, &mut clocks, &mut last_wm).await?;
                    }
                    ReadResult::End => break,
                }
            }
        }
    }
    flush(
        &mut src,
        &mut chain,
        &mut pending,
        &mut clocks,
        &mut last_wm,
    )
    .await?;
    // No more barriers: checkpoints from here on take this task's final state.
    src.control.close();
    let own = src.snapshot(&clocks, cp.is_some())?;
    let positions = own.positions.clone();
    let checkpointing = cp.is_some();
    chain.finish(last_wm).await?;
    finish_checkpoints(cp, &mut chain, vec![own]).await?;
    if checkpointing {
        src.reader
            .checkpoint_complete(&positions)
            .map_err(|e| e.in_operator(&name))?;
    }
    src.reader
        .close(&mut src.ctx)
        .await
        .map_err(|e| e.in_operator(&name))
}

pub(crate) async fn flush(
    src: &mut SourceTask,
    chain: &mut Chain,
    pending: &mut Pending,
    clocks: &mut SplitClocks,
    last_wm: &mut Option<Watermark>,
) -> Result<()> {
    if pending.batches.is_empty() {
        pending.since = None;
        pending.rows = 0;
        return Ok(());
    }
    let rows = if pending.batches.len() == 1 {
        pending.batches.pop().expect("invariant: one batch")
    } else {
        let schema = pending.batches[0].schema();
        let b = concat_batches(&schema, &pending.batches)?;
        pending.batches.clear();
        b
    };
    let ingest = IngestTime {
        min_us: pending.first_us,
        max_us: pending.last_us,
    };
    pending.rows = 0;
    pending.since = None;
    let Some(batch) = with_event_time(src, &rows, ingest)? else {
        return Ok(());
    };
    let n = batch.num_rows() as u64;
    src.ctx.metrics.records_out.fetch_add(n, Relaxed);
    let bytes = crate::metrics::batch_bytes(&batch);
    src.ctx.metrics.bytes_out.fetch_add(bytes, Relaxed);
    let metrics = Arc::clone(&src.ctx.metrics);
    let busy = metrics.busy();
    chain.process_measured(batch, bytes).await?;
    let r = emit_watermark(src, chain, clocks, last_wm).await;
    drop(busy);
    r
}

/// Emits the subtask's watermark if it advanced (or the subtask turned idle or active).
pub(crate) async fn emit_watermark(
    src: &mut SourceTask,
    chain: &mut Chain,
    clocks: &mut SplitClocks,
    last_wm: &mut Option<Watermark>,
) -> Result<()> {
    let wm = if matches!(src.event_time, EventTimeColumn::ProcessingTime) {
        // Rows already sent carry read times up to now; later rows come later.
        clocks.emitted = clocks.emitted.max(epoch_ms() - 1);
        Watermark::EventTime(clocks.emitted)
    } else {
        let now = Instant::now();
        clocks.show(src, now);
        match clocks.watermark(now) {
            Some(wm) => wm,
            None => return Ok(()),
        }
    };
    let changed = match (*last_wm, wm) {
        (Some(Watermark::EventTime(old)), Watermark::EventTime(new)) => new > old,
        (Some(Watermark::Idle), Watermark::Idle) => false,
        (None, Watermark::Idle) => false,
        _ => true,
    };
    if changed {
        *last_wm = Some(wm);
        src.ctx
            .metrics
            .watermark
            .store(wm.event_time().unwrap_or(i64::MIN), Relaxed);
        chain.watermark(wm).await?;
    }
    Ok(())
}

/// The largest event time among `rows` (nulls ignored; ingestion time: now).
pub(crate) fn max_event_time(
    src: &SourceTask,
    rows: &RecordBatch,
    now_us: u64,
) -> Result<Option<i64>> {
    match &src.event_time {
        EventTimeColumn::Ingestion | EventTimeColumn::ProcessingTime => {
            Ok(Some((now_us / 1000) as i64))
        }
        EventTimeColumn::Column(_) | EventTimeColumn::Expr(_) => {
            let col = event_time_values(&src.event_time, rows)?;
            let ms = match col.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, None) => col,
                _ => cast(&col, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
            };
            let ms = ms
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .ok_or_else(|| SluiceError::internal("event time is not Timestamp(ms)"))?;
            Ok(arrow::compute::max(ms))
        }
    }
}

/// The event-time column (or computed value) of a reader's rows, before conversion.
pub(crate) fn event_time_values(
    et: &EventTimeColumn,
    rows: &RecordBatch,
) -> Result<arrow::array::ArrayRef> {
    match et {
        EventTimeColumn::Column(i) => Ok(std::sync::Arc::clone(rows.column(*i))),
        EventTimeColumn::Expr(e) => e
            .evaluate(rows)
            .and_then(|v| v.into_array(rows.num_rows()))
            .map_err(|e| SluiceError::user("computing the event time failed").with_source(e)),
        EventTimeColumn::Ingestion | EventTimeColumn::ProcessingTime => {
            Err(SluiceError::internal("no event-time column"))
        }
    }
}

/// Appends `_timestamp`; rows whose event time is null go to the dead-letter output.
pub(crate) fn with_event_time(
    src: &SourceTask,
    rows: &RecordBatch,
    ingest: IngestTime,
) -> Result<Option<Batch>> {
    let n = rows.num_rows();
    let ts: TimestampMillisecondArray = match &src.event_time {
        EventTimeColumn::Ingestion | EventTimeColumn::ProcessingTime => {
            TimestampMillisecondArray::from_value((ingest.max_us / 1000) as i64, n)
        }
        et @ (EventTimeColumn::Column(_) | EventTimeColumn::Expr(_)) => {
            let col = event_time_values(et, rows)?;
            let ms = match col.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, None) => col,
                DataType::Timestamp(_, _) | DataType::Int64 | DataType::Date64 => {
                    cast(&col, &DataType::Timestamp(TimeUnit::Millisecond, None))?
                }
                other => {
                    return Err(SluiceError::internal(format!(
                        "event-time column has type {other}, checked at planning"
                    )));
                }
            };
            let ms = ms
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .expect("invariant: cast to Timestamp(ms)")
                .clone();
            if ms.null_count() > 0 {
                return dead_letter_null_times(src, rows, &ms, ingest);
            }
            ms
        }
    };
    Ok(Some(Batch::from_user_columns(rows, ts, ingest)?))
}

pub(crate) fn dead_letter_null_times(
    src: &SourceTask,
    rows: &RecordBatch,
    ts: &TimestampMillisecondArray,
    ingest: IngestTime,
) -> Result<Option<Batch>> {
    let valid = arrow::compute::is_not_null(ts)?;
    let invalid = arrow::compute::not(&valid)?;
    let bad = arrow::compute::filter_record_batch(rows, &invalid)?;
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&bad)?;
        w.finish()?;
    }
    for line in String::from_utf8_lossy(&buf).lines() {
        src.ctx.dead_letter(crate::dead_letter::DeadLetter {
            position: src.ctx.task.operator_name.clone(),
            error: "event-time column is null".into(),
            raw: line.to_string(),
        });
    }
    let good = arrow::compute::filter_record_batch(rows, &valid)?;
    if good.num_rows() == 0 {
        return Ok(None);
    }
    let good_ts = arrow::compute::filter(ts, &valid)?;
    let good_ts = good_ts
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .expect("invariant: filter keeps the type")
        .clone();
    Ok(Some(Batch::from_user_columns(&good, good_ts, ingest)?))
}

#[cfg(test)]
mod split_clock_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    pub(crate) fn minimum_over_splits_never_backwards_ended_splits_release() {
        let now = Instant::now();
        let mut c = SplitClocks::new(10, None);
        assert_eq!(c.watermark(now), None, "nothing read yet");
        c.observe(0, Some(1_000), now);
        c.observe(1, Some(300), now);
        assert_eq!(c.watermark(now), Some(Watermark::EventTime(290)));
        // A split seen later, behind the others: holds back, but never moves backwards.
        c.observe(2, Some(100), now);
        assert_eq!(c.watermark(now), Some(Watermark::EventTime(290)));
        c.end(1);
        c.end(2);
        assert_eq!(c.watermark(now), Some(Watermark::EventTime(990)));
    }

    #[test]
    pub(crate) fn an_idle_split_stops_holding_back_until_it_has_rows_again() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(100);
        let mut c = SplitClocks::new(0, Some(timeout));
        c.observe(0, Some(5_000), t0);
        c.observe(1, Some(1_000), t0);
        let later = t0 + Duration::from_millis(60);
        c.observe(0, Some(6_000), later);
        assert_eq!(c.watermark(later), Some(Watermark::EventTime(1_000)));
        assert_eq!(
            c.next_idle_at(later),
            Some(t0 + timeout),
            "split 1 turns idle first"
        );
        let after = t0 + Duration::from_millis(120);
        assert_eq!(c.watermark(after), Some(Watermark::EventTime(6_000)));
        let all_idle = t0 + Duration::from_millis(200);
        assert_eq!(c.watermark(all_idle), Some(Watermark::Idle));
        c.observe(1, Some(2_000), all_idle);
        assert_eq!(
            c.watermark(all_idle),
            Some(Watermark::EventTime(6_000)),
            "active again, never backwards"
        );
    }
}
