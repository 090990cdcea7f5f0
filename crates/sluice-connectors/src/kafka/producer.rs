//! Sluice's own producer (plaintext, uncompressed, idempotent or not): the sink writes
//! its records straight into a record batch per partition, and a task of its own sends
//! them.
//!
//! ```text
//!  sink: record ──> open batch of its partition (key murmur2 / sticky / given)
//!        end of a chunk (or 1 MB) ──> sealed batch, stamped with the producer id and
//!        the partition's next sequence ──> queue of the partition
//!  task: a round = the first queued batch of every partition, one Produce request per
//!        leader, sent side by side; acknowledged batches leave their queues; a
//!        retriable error (leader moved, broker away) keeps the batch first in its
//!        queue for the next round, after a metadata refresh
//!  flush: waits until every queue is empty (or an error is final)
//! ```
//!
//! One batch per partition is in flight at a time, so records keep their order per
//! partition through retries, and the broker drops a batch it already has (same
//! producer id and sequence): a retry never duplicates.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_types::{Result, SluiceError};
use tokio::sync::Notify;

use super::client::{Cluster, PRODUCE, PRODUCE_V, Unsupported, code};
use super::wire::{self, BatchWriter, Get, ProducerStamp, Put, key_partition};

/// A batch is sealed when it reaches this many bytes (librdkafka's `batch.size`
/// default), unless `batch.size` says otherwise.
const BATCH_BYTES: usize = 1_000_000;
/// The sink waits while more than this is queued and not yet acknowledged.
const QUEUED_BYTES: usize = 64 << 20;
/// Batches smaller than this that wait behind each other are merged.
const MERGE_BELOW: usize = 64 << 10;
/// Buffers of acknowledged batches kept for reuse.
const FREE_BUFFERS: usize = 8;
/// How long a batch may wait to be acknowledged before the sink fails (Kafka's
/// `delivery.timeout.ms` default), unless `delivery.timeout.ms` or
/// `message.timeout.ms` says otherwise.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// What the sink and the sending task share.
#[derive(Default)]
struct Queues {
    /// Sealed batches per partition, oldest first, with when each was sealed and
    /// whether it was sent before (then it goes again exactly as it was: the broker
    /// knows a batch it has by its first and last sequence).
    batches: BTreeMap<i32, VecDeque<(Vec<u8>, Instant, bool)>>,
    bytes: usize,
    /// Batches taken out of their queues by the round being sent.
    in_flight: usize,
    /// Buffers of acknowledged batches, for the next ones (no fresh pages to fault in).
    free: Vec<Vec<u8>>,
    /// The first error that cannot be retried: the sink fails with it.
    failed: Option<String>,
}

struct Shared {
    queues: Mutex<Queues>,
    /// Woken when there is something to send (the task waits on it).
    work: Notify,
    /// Woken when batches were acknowledged or failed (the sink waits on it).
    done: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Options of the producer, from the client properties.
#[derive(Clone, Debug)]
pub(crate) struct ProducerOptions {
    /// `acks`: -1 (all) or 1.
    pub(crate) acks: i16,
    pub(crate) idempotent: bool,
    pub(crate) batch_bytes: usize,
    pub(crate) delivery_timeout: Duration,
    pub(crate) client_id: String,
    /// `allow.auto.create.topics` (librdkafka's producer default: true).
    pub(crate) auto_create: bool,
}

impl ProducerOptions {
    /// The options for these client properties, or why Sluice's producer cannot honour
    /// them (compression, `acks = 0`, TLS/SASL: librdkafka's).
    pub(crate) fn from_props(
        props: &BTreeMap<String, String>,
        idempotent: bool,
    ) -> std::result::Result<Self, Unsupported> {
        if !super::client::plaintext(props) {
            return Err(Unsupported("not a plaintext connection".into()));
        }
        for k in ["compression.type", "compression.codec"] {
            if props
                .get(k)
                .is_some_and(|v| !v.eq_ignore_ascii_case("none"))
            {
                return Err(Unsupported(format!("`{k}` asks for compression")));
            }
        }
        let acks = match props
            .get("acks")
            .or_else(|| props.get("request.required.acks"))
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("all") | Some("-1") => -1,
            Some("1") if !idempotent => 1,
            Some(other) => return Err(Unsupported(format!("acks = {other}"))),
        };
        let idempotent = idempotent
            || props
                .get("enable.idempotence")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let num = |k: &str| props.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let delivery_timeout = num("delivery.timeout.ms")
            .or_else(|| num("message.timeout.ms"))
            .filter(|&ms| ms > 0)
            .map_or(DELIVERY_TIMEOUT, Duration::from_millis);
        Ok(Self {
            acks,
            idempotent,
            batch_bytes: num("batch.size")
                .map_or(BATCH_BYTES, |b| b.clamp(1024, 16 << 20) as usize),
            delivery_timeout,
            client_id: props
                .get("client.id")
                .cloned()
                .unwrap_or_else(|| "sluice".into()),
            auto_create: props
                .get("allow.auto.create.topics")
                .is_none_or(|v| !v.eq_ignore_ascii_case("false")),
        })
    }
}

/// Sluice's producer of one sink subtask, for one topic.
pub(crate) struct NativeProducer {
    topic: String,
    partitions: i32,
    opts: ProducerOptions,
    stamp: ProducerStamp,
    /// Per partition: the next sequence number (idempotent) and the batch being filled.
    sequence: Vec<i32>,
    open: Vec<Option<BatchWriter>>,
    /// The partition keyless records go to until the next chunk.
    sticky: i32,
    shared: Arc<Shared>,
    _task: super::client::Task,
}

impl NativeProducer {
    /// Connects to the cluster and starts the sending task. `Ok(Err(_))`: the broker
    /// cannot be served by this producer.
    pub(crate) async fn start(
        servers: &str,
        topic: &str,
        opts: ProducerOptions,
        first_partition: i32,
    ) -> Result<std::result::Result<Self, Unsupported>> {
        let mut cluster = match Cluster::open(
            servers,
            &opts.client_id,
            &[topic.to_string()],
            opts.auto_create,
        )
        .await?
        {
            Ok(c) => c,
            Err(u) => return Ok(Err(u)),
        };
        // A topic being created (on first use) has no partitions for a moment.
        let deadline = Instant::now() + super::client::REQUEST_TIMEOUT;
        let partitions = loop {
            let n = cluster
                .meta
                .leaders
                .get(topic)
                .map_or(0, |l| l.len() as i32);
            if n > 0 || Instant::now() >= deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            cluster.refresh().await?;
        };
        if partitions == 0 {
            return Err(SluiceError::external(format!(
                "Kafka topic `{topic}` does not exist (or has no partitions)"
            )));
        }
        let stamp = match opts.idempotent {
            true => {
                let (id, epoch) = cluster.init_producer_id().await?;
                ProducerStamp {
                    id,
                    epoch,
                    sequence: 0,
                }
            }
            false => ProducerStamp::NONE,
        };
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            work: Notify::new(),
            done: Notify::new(),
        });
        let task = super::client::Task::spawn(send_rounds(
            cluster,
            topic.to_string(),
            opts.clone(),
            Arc::clone(&shared),
        ));
        Ok(Ok(Self {
            topic: topic.to_string(),
            partitions,
            opts,
            stamp,
            sequence: vec![0; partitions as usize],
            open: (0..partitions).map(|_| None).collect(),
            sticky: first_partition.rem_euclid(partitions),
            shared,
            _task: task,
        }))
    }

    /// Adds a record to its partition's open batch: `partition` if given, else the
    /// murmur2 partition of its key, else this chunk's sticky partition.
    pub(crate) fn append(
        &mut self,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        timestamp: i64,
    ) -> Result<()> {
        let p = match (partition, key) {
            (Some(p), _) => p,
            (None, Some(k)) => key_partition(k, self.partitions),
            (None, None) => self.sticky,
        };
        if !(0..self.partitions).contains(&p) {
            return Err(SluiceError::user(format!(
                "Kafka topic `{}` has no partition {p} (it has {})",
                self.topic, self.partitions
            )));
        }
        let slot = &mut self.open[p as usize];
        if slot.is_none() {
            let reused = self.shared.lock().free.pop();
            *slot = Some(match reused {
                Some(buf) => BatchWriter::in_buffer(buf),
                None => BatchWriter::new(self.opts.batch_bytes + (64 << 10)),
            });
        }
        let Some(w) = slot.as_mut() else {
            return Ok(());
        };
        w.push(key, value, headers, timestamp);
        if w.size() >= self.opts.batch_bytes {
            self.seal(p);
        }
        Ok(())
    }

    /// Seals the open batch of partition `p` and queues it.
    fn seal(&mut self, p: i32) {
        let Some(w) = self.open[p as usize].take() else {
            return;
        };
        let n = w.count();
        let stamp = match self.opts.idempotent {
            true => {
                let s = self.sequence[p as usize];
                // Sequences wrap around at i32::MAX, as Kafka's do.
                self.sequence[p as usize] = s.wrapping_add(n) & i32::MAX;
                ProducerStamp {
                    sequence: s,
                    ..self.stamp
                }
            }
            false => ProducerStamp::NONE,
        };
        let batch = w.finish(stamp);
        let mut q = self.shared.lock();
        q.bytes += batch.len();
        q.batches
            .entry(p)
            .or_default()
            .push_back((batch, Instant::now(), false));
    }

    /// Queues every open batch for sending, and waits while too much is queued. The
    /// next keyless records go to the next partition.
    pub(crate) async fn send(&mut self) -> Result<()> {
        for p in 0..self.partitions {
            self.seal(p);
        }
        self.sticky = (self.sticky + 1) % self.partitions;
        self.shared.work.notify_one();
        self.wait_until(|q| q.bytes <= QUEUED_BYTES).await
    }

    /// Sends everything and waits until the broker has acknowledged all of it.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.send().await?;
        self.wait_until(|q| q.in_flight == 0 && q.batches.values().all(VecDeque::is_empty))
            .await
    }

    /// The producer's final error, if it has one.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.shared.lock().failed {
            Some(e) => Err(SluiceError::external(format!(
                "Kafka sink to `{}`: {e}",
                self.topic
            ))),
            None => Ok(()),
        }
    }

    async fn wait_until(&self, ready: impl Fn(&Queues) -> bool) -> Result<()> {
        loop {
            let done = self.shared.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            {
                let q = self.shared.lock();
                if q.failed.is_some() {
                    drop(q);
                    return self.check();
                }
                if ready(&q) {
                    return Ok(());
                }
            }
            done.await;
        }
    }
}

/// The sending task: rounds of Produce requests until the producer is dropped.
async fn send_rounds(mut cluster: Cluster, topic: String, opts: ProducerOptions, s: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    let mut quiet = super::client::Quiet::default();
    loop {
        let work = s.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        // The first batch of each partition that has one.
        let round: Vec<(i32, Vec<u8>, Instant)> = {
            let mut q = s.lock();
            let q = &mut *q;
            if q.failed.is_some() {
                return;
            }
            let mut round = Vec::new();
            for (&p, queued) in q.batches.iter_mut() {
                let Some((first, at, sent)) = queued.pop_front() else {
                    continue;
                };
                // Small batches waiting behind each other (records trickling in while
                // a round was out) go as one; large ones are worth a request each (no
                // records written again).
                let mut take = vec![first];
                let mut size = take[0].len();
                while let Some((next, _, false)) = queued.front()
                    && !sent
                    && size < MERGE_BELOW
                    && next.len() < MERGE_BELOW
                    && size + next.len() <= opts.batch_bytes
                {
                    size += next.len();
                    take.extend(queued.pop_front().map(|(b, _, _)| b));
                }
                if take.len() == 1 {
                    round.push((p, take.pop().unwrap_or_default(), at));
                    continue;
                }
                match wire::merge(&take, Vec::with_capacity(size)) {
                    Ok(merged) => {
                        q.bytes = q.bytes - size + merged.len();
                        for b in take {
                            if q.free.len() < FREE_BUFFERS {
                                q.free.push(b);
                            }
                        }
                        round.push((p, merged, at));
                    }
                    Err(e) => {
                        q.failed = Some(format!("cannot merge record batches: {e}"));
                        return;
                    }
                }
            }
            q.in_flight = round.len();
            round
        };
        if round.is_empty() {
            work.await;
            continue;
        }
        let mut outcome = produce_round(&mut cluster, &topic, &opts, &round).await;
        let mut refresh = false;
        {
            let mut q = s.lock();
            q.in_flight = 0;
            // Acknowledged batches are done; retried ones go back first in their queues.
            for (p, batch, at) in round {
                let result = outcome
                    .iter()
                    .position(|(op, _)| *op == p)
                    .map_or(Err(Retry::Later("no answer".into())), |i| {
                        outcome.swap_remove(i).1
                    });
                match result {
                    Ok(()) => {
                        q.bytes -= batch.len();
                        if q.free.len() < FREE_BUFFERS {
                            q.free.push(batch);
                        }
                    }
                    Err(Retry::Later(why)) => {
                        if at.elapsed() > opts.delivery_timeout {
                            q.failed = Some(format!(
                                "records for partition {p} were not acknowledged within {} s: {why}",
                                opts.delivery_timeout.as_secs()
                            ));
                        }
                        q.batches
                            .entry(p)
                            .or_default()
                            .push_front((batch, at, true));
                        refresh = true;
                    }
                    Err(Retry::Never(why)) => {
                        q.failed.get_or_insert(format!("partition {p}: {why}"));
                    }
                }
            }
        }
        s.done.notify_waiters();
        if refresh {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if let Err(e) = cluster.refresh().await
                && quiet.due()
            {
                tracing::warn!(error = %e, topic = %topic, "cannot refresh Kafka's metadata (retrying)");
            }
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

enum Retry {
    Later(String),
    Never(String),
}

/// One round: a Produce request per leader, side by side; the outcome per partition.
async fn produce_round(
    cluster: &mut Cluster,
    topic: &str,
    opts: &ProducerOptions,
    round: &[(i32, Vec<u8>, Instant)],
) -> Vec<(i32, std::result::Result<(), Retry>)> {
    let mut out = Vec::new();
    let mut by_leader: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, (p, _, _)) in round.iter().enumerate() {
        match cluster.meta.leader(topic, *p) {
            Some(l) => by_leader.entry(l).or_default().push(i),
            None => out.push((*p, Err(Retry::Later("the partition has no leader".into())))),
        }
    }
    let mut calls = Vec::new();
    for (leader, items) in by_leader {
        let conn = cluster.take_conn(leader).await;
        // The request around the batches, which are written as they are.
        let mut head = Vec::new();
        head.string(None); // transactional_id
        head.i16(opts.acks);
        head.i32(super::client::REQUEST_TIMEOUT.as_millis() as i32);
        head.array_len(1);
        head.string(Some(topic));
        head.array_len(items.len());
        let mut frames = Vec::with_capacity(items.len());
        for &i in &items {
            let mut f = Vec::with_capacity(8);
            f.i32(round[i].0);
            f.i32(round[i].1.len() as i32);
            frames.push(f);
        }
        calls.push(async move {
            let mut parts: Vec<&[u8]> = vec![&head];
            for (f, &i) in frames.iter().zip(&items) {
                parts.push(f);
                parts.push(&round[i].1);
            }
            let r = match conn {
                Ok(mut c) => {
                    let r = c.call_parts(PRODUCE, PRODUCE_V, &parts, Vec::new()).await;
                    (r, Some(c))
                }
                Err(e) => (Err(e), None),
            };
            (leader, items, r)
        });
    }
    for (leader, items, (resp, conn)) in futures::future::join_all(calls).await {
        let parts: Vec<i32> = items.iter().map(|&i| round[i].0).collect();
        match resp.and_then(|r| produce_response(&r[4..], topic)) {
            Ok(codes) => {
                if let Some(c) = conn {
                    cluster.put_back(leader, c);
                }
                for p in parts {
                    let r = match codes.get(&p) {
                        Some(&(c, _))
                            if c == code::NONE || c == code::DUPLICATE_SEQUENCE_NUMBER =>
                        {
                            Ok(())
                        }
                        Some((c, msg)) if code::retriable(*c) => {
                            Err(Retry::Later(code::name(*c) + msg))
                        }
                        Some((c, msg)) => Err(Retry::Never(format!(
                            "Kafka refused the records: {}{msg}",
                            code::name(*c)
                        ))),
                        None => Err(Retry::Later("no answer for the partition".into())),
                    };
                    out.push((p, r));
                }
            }
            // The connection is dropped; what it carried goes again (the broker drops
            // what it already has, by sequence).
            Err(e) => {
                for p in parts {
                    out.push((p, Err(Retry::Later(e.to_string()))));
                }
            }
        }
    }
    out
}

/// A Produce (v8) response: per partition of `topic`, its error code and message.
fn produce_response(resp: &[u8], topic: &str) -> Result<BTreeMap<i32, (i16, String)>> {
    let mut g = Get::new(resp, "Produce response");
    let mut out = BTreeMap::new();
    for _ in 0..g.len(6)? {
        let name = g.string()?.unwrap_or_default();
        for _ in 0..g.len(36)? {
            let p = g.i32()?;
            let err = g.i16()?;
            let _base_offset = g.i64()?;
            let _append_time = g.i64()?;
            let _log_start = g.i64()?;
            let mut detail = String::new();
            for _ in 0..g.len(6)? {
                let _index = g.i32()?;
                if let Some(m) = g.string()? {
                    detail = format!(": {m}");
                }
            }
            if let Some(m) = g.string()? {
                detail = format!(": {m}");
            }
            if name == topic {
                out.insert(p, (err, detail));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn what_librdkafka_must_serve_is_left_to_it() {
        let ok =
            |p: &[(&str, &str)], idempotent| ProducerOptions::from_props(&props(p), idempotent);
        let o = ok(&[], true).unwrap();
        assert_eq!(
            (o.acks, o.idempotent, o.batch_bytes),
            (-1, true, BATCH_BYTES)
        );
        assert!(o.auto_create);
        let o = ok(
            &[
                ("acks", "1"),
                ("batch.size", "16384"),
                ("delivery.timeout.ms", "5000"),
            ],
            false,
        )
        .unwrap();
        assert_eq!((o.acks, o.idempotent, o.batch_bytes), (1, false, 16384));
        assert_eq!(o.delivery_timeout, Duration::from_secs(5));
        assert!(
            ok(&[("enable.idempotence", "true")], false)
                .unwrap()
                .idempotent
        );
        // Compression, acks = 0 (no answer to wait for), acks = 1 with idempotence,
        // TLS or SASL: librdkafka's.
        for p in [
            &[("compression.type", "lz4")][..],
            &[("compression.codec", "gzip")],
            &[("acks", "0")],
            &[("security.protocol", "SSL")],
            &[("security.protocol", "sasl_plaintext")],
        ] {
            assert!(ok(p, false).is_err(), "{p:?}");
        }
        assert!(ok(&[("acks", "1")], true).is_err());
        assert!(
            ok(
                &[
                    ("compression.type", "none"),
                    ("security.protocol", "PLAINTEXT")
                ],
                true
            )
            .is_ok()
        );
    }
}
