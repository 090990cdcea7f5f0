//! Alerts that fired and resolved, with their times: the latest [`KEPT`] in memory and
//! in `<data-dir>/alert-history.jsonl` (a line per event, appended and synced), so they
//! survive a restart. A line that does not read back (a torn or edited file) is skipped.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Events kept (and read back at start).
pub(crate) const KEPT: usize = 500;

/// The history's file in the data directory.
pub(crate) const FILE: &str = "alert-history.jsonl";

/// An alert fired or resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct AlertEvent {
    /// `firing` or `resolved`.
    pub(crate) status: String,
    pub(crate) rule: String,
    pub(crate) job: String,
    pub(crate) job_id: u64,
    /// The value that breached (resolved: the last one seen).
    pub(crate) value: String,
    /// When the condition started to hold, when it fired, when it resolved (epoch ms).
    pub(crate) started_ms: i64,
    pub(crate) fired_ms: i64,
    pub(crate) resolved_ms: Option<i64>,
}

impl From<&crate::alerts::Notification> for AlertEvent {
    fn from(n: &crate::alerts::Notification) -> Self {
        AlertEvent {
            status: n.status.to_string(),
            rule: n.rule.clone(),
            job: n.job.clone(),
            job_id: n.job_id,
            value: n.value.clone(),
            started_ms: n.started_ms,
            fired_ms: n.fired_ms,
            resolved_ms: n.resolved_ms,
        }
    }
}

/// The events, oldest first, and where they are kept.
#[derive(Default)]
pub(crate) struct AlertHistory {
    events: VecDeque<AlertEvent>,
    file: Option<PathBuf>,
    /// Lines in the file (it is rewritten with the kept events past twice [`KEPT`]).
    lines: usize,
}

impl AlertHistory {
    /// The history kept in `data_dir` (read back; none there: empty).
    pub(crate) fn open(data_dir: &Path) -> Self {
        let file = data_dir.join(FILE);
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut events: VecDeque<AlertEvent> = VecDeque::new();
        let mut lines = 0;
        for line in text.lines() {
            lines += 1;
            match serde_json::from_str::<AlertEvent>(line) {
                Ok(e) => {
                    if events.len() == KEPT {
                        events.pop_front();
                    }
                    events.push_back(e);
                }
                Err(e) => {
                    tracing::warn!(path = %file.display(), error = %e, "a line of the alert history does not read; skipped");
                }
            }
        }
        AlertHistory {
            events,
            file: Some(file),
            lines,
        }
    }

    /// Records an event (and appends it to the file).
    pub(crate) fn record(&mut self, e: AlertEvent) {
        if self.events.len() == KEPT {
            self.events.pop_front();
        }
        self.events.push_back(e.clone());
        let Some(file) = self.file.clone() else {
            return;
        };
        let written = match self.lines >= 2 * KEPT {
            // Rewritten whole (atomically) with what is kept.
            true => {
                let mut text = String::new();
                for e in &self.events {
                    text.push_str(&serde_json::to_string(e).unwrap_or_default());
                    text.push('\n');
                }
                let r = crate::durable::write_file(&file, text.as_bytes());
                if r.is_ok() {
                    self.lines = self.events.len();
                }
                r
            }
            false => (|| {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&file)?;
                let mut line = serde_json::to_string(&e).unwrap_or_default();
                line.push('\n');
                f.write_all(line.as_bytes())?;
                f.sync_data()?;
                self.lines += 1;
                Ok(())
            })(),
        };
        if let Err(err) = written {
            tracing::error!(path = %file.display(), error = %err, "the alert history could not be written");
        }
    }

    /// The events, oldest first.
    pub(crate) fn events(&self) -> Vec<AlertEvent> {
        self.events.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: i64) -> AlertEvent {
        AlertEvent {
            status: if i % 2 == 0 { "firing" } else { "resolved" }.into(),
            rule: "lag".into(),
            job: "j".into(),
            job_id: 1,
            value: i.to_string(),
            started_ms: i,
            fired_ms: i,
            resolved_ms: (i % 2 == 1).then_some(i),
        }
    }

    #[test]
    fn events_come_back_after_a_restart_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = AlertHistory::open(dir.path());
        for i in 0..3 {
            h.record(event(i));
        }
        // A crash in the middle of a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all(b"{\"status\": \"fir").unwrap();
        let again = AlertHistory::open(dir.path());
        assert_eq!(again.events(), (0..3).map(event).collect::<Vec<_>>());
    }

    #[test]
    fn the_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = AlertHistory::open(dir.path());
        for i in 0..(3 * KEPT as i64) {
            h.record(event(i));
        }
        let lines = std::fs::read_to_string(dir.path().join(FILE))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 2 * KEPT, "{lines} lines");
        let back = AlertHistory::open(dir.path()).events();
        assert_eq!(back.len(), KEPT);
        assert_eq!(back.last(), Some(&event(3 * KEPT as i64 - 1)));
    }
}
