//! The Kafka reader over Sluice's own fetcher ([`super::super::fetcher`]): starting
//! it, reading what it fetched, and where a split goes on when the broker says its
//! offset is out of range.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::Consumer;
use sluice_runtime::{OperatorContext, ReadResult};
use sluice_types::{Result, SluiceError};

use super::super::client::Unsupported;
use super::super::fetcher::{Fetch, FetchOptions, NativeFetcher};
use super::super::source::{SourceConsumer, Startup};
use super::super::{METADATA_TIMEOUT, kafka_err};
use super::{KafkaReader, MessageView, TRANSIENT_WARN_EVERY};

/// How long a split out of range waits for the brokers to say where it goes on.
const OUT_OF_RANGE_PATIENCE: Duration = Duration::from_secs(60);

impl KafkaReader {
    /// Starts Sluice's own fetcher for the assigned partitions when it can serve them
    /// (plaintext, a broker of Kafka 2.4 or later).
    pub(super) async fn start_native(
        &mut self,
        starts: &[i64],
        ctx: &OperatorContext,
    ) -> Result<Option<NativeFetcher>> {
        let why = match FetchOptions::from_props(&self.config.props) {
            Ok(opts) => {
                let servers = self
                    .config
                    .props
                    .get("bootstrap.servers")
                    .map_or("", String::as_str);
                match NativeFetcher::start(servers, opts, &self.parts, starts).await? {
                    Ok(f) => return Ok(Some(f)),
                    Err(Unsupported(why)) => why,
                }
            }
            Err(Unsupported(why)) => why,
        };
        tracing::debug!(
            operator = %ctx.task.operator_name,
            subtask = ctx.task.subtask,
            reason = %why,
            "the Kafka source fetches through librdkafka"
        );
        Ok(None)
    }

    /// Reads what Sluice's fetcher has fetched: one partition's records (up to
    /// `max_rows`, already capped by the pace), waiting while there are none.
    pub(super) async fn read_native(
        &mut self,
        consumer: &Arc<SourceConsumer>,
        max_rows: usize,
        ctx: &mut OperatorContext,
    ) -> Result<ReadResult> {
        loop {
            while let Some(r) = consumer.recv().now_or_never() {
                self.consumer_event(r)?;
            }
            let Some(mut f) = self.fetcher.take() else {
                return Err(SluiceError::internal("the Kafka reader has no fetcher"));
            };
            let moved = f.events();
            let read = match &moved {
                Ok(o) if o.is_empty() => f.read(max_rows, |split, r| self.accept_fetched(split, r)),
                _ => Ok(None),
            };
            let wake = f.waker();
            self.fetcher = Some(f);
            for (split, asked) in moved? {
                let to = self.reset_offset(consumer, split, asked).await?;
                self.next[split] = to;
                if let Some(f) = self.fetcher.as_mut() {
                    f.seek(split, to);
                }
                self.check_end(split);
            }
            if let Some((split, after)) = read? {
                if let Some(o) = after
                    && o > self.next[split]
                {
                    self.next[split] = o;
                }
                self.check_end(split);
                if self.ended[split]
                    && let Some(f) = self.fetcher.as_mut()
                {
                    f.stop(split);
                }
                if let Some(p) = self.pacer.as_mut() {
                    p.emitted(self.decoder.len().max(1) as u64);
                }
                return self.finish_chunk(split, ctx);
            }
            if let Some(r) = self.queue.pop_front() {
                return Ok(r);
            }
            if self.config.bounded && self.ended.iter().all(|&e| e) {
                return Ok(ReadResult::End);
            }
            tokio::select! {
                _ = wake.notified() => {}
                r = consumer.recv() => self.consumer_event(r)?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// A fetched record into the chunk (unless it is before the split's position, in a
    /// batch that began earlier, or past its end).
    fn accept_fetched(&mut self, split: usize, f: Fetch<'_>) {
        let r = &f.record;
        if r.offset < self.next[split] || self.past_end(split, r.offset) {
            return;
        }
        let headers;
        let (timestamp, timestamp_type) = match (self.wants.timestamps, r.timestamp >= 0) {
            (true, true) if f.log_append_time => (Some(r.timestamp), "LogAppendTime"),
            (true, true) => (Some(r.timestamp), "CreateTime"),
            _ => (None, "NoTimestampType"),
        };
        let mut v = MessageView {
            offset: r.offset,
            timestamp,
            timestamp_type,
            key: r.key,
            payload: r.value,
            headers: None,
        };
        if self.wants.headers {
            headers = super::super::wire::headers(r).unwrap_or_default();
            v.headers = Some(&headers);
        }
        self.accept(split, &v);
    }

    /// Where a split whose offset `asked` the broker said is out of range goes on. A
    /// broker that has just come back may say so for a moment: an offset within the
    /// partition's range as asked again is read on. Otherwise
    /// `properties.auto.offset.reset` (earliest, latest or error) says, else the
    /// earliest offset (the latest for `'scan.startup.mode' = 'latest-offset'`). While
    /// the brokers cannot say (they are away), the split waits, for up to a minute.
    async fn reset_offset(
        &mut self,
        consumer: &Arc<SourceConsumer>,
        split: usize,
        asked: i64,
    ) -> Result<i64> {
        let (t, p) = self.parts[split].clone();
        let c = Arc::clone(consumer);
        let (tt, pp) = (t.clone(), p);
        let since = *self.out_of_range.entry(split).or_insert_with(Instant::now);
        let range =
            tokio::task::spawn_blocking(move || c.fetch_watermarks(&tt, pp, METADATA_TIMEOUT))
                .await
                .map_err(|e| SluiceError::internal(e.to_string()))?;
        let (low, high) = match range {
            Ok(r) => r,
            Err(e) if since.elapsed() < OUT_OF_RANGE_PATIENCE => {
                if self
                    .last_transient_warn
                    .is_none_or(|w| w.elapsed() >= TRANSIENT_WARN_EVERY)
                {
                    self.last_transient_warn = Some(Instant::now());
                    tracing::warn!(topic = %t, partition = p, offset = asked, error = %e, "Kafka said an offset is out of range and cannot say the partition's range now; asking again");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(asked);
            }
            Err(e) => {
                return Err(kafka_err(format!("cannot read the offsets of {t}/{p}"))(e));
            }
        };
        self.out_of_range.remove(&split);
        if (low..=high).contains(&asked) {
            return Ok(asked);
        }
        let latest = match self
            .config
            .props
            .get("auto.offset.reset")
            .map(String::as_str)
        {
            Some("latest" | "largest" | "end") => true,
            Some("earliest" | "smallest" | "beginning") => false,
            Some("error" | "none") => {
                return Err(SluiceError::external(format!(
                    "offset {asked} of Kafka partition {t}/{p} is out of range ({low}..{high}) and 'properties.auto.offset.reset' = 'error'"
                )));
            }
            _ => self.config.startup == Startup::Latest,
        };
        let to = if latest { high } else { low };
        tracing::warn!(topic = %t, partition = p, offset = asked, low, high, to, "a Kafka offset is out of range; reading on from {}", if latest { "the latest" } else { "the earliest" });
        Ok(to)
    }
}
