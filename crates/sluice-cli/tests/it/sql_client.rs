//! `sluice sql` at a terminal: a pseudo-terminal (Python's `pty`) types statements as a
//! person would, and what the terminal shows is checked.

use std::process::Command;

/// Types `lines` into `sluice sql` at a terminal; returns what it showed.
fn at_a_terminal(lines: &[&str]) -> String {
    at_a_terminal_with(&[], lines)
}

/// [`at_a_terminal`], `sluice sql` given `args`.
fn at_a_terminal_with(args: &[&str], lines: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/pty_session.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("Sluice SQL> |          > ")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg("sql")
        .args(args)
        .arg("--")
        .args(lines)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed to drive a terminal ({e}); install it"));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    shown
}

/// What the terminal showed after the typed line that starts with `typed`, up to the next.
fn answer<'a>(shown: &'a str, typed: &str) -> &'a str {
    let start = shown
        .find(&format!(">>> {typed}"))
        .unwrap_or_else(|| panic!("`{typed}` was never typed: {shown}"));
    let rest = &shown[start + 4..];
    let rest = &rest[rest.find('\n').map_or(rest.len(), |i| i + 1)..];
    &rest[..rest.find("\n>>> ").unwrap_or(rest.len())]
}

#[test]
fn the_sql_client_creates_shows_describes_and_peeks_at_a_terminal() {
    let shown = at_a_terminal(&[
        "CREATE TABLE bid (",
        "  auction BIGINT, price BIGINT, date_time TIMESTAMP(3),",
        "  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND",
        ") WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '500');",
        "SHOW TABLES;",
        "DESCRIBE bid;",
        "SELECT auction, price FROM bid LIMIT 3;",
        "SELECT nope FROM bid;",
        "QUIT;",
    ]);
    assert!(
        answer(&shown, ") WITH").contains("[INFO] Execute statement succeeded."),
        "{shown}"
    );
    let tables = answer(&shown, "SHOW TABLES");
    assert!(
        tables.contains("| table name |") && tables.contains("|        bid |"),
        "{tables}"
    );
    assert!(tables.contains("1 row in set"), "{tables}");
    let described = answer(&shown, "DESCRIBE bid");
    for column in [
        "auction | BIGINT",
        "price | BIGINT",
        "date_time | TIMESTAMP(3)",
    ] {
        assert!(
            described.lines().any(|l| l
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(column)),
            "{column}: {described}"
        );
    }
    assert!(
        described.contains("`date_time` - INTERVAL '2' SECOND"),
        "{described}"
    );
    let peeked = answer(&shown, "SELECT auction, price FROM bid LIMIT 3");
    let rows: Vec<&str> = peeked.lines().filter(|l| l.starts_with("| +I |")).collect();
    assert_eq!(rows.len(), 3, "{peeked}");
    assert!(peeked.contains("Received a total of 3 rows"), "{peeked}");
    // The prompt came back after the rows: the next statement ran.
    let wrong = answer(&shown, "SELECT nope");
    assert!(
        wrong.contains("[ERROR] Could not execute SQL statement")
            && wrong.contains("line 1, column 8: No field named nope"),
        "{wrong}"
    );
    assert!(answer(&shown, "QUIT").contains("Goodbye."), "{shown}");
}

/// An updating query over an unbounded input shows its changes as they come; Ctrl-C stops
/// the query, not the client; an INSERT runs as a background job that SHOW JOBS lists and
/// STOP JOB stops.
#[test]
fn ctrl_c_stops_a_query_and_inserts_run_as_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let create_sink = format!(
        "CREATE TABLE sink (auction BIGINT, price BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');",
        out.display()
    );
    let shown = at_a_terminal(&[
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '200');",
        "SELECT auction, COUNT(*) AS n FROM bid GROUP BY auction;\t| +U |",
        "^C",
        &create_sink,
        "INSERT INTO sink SELECT auction, price FROM bid;",
        "SHOW JOBS;",
        // Meanwhile the job reads on.
        "SELECT auction FROM bid LIMIT 40;",
        "STOP JOB '1' WITH DRAIN;",
        "SHOW JOBS;",
        "QUIT;",
    ]);
    let changes = answer(&shown, "SELECT auction, COUNT(*)");
    assert!(
        changes.contains("| op |") && changes.contains("| +I |"),
        "{changes}"
    );
    assert!(
        changes.contains("| -U |") && changes.contains("| +U |"),
        "{changes}"
    );
    assert!(
        answer(&shown, "^C").contains("Query stopped (Ctrl-C)"),
        "{shown}"
    );
    assert!(
        answer(&shown, "INSERT INTO sink").contains("submitted as job 1"),
        "{shown}"
    );
    let jobs = answer(&shown, "SHOW JOBS");
    assert!(
        jobs.contains("insert-into_sink") && jobs.contains("RUNNING"),
        "{jobs}"
    );
    assert!(
        answer(&shown, "STOP JOB").contains("Stopped job 1"),
        "{shown}"
    );
    let after = &shown[shown.rfind(">>> SHOW JOBS").unwrap()..];
    assert!(after.contains("FINISHED"), "{after}");
    // Drained: what the job read is in its output, published.
    let written = crate::support::committed_lines(&out);
    assert!(!written.is_empty(), "{shown}");
}

/// The same session against a `sluice server`: the server plans each statement, streams a
/// SELECT's rows back (Ctrl-C stops it there too), and runs an INSERT INTO as one of its
/// jobs; a bare SELECT submitted as a job is refused, since nobody would see its rows.
#[test]
fn the_sql_client_runs_its_session_on_a_server() {
    let (server, _dir) = crate::server::start_server(&[]);
    let shown = at_a_terminal_with(
        &["--server", &server.url],
        &[
            "CREATE TABLE bid (auction BIGINT, price BIGINT, date_time TIMESTAMP(3)) WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '500');",
            "SHOW TABLES;",
            "DESCRIBE bid;",
            "SELECT auction, price FROM bid LIMIT 3;",
            "SELECT auction, COUNT(*) AS n FROM bid GROUP BY auction;\t| +U |",
            "^C",
            "SELECT nope FROM bid;",
            "CREATE TABLE sink (auction BIGINT) WITH ('connector' = 'blackhole');",
            "INSERT INTO sink SELECT auction FROM bid;",
            "SHOW JOBS;",
            "QUIT;",
        ],
    );
    assert!(shown.contains("Sluice SQL client on a server"), "{shown}");
    assert!(
        answer(&shown, "SHOW TABLES").contains("|        bid |"),
        "{shown}"
    );
    assert!(
        answer(&shown, "DESCRIBE bid").contains("TIMESTAMP(3)"),
        "{shown}"
    );
    let peeked = answer(&shown, "SELECT auction, price FROM bid LIMIT 3");
    assert_eq!(
        peeked.lines().filter(|l| l.starts_with("| +I |")).count(),
        3,
        "{peeked}"
    );
    assert!(peeked.contains("Received a total of 3 rows"), "{peeked}");
    let changes = answer(&shown, "SELECT auction, COUNT(*)");
    assert!(
        changes.contains("| -U |") && changes.contains("| +U |"),
        "{changes}"
    );
    assert!(
        answer(&shown, "^C").contains("Query stopped (Ctrl-C)"),
        "{shown}"
    );
    assert!(
        answer(&shown, "SELECT nope").contains("line 1, column 8: No field named nope"),
        "{shown}"
    );
    let submitted = answer(&shown, "INSERT INTO sink");
    assert!(
        submitted.contains("submitted as job 1 on the server"),
        "{submitted}"
    );
    assert!(answer(&shown, "SHOW JOBS").contains("RUNNING"), "{shown}");
    let (_, job) = server.call("GET", "/api/jobs/1", None);
    assert!(
        job["sql"].as_str().unwrap().contains("CREATE TABLE bid"),
        "the session went with the INSERT: {job}"
    );
    // A query is no job of the server's: only the INSERT is listed.
    let (_, jobs) = server.call("GET", "/api/jobs", None);
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    // A bare SELECT is no job.
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(
            &serde_json::json!({ "sql": "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid'); SELECT * FROM bid;" })
                .to_string(),
        ),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("select_not_a_job")),
        "{v}"
    );
}

/// One HTTP/1.1 exchange with the server, its answer whole (the connection closed).
fn http(url: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

/// The server's `sluice_sql_queries` gauge.
fn queries_running(url: &str) -> f64 {
    let metrics = http(
        url,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_sql_queries "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sluice_sql_queries: {metrics}"))
}

/// Waits (a minute at most) until the server runs `n` queries.
fn until_queries(url: &str, n: f64) {
    let start = std::time::Instant::now();
    while queries_running(url) != n {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the server still runs {} queries, not {n}",
            queries_running(url)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A query on a server ends when its client goes away, also one that has no row to send
/// (the server writes an empty line after each quiet second and finds the client gone).
#[test]
fn a_query_on_a_server_ends_when_its_client_goes_away() {
    use std::io::{Read, Write};
    let (server, _dir) = crate::server::start_server(&[]);
    assert_eq!(queries_running(&server.url), 0.0);
    let body = serde_json::json!({
        "session": "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '100');",
        "statement": "SELECT auction FROM bid WHERE price < 0",
    })
    .to_string();
    let mut conn = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    conn.write_all(
        format!(
            "POST /api/sql/select HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    until_queries(&server.url, 1.0);
    drop(conn);
    until_queries(&server.url, 0.0);
}
