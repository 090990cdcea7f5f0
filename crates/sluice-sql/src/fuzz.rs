//! Property test: arbitrary text fed to the SQL front end returns `Ok` or an error, and
//! never panics. Three generators: random characters, random sequences of SQL tokens,
//! and valid scripts with random edits.

use proptest::prelude::*;
use sluice_runtime::ConnectorRegistry;
use sluice_runtime::SourceConnector;

use crate::SqlContext;

const TABLE: &str = "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, \
    date_time TIMESTAMP(3), WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND) \
    WITH ('connector' = 'fuzz');\n";

const VALID: &[&str] = &[
    "SELECT auction, price * 2 AS p FROM bid WHERE price > 10",
    "SELECT auction, COUNT(*), window_start FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY auction, window_start, window_end",
    "SELECT bidder, SUM(price) FILTER (WHERE price > 5) FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) GROUP BY bidder, window_start, window_end",
    "SELECT auction, price FROM (SELECT *, RANK() OVER (PARTITION BY window_start, window_end ORDER BY price DESC) AS rk FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))) WHERE rk <= 3",
    "CREATE VIEW v AS SELECT auction FROM bid; SELECT * FROM v",
    "SET 'parallelism.default' = '2'; SELECT CASE WHEN price > 1 THEN 'a' ELSE 'b' END FROM bid",
    "SELECT auction, COUNT(DISTINCT bidder) FROM bid GROUP BY auction",
    "EXPLAIN SELECT auction FROM TABLE(SESSION(TABLE bid, DESCRIPTOR(date_time), INTERVAL '5' SECOND)) GROUP BY auction, window_start, window_end",
    "SELECT COUNT(*) FROM TABLE(CUMULATE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '1' SECOND, INTERVAL '4' SECOND)) GROUP BY window_start, window_end",
    "SELECT auction, SUM(price) OVER (PARTITION BY auction ORDER BY date_time ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) FROM bid",
    "SELECT bidder, COUNT(*) OVER (PARTITION BY bidder ORDER BY date_time RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW) FROM bid",
    "SELECT bidder, MAX(m) FROM (SELECT auction, bidder, MAX(price) AS m FROM bid GROUP BY auction, bidder) GROUP BY bidder",
    "SELECT a.auction, b.bidder FROM bid a LEFT JOIN bid b ON a.auction = b.auction AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '5' SECOND",
    "SELECT x.auction, x.n, y.m FROM (SELECT auction, COUNT(*) AS n FROM bid GROUP BY auction) x JOIN (SELECT auction, MAX(price) AS m FROM bid GROUP BY auction) y ON x.auction = y.auction",
    "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC, date_time ASC) AS rn FROM bid) WHERE rn <= 1",
];

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "HAVING",
    "TABLE",
    "(",
    ")",
    ",",
    ";",
    "*",
    "+",
    "-",
    "/",
    "=",
    "<=",
    ">",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "AS",
    "bid",
    "auction",
    "price",
    "date_time",
    "window_start",
    "window_end",
    "TUMBLE",
    "HOP",
    "SESSION",
    "TUMBLE_ROWS",
    "HOP_ROWS",
    "DESCRIPTOR",
    "INTERVAL",
    "'10'",
    "SECOND",
    "COUNT",
    "SUM",
    "RANK",
    "OVER",
    "PARTITION",
    "CREATE",
    "VIEW",
    "WITH",
    "WATERMARK",
    "FOR",
    "SET",
    "'k'",
    "'connector'",
    "INSERT",
    "INTO",
    "EXPLAIN",
    "1",
    "0",
    "-1",
    "99999999999999999999",
    "'x'",
    "=>",
    "late_sink",
    "lateness",
    "CAST",
    "BIGINT",
    "FILTER",
    "DISTINCT",
    "JOIN",
    "ON",
    "UNION",
    "VALUES",
    "PROCTIME",
    "\"q\"",
    "`b`",
    ".",
];

fn context() -> SqlContext {
    let mut registry = ConnectorRegistry::new();
    registry.register_source(FuzzSource);
    SqlContext::new(registry)
}

/// A source connector whose schema is the declared one (planning only; never run).
struct FuzzSource;

impl SourceConnector for FuzzSource {
    type Config = arrow::datatypes::SchemaRef;

    fn name(&self) -> &'static str {
        "fuzz"
    }

    fn options(&self) -> &'static [&'static str] {
        &[]
    }

    fn parse(&self, spec: &sluice_plan::ConnectorSpec) -> sluice_types::Result<Self::Config> {
        spec.schema
            .clone()
            .ok_or_else(|| sluice_types::SluiceError::user("fuzz tables declare columns"))
    }

    fn schema(&self, config: &Self::Config) -> sluice_types::Result<arrow::datatypes::SchemaRef> {
        Ok(std::sync::Arc::clone(config))
    }

    fn splits(
        &self,
        _config: &Self::Config,
        _parallelism: usize,
    ) -> sluice_types::Result<Vec<sluice_runtime::Split>> {
        Ok(Vec::new())
    }

    fn reader(
        &self,
        _config: &std::sync::Arc<Self::Config>,
        _splits: Vec<sluice_runtime::Split>,
        _task: &sluice_types::TaskInfo,
    ) -> sluice_types::Result<Box<dyn sluice_runtime::SourceReader>> {
        Err(sluice_types::SluiceError::user(
            "fuzz tables are never read",
        ))
    }
}

fn plan(text: &str) {
    let mut ctx = context();
    let _ = ctx.plan_script(text);
}

fn edited() -> impl Strategy<Value = String> {
    (
        prop::sample::select(VALID),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..6),
    )
        .prop_map(|(q, edits)| {
            let mut chars: Vec<char> = format!("{TABLE}{q}").chars().collect();
            for (at, kind, c) in edits {
                if chars.is_empty() {
                    break;
                }
                let i = at.index(chars.len());
                match kind {
                    0 => {
                        chars.remove(i);
                    }
                    1 => chars.insert(i, c),
                    _ => chars[i] = c,
                }
            }
            chars.into_iter().collect()
        })
}

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..40)
        .prop_map(|t| format!("{TABLE}{}", t.join(" ")))
}

proptest! {
    // A failing input is kept in `proptest-regressions/fuzz.txt` (beside `src`) and tried first on
    // every later run: commit it with the fix, as a regression case.
    #![proptest_config(ProptestConfig {
        cases: 1500,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::SourceParallel("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_text_never_panics(s in "\\PC{0,200}") {
        plan(&s);
    }

    #[test]
    fn token_soup_never_panics(s in token_soup()) {
        plan(&s);
    }

    #[test]
    fn edited_queries_never_panic(s in edited()) {
        plan(&s);
    }
}

#[test]
fn deep_expressions_plan_on_a_stack_of_their_own_or_are_refused_where_they_go_too_far() {
    // 250 additions: as deep as a statement may go. This test's thread has 2 MiB of
    // stack; planning has a thread of its own.
    let sum = vec!["price"; 251].join(" + ");
    context()
        .plan_script(&format!("{TABLE}SELECT {sum} AS s FROM bid"))
        .unwrap();
    // Two more (252 operators) are refused before anything is parsed, at the one over.
    let refused = |sql: String| match context().plan_script(&sql) {
        Ok(_) => panic!("planned a script that is too deep or too large"),
        Err(e) => e,
    };
    let e = refused(format!("{TABLE}SELECT {sum} + price + price FROM bid"));
    assert!(e.to_string().contains("more than 250 operators"), "{e}");
    assert_eq!(e.pos.map(|p| p.line), Some(2), "{e}");
    // 20 000 ORs, and a script too large to plan.
    let ors = vec!["price = 1"; 20_000].join(" OR ");
    let e = refused(format!("{TABLE}SELECT auction FROM bid WHERE {ors}"));
    assert!(e.to_string().contains("more than 250 operators"), "{e}");
    let padded = format!(
        "{TABLE}SELECT auction FROM bid {}",
        "-- padding\n".repeat(30_000)
    );
    let e = refused(padded);
    assert!(e.to_string().contains("at most 262144"), "{e}");
}

#[test]
fn the_valid_queries_plan() {
    for q in VALID {
        let mut ctx = context();
        ctx.plan_script(&format!("{TABLE}{q}"))
            .unwrap_or_else(|e| panic!("{q}: {e}"));
    }
}
