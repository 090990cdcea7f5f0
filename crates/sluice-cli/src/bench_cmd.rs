//! `sluice bench`: each suite's arguments, and what it prints.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::bench;

/// The benchmarks.
#[derive(Subcommand)]
pub(crate) enum BenchSuite {
    /// A Nexmark query from the generator into a blackhole sink.
    Nexmark {
        /// A query of examples/nexmark/: q0 to q22.
        #[arg(long, default_value = "q0")]
        query: String,
        /// `sql`: the query's SQL text (default); `rust`: the hand-built Rust API
        /// pipeline (q0, q1, q2, q5, q7, q11).
        #[arg(long, default_value = "sql")]
        api: crate::bench::Api,
        /// Events per second of event time (Flink's `first-event.rate`; 10 M by default,
        /// the `--rate` when paced).
        #[arg(long)]
        event_rate: Option<u64>,
        /// Pace the generator at this many events per wall-clock second (all subtasks
        /// together), for latency under load; event time then advances as fast unless
        /// `--event-rate` says otherwise.
        #[arg(long)]
        rate: Option<f64>,
        /// Events to generate (all kinds; 46 of 50 are bids).
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Parallelism of every operator.
        #[arg(long, short, default_value_t = 1)]
        parallelism: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Take a checkpoint this often (to measure what checkpointing costs).
        #[arg(long, value_parser = humantime::parse_duration)]
        checkpoint_interval: Option<Duration>,
    },
    /// End-to-end latency through a Kafka broker: a paced producer, the job (Kafka →
    /// query → Kafka) in this process, and a consumer timing every output row.
    #[cfg(feature = "kafka")]
    Kafka {
        /// The broker (`host:port`).
        #[arg(long)]
        bootstrap: String,
        /// `q0` (projection; latency from each event's production) or `window` (1 s
        /// tumbling count per auction; latency from each window's end).
        #[arg(long, default_value = "q0")]
        query: String,
        /// Events to produce.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Events per second offered.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Parallelism of every operator.
        #[arg(long, short, default_value_t = 1)]
        parallelism: usize,
        /// Measure throughput instead: read `events` Nexmark events' bids from a topic,
        /// written there first, and write them all to another (records per CPU-second).
        #[arg(long)]
        throughput: bool,
        /// With --throughput: `json` or `avro`, in and out.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// A SQL script over files (or any source) run to its end: rows per second and per
    /// CPU-second, end-to-end latency p50/p99, peak memory.
    File {
        /// The script; `$INPUT` in it stands for `--input`.
        #[arg(long)]
        sql: PathBuf,
        /// What `$INPUT` stands for in the script (a file or a directory).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Parallelism of every operator (a script's `SET 'parallelism.default'` wins).
        #[arg(long, short, default_value_t = 1)]
        parallelism: usize,
        /// Pace each source at this many rows per wall-clock second (latency under load).
        #[arg(long)]
        rate: Option<f64>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Checkpoint duration and size, and restore time, for N keys of window state.
    State {
        /// Distinct keys in the open window.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Parallelism of every operator.
        #[arg(long, short, default_value_t = 1)]
        parallelism: usize,
        /// Where the checkpoints go: a directory, or `s3://bucket/prefix` (built with
        /// the `s3` feature; credentials and endpoint from the usual AWS variables).
        /// Default: a temporary directory.
        #[arg(long)]
        checkpoint_dir: Option<String>,
    },
}

/// Runs one benchmark suite and prints its result.
pub(crate) async fn run(suite: BenchSuite) -> anyhow::Result<()> {
    match suite {
        BenchSuite::Nexmark {
            query,
            events,
            parallelism,
            json,
            event_rate,
            rate,
            checkpoint_interval,
            api,
        } => {
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                anyhow::bail!("--rate must be a positive number");
            }
            let pace = bench::Pace {
                event_rate,
                wall: rate,
            };
            let r = bench::run_nexmark(&query, events, parallelism, pace, checkpoint_interval, api)
                .await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} ({}) p={} events={} wall={:.2}s cpu={:.2}s  {:.2} M events/s  {:.2} M events/cpu-s  latency p50 {:.3} ms p99 {:.3} ms  peak rss {:.0} MiB",
                    r.query,
                    r.api,
                    r.parallelism,
                    r.events,
                    r.wall_s,
                    r.cpu_s,
                    r.events_per_sec / 1e6,
                    r.events_per_cpu_sec / 1e6,
                    r.latency_p50_ms,
                    r.latency_p99_ms,
                    r.peak_rss_mb
                );
            }
            Ok(())
        }
        #[cfg(feature = "kafka")]
        BenchSuite::Kafka {
            bootstrap,
            query,
            events,
            rate,
            parallelism,
            throughput,
            format,
        } => {
            let json = match throughput {
                true => serde_json::to_string(
                    &crate::kafka_bench::run_kafka_throughput(
                        &bootstrap,
                        &format,
                        events,
                        parallelism,
                    )
                    .await?,
                )?,
                false => serde_json::to_string(
                    &crate::kafka_bench::run_kafka_bench(
                        &bootstrap,
                        &query,
                        events,
                        rate,
                        parallelism,
                    )
                    .await?,
                )?,
            };
            println!("{json}");
            Ok(())
        }
        BenchSuite::File {
            sql,
            input,
            parallelism,
            rate,
            json,
        } => {
            let r = bench::run_file_bench(&sql, input.as_deref(), parallelism, rate).await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} p={} rows={} wall={:.2}s cpu={:.2}s  {:.0} rows/s  {:.0} rows/cpu-s  latency p50 {:.3} ms p99 {:.3} ms  peak rss {:.0} MiB{}",
                    r.script,
                    r.parallelism,
                    r.source_rows,
                    r.wall_s,
                    r.cpu_s,
                    r.rows_per_sec,
                    r.rows_per_cpu_sec,
                    r.latency_p50_ms,
                    r.latency_p99_ms,
                    r.peak_rss_mb,
                    match r.dead_letters {
                        0 => String::new(),
                        n => format!("  {n} dead letters"),
                    }
                );
            }
            Ok(())
        }
        BenchSuite::State {
            keys,
            parallelism,
            checkpoint_dir,
        } => {
            let r = bench::run_state_bench(keys, parallelism, checkpoint_dir.as_deref()).await?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}
