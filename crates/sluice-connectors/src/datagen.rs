//! Random rows for a declared schema: `'connector' = 'datagen'` (Flink's option names).
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `number-of-rows` | rows to generate; absent: unbounded | unbounded |
//! | `rows-per-second` | wall-clock rate limit, all subtasks together | none |
//! | `seed` | the same seed gives the same rows | 0 |
//! | `fields.NAME.kind` | `random` or `sequence` | `random` |
//! | `fields.NAME.min` / `.max` | range of random numbers (and timestamps, epoch ms) | type's range; 0..1 for floats |
//! | `fields.NAME.start` / `.end` | range of a sequence (bounds the row count) | — |
//! | `fields.NAME.length` | length of random strings | 10 |
//! | `fields.NAME.null-rate` | fraction of nulls for nullable fields | 0 |
//!
//! Row `i` is a function of `(seed, i)`; split `k` of `n` generates rows `k, k+n, …`.

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int8Builder, Int16Builder,
    Int32Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use async_trait::async_trait;
use sluice_plan::ConnectorSpec;
use sluice_runtime::{
    OperatorContext, ReadResult, SourceConnector, SourceReader, Split, SplitPosition,
};
use sluice_types::{Result, SluiceError, TaskInfo};
use std::sync::Arc;

use crate::nexmark::rng::Rng;
use crate::options::OptionReader;
use crate::pacer::Pacer;

#[derive(Clone, Debug)]
enum FieldGen {
    Random { min: f64, max: f64, length: usize },
    Sequence { start: i64 },
}

#[derive(Clone, Debug)]
struct FieldSpec {
    data_type: DataType,
    generator: FieldGen,
    null_rate: f64,
}

/// Parsed datagen options.
pub struct DatagenConfig {
    schema: SchemaRef,
    fields: Vec<FieldSpec>,
    rows: Option<u64>,
    rate: Option<f64>,
    seed: u64,
}

/// The datagen connector.
pub struct DatagenConnector;

fn default_range(dt: &DataType) -> Option<(f64, f64)> {
    Some(match dt {
        DataType::Int8 => (i8::MIN as f64, i8::MAX as f64),
        DataType::Int16 => (i16::MIN as f64, i16::MAX as f64),
        DataType::Int32 => (i32::MIN as f64, i32::MAX as f64),
        DataType::Int64 => (-9.0e15, 9.0e15),
        DataType::UInt32 => (0.0, u32::MAX as f64),
        DataType::UInt64 => (0.0, 9.0e15),
        DataType::Float32 | DataType::Float64 => (0.0, 1.0),
        DataType::Boolean => (0.0, 1.0),
        DataType::Utf8 => (0.0, 0.0),
        DataType::Timestamp(TimeUnit::Millisecond, None) => (1.7e12, 1.8e12),
        _ => return None,
    })
}

impl SourceConnector for DatagenConnector {
    type Config = DatagenConfig;

    fn name(&self) -> &'static str {
        "datagen"
    }

    fn options(&self) -> &'static [&'static str] {
        &["number-of-rows", "rows-per-second", "seed", "fields.*"]
    }

    fn parse(&self, spec: &ConnectorSpec) -> Result<DatagenConfig> {
        let o = OptionReader::new("datagen", spec);
        let schema = spec.schema.clone().ok_or_else(|| {
            SluiceError::user(
                "connector `datagen` needs a declared schema (the columns to generate)",
            )
        })?;
        for key in spec.options.keys().filter(|k| k.starts_with("fields.")) {
            let name = key["fields.".len()..]
                .rsplit_once('.')
                .map(|(n, _)| n)
                .unwrap_or("");
            if schema.field_with_name(name).is_err() {
                return Err(SluiceError::user(format!(
                    "option `{key}` names no column of the schema"
                )));
            }
            let attr = key.rsplit('.').next().unwrap_or("");
            if !["kind", "min", "max", "start", "end", "length", "null-rate"].contains(&attr) {
                return Err(SluiceError::user(format!(
                    "option `{key}`: unknown field option `{attr}` (kind, min, max, start, end, length, null-rate)"
                )));
            }
        }
        let mut rows: Option<u64> = o.parse("number-of-rows")?;
        let mut fields = Vec::new();
        for f in schema.fields() {
            let key = |a: &str| format!("fields.{}.{a}", f.name());
            let (dmin, dmax) = default_range(f.data_type()).ok_or_else(|| {
                SluiceError::user(format!(
                    "datagen cannot generate column `{}` of type {}",
                    f.name(),
                    f.data_type()
                ))
            })?;
            let kind = o.choice(&key("kind"), &["random", "sequence"], Some("random"))?;
            let generator = if kind == "sequence" {
                let start: i64 = o.parse(&key("start"))?.ok_or_else(|| {
                    SluiceError::user(format!(
                        "sequence column `{}` needs `{}`",
                        f.name(),
                        key("start")
                    ))
                })?;
                let end: i64 = o.parse(&key("end"))?.ok_or_else(|| {
                    SluiceError::user(format!(
                        "sequence column `{}` needs `{}`",
                        f.name(),
                        key("end")
                    ))
                })?;
                if end < start {
                    return Err(SluiceError::user(format!(
                        "`{}` is before `{}`",
                        key("end"),
                        key("start")
                    )));
                }
                let len = (end - start) as u64 + 1;
                rows = Some(rows.map_or(len, |r| r.min(len)));
                FieldGen::Sequence { start }
            } else {
                let min = o.parse_or(&key("min"), dmin)?;
                let max = o.parse_or(&key("max"), dmax)?;
                if max < min {
                    return Err(SluiceError::user(format!(
                        "`{}` is below `{}`",
                        key("max"),
                        key("min")
                    )));
                }
                FieldGen::Random {
                    min,
                    max,
                    length: o.parse_or(&key("length"), 10)?,
                }
            };
            let null_rate: f64 = o.parse_or(&key("null-rate"), 0.0)?;
            if !(0.0..=1.0).contains(&null_rate) || (null_rate > 0.0 && !f.is_nullable()) {
                return Err(SluiceError::user(format!(
                    "`{}` must be in [0, 1], and above 0 only for nullable columns",
                    key("null-rate")
                )));
            }
            fields.push(FieldSpec {
                data_type: f.data_type().clone(),
                generator,
                null_rate,
            });
        }
        let rate: Option<f64> = o.parse("rows-per-second")?;
        if rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
            return Err(SluiceError::user(
                "option `rows-per-second` must be a positive number",
            ));
        }
        Ok(DatagenConfig {
            schema,
            fields,
            rows,
            rate,
            seed: o.parse_or("seed", 0)?,
        })
    }

    fn schema(&self, config: &DatagenConfig) -> Result<SchemaRef> {
        Ok(Arc::clone(&config.schema))
    }

    fn splits(&self, _config: &DatagenConfig, parallelism: usize) -> Result<Vec<Split>> {
        Ok((0..parallelism)
            .map(|i| Split::new(format!("datagen-{i}-of-{parallelism}"), i))
            .collect())
    }

    fn reader(
        &self,
        config: &Arc<DatagenConfig>,
        splits: Vec<Split>,
        task: &TaskInfo,
    ) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(DatagenReader {
            config: Arc::clone(config),
            first_split: splits.first().map_or(0, |s| s.index),
            next: splits
                .iter()
                .map(|s| match &s.position {
                    Some(p) => crate::nexmark::generator_position(&s.id, p),
                    None => Ok(s.index as u64),
                })
                .collect::<Result<_>>()?,
            ids: splits.iter().map(|s| s.id.clone()).collect(),
            finished: Vec::new(),
            stride: task.parallelism as u64,
            pacer: config.rate.map(|r| Pacer::new(r / task.parallelism as f64)),
        }))
    }
}

/// Generates one subtask's rows.
pub struct DatagenReader {
    config: Arc<DatagenConfig>,
    first_split: usize,
    /// Per split: the id of its next row.
    next: Vec<u64>,
    /// Per split: its id (parallel to `next`).
    ids: Vec<String>,
    /// Splits that produced their last row, with their final position.
    finished: Vec<(String, u64)>,
    stride: u64,
    pacer: Option<Pacer>,
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl DatagenReader {
    /// Moves splits past the row limit to `finished`.
    fn retire(&mut self, limit: Option<u64>) {
        let mut i = 0;
        while i < self.next.len() {
            if limit.is_some_and(|n| self.next[i] >= n) {
                self.finished
                    .push((self.ids.remove(i), self.next.remove(i)));
            } else {
                i += 1;
            }
        }
    }

    fn build(&self, ids: &[u64]) -> Result<RecordBatch> {
        let n = ids.len();
        let seed = self.config.seed;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.config.fields.len());
        for (c, f) in self.config.fields.iter().enumerate() {
            let mut values = ids.iter().map(|&id| {
                let mut rng = Rng::for_event(seed ^ ((c as u64 + 1) << 48), id);
                let null = f.null_rate > 0.0 && rng.unit() < f.null_rate;
                (id, rng, null)
            });
            macro_rules! numbers {
                ($builder:ident, $t:ty) => {{
                    let mut b = $builder::with_capacity(n);
                    for (id, mut rng, null) in values.by_ref() {
                        if null {
                            b.append_null();
                            continue;
                        }
                        let v = match &f.generator {
                            FieldGen::Sequence { start, .. } => (*start + id as i64) as f64,
                            FieldGen::Random { min, max, .. } => {
                                if matches!(f.data_type, DataType::Float32 | DataType::Float64) {
                                    min + rng.unit() * (max - min)
                                } else {
                                    (min + (rng.below((max - min) as u64 + 1)) as f64).floor()
                                }
                            }
                        };
                        b.append_value(v as $t);
                    }
                    Arc::new(b.finish()) as ArrayRef
                }};
            }
            let col = match &f.data_type {
                DataType::Int8 => numbers!(Int8Builder, i8),
                DataType::Int16 => numbers!(Int16Builder, i16),
                DataType::Int32 => numbers!(Int32Builder, i32),
                DataType::Int64 => numbers!(Int64Builder, i64),
                DataType::UInt32 => numbers!(UInt32Builder, u32),
                DataType::UInt64 => numbers!(UInt64Builder, u64),
                DataType::Float32 => numbers!(Float32Builder, f32),
                DataType::Float64 => numbers!(Float64Builder, f64),
                DataType::Timestamp(TimeUnit::Millisecond, None) => {
                    numbers!(TimestampMillisecondBuilder, i64)
                }
                DataType::Boolean => {
                    let mut b = BooleanBuilder::with_capacity(n);
                    for (id, mut rng, null) in values {
                        match (&f.generator, null) {
                            (_, true) => b.append_null(),
                            (FieldGen::Sequence { .. }, _) => b.append_value(id % 2 == 1),
                            (FieldGen::Random { .. }, _) => b.append_value(rng.below(2) == 1),
                        }
                    }
                    Arc::new(b.finish())
                }
                DataType::Utf8 => {
                    let mut b = StringBuilder::with_capacity(n, n * 10);
                    let mut s = String::new();
                    for (id, mut rng, null) in values {
                        if null {
                            b.append_null();
                            continue;
                        }
                        s.clear();
                        match &f.generator {
                            FieldGen::Sequence { start, .. } => {
                                use std::fmt::Write;
                                let _ = write!(s, "{}", start + id as i64);
                            }
                            FieldGen::Random { length, .. } => {
                                for _ in 0..*length {
                                    s.push(
                                        ALPHABET[rng.below(ALPHABET.len() as u64) as usize] as char,
                                    );
                                }
                            }
                        }
                        b.append_value(&s);
                    }
                    Arc::new(b.finish())
                }
                other => {
                    return Err(SluiceError::internal(format!(
                        "type {other} was accepted at parse"
                    )));
                }
            };
            columns.push(col);
        }
        Ok(RecordBatch::try_new(
            Arc::clone(&self.config.schema),
            columns,
        )?)
    }
}

#[async_trait]
impl SourceReader for DatagenReader {
    async fn read(&mut self, max_rows: usize, _ctx: &mut OperatorContext) -> Result<ReadResult> {
        let limit = self.config.rows;
        self.retire(limit);
        if self.next.is_empty() {
            return Ok(ReadResult::End);
        }
        let mut budget = max_rows as u64;
        if let Some(p) = self.pacer.as_mut() {
            budget = budget.min(p.due().await);
        }
        let mut ids = Vec::with_capacity(budget as usize);
        let mut k = 0;
        while (ids.len() as u64) < budget && !self.next.is_empty() {
            let i = k % self.next.len();
            let id = self.next[i];
            if limit.is_some_and(|n| id >= n) {
                self.finished
                    .push((self.ids.remove(i), self.next.remove(i)));
                continue;
            }
            ids.push(id);
            self.next[i] += self.stride;
            k += 1;
        }
        if let Some(p) = self.pacer.as_mut() {
            p.emitted(ids.len() as u64);
        }
        if ids.is_empty() {
            return Ok(ReadResult::End);
        }
        // Splits advance together (ids interleave), so one clock covers them.
        Ok(ReadResult::Batch {
            split: self.first_split,
            rows: self.build(&ids)?,
        })
    }

    fn positions(&self) -> Result<Vec<SplitPosition>> {
        Ok(self
            .ids
            .iter()
            .zip(&self.next)
            .map(|(id, &next)| (id, next))
            .chain(self.finished.iter().map(|(id, next)| (id, *next)))
            .map(|(id, next)| SplitPosition {
                split: id.clone(),
                position: serde_json::json!({ "next": next }),
            })
            .collect())
    }
}

/// A datagen source spec for the Rust API.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow::datatypes::*;
/// use sluice_connectors::DatagenSource;
/// let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
/// let spec = DatagenSource::new(schema).rows(100).field("id", "kind", "sequence").into_spec();
/// assert_eq!(spec.options["fields.id.kind"], "sequence");
/// ```
#[derive(Clone, Debug)]
pub struct DatagenSource {
    spec: ConnectorSpec,
}

impl DatagenSource {
    /// Rows of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            spec: ConnectorSpec::new("datagen").with_schema(schema),
        }
    }

    /// Total rows; the stream then ends.
    pub fn rows(mut self, n: u64) -> Self {
        self.spec
            .options
            .insert("number-of-rows".into(), n.to_string());
        self
    }

    /// Wall-clock rows per second, all subtasks together.
    pub fn rows_per_second(mut self, r: f64) -> Self {
        self.spec
            .options
            .insert("rows-per-second".into(), r.to_string());
        self
    }

    /// Sets `fields.<column>.<option>`.
    pub fn field(mut self, column: &str, option: &str, value: impl ToString) -> Self {
        self.spec
            .options
            .insert(format!("fields.{column}.{option}"), value.to_string());
        self
    }

    /// The plan's connector spec.
    pub fn into_spec(self) -> ConnectorSpec {
        self.spec
    }
}
