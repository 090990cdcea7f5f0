//! An S3 API for the tests that keep checkpoints in object storage: moto's server
//! (PyPI `moto[server]`, installed by `scripts/test` into `~/.cache/sluice/moto-5.2.6`)
//! on a free loopback port, with one bucket, stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::connectors::http::HttpUrl;

pub struct Moto {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

impl Moto {
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
        let port = crate::broker::free_port();
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

    fn request(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        HttpUrl::parse(&format!("http://127.0.0.1:{}", self.port))
            .map_err(|e| e.to_string())?
            .request(method, path, None, &[])
            .map_err(|e| e.to_string())
    }

    /// The variables a Sluice process reads its S3 store's endpoint and credentials from.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The keys of the bucket's objects under `prefix`, through the S3 API
    /// (ListObjectsV2, every page).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{}?list-type=2&prefix={prefix}", self.bucket);
            if let Some(t) = &token {
                path.push_str(&format!("&continuation-token={}", encode(t)));
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

/// The texts of the XML elements named `name` (S3's answers have no nesting of those).
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|s| s.split_once(close.as_str()).map(|(v, _)| v.to_string()))
        .collect()
}

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
