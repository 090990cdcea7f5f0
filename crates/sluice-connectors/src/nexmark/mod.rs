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

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use sluice_plan::ConnectorSpec;
use sluice_runtime::{OperatorContext, ReadResult, SourceConnector, SourceReader, Split};
use sluice_types::{Result, SluiceError, TaskInfo};
use tokio::time::Instant;

use generator::TableBuilder;
pub use generator::{
    EventKind, Generator, GeneratorConfig, auction_schema, bid_schema, kind_of, person_schema,
};

use crate::options::OptionReader;

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
            .map(|i| Split {
                id: format!("shard-{i}-of-{parallelism}"),
                index: i,
            })
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
            .map(|s| Shard {
                next: s.index as u64,
            })
            .collect();
        let schema = self.schema(config)?;
        Ok(Box::new(NexmarkReader {
            config: Arc::clone(config),
            schema,
            shards,
            stride,
            current: 0,
            generated: 0,
            started: None,
            per_reader_rate: config.rate_limit.map(|r| r / task.parallelism as f64),
        }))
    }
}

struct Shard {
    next: u64,
}

/// Reads the shards of one subtask.
pub struct NexmarkReader {
    config: Arc<NexmarkConfig>,
    schema: SchemaRef,
    shards: Vec<Shard>,
    stride: u64,
    current: usize,
    generated: u64,
    started: Option<Instant>,
    per_reader_rate: Option<f64>,
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
                self.shards.remove(i);
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
        self.generated += events;
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
            let budget = match self.per_reader_rate {
                None => u64::MAX,
                Some(rate) => {
                    let start = *self.started.get_or_insert_with(Instant::now);
                    let due = (start.elapsed().as_secs_f64() * rate) as u64;
                    if due <= self.generated {
                        // Sleep until the next event is due (cancel-safe: no state changes).
                        let next_at =
                            start + Duration::from_secs_f64((self.generated + 1) as f64 / rate);
                        tokio::time::sleep_until(next_at).await;
                        continue;
                    }
                    due - self.generated
                }
            };
            if let Some(batch) = self.generate(max_rows, budget) {
                return Ok(ReadResult::Batch(batch));
            }
        }
    }
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
