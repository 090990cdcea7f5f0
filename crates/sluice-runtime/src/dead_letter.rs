//! The dead-letter output: records that could not be decoded or processed, with their
//! position and the error. The job keeps running; each record is counted and kept.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use sluice_types::{Result, SluiceError, TaskInfo};

/// One record that could not be processed.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Where it came from, e.g. `data/bids.jsonl:42` or `topic/3@1717`.
    pub position: String,
    /// Why it failed.
    pub error: String,
    /// The raw record, as text (lossy UTF-8 for binary payloads).
    pub raw: String,
}

/// Where dead letters go.
pub trait DeadLetterQueue: Send + Sync {
    /// Keeps one record. Must not fail the job: it reports its own I/O errors.
    fn send(&self, task: &TaskInfo, record: DeadLetter);
}

/// Logs every dead letter at WARN level (the default), its record and error cut to
/// [`LOGGED_BYTES`] each: a log is no place for a 300 MB line. A dead-letter file keeps
/// records whole.
pub struct LogDeadLetters;

/// The most of a dead letter's record (and of its error) a log line shows.
pub const LOGGED_BYTES: usize = 1024;

impl DeadLetterQueue for LogDeadLetters {
    fn send(&self, task: &TaskInfo, record: DeadLetter) {
        tracing::warn!(
            job = %task.job,
            operator = %task.operator_name,
            subtask = task.subtask,
            position = %record.position,
            error = %sluice_types::truncated(&record.error, LOGGED_BYTES),
            raw = %sluice_types::truncated(&record.raw, LOGGED_BYTES),
            "dead letter"
        );
    }
}

/// Appends dead letters to a JSON-lines file: `{"operator","subtask","position","error","raw"}`.
pub struct FileDeadLetters {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl FileDeadLetters {
    /// Opens (appends to) the file, creating parent directories.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                SluiceError::user(format!("cannot open dead-letter file {}", path.display()))
                    .with_source(e)
            })?;
        Ok(Self {
            file: Mutex::new(std::io::BufWriter::new(file)),
        })
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl DeadLetterQueue for FileDeadLetters {
    fn send(&self, task: &TaskInfo, record: DeadLetter) {
        let line = format!(
            "{{\"operator\":{},\"subtask\":{},\"position\":{},\"error\":{},\"raw\":{}}}\n",
            json_str(&task.operator_name),
            task.subtask,
            json_str(&record.position),
            json_str(&record.error),
            json_str(&record.raw)
        );
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.flush()) {
            tracing::error!(error = %e, record = %line.trim_end(), "cannot write dead letter; logged here instead");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_dead_letters_are_json_lines() {
        let dir = std::env::temp_dir().join(format!("sluice-dlq-{}", std::process::id()));
        let path = dir.join("dlq.jsonl");
        let q = FileDeadLetters::open(&path).unwrap();
        q.send(
            &TaskInfo::for_test("source:filesystem"),
            DeadLetter {
                position: "in.jsonl:2".into(),
                error: "bad \"value\"".into(),
                raw: "{oops\n".into(),
            },
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"operator\":\"source:filesystem\",\"subtask\":0,\"position\":\"in.jsonl:2\",\"error\":\"bad \\\"value\\\"\",\"raw\":\"{oops\\n\"}\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
