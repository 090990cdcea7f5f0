//! How the Kafka sink's records are encoded and where they go: each row's key, value,
//! headers, partition and timestamp, into a transaction's buffer (kept for a
//! checkpoint) or straight into Sluice's producer; and the headers' own encoding in a
//! transaction's buffer.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use rdkafka::message::{Header, OwnedHeaders};
use sluice_types::{Batch, Result};

use super::super::super::producer::NativeProducer;
use super::super::{Partitioner, Upsert, upsert_writes};
use super::{KafkaSinkOperator, Rec, Txn};
use crate::codec::MessageFormat;

/// Where encoded records go: a transaction's buffer, or Sluice's producer.
pub(super) trait RecordOut {
    fn record(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        partition: Option<i32>,
        timestamp: Option<i64>,
    ) -> Result<()>;
}

impl RecordOut for Txn {
    fn record(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        partition: Option<i32>,
        timestamp: Option<i64>,
    ) -> Result<()> {
        let data = &mut self.data;
        let mut put = |b: Option<&[u8]>| {
            b.map(|b| {
                let s = data.len();
                data.extend_from_slice(b);
                (s, data.len())
            })
        };
        let (key, value) = (put(key), put(value));
        let hs = data.len();
        if !headers.is_empty() {
            encode_headers(data, headers);
        }
        self.recs.push(Rec {
            key,
            value,
            headers: (hs, data.len()),
            partition,
            timestamp,
        });
        Ok(())
    }
}

/// Records straight into Sluice's producer, stamped `now` when they have no time.
pub(super) struct Direct<'a> {
    pub(super) producer: &'a mut NativeProducer,
    pub(super) now: i64,
}

impl RecordOut for Direct<'_> {
    fn record(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        partition: Option<i32>,
        timestamp: Option<i64>,
    ) -> Result<()> {
        self.producer.append(
            partition,
            key,
            value,
            headers,
            timestamp.unwrap_or(self.now),
        )
    }
}

pub(super) fn encode_headers(out: &mut Vec<u8>, headers: &[(&str, Option<&[u8]>)]) {
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        match v {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_le_bytes()),
        }
    }
}

/// Now, in milliseconds since the epoch (a record's timestamp when it has none).
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The headers [`encode_headers`] wrote (what does not parse is left out).
pub(super) fn header_list(mut b: &[u8]) -> Vec<(&str, Option<&[u8]>)> {
    fn take<'a>(n: usize, b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (x, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(x)
    }
    fn word(b: &mut &[u8]) -> Option<[u8; 4]> {
        take(4, b)?.try_into().ok()
    }
    let mut out = Vec::new();
    let mut read = || -> Option<()> {
        if b.is_empty() {
            return Some(());
        }
        let n = u32::from_le_bytes(word(&mut b)?);
        for _ in 0..n {
            let kl = u32::from_le_bytes(word(&mut b)?) as usize;
            let k = std::str::from_utf8(take(kl, &mut b)?).ok()?;
            let v = match i32::from_le_bytes(word(&mut b)?) {
                -1 => None,
                n => Some(take(usize::try_from(n).ok()?, &mut b)?),
            };
            out.push((k, v));
        }
        Some(())
    };
    let _ = read();
    out
}

pub(super) fn decode_headers(b: &[u8]) -> OwnedHeaders {
    header_list(b)
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header { key, value })
        })
}

impl KafkaSinkOperator {
    /// Encodes one batch's records (once) and hands each to `out`; `changes` is the
    /// batch the rows came in, for their kinds.
    pub(super) fn encode_into(
        &mut self,
        batch: &RecordBatch,
        changes: &Batch,
        out: &mut dyn RecordOut,
    ) -> Result<()> {
        let cfg = Arc::clone(&self.config);
        let values = batch.project(&cfg.value_columns)?;
        let values = match cfg.format {
            MessageFormat::DebeziumJson { .. } => {
                crate::format::debezium_envelope(&values, changes)?
            }
            _ => values,
        };
        self.value_encoder.encode(&values)?;
        if let (Some(enc), Some((_, _, idx))) = (&mut self.key_encoder, &cfg.key) {
            enc.encode(&batch.project(idx)?)?;
        }
        let key_col = cfg.key_column.map(|i| batch.column(i));
        let headers = cfg.headers_column.map(|i| batch.column(i).as_map().clone());
        let times = match cfg.timestamp_column.map(|i| batch.column(i)) {
            Some(c) => Some(arrow::compute::cast(c, &DataType::Int64)?),
            None => None,
        };
        let times = times
            .as_ref()
            .map(|t| t.as_primitive::<arrow::datatypes::Int64Type>());
        let upserts = match (cfg.upsert, &self.key_encoder) {
            (true, Some(keys)) => Some(upsert_writes(changes, keys)),
            _ => None,
        };
        for row in 0..batch.num_rows() {
            let tombstone = match upserts.as_ref().map(|u| u[row]) {
                Some(Upsert::Skip) => continue,
                Some(Upsert::Tombstone) => true,
                Some(Upsert::Value) | None => false,
            };
            let key = match (&self.key_encoder, key_col) {
                (Some(enc), _) => Some(enc.row(row)),
                (None, Some(c)) if c.is_valid(row) => Some(match c.data_type() {
                    DataType::Utf8 => c.as_string::<i32>().value(row).as_bytes(),
                    _ => c.as_binary::<i32>().value(row),
                }),
                _ => None,
            };
            let value = (!tombstone).then(|| self.value_encoder.row(row));
            let entries = headers
                .as_ref()
                .filter(|m| m.is_valid(row))
                .map(|m| m.value(row));
            let list: Vec<(&str, Option<&[u8]>)> = match &entries {
                Some(e) => {
                    let ks = e.column(0).as_string::<i32>();
                    let vals = e.column(1).as_binary::<i32>();
                    (0..e.len())
                        .map(|j| (ks.value(j), vals.is_valid(j).then(|| vals.value(j))))
                        .collect()
                }
                None => Vec::new(),
            };
            let partition = match cfg.partitioner {
                Partitioner::Default => None,
                Partitioner::Fixed => Some(self.subtask as i32 % cfg.partitions.max(1)),
                Partitioner::RoundRobin => {
                    self.round_robin = (self.round_robin + 1) % cfg.partitions.max(1);
                    Some(self.round_robin)
                }
            };
            let timestamp = times.and_then(|t| t.is_valid(row).then(|| t.value(row)));
            out.record(key, value, &list, partition, timestamp)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn headers_round_trip_through_the_checkpoint_encoding() {
        let mut b = Vec::new();
        encode_headers(&mut b, &[("a", Some(b"1")), ("b", None)]);
        let h = decode_headers(&b);
        let got: Vec<(String, Option<Vec<u8>>)> = h
            .iter()
            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            got,
            vec![("a".into(), Some(b"1".to_vec())), ("b".into(), None),]
        );
    }
}
