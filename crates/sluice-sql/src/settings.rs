//! `SET 'key' = 'value'`: job options, with Flink's keys where Flink has one.
//!
//! | key | meaning |
//! |---|---|
//! | `parallelism.default` | parallelism of every operator (windows without keys: 1) |
//! | `pipeline.name` | the job's name |
//! | `pipeline.max-parallelism` | number of key groups |
//! | `execution.checkpointing.interval` | checkpoint every (`10 s`, `500ms`, `1 min`) |
//! | `execution.checkpointing.mode` | `EXACTLY_ONCE` or `AT_LEAST_ONCE` |
//! | `sluice.delivery-guarantee` | `exactly-once`, `at-least-once` or `at-most-once` |
//! | `execution.checkpointing.timeout` | abort a checkpoint after |
//! | `execution.checkpointing.min-pause` | least pause between checkpoints |
//! | `execution.checkpointing.num-retained` (`state.checkpoints.num-retained`) | checkpoints kept |
//! | `execution.checkpointing.dir` (`state.checkpoints.dir`) | checkpoint directory or URL |
//! | `execution.checkpointing.savepoint-dir` (`state.savepoints.dir`) | savepoint directory |
//! | `table.exec.source.idle-timeout` | a source split without rows this long stops holding back event time |
//! | `table.exec.state.ttl` | how long (event time) a regular join keeps rows; unset: forever |
//! | `table.exec.mini-batch.size` (`sluice.batch.max-rows`) | most rows per batch |
//! | `table.exec.mini-batch.allow-latency` (`sluice.batch.linger`) | longest a row waits for its batch |
//! | `sluice.channel-capacity` | batches buffered per channel |
//! | `sluice.job.memory-limit` | most heap the job's tasks may hold (`512 mb`, `2 gb`); over it the job fails |
//! | `table.exec.sink.upsert-materialize` | `AUTO` (default: before an upsert sink whose input is not keyed like it), `FORCE` (before every upsert sink of an updating input) or `NONE` |
//! | `sluice.cluster.name` | run as an instance of this cluster (as `sluice run --cluster`) |
//! | `sluice.cluster.instance` | this instance's stable name in the cluster (as `--instance`) |
//! | `sql-client.execution.result-mode` | how a client shows a query's rows: `changelog` or `tableau` (every change with its kind), `table` (the rows the changes leave) |

use std::str::FromStr;
use std::time::Duration;

use sluice_plan::{DeliveryGuarantee, JobConfig, limits};

use crate::error::{Result, SqlError};

/// Job options collected from `SET` statements.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Parallelism of the operators planned after it is set.
    pub parallelism: usize,
    /// The job's name.
    pub job_name: Option<String>,
    /// Source idleness.
    pub idle_timeout: Option<Duration>,
    /// How long regular joins keep rows.
    pub state_ttl: Option<Duration>,
    /// When an upsert sink gets an upsert-materialize step before it.
    pub upsert_materialize: UpsertMaterialize,
    /// How a SQL client shows results: `changelog` (every change with its kind), `table`
    /// (the rows the changes leave) or `tableau`; Flink's SQL client option.
    pub result_mode: ResultMode,
    config: JobConfig,
    touched: Vec<&'static str>,
    /// `sluice.cluster.name` and `sluice.cluster.instance`, checked when set.
    cluster: (Option<String>, Option<String>),
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            parallelism: 1,
            job_name: None,
            idle_timeout: None,
            state_ttl: None,
            upsert_materialize: UpsertMaterialize::Auto,
            result_mode: ResultMode::Changelog,
            config: JobConfig::default(),
            touched: Vec::new(),
            cluster: (None, None),
        }
    }
}

/// The keys `SET` accepts.
pub const KEYS: &[&str] = &[
    "parallelism.default",
    "pipeline.name",
    "pipeline.max-parallelism",
    "execution.checkpointing.interval",
    "execution.checkpointing.mode",
    "sluice.delivery-guarantee",
    "execution.checkpointing.timeout",
    "execution.checkpointing.min-pause",
    "execution.checkpointing.num-retained",
    "state.checkpoints.num-retained",
    "execution.checkpointing.dir",
    "state.checkpoints.dir",
    "execution.checkpointing.savepoint-dir",
    "state.savepoints.dir",
    "table.exec.source.idle-timeout",
    "table.exec.state.ttl",
    "table.exec.mini-batch.size",
    "sluice.batch.max-rows",
    "table.exec.mini-batch.allow-latency",
    "sluice.batch.linger",
    "sluice.channel-capacity",
    "sluice.job.memory-limit",
    "table.exec.sink.upsert-materialize",
    "sql-client.execution.result-mode",
    "sluice.cluster.name",
    "sluice.cluster.instance",
];

/// When an upsert sink gets an upsert-materialize step (Flink's
/// `table.exec.sink.upsert-materialize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsertMaterialize {
    /// Where the sink's input is not keyed by the sink's key.
    Auto,
    /// Wherever the input is updating.
    Force,
    /// Never (the changes are written as they come).
    None,
}

/// How a SQL client shows a query's rows (`sql-client.execution.result-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultMode {
    /// Every change with its kind (`+I`, `-U`, `+U`, `-D`); also Flink's `tableau`.
    Changelog,
    /// The rows the changes leave, as a table.
    Table,
}

/// A duration as Flink writes them: `10 s`, `10s`, `500 ms`, `1 min`, or plain milliseconds.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    if let Ok(ms) = compact.parse::<u64>() {
        return Some(Duration::from_millis(ms));
    }
    humantime::parse_duration(&compact).ok()
}

fn number<T>(key: &str, v: &str, min: T, max: T) -> Result<T>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match v.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(SqlError::new(format!(
            "'{key}' takes a whole number from {min} to {max}, not '{v}'"
        ))),
    }
}

/// A memory size as Flink writes them: `512 mb`, `2gb`, `64 kb`, or plain bytes; from
/// 1 MiB to 1 TiB.
pub fn memory_size(key: &str, v: &str) -> Result<u64> {
    let compact: String = v
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let digits = compact.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &compact[digits.len()..] {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => 0,
    };
    match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)) {
        Some(n) if ((1 << 20)..=(1 << 40)).contains(&n) => Ok(n),
        _ => Err(SqlError::new(format!(
            "'{key}' takes a memory size from 1 mb to 1 tb, such as '512 mb' or '2 gb', not '{v}'"
        ))),
    }
}

fn duration(key: &str, v: &str) -> Result<Duration> {
    duration_at_most(key, v, limits::MAX_DURATION, "a year")
}

fn duration_at_most(key: &str, v: &str, max: Duration, max_text: &str) -> Result<Duration> {
    match parse_duration(v) {
        Some(d) if d <= max => Ok(d),
        Some(_) => Err(SqlError::new(format!(
            "'{key}' may be at most {max_text}, not '{v}'"
        ))),
        None => Err(SqlError::new(format!(
            "'{key}' takes a duration such as '10 s', '500 ms' or '1 min', not '{v}'"
        ))),
    }
}

impl Settings {
    /// Applies one `SET`.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<()> {
        let c = &mut self.config;
        let k: &'static str = KEYS.iter().find(|k| **k == key).copied().ok_or_else(|| {
            SqlError::new(format!(
                "unknown setting '{key}'; settings: {}",
                KEYS.join(", ")
            ))
        })?;
        match k {
            "parallelism.default" => {
                self.parallelism = number(k, value, 1usize, limits::MAX_PARALLELISM)?
            }
            "pipeline.name" => self.job_name = Some(value.to_string()),
            "pipeline.max-parallelism" => {
                c.max_parallelism = number(k, value, 1usize, limits::MAX_PARALLELISM)?
            }
            "execution.checkpointing.interval" => c.checkpoint.interval = Some(duration(k, value)?),
            "execution.checkpointing.mode" => {
                c.checkpoint.delivery = match value.to_ascii_uppercase().as_str() {
                    "EXACTLY_ONCE" => DeliveryGuarantee::ExactlyOnce,
                    "AT_LEAST_ONCE" => DeliveryGuarantee::AtLeastOnce,
                    _ => {
                        return Err(SqlError::new(format!(
                            "'{k}' is EXACTLY_ONCE or AT_LEAST_ONCE, not '{value}'"
                        )));
                    }
                }
            }
            "sluice.delivery-guarantee" => {
                c.checkpoint.delivery = DeliveryGuarantee::from_str(value)?;
            }
            "execution.checkpointing.timeout" => c.checkpoint.timeout = duration(k, value)?,
            "execution.checkpointing.min-pause" => c.checkpoint.min_pause = duration(k, value)?,
            "execution.checkpointing.num-retained" | "state.checkpoints.num-retained" => {
                c.checkpoint.retained = number(k, value, 1usize, limits::MAX_RETAINED_CHECKPOINTS)?
            }
            "execution.checkpointing.dir" | "state.checkpoints.dir" => {
                c.checkpoint.dir = Some(value.to_string())
            }
            "execution.checkpointing.savepoint-dir" | "state.savepoints.dir" => {
                c.checkpoint.savepoint_dir = Some(value.to_string())
            }
            "table.exec.source.idle-timeout" => {
                let d = duration(k, value)?;
                self.idle_timeout = (!d.is_zero()).then_some(d);
            }
            "table.exec.state.ttl" => {
                let century = Duration::from_secs(100 * 366 * 24 * 3600);
                let d = duration_at_most(k, value, century, "a hundred years")?;
                self.state_ttl = (!d.is_zero()).then_some(d);
            }
            "table.exec.mini-batch.size" | "sluice.batch.max-rows" => {
                c.batch.max_rows = number(k, value, 1usize, limits::MAX_BATCH_ROWS)?
            }
            "table.exec.mini-batch.allow-latency" | "sluice.batch.linger" => {
                c.batch.linger = duration(k, value)?
            }
            "sluice.channel-capacity" => {
                c.channel_capacity = number(k, value, 1usize, limits::MAX_CHANNEL_CAPACITY)?
            }
            "sluice.job.memory-limit" => c.memory_limit = Some(memory_size(k, value)?),
            "table.exec.sink.upsert-materialize" => {
                self.upsert_materialize = match value.to_ascii_uppercase().as_str() {
                    "AUTO" => UpsertMaterialize::Auto,
                    "FORCE" => UpsertMaterialize::Force,
                    "NONE" => UpsertMaterialize::None,
                    _ => {
                        return Err(SqlError::new(format!(
                            "'{k}' is AUTO, FORCE or NONE, not '{value}'"
                        )));
                    }
                }
            }
            "sql-client.execution.result-mode" => {
                self.result_mode = match value.to_ascii_lowercase().as_str() {
                    "changelog" | "tableau" => ResultMode::Changelog,
                    "table" => ResultMode::Table,
                    _ => {
                        return Err(SqlError::new(format!(
                            "'{k}' is table, changelog or tableau, not '{value}'"
                        )));
                    }
                }
            }
            "sluice.cluster.name" | "sluice.cluster.instance" => {
                // Checked now (what Kafka will see as names), combined when applied.
                sluice_plan::ClusterConfig::new(value, Some(value.to_string()))
                    .map_err(|e| SqlError::new(format!("'{k}': {e}")))?;
                match k {
                    "sluice.cluster.name" => self.cluster.0 = Some(value.to_string()),
                    _ => self.cluster.1 = Some(value.to_string()),
                }
            }
            _ => unreachable!("every key in KEYS is handled"),
        }
        self.touched.push(k);
        Ok(())
    }

    /// Writes the job-wide settings that were set into a job's configuration.
    pub fn apply_to(&self, config: &mut JobConfig) {
        let s = &self.config;
        for k in &self.touched {
            match *k {
                "pipeline.max-parallelism" => config.max_parallelism = s.max_parallelism,
                "execution.checkpointing.interval" => {
                    config.checkpoint.interval = s.checkpoint.interval
                }
                "execution.checkpointing.mode" | "sluice.delivery-guarantee" => {
                    config.checkpoint.delivery = s.checkpoint.delivery
                }
                "execution.checkpointing.timeout" => {
                    config.checkpoint.timeout = s.checkpoint.timeout
                }
                "execution.checkpointing.min-pause" => {
                    config.checkpoint.min_pause = s.checkpoint.min_pause
                }
                "execution.checkpointing.num-retained" | "state.checkpoints.num-retained" => {
                    config.checkpoint.retained = s.checkpoint.retained
                }
                "execution.checkpointing.dir" | "state.checkpoints.dir" => {
                    config.checkpoint.dir = s.checkpoint.dir.clone()
                }
                "execution.checkpointing.savepoint-dir" | "state.savepoints.dir" => {
                    config.checkpoint.savepoint_dir = s.checkpoint.savepoint_dir.clone()
                }
                "table.exec.mini-batch.size" | "sluice.batch.max-rows" => {
                    config.batch.max_rows = s.batch.max_rows
                }
                "table.exec.mini-batch.allow-latency" | "sluice.batch.linger" => {
                    config.batch.linger = s.batch.linger
                }
                "sluice.channel-capacity" => config.channel_capacity = s.channel_capacity,
                "sluice.job.memory-limit" => config.memory_limit = s.memory_limit,
                "sluice.cluster.name" | "sluice.cluster.instance" => {
                    if let (Some(name), instance) = &self.cluster {
                        config.cluster =
                            sluice_plan::ClusterConfig::new(name.clone(), instance.clone()).ok();
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_as_flink_writes_them() {
        assert_eq!(memory_size("k", "512 mb").unwrap(), 512 << 20);
        assert_eq!(memory_size("k", "2GB").unwrap(), 2 << 30);
        assert_eq!(memory_size("k", "1048576").unwrap(), 1 << 20);
        for bad in [
            "1 kb",
            "2 tb",
            "lots",
            "1.5 gb",
            "-1 mb",
            "99999999999999999999 gb",
        ] {
            assert!(memory_size("k", bad).is_err(), "{bad}");
        }
        let mut s = Settings::default();
        s.apply("sluice.job.memory-limit", "64 mb").unwrap();
        let mut config = JobConfig::default();
        s.apply_to(&mut config);
        assert_eq!(config.memory_limit, Some(64 << 20));
    }

    #[test]
    fn flink_keys_and_durations() {
        let mut s = Settings::default();
        s.apply("parallelism.default", "3").unwrap();
        s.apply("execution.checkpointing.interval", "10 s").unwrap();
        s.apply("execution.checkpointing.mode", "AT_LEAST_ONCE")
            .unwrap();
        s.apply("table.exec.mini-batch.allow-latency", "2ms")
            .unwrap();
        let mut c = JobConfig::default();
        s.apply_to(&mut c);
        assert_eq!(s.parallelism, 3);
        assert_eq!(c.checkpoint.interval, Some(Duration::from_secs(10)));
        assert_eq!(c.checkpoint.delivery, DeliveryGuarantee::AtLeastOnce);
        assert_eq!(c.batch.linger, Duration::from_millis(2));
        assert_eq!(parse_duration("1 min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("250"), Some(Duration::from_millis(250)));
        let e = s.apply("parallelism.default", "0").unwrap_err();
        assert!(e.to_string().contains("from 1 to"), "{e}");
        // No setting can ask for an allocation or a time that aborts the process.
        for (k, v) in [
            ("sluice.batch.max-rows", "35184372088832"),
            ("parallelism.default", "1000000000"),
            ("sluice.channel-capacity", "99999999999"),
            ("execution.checkpointing.interval", "9999999999999 d"),
            ("table.exec.mini-batch.allow-latency", "400 d"),
        ] {
            let e = s.apply(k, v).unwrap_err().to_string();
            assert!(e.contains("at most") || e.contains("from 1 to"), "{k}: {e}");
        }
        let e = s.apply("no.such.key", "1").unwrap_err();
        assert!(e.to_string().contains("unknown setting"), "{e}");
    }

    #[test]
    fn cluster_names_are_checked_and_combined_in_either_order() {
        let mut s = Settings::default();
        s.apply("sluice.cluster.instance", "pod-0").unwrap();
        s.apply("sluice.cluster.name", "orders").unwrap();
        let mut c = JobConfig::default();
        s.apply_to(&mut c);
        let cluster = c.cluster.unwrap();
        assert_eq!(
            (cluster.name.as_str(), cluster.instance.as_str()),
            ("orders", "pod-0")
        );
        assert!(cluster.static_membership);
        let e = s
            .apply("sluice.cluster.name", "a/b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("letters, digits"), "{e}");
    }
}
