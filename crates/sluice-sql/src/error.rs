//! SQL errors: what is wrong, where (line and column), and how to fix it.

use std::fmt;

use datafusion_common::DataFusionError;
use datafusion_sql::sqlparser::parser::ParserError;
use sluice_types::SluiceError;

use crate::script::Pos;

/// An error in a SQL script, located where it could be.
#[derive(Debug)]
pub struct SqlError {
    /// Where in the script, when known.
    pub pos: Option<Pos>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) if p.line > 0 => write!(
                f,
                "SQL error at line {}, column {}: {}",
                p.line, p.column, self.message
            ),
            _ => write!(f, "SQL error: {}", self.message),
        }
    }
}

impl std::error::Error for SqlError {}

impl SqlError {
    /// An error at a position.
    pub fn at(pos: Pos, message: impl Into<String>) -> Self {
        Self {
            pos: Some(pos),
            message: message.into(),
        }
    }

    /// An error without a known position.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            pos: None,
            message: message.into(),
        }
    }

    /// The error as shown under the SQL it concerns, `text`: `line L, column C: message`,
    /// then that line and a caret under the column.
    pub fn in_text(&self, text: &str) -> String {
        let Some(pos) = self.pos.filter(|p| p.line > 0) else {
            return self.message.clone();
        };
        let mut out = format!("line {}, column {}: {}", pos.line, pos.column, self.message);
        if let Some((line, under)) = self.marked_line(text) {
            out.push_str(&format!("\n  {line}\n  {under}^"));
        }
        out
    }

    /// The line of `text` the error is on, and the blanks that put a caret under its
    /// column (tabs kept, so it lines up).
    pub fn marked_line<'a>(&self, text: &'a str) -> Option<(&'a str, String)> {
        let pos = self.pos.filter(|p| p.line > 0)?;
        let line = text.lines().nth(pos.line as usize - 1)?;
        let under = line
            .chars()
            .take(pos.column.saturating_sub(1) as usize)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        Some((line, under))
    }

    /// Locates an error that has no position yet (at its statement, say).
    pub fn or_at(mut self, pos: Pos) -> Self {
        if self.pos.is_none() {
            self.pos = Some(pos);
        }
        self
    }

    /// A construct Sluice does not support (yet).
    pub fn unsupported(what: impl fmt::Display) -> Self {
        Self::new(format!("{what} is not supported in streaming SQL"))
    }

    /// From a sqlparser error, whose message carries its own position.
    pub fn parser(e: ParserError, fallback: Pos) -> Self {
        let text = match e {
            ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
            ParserError::RecursionLimitExceeded => {
                "the statement nests too deeply (recursion limit)".to_string()
            }
        };
        // sqlparser appends " at Line: L, Column: C"; lift it into the position.
        if let Some(i) = text.rfind(" at Line: ") {
            let loc = &text[i + " at Line: ".len()..];
            let mut parts = loc.split(", Column: ");
            let line = parts.next().and_then(|l| l.trim().parse().ok());
            let column = parts.next().and_then(|c| c.trim().parse().ok());
            if let (Some(line), Some(column)) = (line, column) {
                return Self::at(Pos { line, column }, text[..i].to_string());
            }
        }
        Self::at(fallback, text)
    }

    /// From a DataFusion planning error, located by its diagnostic when it has one.
    pub fn datafusion(e: DataFusionError) -> Self {
        let pos = e.diagnostic().and_then(|d| d.span).map(|s| Pos {
            line: s.start.line,
            column: s.start.column,
        });
        let message = match e.find_root() {
            DataFusionError::SchemaError(inner, _) => inner.to_string(),
            DataFusionError::Plan(m) | DataFusionError::NotImplemented(m) => m.clone(),
            other => other.to_string(),
        };
        let message = message
            .replace("Error during planning: ", "")
            .replace("This feature is not implemented: ", "not supported: ");
        Self {
            pos: pos.filter(|p| p.line > 0),
            message,
        }
    }
}

impl From<SqlError> for SluiceError {
    fn from(e: SqlError) -> Self {
        SluiceError::user(e.to_string())
    }
}

impl From<SluiceError> for SqlError {
    fn from(e: SluiceError) -> Self {
        SqlError::new(match e.operator {
            Some(op) => format!("{} (in `{op}`)", e.message),
            None => e.message,
        })
    }
}

/// `Result` with [`SqlError`].
pub type Result<T, E = SqlError> = std::result::Result<T, E>;

/// The candidate closest to `word` (case-insensitive edit distance), if it is close
/// enough to be what was meant: at most a third of its letters wrong, one at least.
///
/// ```
/// use sluice_sql::error::closest;
/// assert_eq!(closest("fromat", ["path", "format"]), Some("format"));
/// assert_eq!(closest("xyz", ["path", "format"]), None);
/// ```
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word: Vec<char> = word.to_lowercase().chars().collect();
    let distance = |other: &str| {
        let other: Vec<char> = other.to_lowercase().chars().collect();
        let mut row: Vec<usize> = (0..=other.len()).collect();
        for (i, a) in word.iter().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, b) in other.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(a != b)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[other.len()]
    };
    let bound = (word.len() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(c), c))
        .filter(|(d, _)| *d <= bound)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
