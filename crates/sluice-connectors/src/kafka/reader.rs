//! The Kafka source's reader: one consumer per subtask over its assigned partitions,
//! positions per split, metadata columns, lag, and offsets committed for Kafka tooling.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Array, Int64Builder, MapBuilder, MapFieldNames,
    RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::compute::{cast, take};
use arrow::datatypes::DataType;
use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::dead_letter::DeadLetter;
use sluice_runtime::{OperatorContext, ReadResult, SourceReader, Split, SplitPosition};
use sluice_types::{Result, SluiceError};

use super::{Columns, METADATA_TIMEOUT, MetaKey, client_config, kafka_err};
use crate::codec::{Decoded, MessageDecoder};
use crate::pacer::Pacer;

use super::batch::{PartitionQueues, Record};
use super::fetcher::NativeFetcher;
use super::follow::GroupRead;
use super::group::{Member, Partition};
use super::link::TxnLink;
use super::source::{KafkaSourceConfig, SourceConsumer, position_offset, start_offsets};
use super::watermarks::{PartitionWatermark, WatermarkRecord};

// Reading through Sluice's own fetcher.
mod native;

/// Headers of a message, owned.
pub(crate) type OwnedHeaderList = Vec<(String, Option<Vec<u8>>)>;

/// Which metadata a table reads, beyond offsets (kept for dead-letter positions).
#[derive(Clone, Copy)]
pub(crate) struct MetaWants {
    pub(crate) timestamps: bool,
    pub(crate) keys: bool,
    pub(crate) headers: bool,
}

impl MetaWants {
    pub(crate) fn of(columns: &Columns) -> Self {
        let has = |k: MetaKey| columns.layout.contains(&Err(k));
        Self {
            timestamps: has(MetaKey::Timestamp) || has(MetaKey::TimestampType),
            keys: has(MetaKey::Key),
            headers: has(MetaKey::Headers),
        }
    }
}

/// Metadata values of the messages of the current chunk.
#[derive(Default)]
pub(crate) struct MetaBuilders {
    pub(crate) offsets: Vec<i64>,
    pub(crate) timestamps: Vec<Option<i64>>,
    pub(crate) timestamp_types: Vec<&'static str>,
    pub(crate) keys: Vec<Option<Vec<u8>>>,
    pub(crate) headers: Vec<OwnedHeaderList>,
    /// `upsert-kafka`: each message's kind (`+I` an upsert, `-D` a tombstone).
    pub(crate) kinds: Vec<i8>,
    /// `upsert-kafka`: the JSON object a message is read as.
    pub(crate) upsert_json: Vec<u8>,
}

impl MetaBuilders {
    pub(crate) fn clear(&mut self) {
        self.kinds.clear();
        self.offsets.clear();
        self.timestamps.clear();
        self.timestamp_types.clear();
        self.keys.clear();
        self.headers.clear();
    }
}

/// Reads the partitions assigned to one subtask.
pub struct KafkaReader {
    pub(crate) config: Arc<KafkaSourceConfig>,
    pub(crate) group: String,
    pub(crate) splits: Vec<Split>,
    /// Per split: its topic and partition.
    pub(crate) parts: Vec<Partition>,
    /// `'scan.partition-assignment' = 'group'`: the group decides what this subtask reads.
    pub(crate) group_read: Option<GroupRead>,
    /// Partitions the job assigns: their records, a batch at a time (dropped before the
    /// consumer).
    pub(crate) batches: Option<PartitionQueues>,
    /// Partitions the job assigns, read by Sluice's own fetcher instead (where it can
    /// serve them: see [`super::fetcher`]).
    pub(crate) fetcher: Option<NativeFetcher>,
    /// Splits Sluice's fetcher found out of range, and since when (while the brokers
    /// cannot say where they go on).
    pub(crate) out_of_range: std::collections::HashMap<usize, Instant>,
    pub(crate) consumer: Option<Arc<SourceConsumer>>,
    /// Which message metadata the table's columns read.
    pub(crate) wants: MetaWants,
    /// Per split: the next offset to read.
    pub(crate) next: Vec<i64>,
    /// Per split, when bounded: the offset to stop at.
    pub(crate) end: Vec<i64>,
    pub(crate) ended: Vec<bool>,
    /// What to return before reading on: empty batches announcing splits, split ends.
    pub(crate) queue: VecDeque<ReadResult>,
    pub(crate) decoder: MessageDecoder,
    pub(crate) meta: MetaBuilders,
    pub(crate) dead_letters: Option<ThreadedProducer<DefaultProducerContext>>,
    pub(crate) last_commit: Instant,
    /// The splits' end offsets as last probed (for the lag gauge), and when.
    pub(crate) highs: Arc<std::sync::Mutex<Vec<(usize, i64)>>>,
    pub(crate) last_lag_probe: Option<Instant>,
    pub(crate) last_transient_warn: Option<Instant>,
    /// Whether the key is read into a STRING column (and must be UTF-8).
    pub(crate) key_is_text: bool,
    /// Messages of the current chunk whose key could not be read.
    pub(crate) bad_keys: Vec<DeadLetter>,
    pub(crate) pacer: Option<Pacer>,
    /// Positions of the last completed checkpoint (committed again, synchronously, at
    /// the end).
    pub(crate) last_complete: Option<Vec<(usize, i64)>>,
    /// An exactly-once cluster instance: the sink commits this subtask's offsets in its
    /// transactions (the source commits none itself).
    pub(crate) link: Option<Arc<TxnLink>>,
    /// Barriers passed in this attempt, when partitions are not the group's to give
    /// (the keyed part of a cluster job): they number the offsets given to the link.
    pub(crate) passed: std::sync::atomic::AtomicU64,
    /// Each split's own watermark as the runtime last gave it (at a barrier, or when
    /// the split ended: a partition the group took away keeps its last).
    pub(crate) split_watermarks: std::collections::HashMap<usize, i64>,
    /// `'scan.watermark-records'`: each split's writers and their watermarks.
    pub(crate) watermarks: Vec<PartitionWatermark>,
}

/// Without checkpoints, offsets are committed to the group this often.
pub(crate) const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// The end offsets are probed this often for the consumer-lag gauge.
pub(crate) const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Consumer errors that say the brokers are (for now) unreachable; librdkafka keeps
/// reconnecting.
pub(crate) fn transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e,
        rdkafka::error::KafkaError::MessageConsumption(
            C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::Resolve
                | C::RequestTimedOut
                | C::NetworkException
                | C::OperationTimedOut
        )
    )
}

/// Warnings about an unreachable broker, at most one per this long.
pub(crate) const TRANSIENT_WARN_EVERY: Duration = Duration::from_secs(10);

impl KafkaReader {
    pub(crate) fn warn_transient(&mut self, e: &rdkafka::error::KafkaError) {
        if self
            .last_transient_warn
            .is_none_or(|t| t.elapsed() >= TRANSIENT_WARN_EVERY)
        {
            self.last_transient_warn = Some(Instant::now());
            tracing::warn!(error = %e, "the Kafka brokers are unreachable; waiting for them (librdkafka reconnects)");
        }
    }

    /// The lag gauge: records between each split's position and its end as last probed.
    /// Probes run in the background (they are blocking broker calls), one at a time.
    pub(crate) fn update_lag(&mut self, consumer: &Arc<SourceConsumer>, ctx: &OperatorContext) {
        {
            let highs = self.highs.lock().unwrap_or_else(|p| p.into_inner());
            if !highs.is_empty() {
                let lag: i64 = highs
                    .iter()
                    .filter(|(i, _)| self.reads(*i))
                    .map(|&(i, h)| (h - self.next[i]).max(0))
                    .sum();
                ctx.metrics
                    .source_lag
                    .store(lag, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if self
            .last_lag_probe
            .is_some_and(|t| t.elapsed() < LAG_INTERVAL)
        {
            return;
        }
        self.last_lag_probe = Some(Instant::now());
        let parts: Vec<(usize, Partition)> = (0..self.parts.len())
            .filter(|&i| self.reads(i))
            .map(|i| (i, self.parts[i].clone()))
            .collect();
        let (c, highs) = (Arc::clone(consumer), Arc::clone(&self.highs));
        tokio::task::spawn_blocking(move || {
            let probed: Option<Vec<(usize, i64)>> = parts
                .iter()
                .map(|(i, (t, p))| {
                    let w = c.fetch_watermarks(t, *p, LAG_INTERVAL).ok()?;
                    Some((*i, w.1))
                })
                .collect();
            if let Some(p) = probed {
                *highs.lock().unwrap_or_else(|p| p.into_inner()) = p;
            }
        });
    }

    /// Whether this subtask reads split `i` now (always, unless in group mode).
    pub(crate) fn reads(&self, i: usize) -> bool {
        self.group_read.as_ref().is_none_or(|g| g.owned[i])
    }

    pub(crate) fn split_of(&self, topic: &str, partition: i32) -> Option<usize> {
        // A few partitions per subtask: a scan, no key allocated per message.
        let i = self
            .parts
            .iter()
            .position(|(t, p)| *p == partition && t == topic)?;
        self.reads(i).then_some(i)
    }

    /// Takes one message into the chunk.
    pub(crate) fn take(&mut self, split: usize, m: &MessageView<'_>) {
        self.next[split] = m.offset + 1;
        if self.config.watermark_records
            && m.payload.is_none()
            && let Some(r) = m.key.and_then(WatermarkRecord::parse)
        {
            // Reported after the rows read so far (they go out first).
            if self.watermarks.len() <= split {
                self.watermarks.resize_with(split + 1, Default::default);
            }
            if let Some(w) = self.watermarks[split].take(&r) {
                self.queue.push_back(ReadResult::Watermark {
                    split: self.splits[split].index,
                    watermark: w,
                });
            }
            return;
        }
        if let Some(upsert) = &self.config.upsert {
            // An upsert whose value holds every column is read as it is.
            if let (Some(payload), false) = (m.payload, upsert.except_key) {
                self.meta.kinds.push(sluice_types::RowKind::Insert.code());
                self.push_message(m, payload);
                return;
            }
            // A delete (a tombstone), or a value without the key's columns: read as one
            // JSON object made from the key (and the value).
            let mut json = std::mem::take(&mut self.meta.upsert_json);
            if !upsert.json_of(m.key, m.payload, &mut json) {
                let (t, p) = &self.parts[split];
                self.bad_keys.push(DeadLetter {
                    position: format!("{t}/{p}@{}", m.offset),
                    error: "an upsert-kafka record without a readable key (a tombstone, or a value that leaves the key's fields out, needs the key)".into(),
                    raw: String::from_utf8_lossy(m.payload.unwrap_or_default()).into_owned(),
                });
                self.meta.upsert_json = json;
                return;
            }
            let kind = match m.payload {
                Some(_) => sluice_types::RowKind::Insert,
                None => sluice_types::RowKind::Delete,
            };
            self.meta.kinds.push(kind.code());
            self.push_message(m, &json);
            self.meta.upsert_json = json;
            return;
        }
        let Some(payload) = m.payload else {
            // A tombstone (null value) carries no row.
            return;
        };
        self.push_message(m, payload);
    }

    /// Records a message's metadata and gives its payload to the decoder.
    fn push_message(&mut self, m: &MessageView<'_>, payload: &[u8]) {
        // Offsets always (positions of dead letters); the rest only when a column reads it.
        self.meta.offsets.push(m.offset);
        let wants = self.wants;
        if wants.timestamps {
            self.meta.timestamps.push(m.timestamp);
            self.meta.timestamp_types.push(m.timestamp_type);
        }
        if wants.keys {
            self.meta.keys.push(m.key.map(<[u8]>::to_vec));
        }
        if wants.headers {
            self.meta.headers.push(m.headers());
        }
        self.decoder.push(payload);
    }

    pub(crate) fn past_end(&self, split: usize, offset: i64) -> bool {
        self.config.bounded && offset >= self.end[split]
    }

    pub(crate) fn check_end(&mut self, split: usize) {
        if self.config.bounded && !self.ended[split] && self.next[split] >= self.end[split] {
            self.ended[split] = true;
            self.queue
                .push_back(ReadResult::SplitEnd(self.splits[split].index));
        }
    }

    /// Turns the chunk into a batch of the table's columns.
    pub(crate) fn finish_chunk(
        &mut self,
        split: usize,
        ctx: &mut OperatorContext,
    ) -> Result<ReadResult> {
        let (topic, partition) = self.parts[split].clone();
        let offsets = std::mem::take(&mut self.meta.offsets);
        let mut dead = std::mem::take(&mut self.bad_keys);
        let decoded = self.decoder.finish_checked(
            &self.config.json,
            &|i| format!("{topic}/{partition}@{}", offsets[i]),
            &mut dead,
        )?;
        self.meta.offsets = offsets;
        self.config.json.check(&dead)?;
        if !dead.is_empty() {
            self.dead_letter(&topic, partition, dead, ctx);
        }
        let rows = match decoded {
            Some(d) => self.assemble(&topic, partition, d)?,
            None => RecordBatch::new_empty(Arc::clone(&self.config.columns.all)),
        };
        self.meta.clear();
        Ok(ReadResult::Batch {
            split: self.splits[split].index,
            rows,
        })
    }

    pub(crate) fn assemble(
        &mut self,
        topic: &str,
        partition: i32,
        d: Decoded,
    ) -> Result<RecordBatch> {
        let cols = &self.config.columns;
        let n_all = self.meta.offsets.len();
        let pick = |a: ArrayRef| -> Result<ArrayRef> {
            match &d.kept {
                None => Ok(a),
                Some(k) => Ok(take(a.as_ref(), k, None)?),
            }
        };
        let mut out: Vec<ArrayRef> = Vec::with_capacity(cols.layout.len());
        for (f, l) in cols.all.fields().iter().zip(&cols.layout) {
            let a: ArrayRef = match l {
                Ok(i) => Arc::clone(d.rows.column(*i)),
                Err(MetaKey::Op) => match &d.ops {
                    Some(ops) => Arc::clone(ops),
                    None => {
                        return Err(SluiceError::internal("debezium decoding lost its ops"));
                    }
                },
                Err(MetaKey::RowKind) => match &d.kinds {
                    Some(kinds) => Arc::new(kinds.clone()),
                    // upsert-kafka: the kinds of the messages kept.
                    None if self.config.upsert.is_some() => {
                        let kinds = std::mem::take(&mut self.meta.kinds);
                        pick(Arc::new(arrow::array::Int8Array::from(kinds)))?
                    }
                    None => {
                        return Err(SluiceError::internal("debezium decoding lost its kinds"));
                    }
                },
                Err(m) => {
                    let full = self.meta_array(*m, topic, partition, n_all, f.data_type())?;
                    pick(full)?
                }
            };
            let a = match a.data_type() == f.data_type() {
                true => a,
                false => cast(a.as_ref(), f.data_type())?,
            };
            out.push(a);
        }
        Ok(RecordBatch::try_new(Arc::clone(&cols.all), out)?)
    }

    pub(crate) fn meta_array(
        &self,
        m: MetaKey,
        topic: &str,
        partition: i32,
        n: usize,
        t: &DataType,
    ) -> Result<ArrayRef> {
        Ok(match m {
            MetaKey::Topic => {
                let mut b = StringBuilder::with_capacity(n, n * topic.len());
                for _ in 0..n {
                    b.append_value(topic);
                }
                Arc::new(b.finish())
            }
            MetaKey::Partition => {
                let mut b = Int32Builder::with_capacity(n);
                b.append_value_n(partition, n);
                Arc::new(b.finish())
            }
            MetaKey::Offset => Arc::new(Int64Array::from(self.meta.offsets.clone())),
            MetaKey::Timestamp => match t {
                DataType::Int64 => {
                    let mut b = Int64Builder::with_capacity(n);
                    b.extend(self.meta.timestamps.iter().copied());
                    Arc::new(b.finish())
                }
                _ => {
                    let mut b = TimestampMillisecondBuilder::with_capacity(n);
                    b.extend(self.meta.timestamps.iter().copied());
                    Arc::new(b.finish())
                }
            },
            MetaKey::TimestampType => {
                let mut b = StringBuilder::new();
                for t in &self.meta.timestamp_types {
                    b.append_value(t);
                }
                Arc::new(b.finish())
            }
            MetaKey::Key => match t {
                DataType::Utf8 => {
                    let mut b = StringBuilder::new();
                    for k in &self.meta.keys {
                        // Keys were checked to be UTF-8 before they were taken.
                        b.append_option(k.as_deref().map(|k| String::from_utf8_lossy(k)));
                    }
                    Arc::new(b.finish())
                }
                _ => {
                    let mut b = BinaryBuilder::new();
                    for k in &self.meta.keys {
                        b.append_option(k.as_deref());
                    }
                    Arc::new(b.finish())
                }
            },
            MetaKey::Headers => {
                let names = match t {
                    DataType::Map(entries, _) => match entries.data_type() {
                        DataType::Struct(f) => MapFieldNames {
                            entry: entries.name().clone(),
                            key: f[0].name().clone(),
                            value: f[1].name().clone(),
                        },
                        _ => MapFieldNames::default(),
                    },
                    _ => MapFieldNames::default(),
                };
                let mut b =
                    MapBuilder::new(Some(names), StringBuilder::new(), BinaryBuilder::new());
                for hs in &self.meta.headers {
                    for (k, v) in hs {
                        b.keys().append_value(k);
                        b.values().append_option(v.as_deref());
                    }
                    b.append(true)?;
                }
                Arc::new(b.finish())
            }
            MetaKey::Op | MetaKey::RowKind => {
                return Err(SluiceError::internal(
                    "a change's op is not a message's metadata",
                ));
            }
        })
    }

    pub(crate) fn dead_letter(
        &mut self,
        topic: &str,
        partition: i32,
        dead: Vec<DeadLetter>,
        ctx: &mut OperatorContext,
    ) {
        match (&self.dead_letters, &self.config.dead_letter_topic) {
            (Some(p), Some(dlq)) => {
                for d in dead {
                    ctx.metrics
                        .dead_letters
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let offset = d
                        .position
                        .rsplit_once('@')
                        .map(|(_, o)| o.to_string())
                        .unwrap_or_default();
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: "sluice.error",
                            value: Some(d.error.as_bytes()),
                        })
                        .insert(Header {
                            key: "sluice.topic",
                            value: Some(topic.as_bytes()),
                        })
                        .insert(Header {
                            key: "sluice.partition",
                            value: Some(partition.to_string().as_bytes()),
                        })
                        .insert(Header {
                            key: "sluice.offset",
                            value: Some(offset.as_bytes()),
                        });
                    let mut rec = BaseRecord::<(), [u8]>::to(dlq)
                        .payload(d.raw.as_bytes())
                        .headers(headers);
                    loop {
                        match p.send(rec) {
                            Ok(()) => break,
                            Err((e, r)) => {
                                if !matches!(
                                    e,
                                    rdkafka::error::KafkaError::MessageProduction(
                                        rdkafka::types::RDKafkaErrorCode::QueueFull
                                    )
                                ) {
                                    tracing::error!(error = %e, position = %d.position, "cannot send a dead letter to `{dlq}`; logged here instead: {}", d.raw);
                                    break;
                                }
                                rec = r;
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    }
                }
            }
            _ => {
                for d in dead {
                    ctx.dead_letter(d);
                }
            }
        }
    }

    /// The watermark of each partition whose offset goes into this barrier's
    /// transaction (read now, or being given up: its last), as the runtime gave it.
    fn partition_watermarks(&self, read: &[(usize, i64)]) -> Vec<(Partition, i64)> {
        read.iter()
            .filter_map(|&(i, _)| {
                let w = self.split_watermarks.get(&self.splits[i].index)?;
                Some((self.parts[i].clone(), *w))
            })
            .collect()
    }

    /// Of `positions`, those this reader commits to the group itself: none when the
    /// sink commits them in its transactions (an exactly-once cluster instance); in a
    /// cluster, only the partitions it still reads (another instance's are its own).
    fn to_commit(&self, positions: Vec<(usize, i64)>) -> Option<Vec<(usize, i64)>> {
        if self.link.is_some() {
            return None;
        }
        match self.group_read.as_ref().is_some_and(|g| g.member.cluster) {
            true => Some(
                positions
                    .into_iter()
                    .filter(|&(i, _)| self.reads(i))
                    .collect(),
            ),
            false => Some(positions),
        }
    }

    pub(crate) fn offsets_list(&self, positions: &[(usize, i64)]) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for &(split, o) in positions {
            let (t, p) = &self.parts[split];
            tpl.add_partition_offset(t, *p, Offset::Offset(o))
                .map_err(kafka_err("bad partition"))?;
        }
        Ok(tpl)
    }

    pub(crate) fn commit_offsets(&self, positions: &[(usize, i64)], mode: CommitMode) {
        let Some(c) = &self.consumer else { return };
        let Some(positions) = self.to_commit(positions.to_vec()) else {
            return;
        };
        let Ok(tpl) = self.offsets_list(&positions) else {
            return;
        };
        if let Err(e) = c.commit(&tpl, mode) {
            tracing::warn!(error = %e, group = %self.group, "cannot commit offsets to the consumer group (progress shown by Kafka tools lags; checkpoints are unaffected)");
        }
    }
}

/// The parts of a record the reader uses, borrowed from librdkafka.
pub(crate) struct MessageView<'a> {
    pub(crate) offset: i64,
    pub(crate) timestamp: Option<i64>,
    pub(crate) timestamp_type: &'static str,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) payload: Option<&'a [u8]>,
    /// Read only when a column wants them.
    pub(crate) headers: Option<&'a OwnedHeaderList>,
}

impl MessageView<'_> {
    pub(crate) fn headers(&self) -> OwnedHeaderList {
        self.headers.cloned().unwrap_or_default()
    }
}

#[async_trait]
impl SourceReader for KafkaReader {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let mut cfg = client_config(&self.config.props);
        cfg.set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let restored = self
            .splits
            .iter()
            .zip(&self.parts)
            .filter_map(|(s, (t, p))| {
                let pos = s.position.as_ref()?;
                Some(position_offset(pos, t, *p).map(|o| ((t.clone(), *p), o)))
            })
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        if self.config.group_assignment {
            // Incremental rebalances: with the classic protocol, the cooperative assignor
            // (Kafka's new consumer protocol is incremental by itself).
            let new_protocol = cfg.get("group.protocol") == Some("consumer");
            if !new_protocol
                && !cfg
                    .config_map()
                    .contains_key("partition.assignment.strategy")
            {
                cfg.set("partition.assignment.strategy", "cooperative-sticky");
            }
            // Kafka's tools show each member by its client id: the job's subtask (of
            // this instance, in a cluster).
            let (member_name, fixed_name) = match &ctx.cluster {
                Some(c) => (c.member(ctx.task.subtask), c.static_membership),
                None => (
                    format!("sluice-{}-{}", ctx.task.job, ctx.task.subtask),
                    true,
                ),
            };
            if !cfg.config_map().contains_key("client.id") {
                cfg.set("client.id", &member_name);
            }
            // Static membership: a subtask that comes back (a restart after a crash)
            // takes its old place and partitions at once, rather than waiting out its
            // old session before the group rebalances.
            if fixed_name && !cfg.config_map().contains_key("group.instance.id") {
                cfg.set("group.instance.id", &member_name);
            }
            let mut member = Member::new(
                Arc::clone(&self.config.shared),
                ctx.task.subtask,
                ctx.attempt,
                restored,
            );
            if ctx.cluster.is_some() {
                let exactly_once = ctx.checkpointing
                    && ctx.delivery == sluice_plan::DeliveryGuarantee::ExactlyOnce;
                member = member.in_cluster(exactly_once);
                if exactly_once {
                    self.link = Some(super::link::link(
                        &ctx.task.job,
                        ctx.attempt,
                        ctx.task.subtask,
                    ));
                }
            }
            let member = Arc::new(member);
            let context = super::group::SourceContext {
                member: Some(Arc::clone(&member)),
            };
            let consumer: SourceConsumer = cfg
                .create_with_context(context)
                .map_err(kafka_err("cannot create the Kafka consumer"))?;
            let topics = self.config.subscription();
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer
                .subscribe(&topics)
                .map_err(kafka_err("cannot subscribe to the topics"))?;
            let n = self.splits.len();
            self.next = vec![0; n];
            self.ended = vec![false; n];
            self.batches = Some(PartitionQueues::new(Arc::clone(&member.wake)));
            let consumer = Arc::new(consumer);
            if let Some(link) = &self.link {
                link.attach(&consumer, &member.wake);
                link.set_partitions(self.config.partitions.clone());
            }
            self.group_read = Some(GroupRead {
                member,
                owned: vec![false; n],
                waiting: Vec::new(),
                revoking: Vec::new(),
                revoked_at: None,
                metrics: Arc::clone(&ctx.metrics),
            });
            self.consumer = Some(consumer);
            tracing::info!(
                operator = %ctx.task.operator_name,
                subtask = ctx.task.subtask,
                group = %self.group,
                topics = ?topics,
                "reading Kafka: joining the consumer group for partitions"
            );
            return self.open_dead_letters();
        }
        let consumer: SourceConsumer = cfg
            .create_with_context(super::group::SourceContext::default())
            .map_err(kafka_err("cannot create the Kafka consumer"))?;
        let consumer = Arc::new(consumer);
        let fresh: Vec<Partition> = self
            .parts
            .iter()
            .filter(|p| !restored.contains_key(*p))
            .cloned()
            .collect();
        let (config, parts, group, c) = (
            Arc::clone(&self.config),
            self.parts.clone(),
            self.group.clone(),
            Arc::clone(&consumer),
        );
        let (looked_up, ends) = tokio::task::spawn_blocking(move || -> Result<_> {
            let looked_up = start_offsets(&config, &fresh, &group, &c, false)?;
            let mut ends = Vec::new();
            if config.bounded {
                for (t, p) in &parts {
                    let (_, high) = c
                        .fetch_watermarks(t, *p, METADATA_TIMEOUT)
                        .map_err(kafka_err(format!("cannot read the end offset of {t}/{p}")))?;
                    ends.push(high);
                }
            }
            Ok((looked_up, ends))
        })
        .await
        .map_err(|e| SluiceError::internal(e.to_string()))??;
        let starts: Vec<i64> = self
            .parts
            .iter()
            .map(|p| {
                restored
                    .get(p)
                    .or_else(|| looked_up.get(p))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        self.end = ends;
        if ctx.cluster.is_none() && !self.parts.is_empty() {
            self.fetcher = self.start_native(&starts, ctx).await?;
            // Partitions already at their end (bounded) are not fetched.
            if let (Some(f), true) = (self.fetcher.as_mut(), self.config.bounded) {
                for (i, (start, end)) in starts.iter().zip(&self.end).enumerate() {
                    if start >= end {
                        f.stop(i);
                    }
                }
            }
        }
        if self.fetcher.is_none() {
            // Each partition's records on a queue of its own, read a batch at a time.
            self.batches = Some(PartitionQueues::for_partitions(&consumer, &self.parts)?);
            let mut tpl = TopicPartitionList::new();
            for (i, (t, p)) in self.parts.iter().enumerate() {
                tpl.add_partition_offset(t, *p, Offset::Offset(starts[i]))
                    .map_err(kafka_err("bad partition"))?;
            }
            consumer
                .assign(&tpl)
                .map_err(kafka_err("cannot assign partitions"))?;
        }
        if ctx
            .cluster
            .as_ref()
            .is_some_and(|c| c.partition_task.is_some())
            && ctx.checkpointing
            && ctx.delivery == sluice_plan::DeliveryGuarantee::ExactlyOnce
        {
            // The keyed part of a cluster job: its sink commits these partitions'
            // offsets in its transactions.
            let link = super::link::link(&ctx.task.job, ctx.attempt, ctx.task.subtask);
            link.attach(&consumer, &Arc::new(tokio::sync::Notify::new()));
            link.set_partitions(self.config.partitions.clone());
            for p in &self.parts {
                link.hold(p);
            }
            self.link = Some(link);
        }
        self.next = starts;
        self.ended = vec![false; self.splits.len()];
        for s in &self.splits {
            self.queue.push_back(ReadResult::Batch {
                split: s.index,
                rows: RecordBatch::new_empty(Arc::clone(&self.config.columns.all)),
            });
        }
        if self.config.watermark_records {
            // Restored: what the partitions' writers had said before the checkpoint's
            // offsets (they may say nothing more).
            self.watermarks = self
                .splits
                .iter()
                .map(|s| {
                    s.position
                        .as_ref()
                        .and_then(|p| p.get("watermarks"))
                        .and_then(PartitionWatermark::from_json)
                        .unwrap_or_default()
                })
                .collect();
            for (i, s) in self.splits.iter().enumerate() {
                if let Some(watermark) = self.watermarks[i].restored() {
                    self.queue.push_back(ReadResult::Watermark {
                        split: s.index,
                        watermark,
                    });
                }
            }
        }
        for i in 0..self.splits.len() {
            self.check_end(i);
        }
        self.consumer = Some(consumer);
        tracing::info!(
            operator = %ctx.task.operator_name,
            subtask = ctx.task.subtask,
            group = %self.group,
            partitions = ?self.splits.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            "reading Kafka"
        );
        self.open_dead_letters()
    }

    fn reports_watermarks(&self) -> bool {
        self.config.watermark_records
    }

    fn split_name(&self, split: usize) -> Option<String> {
        let (topic, partition) = self.config.partitions.get(split)?;
        Some(format!("{topic}-{partition}"))
    }

    fn split_watermarks(&mut self, watermarks: &[(usize, i64)]) {
        for &(split, w) in watermarks {
            let e = self.split_watermarks.entry(split).or_insert(w);
            *e = (*e).max(w);
        }
    }

    async fn read(&mut self, max_rows: usize, ctx: &mut OperatorContext) -> Result<ReadResult> {
        // A handle of our own: the read may be cancelled at its await (cancel-safe).
        let consumer = Arc::clone(
            self.consumer
                .as_ref()
                .ok_or_else(|| SluiceError::internal("the Kafka reader was not opened"))?,
        );
        if let Some(r) = self.queue.pop_front() {
            return Ok(r);
        }
        if self.group_read.is_none()
            && (self.splits.is_empty() || (self.config.bounded && self.ended.iter().all(|&e| e)))
        {
            return match self.splits.is_empty() && !self.config.bounded {
                // A subtask without partitions waits forever (an unbounded source).
                true => std::future::pending().await,
                false => Ok(ReadResult::End),
            };
        }
        if !ctx.checkpointing && self.last_commit.elapsed() >= COMMIT_INTERVAL {
            self.last_commit = Instant::now();
            let pos = self.read_positions();
            self.commit_offsets(&pos, CommitMode::Async);
        }
        self.update_lag(&consumer, ctx);
        self.read_batch(&consumer, max_rows, ctx).await
    }

    fn positions(&self) -> Result<Vec<SplitPosition>> {
        if let Some(p) = &self.dead_letters {
            // Dead letters of records a checkpoint covers are kept before it completes.
            p.flush(METADATA_TIMEOUT)
                .map_err(kafka_err("cannot flush dead letters"))?;
        }
        let read = self.read_positions();
        let mut out: Vec<SplitPosition> = read
            .iter()
            .map(|&(i, o)| {
                let mut position = serde_json::json!({ "offset": o });
                if let Some(w) = self
                    .watermarks
                    .get(i)
                    .filter(|_| self.config.watermark_records)
                {
                    // Watermark records before this offset are not read again.
                    position["watermarks"] = w.to_json();
                }
                SplitPosition {
                    split: self.splits[i].id.clone(),
                    position,
                }
            })
            .collect();
        if let Some(g) = &self.group_read {
            // Given up and not taken yet: this checkpoint must still know where they are.
            for ((t, p), o) in g.member.released() {
                out.push(SplitPosition {
                    split: format!("{t}/{p}"),
                    position: serde_json::json!({ "offset": o, "released": true }),
                });
            }
            let passed = g
                .member
                .epoch
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            if let Some(link) = &self.link {
                // The offsets the sink commits with this barrier's transaction.
                let offsets = read
                    .iter()
                    .map(|&(i, o)| (self.parts[i].clone(), o))
                    .collect();
                link.push(passed, offsets, self.partition_watermarks(&read));
            }
        } else if let Some(link) = &self.link {
            let passed = self
                .passed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            let offsets = read
                .iter()
                .map(|&(i, o)| (self.parts[i].clone(), o))
                .collect();
            link.push(passed, offsets, self.partition_watermarks(&read));
        }
        Ok(out)
    }

    fn checkpoint_complete(&mut self, positions: &[SplitPosition]) -> Result<()> {
        let pos: Vec<(usize, i64)> = positions
            .iter()
            .filter(|p| p.position.get("released").is_none())
            .filter_map(|p| {
                let i = self.splits.iter().position(|s| s.id == p.split)?;
                Some((i, p.position.get("offset")?.as_i64()?))
            })
            .collect();
        self.commit_offsets(&pos, CommitMode::Async);
        self.last_complete = Some(pos);
        Ok(())
    }

    async fn close(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.batches = None;
        self.fetcher = None;
        if let Some(p) = &self.dead_letters {
            p.flush(METADATA_TIMEOUT)
                .map_err(kafka_err("cannot flush dead letters"))?;
        }
        // The group's offsets end where the job's output ends: the last completed
        // checkpoint, or (without checkpoints) everything read.
        let last = match (ctx.checkpointing, self.last_complete.take()) {
            (true, last) => last,
            (false, _) => Some(self.read_positions()),
        };
        if let (Some(pos), Some(c)) = (last.and_then(|p| self.to_commit(p)), &self.consumer) {
            let tpl = self.offsets_list(&pos)?;
            let (c, group) = (Arc::clone(c), self.group.clone());
            let r = tokio::task::spawn_blocking(move || c.commit(&tpl, CommitMode::Sync))
                .await
                .map_err(|e| SluiceError::internal(e.to_string()))?;
            if let Err(e) = r {
                tracing::warn!(error = %e, group = %group, "cannot commit the final offsets to the consumer group");
            }
        }
        Ok(())
    }
}

impl KafkaReader {
    fn open_dead_letters(&mut self) -> Result<()> {
        if let Some(_dlq) = &self.config.dead_letter_topic {
            let p: ThreadedProducer<DefaultProducerContext> = client_config(&self.config.props)
                .create()
                .map_err(kafka_err("cannot create the dead-letter producer"))?;
            self.dead_letters = Some(p);
        }
        Ok(())
    }

    /// The splits this subtask reads now, each with its next offset.
    pub(crate) fn read_positions(&self) -> Vec<(usize, i64)> {
        let revoking = self.group_read.iter().flat_map(|g| g.revoking.iter());
        let mut out: Vec<(usize, i64)> = (0..self.splits.len())
            .filter(|&i| self.reads(i))
            .chain(revoking.copied())
            .map(|i| (i, self.next[i]))
            .collect();
        out.sort_unstable();
        out
    }
}

impl KafkaReader {
    /// Reads the records of one partition that are already fetched (all of them, up to
    /// `max_rows`), waiting while there are none.
    pub(crate) async fn read_batch(
        &mut self,
        consumer: &Arc<SourceConsumer>,
        max_rows: usize,
        ctx: &mut OperatorContext,
    ) -> Result<ReadResult> {
        let max_rows = match self.pacer.as_mut() {
            Some(p) => max_rows.min(p.due().await as usize),
            None => max_rows,
        };
        if self.fetcher.is_some() {
            return self.read_native(consumer, max_rows, ctx).await;
        }
        loop {
            // The consumer's own queue holds events only: rebalances (served inside the
            // poll), errors, commit results.
            while let Some(r) = consumer.recv().now_or_never() {
                self.consumer_event(r)?;
            }
            if self.group_read.is_some() {
                self.follow_group(consumer).await?;
                if let Some(r) = self.queue.pop_front() {
                    return Ok(r);
                }
            }
            // Out of `self` while the batch borrows it (no await until it is back).
            let Some(mut queues) = self.batches.take() else {
                return Err(SluiceError::internal("the Kafka reader has no queues"));
            };
            let mut chunk = None;
            let mut failed = None;
            if let Some((split, batch)) = queues.take(max_rows) {
                for i in 0..batch.len() {
                    let mut v = match batch.get(i, self.wants.timestamps) {
                        Record::Message(v) => v,
                        Record::Error(e) if transient(&e) => {
                            self.warn_transient(&e);
                            continue;
                        }
                        Record::Error(e) => {
                            failed = Some(kafka_err("reading Kafka failed")(e));
                            break;
                        }
                    };
                    if self.past_end(split, v.offset) {
                        continue;
                    }
                    let headers;
                    if self.wants.headers {
                        headers = batch.headers(i);
                        v.headers = Some(&headers);
                    }
                    self.accept(split, &v);
                }
                if failed.is_none() {
                    self.check_end(split);
                    if let Some(p) = self.pacer.as_mut() {
                        p.emitted(self.decoder.len().max(1) as u64);
                    }
                    chunk = Some(self.finish_chunk(split, ctx));
                }
            }
            self.batches = Some(queues);
            if let Some(e) = failed {
                return Err(e);
            }
            if let Some(c) = chunk {
                return c;
            }
            if let Some(r) = self.queue.pop_front() {
                return Ok(r);
            }
            if self.config.bounded && self.ended.iter().all(|&e| e) {
                return Ok(ReadResult::End);
            }
            if self.config.bounded {
                // A partition may end in what is no record (a transaction's commit or
                // abort marker, aborted records): librdkafka's position then passes it.
                self.skip_to_positions(consumer);
                if let Some(r) = self.queue.pop_front() {
                    return Ok(r);
                }
            }
            // Nothing fetched: wait for records or news from the group (the consumer's
            // poll serves rebalances), and look again now and then.
            let Some(wake) = self.batches.as_ref().map(PartitionQueues::waker) else {
                return Err(SluiceError::internal("the Kafka reader has no queues"));
            };
            tokio::select! {
                _ = wake.notified() => {}
                r = consumer.recv() => self.consumer_event(r)?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// What the consumer's own queue gave: no record is expected there (each
    /// partition's go to its queue); an error fails the read unless the brokers are
    /// only away for now.
    fn consumer_event(
        &mut self,
        r: std::result::Result<BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    ) -> Result<()> {
        match r {
            Ok(m) => {
                tracing::debug!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "a record outside the partition queues (read again from its own queue)"
                );
                Ok(())
            }
            Err(e) if transient(&e) => {
                self.warn_transient(&e);
                Ok(())
            }
            Err(e) => Err(kafka_err("reading Kafka failed")(e)),
        }
    }

    /// Moves each split's next offset to the consumer's position for it, which is past
    /// records that are not returned (control records, aborted transactions), and ends
    /// the splits that reached their end so.
    fn skip_to_positions(&mut self, consumer: &SourceConsumer) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        for e in positions.elements() {
            let Offset::Offset(o) = e.offset() else {
                continue;
            };
            let Some(i) = self.split_of(e.topic(), e.partition()) else {
                continue;
            };
            if !self.ended[i] && o > self.next[i] {
                self.next[i] = o;
                self.check_end(i);
            }
        }
    }

    /// Takes a message, or sends it to the dead letters if its key cannot be read.
    pub(crate) fn accept(&mut self, split: usize, m: &MessageView<'_>) {
        if self.key_is_text
            && let Some(k) = m.key
            && std::str::from_utf8(k).is_err()
        {
            self.next[split] = m.offset + 1;
            let (t, p) = &self.parts[split];
            self.bad_keys.push(DeadLetter {
                position: format!("{t}/{p}@{}", m.offset),
                error: "the message key is not UTF-8 (declare the key column BYTES)".into(),
                raw: String::from_utf8_lossy(m.payload.unwrap_or_default()).into_owned(),
            });
            return;
        }
        self.take(split, m);
    }
}
