//! Sluice's own fetcher (plaintext) for the partitions a job assigns: a task of its own
//! keeps Fetch requests going to each partition's leader while the reader decodes what
//! came before, and the reader walks the fetched record batches where they lie.
//!
//! ```text
//!  task:   Fetch (v11) per leader, for every partition with room ──> response bytes
//!          (shared by its partitions) ──> per partition: a queue of fetched ranges
//!  reader: next partition in turn ──> its batches: control batches and aborted
//!          transactions skipped (read_committed), compressed ones decompressed
//!          ──> records (offset, timestamp, key, value, headers) to the decoder
//! ```
//!
//! With `read_committed` the broker sends records only up to the last stable offset,
//! and names the aborted transactions among them; a batch of a producer whose abort is
//! pending is skipped up to that producer's abort marker, as Kafka's Java consumer does.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Read;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_types::{Result, SluiceError};
use tokio::sync::Notify;

use super::client::{Cluster, FETCH, FETCH_V, Unsupported, code};
use super::group::Partition;
use super::wire::{self, FetchedBatch, FetchedRecord, Get, Put, Records};

/// Response buffers kept for reuse.
const FREE_BUFFERS: usize = 4;
/// The largest a compressed batch may grow to when decompressed.
const MAX_DECOMPRESSED: u64 = 128 << 20;

/// Options of the fetcher, from the client properties (librdkafka's names and defaults).
#[derive(Clone, Debug)]
pub(crate) struct FetchOptions {
    pub(crate) read_committed: bool,
    max_wait_ms: i32,
    min_bytes: i32,
    max_bytes: i32,
    partition_max_bytes: i32,
    check_crcs: bool,
    client_id: String,
}

impl FetchOptions {
    pub(crate) fn from_props(
        props: &BTreeMap<String, String>,
    ) -> std::result::Result<Self, Unsupported> {
        if !super::client::plaintext(props) {
            return Err(Unsupported("not a plaintext connection".into()));
        }
        let num = |k: &str, default: i32| {
            props
                .get(k)
                .and_then(|v| v.trim().parse::<i32>().ok())
                .filter(|&v| v >= 0)
                .unwrap_or(default)
        };
        Ok(Self {
            // librdkafka's default, as the source has always read.
            read_committed: props
                .get("isolation.level")
                .is_none_or(|v| !v.eq_ignore_ascii_case("read_uncommitted")),
            max_wait_ms: num("fetch.wait.max.ms", 500),
            min_bytes: num("fetch.min.bytes", 1),
            max_bytes: num("fetch.max.bytes", 52_428_800).max(1),
            partition_max_bytes: num(
                "max.partition.fetch.bytes",
                num("fetch.message.max.bytes", 1_048_576),
            )
            .max(1),
            check_crcs: props
                .get("check.crcs")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            client_id: props
                .get("client.id")
                .cloned()
                .unwrap_or_else(|| "sluice".into()),
        })
    }
}

/// Fetched bytes of one partition: a range of a response.
struct Fetched {
    data: Arc<Vec<u8>>,
    range: Range<usize>,
    /// Aborted transactions among them: (producer id, first offset), by first offset.
    aborted: Vec<(i64, i64)>,
}

struct Part {
    topic: String,
    partition: i32,
    /// The offset the next fetch asks for.
    next: i64,
    queued: VecDeque<Fetched>,
    bytes: usize,
    /// Out of range: not fetched until the reader says where to go on.
    paused: bool,
}

#[derive(Default)]
struct State {
    parts: Vec<Part>,
    /// Response buffers read to the end, for the next fetches.
    free: Vec<Vec<u8>>,
    failed: Option<String>,
    out_of_range: Vec<(usize, i64)>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the task: a partition has room again, or was moved.
    work: Notify,
    /// Wakes the reader: something was fetched.
    ready: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where the reader is in a partition's fetched bytes.
struct Cursor {
    split: usize,
    fetched: Fetched,
    /// The next batch starts here.
    pos: usize,
    /// The batch being read, if one is part-way.
    batch: Option<BatchCursor>,
    /// Producers whose transaction, aborted, the walk is inside.
    aborting: HashSet<i64>,
    /// Aborted transactions not reached yet (index into `fetched.aborted`).
    next_abort: usize,
}

struct BatchCursor {
    base_offset: i64,
    last_offset: i64,
    attributes: i16,
    base_timestamp: i64,
    max_timestamp: i64,
    /// The records: a range of the response, or decompressed bytes of their own.
    records: Range<usize>,
    owned: Option<Vec<u8>>,
    /// Bytes of `records` read so far, and records left.
    read: usize,
    left: i32,
}

/// One record handed to the reader.
pub(crate) struct Fetch<'a> {
    pub(crate) record: FetchedRecord<'a>,
    pub(crate) log_append_time: bool,
}

/// Sluice's fetcher of one source subtask's partitions.
pub(crate) struct NativeFetcher {
    shared: Arc<Shared>,
    _task: super::client::Task,
    cursor: Option<Cursor>,
    turn: usize,
    read_committed: bool,
    check_crcs: bool,
    /// Fetched bytes kept per partition before its fetching waits.
    room: usize,
}

impl NativeFetcher {
    /// Connects and starts fetching `parts` from `starts`. `Ok(Err(_))`: the broker
    /// cannot be served by this fetcher.
    pub(crate) async fn start(
        servers: &str,
        opts: FetchOptions,
        parts: &[Partition],
        starts: &[i64],
    ) -> Result<std::result::Result<Self, Unsupported>> {
        let mut topics: Vec<String> = parts.iter().map(|(t, _)| t.clone()).collect();
        topics.sort();
        topics.dedup();
        let cluster = match Cluster::open(servers, &opts.client_id, &topics, false).await? {
            Ok(c) => c,
            Err(u) => return Ok(Err(u)),
        };
        let state = State {
            parts: parts
                .iter()
                .zip(starts)
                .map(|((topic, partition), &next)| Part {
                    topic: topic.clone(),
                    partition: *partition,
                    next,
                    queued: VecDeque::new(),
                    bytes: 0,
                    paused: false,
                })
                .collect(),
            ..State::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            work: Notify::new(),
            ready: Arc::new(Notify::new()),
        });
        let room = 2 * opts.partition_max_bytes as usize;
        let (read_committed, check_crcs) = (opts.read_committed, opts.check_crcs);
        let task =
            super::client::Task::spawn(fetch_rounds(cluster, opts, room, Arc::clone(&shared)));
        Ok(Ok(Self {
            shared,
            _task: task,
            cursor: None,
            turn: 0,
            read_committed,
            check_crcs,
            room,
        }))
    }

    /// What wakes when something was fetched (a wake-up before the wait is kept).
    pub(crate) fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.ready)
    }

    /// The fetcher's final error, and partitions whose offset was out of range (each
    /// waits for [`NativeFetcher::seek`]).
    pub(crate) fn events(&self) -> Result<Vec<(usize, i64)>> {
        let mut s = self.shared.lock();
        if let Some(e) = &s.failed {
            return Err(SluiceError::external(format!("reading Kafka failed: {e}")));
        }
        Ok(std::mem::take(&mut s.out_of_range))
    }

    /// Stops fetching split `split` (it ended); what was fetched for it is dropped.
    pub(crate) fn stop(&mut self, split: usize) {
        if self.cursor.as_ref().is_some_and(|c| c.split == split) {
            self.cursor = None;
        }
        if let Some(p) = self.shared.lock().parts.get_mut(split) {
            p.paused = true;
            p.queued.clear();
            p.bytes = 0;
        }
    }

    /// Reads split `split` from `offset` on (what was fetched for it is dropped).
    pub(crate) fn seek(&mut self, split: usize, offset: i64) {
        if self.cursor.as_ref().is_some_and(|c| c.split == split) {
            self.cursor = None;
        }
        let mut s = self.shared.lock();
        if let Some(p) = s.parts.get_mut(split) {
            p.next = offset;
            p.queued.clear();
            p.bytes = 0;
            p.paused = false;
        }
        drop(s);
        self.shared.work.notify_one();
    }

    /// Up to `max` records of the next partition (in turn) with fetched records, each
    /// given to `take`; then that partition's split and, if the walk moved, the offset
    /// after what it passed (skipped control records and aborted transactions too).
    /// `None`: nothing is fetched now.
    pub(crate) fn read(
        &mut self,
        max: usize,
        mut take: impl FnMut(usize, Fetch<'_>),
    ) -> Result<Option<(usize, Option<i64>)>> {
        if self.cursor.is_none() {
            self.cursor = self.next_fetched();
        }
        let Some(c) = self.cursor.as_mut() else {
            return Ok(None);
        };
        let split = c.split;
        let mut after = None;
        let mut n = 0;
        let max = max.max(1);
        while n < max {
            if c.batch.is_none() {
                let end = c.fetched.range.end;
                let Some((batch, size)) =
                    wire::batch_at(&c.fetched.data[c.pos..end], self.check_crcs)?
                else {
                    c.pos = end;
                    break;
                };
                let records_at = c.pos + wire::BATCH_HEADER;
                c.pos += size;
                after = Some(batch.last_offset + 1);
                // Aborted transactions that begin at or before this batch.
                while let Some(&(pid, first)) = c.fetched.aborted.get(c.next_abort) {
                    if first > batch.last_offset {
                        break;
                    }
                    c.aborting.insert(pid);
                    c.next_abort += 1;
                }
                if batch.is_control() {
                    // An abort marker ends its producer's aborted transaction.
                    let mut rs = Records::new(&batch, batch.records);
                    if let Ok(Some(r)) = rs.next_record()
                        && wire::control_type(&r) == Some(0)
                    {
                        c.aborting.remove(&batch.producer_id);
                    }
                    continue;
                }
                if self.read_committed
                    && batch.is_transactional()
                    && c.aborting.contains(&batch.producer_id)
                {
                    continue;
                }
                let owned = match batch.compression() {
                    0 => None,
                    codec => Some(decompress(codec, batch.records)?),
                };
                c.batch = Some(BatchCursor {
                    base_offset: batch.base_offset,
                    last_offset: batch.last_offset,
                    attributes: batch.attributes,
                    base_timestamp: batch.base_timestamp,
                    max_timestamp: batch.max_timestamp,
                    records: records_at..records_at + batch.records.len(),
                    owned,
                    read: 0,
                    left: batch.count.max(0),
                });
            }
            let Some(b) = c.batch.as_mut() else {
                break;
            };
            let (mut read, mut left) = (b.read, b.left);
            {
                let bytes: &[u8] = match &b.owned {
                    Some(o) => o,
                    None => &c.fetched.data[b.records.clone()],
                };
                let header = FetchedBatch {
                    base_offset: b.base_offset,
                    last_offset: b.last_offset,
                    attributes: b.attributes,
                    base_timestamp: b.base_timestamp,
                    max_timestamp: b.max_timestamp,
                    producer_id: -1,
                    producer_epoch: -1,
                    base_sequence: -1,
                    count: left,
                    records: &[],
                };
                let mut rs = Records::new(&header, &bytes[read..]);
                let log_append_time = b.attributes & wire::LOG_APPEND_TIME != 0;
                while n < max && left > 0 {
                    let before = rs.remaining();
                    let Some(r) = rs.next_record()? else {
                        left = 0;
                        break;
                    };
                    read += before - rs.remaining();
                    left -= 1;
                    n += 1;
                    after = Some(r.offset + 1);
                    take(
                        split,
                        Fetch {
                            record: r,
                            log_append_time,
                        },
                    );
                }
            }
            if left == 0 {
                after = Some(b.last_offset + 1);
                c.batch = None;
            } else {
                b.read = read;
                b.left = left;
            }
        }
        if c.batch.is_none() && c.pos >= c.fetched.range.end {
            let len = c.fetched.range.len();
            let done = self.cursor.take().map(|c| c.fetched.data);
            let mut s = self.shared.lock();
            if let Some(buf) = done.and_then(|d| Arc::try_unwrap(d).ok())
                && s.free.len() < FREE_BUFFERS
            {
                s.free.push(buf);
            }
            if let Some(p) = s.parts.get_mut(split) {
                p.bytes = p.bytes.saturating_sub(len);
                let room = p.bytes < self.room;
                drop(s);
                if room {
                    self.shared.work.notify_one();
                }
            }
        }
        Ok(Some((split, after)))
    }

    /// The next partition in turn with fetched bytes, taken off its queue.
    fn next_fetched(&mut self) -> Option<Cursor> {
        let mut s = self.shared.lock();
        let n = s.parts.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Some(f) = s.parts[i].queued.pop_front() {
                self.turn = (i + 1) % n;
                return Some(Cursor {
                    split: i,
                    pos: f.range.start,
                    fetched: f,
                    batch: None,
                    aborting: HashSet::new(),
                    next_abort: 0,
                });
            }
        }
        None
    }
}

/// Decompresses a batch's records (1 gzip, 2 snappy, 3 lz4, 4 zstd).
fn decompress(codec: i16, data: &[u8]) -> Result<Vec<u8>> {
    let bad = |e: std::io::Error| {
        SluiceError::external("a compressed Kafka record batch does not decompress").with_source(e)
    };
    let mut out = Vec::new();
    match codec {
        1 => {
            flate2::read::MultiGzDecoder::new(data)
                .take(MAX_DECOMPRESSED)
                .read_to_end(&mut out)
                .map_err(bad)?;
        }
        2 => {
            // Kafka's Java client frames snappy blocks (xerial); librdkafka may not.
            const XERIAL: &[u8] = b"\x82SNAPPY\0";
            let mut dec = snap::raw::Decoder::new();
            let mut one = |block: &[u8], out: &mut Vec<u8>| -> Result<()> {
                let n =
                    snap::raw::decompress_len(block).map_err(|e| bad(std::io::Error::other(e)))?;
                if (out.len() + n) as u64 > MAX_DECOMPRESSED {
                    return Err(bad(std::io::Error::other("too large")));
                }
                let at = out.len();
                out.resize(at + n, 0);
                dec.decompress(block, &mut out[at..])
                    .map_err(|e| bad(std::io::Error::other(e)))?;
                Ok(())
            };
            if data.starts_with(XERIAL) && data.len() >= 16 {
                let mut g = Get::new(&data[16..], "snappy block");
                while !g.buf.is_empty() {
                    let n = g.i32()?;
                    let block =
                        g.bytes(usize::try_from(n).map_err(|_| wire::malformed("snappy block"))?)?;
                    one(block, &mut out)?;
                }
            } else {
                one(data, &mut out)?;
            }
        }
        3 => {
            lz4_flex::frame::FrameDecoder::new(data)
                .take(MAX_DECOMPRESSED)
                .read_to_end(&mut out)
                .map_err(bad)?;
        }
        4 => {
            zstd::stream::read::Decoder::new(data)
                .map_err(bad)?
                .take(MAX_DECOMPRESSED)
                .read_to_end(&mut out)
                .map_err(bad)?;
        }
        other => {
            return Err(SluiceError::external(format!(
                "a Kafka record batch has an unknown compression codec {other}"
            )));
        }
    }
    Ok(out)
}

/// The fetching task: rounds of Fetch requests until the fetcher is dropped.
async fn fetch_rounds(mut cluster: Cluster, opts: FetchOptions, room: usize, s: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    let mut quiet = super::client::Quiet::default();
    loop {
        let work = s.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        // (split, topic, partition, offset) of each partition with room.
        // (split, topic, partition, offset) of each partition with room.
        let wanted: Vec<(usize, String, i32, i64)> = {
            let st = s.lock();
            if st.failed.is_some() {
                return;
            }
            st.parts
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.paused && p.bytes < room)
                .map(|(i, p)| (i, p.topic.clone(), p.partition, p.next))
                .collect()
        };
        if wanted.is_empty() {
            work.await;
            continue;
        }
        let mut by_leader: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        let mut refresh = false;
        for (k, (_, t, p, _)) in wanted.iter().enumerate() {
            match cluster.meta.leader(t, *p) {
                Some(l) => by_leader.entry(l).or_default().push(k),
                None => refresh = true,
            }
        }
        let mut calls = Vec::new();
        for (leader, items) in by_leader {
            let conn = cluster.take_conn(leader).await;
            let body = fetch_request(&opts, &wanted, &items);
            let buf = s.lock().free.pop().unwrap_or_default();
            calls.push(async move {
                match conn {
                    Ok(mut c) => {
                        let r = c.call_parts(FETCH, FETCH_V, &[&body], buf).await;
                        (leader, r, Some(c))
                    }
                    Err(e) => (leader, Err(e), None),
                }
            });
        }
        let mut fetched_any = false;
        for (leader, resp, conn) in futures::future::join_all(calls).await {
            let resp = match resp {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    if quiet.due() {
                        tracing::warn!(error = %e, "a Kafka fetch failed (retrying)");
                    }
                    refresh = true;
                    continue;
                }
            };
            if let Some(c) = conn {
                cluster.put_back(leader, c);
            }
            let parsed = match fetch_response(&resp) {
                Ok(p) => p,
                Err(e) => {
                    s.lock().failed = Some(e.to_string());
                    s.ready.notify_one();
                    return;
                }
            };
            let mut st = s.lock();
            for r in parsed {
                let Some(&(split, _, _, asked)) = wanted
                    .iter()
                    .find(|(_, t, p, _)| *p == r.partition && *t == r.topic)
                else {
                    continue;
                };
                let part = &mut st.parts[split];
                if part.next != asked || part.paused {
                    // Moved (a seek) while this fetch was out: its bytes are stale.
                    continue;
                }
                match r.error {
                    code::NONE => {
                        let Some(last) = last_complete_offset(&resp[r.records.clone()]) else {
                            continue;
                        };
                        part.next = last + 1;
                        part.bytes += r.records.len();
                        part.queued.push_back(Fetched {
                            data: Arc::clone(&resp),
                            range: r.records,
                            aborted: r.aborted,
                        });
                        fetched_any = true;
                    }
                    code::OFFSET_OUT_OF_RANGE => {
                        part.paused = true;
                        st.out_of_range.push((split, asked));
                        fetched_any = true;
                    }
                    c if code::retriable(c) => refresh = true,
                    c => {
                        st.failed = Some(format!(
                            "Kafka refused to fetch {}/{}: {}",
                            r.topic,
                            r.partition,
                            code::name(c)
                        ));
                        fetched_any = true;
                    }
                }
            }
            // A response none of whose bytes are queued is read again into.
            if let Ok(buf) = Arc::try_unwrap(resp)
                && st.free.len() < FREE_BUFFERS
            {
                st.free.push(buf);
            }
        }
        if fetched_any {
            s.ready.notify_one();
        }
        if refresh {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if let Err(e) = cluster.refresh().await
                && quiet.due()
            {
                tracing::warn!(error = %e, "cannot refresh Kafka's metadata (retrying)");
            }
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

/// A Fetch (v11) request for items `items` of `wanted`, grouped by topic.
fn fetch_request(
    opts: &FetchOptions,
    wanted: &[(usize, String, i32, i64)],
    items: &[usize],
) -> Vec<u8> {
    let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
    for &k in items {
        let (_, t, p, o) = &wanted[k];
        by_topic.entry(t).or_default().push((*p, *o));
    }
    let mut b = Vec::new();
    b.i32(-1); // replica_id
    b.i32(opts.max_wait_ms);
    b.i32(opts.min_bytes);
    b.i32(opts.max_bytes);
    b.i8(i8::from(opts.read_committed));
    b.i32(0); // session_id: none
    b.i32(-1); // session_epoch: a full fetch, no session
    b.array_len(by_topic.len());
    for (t, parts) in by_topic {
        b.string(Some(t));
        b.array_len(parts.len());
        for (p, o) in parts {
            b.i32(p);
            b.i32(-1); // current_leader_epoch
            b.i64(o);
            b.i64(-1); // log_start_offset
            b.i32(opts.partition_max_bytes);
        }
    }
    b.array_len(0); // forgotten_topics_data
    b.string(Some("")); // rack_id
    b
}

/// One partition of a Fetch response.
struct FetchedPartition {
    topic: String,
    partition: i32,
    error: i16,
    aborted: Vec<(i64, i64)>,
    /// Where its records lie in the response.
    records: Range<usize>,
}

/// A Fetch (v11) response (with its correlation id first).
fn fetch_response(resp: &[u8]) -> Result<Vec<FetchedPartition>> {
    let mut g = Get::new(&resp[4..], "Fetch response");
    let _throttle = g.i32()?;
    let err = g.i16()?;
    let _session = g.i32()?;
    if err != code::NONE {
        return Err(SluiceError::external(format!(
            "Kafka refused a fetch: {}",
            code::name(err)
        )));
    }
    let mut out = Vec::new();
    for _ in 0..g.len(6)? {
        let topic = g.string()?.unwrap_or_default().to_string();
        for _ in 0..g.len(42)? {
            let partition = g.i32()?;
            let error = g.i16()?;
            let _high = g.i64()?;
            let _stable = g.i64()?;
            let _log_start = g.i64()?;
            let mut aborted = Vec::new();
            for _ in 0..g.len(16)? {
                aborted.push((g.i64()?, g.i64()?));
            }
            aborted.sort_by_key(|&(_, first)| first);
            let _preferred = g.i32()?;
            let records = match g.nullable_bytes()? {
                Some(r) => {
                    let at = resp.len() - g.buf.len() - r.len();
                    at..at + r.len()
                }
                None => 0..0,
            };
            out.push(FetchedPartition {
                topic: topic.clone(),
                partition,
                error,
                aborted,
                records,
            });
        }
    }
    Ok(out)
}

/// The last offset of the last whole batch in a partition's fetched bytes.
fn last_complete_offset(mut data: &[u8]) -> Option<i64> {
    let mut last = None;
    while data.len() >= 12 {
        let base = i64::from_be_bytes(data[..8].try_into().ok()?);
        let len = i32::from_be_bytes(data[8..12].try_into().ok()?);
        let total = 12usize.checked_add(usize::try_from(len).ok()?)?;
        if len < 49 || data.len() < total {
            break;
        }
        let delta = i32::from_be_bytes(data[23..27].try_into().ok()?);
        last = Some(base.saturating_add(i64::from(delta)));
        data = &data[total..];
    }
    last
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn records() -> Vec<u8> {
        (0..5_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_codec_decompresses_and_broken_data_is_an_error() {
        let plain = records();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gzip = gz.finish().unwrap();
        let raw_snappy = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        // The Java client's framing: a header, then blocks with their lengths.
        let mut xerial = b"\x82SNAPPY\0".to_vec();
        xerial.extend_from_slice(&1i32.to_be_bytes());
        xerial.extend_from_slice(&1i32.to_be_bytes());
        for half in plain.chunks(plain.len() / 2 + 1) {
            let block = snap::raw::Encoder::new().compress_vec(half).unwrap();
            xerial.extend_from_slice(&(block.len() as i32).to_be_bytes());
            xerial.extend_from_slice(&block);
        }
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(&plain).unwrap();
        let lz4 = lz.finish().unwrap();
        let zstd = zstd::stream::encode_all(&plain[..], 1).unwrap();
        for (codec, data) in [
            (1, &gzip),
            (2, &raw_snappy),
            (2, &xerial),
            (3, &lz4),
            (4, &zstd),
        ] {
            assert_eq!(decompress(codec, data).unwrap(), plain, "codec {codec}");
            let cut = &data[..data.len() / 2];
            assert!(decompress(codec, cut).is_err(), "codec {codec}, cut");
        }
        assert!(decompress(5, &gzip).is_err());
    }

    #[test]
    fn fetch_options_follow_librdkafkas_names_and_defaults() {
        let props = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let o = FetchOptions::from_props(&props(&[])).unwrap();
        assert!(o.read_committed);
        assert_eq!(
            (o.max_wait_ms, o.min_bytes, o.partition_max_bytes),
            (500, 1, 1_048_576)
        );
        let o = FetchOptions::from_props(&props(&[
            ("isolation.level", "read_uncommitted"),
            ("fetch.wait.max.ms", "5"),
            ("fetch.message.max.bytes", "4096"),
            ("check.crcs", "true"),
        ]))
        .unwrap();
        assert!(!o.read_committed && o.check_crcs);
        assert_eq!((o.max_wait_ms, o.partition_max_bytes), (5, 4096));
        assert!(FetchOptions::from_props(&props(&[("security.protocol", "ssl")])).is_err());
    }

    #[test]
    fn the_last_whole_batch_is_where_the_next_fetch_starts() {
        let mut w = wire::BatchWriter::new(0);
        w.push(None, Some(b"a"), &[], 1);
        w.push(None, Some(b"b"), &[], 1);
        let mut data = w.finish(wire::ProducerStamp::NONE);
        data[..8].copy_from_slice(&40i64.to_be_bytes());
        let one = data.clone();
        data.extend_from_slice(&one[..20]);
        assert_eq!(last_complete_offset(&data), Some(41));
        assert_eq!(last_complete_offset(&one[..30]), None);
        assert_eq!(last_complete_offset(&[]), None);
    }
}
