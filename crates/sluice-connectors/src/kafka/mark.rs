//! What an offset committed by a cluster instance says besides the offset (Kafka's offset
//! metadata, JSON): which instance committed it and when, since when that instance owns
//! the partition and how long the partition stood still when it came to it, and, for a
//! partition task, the checkpoint taken with it and that checkpoint's state size. The
//! next owner of a partition task restores the checkpoint it names; `sluice ps
//! --cluster` reads the rest back.

use serde::{Deserialize, Serialize};

/// Offset metadata of a cluster instance's commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMark {
    /// The instance that committed.
    pub instance: String,
    /// When (epoch ms).
    pub at: i64,
    /// Since when this instance commits the partition (epoch ms): when it first did.
    pub since: i64,
    /// How long the partition stood still when it came to this instance: from the
    /// previous owner's last commit to this instance's first (ms). None when nobody
    /// committed it before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
    /// A partition task: its run, whose checkpoints hold its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// A partition task: the checkpoint of its run taken with this commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// A partition task: the size of that checkpoint's state (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_bytes: Option<u64>,
}

/// Offset metadata a broker keeps by default (`offset.metadata.max.bytes`).
const MAX_BYTES: usize = 4096;

impl CommitMark {
    /// The mark in committed metadata; `None` for metadata of anything else (empty, or
    /// written by another client).
    pub fn parse(metadata: &str) -> Option<CommitMark> {
        if metadata.len() > MAX_BYTES || !metadata.starts_with('{') {
            return None;
        }
        serde_json::from_str(metadata).ok()
    }

    /// The metadata to commit.
    pub fn to_metadata(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The mark of this instance's next commit of a partition whose last commit was
    /// `previous` (if any was read), now being `now`: the ownership carries on when
    /// `first` is false (the partition's earlier commits in this run were this
    /// instance's).
    pub fn next(
        instance: &str,
        now: i64,
        first: Option<&CommitMark>,
        previous: Option<&CommitMark>,
    ) -> CommitMark {
        match first {
            Some(f) => CommitMark {
                instance: instance.to_string(),
                at: now,
                since: f.since,
                pause_ms: f.pause_ms,
                ..CommitMark::default()
            },
            None => CommitMark {
                instance: instance.to_string(),
                at: now,
                since: now,
                pause_ms: previous.map(|p| (now - p.at).max(0) as u64),
                ..CommitMark::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_foreign_metadata_is_no_mark() {
        let m = CommitMark {
            instance: "a".into(),
            at: 10,
            since: 5,
            pause_ms: Some(3),
            run: Some("a-1".into()),
            epoch: Some(7),
            state_bytes: Some(4096),
        };
        assert_eq!(CommitMark::parse(&m.to_metadata()), Some(m));
        assert_eq!(CommitMark::parse(""), None);
        assert_eq!(CommitMark::parse("run:7"), None);
        assert_eq!(CommitMark::parse("{\"instance\": 3}"), None);
        assert_eq!(CommitMark::parse(&format!("{{{}", " ".repeat(5000))), None);
    }

    #[test]
    fn ownership_carries_on_and_a_new_owner_measures_its_pause() {
        let old = CommitMark::next("a", 1_000, None, None);
        assert_eq!((old.since, old.pause_ms), (1_000, None));
        let later = CommitMark::next("a", 1_200, Some(&old), None);
        assert_eq!((later.since, later.pause_ms), (1_000, None));
        let taken = CommitMark::next("b", 7_200, None, Some(&later));
        assert_eq!((taken.since, taken.pause_ms), (7_200, Some(6_000)));
        let after = CommitMark::next("b", 7_400, Some(&taken), None);
        assert_eq!((after.since, after.pause_ms), (7_200, Some(6_000)));
    }
}
