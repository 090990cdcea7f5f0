//! The Kafka source: each topic partition is a split; one consumer per subtask reads
//! the partitions assigned to it (no group rebalancing: the job decides who reads what,
//! so positions can be checkpointed and restored exactly).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Array, Int64Builder, MapBuilder, MapFieldNames,
    RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_plan::ConnectorSpec;
use sluice_runtime::dead_letter::DeadLetter;
use sluice_runtime::{
    OperatorContext, ReadResult, SourceConnector, SourceReader, Split, SplitPosition,
};
use sluice_types::{Result, SluiceError, TaskInfo};

use super::{
    Columns, METADATA_TIMEOUT, MetaKey, OPTIONS, Topics, client_config, client_properties, columns,
    kafka_err, message_format, partitions,
};
use crate::codec::{Decoded, MessageDecoder, MessageFormat};
use crate::options::OptionReader;
use crate::pacer::Pacer;

/// Where a partition without a checkpointed position starts.
#[derive(Clone, Debug, PartialEq)]
enum Startup {
    Earliest,
    Latest,
    /// The consumer group's committed offsets (earliest where it has none, unless
    /// `properties.auto.offset.reset` says otherwise).
    Group,
    /// The first record at or after this time (epoch ms).
    Timestamp(i64),
    /// Given offsets per partition; earliest for the others.
    Specific(HashMap<i32, i64>),
}

/// Parsed options of a Kafka source.
pub struct KafkaSourceConfig {
    props: BTreeMap<String, String>,
    format: MessageFormat,
    columns: Columns,
    startup: Startup,
    /// `scan.bounded.mode = latest-offset`: stop at the end offsets seen at start.
    bounded: bool,
    dead_letter_topic: Option<String>,
    /// Replay pace (rows per second, shared by the subtasks), for demos and tests.
    rows_per_second: Option<f64>,
    /// `(topic, partition)`, sorted: split i is `partitions[i]`.
    partitions: Vec<(String, i32)>,
}

/// `'connector' = 'kafka'` as a source.
pub struct KafkaSourceConnector;

fn parse_specific(s: &str) -> Result<HashMap<i32, i64>> {
    let bad = || {
        SluiceError::user(format!(
            "option `scan.startup.specific-offsets` is `{s}`; expected 'partition:0,offset:42;partition:1,offset:300'"
        ))
    };
    let mut out = HashMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (p, o) = part.split_once(',').ok_or_else(bad)?;
        let p = p.trim().strip_prefix("partition:").ok_or_else(bad)?;
        let o = o.trim().strip_prefix("offset:").ok_or_else(bad)?;
        out.insert(
            p.trim().parse().map_err(|_| bad())?,
            o.trim().parse().map_err(|_| bad())?,
        );
    }
    Ok(out)
}

impl SourceConnector for KafkaSourceConnector {
    type Config = KafkaSourceConfig;

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn options(&self) -> &'static [&'static str] {
        OPTIONS
    }

    fn parse(&self, spec: &ConnectorSpec) -> Result<KafkaSourceConfig> {
        let o = OptionReader::new("kafka", spec);
        for sink_only in [
            "sink.delivery-guarantee",
            "sink.transactional-id-prefix",
            "sink.partitioner",
            "key.fields",
            "key.format",
        ] {
            if o.str(sink_only).is_some() {
                return Err(SluiceError::user(format!(
                    "option `{sink_only}` is for Kafka sinks; this table is read (a source). Read the key with a column `k BYTES METADATA FROM 'key'`"
                )));
            }
        }
        let props = client_properties(spec)?;
        let topics = Topics::parse(&o)?;
        let first_topic = match &topics {
            Topics::Names(n) => n.first().map(String::as_str),
            Topics::Pattern(_) => None,
        };
        let format = message_format(&o, first_topic)?;
        let columns = columns(spec, "source")?;
        if columns.value.fields().is_empty() {
            return Err(SluiceError::user(
                "a Kafka source needs at least one column read from the message value",
            ));
        }
        if !matches!(format, MessageFormat::DebeziumJson { .. })
            && columns.layout.contains(&Err(MetaKey::Op))
        {
            return Err(SluiceError::user(
                "metadata `value.op` needs 'format' = 'debezium-json'",
            ));
        }
        // Builds a decoder once so that a schema the format cannot read fails now.
        MessageDecoder::new(&format, std::sync::Arc::clone(&columns.value))?;
        let startup = match o
            .choice(
                "scan.startup.mode",
                &[
                    "earliest-offset",
                    "latest-offset",
                    "group-offsets",
                    "timestamp",
                    "specific-offsets",
                ],
                Some("group-offsets"),
            )?
            .as_str()
        {
            "earliest-offset" => Startup::Earliest,
            "latest-offset" => Startup::Latest,
            "group-offsets" => Startup::Group,
            "timestamp" => {
                Startup::Timestamp(o.parse("scan.startup.timestamp-millis")?.ok_or_else(|| {
                    SluiceError::user(
                        "'scan.startup.mode' = 'timestamp' needs 'scan.startup.timestamp-millis'",
                    )
                })?)
            }
            _ => Startup::Specific(parse_specific(
                o.required("scan.startup.specific-offsets")?,
            )?),
        };
        let bounded = o.choice(
            "scan.bounded.mode",
            &["unbounded", "latest-offset"],
            Some("unbounded"),
        )? == "latest-offset";
        let rows_per_second: Option<f64> = o.parse("rows-per-second")?;
        if rows_per_second.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err(SluiceError::user(
                "kafka option `rows-per-second` must be a positive number",
            ));
        }
        let partitions = partitions(&props, &topics)?;
        Ok(KafkaSourceConfig {
            rows_per_second,
            props,
            format,
            columns,
            startup,
            bounded,
            dead_letter_topic: o.str("dead-letter.topic").map(str::to_string),
            partitions,
        })
    }

    fn schema(&self, config: &KafkaSourceConfig) -> Result<SchemaRef> {
        Ok(Arc::clone(&config.columns.all))
    }

    fn splits(&self, config: &KafkaSourceConfig, _parallelism: usize) -> Result<Vec<Split>> {
        Ok(config
            .partitions
            .iter()
            .enumerate()
            .map(|(i, (t, p))| Split::new(format!("{t}/{p}"), i))
            .collect())
    }

    fn reader(
        &self,
        config: &Arc<KafkaSourceConfig>,
        splits: Vec<Split>,
        task: &TaskInfo,
    ) -> Result<Box<dyn SourceReader>> {
        let decoder = MessageDecoder::new(&config.format, Arc::clone(&config.columns.value))?;
        Ok(Box::new(KafkaReader {
            config: Arc::clone(config),
            group: config
                .props
                .get("group.id")
                .cloned()
                .unwrap_or_else(|| format!("sluice-{}", task.job)),
            splits,
            consumer: None,
            wants: MetaWants::of(&config.columns),
            next: Vec::new(),
            end: Vec::new(),
            ended: Vec::new(),
            queue: VecDeque::new(),
            stash: None,
            decoder,
            meta: MetaBuilders::default(),
            dead_letters: None,
            last_commit: Instant::now(),
            highs: Arc::default(),
            last_lag_probe: None,
            last_transient_warn: None,
            key_is_text: config
                .columns
                .all
                .fields()
                .iter()
                .zip(&config.columns.layout)
                .any(|(f, l)| *l == Err(MetaKey::Key) && f.data_type() == &DataType::Utf8),
            bad_keys: Vec::new(),
            pacer: config
                .rows_per_second
                .map(|r| Pacer::new(r / task.parallelism as f64)),
            last_complete: None,
        }))
    }
}

/// Resolves where each split starts: a number for every mode, so that positions are
/// exact from the first checkpoint on. Blocking (metadata requests).
fn start_offsets(
    config: &KafkaSourceConfig,
    splits: &[Split],
    group: &str,
    consumer: &StreamConsumer,
) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(splits.len());
    let mut committed = HashMap::new();
    let mut by_time = HashMap::new();
    let unresolved: Vec<&Split> = splits.iter().filter(|s| s.position.is_none()).collect();
    if !unresolved.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for s in &unresolved {
            let (t, p) = &config.partitions[s.index];
            match &config.startup {
                Startup::Timestamp(ts) => {
                    tpl.add_partition_offset(t, *p, Offset::Offset(*ts))
                        .map_err(kafka_err("bad partition"))?;
                }
                _ => {
                    tpl.add_partition(t, *p);
                }
            }
        }
        match &config.startup {
            Startup::Group => {
                let c = consumer
                    .committed_offsets(tpl, METADATA_TIMEOUT)
                    .map_err(kafka_err(format!(
                        "cannot read the committed offsets of group `{}`",
                        group
                    )))?;
                for e in c.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        committed.insert((e.topic().to_string(), e.partition()), o);
                    }
                }
            }
            Startup::Timestamp(_) => {
                let c = consumer
                    .offsets_for_times(tpl, METADATA_TIMEOUT)
                    .map_err(kafka_err("cannot look up offsets by timestamp"))?;
                for e in c.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        by_time.insert((e.topic().to_string(), e.partition()), o);
                    }
                }
            }
            _ => {}
        }
    }
    let latest_on_reset = config
        .props
        .get("auto.offset.reset")
        .is_some_and(|r| matches!(r.as_str(), "latest" | "largest" | "end"));
    for s in splits {
        let (t, p) = &config.partitions[s.index];
        if let Some(pos) = &s.position {
            let o = pos.get("offset").and_then(|o| o.as_i64()).ok_or_else(|| {
                SluiceError::user(format!(
                    "the checkpoint's position of Kafka partition {t}/{p} is not an offset: {pos}"
                ))
            })?;
            out.push(o);
            continue;
        }
        let (low, high) = consumer
            .fetch_watermarks(t, *p, METADATA_TIMEOUT)
            .map_err(kafka_err(format!("cannot read the offsets of {t}/{p}")))?;
        let key = (t.clone(), *p);
        let o = match &config.startup {
            Startup::Earliest => low,
            Startup::Latest => high,
            Startup::Group => match committed.get(&key) {
                Some(&o) => o,
                None if latest_on_reset => high,
                None => low,
            },
            // No record at or after the time: start at the end.
            Startup::Timestamp(_) => by_time.get(&key).copied().unwrap_or(high),
            Startup::Specific(m) => m.get(p).copied().unwrap_or(low),
        };
        out.push(o.clamp(low, high));
    }
    Ok(out)
}

/// Headers of a message, owned.
type OwnedHeaderList = Vec<(String, Option<Vec<u8>>)>;

/// A message held over to the next read (it belongs to another partition).
struct OwnedMessage {
    split: usize,
    offset: i64,
    timestamp: Option<i64>,
    timestamp_type: &'static str,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: OwnedHeaderList,
}

/// Which metadata a table reads, beyond offsets (kept for dead-letter positions).
#[derive(Clone, Copy)]
struct MetaWants {
    timestamps: bool,
    keys: bool,
    headers: bool,
}

impl MetaWants {
    fn of(columns: &Columns) -> Self {
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
struct MetaBuilders {
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    timestamp_types: Vec<&'static str>,
    keys: Vec<Option<Vec<u8>>>,
    headers: Vec<OwnedHeaderList>,
}

impl MetaBuilders {
    fn clear(&mut self) {
        self.offsets.clear();
        self.timestamps.clear();
        self.timestamp_types.clear();
        self.keys.clear();
        self.headers.clear();
    }
}

/// Reads the partitions assigned to one subtask.
pub struct KafkaReader {
    config: Arc<KafkaSourceConfig>,
    group: String,
    splits: Vec<Split>,
    consumer: Option<Arc<StreamConsumer>>,
    /// Which message metadata the table's columns read.
    wants: MetaWants,
    /// Per split: the next offset to read.
    next: Vec<i64>,
    /// Per split, when bounded: the offset to stop at.
    end: Vec<i64>,
    ended: Vec<bool>,
    /// What to return before reading on: empty batches announcing splits, split ends.
    queue: VecDeque<ReadResult>,
    stash: Option<OwnedMessage>,
    decoder: MessageDecoder,
    meta: MetaBuilders,
    dead_letters: Option<ThreadedProducer<DefaultProducerContext>>,
    last_commit: Instant,
    /// The splits' end offsets as last probed (for the lag gauge), and when.
    highs: Arc<std::sync::Mutex<Vec<i64>>>,
    last_lag_probe: Option<Instant>,
    last_transient_warn: Option<Instant>,
    /// Whether the key is read into a STRING column (and must be UTF-8).
    key_is_text: bool,
    /// Messages of the current chunk whose key could not be read.
    bad_keys: Vec<DeadLetter>,
    pacer: Option<Pacer>,
    /// Positions of the last completed checkpoint (committed again, synchronously, at
    /// the end).
    last_complete: Option<Vec<(usize, i64)>>,
}

/// Without checkpoints, offsets are committed to the group this often.
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// The end offsets are probed this often for the consumer-lag gauge.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Consumer errors that say the brokers are (for now) unreachable; librdkafka keeps
/// reconnecting.
fn transient(e: &rdkafka::error::KafkaError) -> bool {
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
const TRANSIENT_WARN_EVERY: Duration = Duration::from_secs(10);

impl KafkaReader {
    fn warn_transient(&mut self, e: &rdkafka::error::KafkaError) {
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
    fn update_lag(&mut self, consumer: &Arc<StreamConsumer>, ctx: &OperatorContext) {
        {
            let highs = self.highs.lock().unwrap_or_else(|p| p.into_inner());
            if highs.len() == self.next.len() && !highs.is_empty() {
                let lag: i64 = highs
                    .iter()
                    .zip(&self.next)
                    .map(|(h, n)| (h - n).max(0))
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
        let parts: Vec<(String, i32)> = self
            .splits
            .iter()
            .map(|s| self.config.partitions[s.index].clone())
            .collect();
        let (c, highs) = (Arc::clone(consumer), Arc::clone(&self.highs));
        tokio::task::spawn_blocking(move || {
            let probed: Option<Vec<i64>> = parts
                .iter()
                .map(|(t, p)| c.fetch_watermarks(t, *p, LAG_INTERVAL).ok().map(|w| w.1))
                .collect();
            if let Some(p) = probed {
                *highs.lock().unwrap_or_else(|p| p.into_inner()) = p;
            }
        });
    }

    fn split_of(&self, topic: &str, partition: i32) -> Option<usize> {
        // A few partitions per subtask: a scan, no key allocated per message.
        self.splits.iter().position(|s| {
            let (t, p) = &self.config.partitions[s.index];
            *p == partition && t == topic
        })
    }

    /// Takes one message into the chunk.
    fn take(&mut self, split: usize, m: &MessageView<'_>) {
        self.next[split] = m.offset + 1;
        let Some(payload) = m.payload else {
            // A tombstone (null value) carries no row.
            return;
        };
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

    fn past_end(&self, split: usize, offset: i64) -> bool {
        self.config.bounded && offset >= self.end[split]
    }

    fn check_end(&mut self, split: usize) {
        if self.config.bounded && !self.ended[split] && self.next[split] >= self.end[split] {
            self.ended[split] = true;
            self.queue
                .push_back(ReadResult::SplitEnd(self.splits[split].index));
        }
    }

    /// Turns the chunk into a batch of the table's columns.
    fn finish_chunk(&mut self, split: usize, ctx: &mut OperatorContext) -> Result<ReadResult> {
        let (topic, partition) = self.config.partitions[self.splits[split].index].clone();
        let offsets = std::mem::take(&mut self.meta.offsets);
        let mut dead = std::mem::take(&mut self.bad_keys);
        let decoded = self.decoder.finish(
            &|i| format!("{topic}/{partition}@{}", offsets[i]),
            &mut dead,
        )?;
        self.meta.offsets = offsets;
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

    fn assemble(&mut self, topic: &str, partition: i32, d: Decoded) -> Result<RecordBatch> {
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

    fn meta_array(
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
            MetaKey::Op => return Err(SluiceError::internal("op is not a message's metadata")),
        })
    }

    fn dead_letter(
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

    fn offsets_list(&self, positions: &[(usize, i64)]) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for &(split, o) in positions {
            let (t, p) = &self.config.partitions[self.splits[split].index];
            tpl.add_partition_offset(t, *p, Offset::Offset(o))
                .map_err(kafka_err("bad partition"))?;
        }
        Ok(tpl)
    }

    fn commit_offsets(&self, positions: &[(usize, i64)], mode: CommitMode) {
        let Some(c) = &self.consumer else { return };
        let Ok(tpl) = self.offsets_list(positions) else {
            return;
        };
        if let Err(e) = c.commit(&tpl, mode) {
            tracing::warn!(error = %e, group = %self.group, "cannot commit offsets to the consumer group (progress shown by Kafka tools lags; checkpoints are unaffected)");
        }
    }
}

/// The parts of a message the reader uses, borrowed or held over.
struct MessageView<'a> {
    offset: i64,
    timestamp: Option<i64>,
    timestamp_type: &'static str,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    raw_headers: Option<&'a rdkafka::message::BorrowedHeaders>,
    owned_headers: Option<&'a OwnedHeaderList>,
}

impl MessageView<'_> {
    fn headers(&self) -> OwnedHeaderList {
        if let Some(h) = self.owned_headers {
            return h.clone();
        }
        match self.raw_headers {
            Some(h) => h
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect(),
            None => Vec::new(),
        }
    }
}

fn timestamp_of(m: &BorrowedMessage<'_>) -> (Option<i64>, &'static str) {
    match m.timestamp() {
        rdkafka::Timestamp::CreateTime(t) if t >= 0 => (Some(t), "CreateTime"),
        rdkafka::Timestamp::LogAppendTime(t) if t >= 0 => (Some(t), "LogAppendTime"),
        _ => (None, "NoTimestampType"),
    }
}

fn view<'a>(m: &'a BorrowedMessage<'a>) -> MessageView<'a> {
    let (timestamp, timestamp_type) = timestamp_of(m);
    MessageView {
        offset: m.offset(),
        timestamp,
        timestamp_type,
        key: m.key(),
        payload: m.payload(),
        raw_headers: m.headers(),
        owned_headers: None,
    }
}

#[async_trait]
impl SourceReader for KafkaReader {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let mut cfg = client_config(&self.config.props);
        cfg.set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer = cfg
            .create()
            .map_err(kafka_err("cannot create the Kafka consumer"))?;
        let consumer = Arc::new(consumer);
        let (config, splits, group, c) = (
            Arc::clone(&self.config),
            self.splits.clone(),
            self.group.clone(),
            Arc::clone(&consumer),
        );
        let (starts, ends) = tokio::task::spawn_blocking(move || -> Result<_> {
            let starts = start_offsets(&config, &splits, &group, &c)?;
            let mut ends = Vec::new();
            if config.bounded {
                for s in &splits {
                    let (t, p) = &config.partitions[s.index];
                    let (_, high) = c
                        .fetch_watermarks(t, *p, METADATA_TIMEOUT)
                        .map_err(kafka_err(format!("cannot read the end offset of {t}/{p}")))?;
                    ends.push(high);
                }
            }
            Ok((starts, ends))
        })
        .await
        .map_err(|e| SluiceError::internal(e.to_string()))??;
        self.end = ends;
        let mut tpl = TopicPartitionList::new();
        for (i, s) in self.splits.iter().enumerate() {
            let (t, p) = &self.config.partitions[s.index];
            tpl.add_partition_offset(t, *p, Offset::Offset(starts[i]))
                .map_err(kafka_err("bad partition"))?;
        }
        consumer
            .assign(&tpl)
            .map_err(kafka_err("cannot assign partitions"))?;
        self.next = starts;
        self.ended = vec![false; self.splits.len()];
        for s in &self.splits {
            self.queue.push_back(ReadResult::Batch {
                split: s.index,
                rows: RecordBatch::new_empty(Arc::clone(&self.config.columns.all)),
            });
        }
        for i in 0..self.splits.len() {
            self.check_end(i);
        }
        if let Some(_dlq) = &self.config.dead_letter_topic {
            let p: ThreadedProducer<DefaultProducerContext> = client_config(&self.config.props)
                .create()
                .map_err(kafka_err("cannot create the dead-letter producer"))?;
            self.dead_letters = Some(p);
        }
        self.consumer = Some(consumer);
        tracing::info!(
            operator = %ctx.task.operator_name,
            subtask = ctx.task.subtask,
            group = %self.group,
            partitions = ?self.splits.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            "reading Kafka"
        );
        Ok(())
    }

    async fn read(&mut self, max_rows: usize, ctx: &mut OperatorContext) -> Result<ReadResult> {
        if let Some(r) = self.queue.pop_front() {
            return Ok(r);
        }
        if self.splits.is_empty() || (self.config.bounded && self.ended.iter().all(|&e| e)) {
            return match self.splits.is_empty() && !self.config.bounded {
                // A subtask without partitions waits forever (an unbounded source).
                true => std::future::pending().await,
                false => Ok(ReadResult::End),
            };
        }
        if !ctx.checkpointing && self.last_commit.elapsed() >= COMMIT_INTERVAL {
            self.last_commit = Instant::now();
            let pos: Vec<(usize, i64)> = self.next.iter().copied().enumerate().collect();
            self.commit_offsets(&pos, CommitMode::Async);
        }
        // A handle of our own: the read may be cancelled at its await (cancel-safe).
        let consumer = Arc::clone(
            self.consumer
                .as_ref()
                .ok_or_else(|| SluiceError::internal("the Kafka reader was not opened"))?,
        );
        self.update_lag(&consumer, ctx);
        self.read_chunk(&consumer, max_rows, ctx).await
    }

    fn positions(&self) -> Result<Vec<SplitPosition>> {
        if let Some(p) = &self.dead_letters {
            // Dead letters of records a checkpoint covers are kept before it completes.
            p.flush(METADATA_TIMEOUT)
                .map_err(kafka_err("cannot flush dead letters"))?;
        }
        Ok(self
            .splits
            .iter()
            .zip(&self.next)
            .map(|(s, &o)| SplitPosition {
                split: s.id.clone(),
                position: serde_json::json!({ "offset": o }),
            })
            .collect())
    }

    fn checkpoint_complete(&mut self, positions: &[SplitPosition]) -> Result<()> {
        let pos: Vec<(usize, i64)> = positions
            .iter()
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
        if let Some(p) = &self.dead_letters {
            p.flush(METADATA_TIMEOUT)
                .map_err(kafka_err("cannot flush dead letters"))?;
        }
        // The group's offsets end where the job's output ends: the last completed
        // checkpoint, or (without checkpoints) everything read.
        let last = match (ctx.checkpointing, self.last_complete.take()) {
            (true, last) => last,
            (false, _) => Some(self.next.iter().copied().enumerate().collect()),
        };
        if let (Some(pos), Some(c)) = (last, &self.consumer) {
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
    async fn read_chunk(
        &mut self,
        consumer: &StreamConsumer,
        max_rows: usize,
        ctx: &mut OperatorContext,
    ) -> Result<ReadResult> {
        let max_rows = match self.pacer.as_mut() {
            Some(p) => max_rows.min(p.due().await as usize),
            None => max_rows,
        };
        // The first message: held over, or awaited (the only await: cancel-safe).
        let split = match self.stash.take() {
            Some(m) => {
                let v = MessageView {
                    offset: m.offset,
                    timestamp: m.timestamp,
                    timestamp_type: m.timestamp_type,
                    key: m.key.as_deref(),
                    payload: m.payload.as_deref(),
                    raw_headers: None,
                    owned_headers: Some(&m.headers),
                };
                self.accept(m.split, &v);
                m.split
            }
            None => loop {
                let msg = match consumer.recv().await {
                    Ok(m) => m,
                    // The broker is away: librdkafka reconnects by itself; wait for it
                    // rather than failing the job over a blip.
                    Err(e) if transient(&e) => {
                        self.warn_transient(&e);
                        continue;
                    }
                    Err(e) => return Err(kafka_err("reading Kafka failed")(e)),
                };
                let Some(split) = self.split_of(msg.topic(), msg.partition()) else {
                    continue;
                };
                if self.past_end(split, msg.offset()) {
                    self.check_end(split);
                    if let Some(r) = self.queue.pop_front() {
                        return Ok(r);
                    }
                    continue;
                }
                let v = view(&msg);
                self.accept(split, &v);
                break split;
            },
        };
        // More of the same partition, as long as they are already here.
        while self.decoder.len() < max_rows && !self.ended[split] {
            let Some(msg) = consumer.recv().now_or_never() else {
                break;
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) if transient(&e) => {
                    self.warn_transient(&e);
                    break;
                }
                Err(e) => return Err(kafka_err("reading Kafka failed")(e)),
            };
            let Some(s) = self.split_of(msg.topic(), msg.partition()) else {
                continue;
            };
            if self.past_end(s, msg.offset()) {
                self.check_end(s);
                continue;
            }
            if s != split {
                let (timestamp, timestamp_type) = timestamp_of(&msg);
                self.stash = Some(OwnedMessage {
                    split: s,
                    offset: msg.offset(),
                    timestamp,
                    timestamp_type,
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().map(<[u8]>::to_vec),
                    headers: view(&msg).headers(),
                });
                break;
            }
            let v = view(&msg);
            self.accept(split, &v);
        }
        self.check_end(split);
        if let Some(p) = self.pacer.as_mut() {
            p.emitted(self.decoder.len().max(1) as u64);
        }
        self.finish_chunk(split, ctx)
    }

    /// Takes a message, or sends it to the dead letters if its key cannot be read.
    fn accept(&mut self, split: usize, m: &MessageView<'_>) {
        if self.key_is_text
            && let Some(k) = m.key
            && std::str::from_utf8(k).is_err()
        {
            self.next[split] = m.offset + 1;
            let (t, p) = &self.config.partitions[self.splits[split].index];
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
