//! Kafka's wire format, as far as Sluice's own client speaks it: the primitive types of
//! the protocol, record batches (magic 2) written and read, CRC-32C and the Java
//! client's murmur2 partitioner.
//!
//! Everything read here comes from the network and may be broken or hostile: reads are
//! bounds-checked and end in an error, never a panic.

use sluice_types::{Result, SluiceError};

/// A protocol error: what the broker sent does not parse.
pub(crate) fn malformed(what: &str) -> SluiceError {
    SluiceError::external(format!("a Kafka broker sent a malformed {what}"))
}

/// Appends protocol values (big-endian integers, length-prefixed strings and bytes,
/// zig-zag varints) to a buffer.
pub(crate) trait Put {
    fn i8(&mut self, v: i8);
    fn i16(&mut self, v: i16);
    fn i32(&mut self, v: i32);
    fn i64(&mut self, v: i64);
    /// A STRING (i16 length); `None` is a NULLABLE_STRING's null.
    fn string(&mut self, v: Option<&str>);
    /// An ARRAY's length.
    fn array_len(&mut self, n: usize);
    fn varlong(&mut self, v: i64);
}

impl Put for Vec<u8> {
    fn i8(&mut self, v: i8) {
        self.push(v as u8);
    }
    fn i16(&mut self, v: i16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn string(&mut self, v: Option<&str>) {
        match v {
            Some(s) => {
                self.i16(s.len().min(i16::MAX as usize) as i16);
                self.extend_from_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
            }
            None => self.i16(-1),
        }
    }
    fn array_len(&mut self, n: usize) {
        self.i32(n as i32);
    }
    fn varlong(&mut self, v: i64) {
        put_uvarint(self, ((v << 1) ^ (v >> 63)) as u64);
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A record's key, value or header value: its length as a varint (-1 for null), then
/// its bytes.
fn put_bytes(b: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            b.varlong(v.len() as i64);
            b.extend_from_slice(v);
        }
        None => b.varlong(-1),
    }
}

/// How many bytes `v` takes as a zig-zag varint.
fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads protocol values from a response, each read checked against its end.
pub(crate) struct Get<'a> {
    pub(crate) buf: &'a [u8],
    what: &'static str,
}

impl<'a> Get<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(malformed(self.what));
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Ok(h)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.bytes(N)?;
        let mut a = [0; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    pub(crate) fn i8(&mut self) -> Result<i8> {
        Ok(i8::from_be_bytes(self.fixed()?))
    }
    pub(crate) fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.fixed()?))
    }
    pub(crate) fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.fixed()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.fixed()?))
    }

    /// A NULLABLE_STRING (a STRING is never null).
    pub(crate) fn string(&mut self) -> Result<Option<&'a str>> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        let b = self.bytes(n as usize)?;
        std::str::from_utf8(b)
            .map(Some)
            .map_err(|_| malformed(self.what))
    }

    /// NULLABLE_BYTES (i32 length).
    pub(crate) fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(None);
        }
        self.bytes(n as usize).map(Some)
    }

    /// An ARRAY's length (a null array is empty); each element takes at least `min`
    /// bytes, so a hostile length cannot make the caller reserve more than the buffer.
    pub(crate) fn len(&mut self, min: usize) -> Result<usize> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(0);
        }
        let n = n as usize;
        if n.saturating_mul(min.max(1)) > self.buf.len() {
            return Err(malformed(self.what));
        }
        Ok(n)
    }

    fn uvarint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.first().ok_or_else(|| malformed(self.what))?;
            self.buf = &self.buf[1..];
            if shift == 63 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(malformed(self.what))
    }

    pub(crate) fn varlong(&mut self) -> Result<i64> {
        let z = self.uvarint()?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    pub(crate) fn varint(&mut self) -> Result<i32> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| malformed(self.what))
    }

    /// A record's key, value or header value: a varint length (-1 for null) and bytes.
    fn var_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        let n = self.varint()?;
        if n < 0 {
            return Ok(None);
        }
        self.bytes(n as usize).map(Some)
    }
}

// ---------------------------------------------------------------------------------------
// CRC-32C (Castagnoli), which record batches carry.

const CASTAGNOLI: u32 = 0x82f6_3b78;

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CASTAGNOLI
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32C of `data`: with the CPU's instruction where it has one.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2 (checked above).
        return !unsafe { crc32c_sse42(!0, data) };
    }
    !crc32c_table(!0, data)
}

fn crc32c_table(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut c = u64::from(crc);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        c = _mm_crc32_u64(c, u64::from_le_bytes(a));
    }
    let mut c = c as u32;
    for &b in words.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    c
}

// ---------------------------------------------------------------------------------------
// The Java client's default partitioner.

/// murmur2 of a key as Kafka's Java client hashes it (and librdkafka's `murmur2`).
pub(crate) fn murmur2(key: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ key.len() as u32;
    let mut words = key.chunks_exact(4);
    for w in &mut words {
        let mut k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition of a keyed record under Kafka's default partitioner.
pub(crate) fn key_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

// ---------------------------------------------------------------------------------------
// Record batches (magic 2).

/// Bytes of a record batch before its records: base offset (8), length (4), leader
/// epoch (4), magic (1), CRC (4), attributes (2), last offset delta (4), base and max
/// timestamp (16), producer id (8) and epoch (2), base sequence (4), record count (4).
pub(crate) const BATCH_HEADER: usize = 61;
/// Where the CRC-covered part of a batch starts (its attributes).
const CRC_FROM: usize = 21;

/// Attribute bits of a batch.
pub(crate) const COMPRESSION_MASK: i16 = 0x07;
pub(crate) const LOG_APPEND_TIME: i16 = 0x08;
pub(crate) const TRANSACTIONAL: i16 = 0x10;
pub(crate) const CONTROL: i16 = 0x20;

/// The producer of a batch: id, epoch and the sequence of its first record (all -1 for a
/// producer that is not idempotent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProducerStamp {
    pub(crate) id: i64,
    pub(crate) epoch: i16,
    pub(crate) sequence: i32,
}

impl ProducerStamp {
    pub(crate) const NONE: Self = Self {
        id: -1,
        epoch: -1,
        sequence: -1,
    };
}

/// Writes one uncompressed record batch into a buffer of its own, record by record.
#[derive(Debug)]
pub(crate) struct BatchWriter {
    buf: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchWriter {
    pub(crate) fn new(capacity: usize) -> Self {
        Self::in_buffer(Vec::with_capacity(capacity.max(BATCH_HEADER)))
    }

    /// A batch written into `buf` (emptied first: a buffer used before).
    pub(crate) fn in_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.resize(BATCH_HEADER, 0);
        Self {
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: i64::MIN,
        }
    }

    pub(crate) fn count(&self) -> i32 {
        self.count
    }

    /// Bytes so far (header included).
    pub(crate) fn size(&self) -> usize {
        self.buf.len()
    }

    /// Appends a record: key and value (`None` is null), headers, its timestamp (ms).
    pub(crate) fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        timestamp: i64,
    ) {
        let mut encoded = Vec::new();
        for (k, v) in headers {
            encoded.varlong(k.len() as i64);
            encoded.extend_from_slice(k.as_bytes());
            put_bytes(&mut encoded, *v);
        }
        self.push_raw(key, value, &encoded, headers.len(), timestamp);
    }

    /// [`BatchWriter::push`] with the headers already in the record format.
    fn push_raw(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[u8],
        header_count: usize,
        timestamp: i64,
    ) {
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let ts_delta = timestamp.wrapping_sub(self.base_timestamp);
        let offset_delta = i64::from(self.count);
        let var_bytes_len = |b: Option<&[u8]>| match b {
            Some(b) => varint_len(b.len() as i64) + b.len(),
            None => 1,
        };
        let body = 1
            + varint_len(ts_delta)
            + varint_len(offset_delta)
            + var_bytes_len(key)
            + var_bytes_len(value)
            + varint_len(header_count as i64)
            + headers.len();
        let b = &mut self.buf;
        b.reserve(body + 5);
        b.varlong(body as i64);
        b.i8(0);
        b.varlong(ts_delta);
        b.varlong(offset_delta);
        put_bytes(b, key);
        put_bytes(b, value);
        b.varlong(header_count as i64);
        b.extend_from_slice(headers);
        self.count += 1;
    }

    /// The finished batch, stamped with its producer (the base offset is the broker's to
    /// give).
    pub(crate) fn finish(mut self, producer: ProducerStamp) -> Vec<u8> {
        let len = (self.buf.len() - 12) as i32;
        let mut h = Vec::with_capacity(BATCH_HEADER);
        h.i64(0);
        h.i32(len);
        h.i32(-1);
        h.i8(2);
        h.i32(0);
        h.i16(0);
        h.i32(self.count - 1);
        h.i64(self.base_timestamp);
        h.i64(self.max_timestamp.max(self.base_timestamp));
        h.i64(producer.id);
        h.i16(producer.epoch);
        h.i32(producer.sequence);
        h.i32(self.count);
        self.buf[..BATCH_HEADER].copy_from_slice(&h);
        let crc = crc32c(&self.buf[CRC_FROM..]);
        self.buf[17..21].copy_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

/// Batches of one producer and partition, consecutive in sequence, as one batch (the
/// broker takes one batch per partition in a request): each record written again
/// with its deltas from the new batch's base, into `buf`.
pub(crate) fn merge(batches: &[Vec<u8>], buf: Vec<u8>) -> Result<Vec<u8>> {
    let mut w = BatchWriter::in_buffer(buf);
    let mut stamp = None;
    for b in batches {
        let (batch, _) = batch_at(b, false)?.ok_or_else(|| malformed("record batch"))?;
        stamp.get_or_insert(ProducerStamp {
            id: batch.producer_id,
            epoch: batch.producer_epoch,
            sequence: batch.base_sequence,
        });
        let mut rs = Records::new(&batch, batch.records);
        while let Some(r) = rs.next_record()? {
            w.push_raw(
                r.key,
                r.value,
                r.headers,
                r.header_count.max(0) as usize,
                r.timestamp,
            );
        }
    }
    Ok(w.finish(stamp.unwrap_or(ProducerStamp::NONE)))
}

/// One record batch of a fetched partition, its records still encoded.
#[derive(Debug)]
pub(crate) struct FetchedBatch<'a> {
    pub(crate) base_offset: i64,
    pub(crate) last_offset: i64,
    pub(crate) attributes: i16,
    pub(crate) base_timestamp: i64,
    pub(crate) max_timestamp: i64,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) base_sequence: i32,
    pub(crate) count: i32,
    /// The records (decompressed by the caller when the batch is compressed).
    pub(crate) records: &'a [u8],
}

impl FetchedBatch<'_> {
    pub(crate) fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }
    pub(crate) fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }
    pub(crate) fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }
}

/// The record batch at the start of a partition's fetched bytes, and its size; `None`
/// when the bytes end before it does (the broker may cut the last batch of a fetch).
/// `check` verifies its CRC.
pub(crate) fn batch_at(data: &[u8], check: bool) -> Result<Option<(FetchedBatch<'_>, usize)>> {
    if data.len() < 17 {
        return Ok(None);
    }
    let mut g = Get::new(data, "record batch");
    let base_offset = g.i64()?;
    let len = g.i32()?;
    if len < (BATCH_HEADER - 12) as i32 {
        return Err(malformed("record batch"));
    }
    let total = 12 + len as usize;
    if data.len() < total {
        return Ok(None);
    }
    let whole = &data[..total];
    let mut g = Get::new(&whole[12..], "record batch");
    let _leader_epoch = g.i32()?;
    let magic = g.i8()?;
    if magic != 2 {
        return Err(SluiceError::external(format!(
            "a Kafka broker sent a record batch of format {magic} (only format 2, Kafka 0.11 and later, is read)"
        )));
    }
    let crc = g.i32()? as u32;
    if check && crc32c(&whole[CRC_FROM..]) != crc {
        return Err(SluiceError::external(format!(
            "a Kafka record batch at offset {base_offset} fails its CRC check"
        )));
    }
    let attributes = g.i16()?;
    let last_delta = g.i32()?;
    let base_timestamp = g.i64()?;
    let max_timestamp = g.i64()?;
    let producer_id = g.i64()?;
    let producer_epoch = g.i16()?;
    let base_sequence = g.i32()?;
    let count = g.i32()?;
    let batch = FetchedBatch {
        base_offset,
        last_offset: base_offset.saturating_add(i64::from(last_delta)),
        attributes,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
        records: &whole[BATCH_HEADER..],
    };
    Ok(Some((batch, total)))
}

#[cfg(test)]
fn batches(mut data: &[u8], check: bool) -> Result<Vec<FetchedBatch<'_>>> {
    let mut out = Vec::new();
    while let Some((b, size)) = batch_at(data, check)? {
        out.push(b);
        data = &data[size..];
    }
    Ok(out)
}

/// One record of a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FetchedRecord<'a> {
    pub(crate) offset: i64,
    pub(crate) timestamp: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    /// The headers, still encoded ([`headers`]).
    pub(crate) headers: &'a [u8],
    pub(crate) header_count: i32,
}

/// Reads the records of a batch (`records`: its uncompressed record bytes) one by one.
pub(crate) struct Records<'a> {
    g: Get<'a>,
    left: i32,
    base_offset: i64,
    base_timestamp: i64,
    log_append: Option<i64>,
}

impl<'a> Records<'a> {
    pub(crate) fn new(batch: &FetchedBatch<'_>, records: &'a [u8]) -> Self {
        Self {
            g: Get::new(records, "record"),
            left: batch.count.max(0),
            base_offset: batch.base_offset,
            base_timestamp: batch.base_timestamp,
            log_append: (batch.attributes & LOG_APPEND_TIME != 0).then_some(batch.max_timestamp),
        }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.g.buf.len()
    }

    pub(crate) fn next_record(&mut self) -> Result<Option<FetchedRecord<'a>>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let len = self.g.varint()?;
        if len < 0 {
            return Err(malformed("record"));
        }
        let mut r = Get::new(self.g.bytes(len as usize)?, "record");
        let _attributes = r.i8()?;
        let ts_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        let key = r.var_bytes()?;
        let value = r.var_bytes()?;
        let header_count = r.varint()?;
        Ok(Some(FetchedRecord {
            offset: self.base_offset.saturating_add(i64::from(offset_delta)),
            timestamp: self
                .log_append
                .unwrap_or(self.base_timestamp.wrapping_add(ts_delta)),
            key,
            value,
            headers: r.buf,
            header_count,
        }))
    }
}

/// The headers of a record.
pub(crate) fn headers(r: &FetchedRecord<'_>) -> Result<Vec<(String, Option<Vec<u8>>)>> {
    let mut g = Get::new(r.headers, "record header");
    let mut out = Vec::new();
    for _ in 0..r.header_count.max(0) {
        let k = g.var_bytes()?.unwrap_or_default();
        let v = g.var_bytes()?;
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            v.map(<[u8]>::to_vec),
        ));
    }
    Ok(out)
}

/// A control record's type (0 abort, 1 commit), from its key.
pub(crate) fn control_type(r: &FetchedRecord<'_>) -> Option<i16> {
    let k = r.key?;
    let mut g = Get::new(k, "control record");
    let _version = g.i16().ok()?;
    g.i16().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnolis() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(crc32c(&long), !crc32c_table(!0, &long));
    }

    #[test]
    fn murmur2_is_the_java_clients() {
        // The Java client's values (as librdkafka's unit test lists them).
        let unaligned = b"PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: [(&[u8], u32); 11] = [
            (b"kafka", 0xd067_cf64),
            (b"giberish123456789", 0x8f55_2b0c),
            (b"1234", 0x9fc9_7b14),
            (b"234", 0xe7c0_09ca),
            (b"34", 0x8739_30da),
            (b"4", 0x5a4b_5ca1),
            (unaligned, 0x7842_4f1c),
            (&unaligned[1..], 0x4a62_b377),
            (&unaligned[2..], 0xe0e4_e09e),
            (&unaligned[3..], 0x62b8_b43f),
            (b"", 0x106e_08d9),
        ];
        for (k, h) in cases {
            assert_eq!(murmur2(k), h, "{:?}", String::from_utf8_lossy(k));
        }
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            64,
            -65,
            300,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut b = Vec::new();
            b.varlong(v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut g = Get::new(&b, "test");
            assert_eq!(g.varlong().unwrap(), v);
            assert!(g.buf.is_empty());
        }
        // Too long, or cut off: an error, not a panic.
        assert!(Get::new(&[0xff; 11], "test").varlong().is_err());
        assert!(Get::new(&[0x80], "test").varlong().is_err());
    }

    #[test]
    fn a_written_batch_reads_back_and_a_cut_one_is_left_for_later() {
        let mut w = BatchWriter::new(0);
        w.push(Some(b"k1"), Some(b"v1"), &[], 1_000);
        w.push(None, Some(b"v2"), &[("h", Some(b"x")), ("n", None)], 990);
        w.push(Some(b""), None, &[], 1_005);
        let stamp = ProducerStamp {
            id: 7,
            epoch: 1,
            sequence: 40,
        };
        let mut data = w.finish(stamp);
        data[..8].copy_from_slice(&100i64.to_be_bytes());
        let whole = data.clone();
        data.extend_from_slice(&whole[..30]);
        let bs = batches(&data, true).unwrap();
        assert_eq!(bs.len(), 1);
        let b = &bs[0];
        assert_eq!((b.base_offset, b.last_offset, b.count), (100, 102, 3));
        assert_eq!((b.producer_id, b.max_timestamp), (7, 1_005));
        let mut rs = Records::new(b, b.records);
        let r = rs.next_record().unwrap().unwrap();
        assert_eq!(
            (r.offset, r.timestamp, r.key, r.value),
            (100, 1_000, Some(&b"k1"[..]), Some(&b"v1"[..]))
        );
        let r = rs.next_record().unwrap().unwrap();
        assert_eq!((r.offset, r.timestamp, r.key), (101, 990, None));
        assert_eq!(
            headers(&r).unwrap(),
            vec![
                ("h".to_string(), Some(b"x".to_vec())),
                ("n".to_string(), None)
            ]
        );
        let r = rs.next_record().unwrap().unwrap();
        assert_eq!((r.offset, r.key, r.value), (102, Some(&b""[..]), None));
        assert!(rs.next_record().unwrap().is_none());
        // A flipped byte fails the CRC check.
        let mut bad = whole;
        bad[70] ^= 1;
        assert!(batches(&bad, true).is_err());
    }

    #[test]
    fn merged_batches_keep_their_records_headers_times_and_first_sequence() {
        let stamp = |sequence| ProducerStamp {
            id: 9,
            epoch: 2,
            sequence,
        };
        let mut a = BatchWriter::new(0);
        a.push(Some(b"k"), Some(b"one"), &[("h", Some(b"v"))], 5_000);
        a.push(None, Some(b"two"), &[], 4_000);
        let mut b = BatchWriter::new(0);
        b.push(None, None, &[("x", None)], 7_000);
        let merged = merge(&[a.finish(stamp(10)), b.finish(stamp(12))], Vec::new()).unwrap();
        let bs = batches(&merged, true).unwrap();
        assert_eq!(bs.len(), 1);
        let m = &bs[0];
        assert_eq!(
            (m.count, m.base_sequence, m.producer_id, m.producer_epoch),
            (3, 10, 9, 2)
        );
        assert_eq!((m.base_timestamp, m.max_timestamp), (5_000, 7_000));
        let mut rs = Records::new(m, m.records);
        let mut got = Vec::new();
        while let Some(r) = rs.next_record().unwrap() {
            got.push((r.offset, r.timestamp, r.key, r.value, headers(&r).unwrap()));
        }
        assert_eq!(
            got,
            vec![
                (
                    0,
                    5_000,
                    Some(&b"k"[..]),
                    Some(&b"one"[..]),
                    vec![("h".to_string(), Some(b"v".to_vec()))]
                ),
                (1, 4_000, None, Some(&b"two"[..]), vec![]),
                (2, 7_000, None, None, vec![("x".to_string(), None)]),
            ]
        );
    }

    #[test]
    fn broken_batches_are_errors() {
        let mut w = BatchWriter::new(0);
        w.push(None, Some(b"value"), &[], 5);
        let good = w.finish(ProducerStamp::NONE);
        for cut in 0..good.len() {
            // Every prefix is a cut-off batch (nothing) or an error, never a panic.
            let _ = batches(&good[..cut], true);
        }
        let mut lying = good.clone();
        // The record count says more than there is.
        lying[57..61].copy_from_slice(&1000i32.to_be_bytes());
        let b = batches(&lying, false).unwrap();
        let mut rs = Records::new(&b[0], b[0].records);
        assert!(rs.next_record().unwrap().is_some());
        assert!(rs.next_record().is_err());
    }
}
