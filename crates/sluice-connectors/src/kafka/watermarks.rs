//! Watermarks carried in a Kafka topic, so that event time survives a hop through
//! Kafka between jobs (or between the instances of one job).
//!
//! ```text
//!  writer 0 ─ rows … wm(0: 17:00:05) … rows … wm(0: 17:00:09) ─┐
//!  writer 1 ─ rows … wm(1: 17:00:04) … rows ────────────────────┼─> partition p
//!                                                                │   watermark of p =
//!                                                                │   min over writers
//!                                                                │   = 17:00:04
//! ```
//!
//! A sink with `'sink.watermark-records' = 'true'` writes, whenever its input's
//! watermark has advanced (at each checkpoint, inside its transaction; without
//! checkpoints every [`WRITE_EVERY`]), one record to every partition of its topic: a
//! null value (a tombstone, so compacted topics drop it) under a key that starts with
//! [`KEY_PREFIX`] and holds `{"watermark": ms, "writers": [i, …], "of": n}`. The
//! writers are the indexes the record speaks for (the sink's subtask of `n`, or in a
//! cluster instance the source partitions, of `n`, whose rows it writes).
//!
//! A source with `'scan.watermark-records' = 'true'` takes them out of the rows and
//! reports each partition's watermark: the minimum over all `n` writers once each has
//! written one. Rows do not move it, so rows that writers delayed (a writer restarted
//! from an older offset) are never late downstream.

use std::collections::HashMap;
use std::time::Duration;

/// The key prefix of a watermark record.
pub(crate) const KEY_PREFIX: &[u8] = b"\0sluice-watermark ";

/// How often a sink without checkpoints writes its watermark when it advanced.
pub(crate) const WRITE_EVERY: Duration = Duration::from_millis(200);

/// The content of a watermark record.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct WatermarkRecord {
    /// Epoch milliseconds: the writers write no more rows at or before it.
    pub watermark: i64,
    /// The writers it speaks for.
    pub writers: Vec<u32>,
    /// How many writers the topic has.
    pub of: u32,
}

impl WatermarkRecord {
    /// The record's key.
    pub(crate) fn key(&self) -> Vec<u8> {
        let mut k = KEY_PREFIX.to_vec();
        // A struct of integers always serializes.
        k.extend_from_slice(&serde_json::to_vec(self).unwrap_or_default());
        k
    }

    /// A record's content, if its key is a watermark record's (and well formed).
    pub(crate) fn parse(key: &[u8]) -> Option<Self> {
        let r: Self = serde_json::from_slice(key.strip_prefix(KEY_PREFIX)?).ok()?;
        (r.of > 0 && r.writers.iter().all(|&w| w < r.of)).then_some(r)
    }
}

/// One partition's writers and their watermarks, as read.
#[derive(Debug, Default)]
pub(crate) struct PartitionWatermark {
    of: u32,
    writers: HashMap<u32, i64>,
    reported: Option<i64>,
}

impl PartitionWatermark {
    /// Takes a record in; returns the partition's watermark when it advanced.
    pub(crate) fn take(&mut self, r: &WatermarkRecord) -> Option<i64> {
        if r.of != self.of {
            // The writers changed (another parallelism, another partition count):
            // only those of the new count speak from now on.
            self.of = r.of;
            self.writers.retain(|&w, _| w < r.of);
        }
        for &w in &r.writers {
            let e = self.writers.entry(w).or_insert(i64::MIN);
            *e = (*e).max(r.watermark);
        }
        if self.writers.len() < self.of as usize {
            return None;
        }
        let min = self.writers.values().copied().min()?;
        match self.reported {
            Some(old) if old >= min => None,
            _ => {
                self.reported = Some(min);
                Some(min)
            }
        }
    }

    /// What a checkpoint keeps of it: each writer's watermark and how many there are.
    /// A partition restored from it knows its watermark at once, even if its writers
    /// have nothing more to say (they ended before the checkpoint's offset).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let writers: std::collections::BTreeMap<String, i64> = self
            .writers
            .iter()
            .map(|(w, wm)| (w.to_string(), *wm))
            .collect();
        serde_json::json!({ "of": self.of, "writers": writers })
    }

    /// The state [`Self::to_json`] kept; `None` for anything else.
    pub(crate) fn from_json(v: &serde_json::Value) -> Option<PartitionWatermark> {
        let of = u32::try_from(v.get("of")?.as_u64()?).ok()?;
        let mut writers = HashMap::new();
        for (w, wm) in v.get("writers")?.as_object()? {
            let w: u32 = w.parse().ok()?;
            if w >= of {
                return None;
            }
            writers.insert(w, wm.as_i64()?);
        }
        Some(PartitionWatermark {
            of,
            writers,
            reported: None,
        })
    }

    /// After a restore: the partition's watermark if every writer had written, which
    /// counts as reported.
    pub(crate) fn restored(&mut self) -> Option<i64> {
        if self.of == 0 || self.writers.len() < self.of as usize {
            return None;
        }
        let min = self.writers.values().copied().min()?;
        self.reported = Some(min);
        Some(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(watermark: i64, writers: &[u32], of: u32) -> WatermarkRecord {
        WatermarkRecord {
            watermark,
            writers: writers.to_vec(),
            of,
        }
    }

    /// A checkpoint keeps the writers' watermarks: restored, the partition knows its
    /// watermark without another record; damaged state is no state.
    #[test]
    fn the_writers_watermarks_survive_a_checkpoint() {
        let mut p = PartitionWatermark::default();
        p.take(&rec(5, &[0], 2));
        let mut half = PartitionWatermark::from_json(&p.to_json()).unwrap();
        assert_eq!(half.restored(), None);
        assert_eq!(half.take(&rec(9, &[1], 2)), Some(5));
        let mut full = PartitionWatermark::from_json(&half.to_json()).unwrap();
        assert_eq!(full.restored(), Some(5));
        assert_eq!(full.take(&rec(5, &[0], 2)), None);
        assert_eq!(full.take(&rec(7, &[0], 2)), Some(7));
        let bad = serde_json::json!({ "of": 2, "writers": { "2": 1 } });
        assert!(PartitionWatermark::from_json(&bad).is_none());
        assert!(PartitionWatermark::from_json(&serde_json::json!({ "of": "x" })).is_none());
    }

    #[test]
    fn a_partition_waits_for_every_writer_and_takes_the_least() {
        let r = rec(5, &[1, 3], 4);
        assert_eq!(WatermarkRecord::parse(&r.key()), Some(r));
        assert_eq!(WatermarkRecord::parse(b"\0sluice-watermark {"), None);
        assert_eq!(WatermarkRecord::parse(&rec(5, &[4], 4).key()), None);
        assert_eq!(WatermarkRecord::parse(b"user key"), None);
        let mut p = PartitionWatermark::default();
        assert_eq!(p.take(&rec(10, &[0], 2)), None);
        assert_eq!(p.take(&rec(7, &[1], 2)), Some(7));
        // A writer never moves back; the least moves on only when it does.
        assert_eq!(p.take(&rec(3, &[1], 2)), None);
        assert_eq!(p.take(&rec(20, &[0], 2)), None);
        assert_eq!(p.take(&rec(12, &[1], 2)), Some(12));
        // Fewer writers now (the writing job runs with parallelism 1).
        assert_eq!(p.take(&rec(30, &[0], 1)), Some(30));
    }
}
