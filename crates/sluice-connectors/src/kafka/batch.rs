//! Fetched records taken a batch at a time, straight from librdkafka's per-partition
//! queues: one lock and no clock read per batch rather than per record, and each batch
//! of one partition (a chunk of one split).
//!
//! ```text
//!  broker thread ──fetch──> partition queue (not forwarded) ──consume_batch──> reader
//!                           └─ non-empty again ──callback──> Notify ──> reader wakes
//! ```
//!
//! The consumer's own queue then carries nothing but events (rebalances, commit results,
//! errors), which the reader drains at each read.

use std::ffi::{CString, c_void};
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use sluice_types::{Result, SluiceError};
use tokio::sync::Notify;

use super::group::Partition;
use super::reader::{MessageView, OwnedHeaderList};
use super::source::SourceConsumer;

/// One partition's queue of fetched records, taken off the consumer's queue.
pub(crate) struct PartitionQueue(*mut rd::rd_kafka_queue_t);

// SAFETY: librdkafka's queue handles may be used from any thread.
unsafe impl Send for PartitionQueue {}

unsafe extern "C" fn wake_reader(_rk: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is a `Notify` that outlives the queue's callbacks (see
    // `PartitionQueue::open`).
    let notify = unsafe { &*(opaque as *const Notify) };
    notify.notify_one();
}

impl PartitionQueue {
    /// Takes the fetched records of `topic`/`partition` off the consumer's queue onto a
    /// queue of their own, which wakes `wake` when it has records again. Before the
    /// partition is assigned, so that none goes elsewhere. The consumer, and `wake`,
    /// must outlive the queue.
    pub(crate) fn open<C: rdkafka::consumer::ConsumerContext>(
        consumer: &impl rdkafka::consumer::Consumer<C>,
        (topic, partition): &Partition,
        wake: &Arc<Notify>,
    ) -> Result<Self> {
        let rk = consumer.client().native_ptr();
        let name = CString::new(topic.as_str())
            .map_err(|_| SluiceError::user(format!("topic name `{topic}` holds a NUL")))?;
        // SAFETY: `rk` is a live consumer handle and `name` a C string.
        let q = unsafe { rd::rd_kafka_queue_get_partition(rk, name.as_ptr(), *partition) };
        if q.is_null() {
            return Err(SluiceError::internal(format!(
                "librdkafka has no queue for partition {topic}/{partition}"
            )));
        }
        // SAFETY: `q` was just handed out; `wake` outlives the callbacks (the caller's
        // promise; Drop switches them off).
        unsafe {
            rd::rd_kafka_queue_forward(q, std::ptr::null_mut());
            rd::rd_kafka_queue_cb_event_enable(
                q,
                Some(wake_reader),
                Arc::as_ptr(wake) as *mut c_void,
            );
        }
        Ok(Self(q))
    }
}

impl Drop for PartitionQueue {
    fn drop(&mut self) {
        // SAFETY: callbacks off, then the handle is given back (the consumer is still
        // alive).
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.0, None, std::ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.0);
        }
    }
}

/// The partition queues of one consumer, by split.
pub(crate) struct PartitionQueues {
    queues: Vec<Option<PartitionQueue>>,
    /// Woken by librdkafka when a queue that was empty has records again.
    wake: Arc<Notify>,
    /// Where the next look for records starts (partitions take turns).
    turn: usize,
    taken: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: the messages in `taken` are only ever touched by the owner of `&mut self`.
unsafe impl Send for PartitionQueues {}

impl PartitionQueues {
    /// No queues yet; `wake` is what theirs will wake.
    pub(crate) fn new(wake: Arc<Notify>) -> Self {
        Self {
            queues: Vec::new(),
            wake,
            turn: 0,
            taken: Vec::new(),
        }
    }

    /// A queue for each of `parts` (split `i` is `parts[i]`).
    pub(crate) fn for_partitions(consumer: &SourceConsumer, parts: &[Partition]) -> Result<Self> {
        let mut out = Self::new(Arc::new(Notify::new()));
        for (i, p) in parts.iter().enumerate() {
            let q = PartitionQueue::open(consumer, p, &out.wake)?;
            out.insert(i, q);
        }
        Ok(out)
    }

    /// What wakes when some queue may have records: wait on its `notified()` (a
    /// wake-up is never lost: one that comes before the wait is kept).
    pub(crate) fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Reads split `split` from `queue` from now on.
    pub(crate) fn insert(&mut self, split: usize, queue: PartitionQueue) {
        if self.queues.len() <= split {
            self.queues.resize_with(split + 1, || None);
        }
        self.queues[split] = Some(queue);
    }

    /// Stops reading split `split`; what its queue still holds is dropped.
    pub(crate) fn remove(&mut self, split: usize) {
        self.release();
        if let Some(q) = self.queues.get_mut(split) {
            *q = None;
        }
    }

    /// Up to `max` fetched records of the next partition (in turn) that has any: its
    /// split and the records, in offset order, valid until the next call. `None`: no
    /// queue holds a record now.
    pub(crate) fn take(&mut self, max: usize) -> Option<(usize, Batch<'_>)> {
        self.release();
        let n = self.queues.len();
        self.taken.reserve(max.max(1));
        for k in 0..n {
            let split = (self.turn + k) % n;
            let Some(q) = &self.queues[split] else {
                continue;
            };
            // SAFETY: the queue is live; `taken` has room for `max` pointers.
            let got = unsafe {
                rd::rd_kafka_consume_batch_queue(q.0, 0, self.taken.as_mut_ptr(), max.max(1))
            };
            if got > 0 {
                // SAFETY: librdkafka wrote `got` message pointers.
                unsafe { self.taken.set_len(got as usize) };
                self.turn = (split + 1) % n;
                return Some((
                    split,
                    Batch {
                        messages: &self.taken,
                    },
                ));
            }
        }
        None
    }

    /// Gives the records of the last batch back to librdkafka.
    fn release(&mut self) {
        for m in self.taken.drain(..) {
            // SAFETY: each was returned by consume_batch and is destroyed once.
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
    }
}

impl Drop for PartitionQueues {
    fn drop(&mut self) {
        self.release();
    }
}

/// The records of one partition taken at once.
pub(crate) struct Batch<'a> {
    messages: &'a [*mut rd::rd_kafka_message_t],
}

/// One record of a batch, or what went wrong fetching.
pub(crate) enum Record<'a> {
    Message(MessageView<'a>),
    Error(KafkaError),
}

impl<'a> Batch<'a> {
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Record `i`, with its timestamp when `timestamps` (its headers apart:
    /// [`Batch::headers`]).
    pub(crate) fn get(&self, i: usize, timestamps: bool) -> Record<'a> {
        // SAFETY: the message is live until the batch is released, which needs `&mut`
        // on the queues that `self` borrows.
        let m: &'a rd::rd_kafka_message_t = unsafe { &*self.messages[i] };
        if m.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Record::Error(KafkaError::MessageConsumption(m.err.into()));
        }
        let bytes = |p: *mut c_void, len: usize| -> Option<&'a [u8]> {
            // SAFETY: librdkafka's payload and key pointers with their lengths.
            (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
        };
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        let ts = match timestamps {
            // SAFETY: a live message.
            true => unsafe { rd::rd_kafka_message_timestamp(self.messages[i], &mut kind) },
            false => -1,
        };
        let (timestamp, timestamp_type) = match kind {
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME if ts >= 0 => {
                (Some(ts), "CreateTime")
            }
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME if ts >= 0 => {
                (Some(ts), "LogAppendTime")
            }
            _ => (None, "NoTimestampType"),
        };
        Record::Message(MessageView {
            offset: m.offset,
            timestamp,
            timestamp_type,
            key: bytes(m.key, m.key_len),
            payload: bytes(m.payload, m.len),
            headers: None,
        })
    }

    /// The headers of record `i`.
    pub(crate) fn headers(&self, i: usize) -> OwnedHeaderList {
        let mut out = Vec::new();
        let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: a live message; the headers belong to it.
        let found = unsafe { rd::rd_kafka_message_headers(self.messages[i], &mut hdrs) };
        if found != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
            return out;
        }
        for idx in 0.. {
            let mut name: *const std::ffi::c_char = std::ptr::null();
            let mut value: *const c_void = std::ptr::null();
            let mut size = 0usize;
            // SAFETY: reads header `idx` of live headers.
            let e =
                unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
            if e != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            // SAFETY: a NUL-terminated name and a value of `size` bytes.
            let key = unsafe { std::ffi::CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned();
            let v = (!value.is_null()).then(|| {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(value as *const u8, size) }.to_vec()
            });
            out.push((key, v));
        }
        out
    }
}
