//! Partitioned file sinks, as Flink's filesystem connector writes them: `PARTITIONED BY
//! (dt, hm)` puts each row in the directory `dt=…/hm=…/` of its values (the partition
//! columns are in the path, not in the files), and a partition is *committed* (a success
//! file written into it) once it is complete:
//!
//! - `'sink.partition-commit.trigger' = 'partition-time'`: when the watermark passes the
//!   time read from the partition's values (`'partition.time-extractor.timestamp-pattern'`,
//!   e.g. `'$dt $hm:00'`) plus `'sink.partition-commit.delay'`;
//! - `'process-time'` (the default): when the wall clock passes the partition directory's
//!   creation plus the delay;
//! - at the end of a bounded input, every partition.
//!
//! Each subtask writes its own files. A partition is complete only when every subtask has
//! published its files for it, so each subtask records, after publishing, the watermark
//! its published files cover (`.sluice-partition-commit/<subtask>`); the subtask that
//! finds every subtask's record commits what the smallest of them allows. Files are
//! published when their checkpoint completes (or at the end of input), so a success file
//! never comes before the rows it vouches for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::Schema;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_types::{Result, SluiceError};

use crate::options::OptionReader;

/// The options of partitioned file sinks (besides the format's).
pub const PARTITION_OPTIONS: &[&str] = &[
    PARTITIONED_BY,
    "partition.default-name",
    "sink.partition-commit.trigger",
    "sink.partition-commit.delay",
    "sink.partition-commit.policy.kind",
    "sink.partition-commit.success-file.name",
    "sink.partition-commit.watermark-time-zone",
    "partition.time-extractor.kind",
    "partition.time-extractor.timestamp-pattern",
    "partition.time-extractor.timestamp-formatter",
    "sink.rolling-policy.file-size",
    "sink.rolling-policy.rollover-interval",
    "sink.rolling-policy.check-interval",
    "sink.rolling-policy.inactivity-interval",
];

/// The option SQL's `PARTITIONED BY (a, b)` sets: the columns, `;`-separated.
pub const PARTITIONED_BY: &str = "partitioned-by";

/// When a partition is committed.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// The watermark passed the partition's time (from its values) plus the delay.
    PartitionTime {
        /// `$column` placeholders in a timestamp text.
        pattern: String,
        /// The text's chrono format.
        format: String,
    },
    /// The wall clock passed the partition directory's creation plus the delay.
    ProcessTime,
}

/// How partitions are committed.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// When.
    pub trigger: Trigger,
    /// How long after the trigger's time, in ms.
    pub delay_ms: i64,
    /// The success file written into a committed partition.
    pub success_file: String,
}

/// The partitioning of a file sink.
#[derive(Clone, Debug, PartialEq)]
pub struct Partitioning {
    /// Partition columns: their index in the input and name, in path order.
    pub columns: Vec<(usize, String)>,
    /// The other user columns, written to the files.
    pub data_columns: Vec<usize>,
    /// The directory name of a NULL value.
    pub default_name: String,
    /// `None`: partitions are never committed (no `sink.partition-commit.policy.kind`).
    pub commit: Option<Commit>,
}

/// A duration option as Flink writes it (`1 min`, `10 s`, `500 ms`, or milliseconds).
fn duration_ms(o: &OptionReader<'_>, key: &str, default: i64) -> Result<i64> {
    let Some(v) = o.str(key) else {
        return Ok(default);
    };
    let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    let ms = match compact.parse::<u64>() {
        Ok(ms) => Some(ms as u128),
        Err(_) => humantime::parse_duration(&compact)
            .ok()
            .map(|d| d.as_millis()),
    };
    match ms {
        Some(ms) if ms <= 366 * 86_400_000 => Ok(ms as i64),
        _ => Err(SluiceError::user(format!(
            "filesystem option `{key}` takes a duration of at most a year such as '1 min' or '10 s', not '{v}'"
        ))),
    }
}

/// A size option (`128MB`, `1 gb`, `1024`).
pub(crate) fn size_option(o: &OptionReader<'_>, key: &str) -> Result<Option<u64>> {
    let Some(v) = o.str(key) else { return Ok(None) };
    let t = v.trim().to_ascii_lowercase();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == ' ');
    let unit = t[digits.len()..].trim();
    let scale: Option<u64> = match unit {
        "" | "b" | "bytes" => Some(1),
        "k" | "kb" | "kib" => Some(1 << 10),
        "m" | "mb" | "mib" => Some(1 << 20),
        "g" | "gb" | "gib" => Some(1 << 30),
        _ => None,
    };
    match (digits.trim().parse::<u64>().ok(), scale) {
        (Some(n), Some(s)) if n > 0 => Ok(n.checked_mul(s)),
        _ => Err(SluiceError::user(format!(
            "filesystem option `{key}` takes a size such as '128MB', not '{v}'"
        ))),
    }
}

/// A Java `DateTimeFormatter` pattern of the usual letters as a chrono format.
fn java_format(p: &str) -> Result<String> {
    let mut out = String::new();
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let n = chars[i..].iter().take_while(|&&x| x == c).count();
        let f = match (c, n) {
            ('y', 4) | ('u', 4) => "%Y",
            ('M', 2) => "%m",
            ('d', 2) => "%d",
            ('H', 2) => "%H",
            ('m', 2) => "%M",
            ('s', 2) => "%S",
            (c, _) if c.is_ascii_alphabetic() => {
                return Err(SluiceError::user(format!(
                    "filesystem option `partition.time-extractor.timestamp-formatter`: `{}` is not supported (yyyy, MM, dd, HH, mm, ss are)",
                    chars[i..i + n].iter().collect::<String>()
                )));
            }
            _ => {
                out.extend(std::iter::repeat_n(c, n));
                i += n;
                continue;
            }
        };
        out.push_str(f);
        i += n;
    }
    Ok(out)
}

impl Partitioning {
    /// The partitioning the options ask for, over the sink's input schema; `None` when
    /// the table is not partitioned.
    pub fn from_options(o: &OptionReader<'_>, input: &Schema) -> Result<Option<Self>> {
        let Some(list) = o.str(PARTITIONED_BY) else {
            if let Some(k) = PARTITION_OPTIONS[1..]
                .iter()
                .find(|k| k.starts_with("sink.partition") || k.starts_with("partition."))
                .filter(|k| o.str(k).is_some())
            {
                return Err(SluiceError::user(format!(
                    "filesystem option `{k}` is for partitioned tables: declare PARTITIONED BY (…)"
                )));
            }
            return Ok(None);
        };
        let users = sluice_types::user_column_count(input);
        let mut columns = Vec::new();
        for name in list.split(';').filter(|c| !c.is_empty()) {
            let Some(i) = input.fields()[..users]
                .iter()
                .position(|f| f.name() == name)
            else {
                return Err(SluiceError::user(format!(
                    "PARTITIONED BY names `{name}`, which is not a column of the table"
                )));
            };
            columns.push((i, name.to_string()));
        }
        if columns.is_empty() || columns.len() == users {
            return Err(SluiceError::user(
                "PARTITIONED BY names some of the table's columns, and not all of them",
            ));
        }
        let data_columns = (0..users)
            .filter(|i| !columns.iter().any(|(c, _)| c == i))
            .collect();
        let default_name = o
            .str("partition.default-name")
            .unwrap_or("__DEFAULT_PARTITION__")
            .to_string();
        for key in [
            "sink.rolling-policy.rollover-interval",
            "sink.rolling-policy.check-interval",
            "sink.rolling-policy.inactivity-interval",
        ] {
            duration_ms(o, key, 0)?;
        }
        size_option(o, "sink.rolling-policy.file-size")?;
        let commit = match o.str("sink.partition-commit.policy.kind") {
            None => None,
            Some(kinds) => {
                for k in kinds.split(',').map(str::trim) {
                    if k != "success-file" {
                        return Err(SluiceError::user(format!(
                            "sink.partition-commit.policy.kind '{k}' is not supported: Sluice has no metastore and runs no custom policy class; 'success-file' writes the success file"
                        )));
                    }
                }
                let trigger = match o
                    .choice(
                        "sink.partition-commit.trigger",
                        &["process-time", "partition-time"],
                        Some("process-time"),
                    )?
                    .as_str()
                {
                    "partition-time" => {
                        let kind = o.choice(
                            "partition.time-extractor.kind",
                            &["default"],
                            Some("default"),
                        )?;
                        debug_assert_eq!(kind, "default");
                        let pattern = o
                            .str("partition.time-extractor.timestamp-pattern")
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("${}", columns[0].1));
                        let format = java_format(
                            o.str("partition.time-extractor.timestamp-formatter")
                                .unwrap_or("yyyy-MM-dd HH:mm:ss"),
                        )?;
                        Trigger::PartitionTime { pattern, format }
                    }
                    _ => Trigger::ProcessTime,
                };
                if let Some(z) = o.str("sink.partition-commit.watermark-time-zone")
                    && !matches!(z, "UTC" | "Z" | "GMT")
                {
                    return Err(SluiceError::user(format!(
                        "sink.partition-commit.watermark-time-zone '{z}': Sluice's watermarks are UTC; only 'UTC' is supported"
                    )));
                }
                Some(Commit {
                    trigger,
                    delay_ms: duration_ms(o, "sink.partition-commit.delay", 0)?,
                    success_file: o
                        .str("sink.partition-commit.success-file.name")
                        .unwrap_or("_SUCCESS")
                        .to_string(),
                })
            }
        };
        Ok(Some(Partitioning {
            columns,
            data_columns,
            default_name,
            commit,
        }))
    }

    /// The rows of `rows` (user columns) by partition: each partition's directory
    /// (`a=1/b=x`) and its rows, the data columns only.
    pub fn split(&self, rows: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        let options = FormatOptions::default().with_null("");
        let formatters = self
            .columns
            .iter()
            .map(|(i, _)| ArrayFormatter::try_new(rows.column(*i).as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        // Reused for every row: no allocation per row but for a new partition.
        let (mut path, mut value) = (String::new(), String::new());
        for row in 0..rows.num_rows() {
            path.clear();
            for (k, ((i, name), f)) in self.columns.iter().zip(&formatters).enumerate() {
                if k > 0 {
                    path.push('/');
                }
                path.push_str(name);
                path.push('=');
                match rows.column(*i).is_null(row) {
                    true => escape_into(&self.default_name, &mut path),
                    false => {
                        use std::fmt::Write as _;
                        value.clear();
                        let _ = write!(value, "{}", f.value(row));
                        escape_into(&value, &mut path)
                    }
                }
            }
            match groups.get_mut(path.as_str()) {
                Some(g) => g.push(row as u32),
                None => {
                    groups.insert(path.clone(), vec![row as u32]);
                }
            }
        }
        let data = rows.project(&self.data_columns)?;
        groups
            .into_iter()
            .map(|(p, idx)| {
                let batch = match idx.len() == rows.num_rows() {
                    true => data.clone(),
                    false => take_record_batch(&data, &UInt32Array::from(idx))?,
                };
                Ok((p, batch))
            })
            .collect()
    }
}

/// Characters a partition value cannot hold as they are (Hive's and Flink's escaping:
/// `%` and two hex digits).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '"' | '#'
                | '%'
                | '\''
                | '*'
                | '/'
                | ':'
                | '='
                | '?'
                | '\\'
                | '\x7f'
                | '{'
                | '['
                | ']'
                | '^'
        )
}

fn escape_into(value: &str, out: &mut String) {
    use std::fmt::Write as _;
    for c in value.chars() {
        match needs_escape(c) && (c as u32) < 0x80 {
            true => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            false => out.push(c),
        }
    }
}

/// A partition value from its directory name.
pub fn unescape(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The hidden directory of the subtasks' commit records.
const RECORDS: &str = ".sluice-partition-commit";

/// Forgets this subtask's commit record of an earlier run.
pub fn forget_record(dir: &Path, subtask: usize) {
    let _ = std::fs::remove_file(dir.join(RECORDS).join(subtask.to_string()));
}

impl Commit {
    /// Subtask `subtask` of `parallelism` published every file with rows up to
    /// `watermark` (`i64::MAX`: all of them): records it, and if every subtask has,
    /// commits the partitions under `dir` that are complete. Returns the partitions it
    /// committed.
    pub fn published(
        &self,
        dir: &Path,
        partitions: &Partitioning,
        subtask: usize,
        parallelism: usize,
        attempt: u64,
        watermark: i64,
    ) -> Result<Vec<PathBuf>> {
        let records = dir.join(RECORDS);
        std::fs::create_dir_all(&records)?;
        let mine = records.join(subtask.to_string());
        let temp = records.join(format!(".{subtask}.tmp"));
        std::fs::write(&temp, format!("{attempt} {watermark}"))?;
        std::fs::rename(&temp, &mine)?;
        let mut low = i64::MAX;
        for s in 0..parallelism {
            let Ok(text) = std::fs::read_to_string(records.join(s.to_string())) else {
                return Ok(Vec::new());
            };
            let mut parts = text.split_whitespace();
            let (Some(a), Some(w)) = (parts.next(), parts.next()) else {
                return Ok(Vec::new());
            };
            match (a.parse::<u64>(), w.parse::<i64>()) {
                (Ok(a), Ok(w)) if a == attempt => low = low.min(w),
                _ => return Ok(Vec::new()),
            }
        }
        let now = std::time::SystemTime::now();
        let mut committed = Vec::new();
        for (path, values) in leaves(dir, partitions.columns.len())? {
            let success = path.join(&self.success_file);
            if success.exists() {
                continue;
            }
            let due = low == i64::MAX
                || match &self.trigger {
                    Trigger::PartitionTime { pattern, format } => {
                        match partition_time(pattern, format, &partitions.columns, &values) {
                            Some(t) => t.saturating_add(self.delay_ms) <= low,
                            None => false,
                        }
                    }
                    Trigger::ProcessTime => std::fs::metadata(&path)
                        .and_then(|m| m.created().or_else(|_| m.modified()))
                        .ok()
                        .and_then(|c| now.duration_since(c).ok())
                        .is_some_and(|age| age.as_millis() as i64 >= self.delay_ms),
                };
            if due {
                std::fs::File::create(&success)?.sync_all()?;
                committed.push(path);
            }
        }
        Ok(committed)
    }
}

/// The partition's time: the pattern with each `$column` replaced by its value, read
/// with the format (a date alone is its midnight); `None` when it does not read.
fn partition_time(
    pattern: &str,
    format: &str,
    columns: &[(usize, String)],
    values: &[String],
) -> Option<i64> {
    let mut text = pattern.to_string();
    // Longer names first, so `$dt` does not eat the start of `$dtime`.
    let mut order: Vec<usize> = (0..columns.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(columns[i].1.len()));
    for i in order {
        text = text.replace(&format!("${}", columns[i].1), &values[i]);
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&text, format) {
        return Some(t.and_utc().timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(&text, format)
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

/// The partition directories under `dir`, `depth` levels down, with their values.
fn leaves(dir: &Path, depth: usize) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let mut level = vec![(dir.to_path_buf(), Vec::new())];
    for _ in 0..depth {
        let mut next = Vec::new();
        for (d, values) in level {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some((_, v)) = name.split_once('=') else {
                    continue;
                };
                let mut values: Vec<String> = values.clone();
                values.push(unescape(v));
                next.push((e.path(), values));
            }
        }
        level = next;
    }
    Ok(level)
}

/// A directory's files, recursively (hidden in-progress files included).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    if e.file_name() != RECORDS {
                        stack.push(e.path());
                    }
                }
                Ok(_) => out.push(e.path()),
                Err(_) => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    #[test]
    fn rows_split_by_their_escaped_values_and_times_read_from_patterns() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("dt", DataType::Utf8, true),
            Field::new("hm", DataType::Utf8, true),
            sluice_types::timestamp_field(),
        ]));
        let p = Partitioning {
            columns: vec![(1, "dt".into()), (2, "hm".into())],
            data_columns: vec![0],
            default_name: "__DEFAULT_PARTITION__".into(),
            commit: None,
        };
        let rows = RecordBatch::try_new(
            Arc::new(schema.project(&[0, 1, 2]).unwrap()),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![
                    Some("2024-01-01"),
                    None,
                    Some("2024-01-01"),
                ])),
                Arc::new(StringArray::from(vec!["10:00", "10:01", "10:00"])),
            ],
        )
        .unwrap();
        let parts = p.split(&rows).unwrap();
        let names: Vec<_> = parts
            .iter()
            .map(|(n, b)| (n.as_str(), b.num_rows()))
            .collect();
        assert_eq!(
            names,
            [
                ("dt=2024-01-01/hm=10%3A00", 2),
                ("dt=__DEFAULT_PARTITION__/hm=10%3A01", 1)
            ]
        );
        assert_eq!(parts[0].1.num_columns(), 1);
        assert_eq!(unescape("10%3A00"), "10:00");
        let t = partition_time(
            "$dt $hm:00",
            &java_format("yyyy-MM-dd HH:mm:ss").unwrap(),
            &p.columns,
            &["2024-01-01".into(), "10:00".into()],
        );
        assert_eq!(t, Some(1_704_103_200_000));
        let day = partition_time(
            "$dt",
            "%Y-%m-%d",
            &p.columns,
            &["2024-01-02".into(), "x".into()],
        );
        assert_eq!(day, Some(1_704_153_600_000));
    }
}
