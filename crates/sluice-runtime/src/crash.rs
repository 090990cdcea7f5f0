//! Crash points for recovery tests: with `SLUICE_CRASH_AT=<point>` (or `<point>:<n>`) in
//! its environment, the process aborts — as abruptly as `kill -9`, no destructor runs —
//! the first (or n-th) time it reaches that point. Without the variable a crash point
//! costs one load of a cached value; they sit on per-checkpoint paths, never per row.
//!
//! Points:
//!
//! | point | where |
//! |---|---|
//! | `checkpoint-manifest` | a checkpoint's manifest is written (it is complete), before any task hears so and publishes |
//! | `final-manifest` | the final checkpoint of a bounded job is written, before its last files are published |
//! | `file-published` | a file sink published one file (renamed it in place) |
//! | `job-finished` | every task of a job ended and its last files are published, before the job reports its end |

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the crash point.
pub const CRASH_AT: &str = "SLUICE_CRASH_AT";

/// Aborts the process here if `SLUICE_CRASH_AT` names `point` and this is its n-th visit.
pub fn point(point: &str) {
    static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var(CRASH_AT).ok()?;
        let (name, n) = match v.rsplit_once(':') {
            Some((name, n)) => (name, n.parse().ok()?),
            None => (v.as_str(), 1),
        };
        Some((name.to_owned(), n))
    });
    let Some((name, n)) = at else { return };
    if name == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        eprintln!("{CRASH_AT}: aborting at `{point}` (visit {n})");
        std::process::abort();
    }
}
