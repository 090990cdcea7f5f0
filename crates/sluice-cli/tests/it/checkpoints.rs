//! Checkpoints through crashes: the `sluice` binary runs a file → 1 s tumbling window →
//! file job in a child process, is killed with SIGKILL at random moments, and restarts
//! from its latest checkpoint each time; the committed output is compared with an
//! uninterrupted run. And savepoints: stop at parallelism 2, resume at 1 and at 3.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice::prelude::*;

use crate::support::{committed_lines, kill_delays, run_to_end};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Writes the bids of `events` Nexmark events (1 000 events per second of event time,
/// so they span many 1 s windows) as JSON lines into two files.
async fn write_input(dir: &Path, events: u64) -> PathBuf {
    write_input_files(dir, events, 2).await
}

/// [`write_input`] into `files` files.
async fn write_input_files(dir: &Path, events: u64, files: usize) -> PathBuf {
    let input = dir.join("bids");
    let p = Pipeline::new("write-bids");
    p.parallelism(files);
    p.source(
        NexmarkSource::bids()
            .events(events)
            .first_event_rate(1_000)
            .seed(5),
    )
    .select([
        col("auction"),
        col("bidder"),
        col("price"),
        col("date_time"),
    ])
    .sink(FileSink::json(&input));
    p.run().await.unwrap();
    input
}

/// Waits until a running job has read `rows` rows (two minutes at most).
async fn read_at_least(metrics: &sluice::runtime::metrics::JobMetrics, rows: u64) {
    let waiting = std::time::Instant::now();
    while metrics.source_records() < rows {
        assert!(
            waiting.elapsed() < Duration::from_secs(120),
            "the job never read {rows} rows ({} so far)",
            metrics.source_records()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `sluice run --example windowed-file` with extra arguments.
fn job(input: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["run", "--example", "windowed-file", "--quiet", "-p", "2"])
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// The arguments of a job that checkpoints every 100 ms into `checkpoints` and resumes
/// from the latest one, its sources paced at 20 000 rows per second.
fn checkpointed<'a>(checkpoints: &'a Path, delivery: &'a str) -> [&'a str; 11] {
    [
        "--rows-per-second",
        "20000",
        "--checkpoint-interval",
        "100ms",
        "--checkpoint-dir",
        checkpoints.to_str().unwrap(),
        "--delivery",
        delivery,
        "--from-checkpoint",
        "latest",
        "--fresh-if-none",
    ]
}

/// Runs the checkpointed job, killing it with SIGKILL after each delay and restarting it
/// from its latest checkpoint, then lets the last run finish. Returns how many kills hit
/// a running job.
fn crash_file_job(input: &Path, out: &Path, checkpoints: &Path, delivery: &str) -> usize {
    let args = checkpointed(checkpoints, delivery);
    crate::support::crash_and_restart(
        || job(input, out, &args),
        &kill_delays(6, 300, 1_000),
        checkpoints,
    )
}

/// The windowed-file job's output over 150 000 events run to the end, and run with
/// `delivery` through repeated SIGKILLs (at least 5 hitting a running job), each resumed.
async fn uninterrupted_and_killed(delivery: &str) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 150_000).await;
    run_to_end(job(&input, &dir.path().join("reference"), &[]));
    let kills = crash_file_job(
        &input,
        &dir.path().join("crashed"),
        &dir.path().join("checkpoints"),
        delivery,
    );
    assert!(kills >= 5, "only {kills} kills hit a running job");
    (
        committed_lines(&dir.path().join("reference/windowed-file")),
        committed_lines(&dir.path().join("crashed/windowed-file")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_output_survives_repeated_sigkill() {
    let (expected, got) = uninterrupted_and_killed("exactly-once").await;
    assert!(expected.len() > 1_000, "{} windows", expected.len());
    assert_eq!(
        got.len(),
        expected.len(),
        "rows lost or duplicated after the kills"
    );
    assert!(got == expected, "output differs after the kills");
}

/// One input file at parallelism 2: one source subtask has nothing to read and finishes
/// at once. Checkpoints go on without it (its final state stands in for it, as in Flink),
/// so runs killed later resume from them, and the output is still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_go_on_after_a_subtask_finished_and_restores_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input_files(dir.path(), 150_000, 1).await;
    run_to_end(job(&input, &dir.path().join("reference"), &[]));
    let expected = committed_lines(&dir.path().join("reference/windowed-file"));
    let checkpoints = dir.path().join("checkpoints");
    let args = checkpointed(&checkpoints, "exactly-once");
    let out = dir.path().join("crashed");
    let (kills, resumed) = crate::support::crash_and_restart_counted(
        || job(&input, &out, &args),
        &kill_delays(4, 400, 1_000),
        &checkpoints,
    );
    assert!(kills >= 3, "only {kills} kills hit a running job");
    assert!(
        resumed >= 3,
        "only {resumed} runs resumed from a checkpoint: checkpoints stopped when a subtask finished"
    );
    let got = committed_lines(&out.join("windowed-file"));
    assert_eq!(got.len(), expected.len(), "rows lost or duplicated");
    assert!(got == expected, "output differs after {kills} kills");
}

/// `--from-checkpoint latest` with nothing to resume from fails (a misspelled directory
/// shows at once) unless `--fresh-if-none`; a resumed run says what it restored, where
/// each source split resumes, and, for a job that had finished, that nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_says_what_it_restored_and_latest_needs_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 5_000).await;
    let out = dir.path().join("out");
    let checkpoints = dir.path().join("checkpoints");
    let latest = [
        "--checkpoint-dir",
        checkpoints.to_str().unwrap(),
        "--from-checkpoint",
        "latest",
    ];
    let run = |extra: &[&str]| {
        let mut args = latest.to_vec();
        args.extend(extra);
        job(&input, &out, &args).output().unwrap()
    };
    let refused = run(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("no complete checkpoint in") && err.contains("--fresh-if-none"),
        "{err}"
    );
    assert!(committed_lines(&out.join("windowed-file")).is_empty());

    let fresh = run(&["--fresh-if-none"]);
    let err = String::from_utf8_lossy(&fresh.stderr);
    assert!(fresh.status.success(), "{err}");
    assert!(err.contains("no completed checkpoint in"), "{err}");
    let written = committed_lines(&out.join("windowed-file"));
    assert!(!written.is_empty());

    // Again: the job's final checkpoint is there.
    let again = run(&[]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("resumed from final "), "{err}");
    for part in ["part-0", "part-1"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("  ") && l.contains(part) && l.contains("done")),
            "where {part} resumes: {err}"
        );
    }
    assert!(err.contains("the job had finished"), "{err}");
    assert_eq!(rows_in_and_out(&err), (0, 0), "{err}");
    assert!(committed_lines(&out.join("windowed-file")) == written);
}

/// Ctrl-C cancels, as Flink's cancel does: the job stops where it is and its open window
/// is not written; with `--drain` the input ends and the open window is written as if
/// complete (Flink's `stop --drain`).
#[test]
fn ctrl_c_cancels_without_a_partial_window_and_drain_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| -> (Option<i32>, String, usize) {
        let out = dir.path().join(name);
        let script = dir.path().join(format!("{name}.sql"));
        std::fs::write(
            &script,
            format!(
                "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '2000');
CREATE TABLE sink (n BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
INSERT INTO sink SELECT COUNT(*) FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '1' DAY))
GROUP BY window_start, window_end;",
                out.display()
            ),
        )
        .unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg(&script)
            .arg("--quiet")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let done = child.wait_with_output().unwrap();
        (
            done.status.code(),
            String::from_utf8_lossy(&done.stderr).into_owned(),
            committed_lines(&out).len(),
        )
    };
    let (code, stderr, rows) = run("cancelled", &[]);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert_eq!(rows, 0, "a cancelled run wrote its open window: {stderr}");
    let (code, stderr, rows) = run("drained", &["--drain"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        rows >= 1,
        "a drained run did not write its open window: {stderr}"
    );
}

/// `sluice run --stop-with-savepoint`: Ctrl-C takes a savepoint and stops (exit 0, the
/// savepoint's path on stderr); `--from-checkpoint <that path> -p 3` goes on from it at
/// another parallelism, and the two runs together write exactly the uninterrupted run's
/// output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_with_stop_with_savepoint_then_resume_at_parallelism_3() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 100_000).await;
    run_to_end(job(&input, &dir.path().join("reference"), &[]));
    let expected = committed_lines(&dir.path().join("reference/windowed-file"));
    let out = dir.path().join("stopped");
    let checkpoints = dir.path().join("cp");
    let child = job(
        &input,
        &out,
        &[
            "--rows-per-second",
            "20000",
            "--checkpoint-interval",
            "200ms",
            "--checkpoint-dir",
            checkpoints.to_str().unwrap(),
            "--stop-with-savepoint",
        ],
    )
    .spawn()
    .unwrap();
    // Some windows fire before the stop (the input is 5 s long at this pace).
    let waiting = std::time::Instant::now();
    while committed_lines(&out.join("windowed-file")).is_empty()
        && waiting.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
    assert_eq!(done.status.code(), Some(0), "{stderr}");
    let savepoint = stderr
        .lines()
        .find_map(|l| l.strip_prefix("savepoint: "))
        .unwrap_or_else(|| panic!("no savepoint path in: {stderr}"))
        .trim()
        .to_string();
    let before = committed_lines(&out.join("windowed-file"));
    assert!(
        !before.is_empty() && before.len() < expected.len(),
        "stopped mid-stream: {} of {} rows ({stderr})",
        before.len(),
        expected.len()
    );
    // Into the same directory, as a job resumed in place writes.
    let ran = Command::new(BIN)
        .args(["run", "--example", "windowed-file", "--quiet", "-p", "3"])
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .args(["--from-checkpoint", &savepoint])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "{said}");
    assert!(said.contains("resumed from savepoint"), "{said}");
    let all = committed_lines(&out.join("windowed-file"));
    assert_eq!(all.len(), expected.len(), "rows lost or repeated");
    assert!(
        all == expected,
        "the two runs differ from the uninterrupted one"
    );
}

/// A consumer takes published files away as they appear (as a downstream loader
/// does): restores need only the sink's own in-progress files, and what was published
/// and taken plus what is left is still exactly the uninterrupted run's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_files_survive_sigkill_while_a_consumer_takes_them_away() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 100_000).await;
    run_to_end(job(&input, &dir.path().join("reference"), &[]));
    let expected = committed_lines(&dir.path().join("reference/windowed-file"));
    let out = dir.path().join("crashed");
    let published = out.join("windowed-file");
    let taken = dir.path().join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    let take = || {
        for e in std::fs::read_dir(&published).into_iter().flatten() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                std::fs::rename(&p, taken.join(&name)).unwrap();
            }
        }
    };
    let checkpoints = dir.path().join("checkpoints");
    let args = checkpointed(&checkpoints, "exactly-once");
    let mut kills = 0;
    for delay in kill_delays(4, 400, 1_200) {
        let mut child = job(&input, &out, &args).spawn().unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(delay) && child.try_wait().unwrap().is_none()
        {
            take();
            std::thread::sleep(Duration::from_millis(30));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
        }
        take();
    }
    assert!(kills >= 3, "only {kills} kills hit a running job");
    run_to_end(job(&input, &out, &args));
    take();
    let got = committed_lines(&taken);
    assert_eq!(
        got.len(),
        expected.len(),
        "rows lost or duplicated after {kills} kills"
    );
    assert!(got == expected, "output differs after {kills} kills");
}

/// The rows a run of the `sluice` binary said it read and wrote (`done: N rows in, M rows
/// out …`).
fn rows_in_and_out(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("done: "))
        .unwrap_or_else(|| panic!("no `done:` line: {stderr}"));
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty());
    let mut next = || numbers.next().unwrap().parse().unwrap();
    (next(), next())
}

/// Crashes at the moments a SIGKILL from outside rarely hits; the process aborts itself
/// there (`SLUICE_CRASH_AT`): just after a checkpoint's manifest is written and before any
/// file it covers is published; after one file of a checkpoint is published and before
/// the rest; after the bounded input's final checkpoint is written and before its last
/// files are published; after the job ended, before the process exits. Resumed from the
/// latest checkpoint, each writes exactly the uninterrupted output: a resume after a
/// crash mid-job reads only part of the input; one after the end reads and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_between_manifest_and_publish_and_at_the_very_end_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 40_000).await;
    let reference = job(&input, &dir.path().join("reference"), &[])
        .output()
        .unwrap();
    assert!(reference.status.success());
    let (total, _) = rows_in_and_out(&String::from_utf8_lossy(&reference.stderr));
    let expected = committed_lines(&dir.path().join("reference/windowed-file"));
    assert!(expected.len() > 30, "{} windows", expected.len());
    for (at, at_the_end) in [
        ("checkpoint-manifest:3", false),
        ("file-published:3", false),
        ("final-manifest", true),
        ("job-finished", true),
    ] {
        let name = at.replace(':', "-");
        let out = dir.path().join(&name);
        let checkpoints = dir.path().join(format!("{name}-checkpoints"));
        let args = checkpointed(&checkpoints, "exactly-once");
        let crashed = job(&input, &out, &args)
            .env("SLUICE_CRASH_AT", at)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&crashed.stderr);
        assert!(
            !crashed.status.success() && err.contains("SLUICE_CRASH_AT: aborting at"),
            "{at}: the run did not crash there: {err}"
        );
        let published = committed_lines(&out.join("windowed-file"));
        match at {
            // The final checkpoint holds the last windows, not yet published.
            "final-manifest" => assert!(published.len() < expected.len(), "{at}"),
            "job-finished" => assert!(published == expected, "{at}: not all published"),
            _ => {}
        }
        let resumed = job(&input, &out, &args).output().unwrap();
        let err = String::from_utf8_lossy(&resumed.stderr);
        assert!(resumed.status.success(), "{at}: {err}");
        assert!(
            err.contains("resumed from "),
            "{at}: nothing restored: {err}"
        );
        let (read, written) = rows_in_and_out(&err);
        if at_the_end {
            assert_eq!(
                (read, written),
                (0, 0),
                "{at}: a finished job ran again: {err}"
            );
        } else {
            assert!(
                0 < read && read < total,
                "{at}: read {read} of {total}: {err}"
            );
        }
        let got = committed_lines(&out.join("windowed-file"));
        assert_eq!(got.len(), expected.len(), "{at}: rows lost or repeated");
        assert!(got == expected, "{at}: output differs");
    }
}

/// The newest complete checkpoint is damaged (a state file changed on disk): a restore
/// from the latest passes over it to the one before and says so. Nothing is lost; what
/// the damaged checkpoint had committed is written again (at least once for that span,
/// as documented).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_checkpoint_is_passed_over_for_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 150_000).await;
    run_to_end(job(&input, &dir.path().join("reference"), &[]));
    let expected = committed_lines(&dir.path().join("reference/windowed-file"));
    let checkpoints = dir.path().join("checkpoints");
    let args = checkpointed(&checkpoints, "exactly-once");
    let out = dir.path().join("crashed");
    // Run until at least two checkpoints with state are complete, then SIGKILL.
    let complete_with_state = || -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&checkpoints)
            .map(|r| r.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        dirs.retain(|d| {
            d.join("_manifest.json").exists()
                && std::fs::read_dir(d)
                    .unwrap()
                    .any(|f| f.unwrap().path().extension().is_some_and(|x| x == "arrow"))
        });
        dirs.sort();
        dirs
    };
    let mut child = job(&input, &out, &args).spawn().unwrap();
    let start = std::time::Instant::now();
    while complete_with_state().len() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before two checkpoints"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoints");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let all = complete_with_state();
    let newest = all.last().unwrap();
    // Damage every state file of the newest complete checkpoint (one flipped byte).
    for f in std::fs::read_dir(newest).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|x| x == "arrow") {
            let mut bytes = std::fs::read(&f).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x40;
            std::fs::write(&f, bytes).unwrap();
        }
    }
    let resumed = job(&input, &out, &args).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
    let got = committed_lines(&out.join("windowed-file"));
    let distinct: BTreeSet<&String> = got.iter().collect();
    let want: BTreeSet<&String> = expected.iter().collect();
    assert!(distinct == want, "rows lost or changed after the fall-back");
}

/// (auction, window_start) → bids, from JSON lines.
fn bids_per_window(lines: &[String]) -> BTreeMap<(i64, String), i64> {
    let mut m = BTreeMap::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = (
            v["auction"].as_i64().unwrap(),
            v["window_start"].as_str().unwrap().to_string(),
        );
        let bids = v["bids"].as_i64().unwrap();
        let e = m.entry(key).or_insert(0);
        *e = bids.max(*e);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_through_repeated_sigkill() {
    let (expected, got) = uninterrupted_and_killed("at-least-once").await;
    let (expected, got) = (bids_per_window(&expected), bids_per_window(&got));
    // At-least-once: every window result is there, and counts are never below the truth
    // (without barrier alignment a replayed row may be counted twice).
    for (k, n) in &expected {
        let g = got.get(k).unwrap_or_else(|| panic!("window {k:?} lost"));
        assert!(g >= n, "window {k:?}: {g} bids, expected at least {n}");
    }
    let extra: BTreeSet<_> = got.keys().filter(|k| !expected.contains_key(k)).collect();
    assert!(extra.is_empty(), "windows that should not exist: {extra:?}");
}

/// At-most-once through repeated SIGKILLs: no checkpoints, so a run after a crash starts
/// over, and files are published only at the end of the input: nothing a crashed run
/// wrote is ever published, so no window is written twice and no count is above the
/// truth (rows may be lost, never repeated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_never_duplicates_through_repeated_sigkill() {
    let (expected, lines) = uninterrupted_and_killed("at-most-once").await;
    let (expected, got) = (bids_per_window(&expected), bids_per_window(&lines));
    for (k, g) in &got {
        let n = expected
            .get(k)
            .unwrap_or_else(|| panic!("window {k:?} should not exist"));
        assert!(
            g <= n,
            "window {k:?}: {g} bids, more than the {n} there are"
        );
    }
    assert_eq!(
        lines.len(),
        got.len(),
        "each window result written once (a window twice would be two lines)"
    );
}

/// The columns `windowed-file` reads.
fn file_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// The windowed-file job in this process, paced, with a checkpoint directory.
/// Count windows (tumbling and sliding) inside a real pipeline at parallelism 2, stopped
/// with a savepoint mid-stream and resumed at 1 and at 3. A count window's rows are the
/// key's rows in arrival order, so each key lives in one input file (one split): its
/// order is the same in every run. The two runs together write exactly the windows of an
/// uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_windows_resume_from_a_savepoint_at_another_parallelism() {
    const FILES: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows");
    std::fs::create_dir(&input).unwrap();
    for f in 0..FILES {
        let lines: String = (0..6_000u64)
            .map(|i| {
                let key = f + FILES * (i % 5);
                format!("{{\"k\":{key},\"v\":{}}}\n", i * 7 + f)
            })
            .collect();
        std::fs::write(input.join(format!("part-{f}.jsonl")), lines).unwrap();
    }
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
    ]));
    let counted = |out: &Path, parallelism: usize, paced: bool| {
        let p = Pipeline::new("count-windows");
        p.parallelism(parallelism)
            .checkpoint_dir(dir.path().join("cp").to_str().unwrap());
        let mut source = FileSource::json(&input).with_schema(std::sync::Arc::clone(&schema));
        if paced {
            source = source.rows_per_second(20_000.0);
        }
        let keyed = p.source(source).key_by(["k"]);
        for (name, window) in [
            ("tumbling", Window::count(5)),
            ("sliding", Window::count_sliding(6, 4)),
        ] {
            keyed
                .window(window)
                .aggregate([
                    count_star().alias("n"),
                    sum(col("v")).alias("total"),
                    max(col("v")).alias("last"),
                ])
                // Without the window's bounds: with no event time, they are the rows'
                // arrival times.
                .select([col("k"), col("n"), col("total"), col("last")])
                .sink(FileSink::json(out.join(name)));
        }
        p
    };
    let lines = |out: &Path| {
        let mut all = Vec::new();
        for name in ["tumbling", "sliding"] {
            all.extend(
                committed_lines(&out.join(name))
                    .into_iter()
                    .map(|l| format!("{name} {l}")),
            );
        }
        all.sort();
        all
    };
    let reference = dir.path().join("reference");
    counted(&reference, 2, false).run().await.unwrap();
    let expected = lines(&reference);
    assert!(expected.len() > 8_000, "{} windows", expected.len());

    let before = dir.path().join("before");
    let handle = counted(&before, 2, true).start().await.unwrap();
    let metrics = handle.metrics();
    let stop = handle.stop_handle();
    read_at_least(&metrics, 6_000).await;
    let savepoint = stop.savepoint(true).await.unwrap();
    handle.wait().await.unwrap();
    let first = lines(&before);
    assert!(
        !first.is_empty() && first.len() < expected.len() / 2,
        "the savepoint was not taken mid-stream ({} of {} windows before it)",
        first.len(),
        expected.len()
    );
    for parallelism in [1, 3] {
        let after = dir.path().join(format!("after-{parallelism}"));
        let p = counted(&after, parallelism, false);
        p.restore_from(RestoreFrom::Path(savepoint.clone()));
        p.run().await.unwrap();
        let mut all = first.clone();
        all.extend(lines(&after));
        all.sort();
        assert_eq!(
            all.len(),
            expected.len(),
            "parallelism {parallelism}: windows lost or repeated"
        );
        let missing: Vec<_> = expected
            .iter()
            .filter(|l| !all.contains(l))
            .take(5)
            .collect();
        let extra: Vec<_> = all
            .iter()
            .filter(|l| !expected.contains(l))
            .take(5)
            .collect();
        assert!(
            all == expected,
            "parallelism {parallelism}: windows differ; missing {missing:?}, extra {extra:?}"
        );
    }
}

fn windowed(input: &Path, out: &Path, parallelism: usize, checkpoints: &Path) -> Pipeline {
    let p = Pipeline::new("windowed-file");
    p.parallelism(parallelism)
        .checkpoint_dir(checkpoints.to_str().unwrap());
    p.source(
        FileSource::json(input)
            .with_schema(file_schema())
            .rows_per_second(40_000.0),
    )
    .event_time("date_time")
    .key_by(["auction"])
    .window(Window::tumbling(Duration::from_secs(1)))
    .aggregate([
        count_star().alias("bids"),
        sum(col("price")).alias("volume"),
    ])
    .sink(FileSink::json(out));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_at_parallelism_2_resumes_at_1_and_at_3() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 100_000).await;
    run_to_end(job(&input, &dir.path().join("reference"), &[]));
    let expected = committed_lines(&dir.path().join("reference/windowed-file"));

    // Run at parallelism 2 until about a third of the input is read, then stop with a
    // savepoint.
    let before = dir.path().join("before");
    let cp = dir.path().join("cp");
    let handle = windowed(&input, &before, 2, &cp).start().await.unwrap();
    let metrics = handle.metrics();
    let stop = handle.stop_handle();
    read_at_least(&metrics, 30_000).await;
    let savepoint = stop.savepoint(true).await.unwrap();
    handle.wait().await.unwrap();
    let first = committed_lines(&before);
    assert!(
        !first.is_empty() && first.len() < expected.len() / 2,
        "the savepoint was not taken mid-stream ({} of {} windows before it)",
        first.len(),
        expected.len()
    );

    for p in [1, 3] {
        let after = dir.path().join(format!("after-{p}"));
        let resumed = windowed(&input, &after, p, &dir.path().join(format!("cp-{p}")));
        resumed.restore_from(RestoreFrom::Path(savepoint.clone()));
        resumed.run().await.unwrap();
        let mut all = first.clone();
        all.extend(committed_lines(&after));
        all.sort();
        assert_eq!(all.len(), expected.len(), "parallelism {p}: row count");
        assert!(all == expected, "parallelism {p}: results differ");
    }
}

/// Restores that would lose or repeat rows are refused with the reason. A generator's
/// splits depend on the parallelism: its savepoint at parallelism 2 is refused at 1 and
/// at 3, and taken at 2, where the two runs together write every bid once. A source that
/// cannot say where it stands fails its job at the first checkpoint instead of taking
/// checkpoints that could not be restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_that_would_lose_or_repeat_rows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let generated = |out: &Path, parallelism: usize, paced: bool| {
        let p = Pipeline::new("generated");
        p.parallelism(parallelism)
            .checkpoint_dir(dir.path().join("cp").to_str().unwrap());
        let mut bids = NexmarkSource::bids().events(60_000).seed(9);
        if paced {
            bids = bids.rate_limit(20_000.0);
        }
        p.source(bids)
            .select([
                col("auction"),
                col("bidder"),
                col("price"),
                col("date_time"),
            ])
            .sink(FileSink::json(out));
        p
    };
    let reference = dir.path().join("reference");
    generated(&reference, 2, false).run().await.unwrap();
    let expected = committed_lines(&reference);

    let before = dir.path().join("before");
    let handle = generated(&before, 2, true).start().await.unwrap();
    let metrics = handle.metrics();
    let stop = handle.stop_handle();
    read_at_least(&metrics, 10_000).await;
    let savepoint = stop.savepoint(true).await.unwrap();
    handle.wait().await.unwrap();
    let first = committed_lines(&before);
    assert!(!first.is_empty() && first.len() < expected.len());

    for parallelism in [1, 3] {
        let after = dir.path().join(format!("after-{parallelism}"));
        let p = generated(&after, parallelism, false);
        p.restore_from(RestoreFrom::Path(savepoint.clone()));
        let e = p.run().await.unwrap_err().to_string();
        assert!(
            e.contains("restore generator sources at the parallelism of the checkpoint"),
            "parallelism {parallelism}: {e}"
        );
        assert!(committed_lines(&after).is_empty(), "{parallelism}: it ran");
    }
    let after = dir.path().join("after-2");
    let p = generated(&after, 2, false);
    p.restore_from(RestoreFrom::Path(savepoint.clone()));
    p.run().await.unwrap();
    let mut all = first;
    all.extend(committed_lines(&after));
    all.sort();
    assert_eq!(all.len(), expected.len(), "rows lost or repeated");
    assert!(all == expected, "output differs");

    // A source without positions.
    let rows = arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Int64, false),
        ])),
        vec![std::sync::Arc::new(arrow::array::Int64Array::from(vec![
            1, 2,
        ]))],
    )
    .unwrap();
    let (mut registry, _) = crate::support::registry_with_collect();
    registry.register_source(crate::support::StallingConnector { rows });
    let p = Pipeline::new("positionless");
    p.registry(registry)
        .checkpointing(Duration::from_millis(50))
        .checkpoint_dir(dir.path().join("cp-positionless").to_str().unwrap());
    p.source(sluice::plan::ConnectorSpec::new("stalling"))
        .sink(crate::support::collect());
    // The source never ends: only the failed checkpoint ends the job.
    let e = tokio::time::timeout(Duration::from_secs(120), p.run())
        .await
        .expect("the job went on without checkpoints")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot resume from a position"), "{e}");
}

/// The windowed file job (1 s tumbling count and volume per auction, parallelism 2,
/// checkpoints every 100 ms into `dir/cp`) writing to `out`, with a second sink `failing`
/// (a `fail-once` sink sharing `failed`).
fn windowed_with_failure(
    dir: &Path,
    input: &Path,
    out: &Path,
    failed: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    failing: sluice::plan::ConnectorSpec,
) -> Pipeline {
    let mut registry = sluice::connectors::registry();
    registry.register_sink(crate::support::FailOnceConnector {
        failed: std::sync::Arc::clone(failed),
    });
    let p = Pipeline::new("windowed-file");
    p.parallelism(2)
        .registry(registry)
        .checkpointing(Duration::from_millis(100))
        .checkpoint_dir(dir.join("cp").to_str().unwrap());
    let windows = p
        .source(
            FileSource::json(input)
                .with_schema(file_schema())
                .rows_per_second(40_000.0),
        )
        .event_time("date_time")
        .key_by(["auction"])
        .window(Window::tumbling(Duration::from_secs(1)))
        .aggregate([
            count_star().alias("bids"),
            sum(col("price")).alias("volume"),
        ]);
    windows.sink(FileSink::json(out));
    windows.sink(failing);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_restarts_from_its_latest_checkpoint_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 60_000).await;
    run_to_end(job(&input, &dir.path().join("reference"), &[]));
    let expected = committed_lines(&dir.path().join("reference/windowed-file"));

    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let out = dir.path().join("out");
    // Fails when one of the two subtasks has seen a quarter of all window rows: about
    // half-way through the input, a few checkpoints complete by then. (Counted in rows,
    // not batches: under load one watermark fires several windows in one batch.)
    let p = windowed_with_failure(
        dir.path(),
        &input,
        &out,
        &failed,
        sluice::plan::ConnectorSpec::new("fail-once")
            .with_option("fail-at-record", (expected.len() / 4).max(1)),
    );
    let mut starts = Vec::new();
    p.run_with_restarts(
        sluice::restart::RestartStrategy::FixedDelay {
            attempts: 2,
            delay: Duration::from_millis(10),
        },
        |h| starts.push(h.metrics()),
    )
    .await
    .unwrap();
    assert!(
        failed.load(std::sync::atomic::Ordering::SeqCst),
        "the failure was injected"
    );
    assert_eq!(starts.len(), 2, "one failure, one restart");
    let input_rows: u64 = std::fs::read_dir(&input)
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .count() as u64
        })
        .sum();
    let (first, second) = (starts[0].source_records(), starts[1].source_records());
    assert!(
        second < input_rows && first + second >= input_rows,
        "the restart resumed mid-input ({first} rows read, then {second} of {input_rows})"
    );
    assert!(
        committed_lines(&out) == expected,
        "output differs after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_operator_fails_its_job_with_its_stack_and_the_job_resumes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 40_000).await;
    run_to_end(job(&input, &dir.path().join("reference"), &[]));
    let expected = committed_lines(&dir.path().join("reference/windowed-file"));

    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let out = dir.path().join("out");
    // Panics on the 2 000th window row it sees, after a few checkpoints.
    let build = || {
        windowed_with_failure(
            dir.path(),
            &input,
            &out,
            &failed,
            sluice::plan::ConnectorSpec::new("fail-once")
                .with_option("fail-at-record", 2_000)
                .with_option("mode", "panic"),
        )
    };
    // The panic is the job's failure, with its message and stack; this process goes on.
    let e = build().run().await.unwrap_err();
    assert!(failed.load(std::sync::atomic::Ordering::SeqCst));
    assert!(
        e.message.contains("panicked") && e.message.contains("injected panic at record"),
        "{e}"
    );
    assert!(e.message.contains("support.rs"), "the panic's place: {e}");
    let stack = e.backtrace_text().expect("a panic keeps its stack");
    assert!(stack.contains("FailOnceOperator"), "{stack}");
    // Resumed from its latest checkpoint, the job ends with exactly the batch answer.
    let resumed = build();
    resumed.restore_from(RestoreFrom::Latest);
    resumed.run().await.unwrap();
    assert!(
        committed_lines(&out) == expected,
        "output differs after the panic and the restore"
    );
}

/// Records each attempt's start and each delay the strategy asked for.
#[derive(Debug, Default)]
struct Attempts {
    starts: Vec<std::time::Instant>,
    delays: Vec<Duration>,
}

impl sluice::RestartHooks for Attempts {
    fn started(&mut self, _handle: &sluice::runtime::JobHandle) {
        self.starts.push(std::time::Instant::now());
    }

    fn waiting(&mut self, delay: Duration) {
        self.delays.push(delay);
    }
}

/// The delays `strategy` asked for between a job's attempts (it fails at once, every
/// time), each checked to have been waited: the gap between the attempts' starts is at
/// least the delay (the job's own start adds to it).
async fn restart_gaps(strategy: sluice::restart::RestartStrategy) -> Vec<Duration> {
    let job = sluice::plan_sql(
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '100');
         CREATE TABLE sink (x BIGINT) WITH ('connector' = 'blackhole');
         INSERT INTO sink SELECT auction / (auction - auction) FROM bid;",
        &[],
    )
    .unwrap();
    let p = Pipeline::from_plan(job.plan.unwrap());
    let mut attempts = Attempts::default();
    let first = p.start().await.unwrap();
    attempts.starts.push(std::time::Instant::now());
    let e = p
        .supervise(first, strategy, &mut attempts)
        .await
        .unwrap_err();
    assert!(
        e.to_string().to_lowercase().contains("division by zero"),
        "{e}"
    );
    let gaps: Vec<Duration> = attempts.starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), attempts.delays.len(), "one wait per restart");
    for (gap, delay) in gaps.iter().zip(&attempts.delays) {
        assert!(gap >= delay, "waited {gap:?} of {delay:?}: {attempts:?}");
    }
    attempts.delays
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_restart_strategy_waits_as_it_says() {
    use sluice::restart::RestartStrategy as R;
    let ms = Duration::from_millis;
    // The delays each strategy asked for, exactly (each was waited: `restart_gaps`).
    let fixed = restart_gaps(R::FixedDelay {
        attempts: 3,
        delay: ms(200),
    })
    .await;
    assert_eq!(fixed, [ms(200); 3]);
    let exponential = restart_gaps(R::ExponentialDelay {
        initial: ms(50),
        max: ms(200),
        multiplier: 2.0,
        jitter: 0.0,
        reset_after: Duration::from_secs(3600),
        attempts: Some(4),
    })
    .await;
    assert_eq!(
        exponential,
        [ms(50), ms(100), ms(200), ms(200)],
        "doubling, capped"
    );
    let rate = restart_gaps(R::FailureRate {
        max_failures: 2,
        interval: Duration::from_secs(60),
        delay: ms(100),
    })
    .await;
    assert_eq!(rate, [ms(100); 2], "the third failure in a minute gives up");
    assert!(restart_gaps(R::None).await.is_empty());
    println!("restart gaps: fixed {fixed:?}, exponential {exponential:?}, failure-rate {rate:?}");
}

/// Moves the job's input away when the job first fails, and records what follows.
struct InputGone {
    input: PathBuf,
    failures: Vec<(String, bool)>,
    started: usize,
}

impl sluice::RestartHooks for InputGone {
    fn started(&mut self, _handle: &sluice::runtime::JobHandle) {
        self.started += 1;
    }

    fn failed(&mut self, error: &sluice::SluiceError, restarting: bool) -> bool {
        if self.failures.is_empty() {
            std::fs::rename(&self.input, self.input.with_extension("moved")).unwrap();
        }
        self.failures.push((error.to_string(), restarting));
        true
    }
}

/// A restart that cannot start (its input moved away) is one more failure: the strategy
/// decides again after each, and gives up when its attempts are used, with the reason
/// the last start failed.
#[tokio::test]
async fn a_restart_that_cannot_start_counts_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.jsonl");
    let rows: String = (0..100).map(|i| format!("{{\"x\": {i}}}\n")).collect();
    std::fs::write(&input, rows).unwrap();
    let job = sluice::plan_sql(
        &format!(
            "CREATE TABLE src (x BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
             CREATE TABLE sink (y BIGINT) WITH ('connector' = 'blackhole');
             INSERT INTO sink SELECT 100 / (x - 99) FROM src;",
            input.display()
        ),
        &[],
    )
    .unwrap();
    let p = Pipeline::from_plan(job.plan.unwrap());
    let mut hooks = InputGone {
        input: input.clone(),
        failures: Vec::new(),
        started: 0,
    };
    let first = p.start().await.unwrap();
    let strategy = sluice::restart::RestartStrategy::FixedDelay {
        attempts: 3,
        delay: Duration::from_millis(10),
    };
    let e = p.supervise(first, strategy, &mut hooks).await.unwrap_err();
    let restarting: Vec<bool> = hooks.failures.iter().map(|f| f.1).collect();
    assert_eq!(
        restarting,
        [true, true, true, false],
        "the run's failure, then three restarts that could not start: {:?}",
        hooks.failures
    );
    assert_eq!(hooks.started, 0, "no restart started");
    assert!(
        hooks.failures[0]
            .0
            .to_lowercase()
            .contains("division by zero"),
        "{:?}",
        hooks.failures
    );
    for (f, _) in &hooks.failures[1..] {
        assert!(
            f.contains("rows.jsonl"),
            "the start failed on the input: {f}"
        );
    }
    assert_eq!(e.to_string(), hooks.failures[3].0);
}

#[tokio::test]
async fn a_checkpoint_of_another_job_graph_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 2_000).await;
    let cp = dir.path().join("cp");
    // A finished exactly-once job leaves its final checkpoint.
    windowed(&input, &dir.path().join("o1"), 1, &cp)
        .run()
        .await
        .unwrap();
    let other = Pipeline::new("other");
    other
        .checkpoint_dir(cp.to_str().unwrap())
        .restore_from(RestoreFrom::Latest);
    other
        .source(FileSource::json(&input).with_schema(sluice::connectors::nexmark::bid_schema()))
        .sink(BlackholeSink::new());
    let err = other.run().await.unwrap_err().to_string();
    assert!(err.contains("different job graph"), "{err}");

    // The same job with another number of key groups cannot take the state back.
    let regrouped = windowed(&input, &dir.path().join("o3"), 1, &cp);
    regrouped
        .max_parallelism(64)
        .restore_from(RestoreFrom::Latest);
    let err = regrouped.run().await.unwrap_err().to_string();
    assert!(
        err.contains("has 128 key groups, this job 64: keep max_parallelism unchanged"),
        "{err}"
    );

    // Resuming the finished job itself reads nothing more and writes nothing more.
    let again = windowed(&input, &dir.path().join("o2"), 1, &cp);
    again.restore_from(RestoreFrom::Latest);
    again.run().await.unwrap();
    assert!(committed_lines(&dir.path().join("o2")).is_empty());
}

/// A SQL job with stateful operators of three kinds: an interval self-join, a Top-N
/// without windows and an OVER aggregate (a RANGE frame, whose peers make its output
/// independent of arrival order), into files, paced, checkpointed into `checkpoints`.
fn sql_job(input: &Path, out: &Path, parallelism: usize, checkpoints: &Path) -> Pipeline {
    let script = format!(
        "SET 'parallelism.default' = '{parallelism}';
         CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3),
           WATERMARK FOR date_time AS date_time - INTERVAL '200' MILLISECOND)
         WITH ('connector' = 'filesystem', 'path' = '{input}', 'format' = 'json',
               'rows-per-second' = '40000');
         CREATE TABLE pairs WITH ('connector' = 'filesystem', 'path' = '{out}/pairs', 'format' = 'json');
         CREATE TABLE top3 WITH ('connector' = 'filesystem', 'path' = '{out}/top3', 'format' = 'debezium-json');
         CREATE TABLE recent WITH ('connector' = 'filesystem', 'path' = '{out}/recent', 'format' = 'json');
         INSERT INTO pairs
         SELECT a.auction, a.bidder, a.price AS first_price, b.price AS next_price
         FROM bids a JOIN bids b ON a.auction = b.auction AND a.bidder = b.bidder
           AND b.date_time > a.date_time AND b.date_time <= a.date_time + INTERVAL '10' MILLISECOND;
         INSERT INTO top3
         SELECT auction, rn, price FROM (
           SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rn FROM bids
         ) WHERE rn <= 3;
         INSERT INTO recent
         SELECT auction, bidder, price, date_time,
                MAX(price) OVER (PARTITION BY auction ORDER BY date_time
                                 RANGE BETWEEN INTERVAL '50' MILLISECOND PRECEDING AND CURRENT ROW) AS recent_max
         FROM bids;",
        input = input.display(),
        out = out.display(),
    );
    let job = sluice::plan_sql(&script, &[("pipeline.name", "sql-state")]).unwrap();
    let p = Pipeline::from_plan(job.plan.unwrap());
    p.checkpoint_dir(checkpoints.to_str().unwrap());
    p
}

/// The top-3 prices per auction of the bids in `input`, by DataFusion's `ROW_NUMBER`.
async fn batch_top3(input: &Path) -> BTreeMap<(i64, i64), i64> {
    use arrow::array::{Array, Int64Array};
    let df = datafusion::prelude::SessionContext::new();
    df.register_json(
        "bids",
        input.to_str().unwrap(),
        datafusion::prelude::JsonReadOptions::default().file_extension(".jsonl"),
    )
    .await
    .unwrap();
    let batches = df
        .sql(
            "SELECT auction, CAST(rn AS BIGINT), price FROM (
               SELECT auction, price, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rn
               FROM bids) WHERE rn <= 3",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut top = BTreeMap::new();
    for b in &batches {
        let c = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        let (a, r, p) = (c(0), c(1), c(2));
        for i in 0..a.len() {
            top.insert((a.value(i), r.value(i)), p.value(i));
        }
    }
    top
}

/// The final top-3 per auction: the Debezium changelog applied (`c` adds its `after`
/// row, `d` takes its `before` row back), in any order; each row must end up there once
/// or not at all, and each (auction, rank) once.
fn final_top3(lines: &[String]) -> BTreeMap<(i64, i64), i64> {
    let mut held: BTreeMap<(i64, i64, i64), i64> = BTreeMap::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let (image, delta) = match v["op"].as_str() {
            Some("c") => (&v["after"], 1),
            _ => (&v["before"], -1),
        };
        let field = |f: &str| image[f].as_i64().unwrap();
        *held
            .entry((field("auction"), field("rn"), field("price")))
            .or_default() += delta;
    }
    let mut top = BTreeMap::new();
    for ((auction, rn, price), n) in held {
        assert!(
            n == 0 || n == 1,
            "({auction}, {rn}, {price}) held {n} times"
        );
        if n == 1 {
            assert!(
                top.insert((auction, rn), price).is_none(),
                "rank {rn} of {auction} twice"
            );
        }
    }
    top
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_join_top_n_and_over_state_survive_a_savepoint_and_a_change_of_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 100_000).await;
    let reference = dir.path().join("reference");
    sql_job(&input, &reference, 2, &dir.path().join("cp-ref"))
        .run()
        .await
        .unwrap();
    let pairs = committed_lines(&reference.join("pairs"));
    let top3 = final_top3(&committed_lines(&reference.join("top3")));
    let recent = committed_lines(&reference.join("recent"));
    assert_eq!(recent.len(), 92_000, "an OVER row per bid");
    assert!(
        pairs.len() > 500 && top3.len() > 1_000,
        "too little output to compare ({} pairs, {} top-3 ranks)",
        pairs.len(),
        top3.len()
    );
    // Judged from outside too: each rank's price is DataFusion's ROW_NUMBER's (ties in
    // price may be ranked either way; a rank's price is the same).
    assert!(
        top3 == batch_top3(&input).await,
        "the uninterrupted run's top-3 differs from DataFusion's ROW_NUMBER"
    );

    let before = dir.path().join("before");
    let handle = sql_job(&input, &before, 2, &dir.path().join("cp"))
        .start()
        .await
        .unwrap();
    let metrics = handle.metrics();
    let stop = handle.stop_handle();
    read_at_least(&metrics, 30_000).await;
    let savepoint = stop.savepoint(true).await.unwrap();
    handle.wait().await.unwrap();
    let first_pairs = committed_lines(&before.join("pairs"));
    // Asked for after 30 % of the input; on a loaded machine the barrier can take a while
    // to go through, so "mid-stream" is anything short of three quarters.
    assert!(
        first_pairs.len() < pairs.len() * 3 / 4,
        "the savepoint was not taken mid-stream ({} of {} joined rows before it, {} bids read)",
        first_pairs.len(),
        pairs.len(),
        metrics.source_records()
    );
    for p in [1, 3] {
        let after = dir.path().join(format!("after-{p}"));
        let resumed = sql_job(&input, &after, p, &dir.path().join(format!("cp-{p}")));
        resumed.restore_from(RestoreFrom::Path(savepoint.clone()));
        resumed.run().await.unwrap();
        let mut all = first_pairs.clone();
        all.extend(committed_lines(&after.join("pairs")));
        all.sort();
        assert_eq!(all.len(), pairs.len(), "parallelism {p}: joined rows");
        assert!(all == pairs, "parallelism {p}: joined rows differ");
        let mut lines = committed_lines(&before.join("top3"));
        lines.extend(committed_lines(&after.join("top3")));
        assert!(
            final_top3(&lines) == top3,
            "parallelism {p}: the top-3 per auction differs"
        );
        // The OVER aggregate's rows: every bid once, with its frame's value.
        let mut over = committed_lines(&before.join("recent"));
        over.extend(committed_lines(&after.join("recent")));
        over.sort();
        assert_eq!(over.len(), recent.len(), "parallelism {p}: OVER rows");
        assert!(over == recent, "parallelism {p}: OVER rows differ");
    }
}

/// A job that fails on its first rows, run with restart flags: how many restarts it
/// made before giving up (counted from its log).
fn restarts_before_giving_up(flags: &[&str]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("failing.sql");
    std::fs::write(
        &sql,
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '1000');
         CREATE TABLE sink (x BIGINT) WITH ('connector' = 'blackhole');
         INSERT INTO sink SELECT auction / (auction - auction) FROM bid;",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg(&sql)
        .arg("--quiet")
        .args(flags)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the job cannot succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("division by zero"), "{err}");
    err.matches("job failed; restarting").count()
}

#[test]
fn restart_strategies_restart_as_often_as_they_say() {
    assert_eq!(restarts_before_giving_up(&[]), 0);
    assert_eq!(
        restarts_before_giving_up(&["--restart-attempts", "2", "--restart-delay", "10ms"]),
        2
    );
    assert_eq!(
        restarts_before_giving_up(&[
            "--restart-strategy",
            "exponential-delay",
            "--restart-attempts",
            "3",
            "--restart-delay",
            "5ms",
            "--restart-max-delay",
            "20ms",
        ]),
        3
    );
    // Failure rate: 2 failures allowed per minute, so the third gives up.
    assert_eq!(
        restarts_before_giving_up(&[
            "--restart-strategy",
            "failure-rate",
            "--restart-max-failures",
            "2",
            "--restart-interval",
            "1m",
            "--restart-delay",
            "5ms",
        ]),
        2
    );
}
