//! Kafka, the first-class connector (through librdkafka).
//!
//! ```text
//!  source: topic partitions = splits ──assign──> one consumer per subtask
//!          offsets ──> checkpoints (exact) and the consumer group (for Kafka tooling)
//!          payload ──codec──> rows; metadata columns (key, partition, offset, …)
//!          undecodable ──> dead-letter topic (or the job's dead-letter output)
//!  sink:   rows ──codec──> messages; key from columns; headers
//!          at-least-once: idempotent producer, flushed at every checkpoint
//!          exactly-once: a transaction per checkpoint, committed when it completes
//! ```
//!
//! Options follow Flink's Kafka connector (`topic`, `properties.*`, `format`,
//! `scan.startup.mode`, `sink.delivery-guarantee`, …); every `properties.*` key is handed
//! to librdkafka as it is.

pub mod admin;
// librdkafka's C API, for reading fetched records a batch at a time.
#[allow(unsafe_code)]
mod batch;
mod client;
mod fetcher;
mod follow;
mod group;
mod link;
pub mod mark;
mod producer;
mod reader;
mod sink;
mod source;
pub mod tasks;
mod txn_log;
mod watermarks;
// CRC-32C with the CPU's instruction.
#[allow(unsafe_code)]
mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_plan::ConnectorSpec;
use sluice_types::{Result, SluiceError};

pub use sink::{KafkaSinkConnector, UpsertKafkaSinkConnector};
pub use source::{KafkaSourceConnector, UpsertKafkaSourceConnector};

use crate::codec::MessageFormat;
use crate::options::OptionReader;
use crate::registry::SchemaRegistry;

/// How long metadata requests made at start-up may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Option keys of the Kafka connector (source and sink).
const OPTIONS: &[&str] = &[
    "topic",
    "topic-pattern",
    "properties.*",
    "format",
    "value.format",
    "csv.field-delimiter",
    "avro.schema",
    "avro-confluent.url",
    "avro-confluent.subject",
    "debezium-json.schema-include",
    "json.ignore-parse-errors",
    "json.fail-on-missing-field",
    "json.timestamp-format.standard",
    "key.format",
    "key.fields",
    "scan.startup.mode",
    "scan.startup.timestamp-millis",
    "scan.startup.specific-offsets",
    "scan.bounded.mode",
    "scan.partition-assignment",
    "scan.watermark-records",
    "scan.partitions",
    "dead-letter.topic",
    "rows-per-second",
    "sink.delivery-guarantee",
    "sink.transactional-id-prefix",
    "sink.partitioner",
    "sink.watermark-records",
    "sink.watermark-records.writer",
];

/// The librdkafka properties a job may set (`properties.*`): where the brokers are, how
/// to authenticate, and client tuning. Nothing that loads code (`plugin.library.paths`,
/// `ssl.engine.location`, `ssl.providers`), runs a command (`sasl.kerberos.kinit.cmd`)
/// or writes files; the files a property names (`ssl.*.location`, `sasl.kerberos.keytab`)
/// are checked against the server's sandbox like every other path.
const ALLOWED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "client.id",
    "client.rack",
    "group.id",
    "group.instance.id",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.kerberos.service.name",
    "sasl.kerberos.principal",
    "sasl.kerberos.keytab",
    "sasl.kerberos.min.time.before.relogin",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.scope",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.oauthbearer.extensions",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.keystore.location",
    "ssl.keystore.password",
    "ssl.crl.location",
    "ssl.cipher.suites",
    "ssl.curves.list",
    "ssl.sigalgs.list",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "acks",
    "request.required.acks",
    "compression.type",
    "compression.codec",
    "compression.level",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "batch.num.messages",
    "batch.size",
    "message.max.bytes",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "request.timeout.ms",
    "transaction.timeout.ms",
    "enable.idempotence",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "retries",
    "message.send.max.retries",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
    "sticky.partitioning.linger.ms",
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.queue.backoff.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "receive.message.max.bytes",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "group.protocol",
    "group.remote.assignor",
    "isolation.level",
    "auto.offset.reset",
    "check.crcs",
    "allow.auto.create.topics",
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "socket.connection.setup.timeout.ms",
    "connections.max.idle.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "topic.metadata.refresh.sparse",
    "api.version.request",
    "api.version.request.timeout.ms",
    "broker.version.fallback",
    "broker.address.family",
    "client.dns.lookup",
    "statistics.interval.ms",
    "log.connection.close",
    "debug",
];

/// librdkafka properties, from the `properties.*` options: only those a job may set.
fn client_properties(spec: &ConnectorSpec) -> Result<BTreeMap<String, String>> {
    let props: BTreeMap<String, String> = spec
        .options
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("properties.")?.to_string(), v.clone())))
        .collect();
    if let Some(k) = props
        .keys()
        .find(|k| !ALLOWED_PROPERTIES.contains(&k.as_str()))
    {
        return Err(SluiceError::user(format!(
            "option `properties.{k}` is not a Kafka client property a job may set: jobs may set connection, authentication and tuning properties, nothing that loads code, runs commands or names files outside the server's sandbox; allowed: {}",
            ALLOWED_PROPERTIES.join(", ")
        )));
    }
    if !props.contains_key("bootstrap.servers") {
        return Err(SluiceError::user(
            "connector `kafka` needs the option `properties.bootstrap.servers` (host:port of a broker)",
        ));
    }
    Ok(props)
}

fn client_config(props: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in props {
        c.set(k, v);
    }
    c
}

fn kafka_err(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> SluiceError {
    let what = what.into();
    move |e| SluiceError::external(what).with_source(e)
}

/// The message format and its options (shared by source and sink).
fn message_format(o: &OptionReader<'_>, topic: Option<&str>) -> Result<MessageFormat> {
    let key = if o.str("value.format").is_some() {
        "value.format"
    } else {
        "format"
    };
    let name = o.choice(
        key,
        &[
            "json",
            "csv",
            "raw",
            "avro",
            "avro-confluent",
            "debezium-json",
        ],
        None,
    )?;
    Ok(match name.as_str() {
        "json" => MessageFormat::Json,
        "csv" => MessageFormat::Csv {
            delimiter: crate::format::csv_delimiter(o)?,
        },
        "raw" => MessageFormat::Raw,
        "avro" => MessageFormat::Avro {
            schema: o.str("avro.schema").map(str::to_string),
        },
        "avro-confluent" => {
            let url = o.required("avro-confluent.url")?;
            let subject = match (o.str("avro-confluent.subject"), topic) {
                (Some(s), _) => s.to_string(),
                (None, Some(t)) => format!("{t}-value"),
                (None, None) => "sluice-value".to_string(),
            };
            MessageFormat::AvroConfluent {
                registry: Arc::new(SchemaRegistry::new(url)?),
                subject,
            }
        }
        _ => MessageFormat::DebeziumJson {
            schema_include: o.bool_or("debezium-json.schema-include", false)?,
        },
    })
}

/// What a metadata column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetaKey {
    Topic,
    Partition,
    Offset,
    Timestamp,
    TimestampType,
    Key,
    Headers,
    /// Debezium's `op` (`c`, `r`, `u`, `d`).
    Op,
    /// Each row's kind in a changelog source (`debezium-json`): the `_rowkind` column
    /// the runtime carries, not a declared column.
    RowKind,
}

impl MetaKey {
    const ALL: &[(&str, MetaKey)] = &[
        ("topic", MetaKey::Topic),
        ("partition", MetaKey::Partition),
        ("offset", MetaKey::Offset),
        ("timestamp", MetaKey::Timestamp),
        ("timestamp-type", MetaKey::TimestampType),
        ("key", MetaKey::Key),
        ("headers", MetaKey::Headers),
        ("value.op", MetaKey::Op),
    ];

    fn parse(key: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                SluiceError::user(format!(
                    "connector `kafka` has no metadata `{key}`; it has: {}",
                    Self::ALL
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// The metadata `key` read into (or written from) column `f`, checked against its type.
    fn for_column(f: &Field, key: &str) -> Result<Self> {
        let m = Self::parse(key)?;
        if !m.accepts(f.data_type()) {
            return Err(SluiceError::user(format!(
                "metadata column `{}` has type {}, which cannot hold Kafka's `{key}`",
                f.name(),
                f.data_type()
            )));
        }
        Ok(m)
    }

    /// Whether a declared column type can hold this metadata.
    fn accepts(self, t: &DataType) -> bool {
        match self {
            MetaKey::Topic | MetaKey::TimestampType | MetaKey::Op => t == &DataType::Utf8,
            MetaKey::RowKind => t == &DataType::Int8,
            MetaKey::Partition => matches!(t, DataType::Int32 | DataType::Int64),
            MetaKey::Offset => t == &DataType::Int64,
            MetaKey::Timestamp => matches!(t, DataType::Timestamp(_, _) | DataType::Int64),
            MetaKey::Key => matches!(t, DataType::Binary | DataType::Utf8),
            MetaKey::Headers => match t {
                DataType::Map(entries, _) => match entries.data_type() {
                    DataType::Struct(f) => {
                        f.len() == 2
                            && f[0].data_type() == &DataType::Utf8
                            && f[1].data_type() == &DataType::Binary
                    }
                    _ => false,
                },
                _ => false,
            },
        }
    }
}

/// A table's columns split into the value's and the metadata's.
#[derive(Clone, Debug)]
pub(crate) struct Columns {
    /// Every declared column, in order.
    all: SchemaRef,
    /// The columns decoded from (or encoded into) the message value.
    value: SchemaRef,
    /// For each declared column: `Ok(i)` = value column i, `Err(m)` = metadata m.
    layout: Vec<std::result::Result<usize, MetaKey>>,
}

fn columns(spec: &ConnectorSpec, what: &str) -> Result<Columns> {
    let all = spec.schema.clone().ok_or_else(|| {
        SluiceError::user(format!(
            "a Kafka {what} needs its columns declared: CREATE TABLE t (col TYPE, …) WITH ('connector' = 'kafka', …)"
        ))
    })?;
    for col in spec.metadata.keys() {
        if all.index_of(col).is_err() {
            return Err(SluiceError::user(format!(
                "metadata column `{col}` is not a column of the table"
            )));
        }
    }
    let mut value = Vec::new();
    let mut layout = Vec::new();
    for f in all.fields() {
        match spec.metadata.get(f.name()) {
            Some(key) => {
                layout.push(Err(MetaKey::for_column(f, key)?));
            }
            None => {
                layout.push(Ok(value.len()));
                value.push(Arc::clone(f));
            }
        }
    }
    Ok(Columns {
        all,
        value: Arc::new(Schema::new(value)),
        layout,
    })
}

impl Columns {
    /// The columns of a changelog source: the declared ones, then each row's kind.
    pub(crate) fn with_row_kinds(mut self) -> Self {
        let mut fields = self.all.fields().to_vec();
        fields.push(Arc::new(sluice_types::row_kind_field()));
        self.all = Arc::new(Schema::new(fields));
        self.layout.push(Err(MetaKey::RowKind));
        self
    }
}

/// The partitions of the topics a source reads, sorted: `(topic, partition)`.
fn partitions(props: &BTreeMap<String, String>, topics: &Topics) -> Result<Vec<(String, i32)>> {
    let consumer: BaseConsumer = client_config(props)
        .create()
        .map_err(kafka_err("cannot create a Kafka client"))?;
    let md = consumer
        .fetch_metadata(
            match topics {
                Topics::Names(n) if n.len() == 1 => Some(n[0].as_str()),
                _ => None,
            },
            METADATA_TIMEOUT,
        )
        .map_err(kafka_err(format!(
            "cannot read topic metadata from {}",
            props.get("bootstrap.servers").map_or("", String::as_str)
        )))?;
    let mut out = Vec::new();
    for t in md.topics() {
        if !topics.matches(t.name()) {
            continue;
        }
        if let Some(e) = t.error() {
            return Err(SluiceError::user(format!(
                "topic `{}` cannot be read: {:?}",
                t.name(),
                e
            )));
        }
        for p in t.partitions() {
            out.push((t.name().to_string(), p.id()));
        }
    }
    if let Topics::Names(names) = topics {
        for n in names {
            if !out.iter().any(|(t, _)| t == n) {
                return Err(SluiceError::user(format!("topic `{n}` does not exist")));
            }
        }
    }
    if out.is_empty() {
        return Err(SluiceError::user(format!("no topic matches {topics:?}")));
    }
    out.sort();
    Ok(out)
}

/// Which topics a source reads.
#[derive(Clone, Debug)]
enum Topics {
    Names(Vec<String>),
    Pattern(regex::Regex),
}

impl Topics {
    fn parse(o: &OptionReader<'_>) -> Result<Self> {
        match (o.str("topic"), o.str("topic-pattern")) {
            (Some(t), None) => Ok(Topics::Names(
                t.split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            )),
            (None, Some(p)) => regex::Regex::new(&format!("^(?:{p})$"))
                .map(Topics::Pattern)
                .map_err(|e| {
                    SluiceError::user(format!(
                        "option `topic-pattern` is not a regular expression: {e}"
                    ))
                }),
            (Some(_), Some(_)) => Err(SluiceError::user(
                "connector `kafka` takes `topic` or `topic-pattern`, not both",
            )),
            (None, None) => Err(SluiceError::user(
                "connector `kafka` needs the option `topic` (or `topic-pattern` for a source)",
            )),
        }
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            Topics::Names(n) => n.iter().any(|t| t == topic),
            Topics::Pattern(p) => p.is_match(topic),
        }
    }
}

/// The field list of a schema without its row-kind and event-time columns (what a sink
/// writes).
fn user_fields(schema: &SchemaRef) -> Vec<Arc<Field>> {
    schema.fields()[..sluice_types::user_column_count(schema)].to_vec()
}

#[cfg(test)]
mod property_tests {
    use super::*;

    #[test]
    fn jobs_set_only_allowed_client_properties() {
        let spec = |k: &str, v: &str| {
            ConnectorSpec::new("kafka")
                .with_option("properties.bootstrap.servers", "127.0.0.1:9092")
                .with_option(k, v)
        };
        let ok = client_properties(&spec("properties.ssl.ca.location", "ca.pem")).unwrap();
        assert_eq!(ok["ssl.ca.location"], "ca.pem");
        for (k, v) in [
            ("properties.plugin.library.paths", "/tmp/evil.so"),
            ("properties.sasl.kerberos.kinit.cmd", "touch /tmp/pwned"),
            ("properties.ssl.engine.location", "/tmp/engine.so"),
        ] {
            let e = client_properties(&spec(k, v)).unwrap_err();
            assert!(
                e.message.contains(&format!(
                    "`{k}` is not a Kafka client property a job may set"
                )),
                "{e}"
            );
        }
    }
}
