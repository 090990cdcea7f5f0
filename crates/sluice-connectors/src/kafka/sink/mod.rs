//! The Kafka sink: at-least-once (idempotent producer, flushed at every checkpoint) or
//! exactly-once (a Kafka transaction per checkpoint).
//!
//! Exactly-once, with librdkafka, which cannot resume another producer's transaction:
//!
//! ```text
//!  rows ──> open transaction T (records also kept in memory)
//!  barrier n: flush T (pre-commit); T and its records go into checkpoint n
//!  rows while T waits ──> held (not produced) until T commits
//!  checkpoint n complete: write T's commit marker into T, then commit T
//!  restore from n: init_transactions (fences any leftover producer of the same
//!  transactional id and ends its open transaction), read the markers under
//!  read_committed, and produce again, in a new transaction, every pre-committed T of
//!  checkpoint n that did not commit
//! ```
//!
//! The markers (see [`super::txn_log`]) are written inside the transactions they name,
//! so whether a transaction committed is never in doubt: a crash at any moment neither
//! loses nor repeats one. Each subtask's transactional id is
//! `<prefix>-<subtask>-of-<parallelism>`, so after a change of parallelism the new
//! subtasks' ids never meet the old ones; the old ids are fenced on restore.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use sluice_plan::ConnectorSpec;
use sluice_runtime::{Operator, SinkConnector};
use sluice_types::{Batch, Result, RowKind, SluiceError, TaskInfo};

use super::{MetaKey, OPTIONS, Topics, client_properties, message_format, partitions, user_fields};
use crate::codec::{MessageEncoder, MessageFormat};
use crate::options::OptionReader;

mod writer;

use writer::KafkaSinkOperator;

/// How long a transaction call (init, commit, abort) or a flush may take.
pub(crate) const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// Which delivery the sink gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guarantee {
    None,
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Partitioner {
    /// librdkafka's murmur2 of the key (as Kafka's Java client), random without a key.
    Default,
    /// Subtask i writes to partition i mod partitions.
    Fixed,
    RoundRobin,
}

/// Parsed options of a Kafka sink.
pub struct KafkaSinkConfig {
    props: BTreeMap<String, String>,
    topic: String,
    partitions: i32,
    input: SchemaRef,
    value: SchemaRef,
    /// Indices (into the input) of the value columns.
    value_columns: Vec<usize>,
    format: MessageFormat,
    key: Option<(MessageFormat, SchemaRef, Vec<usize>)>,
    key_column: Option<usize>,
    headers_column: Option<usize>,
    timestamp_column: Option<usize>,
    guarantee: Option<Guarantee>,
    txn_prefix: Option<String>,
    partitioner: Partitioner,
    /// `upsert-kafka`: each change keyed by the primary key; `-U` rows are skipped and
    /// `-D` rows become tombstones (a null value).
    upsert: bool,
    /// Flink's `json.*` options (timestamps as written).
    json: crate::format::JsonOptions,
    /// `'sink.watermark-records' = 'true'`: the input's watermark goes into every
    /// partition (see [`super::watermarks`]).
    watermark_records: bool,
    /// `'sink.watermark-records.writer' = 'I/N'`: the job writes its watermark as writer
    /// I of N (several jobs writing one topic, each one writer), not as each of its
    /// subtasks.
    watermark_writer: Option<(u32, u32)>,
}

/// `'sink.watermark-records.writer'`: `I/N` with I < N.
fn watermark_writer(o: &OptionReader<'_>) -> Result<Option<(u32, u32)>> {
    let Some(v) = o.str("sink.watermark-records.writer") else {
        return Ok(None);
    };
    let parsed = v
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse::<u32>().ok()?, n.trim().parse::<u32>().ok()?)))
        .filter(|(i, n)| i < n);
    match parsed {
        Some(w) if o.bool_or("sink.watermark-records", false)? => Ok(Some(w)),
        Some(_) => Err(SluiceError::user(
            "'sink.watermark-records.writer' needs 'sink.watermark-records' = 'true'",
        )),
        None => Err(SluiceError::user(format!(
            "'sink.watermark-records.writer' = '{v}' is not I/N with I < N (this job is writer I of the N that write the topic's watermark records)"
        ))),
    }
}

/// `'connector' = 'kafka'` as a sink.
pub struct KafkaSinkConnector;

/// `'connector' = 'upsert-kafka'`, as Flink's: the changelog of a query as upserts by the
/// table's `PRIMARY KEY` (given to it as `key.fields`). The key columns are the record
/// key (`key.format`), the whole row its value (`value.format`); `+I`/`+U` write the new
/// value, `-D` writes a tombstone, `-U` is skipped when its `+U` follows and is a
/// tombstone when none does ([`upsert_writes`]).
pub struct UpsertKafkaSinkConnector;

/// What an upsert sink writes for one change.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Upsert {
    /// The row, as the key's new value.
    Value,
    /// A null value: the key is deleted.
    Tombstone,
    /// Nothing: a `-U` whose `+U` (or `+I`) for the same key follows in the batch.
    Skip,
}

/// A column as the table declares it: written as an Avro union with null when the
/// table's column is nullable, whatever the query knows of its rows (readers of the table
/// expect the declared form).
fn as_declared(spec: &ConnectorSpec, f: &FieldRef) -> FieldRef {
    let declared = spec
        .schema
        .as_ref()
        .and_then(|s| s.field_with_name(f.name()).ok());
    match declared {
        Some(d) if d.is_nullable() != f.is_nullable() => {
            Arc::new(f.as_ref().clone().with_nullable(d.is_nullable()))
        }
        _ => Arc::clone(f),
    }
}

/// Per change of a batch, what an upsert sink writes: `+I`/`+U` a value, `-D` a
/// tombstone, `-U` nothing when a new value of its key follows in the same batch (an
/// update) and a tombstone when none does (the new value was filtered out: a `HAVING`
/// the group stopped matching). Updates travel as adjacent `-U`/`+U` rows of one batch.
fn upsert_writes(changes: &Batch, keys: &MessageEncoder) -> Vec<Upsert> {
    let n = changes.num_rows();
    let mut out = vec![Upsert::Value; n];
    let kinds: Vec<RowKind> = changes.kinds().collect();
    let mut added_later: std::collections::HashSet<&[u8]> = Default::default();
    for row in (0..n).rev() {
        out[row] = match kinds[row] {
            RowKind::Insert | RowKind::UpdateAfter => {
                added_later.insert(keys.row(row));
                Upsert::Value
            }
            RowKind::UpdateBefore if added_later.contains(keys.row(row)) => Upsert::Skip,
            RowKind::UpdateBefore | RowKind::Delete => Upsert::Tombstone,
        };
    }
    out
}

/// Option keys of the upsert-kafka sink.
const UPSERT_OPTIONS: &[&str] = &[
    "topic",
    "properties.*",
    "key.format",
    "value.format",
    "key.fields",
    "csv.field-delimiter",
    "json.ignore-parse-errors",
    "json.fail-on-missing-field",
    "json.timestamp-format.standard",
    "avro.schema",
    "avro-confluent.url",
    "avro-confluent.subject",
    "sink.delivery-guarantee",
    "sink.transactional-id-prefix",
];

impl SinkConnector for UpsertKafkaSinkConnector {
    type Config = KafkaSinkConfig;

    fn name(&self) -> &'static str {
        "upsert-kafka"
    }

    fn options(&self) -> &'static [&'static str] {
        UPSERT_OPTIONS
    }

    fn accepts_updates(&self, _spec: &ConnectorSpec) -> bool {
        true
    }

    fn parse(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<KafkaSinkConfig> {
        let o = OptionReader::new("upsert-kafka", spec);
        if o.str("key.fields").is_none() {
            return Err(SluiceError::user(
                "an 'upsert-kafka' table needs a PRIMARY KEY (…) NOT ENFORCED: its columns are the record key",
            ));
        }
        for required in ["key.format", "value.format"] {
            o.required(required)?;
        }
        let mut config = KafkaSinkConnector.parse(spec, input)?;
        config.upsert = true;
        Ok(config)
    }

    fn create(&self, config: &Arc<KafkaSinkConfig>, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        KafkaSinkConnector.create(config, task)
    }
}

impl SinkConnector for KafkaSinkConnector {
    type Config = KafkaSinkConfig;

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn options(&self) -> &'static [&'static str] {
        OPTIONS
    }

    fn accepts_updates(&self, spec: &ConnectorSpec) -> bool {
        spec.options
            .get("format")
            .or(spec.options.get("value.format"))
            .map(String::as_str)
            == Some("debezium-json")
    }

    fn parse(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<KafkaSinkConfig> {
        let o = OptionReader::new("kafka", spec);
        for source_only in [
            "topic-pattern",
            "scan.startup.mode",
            "scan.startup.timestamp-millis",
            "scan.startup.specific-offsets",
            "scan.bounded.mode",
            "dead-letter.topic",
            "rows-per-second",
            "scan.watermark-records",
            "scan.partitions",
        ] {
            if o.str(source_only).is_some() {
                return Err(SluiceError::user(format!(
                    "option `{source_only}` is for Kafka sources; this table is written (a sink)"
                )));
            }
        }
        let props = client_properties(spec)?;
        let topic = match Topics::parse(&o)? {
            Topics::Names(n) if n.len() == 1 => n[0].clone(),
            _ => {
                return Err(SluiceError::user("a Kafka sink writes to one `topic`"));
            }
        };
        let format = message_format(&o, Some(&topic))?;
        let user = user_fields(input);
        let mut value_fields = Vec::new();
        let mut value_columns = Vec::new();
        let (mut key_column, mut headers_column, mut timestamp_column) = (None, None, None);
        for (i, f) in user.iter().enumerate() {
            match spec.metadata.get(f.name()) {
                None => {
                    value_columns.push(i);
                    value_fields.push(as_declared(spec, f));
                }
                Some(k) => match MetaKey::for_column(f, k)? {
                    MetaKey::Key => key_column = Some(i),
                    MetaKey::Headers => headers_column = Some(i),
                    MetaKey::Timestamp => timestamp_column = Some(i),
                    _ => {
                        return Err(SluiceError::user(format!(
                            "metadata `{k}` of column `{}` is read-only: a Kafka sink writes `key`, `headers` and `timestamp`",
                            f.name()
                        )));
                    }
                },
            }
        }
        let value = Arc::new(Schema::new(value_fields));
        // Builds an encoder once so that columns the format cannot write fail now
        // (and an avro-confluent schema is registered now).
        MessageEncoder::new(&format, &value)?;
        let key = match o.str("key.fields") {
            None => None,
            Some(fields) => {
                if key_column.is_some() {
                    return Err(SluiceError::user(
                        "a Kafka sink takes its key from `key.fields` or from a `METADATA FROM 'key'` column, not both",
                    ));
                }
                let kformat = match o.str("key.format") {
                    None => {
                        return Err(SluiceError::user(
                            "option `key.fields` needs `key.format` (json, csv, raw, avro)",
                        ));
                    }
                    Some(_) => {
                        let mut kspec = ConnectorSpec::new("kafka");
                        for (k, v) in &spec.options {
                            kspec.options.insert(k.clone(), v.clone());
                        }
                        kspec
                            .options
                            .insert("value.format".into(), o.required("key.format")?.into());
                        message_format(&OptionReader::new("kafka", &kspec), Some(&topic))?
                    }
                };
                let mut idx = Vec::new();
                let mut kf = Vec::new();
                for name in fields.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    let i = user.iter().position(|f| f.name() == name).ok_or_else(|| {
                        SluiceError::user(format!(
                            "option `key.fields` names `{name}`, which is not a column of the table"
                        ))
                    })?;
                    idx.push(i);
                    kf.push(as_declared(spec, &user[i]));
                }
                let kschema = Arc::new(Schema::new(kf));
                MessageEncoder::new(&kformat, &kschema)?;
                Some((kformat, kschema, idx))
            }
        };
        let guarantee = match o.str("sink.delivery-guarantee") {
            None => None,
            Some(_) => Some(
                match o
                    .choice(
                        "sink.delivery-guarantee",
                        &["none", "at-least-once", "exactly-once"],
                        None,
                    )?
                    .as_str()
                {
                    "none" => Guarantee::None,
                    "at-least-once" => Guarantee::AtLeastOnce,
                    _ => Guarantee::ExactlyOnce,
                },
            ),
        };
        let partitioner = match o
            .choice(
                "sink.partitioner",
                &["default", "fixed", "round-robin"],
                Some("default"),
            )?
            .as_str()
        {
            "fixed" => Partitioner::Fixed,
            "round-robin" => Partitioner::RoundRobin,
            _ => Partitioner::Default,
        };
        let n = partitions(&props, &Topics::Names(vec![topic.clone()]))?.len() as i32;
        Ok(KafkaSinkConfig {
            props,
            topic,
            partitions: n,
            input: Arc::clone(input),
            value,
            value_columns,
            format,
            key,
            key_column,
            headers_column,
            timestamp_column,
            guarantee,
            txn_prefix: o.str("sink.transactional-id-prefix").map(str::to_string),
            partitioner,
            upsert: false,
            json: crate::format::JsonOptions::from_options(&o)?,
            watermark_records: o.bool_or("sink.watermark-records", false)?,
            watermark_writer: watermark_writer(&o)?,
        })
    }

    fn create(&self, config: &Arc<KafkaSinkConfig>, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(KafkaSinkOperator::new(config, task)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::RecordBatch;
    use arrow::datatypes::{DataType, Field};

    #[test]
    fn an_upsert_sink_skips_the_before_of_an_update_and_deletes_what_nothing_replaces() {
        use arrow::array::{Int8Array, Int64Array, TimestampMillisecondArray};
        use sluice_types::RowKind::*;
        let rows = [
            (UpdateBefore, 1), // +U follows: skipped
            (UpdateBefore, 2), // nothing follows (filtered out): tombstone
            (UpdateAfter, 1),
            (Insert, 3),
            (Delete, 4),
        ];
        let user = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.1),
            ))],
        )
        .unwrap();
        let batch = Batch::from_changes(
            &user,
            Int8Array::from_iter_values(rows.iter().map(|r| r.0.code())),
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|_| 0)),
            sluice_types::IngestTime::at(0),
        )
        .unwrap();
        let mut keys = MessageEncoder::new(&MessageFormat::Json, &user.schema()).unwrap();
        keys.encode(&user).unwrap();
        assert_eq!(
            upsert_writes(&batch, &keys),
            [
                Upsert::Skip,
                Upsert::Tombstone,
                Upsert::Value,
                Upsert::Value,
                Upsert::Tombstone
            ]
        );
    }
}
