//! The Nexmark benchmark source: `'connector' = 'nexmark'`.
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `table` | `bid`, `auction` or `person` | `bid` |
//! | `events.num` | total events (all kinds) to generate; absent: unbounded | unbounded |
//! | `first-event.rate` | events per second of *event time* (spacing of `date_time`) | 10 000 000 |
//! | `rate-limit` | events per wall-clock second, all subtasks together; absent: as fast as possible | none |
//! | `seed` | the same seed gives the same events | 0 |
//! | `base-time` | event time of event 0: epoch ms, or `now` | 1436918400000 (2015-07-15) |
//!
//! The three tables share one event-id space, as in the benchmark: `events.num = 50`
//! yields 1 person, 3 auctions and 46 bids. The splits of a source of parallelism `n`
//! interleave event ids (split `k` takes ids `k, k+n, k+2n, …`), so the union of all
//! subtasks' output is the same at every parallelism.

mod generator;
pub(crate) mod rng;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use sluice_plan::ConnectorSpec;
use sluice_runtime::{
    OperatorContext, ReadResult, SourceConnector, SourceReader, Split, SplitPosition,
};
use sluice_types::{Result, SluiceError, TaskInfo};
use std::sync::Arc;

use generator::TableBuilder;
pub use generator::{
    EventKind, Generator, GeneratorConfig, auction_schema, bid_schema, kind_of, person_schema,
};

use crate::options::OptionReader;
use crate::pacer::Pacer;

/// Parsed options of a Nexmark source.
pub struct NexmarkConfig {
    kind: EventKind,
    events: Option<u64>,
    rate_limit: Option<f64>,
    generator: Arc<Generator>,
}

/// The Nexmark source connector.
pub struct NexmarkConnector;

const OPTIONS: &[&str] = &[
    "table",
    "events.num",
    "first-event.rate",
    "rate-limit",
    "seed",
    "base-time",
];

impl SourceConnector for NexmarkConnector {
    type Config = NexmarkConfig;

    fn name(&self) -> &'static str {
        "nexmark"
    }

    fn options(&self) -> &'static [&'static str] {
        OPTIONS
    }

    fn parse(&self, spec: &ConnectorSpec) -> Result<NexmarkConfig> {
        let o = OptionReader::new("nexmark", spec);
        let kind = match o
            .choice("table", &["bid", "auction", "person"], Some("bid"))?
            .as_str()
        {
            "auction" => EventKind::Auction,
            "person" => EventKind::Person,
            _ => EventKind::Bid,
        };
        let rate: u64 = o.parse_or("first-event.rate", 10_000_000)?;
        if rate == 0 {
            return Err(SluiceError::user(
                "option `first-event.rate` must be positive",
            ));
        }
        let rate_limit: Option<f64> = o.parse("rate-limit")?;
        if rate_limit.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
            return Err(SluiceError::user(
                "option `rate-limit` must be a positive number",
            ));
        }
        let base_time_ms = match o.str("base-time") {
            Some("now") => (sluice_types::now_micros() / 1000) as i64,
            _ => o.parse_or("base-time", 1_436_918_400_000i64)?,
        };
        Ok(NexmarkConfig {
            kind,
            events: o.parse("events.num")?,
            rate_limit,
            generator: Arc::new(Generator::new(GeneratorConfig {
                seed: o.parse_or("seed", 0)?,
                base_time_ms,
                first_event_rate: rate,
            })),
        })
    }

    fn schema(&self, config: &NexmarkConfig) -> Result<SchemaRef> {
        Ok(match config.kind {
            EventKind::Bid => bid_schema(),
            EventKind::Auction => auction_schema(),
            EventKind::Person => person_schema(),
        })
    }

    fn default_event_time(&self, _config: &NexmarkConfig) -> Option<String> {
        Some("date_time".into())
    }

    fn splits(&self, _config: &NexmarkConfig, parallelism: usize) -> Result<Vec<Split>> {
        Ok((0..parallelism)
            .map(|i| Split::new(format!("shard-{i}-of-{parallelism}"), i))
            .collect())
    }

    fn reader(
        &self,
        config: &Arc<NexmarkConfig>,
        splits: Vec<Split>,
        task: &TaskInfo,
    ) -> Result<Box<dyn SourceReader>> {
        let stride = task.parallelism as u64;
        let shards = splits
            .iter()
            .map(|s| {
                Ok(Shard {
                    id: s.id.clone(),
                    next: match &s.position {
                        Some(p) => generator_position(&s.id, p)?,
                        None => s.index as u64,
                    },
                })
            })
            .collect::<Result<_>>()?;
        let schema = self.schema(config)?;
        Ok(Box::new(NexmarkReader {
            config: Arc::clone(config),
            first_split: splits.first().map_or(0, |s| s.index),
            schema,
            shards,
            finished: Vec::new(),
            stride,
            current: 0,
            pacer: config
                .rate_limit
                .map(|r| Pacer::new(r / task.parallelism as f64)),
        }))
    }
}

struct Shard {
    id: String,
    next: u64,
}

/// Reads the shards of one subtask.
pub struct NexmarkReader {
    config: Arc<NexmarkConfig>,
    first_split: usize,
    schema: SchemaRef,
    shards: Vec<Shard>,
    /// Shards that generated their last event.
    finished: Vec<Shard>,
    stride: u64,
    current: usize,
    pacer: Option<Pacer>,
}

impl NexmarkReader {
    fn exhausted(&self, shard: &Shard) -> bool {
        self.config.events.is_some_and(|n| shard.next >= n)
    }

    /// Generates up to `max_events` events (of all kinds), returning the rows of this
    /// reader's table among them.
    fn generate(&mut self, max_rows: usize, max_events: u64) -> Option<arrow::array::RecordBatch> {
        let mut builder = TableBuilder::new(self.config.kind, max_rows);
        let mut rows = 0;
        let mut events = 0;
        let g = Arc::clone(&self.config.generator);
        while rows < max_rows && events < max_events && !self.shards.is_empty() {
            let i = self.current % self.shards.len();
            if self.exhausted(&self.shards[i]) {
                self.finished.push(self.shards.remove(i));
                continue;
            }
            let id = self.shards[i].next;
            self.shards[i].next += self.stride;
            self.current = self.current.wrapping_add(1);
            events += 1;
            if kind_of(id) == self.config.kind {
                builder.append(&g, id);
                rows += 1;
            }
        }
        if let Some(p) = self.pacer.as_mut() {
            p.emitted(events);
        }
        (rows > 0).then(|| builder.finish(&self.schema))
    }
}

#[async_trait]
impl SourceReader for NexmarkReader {
    async fn read(&mut self, max_rows: usize, _ctx: &mut OperatorContext) -> Result<ReadResult> {
        loop {
            if self.shards.is_empty() {
                return Ok(ReadResult::End);
            }
            let budget = match self.pacer.as_mut() {
                None => u64::MAX,
                Some(p) => p.due().await,
            };
            if let Some(batch) = self.generate(max_rows, budget) {
                // Shards advance together (ids interleave), so one clock covers them.
                return Ok(ReadResult::Batch {
                    split: self.first_split,
                    rows: batch,
                });
            }
        }
    }

    fn positions(&self) -> Result<Vec<SplitPosition>> {
        Ok(self
            .shards
            .iter()
            .chain(&self.finished)
            .map(|s| SplitPosition {
                split: s.id.clone(),
                position: serde_json::json!({ "next": s.next }),
            })
            .collect())
    }
}

/// Reads a generator split's checkpointed position: the id of its next event.
pub(crate) fn generator_position(split: &str, position: &serde_json::Value) -> Result<u64> {
    position
        .get("next")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            SluiceError::user(format!(
                "checkpointed position of generator split {split} is not a generator position"
            ))
        })
}

/// Builds a Nexmark source spec for the Rust API.
///
/// ```
/// use sluice_connectors::NexmarkSource;
/// let spec = NexmarkSource::bids().events(1_000).seed(7).into_spec();
/// assert_eq!(spec.connector, "nexmark");
/// assert_eq!(spec.options["events.num"], "1000");
/// ```
#[derive(Clone, Debug)]
pub struct NexmarkSource {
    spec: ConnectorSpec,
}

impl NexmarkSource {
    fn table(t: &str) -> Self {
        Self {
            spec: ConnectorSpec::new("nexmark").with_option("table", t),
        }
    }

    /// The bid stream.
    pub fn bids() -> Self {
        Self::table("bid")
    }

    /// The auction stream.
    pub fn auctions() -> Self {
        Self::table("auction")
    }

    /// The person stream.
    pub fn persons() -> Self {
        Self::table("person")
    }

    /// Total events (all kinds) to generate; the stream then ends.
    pub fn events(mut self, n: u64) -> Self {
        self.spec.options.insert("events.num".into(), n.to_string());
        self
    }

    /// Wall-clock events per second, all subtasks together.
    pub fn rate_limit(mut self, events_per_sec: f64) -> Self {
        self.spec
            .options
            .insert("rate-limit".into(), events_per_sec.to_string());
        self
    }

    /// Events per second of event time.
    pub fn first_event_rate(mut self, events_per_sec: u64) -> Self {
        self.spec
            .options
            .insert("first-event.rate".into(), events_per_sec.to_string());
        self
    }

    /// The seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.spec.options.insert("seed".into(), seed.to_string());
        self
    }

    /// The plan's connector spec.
    pub fn into_spec(self) -> ConnectorSpec {
        self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, RecordBatch};
    use arrow::datatypes::Int64Type;
    use sluice_runtime::SourceConnector;

    fn read_all(spec: &ConnectorSpec, parallelism: usize) -> Vec<RecordBatch> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let c = NexmarkConnector;
        let config = Arc::new(c.parse(spec).unwrap());
        let splits = c.splits(&config, parallelism).unwrap();
        let mut out = Vec::new();
        for s in 0..parallelism {
            let task = TaskInfo {
                subtask: s,
                parallelism,
                ..TaskInfo::for_test("nexmark")
            };
            let mine = sluice_runtime::source::assign_splits(&splits, s, parallelism);
            let mut r = c.reader(&config, mine, &task).unwrap();
            let mut ctx = OperatorContext::for_test(bid_schema());
            rt.block_on(async {
                while let ReadResult::Batch { rows: b, .. } = r.read(1000, &mut ctx).await.unwrap()
                {
                    assert!(b.num_rows() <= 1000);
                    out.push(b);
                }
            });
        }
        out
    }

    fn rows(batches: &[RecordBatch]) -> Vec<(i64, i64, i64, i64, String)> {
        let mut v = Vec::new();
        for b in batches {
            let i = |c| b.column(c).as_primitive::<Int64Type>().clone();
            let (a, bd, p) = (i(0), i(1), i(2));
            let ts = b
                .column(5)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
            let ch = b.column(3).as_string::<i32>();
            for r in 0..b.num_rows() {
                v.push((
                    ts.value(r),
                    a.value(r),
                    bd.value(r),
                    p.value(r),
                    ch.value(r).to_string(),
                ));
            }
        }
        v.sort();
        v
    }

    #[test]
    fn same_seed_same_events_at_any_parallelism() {
        let spec = NexmarkSource::bids().events(10_000).seed(42).into_spec();
        let one = rows(&read_all(&spec, 1));
        assert_eq!(one.len(), 9_200, "46 of every 50 events are bids");
        assert_eq!(one, rows(&read_all(&spec, 1)), "deterministic");
        assert_eq!(
            one,
            rows(&read_all(&spec, 3)),
            "splits partition the same event space"
        );
        let other = rows(&read_all(
            &NexmarkSource::bids().events(10_000).seed(43).into_spec(),
            1,
        ));
        assert_ne!(one, other, "the seed matters");
    }

    #[test]
    fn fields_look_like_nexmark() {
        let spec = NexmarkSource::bids().events(100_000).into_spec();
        let bids = read_all(&spec, 1);
        let all = rows(&bids);
        // Event time advances 1 ms per 10 000 events at the default 10M events/s.
        assert_eq!(all.first().unwrap().0, 1_436_918_400_000);
        assert_eq!(all.last().unwrap().0, 1_436_918_400_009);
        // Prices are log-uniform from $1 to $1M (in cents).
        assert!(all.iter().all(|r| (100..=100_000_000).contains(&r.3)));
        // Half the bids go to the current hot auction (it moves every 100 auctions, about
        // every 1 700 events): in the first 1 500 events it is auction 1000.
        let early: Vec<_> = rows(&read_all(
            &NexmarkSource::bids().events(1_500).into_spec(),
            1,
        ));
        let hot = early.iter().filter(|r| r.1 == 1000).count();
        assert!(
            hot * 100 > early.len() * 40,
            "hot auction share {hot} of {}",
            early.len()
        );
        // The padding brings bids near their average size.
        let extra = bids[0].column(6).as_string::<i32>();
        let url = bids[0].column(4).as_string::<i32>();
        assert!(extra.len() > 0 && url.value(0).starts_with("https://www.nexmark.com/"));
        for t in ["auction", "person"] {
            let spec = NexmarkSource::bids()
                .events(500)
                .into_spec()
                .with_option("table", t);
            let n: usize = read_all(&spec, 2).iter().map(|b| b.num_rows()).sum();
            assert_eq!(n, if t == "auction" { 30 } else { 10 });
        }
    }

    #[test]
    fn bad_options_are_rejected() {
        let c = NexmarkConnector;
        for (k, v) in [
            ("table", "bids"),
            ("first-event.rate", "0"),
            ("rate-limit", "-1"),
            ("seed", "x"),
        ] {
            let spec = NexmarkSource::bids().into_spec().with_option(k, v);
            let e = c.parse(&spec).err().unwrap().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn rate_limit_paces_generation() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let c = NexmarkConnector;
        let spec = NexmarkSource::bids().rate_limit(1000.0).into_spec();
        let config = Arc::new(c.parse(&spec).unwrap());
        let splits = c.splits(&config, 1).unwrap();
        let mut r = c
            .reader(&config, splits, &TaskInfo::for_test("nexmark"))
            .unwrap();
        let mut ctx = OperatorContext::for_test(bid_schema());
        rt.block_on(async {
            let start = tokio::time::Instant::now();
            let mut rows = 0;
            while rows < 4_600 {
                if let ReadResult::Batch { rows: b, .. } = r.read(10_000, &mut ctx).await.unwrap() {
                    rows += b.num_rows();
                }
            }
            // Paused clock: time advances only through the reader's sleeps, so this is
            // the generator's own pacing, not a wall-clock measurement.
            let virtual_secs = start.elapsed().as_secs_f64();
            assert!(
                (4.5..=5.5).contains(&virtual_secs),
                "5000 events at 1000/s took {virtual_secs}"
            );
        });
    }
}
