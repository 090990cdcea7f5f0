//! Lookup join: each row of the stream joins the rows of a bounded table (a file, say)
//! with equal key columns. The table is read once, when the operator starts, into a hash
//! index (Flink's lookup join against a table that does not change while the job runs).
//!
//! ```text
//!  on start: read every split of the table ──> index: key -> rows
//!  batch ──probe──> joined rows (stream columns, then the table's), the stream's time
//! ```
//!
//! The index is not checkpointed: a restored job reads the table again.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use sluice_plan::ConnectorSpec;
use sluice_types::{Batch, Result, SluiceError, user_column_count};

use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::{OperatorFactory, PreparedOperator};
use crate::source::{ConnectorRegistry, PreparedSource, ReadResult};

/// The lookup join of one subtask.
pub struct LookupJoinOperator {
    table: Arc<dyn PreparedSource>,
    table_name: String,
    left_keys: Vec<usize>,
    right_keys: Vec<usize>,
    converter: RowConverter,
    schema: SchemaRef,
    left_width: usize,
    right_width: usize,
    rows: Vec<RecordBatch>,
    index: HashMap<Box<[u8]>, Vec<(u32, u32)>>,
}

impl LookupJoinOperator {
    /// Prepares the table's connector and checks the keys; `right_names` name the
    /// table's columns in the output.
    pub fn prepare(
        table: &ConnectorSpec,
        left_keys: &[String],
        right_keys: &[String],
        right_names: &[String],
        input: &SchemaRef,
        registry: &ConnectorRegistry,
    ) -> Result<PreparedOperator> {
        let source = registry.prepare_source(table)?;
        let dim = source.schema()?;
        if right_names.len() != dim.fields().len() {
            return Err(SluiceError::internal(
                "lookup join: one output name per table column",
            ));
        }
        if left_keys.is_empty() || left_keys.len() != right_keys.len() {
            return Err(SluiceError::user(
                "a lookup join needs pairs of equal key columns (stream = table)",
            ));
        }
        let idx = |schema: &SchemaRef, k: &String, side: &str| {
            schema.index_of(k).map_err(|_| {
                SluiceError::user(format!(
                    "lookup join key `{k}` is not a column of the {side}"
                ))
            })
        };
        let lk: Vec<usize> = left_keys
            .iter()
            .map(|k| idx(input, k, "stream"))
            .collect::<Result<_>>()?;
        let rk: Vec<usize> = right_keys
            .iter()
            .map(|k| idx(&dim, k, "table"))
            .collect::<Result<_>>()?;
        let mut sort_fields = Vec::new();
        for (&l, &r) in lk.iter().zip(&rk) {
            let (lt, rt) = (input.field(l).data_type(), dim.field(r).data_type());
            if lt != rt {
                return Err(SluiceError::user(format!(
                    "lookup join keys `{}` ({lt}) and `{}` ({rt}) have different types; cast one",
                    input.field(l).name(),
                    dim.field(r).name()
                )));
            }
            sort_fields.push(SortField::new(lt.clone()));
        }
        // The stream's columns, the table's, then the row kind of an updating stream (each
        // change joins as it is, its pairs carrying its kind) and the time.
        let left_width = user_column_count(input);
        let mut fields: Vec<Arc<Field>> = input.fields()[..left_width].to_vec();
        for (f, n) in dim.fields().iter().zip(right_names) {
            if fields.iter().any(|l| l.name() == n) {
                return Err(SluiceError::user(format!(
                    "both sides of the lookup join have a column `{n}`; rename one"
                )));
            }
            fields.push(Arc::new(f.as_ref().clone().with_name(n)));
        }
        let right_width = dim.fields().len();
        fields.extend(input.fields()[left_width..].iter().cloned());
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let out = Arc::clone(&schema);
        let table_name = table.connector.clone();
        let factory: OperatorFactory = Arc::new(move |_task| {
            Ok(Box::new(LookupJoinOperator {
                table: Arc::clone(&source),
                table_name: table_name.clone(),
                left_keys: lk.clone(),
                right_keys: rk.clone(),
                converter: RowConverter::new(sort_fields.clone())
                    .map_err(|e| SluiceError::user("unsupported lookup key type").with_source(e))?,
                schema: Arc::clone(&out),
                left_width,
                right_width,
                rows: Vec::new(),
                index: HashMap::new(),
            }) as Box<dyn Operator>)
        });
        Ok(PreparedOperator {
            output_schema: schema,
            factory,
        })
    }

    fn keys(&self, data: &RecordBatch, cols: &[usize]) -> Result<arrow::row::Rows> {
        let cols: Vec<ArrayRef> = cols.iter().map(|&i| Arc::clone(data.column(i))).collect();
        Ok(self.converter.convert_columns(&cols)?)
    }
}

#[async_trait]
impl Operator for LookupJoinOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn on_start(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        // Every subtask reads the whole table, as the one reader of it: a source that
        // shares its rows out by subtask (a generator) must not give this one a share.
        let splits = self.table.splits(1)?;
        let task = sluice_types::TaskInfo {
            subtask: 0,
            parallelism: 1,
            ..ctx.task.clone()
        };
        let mut reader = self.table.reader(splits, &task)?;
        reader.open(ctx).await?;
        loop {
            match reader.read(8192, ctx).await? {
                ReadResult::Batch { rows, .. } => {
                    if rows.num_rows() > 0 {
                        self.rows.push(rows);
                    }
                }
                ReadResult::SplitEnd(_) | ReadResult::Watermark { .. } => {}
                ReadResult::End => break,
                ReadResult::Idle => {
                    return Err(SluiceError::user(format!(
                        "the lookup table (connector `{}`) did not end: a lookup join reads a bounded table (a file)",
                        self.table_name
                    )));
                }
            }
        }
        reader.close(ctx).await?;
        for b in 0..self.rows.len() {
            let keys = self.keys(&self.rows[b], &self.right_keys)?;
            for r in 0..self.rows[b].num_rows() {
                let key = keys.row(r);
                match self.index.get_mut(key.as_ref()) {
                    Some(rows) => rows.push((b as u32, r as u32)),
                    None => {
                        self.index
                            .insert(key.as_ref().into(), vec![(b as u32, r as u32)]);
                    }
                }
            }
        }
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let data = &batch.data;
        let keys = self.keys(data, &self.left_keys)?;
        let mut left = Vec::new();
        let mut right = Vec::new();
        for i in 0..data.num_rows() {
            if let Some(m) = self.index.get(keys.row(i).as_ref()) {
                for &(b, r) in m {
                    left.push(i as u32);
                    right.push((b as usize, r as usize));
                }
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from(left);
        let mut columns: Vec<ArrayRef> = (0..self.left_width)
            .map(|c| take(data.column(c), &idx, None))
            .collect::<std::result::Result<_, _>>()?;
        for c in 0..self.right_width {
            let arrays: Vec<&dyn Array> = self.rows.iter().map(|b| b.column(c).as_ref()).collect();
            columns.push(interleave(&arrays, &right)?);
        }
        // The row kind (an updating stream) and the time.
        for c in &data.columns()[self.left_width..] {
            columns.push(take(c, &idx, None)?);
        }
        let out_data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        out.collect(batch.with_data(out_data)).await
    }
}

impl LookupJoinOperator {
    /// The registered constructor of `lookup join` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let sluice_plan::NodeKind::LookupJoin {
            table,
            left_keys,
            right_keys,
            right_names,
        } = kind
        else {
            return Err(crate::operators::wrong_node(kind, "lookup join"));
        };
        let input = &crate::operators::single_input(inputs)?;
        Self::prepare(table, left_keys, right_keys, right_names, input, registry)
    }
}
