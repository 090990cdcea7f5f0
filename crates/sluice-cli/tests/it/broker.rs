//! Apache Kafka for the Kafka tests: a single-node KRaft broker (one process acting as
//! broker and controller) on free loopback ports, in a directory of its own.
//!
//! `scripts/kafka/install` fetches the jars (Maven, once per machine, cached) and
//! `scripts/kafka/broker` configures, formats and runs the broker. It runs under a small
//! shell that kills it when our end of its standard input closes, so none outlives the
//! test process.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub struct Broker {
    pub bootstrap: String,
    host: String,
    ports: (u16, u16),
    dir: tempfile::TempDir,
    running: Mutex<Option<(Child, ChildStdin)>>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/kafka")
        .join(name)
}

/// Fetches Apache Kafka's jars once, before any broker starts (two brokers starting
/// at once would both fetch them).
fn install() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new(script("install"))
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/kafka/install: {e}"));
        assert!(
            out.status.success(),
            "scripts/kafka/install failed: the Kafka tests need Apache Kafka's jars, which Maven fetches and a Java 17+ runtime runs (see its messages above; scripts/test installs both)"
        );
    });
}

impl Broker {
    /// A new broker (fresh storage), started.
    pub fn start_new() -> Broker {
        Self::start_on("127.0.0.1")
    }

    /// A new broker listening on `host`, an address of this machine (the tests' network
    /// namespaces reach it on a bridge's address).
    pub fn start_on(host: &str) -> Broker {
        install();
        let port = free_port();
        let b = Broker {
            bootstrap: format!("{host}:{port}"),
            host: host.to_string(),
            ports: (port, free_port()),
            dir: tempfile::tempdir().unwrap(),
            running: Mutex::new(None),
        };
        b.start();
        b
    }

    /// Starts the broker on its storage and waits until it serves metadata.
    pub fn start(&self) {
        let mut running = self.running.lock().unwrap();
        assert!(running.is_none(), "the broker is running already");
        let log = self.dir.path().join("broker.log");
        // The shell kills the broker (SIGKILL, as a crash) when its standard input closes.
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$1" "$2" "$3" >>"$4" 2>&1 & pid=$!; read _; { kill -9 $pid; wait $pid; } 2>/dev/null"#)
            .arg(script("broker"))
            .arg(self.dir.path().join("broker"))
            .arg(self.ports.0.to_string())
            .arg(self.ports.1.to_string())
            .arg(&log)
            .env("KAFKA_HOST", &self.host)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = shell.stdin.take().unwrap();
        let started = Instant::now();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "0")
            .create()
            .unwrap();
        loop {
            if let Ok(md) = consumer.fetch_metadata(None, Duration::from_secs(1))
                && !md.brokers().is_empty()
            {
                break;
            }
            if let Ok(Some(status)) = shell.try_wait() {
                panic!(
                    "the Kafka broker exited ({status}) before serving: {}",
                    tail(&log)
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the Kafka broker did not serve on port {} within 90 s: {}",
                self.ports.0,
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        *running = Some((shell, stdin));
    }

    /// Kills the broker (as a crash would) and waits until it is gone.
    pub fn stop(&self) {
        if let Some((mut shell, stdin)) = self.running.lock().unwrap().take() {
            drop(stdin);
            let _ = shell.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The end of a broker's log, for a failure message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The broker shared by this test process (started on first use).
pub fn kafka() -> &'static str {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    &BROKER.get_or_init(Broker::start_new).bootstrap
}
