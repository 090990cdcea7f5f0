//! The REST API in process on arbitrary requests: the first byte picks a route and a
//! method, the rest is the body or the query string. Every answer is a status with a
//! JSON body; nothing panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

struct Server {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    _data: tempfile::TempDir,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let data = tempfile::tempdir().expect("a data directory");
        let opts = sluice_server::ServerOptions {
            token: None,
            data_dir: data.path().to_path_buf(),
            allow_dirs: vec![data.path().to_path_buf()],
            log_file_bytes: 1 << 20,
            log_files_kept: 1,
            alert_rules: Vec::new(),
            alert_interval: std::time::Duration::from_secs(3600),
            webhooks_public_only: true,
            max_connections: 16,
            header_timeout: std::time::Duration::from_secs(1),
            job_memory_limit: Some(256 << 20),
        };
        let manager = rt
            .block_on(sluice_server::JobManager::open(opts))
            .expect("a server");
        Server {
            rt,
            app: sluice_server::router(manager),
            _data: data,
        }
    })
}

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/jobs"),
    ("POST", "/api/alerts/rules"),
    ("GET", "/api/jobs/1/logs?"),
    ("GET", "/api/jobs/"),
    ("POST", "/api/jobs/1/savepoint"),
    ("DELETE", "/api/alerts/rules/"),
    ("POST", "/api/jobs/1/cancel"),
    ("GET", "/api/lineage?"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (method, route) = ROUTES[usize::from(pick) % ROUTES.len()];
    let s = server();
    let in_path = route.ends_with('?') || route.ends_with('/');
    let uri = match in_path {
        // Percent-encode what would not make a URI at all: the handlers get odd but
        // well-formed paths and query strings.
        true => format!(
            "{route}{}",
            rest.iter()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'=' | b'&' | b'-' | b'_' => {
                        char::from(*b).to_string()
                    }
                    b => format!("%{b:02X}"),
                })
                .collect::<String>()
        ),
        false => route.to_string(),
    };
    let body = match in_path {
        true => Vec::new(),
        false => rest.to_vec(),
    };
    let Ok(req) = axum::http::Request::builder()
        .method(method)
        .uri(&uri)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
    else {
        return;
    };
    let resp =
        s.rt.block_on(s.app.clone().oneshot(req))
            .expect("the router answers every request");
    let json = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    assert!(
        json,
        "{} {uri}: {} without a JSON body",
        method,
        resp.status()
    );
});
