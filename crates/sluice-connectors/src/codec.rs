//! Message formats: how one message (a Kafka value or key) becomes a row and back.
//!
//! ```text
//!  messages ──push──> one buffer (framed per format) ──finish──> one RecordBatch
//!                                   │ a chunk that fails is re-decoded message by
//!                                   └─ message: only the bad ones go to the dead letters
//!  RecordBatch ──encode──> one buffer + row offsets ──row(i)──> one payload per row
//! ```
//!
//! Decoding is columnar per chunk (arrow's JSON, CSV and Avro decoders); the slow path
//! only runs for chunks that hold a bad message. JSON and CSV share their decoders with
//! the file connector ([`Format`]).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, RecordBatch, StringArray, StringBuilder,
    StructArray, UInt32Array,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow_avro::reader::ReaderBuilder as AvroReaderBuilder;
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use arrow_avro::writer::format::AvroSoeFormat;
use arrow_avro::writer::{Encoder as AvroEncoder, WriterBuilder as AvroWriterBuilder};
use sluice_runtime::dead_letter::DeadLetter;
use sluice_types::{Result, SluiceError};

use crate::format::Format;
use crate::registry::SchemaRegistry;

/// The Confluent wire format's magic byte: `0x00`, then a 4-byte big-endian schema id.
const CONFLUENT_MAGIC: u8 = 0;

/// How message payloads are encoded.
#[derive(Clone, Debug)]
pub enum MessageFormat {
    /// One JSON object per message.
    Json,
    /// One CSV record per message.
    Csv {
        /// Field delimiter.
        delimiter: u8,
    },
    /// The payload itself, as one `BYTES` or `STRING` column.
    Raw,
    /// Avro binary (no framing); the schema is derived from the table's columns, or given.
    Avro {
        /// The Avro schema (JSON).
        schema: Option<String>,
    },
    /// Avro in the Confluent wire format (`0x00`, 4-byte schema id, body), with the
    /// writer's schemas fetched from a schema registry by id.
    AvroConfluent {
        /// The schema registry.
        registry: Arc<SchemaRegistry>,
        /// Subject a sink registers its schema under (default `<topic>-value`).
        subject: String,
    },
    /// Debezium's change envelope (`before`, `after`, `op`) as JSON.
    DebeziumJson {
        /// Whether each message wraps the envelope as `{"schema": …, "payload": …}`.
        schema_include: bool,
    },
}

impl MessageFormat {
    /// The format's name as written in `'format'`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Csv { .. } => "csv",
            Self::Raw => "raw",
            Self::Avro { .. } => "avro",
            Self::AvroConfluent { .. } => "avro-confluent",
            Self::DebeziumJson { .. } => "debezium-json",
        }
    }
}

/// What a chunk of messages decoded to.
pub struct Decoded {
    /// One row per good message, in the value schema.
    pub rows: RecordBatch,
    /// Which messages (indices into the chunk) the rows come from; `None`: all of them.
    pub kept: Option<UInt32Array>,
    /// Debezium's `op` per row (`c`, `r`, `u`, `d`).
    pub ops: Option<ArrayRef>,
    /// Debezium: each row's kind (an update is two rows, `-U` and `+U`).
    pub kinds: Option<arrow::array::Int8Array>,
}

/// Decodes chunks of messages of one format into batches of one schema.
pub struct MessageDecoder {
    format: MessageFormat,
    schema: SchemaRef,
    buf: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    state: DecoderState,
}

enum DecoderState {
    /// JSON: one arrow decoder kept across chunks (building one allocates and zeroes
    /// its buffers), with the rows it has room for; dropped after an error.
    Json(
        Option<(arrow::json::reader::Decoder, usize)>,
        Option<crate::fast_json::FastJson>,
    ),
    Text(Format),
    Raw {
        binary: bool,
    },
    Avro(Box<AvroDecoding>),
    Debezium {
        envelope: SchemaRef,
        json: Format,
    },
}

/// Avro decoding: a store of writer schemas by id and the table's schema as the reader
/// schema, so that writers' schemas resolve to the table's columns.
struct AvroDecoding {
    store: SchemaStore,
    reader: AvroSchema,
    decoder: arrow_avro::reader::Decoder,
    /// Plain Avro has no framing: each body gets a local prefix for id 0.
    framed: bool,
    registry: Option<Arc<SchemaRegistry>>,
}

impl AvroDecoding {
    /// Decoding into `schema`, with `writer` (default: the table's own Avro schema)
    /// stored under `id`; a registry means Confluent framing on the wire, none a local
    /// prefix added to each plain body.
    fn state(
        schema: &Schema,
        id: u32,
        writer: Option<AvroSchema>,
        registry: Option<Arc<SchemaRegistry>>,
    ) -> Result<DecoderState> {
        let reader = value_fields(schema)?;
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        store
            .set(
                Fingerprint::Id(id),
                writer.unwrap_or_else(|| reader.clone()),
            )
            .map_err(|e| SluiceError::user("bad Avro schema").with_source(e))?;
        let decoder = Self::build(&store, &reader)?;
        Ok(DecoderState::Avro(Box::new(Self {
            store,
            reader,
            decoder,
            framed: registry.is_some(),
            registry,
        })))
    }

    fn build(store: &SchemaStore, reader: &AvroSchema) -> Result<arrow_avro::reader::Decoder> {
        AvroReaderBuilder::new()
            .with_writer_schema_store(store.clone())
            .with_reader_schema(reader.clone())
            .with_batch_size(1 << 20)
            .build_decoder()
            .map_err(|e| SluiceError::user("cannot build the Avro decoder").with_source(e))
    }

    fn rebuild(&mut self) -> Result<()> {
        self.decoder = Self::build(&self.store, &self.reader)?;
        Ok(())
    }

    /// Makes sure every schema id in the chunk is known, fetching new ones.
    fn learn_ids(&mut self, buf: &[u8], ranges: &[(usize, usize)]) -> Result<()> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        let mut learned = false;
        for &(s, e) in ranges {
            let m = &buf[s..e];
            if m.len() < 5 || m[0] != CONFLUENT_MAGIC {
                continue;
            }
            let id = u32::from_be_bytes([m[1], m[2], m[3], m[4]]);
            let fp = Fingerprint::Id(id);
            if self.store.lookup(&fp).is_some() {
                continue;
            }
            // An id the registry does not know is a bad message, not a failed job.
            if let Ok(schema) = registry.schema_by_id(id) {
                self.store.set(fp, AvroSchema::new(schema)).map_err(|e| {
                    SluiceError::user("bad schema from the registry").with_source(e)
                })?;
                learned = true;
            }
        }
        if learned {
            self.rebuild()?;
        }
        Ok(())
    }
}

fn value_fields(schema: &Schema) -> Result<AvroSchema> {
    AvroSchema::try_from(schema).map_err(|e| {
        SluiceError::user("the table's columns have no Avro equivalent").with_source(e)
    })
}

impl MessageDecoder {
    /// Builds only what `reads` names of JSON values' columns and nested fields (see
    /// [`crate::fast_json`]); the others come out null.
    pub fn reading(mut self, reads: &sluice_plan::FieldUse) -> Self {
        if let DecoderState::Json(_, fast) = &mut self.state {
            *fast = crate::fast_json::FastJson::reading(&self.schema, reads);
        }
        self
    }

    /// A decoder of `format` into `schema` (the value columns).
    pub fn new(format: &MessageFormat, schema: SchemaRef) -> Result<Self> {
        let state = match format {
            MessageFormat::Json => {
                DecoderState::Json(None, crate::fast_json::FastJson::new(&schema))
            }
            MessageFormat::Csv { delimiter } => DecoderState::Text(Format::Csv {
                delimiter: *delimiter,
                header: false,
            }),
            MessageFormat::Raw => {
                let binary = raw_column(&schema)?;
                DecoderState::Raw { binary }
            }
            MessageFormat::Avro { schema: given } => AvroDecoding::state(
                &schema,
                0,
                given.as_ref().map(|s| AvroSchema::new(s.clone())),
                None,
            )?,
            // The decoder needs one schema to start with: the table's own.
            MessageFormat::AvroConfluent { registry, .. } => {
                AvroDecoding::state(&schema, u32::MAX, None, Some(Arc::clone(registry)))?
            }
            MessageFormat::DebeziumJson { schema_include } => {
                let image = DataType::Struct(schema.fields().clone());
                let envelope = Fields::from(vec![
                    Field::new("before", image.clone(), true),
                    Field::new("after", image, true),
                    Field::new("op", DataType::Utf8, true),
                ]);
                let envelope = match schema_include {
                    false => Schema::new(envelope),
                    true => Schema::new(vec![Field::new(
                        "payload",
                        DataType::Struct(envelope),
                        true,
                    )]),
                };
                DecoderState::Debezium {
                    envelope: Arc::new(envelope),
                    json: Format::Json,
                }
            }
        };
        Ok(Self {
            format: format.clone(),
            schema,
            buf: Vec::with_capacity(1 << 16),
            ranges: Vec::new(),
            state,
        })
    }

    /// The value schema rows are decoded into.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Messages pushed since the last [`MessageDecoder::finish`].
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no message was pushed since the last finish.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds one message's payload to the chunk.
    pub fn push(&mut self, payload: &[u8]) {
        if let DecoderState::Avro(a) = &self.state
            && !a.framed
        {
            self.buf.extend_from_slice(&[CONFLUENT_MAGIC, 0, 0, 0, 0]);
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(payload);
        let end = self.buf.len();
        if matches!(
            self.state,
            DecoderState::Json(..) | DecoderState::Text(_) | DecoderState::Debezium { .. }
        ) {
            self.buf.push(b'\n');
        }
        self.ranges.push((start, end));
    }

    /// Decodes the chunk pushed so far. Bad messages become dead letters (positions from
    /// `position(i)` for message i); the chunk is then empty again.
    ///
    /// With `json.fail_on_missing_field` and a JSON value format, a message that lacks a
    /// field of the schema fails the chunk (and the job).
    pub fn finish_checked(
        &mut self,
        json: &crate::format::JsonOptions,
        position: &dyn Fn(usize) -> String,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Option<Decoded>> {
        if matches!(self.format, MessageFormat::Json)
            && let Err(e) = json.check_fields(&self.schema, &self.buf, &self.ranges, position)
        {
            self.buf.clear();
            self.ranges.clear();
            return Err(e);
        }
        self.finish(position, dead)
    }

    /// Decodes the chunk of messages pushed since the last call (bad ones go to `dead` at
    /// `position(i)` for message i); the chunk is then empty again.
    pub fn finish(
        &mut self,
        position: &dyn Fn(usize) -> String,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Option<Decoded>> {
        if self.ranges.is_empty() {
            return Ok(None);
        }
        let r = self.decode_chunk(position, dead);
        self.buf.clear();
        self.ranges.clear();
        r
    }

    fn decode_chunk(
        &mut self,
        position: &dyn Fn(usize) -> String,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Option<Decoded>> {
        let n = self.ranges.len();
        // The fast path: the whole chunk at once.
        if let Ok(d) = self.decode_range(0, n) {
            return Ok(Some(d));
        }
        // One message at a time, keeping the good ones.
        let mut good: Vec<RecordBatch> = Vec::new();
        let mut ops: Vec<ArrayRef> = Vec::new();
        let mut kinds: Vec<i8> = Vec::new();
        let mut kept = Vec::new();
        for i in 0..n {
            match self.decode_range(i, i + 1) {
                Ok(d) => {
                    // A Debezium update is two rows of one message.
                    kept.extend(std::iter::repeat_n(i as u32, d.rows.num_rows()));
                    good.push(d.rows);
                    ops.extend(d.ops);
                    kinds.extend(d.kinds.iter().flat_map(|k| k.values().iter().copied()));
                }
                Err(e) => {
                    let (s, end) = self.ranges[i];
                    dead.push(DeadLetter {
                        position: position(i),
                        error: format!("cannot decode {}: {e}", self.format.name()),
                        raw: String::from_utf8_lossy(&self.buf[s..end]).into_owned(),
                    });
                }
            }
        }
        if good.is_empty() {
            return Ok(None);
        }
        let ops = match ops.is_empty() {
            true => None,
            false => {
                let refs: Vec<&dyn Array> = ops.iter().map(|a| a.as_ref()).collect();
                Some(arrow::compute::concat(&refs)?)
            }
        };
        let kinds = (!kinds.is_empty()).then(|| arrow::array::Int8Array::from(kinds));
        Ok(Some(Decoded {
            rows: concat_batches(&self.schema, &good)?,
            kept: Some(UInt32Array::from(kept)),
            ops,
            kinds,
        }))
    }

    /// Decodes messages `from..to` of the chunk: exactly one row each, or an error.
    fn decode_range(&mut self, from: usize, to: usize) -> std::result::Result<Decoded, String> {
        let rows = to - from;
        let start = self.ranges[from].0;
        let end = self.ranges[to - 1].1;
        match &mut self.state {
            DecoderState::Json(cached, fast) => {
                let bytes = &self.buf[start..end];
                if let Some(rows) = fast.as_ref().and_then(|f| f.decode(bytes, rows)) {
                    return Ok(Decoded {
                        rows,
                        kept: None,
                        ops: None,
                        kinds: None,
                    });
                }
                let r = decode_json(&self.schema, cached, bytes, rows);
                if r.is_err() {
                    *cached = None;
                }
                Ok(Decoded {
                    rows: r?,
                    kept: None,
                    ops: None,
                    kinds: None,
                })
            }
            DecoderState::Text(format) => {
                let b = format
                    .decode_exact(
                        &self.schema,
                        &sluice_plan::FieldUse::All,
                        &self.buf[start..end],
                        rows,
                    )
                    .map_err(|e| e.to_string())?;
                Ok(Decoded {
                    rows: b,
                    kept: None,
                    ops: None,
                    kinds: None,
                })
            }
            DecoderState::Raw { binary } => {
                let col: ArrayRef = if *binary {
                    let mut b = BinaryBuilder::with_capacity(rows, end - start);
                    for &(s, e) in &self.ranges[from..to] {
                        b.append_value(&self.buf[s..e]);
                    }
                    Arc::new(b.finish())
                } else {
                    let mut b = StringBuilder::with_capacity(rows, end - start);
                    for &(s, e) in &self.ranges[from..to] {
                        let text = std::str::from_utf8(&self.buf[s..e])
                            .map_err(|e| format!("not UTF-8: {e}"))?;
                        b.append_value(text);
                    }
                    Arc::new(b.finish())
                };
                let rows = RecordBatch::try_new(Arc::clone(&self.schema), vec![col])
                    .map_err(|e| e.to_string())?;
                Ok(Decoded {
                    rows,
                    kept: None,
                    ops: None,
                    kinds: None,
                })
            }
            DecoderState::Avro(a) => {
                // Each message framed: the prefix (local or on the wire) precedes its body.
                let chunk_start = match a.framed {
                    true => start,
                    false => start - 5,
                };
                if from == 0 && to == self.ranges.len() {
                    a.learn_ids(&self.buf, &self.ranges)
                        .map_err(|e| e.to_string())?;
                }
                let r = decode_avro(&mut a.decoder, &self.buf[chunk_start..end], rows);
                if r.is_err() {
                    // The decoder may hold half a row: start afresh.
                    a.rebuild().map_err(|e| e.to_string())?;
                }
                let b = r?;
                let rows = conform(&self.schema, b)?;
                Ok(Decoded {
                    rows,
                    kept: None,
                    ops: None,
                    kinds: None,
                })
            }
            DecoderState::Debezium { envelope, json } => {
                let b = json
                    .decode_exact(
                        envelope,
                        &sluice_plan::FieldUse::All,
                        &self.buf[start..end],
                        rows,
                    )
                    .map_err(|e| e.to_string())?;
                let env = match b.schema().field(0).name().as_str() {
                    "payload" => {
                        let p = b
                            .column(0)
                            .as_any()
                            .downcast_ref::<StructArray>()
                            .ok_or("payload is not an object")?;
                        if p.null_count() > 0 {
                            return Err("a message has no `payload`".into());
                        }
                        RecordBatch::from(p.clone())
                    }
                    _ => b,
                };
                debezium_rows(&self.schema, &env)
            }
        }
    }
}

/// Decodes newline-separated JSON objects into exactly `rows` rows with a kept decoder.
fn decode_json(
    schema: &SchemaRef,
    cached: &mut Option<(arrow::json::reader::Decoder, usize)>,
    bytes: &[u8],
    rows: usize,
) -> std::result::Result<RecordBatch, String> {
    if cached.as_ref().is_none_or(|(_, cap)| *cap <= rows) {
        // One more than the rows, so that a message holding two objects shows.
        let cap = (rows + 1).next_power_of_two().max(1024);
        let d = arrow::json::ReaderBuilder::new(Arc::clone(schema))
            .with_batch_size(cap)
            .with_strict_mode(false)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        *cached = Some((d, cap));
    }
    let (d, _) = cached.as_mut().ok_or("no JSON decoder")?;
    let mut off = 0;
    while off < bytes.len() {
        let n = d.decode(&bytes[off..]).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        off += n;
    }
    if off < bytes.len() {
        return Err(format!("more than {rows} JSON values in {rows} messages"));
    }
    let b = d
        .flush()
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
    if b.num_rows() != rows {
        return Err(format!(
            "decoded {} records from {rows} messages",
            b.num_rows()
        ));
    }
    Ok(b)
}

/// Whether the raw format's one column is `BYTES` (else `STRING`).
fn raw_column(schema: &Schema) -> Result<bool> {
    match schema
        .fields()
        .iter()
        .map(|f| f.data_type())
        .collect::<Vec<_>>()[..]
    {
        [DataType::Binary] => Ok(true),
        [DataType::Utf8] => Ok(false),
        _ => Err(SluiceError::user(format!(
            "'format' = 'raw' reads one column of type BYTES or STRING; the table has {} value columns ({})",
            schema.fields().len(),
            schema
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn decode_avro(
    d: &mut arrow_avro::reader::Decoder,
    bytes: &[u8],
    rows: usize,
) -> std::result::Result<RecordBatch, String> {
    let mut off = 0;
    while off < bytes.len() {
        let n = d.decode(&bytes[off..]).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("truncated Avro message".into());
        }
        off += n;
    }
    let b = d
        .flush()
        .map_err(|e| e.to_string())?
        .ok_or("no Avro record decoded")?;
    if b.num_rows() != rows {
        return Err(format!(
            "decoded {} Avro records from {rows} messages",
            b.num_rows()
        ));
    }
    Ok(b)
}

/// Casts decoded columns to the table's types (Avro's logical types map loosely).
fn conform(schema: &SchemaRef, b: RecordBatch) -> std::result::Result<RecordBatch, String> {
    let cols = schema
        .fields()
        .iter()
        .zip(b.columns())
        .map(|(f, c)| match c.data_type() == f.data_type() {
            true => Ok(Arc::clone(c)),
            false => cast(c, f.data_type()).map_err(|e| e.to_string()),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), cols).map_err(|e| e.to_string())
}

/// The rows of each change, as a changelog: `c`/`r` give `after` as `+I`; `u` gives
/// `before` as `-U` and `after` as `+U`; `d` gives `before` as `-D`. `kept` maps every row
/// to its message.
fn debezium_rows(schema: &SchemaRef, env: &RecordBatch) -> std::result::Result<Decoded, String> {
    use sluice_types::RowKind;
    let col = |name: &str| -> std::result::Result<&StructArray, String> {
        env.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StructArray>())
            .ok_or_else(|| format!("no `{name}` in the envelope"))
    };
    let (before, after) = (col("before")?, col("after")?);
    let op = env
        .column_by_name("op")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or("no `op` in the envelope")?;
    // (0 before / 1 after, message) per row, with its kind.
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(env.num_rows());
    let mut kinds: Vec<i8> = Vec::with_capacity(env.num_rows());
    let mut kept: Vec<u32> = Vec::with_capacity(env.num_rows());
    for i in 0..env.num_rows() {
        let need = |image: &StructArray, which: &str| match image.is_null(i) {
            true => Err(format!("op `{}` without `{which}`", op.value(i))),
            false => Ok(()),
        };
        let rows: &[(usize, RowKind)] = match op.is_valid(i).then(|| op.value(i)) {
            Some("c" | "r") => {
                need(after, "after")?;
                &[(1, RowKind::Insert)]
            }
            Some("u") => {
                need(before, "before")?;
                need(after, "after")?;
                &[(0, RowKind::UpdateBefore), (1, RowKind::UpdateAfter)]
            }
            Some("d") => {
                need(before, "before")?;
                &[(0, RowKind::Delete)]
            }
            Some(other) => return Err(format!("unknown Debezium op `{other}`")),
            None => return Err("a change without `op`".into()),
        };
        for &(image, kind) in rows {
            picks.push((image, i));
            kinds.push(kind.code());
            kept.push(i as u32);
        }
    }
    let images: [&dyn Array; 2] = [before, after];
    let picked = arrow::compute::interleave(&images, &picks).map_err(|e| e.to_string())?;
    let picked = picked
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or("the row image is not an object")?;
    let rows = RecordBatch::try_new(Arc::clone(schema), picked.columns().to_vec())
        .map_err(|e| e.to_string())?;
    let kept = UInt32Array::from(kept);
    let ops = arrow::compute::take(op, &kept, None).map_err(|e| e.to_string())?;
    Ok(Decoded {
        rows,
        kept: Some(kept),
        ops: Some(ops),
        kinds: Some(arrow::array::Int8Array::from(kinds)),
    })
}

/// Encodes batches into one payload per row.
pub struct MessageEncoder {
    state: EncoderState,
    buf: Vec<u8>,
    /// Row i's bytes in `buf`.
    rows: Vec<(usize, usize)>,
}

enum EncoderState {
    /// JSON objects; with explicit nulls (`"before": null`), as Debezium envelopes are.
    Json {
        explicit_nulls: bool,
        /// Flink's `json.*` options for writing (timestamps), when they apply.
        writing: Option<crate::format::JsonOptions>,
        /// The fast writer for the last batch's schema, if it can write those columns.
        fast: Option<(SchemaRef, Option<crate::fast_json_out::JsonRows>)>,
    },
    Csv {
        delimiter: u8,
    },
    Raw,
    /// The encoder, and the table's schema it writes (the rows are given it under that
    /// schema: a column the query knows to have no NULL is still a union with null in
    /// a nullable table column, as readers of the table expect).
    Avro(AvroEncoder, SchemaRef),
}

impl MessageEncoder {
    /// An encoder of rows of `schema` in `format`.
    pub fn new(format: &MessageFormat, schema: &SchemaRef) -> Result<Self> {
        let state = match format {
            MessageFormat::Json => EncoderState::Json {
                explicit_nulls: false,
                writing: None,
                fast: None,
            },
            MessageFormat::DebeziumJson { .. } => EncoderState::Json {
                explicit_nulls: true,
                writing: None,
                fast: None,
            },
            MessageFormat::Csv { delimiter } => EncoderState::Csv {
                delimiter: *delimiter,
            },
            MessageFormat::Raw => {
                raw_column(schema)?;
                EncoderState::Raw
            }
            MessageFormat::Avro { .. } => {
                EncoderState::Avro(avro_encoder(schema, None)?, Arc::clone(schema))
            }
            MessageFormat::AvroConfluent { registry, subject } => {
                let avro = value_fields(schema)?;
                let id = registry.register(subject, &avro.json_string)?;
                EncoderState::Avro(avro_encoder(schema, Some(id))?, Arc::clone(schema))
            }
        };
        Ok(Self {
            state,
            buf: Vec::new(),
            rows: Vec::new(),
        })
    }

    /// JSON: rows are written with Flink's `json.*` options (timestamps in its text
    /// forms, see [`crate::format::JsonOptions::for_writing`]).
    pub fn with_json_options(mut self, options: crate::format::JsonOptions) -> Self {
        if let EncoderState::Json { writing, fast, .. } = &mut self.state {
            *writing = Some(options);
            *fast = None;
        }
        self
    }

    /// Encodes a batch; [`MessageEncoder::row`] then returns each row's payload.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<()> {
        self.buf.clear();
        self.rows.clear();
        match &mut self.state {
            EncoderState::Json {
                explicit_nulls,
                writing,
                fast,
            } => {
                let schema = batch.schema();
                if fast.as_ref().is_none_or(|(s, _)| s != &schema) {
                    let rows = crate::fast_json_out::JsonRows::new(
                        &schema,
                        *explicit_nulls,
                        writing.map(|w| w.sql_timestamps),
                    );
                    *fast = Some((schema, rows));
                }
                if let Some((_, Some(rows))) = fast {
                    rows.write(batch, &mut self.buf, &mut self.rows);
                    return Ok(());
                }
                let batch = match writing {
                    Some(w) => w.for_writing(batch.clone())?,
                    None => batch.clone(),
                };
                {
                    let mut w = arrow::json::WriterBuilder::new()
                        .with_explicit_nulls(*explicit_nulls)
                        .build::<_, arrow::json::writer::LineDelimited>(&mut self.buf);
                    w.write(&batch)?;
                    w.finish()?;
                }
                // JSON escapes newlines inside strings: one line per row.
                split_lines(&self.buf, &mut self.rows);
            }
            EncoderState::Csv { delimiter } => {
                write_csv(&mut self.buf, batch, *delimiter)?;
                split_lines(&self.buf, &mut self.rows);
                if self.rows.len() != batch.num_rows() {
                    // A quoted value holds a line break: one row at a time.
                    self.buf.clear();
                    self.rows.clear();
                    for i in 0..batch.num_rows() {
                        let s = self.buf.len();
                        write_csv(&mut self.buf, &batch.slice(i, 1), *delimiter)?;
                        let e = self.buf.len() - usize::from(self.buf.ends_with(b"\n"));
                        self.rows.push((s, e));
                    }
                }
            }
            EncoderState::Raw => {
                let c = batch.column(0);
                for i in 0..batch.num_rows() {
                    let s = self.buf.len();
                    if let Some(b) = c.as_any().downcast_ref::<BinaryArray>() {
                        self.buf.extend_from_slice(b.value(i));
                    } else if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
                        self.buf.extend_from_slice(s.value(i).as_bytes());
                    }
                    self.rows.push((s, self.buf.len()));
                }
            }
            EncoderState::Avro(enc, schema) => {
                let batch = RecordBatch::try_new(Arc::clone(schema), batch.columns().to_vec())?;
                enc.encode(&batch)
                    .map_err(|e| SluiceError::user("Avro encoding failed").with_source(e))?;
                let rows = enc.flush();
                self.buf.extend_from_slice(rows.bytes());
                self.rows
                    .extend(rows.offsets().windows(2).map(|w| (w[0], w[1])));
            }
        }
        Ok(())
    }

    /// Number of rows encoded by the last [`MessageEncoder::encode`].
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the last batch had no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row i's payload.
    pub fn row(&self, i: usize) -> &[u8] {
        let (s, e) = self.rows[i];
        &self.buf[s..e]
    }
}

fn avro_encoder(schema: &SchemaRef, id: Option<u32>) -> Result<AvroEncoder> {
    let b = AvroWriterBuilder::new(schema.as_ref().clone());
    let enc = match id {
        Some(id) => b
            .with_fingerprint_strategy(arrow_avro::schema::FingerprintStrategy::Id(id))
            .build_encoder::<AvroSoeFormat>(),
        None => b.build_encoder::<arrow_avro::writer::format::AvroBinaryFormat>(),
    };
    enc.map_err(|e| SluiceError::user("cannot encode these columns as Avro").with_source(e))
}

fn write_csv(buf: &mut Vec<u8>, batch: &RecordBatch, delimiter: u8) -> Result<()> {
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(false)
        .with_delimiter(delimiter)
        .build(buf);
    w.write(batch)?;
    Ok(())
}

/// The byte ranges of newline-terminated lines (the newline left out).
fn split_lines(buf: &[u8], rows: &mut Vec<(usize, usize)>) {
    rows.clear();
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            rows.push((start, i));
            start = i + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use proptest::prelude::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn formats() -> Vec<MessageFormat> {
        vec![
            MessageFormat::Json,
            MessageFormat::Csv { delimiter: b',' },
            MessageFormat::Avro { schema: None },
            MessageFormat::AvroConfluent {
                // Nothing listens there: unknown schema ids are bad messages.
                registry: Arc::new(SchemaRegistry::new("http://127.0.0.1:9").unwrap()),
                subject: "t-value".into(),
            },
            MessageFormat::DebeziumJson {
                schema_include: false,
            },
        ]
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(-2), None])),
                Arc::new(StringArray::from(vec![Some("a,b"), None, Some("ü\n")])),
            ],
        )
        .unwrap()
    }

    /// Rows a query knows to have no NULL (non-nullable fields) written to a table with
    /// nullable columns are read back by a reader of that table.
    #[test]
    fn rows_without_nulls_into_nullable_columns_read_back_as_avro() {
        let strict = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let rows = RecordBatch::try_new(
            strict,
            vec![
                Arc::new(Int64Array::from(vec![7, 8])),
                Arc::new(StringArray::from(vec!["x", "y"])),
            ],
        )
        .unwrap();
        let f = MessageFormat::Avro { schema: None };
        let mut enc = MessageEncoder::new(&f, &schema()).unwrap();
        enc.encode(&rows).unwrap();
        let mut dec = MessageDecoder::new(&f, schema()).unwrap();
        for i in 0..enc.len() {
            dec.push(enc.row(i));
        }
        let mut dead = Vec::new();
        let d = dec.finish(&|i| i.to_string(), &mut dead).unwrap().unwrap();
        assert!(dead.is_empty(), "{dead:?}");
        assert_eq!(d.rows.num_rows(), 2);
        assert_eq!(d.rows.column(0), rows.column(0));
    }

    #[test]
    fn rows_survive_encoding_and_decoding() {
        for f in [
            MessageFormat::Json,
            MessageFormat::Csv { delimiter: b';' },
            MessageFormat::Avro { schema: None },
        ] {
            let mut enc = MessageEncoder::new(&f, &schema()).unwrap();
            enc.encode(&batch()).unwrap();
            assert_eq!(enc.len(), 3, "{}", f.name());
            let mut dec = MessageDecoder::new(&f, schema()).unwrap();
            for i in 0..enc.len() {
                dec.push(enc.row(i));
            }
            let mut dead = Vec::new();
            let d = dec.finish(&|i| i.to_string(), &mut dead).unwrap().unwrap();
            assert!(dead.is_empty(), "{}: {dead:?}", f.name());
            let want = batch();
            // CSV cannot tell an empty string from null; the rest must match exactly.
            assert_eq!(d.rows.column(0), want.column(0), "{}", f.name());
            if !matches!(f, MessageFormat::Csv { .. }) {
                assert_eq!(d.rows, want, "{}", f.name());
            }
        }
    }

    #[test]
    fn debezium_changes_give_their_rows_with_kinds_and_op() {
        let mut dec = MessageDecoder::new(
            &MessageFormat::DebeziumJson {
                schema_include: true,
            },
            schema(),
        )
        .unwrap();
        for m in [
            r#"{"schema":{},"payload":{"before":null,"after":{"id":1,"name":"x"},"op":"c"}}"#,
            r#"{"schema":{},"payload":{"before":{"id":1,"name":"x"},"after":{"id":1,"name":"y"},"op":"u"}}"#,
            r#"{"schema":{},"payload":{"before":{"id":1,"name":"y"},"after":null,"op":"d"}}"#,
            r#"{"schema":{},"payload":{"before":null,"after":null,"op":"c"}}"#,
        ] {
            dec.push(m.as_bytes());
        }
        let mut dead = Vec::new();
        let d = dec
            .finish(&|i| format!("m{i}"), &mut dead)
            .unwrap()
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].position, "m3");
        let names = d
            .rows
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        // A changelog: the update is its before (-U) and its after (+U).
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            vec![Some("x"), Some("x"), Some("y"), Some("y")]
        );
        let ops = d.ops.unwrap();
        let ops = ops.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            ops.iter().collect::<Vec<_>>(),
            vec![Some("c"), Some("u"), Some("u"), Some("d")]
        );
        assert_eq!(d.kinds.unwrap().values().to_vec(), vec![0, 1, 2, 3]);
        assert_eq!(d.kept.unwrap().values().to_vec(), vec![0, 1, 1, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes never panic a decoder: every message is a row or a dead
        /// letter with its position. 2 000 chunks per run, each through every format.
        #[test]
        fn arbitrary_bytes_are_rows_or_dead_letters(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            good in any::<bool>(),
        ) {
            for f in formats() {
                let mut dec = MessageDecoder::new(&f, schema()).unwrap();
                if good {
                    dec.push(br#"{"id": 5, "name": "x"}"#);
                }
                for m in &msgs {
                    dec.push(m);
                }
                let n = dec.len();
                let mut dead = Vec::new();
                let rows = dec
                    .finish(&|i| format!("#{i}"), &mut dead)
                    .unwrap()
                    .map_or(0, |d| d.rows.num_rows());
                prop_assert_eq!(rows + dead.len(), n, "{}", f.name());
                prop_assert!(dead.iter().all(|d| d.position.starts_with('#')));
            }
        }
    }
}
