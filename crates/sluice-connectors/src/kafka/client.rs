//! Sluice's own Kafka client for the data path: connections to brokers, metadata,
//! and the requests a plaintext producer and fetcher need, without librdkafka's
//! per-record work (an allocation, a lock and a clock read per record produced, an
//! operation object per record fetched).
//!
//! ```text
//!  bootstrap ──ApiVersions (can this broker speak our versions?)──> Metadata
//!  Metadata: brokers (id → host:port), partitions (→ leader)
//!  one connection per broker; one request at a time on each, answered in order
//! ```
//!
//! It is used where it can stand in for librdkafka exactly: plaintext connections
//! (no TLS, no SASL) to brokers of Kafka 2.4 or later. Anything else (and every
//! consumer group, transaction and admin call) stays with librdkafka.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sluice_types::{Result, SluiceError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::{Get, Put, malformed};

pub(crate) const PRODUCE: i16 = 0;
pub(crate) const FETCH: i16 = 1;
const METADATA: i16 = 3;
const API_VERSIONS: i16 = 18;
const INIT_PRODUCER_ID: i16 = 22;

/// The versions spoken (the last before each request became "flexible"), which every
/// broker from Kafka 2.4 to 4.x accepts.
pub(crate) const PRODUCE_V: i16 = 8;
pub(crate) const FETCH_V: i16 = 11;
const METADATA_V: i16 = 8;
const INIT_PRODUCER_ID_V: i16 = 1;

/// How long connecting or one request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest response read (a broker that says more is not believed).
const MAX_RESPONSE: usize = 256 << 20;

/// Kafka error codes the client acts on, and the name of each it may report.
pub(crate) mod code {
    pub(crate) const NONE: i16 = 0;
    pub(crate) const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub(crate) const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub(crate) const CONCURRENT_TRANSACTIONS: i16 = 51;

    /// Whether a request that failed with `c` may be sent again (after a metadata
    /// refresh: the partition may have moved).
    pub(crate) fn retriable(c: i16) -> bool {
        matches!(
            c,
            3 | 5 | 6 | 7 | 8 | 9 | 13 | 14 | 15 | 16 | 19 | 20 | 56 | 74 | 75
        )
    }

    pub(crate) fn name(c: i16) -> String {
        let n = match c {
            1 => "OFFSET_OUT_OF_RANGE",
            2 => "CORRUPT_MESSAGE",
            3 => "UNKNOWN_TOPIC_OR_PARTITION",
            5 => "LEADER_NOT_AVAILABLE",
            6 => "NOT_LEADER_OR_FOLLOWER",
            7 => "REQUEST_TIMED_OUT",
            10 => "MESSAGE_TOO_LARGE",
            13 => "NETWORK_EXCEPTION",
            14 => "COORDINATOR_LOAD_IN_PROGRESS",
            15 => "COORDINATOR_NOT_AVAILABLE",
            16 => "NOT_COORDINATOR",
            17 => "INVALID_TOPIC_EXCEPTION",
            18 => "RECORD_LIST_TOO_LARGE",
            19 => "NOT_ENOUGH_REPLICAS",
            20 => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
            29 => "TOPIC_AUTHORIZATION_FAILED",
            31 => "CLUSTER_AUTHORIZATION_FAILED",
            35 => "UNSUPPORTED_VERSION",
            45 => "OUT_OF_ORDER_SEQUENCE_NUMBER",
            47 => "INVALID_PRODUCER_EPOCH",
            51 => "CONCURRENT_TRANSACTIONS",
            53 => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
            56 => "KAFKA_STORAGE_ERROR",
            59 => "UNKNOWN_PRODUCER_ID",
            74 => "FENCED_LEADER_EPOCH",
            76 => "UNSUPPORTED_COMPRESSION_TYPE",
            87 => "INVALID_RECORD",
            90 => "PRODUCER_FENCED",
            _ => return format!("Kafka error {c}"),
        };
        format!("{n} ({c})")
    }
}

/// A task of the client's (a producer's sender, a fetcher's fetcher), which holds its
/// connections: it ends, and they close, when its owner drops this.
pub(crate) struct Task(tokio::task::JoinHandle<()>);

impl Task {
    pub(crate) fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(f))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A warning about brokers away, at most once per 10 s while they stay away.
#[derive(Default)]
pub(crate) struct Quiet(Option<std::time::Instant>);

impl Quiet {
    pub(crate) fn due(&mut self) -> bool {
        let due = self
            .0
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            self.0 = Some(std::time::Instant::now());
        }
        due
    }
}

/// Whether Sluice's own client can serve a connection with these client properties:
/// plaintext only (TLS and SASL are librdkafka's).
pub(crate) fn plaintext(props: &BTreeMap<String, String>) -> bool {
    props
        .get("security.protocol")
        .is_none_or(|p| p.eq_ignore_ascii_case("plaintext"))
}

/// The `host:port` entries of `bootstrap.servers` (a `PLAINTEXT://` prefix dropped).
fn bootstrap_list(servers: &str) -> Vec<String> {
    servers
        .split(',')
        .map(|s| s.trim())
        .map(|s| s.rsplit_once("://").map_or(s, |(_, a)| a).to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// One connection to a broker: a request at a time, its response read before the next.
pub(crate) struct Conn {
    stream: TcpStream,
    addr: String,
    correlation: i32,
    client_id: String,
    out: Vec<u8>,
}

impl Conn {
    pub(crate) async fn connect(addr: &str, client_id: &str) -> Result<Self> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| SluiceError::external(format!("connecting to Kafka at {addr} timed out")))?
            .map_err(|e| {
                SluiceError::external(format!("cannot connect to Kafka at {addr}")).with_source(e)
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            addr: addr.to_string(),
            correlation: 0,
            client_id: client_id.to_string(),
            out: Vec::new(),
        })
    }

    /// Sends a request (`body` after the header) and reads its response (the
    /// correlation id first). `acks = 0` produce requests get none: not sent through here.
    pub(crate) async fn call(&mut self, api: i16, version: i16, body: &[u8]) -> Result<Vec<u8>> {
        self.call_parts(api, version, &[body], Vec::new()).await
    }

    /// [`Conn::call`] with a body in parts, written as they are (record batches are
    /// not copied into a request buffer), and the response read into `resp` (a buffer
    /// used before: its pages are not faulted in again).
    pub(crate) async fn call_parts(
        &mut self,
        api: i16,
        version: i16,
        body: &[&[u8]],
        mut resp: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.correlation = self.correlation.wrapping_add(1);
        let id = self.correlation;
        let out = &mut self.out;
        out.clear();
        let size = 10 + self.client_id.len() + body.iter().map(|b| b.len()).sum::<usize>();
        out.i32(size as i32);
        out.i16(api);
        out.i16(version);
        out.i32(id);
        out.string(Some(&self.client_id));
        let addr = self.addr.clone();
        let io = |e: std::io::Error| {
            SluiceError::external(format!("the connection to Kafka at {addr} failed"))
                .with_source(e)
        };
        let exchange = async {
            self.stream.write_all(&self.out).await.map_err(io)?;
            for part in body {
                self.stream.write_all(part).await.map_err(io)?;
            }
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await.map_err(io)?;
            let len = i32::from_be_bytes(len);
            if len < 4 || len as usize > MAX_RESPONSE {
                return Err(malformed("response size"));
            }
            resp.clear();
            resp.reserve(len as usize);
            (&mut self.stream)
                .take(len as u64)
                .read_to_end(&mut resp)
                .await
                .map_err(io)?;
            if resp.len() != len as usize {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(resp)
        };
        let resp = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(5), exchange)
            .await
            .map_err(|_| {
                SluiceError::external(format!("a request to Kafka at {} timed out", self.addr))
            })??;
        if resp[..4] != id.to_be_bytes() {
            return Err(malformed("response (out of order)"));
        }
        Ok(resp)
    }
}

/// What the cluster looks like: its brokers and the leaders of the partitions asked for.
#[derive(Default, Debug)]
pub(crate) struct Metadata {
    brokers: HashMap<i32, String>,
    /// Per topic: each partition's leader (-1: none now).
    pub(crate) leaders: HashMap<String, Vec<i32>>,
}

impl Metadata {
    pub(crate) fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let l = *self
            .leaders
            .get(topic)?
            .get(usize::try_from(partition).ok()?)?;
        (l >= 0).then_some(l)
    }
}

/// Sluice's client of one cluster: the bootstrap servers, metadata, a connection per
/// broker.
pub(crate) struct Cluster {
    bootstrap: Vec<String>,
    client_id: String,
    topics: Vec<String>,
    /// Whether asking for the metadata of a topic that does not exist creates it (where
    /// the broker allows), as librdkafka's producer does.
    auto_create: bool,
    pub(crate) meta: Metadata,
    conns: HashMap<i32, Conn>,
}

/// Why Sluice's own client cannot be used (librdkafka then is).
#[derive(Debug)]
pub(crate) struct Unsupported(pub(crate) String);

impl Cluster {
    /// Connects to the first bootstrap server that answers, checks that it speaks the
    /// versions this client sends, and reads the metadata of `topics`. `Ok(Err(_))`:
    /// the broker is reachable but too old for this client.
    pub(crate) async fn open(
        servers: &str,
        client_id: &str,
        topics: &[String],
        auto_create: bool,
    ) -> Result<std::result::Result<Self, Unsupported>> {
        let bootstrap = bootstrap_list(servers);
        let mut last = None;
        for addr in &bootstrap {
            let mut conn = match Conn::connect(addr, client_id).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if let Err(why) = check_versions(&mut conn).await? {
                return Ok(Err(why));
            }
            let mut c = Self {
                bootstrap: bootstrap.clone(),
                client_id: client_id.to_string(),
                topics: topics.to_vec(),
                auto_create,
                meta: Metadata::default(),
                conns: HashMap::new(),
            };
            c.meta = metadata(&mut conn, topics, auto_create).await?;
            return Ok(Ok(c));
        }
        Err(last
            .unwrap_or_else(|| SluiceError::user("'properties.bootstrap.servers' names no broker")))
    }

    /// Reads the metadata again (from any broker that answers).
    pub(crate) async fn refresh(&mut self) -> Result<()> {
        let ids: Vec<i32> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(mut c) = self.conns.remove(&id)
                && let Ok(m) = metadata(&mut c, &self.topics, self.auto_create).await
            {
                self.meta = m;
                self.conns.insert(id, c);
                return Ok(());
            }
        }
        let mut last = None;
        let known: Vec<String> = self.meta.brokers.values().cloned().collect();
        for addr in self.bootstrap.iter().chain(&known) {
            match Conn::connect(addr, &self.client_id).await {
                Ok(mut c) => match metadata(&mut c, &self.topics, self.auto_create).await {
                    Ok(m) => {
                        self.meta = m;
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| SluiceError::external("no Kafka broker answers")))
    }

    /// Takes the connection to broker `id` (made if there is none); give it back with
    /// [`Cluster::put_back`] when it is still good.
    pub(crate) async fn take_conn(&mut self, id: i32) -> Result<Conn> {
        if let Some(c) = self.conns.remove(&id) {
            return Ok(c);
        }
        let addr = self.meta.brokers.get(&id).cloned().ok_or_else(|| {
            SluiceError::external(format!("Kafka's metadata names no broker {id}"))
        })?;
        Conn::connect(&addr, &self.client_id).await
    }

    pub(crate) fn put_back(&mut self, id: i32, c: Conn) {
        self.conns.insert(id, c);
    }

    /// A producer id and epoch for an idempotent producer (from any broker), asked
    /// again while the broker is not ready to give one (its coordinator loading, as
    /// after a restart), for up to a minute.
    pub(crate) async fn init_producer_id(&mut self) -> Result<(i64, i16)> {
        let deadline = std::time::Instant::now() + 2 * REQUEST_TIMEOUT;
        let mut backoff = Duration::from_millis(100);
        loop {
            let why = match self.try_init_producer_id().await {
                Ok(Ok(id)) => return Ok(id),
                Ok(Err(c)) if code::retriable(c) || c == code::CONCURRENT_TRANSACTIONS => {
                    code::name(c)
                }
                Ok(Err(c)) => {
                    return Err(SluiceError::external(format!(
                        "Kafka gave no producer id: {}",
                        code::name(c)
                    )));
                }
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                return Err(SluiceError::external(format!(
                    "Kafka gave no producer id within {} s: {why}",
                    (2 * REQUEST_TIMEOUT).as_secs()
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            let _ = self.refresh().await;
        }
    }

    async fn try_init_producer_id(&mut self) -> Result<std::result::Result<(i64, i16), i16>> {
        let id = *self
            .meta
            .brokers
            .keys()
            .next()
            .ok_or_else(|| SluiceError::external("Kafka's metadata names no broker"))?;
        let mut conn = self.take_conn(id).await?;
        let mut body = Vec::new();
        body.string(None);
        body.i32(-1);
        let resp = conn
            .call(INIT_PRODUCER_ID, INIT_PRODUCER_ID_V, &body)
            .await?;
        self.put_back(id, conn);
        let mut g = Get::new(&resp[4..], "InitProducerId response");
        let _throttle = g.i32()?;
        let err = g.i16()?;
        let pid = g.i64()?;
        let epoch = g.i16()?;
        Ok(match err {
            code::NONE => Ok((pid, epoch)),
            c => Err(c),
        })
    }
}

/// ApiVersions (v0, which every broker answers): whether the broker accepts the
/// versions this client sends.
async fn check_versions(conn: &mut Conn) -> Result<std::result::Result<(), Unsupported>> {
    let resp = conn.call(API_VERSIONS, 0, &[]).await?;
    let mut g = Get::new(&resp[4..], "ApiVersions response");
    let err = g.i16()?;
    if err != code::NONE {
        return Ok(Err(Unsupported(format!(
            "the broker refused ApiVersions: {}",
            code::name(err)
        ))));
    }
    let mut ranges = HashMap::new();
    for _ in 0..g.len(6)? {
        let (api, min, max) = (g.i16()?, g.i16()?, g.i16()?);
        ranges.insert(api, (min, max));
    }
    for (api, v, name) in [
        (PRODUCE, PRODUCE_V, "Produce"),
        (FETCH, FETCH_V, "Fetch"),
        (METADATA, METADATA_V, "Metadata"),
        (INIT_PRODUCER_ID, INIT_PRODUCER_ID_V, "InitProducerId"),
    ] {
        match ranges.get(&api) {
            Some(&(min, max)) if min <= v && v <= max => {}
            _ => {
                return Ok(Err(Unsupported(format!(
                    "the broker does not speak {name} v{v}"
                ))));
            }
        }
    }
    Ok(Ok(()))
}

/// Metadata (v8) of `topics`: brokers and partition leaders.
async fn metadata(conn: &mut Conn, topics: &[String], auto_create: bool) -> Result<Metadata> {
    let mut body = Vec::new();
    body.array_len(topics.len());
    for t in topics {
        body.string(Some(t));
    }
    body.i8(i8::from(auto_create));
    body.i8(0); // include_cluster_authorized_operations
    body.i8(0); // include_topic_authorized_operations
    let resp = conn.call(METADATA, METADATA_V, &body).await?;
    let mut g = Get::new(&resp[4..], "Metadata response");
    let _throttle = g.i32()?;
    let mut meta = Metadata::default();
    for _ in 0..g.len(12)? {
        let id = g.i32()?;
        let host = g.string()?.unwrap_or_default().to_string();
        let port = g.i32()?;
        let _rack = g.string()?;
        let addr = match host.contains(':') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        };
        meta.brokers.insert(id, addr);
    }
    let _cluster = g.string()?;
    let _controller = g.i32()?;
    for _ in 0..g.len(9)? {
        let err = g.i16()?;
        let name = g.string()?.unwrap_or_default().to_string();
        let _internal = g.i8()?;
        let mut leaders = Vec::new();
        for _ in 0..g.len(26)? {
            let _perr = g.i16()?;
            let p = g.i32()?;
            let leader = g.i32()?;
            let _epoch = g.i32()?;
            for _ in 0..3 {
                for _ in 0..g.len(4)? {
                    g.i32()?;
                }
            }
            let Ok(p) = usize::try_from(p) else {
                return Err(malformed("Metadata response"));
            };
            if p > 1 << 20 {
                return Err(malformed("Metadata response"));
            }
            if leaders.len() <= p {
                leaders.resize(p + 1, -1);
            }
            leaders[p] = leader;
        }
        let _ops = g.i32()?;
        if err != code::NONE && !code::retriable(err) {
            return Err(SluiceError::external(format!(
                "Kafka cannot give the metadata of topic `{name}`: {}",
                code::name(err)
            )));
        }
        meta.leaders.insert(name, leaders);
    }
    Ok(meta)
}
