//! The `sluice` command.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod bench;
mod bench_cmd;
mod client;
mod examples;
#[cfg(feature = "kafka")]
mod kafka_bench;
mod run;
mod scripts;
mod sql_client;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::client::ServerArgs;
use crate::examples::ExampleArgs;
use crate::scripts::{DEFAULT_EXAMPLE, find_example, plan_scripts};
use sluice::runtime::StopHandle;
use sluice::runtime::metrics::JobMetrics;

// Batches allocate and free buffers of hundreds of KiB; glibc malloc serves those with
// mmap/munmap and page faults on every batch. mimalloc keeps them in its pages. Every
// allocation is charged to the job whose task made it ('sluice.job.memory-limit').
#[global_allocator]
static GLOBAL: sluice_alloc::AccountingAllocator<mimalloc::MiMalloc> =
    sluice_alloc::AccountingAllocator::new(mimalloc::MiMalloc);

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a native stream processing engine"
)]
struct Cli {
    /// Show Rust stack traces with errors in the log (also with RUST_BACKTRACE=1); the
    /// server keeps them in each job's exception history either way.
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job in this process until its input ends (or Ctrl-C stops it cleanly):
    /// a SQL script, or a built-in example.
    Run {
        /// SQL scripts (`.sql`), planned in order as one session (`tables.sql q5.sql`):
        /// their INSERT INTO and SELECT statements run as one job.
        scripts: Vec<PathBuf>,
        /// A built-in example job instead of scripts (see `sluice examples`; default
        /// bids-per-auction).
        #[arg(long)]
        example: Option<String>,
        /// Examples: Nexmark events to generate (10 000 000); 0 for an unbounded stream.
        /// A script sets its sources in its CREATE TABLE ('events.num').
        #[arg(long)]
        events: Option<u64>,
        /// Parallelism of every operator (a script's `SET 'parallelism.default'` wins).
        #[arg(long, short)]
        parallelism: Option<usize>,
        /// Examples: the directory they write files into (sluice-out). A script names
        /// its sinks' paths in its CREATE TABLE.
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
        /// Serve the job's metrics for Prometheus at `http://ADDR/metrics` (read-only;
        /// each cluster instance its own), e.g. `0.0.0.0:9249`.
        #[arg(long, value_name = "ADDR")]
        metrics_bind: Option<String>,
        /// Examples: rows per wall-clock second the sources deliver (as fast as possible
        /// by default). A script sets 'rows-per-second' or 'rate-limit' on its tables.
        #[arg(long)]
        rows_per_second: Option<f64>,
        /// Examples: input files (or a directory) for those that read files.
        #[arg(long)]
        input: Option<PathBuf>,
        #[command(flatten)]
        checkpoints: Box<CheckpointArgs>,
    },
    /// Print a job's dataflow graph: tasks, chaining, parallelism, edges.
    Explain {
        /// SQL scripts, planned in order as one session.
        scripts: Vec<PathBuf>,
        /// A job running on a server (see `--server`) instead of a script.
        #[arg(long, conflicts_with = "scripts")]
        job: Option<u64>,
        #[command(flatten)]
        server: ServerArgs,
        /// A built-in example job.
        #[arg(long, default_value = DEFAULT_EXAMPLE, conflicts_with = "scripts")]
        example: String,
        /// Parallelism of every operator.
        #[arg(long, short, default_value_t = 1)]
        parallelism: usize,
    },
    /// An interactive SQL client, as Flink's: DDL, SHOW TABLES, DESCRIBE, EXPLAIN, SET,
    /// SELECT with its rows shown as they come (LIMIT n stops after n), INSERT INTO as a
    /// background job (SHOW JOBS, STOP JOB). Statements end with `;`.
    Sql {
        /// A SQL file whose statements run first (tables, settings), then the prompt.
        #[arg(long, short = 'i')]
        init: Option<PathBuf>,
        /// A SQL file whose statements run instead of the prompt.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// Run the session on a `sluice server` at this address instead of in this
        /// process: SELECT rows stream back, INSERT INTO becomes one of its jobs.
        #[arg(long)]
        server: Option<String>,
        /// The server's API token (also `SLUICE_TOKEN`).
        #[arg(long, env = "SLUICE_TOKEN")]
        token: Option<String>,
    },
    /// List the built-in example jobs.
    Examples,
    /// Every consumer group reading a Kafka topic (Sluice jobs and any other consumers):
    /// members, partitions, committed offsets, lag.
    #[cfg(feature = "kafka")]
    WhoConsumes {
        /// The topic.
        topic: String,
        /// A broker (`host:port`).
        #[arg(long)]
        bootstrap: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A long-running job manager: many jobs in this process, a REST API and
    /// Prometheus metrics (`/metrics`).
    Server {
        /// Address to listen on; beyond loopback an API token is required.
        #[arg(long, default_value = "127.0.0.1:8081")]
        bind: String,
        /// API token for calls that change something (also `SLUICE_TOKEN`).
        #[arg(long, env = "SLUICE_TOKEN")]
        token: Option<String>,
        /// Where job definitions and their checkpoints are kept (running jobs come back
        /// after a restart).
        #[arg(long, default_value = "sluice-server")]
        data_dir: PathBuf,
        /// A directory SQL jobs may read and write files in (repeatable); the working
        /// directory when none is given. Everything else is refused at submit.
        #[arg(long = "allow-dir")]
        allow_dirs: Vec<PathBuf>,
        /// A job's log file (`<data-dir>/logs/<job>.log`) rotates at this many MiB.
        #[arg(long, default_value_t = 16)]
        log_file_mib: u64,
        /// Rotated log files kept per job.
        #[arg(long, default_value_t = 5)]
        log_files_kept: usize,
        /// Alert rules: a JSON file with an array of rules (see docs/server.md).
        #[arg(long)]
        alerts: Option<PathBuf>,
        /// How often alert rules are evaluated (`1s`, `500ms`).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        alert_interval: Duration,
        /// Alert webhooks may call public addresses only: not this machine, private
        /// networks or link-local addresses (checked on what names resolve to).
        #[arg(long)]
        webhooks_public_only: bool,
        /// Most API connections served at once; more wait until one closes.
        #[arg(long, default_value_t = 512)]
        max_connections: usize,
        /// How long a client may take to send a request's headers, and a kept-alive
        /// connection may idle, before the server closes it.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        header_timeout: Duration,
        /// Every job's memory limit (`512 mb`, `2 gb`): a job over it fails alone (a job's
        /// own 'sluice.job.memory-limit' may be lower, not higher).
        #[arg(long, value_parser = |v: &str| sluice_sql::settings::memory_size("--job-memory-limit", v).map_err(|e| e.to_string()))]
        job_memory_limit: Option<u64>,
    },
    /// Submit a SQL script to a server as a job; prints its id.
    Submit {
        /// The SQL script.
        script: PathBuf,
        /// Job name.
        #[arg(long)]
        name: Option<String>,
        /// Default parallelism.
        #[arg(long, short)]
        parallelism: Option<usize>,
        /// Start from this savepoint (a path the server can read).
        #[arg(long)]
        from_savepoint: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Take a savepoint of a job on a server (and stop it there with `--stop`).
    Savepoint {
        /// The job id.
        id: u64,
        /// Stop the job at the savepoint.
        #[arg(long)]
        stop: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List a server's jobs.
    List {
        /// The server's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one job of a server: status, counts, checkpoints, per-operator metrics, the
    /// last failure.
    Status {
        /// The job id.
        id: u64,
        /// The server's JSON instead of a summary.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Why is a job slow: the likely causes, most likely first, each with its evidence
    /// and what to do (a bottleneck where backpressure ends, a slow sink, skew, a source
    /// holding event time back, checkpoint alignment, state growing without a TTL, late
    /// rows or dead letters), from the last 30 seconds of the job on a server.
    Diagnose {
        /// The job id.
        id: u64,
        /// The server's JSON instead of the list.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A server's jobs with what each reads and writes (topic -> job -> topic); with
    /// `--cluster NAME --bootstrap HOST:PORT`, the instances of a cluster instead (from
    /// its consumer group): each one's host, partitions and lag.
    Ps {
        #[command(flatten)]
        server: ServerArgs,
        /// A cluster's instances (`sluice run --cluster NAME`) rather than a server's jobs.
        #[arg(long, value_name = "NAME", requires = "bootstrap")]
        cluster: Option<String>,
        /// A broker of the cluster's Kafka (`host:port`).
        #[arg(long)]
        bootstrap: Option<String>,
        /// The cluster's consumer group, when its job names one (default `sluice-NAME`).
        #[arg(long, requires = "cluster")]
        group: Option<String>,
        /// Print JSON.
        #[arg(long, requires = "cluster")]
        json: bool,
    },
    /// A job's log events on a server, oldest first (`--errors` shows stack traces).
    Logs {
        /// The job id.
        id: u64,
        /// Errors only, each with its stack trace.
        #[arg(long)]
        errors: bool,
        /// This level and above: error, warn, info.
        #[arg(long, conflicts_with = "errors")]
        level: Option<String>,
        /// Tasks whose name contains this (`window[1]`).
        #[arg(long)]
        task: Option<String>,
        /// Events containing this text (case-insensitive).
        #[arg(long, short = 'q')]
        grep: Option<String>,
        /// The newest n events.
        #[arg(long, default_value_t = 200)]
        limit: usize,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a job on a server: it stops where it is, open windows dropped (stop it with
    /// a savepoint to end it cleanly).
    Cancel {
        /// The job id.
        id: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        suite: bench_cmd::BenchSuite,
    },
}

/// Checkpoint, savepoint and restore options of `sluice run`.
#[derive(clap::Args)]
struct CheckpointArgs {
    /// Take a checkpoint this often (`500ms`, `10s`, `1m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    checkpoint_interval: Option<Duration>,
    /// Where checkpoints go (a directory; `s3://bucket/prefix` with the `s3` feature).
    #[arg(long)]
    checkpoint_dir: Option<String>,
    /// Where savepoints go (default: `<checkpoint dir>/savepoints`).
    #[arg(long)]
    savepoint_dir: Option<String>,
    /// at-most-once, at-least-once or exactly-once (default: exactly-once).
    #[arg(long)]
    delivery: Option<sluice::plan::DeliveryGuarantee>,
    /// Start from `latest` (the newest complete checkpoint in the checkpoint directory)
    /// or from a checkpoint or savepoint directory. `latest` with no complete checkpoint
    /// there fails, unless `--fresh-if-none`.
    #[arg(long)]
    from_checkpoint: Option<String>,
    /// With `--from-checkpoint latest`: start from the beginning of the input when there
    /// is no complete checkpoint yet (a first run, or a job run again and again).
    #[arg(long, requires = "from_checkpoint")]
    fresh_if_none: bool,
    /// On Ctrl-C (or SIGTERM) take a savepoint and stop (resume from it later).
    #[arg(long)]
    stop_with_savepoint: bool,
    /// On Ctrl-C (or SIGTERM) end the input and flush everything, open windows firing as if the input
    /// had ended (Flink's `stop --drain`). Without it, Ctrl-C cancels: the job stops where
    /// it is and open windows are dropped.
    #[arg(long, conflicts_with = "stop_with_savepoint")]
    drain: bool,
    /// How a failed job restarts (from its latest checkpoint): `none`, `fixed-delay`
    /// (`--restart-attempts`, `--restart-delay`), `exponential-delay` (`--restart-delay`
    /// first, times `--restart-multiplier`, at most `--restart-max-delay`, ±
    /// `--restart-jitter`, reset after `--restart-reset-after`; `--restart-attempts` if
    /// not 0), `failure-rate` (`--restart-max-failures` per `--restart-interval`).
    /// Default: fixed-delay when `--restart-attempts` is given, else none.
    #[arg(long)]
    restart_strategy: Option<String>,
    /// Restarts allowed (fixed-delay, 1 by default; exponential-delay when given).
    #[arg(long)]
    restart_attempts: Option<usize>,
    /// Wait this long before a restart (the first one, for exponential-delay); 1s by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_delay: Option<Duration>,
    /// The largest exponential delay; 1m by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_max_delay: Option<Duration>,
    /// Growth of the exponential delay per failure; 2 by default.
    #[arg(long)]
    restart_multiplier: Option<f64>,
    /// Random spread of exponential delays (fraction); 0.1 by default.
    #[arg(long)]
    restart_jitter: Option<f64>,
    /// A run this long without failure resets the exponential delay; 1h by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_reset_after: Option<Duration>,
    /// Failures allowed per interval (failure-rate); 1 by default.
    #[arg(long)]
    restart_max_failures: Option<usize>,
    /// The failure-rate interval; 1m by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_interval: Option<Duration>,
    /// Run as one instance of cluster NAME: every process started with the same job and
    /// cluster name shares the job's Kafka partitions through one consumer group
    /// (`sluice-NAME`), and commits its output with the offsets it read in Kafka
    /// transactions. Resumes from the group's committed offsets, not from a checkpoint.
    #[arg(long, value_name = "NAME", conflicts_with = "from_checkpoint")]
    cluster: Option<String>,
    /// This instance's name in the cluster, unique and stable across its restarts (a
    /// StatefulSet pod's name): it then takes its partitions back at once after a
    /// restart. Default: host name and process id.
    #[arg(long, value_name = "ID", requires = "cluster")]
    instance: Option<String>,
}

impl CheckpointArgs {
    /// The restart strategy the flags describe (the same settings, and defaults, as
    /// the server's REST API takes).
    fn restart_strategy(&self) -> anyhow::Result<sluice::restart::RestartStrategy> {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        let spec = sluice::restart::RestartSpec {
            strategy: self.restart_strategy.clone(),
            attempts: self.restart_attempts,
            delay_ms: ms(self.restart_delay),
            max_delay_ms: ms(self.restart_max_delay),
            multiplier: self.restart_multiplier,
            jitter: self.restart_jitter,
            reset_after_ms: ms(self.restart_reset_after),
            max_failures: self.restart_max_failures,
            interval_ms: ms(self.restart_interval),
        };
        Ok(spec.strategy()?)
    }

    fn apply(&self, p: &sluice::Pipeline) -> anyhow::Result<()> {
        if let Some(name) = &self.cluster {
            p.cluster(sluice::plan::ClusterConfig::new(
                name.clone(),
                self.instance.clone(),
            )?);
        }
        if let Some(i) = self.checkpoint_interval {
            p.checkpointing(i);
        }
        if let Some(d) = &self.checkpoint_dir {
            p.checkpoint_dir(d.clone());
        }
        if let Some(d) = &self.savepoint_dir {
            p.savepoint_dir(d.clone());
        }
        if let Some(d) = self.delivery {
            p.delivery(d);
        }
        match self.from_checkpoint.as_deref() {
            None => {}
            Some("latest") => {
                p.restore_from(sluice::plan::RestoreFrom::Latest);
            }
            Some(path) => {
                p.restore_from(sluice::plan::RestoreFrom::Path(path.to_string()));
            }
        }
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    sluice_alloc::disable_transparent_huge_pages();
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error as one clear message: a job's failure as `in operator `x`: what went wrong`
/// (no "user error" label), then the causes that add something (an error that already
/// shows its cause is not followed by it again). Never a debug dump with a backtrace.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<sluice::SluiceError>() {
            Some(s) => {
                let mut t = String::new();
                if s.kind == sluice_types::ErrorKind::Internal {
                    t.push_str("internal error (a bug in Sluice, please report it): ");
                }
                if let Some(op) = &s.operator {
                    t.push_str(&format!("in operator `{op}`: "));
                }
                t.push_str(&s.message);
                if let Some(src) = std::error::Error::source(s) {
                    t.push_str(&format!(": {src}"));
                }
                t
            }
            None => cause.to_string(),
        };
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Whether stack traces go with errors in the console log.
fn verbose(flag: bool) -> bool {
    flag || std::env::var("RUST_BACKTRACE").is_ok_and(|v| v != "0")
}

fn run_cli() -> anyhow::Result<()> {
    // Failures show where they were raised (in the logs and the dashboard's log finder).
    sluice::capture_backtraces(std::env::var("RUST_LIB_BACKTRACE").map_or(true, |v| v != "0"));
    let cli = Cli::parse();
    {
        use tracing_subscriber::prelude::*;
        let traces = verbose(cli.verbose);
        // Each event's fields, but its stack trace only when asked for.
        let fields =
            tracing_subscriber::fmt::format::debug_fn(move |w, field, value| match field.name() {
                "message" => write!(w, "{value:?}"),
                "backtrace" if !traces => Ok(()),
                "backtrace" => write!(w, "\n{value:?}"),
                name => write!(w, "{name}={value:?}"),
            })
            .delimited(" ");
        let console = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(fields)
            .with_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            );
        // Per-job logs for the server (and anything that asks for them): INFO and up.
        let per_job = sluice_server::logs::LogLayer
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        tracing_subscriber::registry()
            .with(console)
            .with(per_job)
            .init();
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        // Operators evaluate expressions recursively: room for the deepest one a script
        // may hold (planning has a thread of its own).
        .thread_stack_size(16 * 1024 * 1024)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The command's own future (which prepares jobs: expressions become physical ones,
    // recursively) runs on a thread with the workers' room, not on the main thread.
    std::thread::Builder::new()
        .name("sluice".into())
        .stack_size(16 * 1024 * 1024)
        .spawn(move || rt.block_on(async_main(cli)))
        .context("starting the main thread")?
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn example_args(events: u64, parallelism: usize, out: PathBuf) -> ExampleArgs {
    ExampleArgs {
        events: (events > 0).then_some(events),
        parallelism,
        out_dir: out,
        event_rate: None,
        rows_per_second: None,
        input: None,
    }
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sql {
            init,
            file,
            server,
            token,
        } => {
            let remote = server
                .map(|s| sql_client::Remote::new(&s, token))
                .transpose()?;
            sql_client::run(init, file, remote).await
        }
        Command::Examples => {
            for e in examples::EXAMPLES {
                println!("{:<12} {}", e.name, e.about);
            }
            Ok(())
        }
        Command::Explain {
            job: Some(id),
            server,
            ..
        } => {
            let v = server.call("GET", &format!("/api/jobs/{id}"), None)?;
            print!("{}", v["explain"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Explain {
            scripts,
            parallelism,
            ..
        } if !scripts.is_empty() => {
            let job = plan_scripts(&scripts, Some(parallelism))?;
            for (stmt, plan) in job.explains {
                println!("EXPLAIN {stmt}");
                print!("{}", sluice::Pipeline::from_plan(plan).explain()?);
            }
            if let Some(plan) = job.plan {
                print!("{}", sluice::Pipeline::from_plan(plan).explain()?);
            }
            Ok(())
        }
        Command::Explain {
            example,
            parallelism,
            ..
        } => {
            let ex = find_example(&example)?;
            let p = (ex.build)(&example_args(1, parallelism, "sluice-out".into()));
            print!("{}", p.explain()?);
            Ok(())
        }
        Command::Run {
            scripts,
            example,
            events,
            parallelism,
            out,
            quiet,
            metrics_bind,
            rows_per_second,
            input,
            checkpoints,
        } => {
            if !scripts.is_empty() {
                // Flags for the built-in examples mean nothing to a script: refuse them
                // rather than ignore them.
                let given = [
                    (
                        example.is_some(),
                        "--example runs a built-in example instead of a script",
                    ),
                    (
                        events.is_some(),
                        "--events sizes the built-in examples' generator; a script sets its tables' sizes in CREATE TABLE (the nexmark connector's 'events.num')",
                    ),
                    (
                        out.is_some(),
                        "--out is where the built-in examples write; a script names its sinks' paths in CREATE TABLE ('path')",
                    ),
                    (
                        rows_per_second.is_some(),
                        "--rows-per-second paces the built-in examples; a script paces its tables in CREATE TABLE ('rows-per-second' for files, 'rate-limit' for nexmark)",
                    ),
                    (
                        input.is_some(),
                        "--input is what the built-in examples read; a script names its tables' paths in CREATE TABLE ('path')",
                    ),
                ];
                if let Some((_, why)) = given.iter().find(|(g, _)| *g) {
                    bail!("{why}");
                }
            }
            // A `SELECT … LIMIT n` ends once its n rows are written.
            let mut row_limit = None;
            let (pipeline, out_hint) = match scripts.is_empty() {
                false => {
                    let job = plan_scripts(&scripts, parallelism)?;
                    for (stmt, plan) in job.explains {
                        println!("EXPLAIN {stmt}");
                        print!("{}", sluice::Pipeline::from_plan(plan).explain()?);
                    }
                    match job.plan {
                        Some(plan) => {
                            row_limit = plan.row_limit();
                            (sluice::Pipeline::from_plan(plan), None)
                        }
                        None => return Ok(()),
                    }
                }
                true => {
                    let ex = find_example(example.as_deref().unwrap_or(DEFAULT_EXAMPLE))?;
                    let out = out.unwrap_or_else(|| "sluice-out".into());
                    let mut args = example_args(
                        events.unwrap_or(10_000_000),
                        parallelism.unwrap_or(1),
                        out.clone(),
                    );
                    args.rows_per_second = rows_per_second;
                    args.input = input;
                    let hint = matches!(ex.name, "bids-per-auction" | "windowed-file")
                        .then(|| out.join(ex.name));
                    ((ex.build)(&args), hint)
                }
            };
            checkpoints.apply(&pipeline)?;
            // A cluster instance of a job with keyed state: its front and the tasks of the
            // repartition topic's partitions the group gives it.
            #[cfg(feature = "kafka")]
            if checkpoints.cluster.is_some() {
                let registry = pipeline.connector_registry();
                if let Some(split) = sluice::cluster::keyed(&pipeline.plan()?, &registry)? {
                    let jobs = sluice::cluster::RunningJobs::default();
                    if let Some(addr) = &metrics_bind {
                        run::serve_cluster_metrics(addr, Arc::clone(&jobs)).await?;
                    }
                    let (stop_tx, stop) = tokio::sync::watch::channel(false);
                    tokio::spawn(async move {
                        if run::interrupted().await {
                            eprintln!(
                                "\nstopping: the front commits what it read; partition tasks stop at their last commit"
                            );
                            let _ = stop_tx.send(true);
                        }
                    });
                    sluice::cluster::run_keyed(
                        split,
                        registry,
                        checkpoints.restart_strategy()?,
                        stop,
                        jobs,
                        None,
                    )
                    .await?;
                    return Ok(());
                }
            }
            if checkpoints.from_checkpoint.as_deref() == Some("latest")
                && !checkpoints.fresh_if_none
            {
                // Nothing to resume from is a mistake (a misspelled directory) unless
                // asked for.
                let plan = pipeline.plan()?;
                let dir = plan
                    .config
                    .checkpoint
                    .dir
                    .clone()
                    .unwrap_or_else(|| format!("sluice-checkpoints/{}", plan.name));
                let storage = sluice::runtime::checkpoint::CheckpointStorage::open(&dir)?;
                if storage.latest("chk").await?.is_none() {
                    bail!(
                        "--from-checkpoint latest: no complete checkpoint in {dir}, nothing to resume from; check the directory, or add --fresh-if-none to start from the beginning when there is none"
                    );
                }
            }
            // The running attempt's metrics and stop handle (a restart replaces them).
            let current: Current = Arc::new(Mutex::new(None));
            let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            if let Some(addr) = &metrics_bind {
                run::serve_metrics(
                    addr,
                    pipeline.plan()?.name,
                    Arc::clone(&current),
                    Arc::clone(&attempts),
                )
                .await?;
            }
            let savepoint = checkpoints.stop_with_savepoint;
            let drain = checkpoints.drain;
            let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
            // `--from-checkpoint latest` with nothing to resume from starts at the
            // beginning: say so, and where it looked (a misspelled directory shows here).
            let fresh_note =
                (checkpoints.from_checkpoint.as_deref() == Some("latest")).then(|| {
                    format!(
                        "no completed checkpoint in {}: starting from the beginning of the input",
                        checkpoints
                            .checkpoint_dir
                            .as_deref()
                            .unwrap_or("the default checkpoint directory")
                    )
                });
            // A cluster instance that is asked to stop commits what it has read (its
            // partitions' next reader starts there), as with --drain.
            let drain = drain || checkpoints.cluster.is_some();
            let cell = Arc::clone(&current);
            let cancel_flag = Arc::clone(&cancelled);
            tokio::spawn(async move {
                if run::interrupted().await {
                    let Some((_, stop)) = cell.lock().unwrap_or_else(|p| p.into_inner()).clone()
                    else {
                        return;
                    };
                    if savepoint {
                        eprintln!("\nstopping with a savepoint…");
                        match stop.savepoint(true).await {
                            Ok(at) => eprintln!("savepoint: {at}"),
                            Err(e) => {
                                eprintln!("savepoint failed ({e}); draining instead");
                                stop.stop().await;
                            }
                        }
                    } else if drain {
                        eprintln!("\nstopping: ending the input and flushing everything…");
                        stop.stop().await;
                    } else {
                        eprintln!(
                            "\ncancelled: the job stops where it is, open windows are dropped (--drain flushes them, --stop-with-savepoint keeps them for later)"
                        );
                        cancel_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        stop.cancel();
                    }
                }
            });
            if let Some(limit) = row_limit {
                let cell = Arc::clone(&current);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                    loop {
                        tick.tick().await;
                        let running = cell.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        // Once the LIMIT is full (rows passed before a restore count).
                        if let Some((metrics, stop)) = running
                            && (metrics.sink_records() >= limit as u64 || metrics.exhausted())
                        {
                            stop.stop().await;
                            return;
                        }
                    }
                });
            }
            let start = Instant::now();
            let progress =
                (!quiet).then(|| tokio::spawn(progress_loop(Arc::clone(&current), start)));
            let result = pipeline
                .run_with_restarts(checkpoints.restart_strategy()?, |h| {
                    // Say what the job resumed from (quiet or not): a run that restored
                    // nothing starts from the beginning of its input.
                    match (h.metrics().checkpoints.restored.get(), &fresh_note) {
                        (Some(r), _) => {
                            eprintln!("resumed from {} {} at {}", r.kind, r.epoch, r.location);
                            const SHOWN: usize = 8;
                            for (source, split, at) in r.positions.iter().take(SHOWN) {
                                eprintln!("  {source}: {split} at {at}");
                            }
                            if r.positions.len() > SHOWN {
                                eprintln!("  … and {} more splits", r.positions.len() - SHOWN);
                            }
                            if r.kind == "final" {
                                eprintln!(
                                    "the job had finished: its final checkpoint has every source at its end, so there is nothing more to read or write"
                                );
                            }
                        }
                        (None, Some(note)) => eprintln!("{note}"),
                        (None, None) => {}
                    }
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *current.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((h.metrics(), h.stop_handle()));
                })
                .await;
            if let Some(p) = progress {
                p.abort();
            }
            result?;
            let Some((metrics, _)) = current.lock().unwrap_or_else(|p| p.into_inner()).clone()
            else {
                bail!("the job never started");
            };
            let secs = start.elapsed().as_secs_f64();
            let lat = metrics.sink_latency();
            eprintln!(
                "{}done: {} rows in, {} rows out in {:.2} s ({:.0} rows/s), latency p50 {:.2} ms p99 {:.2} ms, {} dead letters",
                if quiet { "" } else { "\n" },
                metrics.source_records(),
                metrics.sink_records(),
                secs,
                metrics.source_records() as f64 / secs,
                lat.quantile(0.5) as f64 / 1000.0,
                lat.quantile(0.99) as f64 / 1000.0,
                metrics.dead_letters()
            );
            if let Some(out) = out_hint {
                eprintln!("output: {}", out.display());
            }
            if cancelled.load(std::sync::atomic::Ordering::SeqCst) {
                // As shells report an interrupted command: the output is not complete.
                std::process::exit(130);
            }
            Ok(())
        }
        Command::Server {
            bind,
            token,
            data_dir,
            allow_dirs,
            log_file_mib,
            log_files_kept,
            alerts,
            alert_interval,
            webhooks_public_only,
            max_connections,
            header_timeout,
            job_memory_limit,
        } => {
            // A bad rules file fails here, before anything listens.
            let alert_rules = match &alerts {
                Some(p) => sluice_server::alerts::load_rules(p)?,
                None => Vec::new(),
            };
            let listener = tokio::net::TcpListener::bind(&bind)
                .await
                .with_context(|| format!("cannot listen on {bind}"))?;
            eprintln!("sluice server on http://{}", listener.local_addr()?);
            let opts = sluice_server::ServerOptions {
                token,
                data_dir,
                allow_dirs,
                log_file_bytes: log_file_mib.max(1) << 20,
                log_files_kept,
                alert_rules,
                alert_interval,
                webhooks_public_only,
                max_connections,
                header_timeout,
                job_memory_limit,
            };
            sluice_server::serve(listener, opts).await?;
            Ok(())
        }
        #[cfg(feature = "kafka")]
        Command::Ps {
            cluster: Some(cluster),
            bootstrap: Some(bootstrap),
            group,
            json,
            ..
        } => {
            let group = group.unwrap_or_else(|| format!("sluice-{cluster}"));
            let (cluster, report) = tokio::task::spawn_blocking(move || {
                sluice_connectors::kafka::admin::cluster_status(
                    &bootstrap,
                    &cluster,
                    &group,
                    Duration::from_secs(10),
                )
                .map(|r| (cluster, r))
            })
            .await??;
            match json {
                true => println!("{}", serde_json::to_string(&report)?),
                false => print!(
                    "{}",
                    sluice_connectors::kafka::admin::render_cluster(&cluster, &report)
                ),
            }
            Ok(())
        }
        #[cfg(not(feature = "kafka"))]
        Command::Ps {
            cluster: Some(_), ..
        } => anyhow::bail!(
            "ps --cluster reads the cluster's consumer group: build with the kafka feature"
        ),
        #[cfg(feature = "kafka")]
        Command::WhoConsumes {
            topic,
            bootstrap,
            json,
        } => {
            let groups = tokio::task::spawn_blocking(move || {
                sluice_connectors::kafka::admin::who_consumes(
                    &bootstrap,
                    &topic,
                    Duration::from_secs(10),
                )
                .map(|g| (topic, g))
            })
            .await??;
            let (topic, groups) = groups;
            match json {
                true => println!("{}", serde_json::to_string(&groups)?),
                false => print!(
                    "{}",
                    sluice_connectors::kafka::admin::render(&topic, &groups)
                ),
            }
            Ok(())
        }
        c @ (Command::Submit { .. }
        | Command::List { .. }
        | Command::Status { .. }
        | Command::Diagnose { .. }
        | Command::Savepoint { .. }
        | Command::Ps { .. }
        | Command::Logs { .. }
        | Command::Cancel { .. }) => client::run(c),
        Command::Bench { suite } => bench_cmd::run(suite).await,
    }
}

/// The running attempt of a job: its metrics and how to stop it.
type Current = Arc<Mutex<Option<(Arc<JobMetrics>, StopHandle)>>>;

async fn progress_loop(current: Current, start: Instant) {
    let tty = std::io::stderr().is_terminal();
    let mut last = (0u64, start);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some((metrics, _)) = current.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            continue;
        };
        let now = Instant::now();
        let n = metrics.source_records();
        let rate = (n - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        last = (n, now);
        let p99 = metrics.sink_latency().quantile(0.99) as f64 / 1000.0;
        let line = format!(
            "events {n:>12}  events/s {rate:>12.0}  sink rows {:>12}  p99 latency {p99:>8.2} ms  checkpoints {}",
            metrics.sink_records(),
            metrics
                .checkpoints
                .completed
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}
