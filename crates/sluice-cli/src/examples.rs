//! Built-in example jobs, runnable by name: `sluice run --example NAME`.

use std::path::PathBuf;

use sluice::prelude::*;

/// Settings shared by the examples.
#[derive(Clone, Debug)]
pub struct ExampleArgs {
    /// Events to generate (all Nexmark kinds); `None`: unbounded.
    pub events: Option<u64>,
    /// Parallelism of every operator.
    pub parallelism: usize,
    /// Where file-writing examples write.
    pub out_dir: PathBuf,
    /// Nexmark events per second of event time (`None`: the generator's default, 10 M/s).
    pub event_rate: Option<u64>,
    /// Rows per wall-clock second the sources deliver (`None`: as fast as possible).
    pub rows_per_second: Option<f64>,
    /// Input files or directory of examples that read files.
    pub input: Option<PathBuf>,
}

/// An example: name, description, builder.
pub struct Example {
    /// Name for `--example`.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// Builds the pipeline.
    pub build: fn(&ExampleArgs) -> Pipeline,
}

fn bids(p: &Pipeline, a: &ExampleArgs) -> Stream {
    let mut src = NexmarkSource::bids();
    if let Some(n) = a.events {
        src = src.events(n);
    }
    if let Some(r) = a.event_rate {
        src = src.first_event_rate(r);
    }
    if let Some(r) = a.rows_per_second {
        src = src.rate_limit(r);
    }
    p.source(src)
}

/// The columns of Nexmark bids that `windowed-file` reads.
fn file_bid_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// The built-in examples. The first is the default main job.
pub const EXAMPLES: &[Example] = &[
    Example {
        name: "bids-per-auction",
        about: "Nexmark bids over $10, counted per auction (running aggregate), written as a Debezium JSON changelog",
        build: |a| {
            let p = Pipeline::new("bids-per-auction");
            p.parallelism(a.parallelism);
            bids(&p, a)
                .filter(col("price").gt(lit(1_000)))
                .key_by(["auction"])
                .aggregate([
                    count_star().alias("bids"),
                    max(col("price")).alias("top_price"),
                    avg(col("price")).alias("avg_price"),
                ])
                .sink(FileSink::debezium_json(a.out_dir.join("bids-per-auction")));
            p
        },
    },
    Example {
        name: "windowed-file",
        about: "bids from JSON-lines files (--input; auction, bidder, price, date_time), bids and volume per auction per 1 s tumbling window, written as JSON lines",
        build: |a| {
            let p = Pipeline::new("windowed-file");
            p.parallelism(a.parallelism);
            let input = a.input.clone().unwrap_or_else(|| "bids.jsonl".into());
            let mut src = FileSource::json(input).with_schema(file_bid_schema());
            if let Some(r) = a.rows_per_second {
                src = src.rows_per_second(r);
            }
            p.source(src)
                .event_time("date_time")
                .key_by(["auction"])
                .window(Window::tumbling(Duration::from_secs(1)))
                .aggregate([
                    count_star().alias("bids"),
                    sum(col("price")).alias("volume"),
                ])
                .sink(FileSink::json(a.out_dir.join("windowed-file")));
            p
        },
    },
    Example {
        name: "q0",
        about: "Nexmark q0 (pass-through) into a blackhole",
        build: |a| nexmark_query("q0", a),
    },
    Example {
        name: "q1",
        about: "Nexmark q1 (currency conversion) into a blackhole",
        build: |a| nexmark_query("q1", a),
    },
    Example {
        name: "q2",
        about: "Nexmark q2 (selection: auction % 123 = 0) into a blackhole",
        build: |a| nexmark_query("q2", a),
    },
    Example {
        name: "q5",
        about: "Nexmark q5 (hot items: auctions with the most bids per 10 s window sliding every 2 s) into a blackhole",
        build: |a| nexmark_query("q5", a),
    },
    Example {
        name: "q7",
        about: "Nexmark q7 (highest bid per 10 s tumbling window) into a blackhole",
        build: |a| nexmark_query("q7", a),
    },
    Example {
        name: "q11",
        about: "Nexmark q11 (bids per bidder per session, 10 s gap) into a blackhole",
        build: |a| nexmark_query("q11", a),
    },
    Example {
        name: "print-bids",
        about: "the first Nexmark bids (auction, bidder, price) printed as JSON lines",
        build: |a| {
            let p = Pipeline::new("print-bids");
            p.parallelism(a.parallelism);
            bids(
                &p,
                &ExampleArgs {
                    events: Some(a.events.unwrap_or(100)),
                    ..a.clone()
                },
            )
            .select([col("auction"), col("bidder"), col("price")])
            .sink(PrintSink::new());
            p
        },
    },
];

/// A Nexmark query (q0, q1, q2, q5, q7, q11) from the generator into a blackhole.
pub fn nexmark_query(query: &str, a: &ExampleArgs) -> Pipeline {
    let p = Pipeline::new(format!("nexmark-{query}"));
    p.parallelism(a.parallelism);
    let bids = bids(&p, a);
    let out = match query {
        // SELECT auction, bidder, price, date_time, extra FROM bid
        "q0" => bids.select([
            col("auction"),
            col("bidder"),
            col("price"),
            col("date_time"),
            col("extra"),
        ]),
        // SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid
        "q1" => bids.select([
            col("auction"),
            col("bidder"),
            (lit(0.908) * col("price")).alias("price"),
            col("date_time"),
            col("extra"),
        ]),
        // SELECT bidder, count(*) AS bid_count, SESSION_START(..), SESSION_END(..)
        // FROM bid GROUP BY bidder, SESSION(date_time, INTERVAL '10' SECOND)
        "q11" => bids
            .key_by(["bidder"])
            .window(Window::session(Duration::from_secs(10)))
            .aggregate([count_star().alias("bid_count")]),
        // Hot items: per 10 s window sliding every 2 s, the auctions with the most bids
        // (every auction tying for the most is kept, as the Nexmark SQL's join on max).
        "q5" => bids
            .key_by(["auction"])
            .window(Window::hopping(
                Duration::from_secs(10),
                Duration::from_secs(2),
            ))
            .aggregate([count_star().alias("num")])
            .top_n_per_window(1, "num", true)
            .select([col("auction"), col("num")]),
        // The highest bid per 10 s tumbling window: max(price) with the bid it came from.
        // Nexmark's SQL joins bids with the per-window maximum, returning every bid that
        // ties for it; the arg-max aggregates here return one of them.
        "q7" => {
            let by_price = || vec![col("price").sort(false, false)];
            bids.window_all(Window::tumbling(Duration::from_secs(10)))
                .aggregate([
                    max(col("price")).alias("price"),
                    first_value(col("auction"), by_price()).alias("auction"),
                    first_value(col("bidder"), by_price()).alias("bidder"),
                    first_value(col("date_time"), by_price()).alias("date_time"),
                    first_value(col("extra"), by_price()).alias("extra"),
                ])
        }
        // SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0
        _ => bids
            .filter((col("auction") % lit(123)).eq(lit(0)))
            .select([col("auction"), col("price")]),
    };
    out.sink(BlackholeSink::new());
    p
}

/// Finds an example by name.
pub fn find(name: &str) -> Option<&'static Example> {
    EXAMPLES.iter().find(|e| e.name == name)
}
