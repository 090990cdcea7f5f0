//! The SQL front end (split, parse, plan) on arbitrary text after a fixed catalog: it
//! returns a plan or an error and never panics, overflows its stack or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;

const CATALOG: &str = "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid');
CREATE TABLE person WITH ('connector' = 'nexmark', 'table' = 'person');
CREATE TABLE sink (a BIGINT, b BIGINT) WITH ('connector' = 'blackhole');
";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let script = format!("{CATALOG}{text}");
    let _ = sluice::plan_sql(&script, &[]);
});
