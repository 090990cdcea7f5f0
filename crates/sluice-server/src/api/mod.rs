//! The REST API, by resource: jobs, logs, alerts; errors and the router here.
//!
//! Each handler carries its route and its OpenAPI operation (`#[utoipa::path]`), and the
//! router is built from those, so the document served at `/api/openapi.json` lists
//! exactly the routes served, with the request and response types the handlers use.

mod alerts;
pub(crate) mod jobs;
mod logs;
mod openapi;
mod sql;

pub use openapi::openapi_document;

/// SQL client queries running now.
pub(crate) fn sql_queries_running() -> usize {
    sql::running()
}

use std::sync::Arc;

use crate::jobs::JobManager;
use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// A JSON error: `{"error": {"code": …, "message": …}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable code: `bad_request`, `bad_sql`, `not_found`, `unauthorized`, `not_running`, …
    code: &'static str,
    /// For a person.
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(id: u64) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no job {id}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub(crate) fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("job ids are numbers, not `{id}`"),
        )
    })
}

/// The documented routes: each handler with its `#[utoipa::path]`.
fn api_routes() -> OpenApiRouter<Arc<JobManager>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(jobs::list, jobs::submit))
        .routes(routes!(jobs::detail))
        .routes(routes!(jobs::cluster))
        .routes(routes!(jobs::cancel))
        .routes(routes!(logs::logs))
        .routes(routes!(jobs::savepoint))
        .routes(routes!(jobs::checkpoints))
        .routes(routes!(jobs::history))
        .routes(routes!(jobs::operator))
        .routes(routes!(jobs::diagnosis))
        .routes(routes!(jobs::lineage_all))
        .routes(routes!(sql::plan_statement))
        .routes(routes!(sql::select))
        .routes(routes!(alerts::alerts))
        .routes(routes!(alerts::add_alert_rule))
        .routes(routes!(alerts::delete_alert_rule))
        .routes(routes!(crate::prometheus::prometheus))
        .routes(routes!(openapi::openapi))
}

/// The API's router.
pub fn router(manager: Arc<JobManager>) -> Router {
    let (api, doc) = api_routes().split_for_parts();
    openapi::keep(doc);
    api.merge(crate::dashboard::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /api/openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&manager),
            browser_guard,
        ))
        .with_state(manager)
}

/// What a web page the operator opens must not do to a server it can reach.
///
/// - **DNS rebinding**: without a token the server answers only to loopback names
///   (`127.0.0.1`, `[::1]`, `localhost`), so a page whose name was rebound to 127.0.0.1
///   reads nothing.
/// - **Cross-site writes**: a changing call must be `Content-Type: application/json`
///   (a page of another site can post a form without asking, but not JSON: that needs a
///   CORS preflight, which this server never approves), and when the browser says where
///   the call comes from (`Origin`), it must be this server itself.
async fn browser_guard(
    axum::extract::State(manager): axum::extract::State<Arc<JobManager>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::{Method, header};
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if manager.token.is_none() && !is_loopback_host(host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!(
                "without a token this server answers to 127.0.0.1, [::1] and localhost only, not `{host}`; give it a token (--token) to reach it by another name"
            ),
        )
        .into_response();
    }
    // With a token, nothing of the API or the metrics is open; the dashboard's pages
    // and assets are (they hold no data: their script asks the API, with the token).
    let path = req.uri().path();
    let api = path.starts_with("/api/") || path == "/metrics";
    if api && !manager.authorized(headers) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs its token: send `Authorization: Bearer <token>`",
        )
        .into_response();
    }
    let writes = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if writes {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        let has_body = headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|n| n.trim() != "0");
        // A body must be JSON; a call without one (cancel, delete) may name no type,
        // but never another one (an empty form post from a page of another site).
        let json = match content_type {
            Some(t) => t.eq_ignore_ascii_case("application/json"),
            None => !has_body,
        };
        if !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "json_required",
                "calls that change something take `Content-Type: application/json`",
            )
            .into_response();
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let same = origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
            if !same {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    format!("a call from `{origin}` may not change this server"),
                )
                .into_response();
            }
        }
    }
    let resp = next.run(req).await;
    match api {
        true => json_errors(resp).await,
        false => resp,
    }
}

/// Every error answer in the API's JSON form: the framework's own refusals (a query
/// string or path that does not parse, a method not served, a body too large) come as
/// plain text and are wrapped.
async fn json_errors(resp: Response) -> Response {
    use axum::http::header;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    let mut out = ApiError::new(status, code, message).into_response();
    // Keep what the framework said besides (`Allow` on a 405).
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Whether a `Host` header names this machine: `localhost` or a loopback address, with
/// or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[::1]:8081`
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(n, port)| {
            match port.chars().all(|c| c.is_ascii_digit()) {
                true => n,
                false => host,
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod host_tests {
    #[test]
    fn loopback_hosts_with_and_without_ports() {
        for ok in [
            "127.0.0.1:8081",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8081",
            "127.0.0.2",
        ] {
            assert!(super::is_loopback_host(ok), "{ok}");
        }
        for no in [
            "evil.example:8081",
            "10.0.0.1",
            "",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!super::is_loopback_host(no), "{no}");
        }
    }
}
