//! The Kafka sink's writer: one subtask's producer, its transactions and what a
//! checkpoint keeps of them (see the module above for the exactly-once protocol).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Int32Array, Int32Builder, Int64Builder,
    StringBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, SchemaRef};
use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use sluice_plan::DeliveryGuarantee;
use sluice_runtime::state::key_group::first_key_group;
use sluice_runtime::{Collector, Operator, OperatorContext, OperatorState, RestoredState};
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, TaskInfo, Watermark};

use super::super::client::Unsupported;
use super::super::group::Partition;
use super::super::link::{Held, TxnLink};
use super::super::mark::CommitMark;
use super::super::producer::{NativeProducer, ProducerOptions};
use super::super::txn_log::{committed, ensure_topic, log_topic, parse_tag, read_markers};
use super::super::watermarks::{WRITE_EVERY, WatermarkRecord};
use super::super::{client_config, kafka_err};

mod records;

use super::{Guarantee, KafkaSinkConfig, TXN_TIMEOUT};
use crate::codec::MessageEncoder;
use records::{Direct, decode_headers, header_list, now_ms};

/// Records the first delivery failure (checked at every flush).
#[derive(Default)]
pub struct SinkContext {
    failed: Mutex<Option<String>>,
}

impl SinkContext {
    /// The first delivery failure since the last check, as an error about `what`.
    fn check(&self, what: &str) -> Result<()> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner()).take();
        match failed {
            Some(e) => Err(SluiceError::external(format!("{what}: {e}"))),
            None => Ok(()),
        }
    }
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(format!(
                    "delivery to {}/{} failed: {e}",
                    m.topic(),
                    m.partition()
                ));
            }
        }
    }
}

type SinkProducer = ThreadedProducer<SinkContext>;

/// The records of one transaction, in one buffer: what a checkpoint keeps so that the
/// transaction can be produced again if its commit is lost.
#[derive(Default)]
struct Txn {
    epoch: u64,
    tag: String,
    /// The tag this transaction had in the checkpoint, when it is produced again after a
    /// restore under a new one: its commit marks that tag committed too.
    replaces: Option<String>,
    data: Vec<u8>,
    recs: Vec<Rec>,
    /// Whether the records are in the producer's open Kafka transaction.
    sent: bool,
    /// A cluster instance's transaction: the barrier (as counted by the source) and the
    /// source's offsets at it, committed in the transaction.
    offsets: Option<(u64, Vec<Held>)>,
}

/// One record of a transaction: byte ranges into [`Txn::data`].
#[derive(Clone, Copy)]
struct Rec {
    key: Option<(usize, usize)>,
    /// `None`: a tombstone (an upsert sink's delete).
    value: Option<(usize, usize)>,
    /// Encoded user headers (see [`encode_headers`]).
    headers: (usize, usize),
    partition: Option<i32>,
    timestamp: Option<i64>,
}

/// Writes one subtask's rows to Kafka.
pub struct KafkaSinkOperator {
    config: Arc<KafkaSinkConfig>,
    value_encoder: MessageEncoder,
    key_encoder: Option<MessageEncoder>,
    subtask: usize,
    parallelism: usize,
    /// The transactional ids' prefix (see [`Self::transactional_id`]).
    prefix: String,
    guarantee: Guarantee,
    producer: Option<SinkProducer>,
    /// Sluice's own producer, instead of `producer`, where it can serve the sink
    /// (see [`super::super::producer`]).
    native: Option<NativeProducer>,
    round_robin: i32,
    /// Exactly-once: the transaction being filled (or held while an earlier one waits).
    current: Txn,
    kafka_txn_open: bool,
    /// Exactly-once: transactions pre-committed at a barrier, waiting for completion.
    precommitted: VecDeque<Txn>,
    seq: u64,
    attempt: u64,
    /// Pre-committed transactions found in the restored checkpoint.
    restored: Vec<Txn>,
    /// The transactional ids of the restored checkpoint's subtasks.
    earlier_ids: Vec<String>,
    /// A cluster instance's exactly-once link to the source subtask its rows come from.
    link: Option<Arc<TxnLink>>,
    /// Barriers this subtask has passed in this attempt.
    barriers: u64,
    /// `'sink.watermark-records'`: the input's watermark, the last one written, and
    /// when (without checkpoints they are written every so often).
    watermark: Option<i64>,
    watermarks_written: std::collections::HashMap<u32, i64>,
    watermark_at: std::time::Instant,
    /// The keyed part of a cluster job: its run's name, which the offsets its
    /// transactions commit carry with the checkpoint's epoch (in a `CommitMark`), so that
    /// the partition's next owner restores that very checkpoint.
    task_token: Option<String>,
    /// A cluster instance: its name, and what its last commit of each partition it
    /// holds said (with the source's claim of it): see [`CommitMark`].
    instance: String,
    marks: std::collections::HashMap<Partition, (u64, CommitMark)>,
}

impl KafkaSinkOperator {
    /// The writer of subtask `task`.
    pub(super) fn new(config: &Arc<KafkaSinkConfig>, task: &TaskInfo) -> Result<Self> {
        let key_encoder = match &config.key {
            Some((f, s, _)) => Some(MessageEncoder::new(f, s)?),
            None => None,
        };
        Ok(Self {
            config: Arc::clone(config),
            value_encoder: MessageEncoder::new(&config.format, &config.value)?
                .with_json_options(config.json),
            key_encoder,
            subtask: task.subtask,
            parallelism: task.parallelism,
            prefix: config
                .txn_prefix
                .clone()
                .unwrap_or_else(|| format!("sluice-{}-{}", task.job, task.operator_id)),
            guarantee: Guarantee::AtLeastOnce,
            producer: None,
            native: None,
            round_robin: task.subtask as i32,
            current: Txn::default(),
            kafka_txn_open: false,
            precommitted: VecDeque::new(),
            seq: 0,
            attempt: 0,
            restored: Vec::new(),
            earlier_ids: Vec::new(),
            link: None,
            barriers: 0,
            watermark: None,
            watermarks_written: Default::default(),
            watermark_at: std::time::Instant::now(),
            task_token: None,
            instance: String::new(),
            marks: std::collections::HashMap::new(),
        })
    }

    /// Writes watermark records into every partition for `writers` (each writer's
    /// watermark) of `of` (see [`super::super::watermarks`]), those that advanced since
    /// the last time: into the open transaction when exactly-once, else straight to the
    /// producer.
    async fn write_watermarks(&mut self, writers: Vec<(u32, i64)>, of: u32) -> Result<()> {
        if !self.config.watermark_records {
            return Ok(());
        }
        let advanced: Vec<(u32, i64)> = writers
            .into_iter()
            .filter(|(w, wm)| self.watermarks_written.get(w).is_none_or(|old| wm > old))
            .collect();
        if advanced.is_empty() {
            return Ok(());
        }
        let mut txn = std::mem::take(&mut self.current);
        let from = txn.recs.len();
        for &(writer, watermark) in &advanced {
            let key = WatermarkRecord {
                watermark,
                writers: vec![writer],
                of,
            }
            .key();
            for p in 0..self.config.partitions {
                let s = txn.data.len();
                txn.data.extend_from_slice(&key);
                let e = txn.data.len();
                txn.recs.push(Rec {
                    key: Some((s, e)),
                    value: None,
                    headers: (e, e),
                    partition: Some(p),
                    timestamp: None,
                });
            }
        }
        let r = match self.guarantee {
            Guarantee::ExactlyOnce => self.send_in_txn(&mut txn, from).await,
            _ => {
                let r = self.produce(&txn, from).await;
                txn.data.clear();
                txn.recs.clear();
                r
            }
        };
        self.current = txn;
        self.watermarks_written.extend(advanced);
        self.watermark_at = std::time::Instant::now();
        r
    }

    /// Starts Sluice's own producer when it can serve this sink (plaintext, no
    /// compression, a broker of Kafka 2.4 or later): whether it did.
    async fn start_native(&mut self, ctx: &OperatorContext) -> Result<bool> {
        let idempotent = self.guarantee == Guarantee::AtLeastOnce;
        let why = match ProducerOptions::from_props(&self.config.props, idempotent) {
            Ok(opts) => {
                let servers = self
                    .config
                    .props
                    .get("bootstrap.servers")
                    .map_or("", String::as_str);
                match NativeProducer::start(servers, &self.config.topic, opts, self.subtask as i32)
                    .await?
                {
                    Ok(p) => {
                        self.native = Some(p);
                        return Ok(true);
                    }
                    Err(Unsupported(why)) => why,
                }
            }
            Err(Unsupported(why)) => why,
        };
        tracing::debug!(
            operator = %ctx.task.operator_name,
            subtask = ctx.task.subtask,
            reason = %why,
            "the Kafka sink produces through librdkafka"
        );
        Ok(false)
    }

    /// Exactly-once: puts the records of `txn` from `from` on (all of them if it was not
    /// sent yet) into the open Kafka transaction, or holds them while a pre-committed
    /// transaction waits (they go out when it has committed).
    async fn send_in_txn(&mut self, txn: &mut Txn, from: usize) -> Result<()> {
        if txn.tag.is_empty() {
            txn.tag = self.next_tag();
        }
        if !self.precommitted.is_empty() {
            return Ok(());
        }
        self.open_txn().await?;
        let from = if txn.sent { from } else { 0 };
        txn.sent = true;
        self.produce(txn, from).await
    }

    /// This subtask as the writer of watermark records when no cluster link says
    /// otherwise: one of the sink's subtasks, with its input's watermark.
    fn own_writers(&self) -> (Vec<(u32, i64)>, u32) {
        let (id, of) = self
            .config
            .watermark_writer
            .unwrap_or((self.subtask as u32, self.parallelism as u32));
        let w = self.watermark.map(|w| (id, w));
        (w.into_iter().collect(), of)
    }

    fn producer(&self) -> Result<&SinkProducer> {
        self.producer
            .as_ref()
            .ok_or_else(|| SluiceError::internal("the Kafka sink was not started"))
    }

    fn check_delivery(&self) -> Result<()> {
        if let Some(n) = &self.native {
            return n.check();
        }
        self.producer()?
            .context()
            .check(&format!("Kafka sink to `{}`", self.config.topic))
    }

    /// Runs a blocking producer call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&SinkProducer) -> rdkafka::error::KafkaResult<T> + Send + 'static,
    ) -> Result<T> {
        let p = self.producer()?.clone();
        tokio::task::spawn_blocking(move || f(&p))
            .await
            .map_err(|e| SluiceError::internal(format!("{what}: {e}")))?
            .map_err(kafka_err(what))
    }

    /// Produces records `from..` of `txn` (waiting while librdkafka's queue is full).
    async fn produce(&mut self, txn: &Txn, from: usize) -> Result<()> {
        if let Some(n) = &mut self.native {
            let now = now_ms();
            for r in &txn.recs[from..] {
                let bytes = |range: Option<(usize, usize)>| range.map(|(s, e)| &txn.data[s..e]);
                let headers = match r.headers.1 > r.headers.0 {
                    true => header_list(&txn.data[r.headers.0..r.headers.1]),
                    false => Vec::new(),
                };
                n.append(
                    r.partition,
                    bytes(r.key),
                    bytes(r.value),
                    &headers,
                    r.timestamp.unwrap_or(now),
                )?;
            }
            return n.send().await;
        }
        let p = self.producer()?;
        for r in &txn.recs[from..] {
            let mut rec = BaseRecord::<[u8], [u8]>::to(&self.config.topic);
            if let Some((s, e)) = r.value {
                rec = rec.payload(&txn.data[s..e]);
            }
            if let Some((s, e)) = r.key {
                rec = rec.key(&txn.data[s..e]);
            }
            if let Some(pt) = r.partition {
                rec = rec.partition(pt);
            }
            if let Some(t) = r.timestamp {
                rec = rec.timestamp(t);
            }
            if r.headers.1 > r.headers.0 {
                rec = rec.headers(decode_headers(&txn.data[r.headers.0..r.headers.1]));
            }
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        return Err(SluiceError::external(format!(
                            "cannot produce to `{}`",
                            self.config.topic
                        ))
                        .with_source(e));
                    }
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if let Some(n) = &mut self.native {
            return n.flush().await;
        }
        self.blocking("flushing the Kafka producer failed", |p| {
            p.flush(TXN_TIMEOUT)
        })
        .await?;
        self.check_delivery()
    }

    /// This subtask's transactional id.
    fn transactional_id(&self) -> String {
        self.transactional_id_of(self.subtask)
    }

    /// The transactional id of subtask `subtask` of this run.
    fn transactional_id_of(&self, subtask: usize) -> String {
        format!("{}-{subtask}-of-{}", self.prefix, self.parallelism)
    }

    fn next_tag(&mut self) -> String {
        self.seq += 1;
        format!("{}:{}:{}", self.transactional_id(), self.attempt, self.seq)
    }

    /// Begins a Kafka transaction for `current` if none is open.
    async fn open_txn(&mut self) -> Result<()> {
        if !self.kafka_txn_open {
            self.blocking("cannot begin a Kafka transaction", |p| {
                p.begin_transaction()
            })
            .await?;
            self.kafka_txn_open = true;
        }
        Ok(())
    }

    /// Writes the commit markers of `txn` into it and commits it.
    async fn commit_txn(&mut self, txn: &Txn) -> Result<()> {
        if !txn.sent {
            self.open_txn().await?;
            self.produce(txn, 0).await?;
        }
        self.open_txn().await?;
        let topic = log_topic(&self.prefix);
        let own = self.transactional_id();
        let mut markers = vec![(own.as_str(), txn.tag.as_str())];
        // The replaced tag's id (another one after a change of parallelism) is marked
        // too, so a later restore of the same checkpoint does not produce it a third time.
        if let Some(r) = &txn.replaces
            && let Some((id, _, _)) = parse_tag(r)
            && id != own
        {
            markers.push((id, r.as_str()));
        }
        let p = self.producer()?;
        for (id, tag) in markers {
            p.send(
                BaseRecord::<[u8], [u8]>::to(&topic)
                    .key(id.as_bytes())
                    .payload(tag.as_bytes()),
            )
            .map_err(|(e, _)| {
                SluiceError::external(format!("cannot write the commit marker to `{topic}`"))
                    .with_source(e)
            })?;
        }
        self.blocking("cannot commit the Kafka transaction", |p| {
            p.commit_transaction(TXN_TIMEOUT)
        })
        .await?;
        self.kafka_txn_open = false;
        self.check_delivery()
    }

    /// A cluster instance's commit: the transaction's records, and the source's offsets
    /// under its current group membership. A commit the group refuses while it
    /// rebalances (the membership's generation moved on) is aborted and made again
    /// under the new one, its records produced again: the partitions whose offsets it
    /// carries are still this member's (a revoked one is let go only after this commit).
    /// A member the group has dropped (cut off, or too slow) cannot commit: the job
    /// fails at once, and the instance starts again from the committed offsets.
    async fn commit_with_offsets(&mut self, mut txn: Txn, state_bytes: Option<u64>) -> Result<()> {
        let link = self
            .link
            .clone()
            .ok_or_else(|| SluiceError::internal("a cluster transaction without its link"))?;
        let Some((barrier, _)) = txn.offsets else {
            return Err(SluiceError::internal(
                "a cluster transaction without offsets",
            ));
        };
        let mut retries = 0;
        loop {
            let e = match self
                .try_commit_with_offsets(&txn, &link, state_bytes)
                .await?
            {
                Ok(()) => break,
                Err(e) => e,
            };
            // Only a generation that moved on mid-commit is worth another try: a member
            // the group no longer knows (or has fenced) must rejoin, which this attempt
            // cannot do while it commits.
            let rebalancing = matches!(
                &e,
                KafkaError::Transaction(t) if t.txn_requires_abort() && matches!(
                    t.code(),
                    RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::RebalanceInProgress
                )
            );
            if !rebalancing || retries == COMMIT_RETRIES {
                return Err(SluiceError::external(
                    "cannot commit the Kafka transaction with the source's offsets (the consumer group has probably given this instance's partitions to others: it was cut off, or stalled; the instance starts again from the group's committed offsets)",
                )
                .with_source(e));
            }
            retries += 1;
            tracing::info!(error = %e, retries, "the consumer group refused the transaction's offsets while it rebalances: aborting it and committing it again");
            self.blocking("cannot abort the Kafka transaction", |p| {
                p.abort_transaction(TXN_TIMEOUT)
            })
            .await?;
            self.kafka_txn_open = false;
            txn.sent = false;
            tokio::time::sleep(COMMIT_RETRY_DELAY).await;
        }
        link.committed(barrier);
        Ok(())
    }

    /// One try of [`Self::commit_with_offsets`]: the outer error fails the job, the
    /// inner one may be retried.
    async fn try_commit_with_offsets(
        &mut self,
        txn: &Txn,
        link: &Arc<TxnLink>,
        state_bytes: Option<u64>,
    ) -> Result<std::result::Result<(), KafkaError>> {
        if !txn.sent && !txn.recs.is_empty() {
            self.open_txn().await?;
            self.produce(txn, 0).await?;
        }
        self.open_txn().await?;
        let offsets = link.still_held(txn.offsets.as_ref().map_or(&[], |(_, o)| o));
        // Partitions this subtask commits for the first time under their claim: how
        // long they stood still is measured from their previous owner's last commit.
        let fresh: Vec<Partition> = offsets
            .iter()
            .filter(|(p, _, claim)| self.marks.get(p).is_none_or(|(c, _)| c != claim))
            .map(|(p, _, _)| p.clone())
            .collect();
        let previous = match fresh.is_empty() {
            true => std::collections::HashMap::new(),
            false => {
                let link = Arc::clone(link);
                tokio::task::spawn_blocking(move || link.committed_marks(&fresh))
                    .await
                    .map_err(|e| SluiceError::internal(e.to_string()))?
            }
        };
        let now = (sluice_types::now_micros() / 1000) as i64;
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut marks = std::collections::HashMap::with_capacity(offsets.len());
        for (part, o, claim) in &offsets {
            let (t, p) = part;
            tpl.add_partition_offset(t, *p, rdkafka::Offset::Offset(*o))
                .map_err(kafka_err("bad partition"))?;
            let first = self
                .marks
                .get(part)
                .filter(|(c, _)| c == claim)
                .map(|(_, m)| m);
            let mut mark = CommitMark::next(&self.instance, now, first, previous.get(part));
            if let Some(token) = &self.task_token {
                // The partition's next owner restores the checkpoint named here.
                mark.run = Some(token.clone());
                mark.epoch = Some(txn.epoch);
                mark.state_bytes = state_bytes;
            }
            if let Some(mut e) = tpl.find_partition(t, *p) {
                e.set_metadata(mark.to_metadata());
            }
            marks.insert(part.clone(), (*claim, mark));
        }
        self.marks = marks;
        let group = match offsets.is_empty() {
            true => None,
            false => Some(link.group_metadata().ok_or_else(|| {
                SluiceError::internal(
                    "the source's consumer is gone before its offsets were committed",
                )
            })?),
        };
        let p = self.producer()?.clone();
        let r = tokio::task::spawn_blocking(move || {
            if let Some(group) = group {
                p.send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT)?;
            }
            p.commit_transaction(TXN_TIMEOUT)
        })
        .await
        .map_err(|e| SluiceError::internal(e.to_string()))?;
        if r.is_ok() {
            self.kafka_txn_open = false;
            self.check_delivery()?;
        }
        Ok(r)
    }

    /// Fences `id` (a transactional id no subtask of this run uses): its open
    /// transaction, if any, ends, and a producer left over with it can no longer commit.
    async fn fence(&self, id: &str) -> Result<()> {
        let p: SinkProducer = client_config(&self.config.props)
            .set("transactional.id", id)
            .create_with_context(SinkContext::default())
            .map_err(kafka_err("cannot create a Kafka producer"))?;
        tokio::task::spawn_blocking(move || p.init_transactions(TXN_TIMEOUT))
            .await
            .map_err(|e| SluiceError::internal(e.to_string()))?
            .map_err(kafka_err(format!(
                "cannot fence the transactional id `{id}` of an earlier run"
            )))
    }

    async fn start_exactly_once(&mut self, ctx: &OperatorContext) -> Result<()> {
        let topic = log_topic(&self.prefix);
        ensure_topic(&self.config.props, &topic).await?;
        // Fences any producer left over from an earlier run with this id, and ends its
        // open transaction.
        self.blocking("cannot initialise Kafka transactions", |p| {
            p.init_transactions(TXN_TIMEOUT)
        })
        .await?;
        // Ids of the restored checkpoint's subtasks that no subtask of this run has
        // (its parallelism was different): the one restoring their transactions fences
        // them, and each of the others is fenced by one subtask.
        let mut old: Vec<String> = self
            .restored
            .iter()
            .filter_map(|t| parse_tag(&t.tag).map(|(id, _, _)| id.to_string()))
            .collect();
        for (i, id) in std::mem::take(&mut self.earlier_ids)
            .into_iter()
            .enumerate()
        {
            if i % self.parallelism.max(1) == self.subtask {
                old.push(id);
            }
        }
        old.sort();
        old.dedup();
        let live: Vec<String> = (0..self.parallelism)
            .map(|i| self.transactional_id_of(i))
            .collect();
        // (This run's own ids, this subtask's among them, are initialised by their
        // subtasks.)
        for id in old.iter().filter(|id| !live.contains(id)) {
            self.fence(id).await?;
        }
        if self.restored.is_empty() {
            return Ok(());
        }
        let markers = read_markers(&self.config.props, &topic).await?;
        let restored = std::mem::take(&mut self.restored);
        let pending = restored.len();
        let lost: Vec<Txn> = restored
            .into_iter()
            .filter(|t| !committed(&markers, &t.tag))
            .collect();
        tracing::info!(
            operator = %ctx.task.operator_name,
            subtask = ctx.task.subtask,
            pending,
            committed = pending - lost.len(),
            "restored the checkpoint's pending Kafka transactions"
        );
        for mut txn in lost {
            txn.replaces = Some(std::mem::replace(&mut txn.tag, self.next_tag()));
            txn.sent = false;
            tracing::info!(
                operator = %ctx.task.operator_name,
                subtask = ctx.task.subtask,
                tag = %txn.tag,
                records = txn.recs.len(),
                "committing again a transaction of the restored checkpoint"
            );
            self.commit_txn(&txn).await?;
        }
        Ok(())
    }
}

/// How often a transaction the group refused while it rebalanced is tried again, and
/// how long after the last try.
const COMMIT_RETRIES: u32 = 25;
const COMMIT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// State table of pre-committed transactions' records.
const TXN_TABLE: &str = "kafka_transactions";

#[derive(serde::Serialize, serde::Deserialize)]
struct SinkMeta {
    /// Pre-committed transactions: `(epoch, tag)`.
    pending: Vec<(u64, String)>,
    /// The subtask's transactional id.
    #[serde(default)]
    transactional_id: String,
}

#[async_trait]
impl Operator for KafkaSinkOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.config.input)
    }

    async fn on_start(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let job = match (ctx.delivery, ctx.checkpointing) {
            (DeliveryGuarantee::ExactlyOnce, true) => Guarantee::ExactlyOnce,
            (DeliveryGuarantee::AtMostOnce, _) => Guarantee::None,
            _ => Guarantee::AtLeastOnce,
        };
        self.guarantee = match self.config.guarantee {
            None => job,
            Some(Guarantee::ExactlyOnce) if job != Guarantee::ExactlyOnce => {
                return Err(SluiceError::user(format!(
                    "'sink.delivery-guarantee' = 'exactly-once' needs an exactly-once job with checkpoints (this job: {}, checkpoints {}); set 'execution.checkpointing.interval'",
                    ctx.delivery,
                    if ctx.checkpointing { "on" } else { "off" }
                )));
            }
            Some(g) => g,
        };
        self.attempt = ctx.attempt;
        if let (Some(c), Guarantee::ExactlyOnce) = (&ctx.cluster, self.guarantee) {
            // One transactional id per instance and subtask, stable across the
            // instance's restarts (so a restart fences its earlier self).
            self.prefix = match &self.config.txn_prefix {
                Some(p) => format!("{p}-{}", c.instance),
                None => format!("sluice-{}-{}", c.name, c.instance),
            };
            self.link = Some(super::super::link::link(
                &ctx.task.job,
                ctx.attempt,
                ctx.task.subtask,
            ));
            self.task_token = c.partition_task.as_ref().map(|t| t.token.clone());
            self.instance = c
                .partition_task
                .as_ref()
                .map_or(&c.instance, |t| &t.owner)
                .clone();
        }
        if self.guarantee != Guarantee::ExactlyOnce && self.start_native(ctx).await? {
            return Ok(());
        }
        let mut cfg = client_config(&self.config.props);
        if !self.config.props.contains_key("partitioner") {
            // Kafka's Java client hashes keys with murmur2: the same key, the same partition.
            cfg.set("partitioner", "murmur2_random");
        }
        if !self.config.props.contains_key("delivery.report.only.error") {
            // Only failures matter (checked at every flush): no report per record.
            cfg.set("delivery.report.only.error", "true");
        }
        match self.guarantee {
            Guarantee::ExactlyOnce => {
                cfg.set("transactional.id", self.transactional_id());
            }
            Guarantee::AtLeastOnce => {
                cfg.set("enable.idempotence", "true").set("acks", "all");
            }
            Guarantee::None => {}
        }
        let producer: SinkProducer = cfg
            .create_with_context(SinkContext::default())
            .map_err(kafka_err("cannot create the Kafka producer"))?;
        self.producer = Some(producer);
        match (self.guarantee, &self.link) {
            (Guarantee::ExactlyOnce, None) => self.start_exactly_once(ctx).await?,
            // A cluster instance: this id's earlier producer is fenced and its open
            // transaction aborted; what it had not committed is read again from the
            // group's committed offsets.
            (Guarantee::ExactlyOnce, Some(_)) => {
                self.blocking("cannot initialise Kafka transactions", |p| {
                    p.init_transactions(TXN_TIMEOUT)
                })
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        let data = batch.user_columns();
        if data.num_rows() == 0 {
            return Ok(());
        }
        if let Some(mut native) = self.native.take() {
            // Encoded straight into the producer's record batches.
            let r = self.encode_into(
                &data,
                &batch,
                &mut Direct {
                    producer: &mut native,
                    now: now_ms(),
                },
            );
            let r = match r {
                Ok(()) => native.send().await,
                Err(e) => Err(e),
            };
            self.native = Some(native);
            return r;
        }
        let mut txn = std::mem::take(&mut self.current);
        let from = txn.recs.len();
        let r = self.encode_into(&data, &batch, &mut txn);
        let r = match r {
            Ok(()) => match self.guarantee {
                Guarantee::ExactlyOnce => self.send_in_txn(&mut txn, from).await,
                _ => {
                    let r = self.produce(&txn, from).await;
                    // Nothing to keep: the records are the producer's now.
                    txn.data.clear();
                    txn.recs.clear();
                    r
                }
            },
            Err(e) => Err(e),
        };
        self.current = txn;
        r
    }

    async fn snapshot(
        &mut self,
        barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        match self.guarantee {
            Guarantee::None => {
                let (w, of) = self.own_writers();
                self.write_watermarks(w, of).await?;
                return Ok(OperatorState::default());
            }
            Guarantee::AtLeastOnce => {
                let (w, of) = self.own_writers();
                self.write_watermarks(w, of).await?;
                self.flush().await?;
                return Ok(OperatorState::default());
            }
            Guarantee::ExactlyOnce => {}
        }
        if let Some(link) = self.link.clone() {
            // A cluster instance: the transaction carries the source's offsets at this
            // barrier, and nothing goes into the checkpoint (the commit is the truth).
            self.barriers += 1;
            let (offsets, watermarks) =
                link.take_with_watermarks(self.barriers).ok_or_else(|| {
                    SluiceError::internal(format!(
                        "the source's offsets at barrier {} did not reach the Kafka sink",
                        self.barriers
                    ))
                })?;
            // Each source partition's own watermark (a partition taken over from another
            // instance starts behind the others).
            let (w, of) = match self.config.watermark_writer {
                Some(_) => self.own_writers(),
                None => link.writers(&watermarks),
            };
            self.write_watermarks(w, of).await?;
            if self.current.sent {
                self.flush().await?;
            }
            let mut txn = std::mem::take(&mut self.current);
            txn.epoch = barrier.epoch;
            txn.offsets = Some((self.barriers, offsets));
            self.precommitted.push_back(txn);
            return Ok(OperatorState::default());
        }
        let (w, of) = self.own_writers();
        self.write_watermarks(w, of).await?;
        if self.current.sent {
            self.flush().await?;
        }
        let mut txn = std::mem::take(&mut self.current);
        if !txn.recs.is_empty() {
            txn.epoch = barrier.epoch;
            self.precommitted.push_back(txn);
        }
        // The records of every pre-committed transaction, so that a restore can
        // produce them again if the commit is lost.
        let mut state = OperatorState::default();
        // A key group of this subtask's own range: restored at the same parallelism,
        // its transactions come back to it, whose own id is fenced before anything else.
        let group = first_key_group(self.subtask, self.parallelism, ctx.max_parallelism) as u32;
        let (mut tags, mut keys, mut values, mut headers) = (
            StringBuilder::new(),
            BinaryBuilder::new(),
            BinaryBuilder::new(),
            BinaryBuilder::new(),
        );
        let (mut parts, mut times) = (Int32Builder::new(), Int64Builder::new());
        let mut n = 0;
        for t in &self.precommitted {
            for r in &t.recs {
                tags.append_value(&t.tag);
                keys.append_option(r.key.map(|(s, e)| &t.data[s..e]));
                values.append_option(r.value.map(|(s, e)| &t.data[s..e]));
                headers.append_value(&t.data[r.headers.0..r.headers.1]);
                parts.append_option(r.partition);
                times.append_option(r.timestamp);
                n += 1;
            }
        }
        let fields = vec![
            Arc::new(Field::new("tag", DataType::Utf8, false)),
            Arc::new(Field::new("key", DataType::Binary, true)),
            Arc::new(Field::new("value", DataType::Binary, true)),
            Arc::new(Field::new("headers", DataType::Binary, false)),
            Arc::new(Field::new("partition", DataType::Int32, true)),
            Arc::new(Field::new("timestamp", DataType::Int64, true)),
        ];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(tags.finish()),
            Arc::new(keys.finish()),
            Arc::new(values.finish()),
            Arc::new(headers.finish()),
            Arc::new(parts.finish()),
            Arc::new(times.finish()),
        ];
        state.push_keyed(
            TXN_TABLE,
            Arc::new(UInt32Array::from(vec![group; n])),
            fields,
            cols,
        )?;
        state.meta = serde_json::to_value(SinkMeta {
            pending: self
                .precommitted
                .iter()
                .map(|t| (t.epoch, t.tag.clone()))
                .collect(),
            transactional_id: self.transactional_id(),
        })
        .map_err(|e| SluiceError::internal(e.to_string()))?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        let mut by_tag: BTreeMap<String, Txn> = BTreeMap::new();
        let mut order: Vec<(u64, String)> = Vec::new();
        for m in state.metas::<SinkMeta>()? {
            order.extend(m.pending);
            if !m.transactional_id.is_empty() {
                self.earlier_ids.push(m.transactional_id);
            }
        }
        self.earlier_ids.sort();
        self.earlier_ids.dedup();
        order.sort();
        for b in state.table(TXN_TABLE) {
            let col = |name: &str| -> Result<&ArrayRef> {
                b.column_by_name(name).ok_or_else(|| {
                    SluiceError::user(format!("the Kafka sink's state has no column `{name}`"))
                })
            };
            let tags = col("tag")?.as_string::<i32>();
            let keys = col("key")?.as_binary::<i32>();
            let values: &BinaryArray = col("value")?.as_binary::<i32>();
            let headers = col("headers")?.as_binary::<i32>();
            let parts: &Int32Array = col("partition")?.as_primitive();
            let times = col("timestamp")?.as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..b.num_rows() {
                let t = by_tag.entry(tags.value(i).to_string()).or_default();
                let key = keys.is_valid(i).then(|| {
                    let s = t.data.len();
                    t.data.extend_from_slice(keys.value(i));
                    (s, t.data.len())
                });
                let value = values.is_valid(i).then(|| {
                    let vs = t.data.len();
                    t.data.extend_from_slice(values.value(i));
                    (vs, t.data.len())
                });
                let hs = t.data.len();
                t.data.extend_from_slice(headers.value(i));
                t.recs.push(Rec {
                    key,
                    value,
                    headers: (hs, t.data.len()),
                    partition: parts.is_valid(i).then(|| parts.value(i)),
                    timestamp: times.is_valid(i).then(|| times.value(i)),
                });
            }
        }
        for (epoch, tag) in order {
            if let Some(mut t) = by_tag.remove(&tag) {
                t.epoch = epoch;
                t.tag = tag;
                self.restored.push(t);
            }
        }
        Ok(())
    }

    async fn commit(&mut self, epoch: u64, ctx: &mut OperatorContext) -> Result<()> {
        if self.guarantee != Guarantee::ExactlyOnce {
            return Ok(());
        }
        while self.precommitted.front().is_some_and(|t| t.epoch <= epoch) {
            let txn = self
                .precommitted
                .pop_front()
                .expect("invariant: checked non-empty");
            match self.link.is_some() {
                true => {
                    let state_bytes = ctx.checkpoints.completed(txn.epoch).map(|r| r.state_bytes);
                    self.commit_with_offsets(txn, state_bytes).await?
                }
                false => self.commit_txn(&txn).await?,
            }
        }
        // Rows held while the transaction waited go into a new one now.
        if self.precommitted.is_empty() && !self.current.sent && !self.current.recs.is_empty() {
            self.open_txn().await?;
            let txn = std::mem::take(&mut self.current);
            let r = self.produce(&txn, 0).await;
            self.current = txn;
            self.current.sent = true;
            r?;
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        if let Some(t) = watermark.event_time() {
            self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
            // With checkpoints it goes out at each barrier (in its transaction).
            if self.config.watermark_records
                && !ctx.checkpointing
                && self.watermark_at.elapsed() >= WRITE_EVERY
            {
                let (w, of) = self.own_writers();
                self.write_watermarks(w, of).await?;
            }
        }
        Ok(Some(watermark))
    }

    async fn on_close(
        &mut self,
        ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        match self.guarantee {
            // The rest is pre-committed with the final checkpoint.
            Guarantee::ExactlyOnce => Ok(()),
            _ => {
                if !ctx.checkpointing {
                    let (w, of) = self.own_writers();
                    self.write_watermarks(w, of).await?;
                }
                self.flush().await
            }
        }
    }
}
