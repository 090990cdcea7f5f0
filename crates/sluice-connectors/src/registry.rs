//! A Confluent Schema Registry client: the two calls the Avro format needs (a writer's
//! schema by id, and registering a sink's schema under a subject), over plain HTTP/1.1.
//! Answers are cached: a schema id never changes its schema.

use std::collections::HashMap;
use std::sync::Mutex;

use sluice_types::{Result, SluiceError};

use crate::http::HttpUrl;

/// A schema registry at one `http://host:port[/path]` address.
#[derive(Debug)]
pub struct SchemaRegistry {
    url: HttpUrl,
    by_id: Mutex<HashMap<u32, String>>,
}

impl SchemaRegistry {
    /// Parses the registry's address (fails at start-up on a bad one).
    pub fn new(url: &str) -> Result<Self> {
        Ok(Self {
            url: HttpUrl::parse(url)
                .map_err(|e| SluiceError::user(format!("schema registry: {e}")))?,
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
        let (status, payload) = self.url.request(
            method,
            path,
            body,
            &[
                (
                    "Accept",
                    "application/vnd.schemaregistry.v1+json, application/json",
                ),
                ("Content-Type", "application/vnd.schemaregistry.v1+json"),
            ],
        )?;
        let fail = |what: &str| {
            SluiceError::external(format!(
                "schema registry {}:{}: {method} {path}: {what}",
                self.url.host, self.url.port
            ))
        };
        if !(200..300).contains(&status) {
            return Err(fail(&format!("HTTP {status}: {}", payload.trim())));
        }
        serde_json::from_str(&payload).map_err(|e| fail("the answer is not JSON").with_source(e))
    }
}
