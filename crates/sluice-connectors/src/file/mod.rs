//! Files: `'connector' = 'filesystem'`, CSV, JSON lines and Parquet, as sources and sinks.
//!
//! Source options: `path` (a file, or a directory whose non-hidden files are read in
//! name order, one split each), `format`, `csv.field-delimiter`, `csv.header`.
//! The schema is the declared one (CSV and JSON; inferred from the first file if none is
//! declared), or the Parquet file's own.
//!
//! Sink options: `path` (a directory), `format`, `csv.field-delimiter`, `csv.header`.
//! Each subtask writes `.part-<subtask>.<ext>.inprogress` and renames it to
//! `part-<subtask>.<ext>` when its input ends, so a reader never sees a partial file.

mod partition;
mod prune;
mod sink;
mod source;

pub use sink::{FileSink, FileSinkConnector};
pub use source::{FileSource, FileSourceConnector};
