//! The OpenAPI document of the REST API and the routes it lists.

use axum::Json;

/// The routes the API serves, as the OpenAPI document lists them: (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/jobs"),
    ("post", "/api/jobs"),
    ("get", "/api/jobs/{id}"),
    ("post", "/api/jobs/{id}/cancel"),
    ("get", "/api/jobs/{id}/logs"),
    ("post", "/api/jobs/{id}/savepoint"),
    ("get", "/api/jobs/{id}/checkpoints"),
    ("get", "/api/lineage"),
    ("get", "/api/alerts"),
    ("post", "/api/alerts/rules"),
    ("delete", "/api/alerts/rules/{name}"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
];

pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

/// The OpenAPI 3 document of the REST API.
pub fn openapi_document() -> serde_json::Value {
    let error = serde_json::json!({
        "description": "an error: {\"error\": {\"code\", \"message\"}}",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    let id_param = serde_json::json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]);
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "Sluice server", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/api/jobs": {
                "get": {"summary": "List jobs", "responses": {"200": {"description": "jobs with status and record counts"}}},
                "post": {
                    "summary": "Submit a SQL job",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Submit"}}}},
                    "responses": {"201": {"description": "{\"id\": n}"}, "400": error, "401": error}
                }
            },
            "/api/jobs/{id}": {
                "get": {"summary": "A job: status, graph, per-operator metrics, checkpoints", "parameters": id_param, "responses": {"200": {"description": "the job"}, "400": error, "404": error}}
            },
            "/api/jobs/{id}/cancel": {
                "post": {"summary": "Cancel a running job", "parameters": id_param, "responses": {"202": {"description": "cancelling"}, "400": error, "401": error, "404": error, "409": error}}
            },
            "/api/jobs/{id}/logs": {
                "get": {"summary": "A job's log events, searchable", "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
                    {"name": "level", "in": "query", "schema": {"type": "string", "enum": ["error", "warn", "info", "debug", "trace"]}, "description": "this level and above"},
                    {"name": "task", "in": "query", "schema": {"type": "string"}, "description": "tasks whose name contains this"},
                    {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "text to find (case-insensitive)"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}, "description": "the newest n (1 000)"}
                ], "responses": {"200": {"description": "[{time_ms, level, task, target, message}]"}, "400": error, "404": error}}
            },
            "/api/jobs/{id}/savepoint": {
                "post": {"summary": "Take a savepoint; with {\"stop\": true} stop the job there", "parameters": id_param,
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"stop": {"type": "boolean"}}}}}},
                    "responses": {"200": {"description": "{\"location\", \"stopped\"}"}, "400": error, "401": error, "404": error, "409": error}}
            },
            "/api/jobs/{id}/checkpoints": {
                "get": {"summary": "Recent checkpoints and savepoints: id, kind, status, trigger time, duration, size, alignment, location", "parameters": id_param, "responses": {"200": {"description": "history, oldest first"}, "400": error, "404": error}}
            },
            "/api/lineage": {
                "get": {"summary": "Every job with what it reads and writes (topic -> job -> topic)", "responses": {"200": {"description": "[{id, name, status, reads: [{connector, name}], writes}]"}}}
            },
            "/api/alerts": {
                "get": {"summary": "Alert rules, the alerts pending or firing, the latest webhook deliveries", "responses": {"200": {"description": "{rules, active: [{rule, job, job_id, state, since_ms, fired_ms, value}], deliveries}"}}}
            },
            "/api/alerts/rules": {
                "post": {"summary": "Add an alert rule", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AlertRule"}}}},
                    "responses": {"201": {"description": "{\"name\"}"}, "400": error, "401": error, "409": error}}
            },
            "/api/alerts/rules/{name}": {
                "delete": {"summary": "Delete an alert rule (its firing alerts resolve)", "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "{\"deleted\"}"}, "401": error, "404": error}}
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text/plain; version=0.0.4"}}}
            },
            "/api/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}
            }
        },
        "components": {"schemas": {
            "Submit": {"type": "object", "required": ["sql"], "properties": {
                "sql": {"type": "string"}, "name": {"type": "string"}, "parallelism": {"type": "integer", "minimum": 1},
                "from_savepoint": {"type": "string", "description": "a savepoint or checkpoint directory to start from"}
            }},
            "AlertRule": {"type": "object", "required": ["name", "condition", "webhook"], "properties": {
                "name": {"type": "string"},
                "condition": {"type": "object", "required": ["type"], "properties": {
                    "type": {"type": "string", "enum": ["job_failed", "restarts", "checkpoint_failures", "latency_p99", "consumer_lag", "dead_letter_rate"]},
                    "more_than": {"type": "integer"}, "within_ms": {"type": "integer"}, "at_least": {"type": "integer"},
                    "above_ms": {"type": "number"}, "above": {"type": "integer"}, "above_per_s": {"type": "number"}
                }},
                "job": {"type": "string", "description": "the job's name; every job when absent"},
                "for_ms": {"type": "integer", "description": "how long the condition must hold"},
                "webhook": {"type": "object", "required": ["url"], "properties": {
                    "url": {"type": "string"}, "format": {"type": "string", "enum": ["json", "slack"]}, "max_attempts": {"type": "integer", "minimum": 1}
                }}
            }},
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}
            }}}}
        }}
    })
}
