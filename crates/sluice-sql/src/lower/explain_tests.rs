//! Plan-level snapshots: every Nexmark query in `examples/nexmark/` planned at parallelism
//! 2 and rendered as `EXPLAIN` renders it (tasks, chaining, edges, output columns), compared
//! with `tests/explain/<query>.plan`. `SLUICE_EXPLAIN_UPDATE=1` rewrites the snapshots;
//! review the diff like code.

use std::path::{Path, PathBuf};

use crate::SqlContext;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn explain(query: &str) -> String {
    let registry = sluice_connectors::registry();
    let mut ctx = SqlContext::new(registry.clone());
    ctx.register_udf(crate::functions::count_char());
    ctx.set("parallelism.default", "2")
        .expect("a known setting");
    let tables = std::fs::read_to_string(repo().join("examples/nexmark/tables.sql"))
        .expect("examples/nexmark/tables.sql");
    let job = ctx
        .plan_script(&format!("{tables}\n{query}"))
        .unwrap_or_else(|e| panic!("planning failed: {e}\n{query}"));
    let plan = job.plan.expect("the query inserts into a table");
    sluice_runtime::PreparedJob::prepare(plan, &registry)
        .unwrap_or_else(|e| panic!("preparing failed: {e}"))
        .explain()
}

#[test]
fn nexmark_plans_match_their_snapshots() {
    let dir = repo().join("examples/nexmark");
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/explain");
    let update = std::env::var_os("SLUICE_EXPLAIN_UPDATE").is_some();
    let mut queries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/nexmark")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .filter(|p| p.file_stem().is_some_and(|s| s != "tables"))
        .collect();
    queries.sort();
    assert!(queries.len() >= 20, "the Nexmark queries are there");
    let mut mismatches = Vec::new();
    for q in &queries {
        let name = q.file_stem().and_then(|s| s.to_str()).expect("a file name");
        let sql = std::fs::read_to_string(q).expect("a query file");
        let got = explain(&sql);
        let path = snapshots.join(format!("{name}.plan"));
        if update {
            std::fs::create_dir_all(&snapshots).expect("tests/explain");
            std::fs::write(&path, &got).expect("writing a snapshot");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            mismatches.push(format!(
                "{name}: the plan differs from {}\n--- want\n{want}--- got\n{got}",
                path.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\n(SLUICE_EXPLAIN_UPDATE=1 rewrites the snapshots)",
        mismatches.join("\n")
    );
}

/// Over Nexmark's JSON layout (one object per event, a nested row per kind), a query
/// reads only the nested fields it uses: the event-time CASE's `dateTime`s, the filter's
/// `event_type`, the bid fields it selects.
#[test]
fn a_json_source_reads_only_the_nested_fields_a_query_uses() {
    let dir = std::env::temp_dir().join(format!("sluice-reads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let input = dir.join("events.json");
    std::fs::write(&input, "{\"event_type\": 2}\n").expect("writing the input");
    let tables = std::fs::read_to_string(repo().join("examples/nexmark-json/tables.sql"))
        .expect("examples/nexmark-json/tables.sql")
        .replace("$INPUT", input.to_str().expect("a UTF-8 path"));
    let registry = sluice_connectors::registry();
    let line = |query: &str, label: &str| {
        let mut ctx = SqlContext::new(registry.clone());
        let job = ctx
            .plan_script(&format!("{tables}\n{query}"))
            .unwrap_or_else(|e| panic!("planning failed: {e}"));
        let explained =
            sluice_runtime::PreparedJob::prepare(job.plan.expect("an INSERT"), &registry)
                .unwrap_or_else(|e| panic!("preparing failed: {e}"))
                .explain();
        explained
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label}line:\n{explained}"))
            .to_string()
    };
    let reads = |query: &str| line(query, "reads ");
    assert_eq!(
        reads("INSERT INTO nexmark_sink SELECT auction, price FROM bid WHERE price > 10;"),
        "(auction{dateTime}, bid{auction, dateTime, price}, event_type, person{dateTime})"
    );
    assert_eq!(
        reads(
            "INSERT INTO nexmark_sink SELECT auction, COUNT(*) FROM TABLE(TUMBLE(TABLE bid, \
             DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY auction, window_start, window_end;"
        ),
        "(auction{dateTime}, bid{auction, dateTime}, event_type, person{dateTime})"
    );
    // The view's condition on the source's own column reaches the source (through the
    // projection that computes `dateTime`); one on a nested field does not.
    assert_eq!(
        line(
            "INSERT INTO nexmark_sink SELECT auction, price FROM bid WHERE price > 10;",
            "filters "
        ),
        "(event_type = Int64(2))"
    );
    // A literal written with a cast is pushed as its value.
    let pushed = line(
        "INSERT INTO nexmark_sink SELECT * FROM events \
         WHERE event_type < CAST(2 AS INT) AND dateTime > TIMESTAMP '2015-07-15 00:00:00';",
        "filters ",
    );
    assert_eq!(
        pushed, "(event_type < Int32(2))",
        "dateTime is computed, not the source's"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The latency-under-load benchmark script plans: a paced generator, a 1 s tumbling count.
#[test]
fn the_paced_window_benchmark_plans() {
    let registry = sluice_connectors::registry();
    let mut ctx = SqlContext::new(registry.clone());
    let sql = std::fs::read_to_string(repo().join("examples/bench/paced_window_1s.sql"))
        .expect("examples/bench/paced_window_1s.sql");
    let job = ctx
        .plan_script(&sql)
        .unwrap_or_else(|e| panic!("planning failed: {e}"));
    let explained = sluice_runtime::PreparedJob::prepare(job.plan.expect("an INSERT"), &registry)
        .unwrap_or_else(|e| panic!("preparing failed: {e}"))
        .explain();
    assert!(explained.contains("TUMBLE(1s)"), "{explained}");
    assert!(
        explained.contains("reads (auction, date_time)"),
        "{explained}"
    );
}
