//! A Confluent Schema Registry client: the two calls the Avro format needs (a writer's
//! schema by id, and registering a sink's schema under a subject), over plain HTTP/1.1.
//! Answers are cached: a schema id never changes its schema.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use sluice_types::{Result, SluiceError};

/// A schema registry at one `http://host:port[/path]` address.
#[derive(Debug)]
pub struct SchemaRegistry {
    host: String,
    port: u16,
    path: String,
    by_id: Mutex<HashMap<u32, String>>,
}

impl SchemaRegistry {
    /// Parses the registry's address (fails at start-up on a bad one).
    pub fn new(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            SluiceError::user(format!(
                "schema registry address `{url}` must start with http:// (https is not supported yet)"
            ))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>().map_err(|_| {
                    SluiceError::user(format!("schema registry address `{url}` has a bad port"))
                })?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(SluiceError::user(format!(
                "schema registry address `{url}` has no host"
            )));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            path: path.to_string(),
            by_id: Mutex::new(HashMap::new()),
        })
    }

    /// The writer's schema (Avro JSON) registered under `id`.
    pub fn schema_by_id(&self, id: u32) -> Result<String> {
        if let Some(s) = self.lock().get(&id) {
            return Ok(s.clone());
        }
        let body = self.call("GET", &format!("/schemas/ids/{id}"), None)?;
        let schema = body
            .get("schema")
            .and_then(|s| s.as_str())
            .ok_or_else(|| {
                SluiceError::external(format!(
                    "the schema registry's answer for id {id} has no schema"
                ))
            })?
            .to_string();
        self.lock().insert(id, schema.clone());
        Ok(schema)
    }

    /// Registers `schema` under `subject` (or finds it registered) and returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let req = serde_json::json!({ "schema": schema }).to_string();
        let body = self.call("POST", &format!("/subjects/{subject}/versions"), Some(&req))?;
        let id = body
            .get("id")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                SluiceError::external(format!(
                    "the schema registry's answer for subject `{subject}` has no id"
                ))
            })?;
        self.lock().insert(id, schema.to_string());
        Ok(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, String>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<serde_json::Value> {
        let addr = format!("{}:{}", self.host, self.port);
        let fail = |what: &str| {
            SluiceError::external(format!("schema registry {addr}: {method} {path}: {what}"))
        };
        let mut s = TcpStream::connect(&addr).map_err(|e| fail("cannot connect").with_source(e))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/vnd.schemaregistry.v1+json, application/json\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.path,
            body.len()
        );
        s.write_all(req.as_bytes())
            .map_err(|e| fail("cannot send").with_source(e))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .map_err(|e| fail("cannot read the answer").with_source(e))?;
        let text = String::from_utf8_lossy(&resp);
        let (head, payload) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| fail("the answer is not HTTP"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| fail("the answer has no status"))?;
        let payload = match head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            true => dechunk(payload),
            false => payload.to_string(),
        };
        if !(200..300).contains(&status) {
            return Err(fail(&format!("HTTP {status}: {}", payload.trim())));
        }
        serde_json::from_str(&payload).map_err(|e| fail("the answer is not JSON").with_source(e))
    }
}

/// The body of a chunked HTTP answer.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_at_start_up() {
        let r = SchemaRegistry::new("http://localhost:8081/registry/").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.path.as_str()),
            ("localhost", 8081, "/registry")
        );
        assert!(SchemaRegistry::new("https://x:1").is_err());
        assert!(SchemaRegistry::new("http://:1").is_err());
        assert!(SchemaRegistry::new("http://x:port").is_err());
    }

    #[test]
    fn chunked_answers_are_joined() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }
}
