//! The Kafka source: each topic partition is a split; one consumer per subtask reads
//! the partitions assigned to it (no group rebalancing: the job decides who reads what,
//! so positions can be checkpointed and restored exactly).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, SchemaRef};
use rdkafka::consumer::{Consumer, StreamConsumer};

use super::group::{GroupShared, Partition, SourceContext};
use rdkafka::{Offset, TopicPartitionList};
use sluice_plan::ConnectorSpec;
use sluice_runtime::{SourceConnector, SourceReader, Split};
use sluice_types::{Result, SluiceError, TaskInfo};

use super::reader::{KafkaReader, MetaBuilders, MetaWants};
use super::{
    Columns, METADATA_TIMEOUT, MetaKey, OPTIONS, Topics, client_properties, columns, kafka_err,
    message_format, partitions,
};
use crate::codec::{MessageDecoder, MessageFormat};
use crate::options::OptionReader;
use crate::pacer::Pacer;

/// The consumer of a source subtask.
pub(crate) type SourceConsumer = StreamConsumer<SourceContext>;

/// Where a partition without a checkpointed position starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Startup {
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
    pub(crate) props: BTreeMap<String, String>,
    pub(crate) format: MessageFormat,
    pub(crate) columns: Columns,
    pub(crate) startup: Startup,
    /// `scan.bounded.mode = latest-offset`: stop at the end offsets seen at start.
    pub(crate) bounded: bool,
    pub(crate) dead_letter_topic: Option<String>,
    /// Flink's `json.*` options.
    pub(crate) json: crate::format::JsonOptions,
    /// Replay pace (rows per second, shared by the subtasks), for demos and tests.
    pub(crate) rows_per_second: Option<f64>,
    /// `(topic, partition)`, sorted: split i is `partitions[i]`.
    pub(crate) partitions: Vec<(String, i32)>,
    /// An `upsert-kafka` table: records are upserts by key, tombstones deletes.
    pub(crate) upsert: Option<UpsertSource>,
    /// `'scan.partition-assignment' = 'group'`: the subtasks subscribe to the topics and
    /// read what the consumer group assigns them.
    pub(crate) group_assignment: bool,
    /// What the subtasks share in group mode.
    pub(crate) shared: Arc<GroupShared>,
    /// `'scan.watermark-records' = 'true'`: watermarks come from the writers' records
    /// in the topic (see [`super::watermarks`]).
    pub(crate) watermark_records: bool,
    /// What the job reads of the value columns (the JSON decoder passes over the rest).
    pub(crate) reads: sluice_plan::FieldUse,
}

impl KafkaSourceConfig {
    /// The topics a group-mode consumer subscribes to: those it reads (a pattern's
    /// matches as listed at start).
    pub(crate) fn subscription(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.partitions.iter().map(|(t, _)| t.clone()).collect();
        topics.dedup();
        topics
    }
}

/// How an `upsert-kafka` table's records are read: a record's value is its key's new
/// row (`+I`, made a changelog downstream), a tombstone (no value) deletes the key
/// (`-D`, the key columns read from the record key, the others NULL).
#[derive(Clone, Debug)]
pub(crate) struct UpsertSource {
    /// `key.format = 'raw'`: the key is the one key column's text, else a JSON object.
    pub(crate) raw_key: Option<String>,
    /// `value.fields-include = 'EXCEPT_KEY'`: the value holds the other columns only, and
    /// the key's are read from the record key.
    pub(crate) except_key: bool,
}

impl UpsertSource {
    /// The JSON object the decoder reads for a record: its value (with the key's fields
    /// when the value leaves them out), or for a tombstone its key alone. `None` when the
    /// key is missing or unreadable where it is needed.
    pub(crate) fn json_of(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        let key_object = |out: &mut Vec<u8>| -> bool {
            let Some(k) = key else { return false };
            match &self.raw_key {
                None => {
                    out.extend_from_slice(k);
                    true
                }
                Some(column) => match std::str::from_utf8(k) {
                    Ok(text) => {
                        let object = serde_json::json!({ column.as_str(): text });
                        out.extend_from_slice(object.to_string().as_bytes());
                        true
                    }
                    Err(_) => false,
                },
            }
        };
        match (value, self.except_key) {
            (Some(v), false) => {
                out.extend_from_slice(v);
                true
            }
            (None, _) => key_object(out),
            (Some(v), true) => {
                // `{"k": 1}` and `{"v": 2}` make `{"k": 1, "v": 2}`, without parsing.
                if !key_object(out) {
                    return false;
                }
                let trimmed = |b: &[u8]| -> (usize, usize) {
                    let s = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(0);
                    let e = b
                        .iter()
                        .rposition(|c| !c.is_ascii_whitespace())
                        .map_or(0, |e| e + 1);
                    (s, e)
                };
                let (ks, ke) = trimmed(out);
                let (vs, ve) = trimmed(v);
                if ke <= ks || out[ke - 1] != b'}' || ve <= vs || v[vs] != b'{' {
                    return false;
                }
                let value_body = &v[vs + 1..ve];
                let key_empty = out[ks + 1..ke - 1].iter().all(u8::is_ascii_whitespace);
                let value_empty = value_body[..value_body.len().saturating_sub(1)]
                    .iter()
                    .all(u8::is_ascii_whitespace);
                out.truncate(ke - 1);
                if !key_empty && !value_empty {
                    out.push(b',');
                }
                out.extend_from_slice(value_body);
                true
            }
        }
    }
}

/// `'connector' = 'upsert-kafka'` as a source (Flink's): the topic as a table whose rows
/// are each key's last value. The planner puts a changelog-normalize step keyed by the
/// `PRIMARY KEY` after it, so what comes out takes back what a later record replaces.
pub struct UpsertKafkaSourceConnector;

/// Option keys of the upsert-kafka source.
const UPSERT_SOURCE_OPTIONS: &[&str] = &[
    "topic",
    "properties.*",
    "key.format",
    "value.format",
    "key.fields",
    "key.fields-prefix",
    "value.fields-include",
    "json.ignore-parse-errors",
    "json.fail-on-missing-field",
    "json.timestamp-format.standard",
    "scan.bounded.mode",
    "rows-per-second",
    "dead-letter.topic",
];

impl SourceConnector for UpsertKafkaSourceConnector {
    type Config = KafkaSourceConfig;

    fn name(&self) -> &'static str {
        "upsert-kafka"
    }

    fn options(&self) -> &'static [&'static str] {
        UPSERT_SOURCE_OPTIONS
    }

    fn parse(&self, spec: &ConnectorSpec) -> Result<KafkaSourceConfig> {
        let o = OptionReader::new("upsert-kafka", spec);
        let keys: Vec<String> = o
            .str("key.fields")
            .ok_or_else(|| {
                SluiceError::user(
                    "an 'upsert-kafka' table needs a PRIMARY KEY (…) NOT ENFORCED: its columns are the record key",
                )
            })?
            .split(';')
            .map(str::to_string)
            .collect();
        if o.str("key.fields-prefix").is_some() {
            return Err(SluiceError::user(
                "'key.fields-prefix' is not supported yet: name the key columns as the key's fields",
            ));
        }
        if o.required("value.format")? != "json" {
            return Err(SluiceError::user(
                "an 'upsert-kafka' table is read with 'value.format' = 'json' (other formats are not supported yet for reading)",
            ));
        }
        let columns = columns(spec, "source")?;
        let raw_key = match o.choice("key.format", &["json", "raw"], None)?.as_str() {
            "raw" => {
                let [k] = keys.as_slice() else {
                    return Err(SluiceError::user(
                        "'key.format' = 'raw' holds one column: the PRIMARY KEY must be one STRING column",
                    ));
                };
                Some(k.clone())
            }
            _ => None,
        };
        for k in &keys {
            match columns.all.field_with_name(k) {
                Ok(f) if spec.metadata.contains_key(k) => {
                    return Err(SluiceError::user(format!(
                        "the key column `{}` is read from the record key, not from metadata",
                        f.name()
                    )));
                }
                Ok(f) if raw_key.is_some() && f.data_type() != &DataType::Utf8 => {
                    return Err(SluiceError::user(format!(
                        "'key.format' = 'raw': the key column `{k}` must be a STRING"
                    )));
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(SluiceError::user(format!(
                        "the PRIMARY KEY names `{k}`, which is not a column"
                    )));
                }
            }
        }
        if columns
            .layout
            .iter()
            .any(|l| matches!(l, Err(MetaKey::Key | MetaKey::Op)))
        {
            return Err(SluiceError::user(
                "an 'upsert-kafka' table reads its key into its PRIMARY KEY columns; metadata `key` and `value.op` are not available",
            ));
        }
        let except_key =
            o.choice("value.fields-include", &["ALL", "EXCEPT_KEY"], Some("ALL"))? == "EXCEPT_KEY";
        let props = client_properties(spec)?;
        let topics = Topics::parse(&o)?;
        let format = message_format(&o, None)?;
        MessageDecoder::new(&format, std::sync::Arc::clone(&columns.value))?;
        let (bounded, rows_per_second) = end_and_pace(&o, "upsert-kafka")?;
        let partitions = partitions(&props, &topics)?;
        Ok(KafkaSourceConfig {
            reads: spec.reads.clone(),
            rows_per_second,
            props,
            format,
            // Each row with its kind: an upsert or a delete.
            columns: columns.with_row_kinds(),
            // A key's current row is its last record: the topic is read from the start.
            startup: Startup::Earliest,
            bounded,
            dead_letter_topic: o.str("dead-letter.topic").map(str::to_string),
            json: {
                let json = crate::format::JsonOptions::from_options(&o)?;
                if json.fail_on_missing_field {
                    return Err(SluiceError::user(
                        "'json.fail-on-missing-field' = 'true' on an upsert-kafka table is not supported yet (a tombstone has no value fields)",
                    ));
                }
                json
            },
            partitions,
            upsert: Some(UpsertSource {
                raw_key,
                except_key,
            }),
            group_assignment: false,
            watermark_records: false,
            shared: Arc::default(),
        })
    }

    fn schema(&self, config: &KafkaSourceConfig) -> Result<SchemaRef> {
        KafkaSourceConnector.schema(config)
    }

    fn splits(&self, config: &KafkaSourceConfig, parallelism: usize) -> Result<Vec<Split>> {
        KafkaSourceConnector.splits(config, parallelism)
    }

    fn reader(
        &self,
        config: &Arc<KafkaSourceConfig>,
        splits: Vec<Split>,
        task: &TaskInfo,
    ) -> Result<Box<dyn SourceReader>> {
        KafkaSourceConnector.reader(config, splits, task)
    }
}

/// `'connector' = 'kafka'` as a source.
pub struct KafkaSourceConnector;

/// Where a read ends (`scan.bounded.mode = 'latest-offset'`: at the end offsets seen at
/// start) and its pace (`rows-per-second`), as both Kafka sources take them.
fn end_and_pace(o: &OptionReader<'_>, connector: &str) -> Result<(bool, Option<f64>)> {
    let bounded = o.choice(
        "scan.bounded.mode",
        &["unbounded", "latest-offset"],
        Some("unbounded"),
    )? == "latest-offset";
    let rows_per_second: Option<f64> = o.parse("rows-per-second")?;
    if rows_per_second.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(SluiceError::user(format!(
            "{connector} option `rows-per-second` must be a positive number"
        )));
    }
    Ok((bounded, rows_per_second))
}

pub(crate) fn parse_specific(s: &str) -> Result<HashMap<i32, i64>> {
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
            "sink.watermark-records",
            "sink.watermark-records.writer",
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
        // Debezium's changes are a changelog: each row comes with its kind.
        let columns = match format {
            MessageFormat::DebeziumJson { .. } => columns.with_row_kinds(),
            _ => columns,
        };
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
        let (bounded, rows_per_second) = end_and_pace(&o, "kafka")?;
        let group_assignment =
            o.choice("scan.partition-assignment", &["job", "group"], Some("job"))? == "group";
        if group_assignment && bounded {
            return Err(SluiceError::user(
                "'scan.partition-assignment' = 'group' reads what the consumer group assigns, which has no end: it cannot be combined with 'scan.bounded.mode'",
            ));
        }
        if group_assignment
            && let Some(s) = props.get("partition.assignment.strategy")
            && s.trim() != "cooperative-sticky"
        {
            return Err(SluiceError::user(format!(
                "'scan.partition-assignment' = 'group' moves partitions one by one, which needs 'properties.partition.assignment.strategy' = 'cooperative-sticky' (the default here) or 'properties.group.protocol' = 'consumer', not `{s}`"
            )));
        }
        let mut partitions = partitions(&props, &topics)?;
        if let Some(only) = o.str("scan.partitions") {
            // Some partitions alone (the keyed part of a cluster job reads one).
            let wanted = only
                .split(',')
                .map(|p| p.trim().parse::<i32>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    SluiceError::user(format!(
                        "option `scan.partitions` is `{only}`; expected partition numbers, e.g. '0,3'"
                    ))
                })?;
            if group_assignment {
                return Err(SluiceError::user(
                    "option `scan.partitions` names the partitions to read; 'scan.partition-assignment' = 'group' lets the group choose them: not both",
                ));
            }
            if let Some(p) = wanted
                .iter()
                .find(|p| !partitions.iter().any(|(_, q)| q == *p))
            {
                return Err(SluiceError::user(format!(
                    "option `scan.partitions` names partition {p}, which the topic does not have"
                )));
            }
            partitions.retain(|(_, p)| wanted.contains(p));
        }
        Ok(KafkaSourceConfig {
            reads: spec.reads.clone(),
            rows_per_second,
            props,
            format,
            columns,
            startup,
            bounded,
            dead_letter_topic: o.str("dead-letter.topic").map(str::to_string),
            json: crate::format::JsonOptions::from_options(&o)?,
            partitions,
            upsert: None,
            group_assignment,
            shared: Arc::default(),
            watermark_records: o.bool_or("scan.watermark-records", false)?,
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

    fn shares_splits(&self, config: &KafkaSourceConfig) -> bool {
        config.group_assignment
    }

    fn reader(
        &self,
        config: &Arc<KafkaSourceConfig>,
        splits: Vec<Split>,
        task: &TaskInfo,
    ) -> Result<Box<dyn SourceReader>> {
        let decoder = MessageDecoder::new(&config.format, Arc::clone(&config.columns.value))?
            .reading(&config.reads);
        let parts = splits
            .iter()
            .map(|s| config.partitions[s.index].clone())
            .collect();
        Ok(Box::new(KafkaReader {
            parts,
            group_read: None,
            batches: None,
            fetcher: None,
            out_of_range: Default::default(),
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
            link: None,
            passed: Default::default(),
            split_watermarks: Default::default(),
            watermarks: Vec::new(),
        }))
    }
}

/// The offset a checkpoint recorded for a partition.
pub(crate) fn position_offset(pos: &serde_json::Value, t: &str, p: i32) -> Result<i64> {
    pos.get("offset").and_then(|o| o.as_i64()).ok_or_else(|| {
        SluiceError::user(format!(
            "the checkpoint's position of Kafka partition {t}/{p} is not an offset: {pos}"
        ))
    })
}

/// Where partitions without a checkpointed position start, from the startup mode: a
/// number for every mode, so that positions are exact from the first checkpoint on.
/// `committed_first` (a cluster instance): the group's committed offset wherever there
/// is one, the startup mode elsewhere. Blocking (metadata requests).
pub(crate) fn start_offsets(
    config: &KafkaSourceConfig,
    parts: &[Partition],
    group: &str,
    consumer: &SourceConsumer,
    committed_first: bool,
) -> Result<HashMap<Partition, i64>> {
    let mut out = HashMap::with_capacity(parts.len());
    if parts.is_empty() {
        return Ok(out);
    }
    let mut committed = HashMap::new();
    let mut by_time = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
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
    if committed_first || config.startup == Startup::Group {
        // With `isolation.level` read_committed (the default), an offset a transaction
        // is committing is waited for (Kafka's stable offsets).
        let c = consumer
            .committed_offsets(tpl.clone(), METADATA_TIMEOUT)
            .map_err(kafka_err(format!(
                "cannot read the committed offsets of group `{group}`"
            )))?;
        for e in c.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed.insert((e.topic().to_string(), e.partition()), o);
            }
        }
    }
    if let Startup::Timestamp(_) = &config.startup {
        let c = consumer
            .offsets_for_times(tpl, METADATA_TIMEOUT)
            .map_err(kafka_err("cannot look up offsets by timestamp"))?;
        for e in c.elements() {
            if let Offset::Offset(o) = e.offset() {
                by_time.insert((e.topic().to_string(), e.partition()), o);
            }
        }
    }
    let latest_on_reset = config
        .props
        .get("auto.offset.reset")
        .is_some_and(|r| matches!(r.as_str(), "latest" | "largest" | "end"));
    for key in parts {
        let (t, p) = key;
        let (low, high) = consumer
            .fetch_watermarks(t, *p, METADATA_TIMEOUT)
            .map_err(kafka_err(format!("cannot read the offsets of {t}/{p}")))?;
        let o = match &config.startup {
            _ if committed_first && committed.contains_key(key) => committed[key],
            Startup::Earliest => low,
            Startup::Latest => high,
            Startup::Group => match committed.get(key) {
                Some(&o) => o,
                None if latest_on_reset => high,
                None => low,
            },
            // No record at or after the time: start at the end.
            Startup::Timestamp(_) => by_time.get(key).copied().unwrap_or(high),
            Startup::Specific(m) => m.get(p).copied().unwrap_or(low),
        };
        out.insert(key.clone(), o.clamp(low, high));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::UpsertSource;

    /// What following the consumer group cannot be combined with is refused before any
    /// broker is asked anything.
    #[test]
    fn group_assignment_refuses_an_end_and_eager_assignors() {
        use sluice_runtime::SourceConnector;
        let spec = |extra: &[(&str, &str)]| {
            let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
                "id",
                arrow::datatypes::DataType::Int64,
                true,
            )]);
            let mut s = sluice_plan::ConnectorSpec::new("kafka")
                .with_option("topic", "t")
                .with_option("properties.bootstrap.servers", "127.0.0.1:1")
                .with_option("format", "json")
                .with_option("scan.partition-assignment", "group");
            for (k, v) in extra {
                s = s.with_option(*k, *v);
            }
            s.schema = Some(std::sync::Arc::new(schema));
            s
        };
        let err = |extra: &[(&str, &str)]| match super::KafkaSourceConnector.parse(&spec(extra)) {
            Ok(_) => panic!("accepted {extra:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err(&[("scan.bounded.mode", "latest-offset")])
                .contains("cannot be combined with 'scan.bounded.mode'")
        );
        assert!(
            err(&[("properties.partition.assignment.strategy", "range")])
                .contains("cooperative-sticky")
        );
        assert!(
            err(&[("scan.partition-assignment", "everyone")]).contains("scan.partition-assignment")
        );
    }

    fn read(u: &UpsertSource, key: Option<&str>, value: Option<&str>) -> Option<String> {
        let mut out = Vec::new();
        u.json_of(key.map(str::as_bytes), value.map(str::as_bytes), &mut out)
            .then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn upsert_records_are_read_as_one_json_object() {
        let all = UpsertSource {
            raw_key: None,
            except_key: false,
        };
        // A value is the row; a tombstone is its key alone; no key, no delete.
        assert_eq!(
            read(&all, Some(r#"{"k":1}"#), Some(r#"{"k":1,"v":2}"#)).unwrap(),
            r#"{"k":1,"v":2}"#
        );
        assert_eq!(read(&all, Some(r#"{"k":1}"#), None).unwrap(), r#"{"k":1}"#);
        assert_eq!(read(&all, None, None), None);
        let except = UpsertSource {
            raw_key: None,
            except_key: true,
        };
        assert_eq!(
            read(&except, Some(r#" {"k": 1} "#), Some(r#"{"v": 2} "#)).unwrap(),
            r#" {"k": 1,"v": 2}"#
        );
        assert_eq!(
            read(&except, Some("{}"), Some(r#"{"v":2}"#)).unwrap(),
            r#"{"v":2}"#
        );
        assert_eq!(
            read(&except, Some(r#"{"k":1}"#), Some("{}")).unwrap(),
            r#"{"k":1}"#
        );
        assert_eq!(read(&except, Some("not json"), Some(r#"{"v":2}"#)), None);
        let raw = UpsertSource {
            raw_key: Some("id".into()),
            except_key: true,
        };
        assert_eq!(
            read(&raw, Some("a\"b"), Some(r#"{"v":2}"#)).unwrap(),
            r#"{"id":"a\"b","v":2}"#
        );
    }
}
