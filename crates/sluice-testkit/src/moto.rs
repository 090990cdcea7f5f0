//! An S3 API for tests that keep checkpoints in object storage: moto's server (PyPI
//! `moto[server]`, installed by `scripts/test` into `~/.cache/sluice/moto-5.2.6`, or
//! `SLUICE_MOTO_SERVER`) on a free loopback port, with one bucket, stopped when dropped.
//! Plain HTTP/1.1 over a socket: moto asks for no signature.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server with one bucket.
pub struct Moto {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    /// The bucket it was started with.
    pub bucket: String,
}

impl Moto {
    /// Starts moto and creates `bucket`.
    pub fn start(bucket: &str) -> Moto {
        let bin = std::env::var("SLUICE_MOTO_SERVER").unwrap_or_else(|_| {
            format!(
                "{}/.cache/sluice/moto-5.2.6/bin/moto_server",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        assert!(
            std::path::Path::new(&bin).exists(),
            "no moto server at {bin}: scripts/test installs it (PyPI moto[server] into ~/.cache/sluice/moto-5.2.6); or set SLUICE_MOTO_SERVER"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let moto = Moto {
            child,
            port,
            bucket: bucket.to_string(),
        };
        let start = Instant::now();
        loop {
            match moto.request("PUT", &format!("/{bucket}")) {
                Ok((200, _)) => break,
                Ok((status, body)) => panic!("creating bucket {bucket}: {status} {body}"),
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "moto did not answer on port {port}: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// One request without a body; the answer's status and body.
    fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Ok((status, if chunked { unchunk(body) } else { body.into() }))
    }

    /// The store options of the bucket (`CheckpointStorage::open_with`).
    pub fn options(&self) -> Vec<(String, String)> {
        self.settings("aws_", str::to_lowercase)
    }

    /// The environment variables a Sluice process reads the same from.
    pub fn env(&self) -> Vec<(String, String)> {
        self.settings("AWS_", str::to_uppercase)
    }

    fn settings(&self, prefix: &str, case: fn(&str) -> String) -> Vec<(String, String)> {
        [
            ("endpoint", format!("http://127.0.0.1:{}", self.port)),
            ("allow_http", "true".into()),
            ("region", "us-east-1".into()),
            ("access_key_id", "testing".into()),
            ("secret_access_key", "testing".into()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{}", case(k)), v))
        .collect()
    }

    /// The keys of the bucket's objects under `prefix`, through the S3 API
    /// (ListObjectsV2, every page).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!(
                "/{}?list-type=2&prefix={}",
                self.bucket,
                crate::percent_encode(prefix)
            );
            if let Some(t) = &token {
                path.push_str(&format!("&continuation-token={}", crate::percent_encode(t)));
            }
            let (status, body) = self.request("GET", &path).unwrap();
            assert_eq!(status, 200, "listing {prefix}: {body}");
            keys.extend(elements(&body, "Key"));
            token = elements(&body, "NextContinuationToken").into_iter().next();
            if token.is_none() {
                return keys;
            }
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chunked body's data.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The texts of the XML elements named `name` (S3's answers have no nesting of those).
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|s| s.split_once(close.as_str()).map(|(v, _)| v.to_string()))
        .collect()
}
