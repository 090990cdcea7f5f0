//! Splits a SQL script into statements and takes out the parts of Flink's dialect that
//! sqlparser does not parse, keeping every position where it was.
//!
//! ```text
//!  script ──tokenize──> statements (split at `;`)
//!    SET 'k' = 'v'                      ──> Setting
//!    CREATE TABLE t (… WATERMARK FOR …,  ──> watermark, computed columns, primary key
//!                    ts AS expr, …)          and WITH options taken out (blanked),
//!      WITH ('k' = 'v', …)                   the rest parsed by sqlparser
//!    … TABLE(TUMBLE(TABLE t, …)) …       ──> the inner `TABLE` keyword blanked
//! ```
//!
//! Blanking replaces characters with spaces and keeps newlines, so every line and column
//! that sqlparser or DataFusion reports is the line and column of the original script.

use std::collections::BTreeMap;

use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::error::SqlError;

/// A position in the script: line and column, from 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl From<Location> for Pos {
    fn from(l: Location) -> Self {
        Pos {
            line: l.line,
            column: l.column,
        }
    }
}

/// A piece of SQL text taken out of a statement, with where it began.
#[derive(Clone, Debug)]
pub struct Snippet {
    /// The text.
    pub text: String,
    /// Where it began in the script.
    pub pos: Pos,
}

/// What the pre-pass took out of a `CREATE TABLE`.
#[derive(Clone, Debug, Default)]
pub struct TableExtras {
    /// `WATERMARK FOR column AS expr`: the column and the expression.
    pub watermark: Option<(String, Snippet)>,
    /// `name AS expr` computed columns, in order.
    pub computed: Vec<(String, Snippet)>,
    /// `PRIMARY KEY (a, b) NOT ENFORCED`.
    pub primary_key: Vec<String>,
    /// `col TYPE METADATA [FROM 'key'] [VIRTUAL]`: column, metadata key, virtual.
    pub metadata: Vec<(String, String, bool)>,
    /// `col MAP<K, V>` columns (sqlparser reads them as BYTEA): column, K, V.
    pub maps: Vec<(String, String, String)>,
    /// `WITH ('key' = 'value', …)`.
    pub options: BTreeMap<String, String>,
    /// Where each option's key is written.
    pub option_pos: BTreeMap<String, Pos>,
    /// `PARTITIONED BY (a, b)`.
    pub partition_by: Vec<String>,
}

/// One statement of a script.
#[derive(Clone, Debug)]
pub enum RawStatement {
    /// `SET 'key' = 'value'`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Where the statement began.
        pos: Pos,
    },
    /// Flink's `CREATE [TEMPORARY [SYSTEM]] FUNCTION [IF NOT EXISTS] name AS 'class'
    /// [LANGUAGE …] [USING JAR …]`.
    Function {
        /// The function's name.
        name: String,
        /// The class that implements it (in Flink).
        class: String,
        /// `LANGUAGE …` (JAVA unless given).
        language: String,
        /// Whether `USING JAR` names jars to load.
        jars: bool,
        /// Where the statement began.
        pos: Pos,
    },
    /// Anything else: text for sqlparser (the whole script with everything outside the
    /// statement, and what the pre-pass took out, blanked) and what was taken out.
    Sql {
        /// Text with the original positions.
        text: String,
        /// Where the statement began.
        pos: Pos,
        /// Extras of a `CREATE TABLE`.
        extras: Option<Box<TableExtras>>,
        /// Where tables read with `FOR SYSTEM_TIME AS OF …` (lookup tables) are named.
        lookups: Vec<Pos>,
    },
}

/// Byte offsets of line starts, to turn token locations into byte ranges.
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }

    /// Byte offset of a location (line and column from 1; the column counts characters).
    fn offset(&self, l: Location) -> usize {
        let Some(&start) = self.starts.get((l.line as usize).saturating_sub(1)) else {
            return self.text.len();
        };
        let line = &self.text[start..];
        let col = (l.column as usize).saturating_sub(1);
        start + line.char_indices().nth(col).map_or(line.len(), |(i, _)| i)
    }
}

/// A statement's tokens without whitespace and comments.
struct Stmt<'t> {
    tokens: Vec<&'t TokenWithSpan>,
    /// Byte range of the statement in the script.
    start: usize,
    end: usize,
}

fn is_kw(t: &Token, kw: Keyword) -> bool {
    matches!(t, Token::Word(w) if w.keyword == kw && w.quote_style.is_none())
}

fn word(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.value.clone()),
        _ => None,
    }
}

fn string_value(t: &Token) -> Option<String> {
    match t {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => Some(s.clone()),
        Token::Number(n, _) => Some(n.clone()),
        Token::Word(w) => Some(w.value.clone()),
        _ => None,
    }
}

/// Splits and pre-processes a script.
pub fn split(script: &str) -> Result<Vec<RawStatement>, SqlError> {
    if script.len() > MAX_SCRIPT_BYTES {
        return Err(SqlError::new(format!(
            "the script is {} bytes; a script may have at most {MAX_SCRIPT_BYTES}",
            script.len()
        )));
    }
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, script)
        .tokenize_with_location()
        .map_err(|e| SqlError::at(Pos::from(e.location), e.message.clone()))?;
    let lines = Lines::new(script);
    let mut statements = Vec::new();
    let mut current: Vec<&TokenWithSpan> = Vec::new();
    let mut stmts: Vec<Stmt<'_>> = Vec::new();
    for t in &tokens {
        match &t.token {
            Token::Whitespace(_) => {}
            Token::SemiColon => {
                if let Some(first) = current.first() {
                    let start = lines.offset(first.span.start);
                    stmts.push(Stmt {
                        tokens: std::mem::take(&mut current),
                        start,
                        end: lines.offset(t.span.start),
                    });
                }
            }
            _ => current.push(t),
        }
    }
    if let Some(first) = current.first() {
        let start = lines.offset(first.span.start);
        stmts.push(Stmt {
            tokens: current,
            start,
            end: script.len(),
        });
    }
    if stmts.len() > MAX_STATEMENTS {
        return Err(SqlError::at(
            Pos::from(stmts[MAX_STATEMENTS].tokens[0].span.start),
            format!("a script may have at most {MAX_STATEMENTS} statements"),
        ));
    }
    for s in &stmts {
        check_operators(&s.tokens)?;
    }
    // Flink's statement sets, `EXECUTE STATEMENT SET BEGIN …; …; END;` and the SQL
    // client's `BEGIN STATEMENT SET; …; END;`: every INSERT of a script already forms one
    // job, so the wrapper goes and its INSERTs stay; `EXECUTE INSERT …` is an INSERT.
    let mut set: Option<Pos> = None;
    for mut s in stmts {
        let pos = Pos::from(s.tokens[0].span.start);
        let words: Vec<String> = s.tokens.iter().take(4).map(|t| bare_word(t)).collect();
        let starts =
            |ws: &[&str]| words.len() >= ws.len() && ws.iter().zip(&words).all(|(a, b)| a == b);
        let opens = if starts(&["EXECUTE", "STATEMENT", "SET", "BEGIN"]) {
            Some(4)
        } else if starts(&["BEGIN", "STATEMENT", "SET"]) && s.tokens.len() == 3 {
            Some(3)
        } else {
            None
        };
        if let Some(n) = opens {
            if let Some(open) = set {
                return Err(SqlError::at(
                    pos,
                    format!(
                        "a statement set is already open (line {}); end it with END first",
                        open.line
                    ),
                ));
            }
            set = Some(pos);
            s.tokens.drain(..n);
            let Some(first) = s.tokens.first() else {
                continue;
            };
            s.start = lines.offset(first.span.start);
        } else if words == ["END"] {
            if set.take().is_none() {
                return Err(SqlError::at(pos, "END without a statement set to end"));
            }
            continue;
        } else if starts(&["EXECUTE", "INSERT"]) {
            s.tokens.remove(0);
            s.start = lines.offset(s.tokens[0].span.start);
        }
        if set.is_some() && !is_kw(&s.tokens[0].token, Keyword::INSERT) {
            return Err(SqlError::at(
                Pos::from(s.tokens[0].span.start),
                "a statement set holds INSERT INTO statements only",
            ));
        }
        statements.push(preprocess(script, &lines, s)?);
    }
    if let Some(open) = set {
        return Err(SqlError::at(open, "the statement set has no END"));
    }
    Ok(statements)
}

/// Whether an option key names a secret (a password, a token, a private key, …): its
/// value is never shown back.
pub fn is_secret_option(key: &str) -> bool {
    const MARKS: &[&str] = &[
        "password",
        "secret",
        "token",
        "credential",
        "jaas",
        "apikey",
        "api-key",
        "api.key",
        "access-key",
        "access.key",
        "key.pem",
        "private",
    ];
    let k = key.to_ascii_lowercase();
    MARKS.iter().any(|m| k.contains(m))
}

/// What a secret's value is shown as.
pub const REDACTED: &str = "******";

/// `script` with the value of every secret option (`'properties.sasl.password' = '…'`
/// in a `WITH` clause or a `SET`) replaced by [`REDACTED`], the rest as written. A
/// script that does not tokenize is redacted as a whole: it cannot be shown safely.
pub fn redact_secrets(script: &str) -> String {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, script).tokenize_with_location() else {
        return REDACTED.to_string();
    };
    let lines = Lines::new(script);
    let solid: Vec<&TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let mut out = String::with_capacity(script.len());
    let mut copied = 0;
    for w in solid.windows(3) {
        let (Token::SingleQuotedString(key), Token::Eq, Token::SingleQuotedString(_)) =
            (&w[0].token, &w[1].token, &w[2].token)
        else {
            continue;
        };
        if !is_secret_option(key) {
            continue;
        }
        let (start, end) = (lines.offset(w[2].span.start), lines.offset(w[2].span.end));
        out.push_str(&script[copied..start]);
        out.push('\'');
        out.push_str(REDACTED);
        out.push('\'');
        copied = end;
    }
    out.push_str(&script[copied..]);
    out
}

/// The largest script accepted: every statement is planned from a copy of it.
pub const MAX_SCRIPT_BYTES: usize = 256 * 1024;

/// The most statements a script may have.
pub const MAX_STATEMENTS: usize = 500;

/// The most operators (`+`, `AND`, `=`, …) one statement may have. A chain of operators
/// is an expression as deep as it is long, and planning and evaluating it recurses that
/// deep: this bounds the depth of every expression before anything is parsed.
pub const MAX_OPERATORS: usize = 250;

/// Refuses a statement with more than [`MAX_OPERATORS`] operators, at the first one over.
fn check_operators(tokens: &[&TokenWithSpan]) -> Result<(), SqlError> {
    let operator = |t: &Token| {
        matches!(
            t,
            Token::Plus
                | Token::Minus
                | Token::Mul
                | Token::Div
                | Token::Mod
                | Token::StringConcat
                | Token::Eq
                | Token::DoubleEq
                | Token::Neq
                | Token::Lt
                | Token::Gt
                | Token::LtEq
                | Token::GtEq
                | Token::Ampersand
                | Token::Pipe
                | Token::Caret
        ) || is_kw(t, Keyword::AND)
            || is_kw(t, Keyword::OR)
            || is_kw(t, Keyword::NOT)
    };
    if let Some(t) = tokens
        .iter()
        .filter(|t| operator(&t.token))
        .nth(MAX_OPERATORS)
    {
        return Err(SqlError::at(
            Pos::from(t.span.start),
            format!(
                "this statement has more than {MAX_OPERATORS} operators: an expression that long is nested too deeply to plan and run safely; use IN (…) for long lists of alternatives, or split the computation over views"
            ),
        ));
    }
    Ok(())
}

/// An unquoted word in upper case (empty for anything else).
fn bare_word(t: &TokenWithSpan) -> String {
    match &t.token {
        Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => String::new(),
    }
}

fn blank(text: &mut [u8], range: std::ops::Range<usize>) {
    for b in &mut text[range] {
        if *b != b'\n' {
            *b = b' ';
        }
    }
}

/// The whole script with everything but `keep` blanked.
fn masked(script: &str, keep: std::ops::Range<usize>) -> Vec<u8> {
    let mut text = script.as_bytes().to_vec();
    let len = text.len();
    blank(&mut text, 0..keep.start);
    blank(&mut text, keep.end..len);
    text
}

fn preprocess(script: &str, lines: &Lines<'_>, s: Stmt<'_>) -> Result<RawStatement, SqlError> {
    let toks = &s.tokens;
    let pos = Pos::from(toks[0].span.start);
    if is_kw(&toks[0].token, Keyword::SET) {
        return parse_set(toks, pos);
    }
    if let Some(f) = parse_create_function(toks, pos) {
        return f;
    }
    let mut text: Vec<u8> = masked(script, s.start..s.end);
    // Flink's `TIMESTAMP_LTZ(p)` and `TIMESTAMP(p) WITH LOCAL TIME ZONE`: an instant, kept
    // like `TIMESTAMP(p)` as UTC epoch time (what `TO_TIMESTAMP_LTZ` gives too); rewritten
    // in place, so positions stay.
    for (i, t) in toks.iter().enumerate() {
        let w = bare_word(t);
        if w == "TIMESTAMP_LTZ" {
            let a = lines.offset(t.span.start);
            text[a..a + w.len()].copy_from_slice(b"TIMESTAMP    ");
        } else if w == "WITH"
            && toks.len() > i + 3
            && toks[i + 1..i + 4]
                .iter()
                .map(|t| bare_word(t))
                .eq(["LOCAL", "TIME", "ZONE"])
        {
            let a = lines.offset(t.span.start);
            blank(&mut text, a..lines.offset(toks[i + 3].span.end));
        }
    }
    // `TABLE name` as an argument of a window table function: drop the keyword.
    // `TABLE name PARTITION BY a, b` (Flink's SESSION): the keys become an argument of
    // their own, `,SLUICE_PBY(a, b)`, written over the clause (which is never shorter).
    for i in 1..toks.len().saturating_sub(1) {
        if is_kw(&toks[i].token, Keyword::TABLE)
            && matches!(toks[i - 1].token, Token::LParen | Token::Comma)
            && matches!(toks[i + 1].token, Token::Word(_))
        {
            let a = lines.offset(toks[i].span.start);
            blank(&mut text, a..a + "TABLE".len());
            if toks.len() > i + 4
                && bare_word(toks[i + 2]) == "PARTITION"
                && bare_word(toks[i + 3]) == "BY"
            {
                // The keys run to the comma before the next argument (DESCRIPTOR, …).
                let mut last = i + 4;
                while toks.len() > last + 2
                    && matches!(toks[last + 1].token, Token::Comma)
                    && bare_word(toks[last + 2]) != "DESCRIPTOR"
                {
                    last += 2;
                }
                let start = lines.offset(toks[i + 2].span.start);
                let keys = lines.offset(toks[i + 4].span.start)..lines.offset(toks[last].span.end);
                let end = keys.end;
                let rewritten = [b",SLUICE_PBY(".as_slice(), &text[keys], b")"].concat();
                blank(&mut text, start..end);
                text[start..start + rewritten.len()].copy_from_slice(&rewritten);
            }
        }
    }
    // `table FOR SYSTEM_TIME AS OF expr`: a lookup table. The clause is blanked and the
    // table name's position remembered.
    let mut lookups = Vec::new();
    let kw = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let mut i = 1;
    while i + 3 < toks.len() {
        if kw(&toks[i].token, "for")
            && kw(&toks[i + 1].token, "system_time")
            && kw(&toks[i + 2].token, "as")
            && kw(&toks[i + 3].token, "of")
        {
            lookups.push(Pos::from(toks[i - 1].span.start));
            let mut j = i + 4;
            let mut depth = 0usize;
            while j < toks.len() {
                let t = &toks[j].token;
                if depth == 0
                    && (matches!(t, Token::Comma | Token::RParen)
                        || [
                            "as", "on", "where", "join", "inner", "left", "group", "using",
                        ]
                        .iter()
                        .any(|w| kw(t, w)))
                {
                    break;
                }
                match t {
                    Token::LParen => depth += 1,
                    Token::RParen => depth -= 1,
                    _ => {}
                }
                j += 1;
            }
            let a = lines.offset(toks[i].span.start);
            let b = lines.offset(toks[j - 1].span.end);
            blank(&mut text, a..b);
            i = j;
        } else {
            i += 1;
        }
    }
    let mut extras = None;
    if is_create_table(toks) {
        extras = Some(table_extras(lines, toks, &mut text)?);
        // Flink's `ROW<name TYPE, …>` is sqlparser's `STRUCT<…>` (columns after it on the
        // same line shift by three in messages).
        let rows: Vec<usize> = toks
            .windows(2)
            .filter(|w| {
                matches!(&w[0].token, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case("row"))
                    && w[1].token == Token::Lt
            })
            .map(|w| lines.offset(w[0].span.start))
            .collect();
        for at in rows.into_iter().rev() {
            text.splice(at..at + 3, b"STRUCT".iter().copied());
        }
    }
    let text = String::from_utf8(text).map_err(|_| SqlError::at(pos, "invalid UTF-8 in SQL"))?;
    Ok(RawStatement::Sql {
        text,
        pos,
        extras: extras.map(Box::new),
        lookups,
    })
}

fn is_create_table(toks: &[&TokenWithSpan]) -> bool {
    if !toks
        .first()
        .is_some_and(|t| is_kw(&t.token, Keyword::CREATE))
    {
        return false;
    }
    toks.iter()
        .skip(1)
        .take(3)
        .any(|t| is_kw(&t.token, Keyword::TABLE))
}

/// Flink's `CREATE FUNCTION` (sqlparser reads PostgreSQL's, which needs an argument
/// list); `None` when the statement is not one.
fn parse_create_function(
    toks: &[&TokenWithSpan],
    pos: Pos,
) -> Option<Result<RawStatement, SqlError>> {
    let words: Vec<String> = toks.iter().map(|t| bare_word(t)).collect();
    if words.first().map(String::as_str) != Some("CREATE") {
        return None;
    }
    let mut i = 1;
    for optional in ["TEMPORARY", "SYSTEM"] {
        if words.get(i).map(String::as_str) == Some(optional) {
            i += 1;
        }
    }
    if words.get(i).map(String::as_str) != Some("FUNCTION") {
        return None;
    }
    i += 1;
    if words[i..].starts_with(&["IF".to_string(), "NOT".to_string(), "EXISTS".to_string()]) {
        i += 3;
    }
    let usage = "expected CREATE FUNCTION name AS 'class' [LANGUAGE JAVA|SCALA|PYTHON]";
    let fail = |at: usize| {
        let p = toks.get(at).map_or(pos, |t| Pos::from(t.span.start));
        Some(Err(SqlError::at(p, usage)))
    };
    // `[catalog.][database.]name`: the last part names the function.
    let mut name = None;
    while let Some(t) = toks.get(i) {
        match &t.token {
            Token::Word(w) => name = Some(w.value.clone()),
            Token::Period => {}
            _ => break,
        }
        i += 1;
        if words.get(i).map(String::as_str) == Some("AS") {
            break;
        }
    }
    let Some(name) = name else { return fail(i) };
    if words.get(i).map(String::as_str) != Some("AS") {
        return fail(i);
    }
    let Some(Token::SingleQuotedString(class)) = toks.get(i + 1).map(|t| &t.token) else {
        return fail(i + 1);
    };
    i += 2;
    let mut language = "JAVA".to_string();
    if words.get(i).map(String::as_str) == Some("LANGUAGE") {
        let Some(l) = words.get(i + 1) else {
            return fail(i + 1);
        };
        language = l.clone();
        i += 2;
    }
    let jars = words.get(i).map(String::as_str) == Some("USING");
    if !jars && i < toks.len() {
        return fail(i);
    }
    Some(Ok(RawStatement::Function {
        name,
        class: class.clone(),
        language,
        jars,
        pos,
    }))
}

fn parse_set(toks: &[&TokenWithSpan], pos: Pos) -> Result<RawStatement, SqlError> {
    let usage = "expected SET 'key' = 'value'";
    // SET key = value, the key quoted or a dotted name.
    let mut i = 1;
    let mut key = String::new();
    while i < toks.len() && !matches!(toks[i].token, Token::Eq) {
        match &toks[i].token {
            Token::Period => key.push('.'),
            Token::Minus => key.push('-'),
            t => key.push_str(
                &string_value(t)
                    .ok_or_else(|| SqlError::at(Pos::from(toks[i].span.start), usage))?,
            ),
        }
        i += 1;
    }
    if key.is_empty() || i >= toks.len() {
        return Err(SqlError::at(pos, usage));
    }
    let rest = &toks[i + 1..];
    let value: String = match rest {
        [t] => {
            string_value(&t.token).ok_or_else(|| SqlError::at(Pos::from(t.span.start), usage))?
        }
        _ => {
            let at = rest.first().map_or(pos, |t| Pos::from(t.span.start));
            return Err(SqlError::at(at, format!("{usage} (quote the value)")));
        }
    };
    Ok(RawStatement::Set { key, value, pos })
}

/// Takes watermark, computed columns, the primary key and WITH options out of a
/// `CREATE TABLE`, blanking them in `text`.
fn table_extras(
    lines: &Lines<'_>,
    toks: &[&TokenWithSpan],
    text: &mut [u8],
) -> Result<TableExtras, SqlError> {
    let mut extras = TableExtras::default();
    // CREATE [OR REPLACE] [TEMPORARY] TABLE [IF NOT EXISTS] name [(columns)] [WITH (…)]
    let Some(table_kw) = toks.iter().position(|t| is_kw(&t.token, Keyword::TABLE)) else {
        return Ok(extras);
    };
    let mut i = table_kw + 1;
    if toks.get(i).is_some_and(|t| is_kw(&t.token, Keyword::IF)) {
        i += 3;
    }
    // the (possibly dotted) name
    while i < toks.len() && matches!(toks[i].token, Token::Word(_) | Token::Period) {
        if matches!(toks[i].token, Token::Word(_)) && is_kw(&toks[i].token, Keyword::WITH) {
            break;
        }
        i += 1;
    }
    let open = i;
    if toks.get(open).map(|t| &t.token) != Some(&Token::LParen) {
        with_options(lines, toks, open, text, &mut extras)?;
        return Ok(extras);
    }
    // Entries of the column list at depth 1: (first token, last token) indices.
    let mut depth = 0usize;
    let mut entries: Vec<(usize, usize)> = Vec::new();
    let mut commas: Vec<usize> = Vec::new();
    let mut entry_start = open + 1;
    let mut close = None;
    // `MAP<K, V>`, `ROW<a T, b T>`: commas inside angle brackets do not split columns.
    let mut angle = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t.token {
            Token::Lt
                if toks[i - 1..i].iter().any(|p| {
                    word(&p.token).is_some_and(|w| {
                        matches!(
                            w.to_ascii_lowercase().as_str(),
                            "map" | "row" | "struct" | "array"
                        )
                    })
                }) =>
            {
                angle += 1
            }
            Token::Gt if angle > 0 => angle -= 1,
            Token::ShiftRight if angle > 0 => angle = angle.saturating_sub(2),
            Token::Comma if angle > 0 => {}
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    if entry_start < i {
                        entries.push((entry_start, i - 1));
                    }
                    close = Some(i);
                    break;
                }
            }
            Token::Comma if depth == 1 => {
                commas.push(lines.offset(t.span.start));
                entries.push((entry_start, i.saturating_sub(1)));
                entry_start = i + 1;
            }
            _ => {}
        }
    }
    let Some(close) = close else {
        return Ok(extras);
    };
    let snippet = |from: usize, to: usize, text: &[u8]| -> Snippet {
        let a = lines.offset(toks[from].span.start);
        let b = lines.offset(toks[to].span.end);
        Snippet {
            text: String::from_utf8_lossy(&text[a..b]).into_owned(),
            pos: Pos::from(toks[from].span.start),
        }
    };
    let mut removed = Vec::new();
    for (n, &(a, b)) in entries.iter().enumerate() {
        if a > b {
            continue;
        }
        let t0 = &toks[a].token;
        let t1 = toks.get(a + 1).map(|t| &t.token);
        let kind = if matches!(t0, Token::Word(w) if w.value.eq_ignore_ascii_case("watermark") && w.quote_style.is_none())
            && t1.is_some_and(|t| is_kw(t, Keyword::FOR))
        {
            // WATERMARK FOR col AS expr
            let col = toks
                .get(a + 2)
                .and_then(|t| word(&t.token))
                .ok_or_else(|| {
                    SqlError::at(
                        Pos::from(toks[a].span.start),
                        "expected WATERMARK FOR <column> AS <expression>",
                    )
                })?;
            if !toks
                .get(a + 3)
                .is_some_and(|t| is_kw(&t.token, Keyword::AS))
                || a + 4 > b
            {
                return Err(SqlError::at(
                    Pos::from(toks[a].span.start),
                    "expected WATERMARK FOR <column> AS <expression>",
                ));
            }
            if extras.watermark.is_some() {
                return Err(SqlError::at(
                    Pos::from(toks[a].span.start),
                    "a table has at most one WATERMARK",
                ));
            }
            extras.watermark = Some((col, snippet(a + 4, b, text)));
            true
        } else if is_kw(t0, Keyword::PRIMARY) && t1.is_some_and(|t| is_kw(t, Keyword::KEY)) {
            let words: Vec<String> = toks[a + 2..=b]
                .iter()
                .filter_map(|t| word(&t.token))
                .collect();
            let n = words.len();
            if n < 2
                || !words[n - 2].eq_ignore_ascii_case("not")
                || !words[n - 1].eq_ignore_ascii_case("enforced")
            {
                return Err(SqlError::at(
                    Pos::from(toks[a].span.start),
                    "a PRIMARY KEY must be declared NOT ENFORCED, as in Flink: Sluice does not own the data, so it cannot enforce the key (write PRIMARY KEY (…) NOT ENFORCED)",
                ));
            }
            extras.primary_key = words[..words.len() - 2].to_vec();
            true
        } else if matches!(t0, Token::Word(_))
            && t1.is_some_and(|t| is_kw(t, Keyword::AS))
            && a + 2 <= b
        {
            let name = word(t0).unwrap_or_default();
            extras.computed.push((name, snippet(a + 2, b, text)));
            true
        } else {
            let is_word = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w) && x.quote_style.is_none());
            // A column named like a constraint keyword (`key BIGINT`, which Flink's
            // Nexmark declares): sqlparser would read a MySQL index; quote the name in
            // place, taking the blanks around it (it moves one column to the left).
            if let Token::Word(w) = t0
                && w.quote_style.is_none()
                && matches!(
                    w.keyword,
                    Keyword::KEY
                        | Keyword::INDEX
                        | Keyword::UNIQUE
                        | Keyword::CONSTRAINT
                        | Keyword::CHECK
                        | Keyword::FOREIGN
                        | Keyword::FULLTEXT
                        | Keyword::SPATIAL
                )
                && t1.is_some_and(|t| matches!(t, Token::Word(_)))
            {
                let from = lines.offset(toks[a].span.start);
                let to = lines.offset(toks[a].span.end);
                let blank_at = |i: usize| text.get(i).is_some_and(|c| c.is_ascii_whitespace());
                if from == 0 || !blank_at(from - 1) || !blank_at(to) {
                    return Err(SqlError::at(
                        Pos::from(toks[a].span.start),
                        format!("quote the column name `{}` (a keyword here)", w.value),
                    ));
                }
                let quoted = format!("`{}`", w.value);
                text[from - 1..to + 1].copy_from_slice(quoted.as_bytes());
            }
            // col MAP<K, V>: sqlparser has no such type; it reads BYTEA, fixed later.
            if toks.get(a + 1).is_some_and(|t| is_word(&t.token, "map"))
                && toks.get(a + 2).is_some_and(|t| t.token == Token::Lt)
            {
                let (k, v) = (toks.get(a + 3), toks.get(a + 5));
                let ok = toks.get(a + 4).is_some_and(|t| t.token == Token::Comma)
                    && toks.get(a + 6).is_some_and(|t| t.token == Token::Gt)
                    && a + 6 <= b;
                let (Some(k), Some(v), true) = (
                    k.and_then(|t| word(&t.token)),
                    v.and_then(|t| word(&t.token)),
                    ok,
                ) else {
                    return Err(SqlError::at(
                        Pos::from(toks[a + 1].span.start),
                        "expected MAP<KEY_TYPE, VALUE_TYPE> with simple types",
                    ));
                };
                let from = lines.offset(toks[a + 1].span.start);
                blank(text, from..lines.offset(toks[a + 6].span.end));
                text[from..from + 5].copy_from_slice(b"BYTEA");
                extras.maps.push((word(t0).unwrap_or_default(), k, v));
            }
            // col TYPE METADATA [FROM 'key'] [VIRTUAL]: the type stays for sqlparser.
            if let Some(m) = (a + 2..=b).find(|&k| is_word(&toks[k].token, "metadata")) {
                let col = word(t0).unwrap_or_default();
                let mut k = m + 1;
                let mut key = col.clone();
                if k <= b && is_kw(&toks[k].token, Keyword::FROM) {
                    key = toks
                        .get(k + 1)
                        .filter(|_| k < b)
                        .and_then(|t| string_value(&t.token))
                        .ok_or_else(|| {
                            SqlError::at(
                                Pos::from(toks[k].span.start),
                                "expected METADATA FROM '<key>'",
                            )
                        })?;
                    k += 2;
                }
                let virtual_col = k <= b && is_word(&toks[k].token, "virtual");
                if virtual_col {
                    k += 1;
                }
                if k <= b {
                    return Err(SqlError::at(
                        Pos::from(toks[k].span.start),
                        "expected METADATA [FROM '<key>'] [VIRTUAL] at the end of the column",
                    ));
                }
                extras.metadata.push((col, key, virtual_col));
                blank(
                    text,
                    lines.offset(toks[m].span.start)..lines.offset(toks[b].span.end),
                );
            }
            false
        };
        if kind {
            removed.push(n);
        }
    }
    // Blank removed entries and every comma between entries, then put back the
    // commas that separate the kept ones.
    for &n in &removed {
        let (a, b) = entries[n];
        blank(
            text,
            lines.offset(toks[a].span.start)..lines.offset(toks[b].span.end),
        );
    }
    for &c in &commas {
        blank(text, c..c + 1);
    }
    let kept: Vec<usize> = (0..entries.len())
        .filter(|n| !removed.contains(n))
        .collect();
    for &n in kept.iter().take(kept.len().saturating_sub(1)) {
        text[commas[n]] = b',';
    }
    if removed.len() == entries.len() && !entries.is_empty() {
        return Err(SqlError::at(
            Pos::from(toks[open].span.start),
            "a table needs at least one physical column besides WATERMARK, computed columns and PRIMARY KEY",
        ));
    }
    // PARTITIONED BY (a, b)
    let mut after = close + 1;
    if toks
        .get(after)
        .is_some_and(|t| bare_word(t) == "PARTITIONED")
        && toks.get(after + 1).is_some_and(|t| bare_word(t) == "BY")
    {
        let usage = || {
            SqlError::at(
                Pos::from(toks[after].span.start),
                "expected PARTITIONED BY (column, …)",
            )
        };
        if toks.get(after + 2).map(|t| &t.token) != Some(&Token::LParen) {
            return Err(usage());
        }
        let mut k = after + 3;
        loop {
            let name = toks.get(k).and_then(|t| word(&t.token)).ok_or_else(usage)?;
            extras.partition_by.push(name);
            match toks.get(k + 1).map(|t| &t.token) {
                Some(Token::Comma) => k += 2,
                Some(Token::RParen) => break,
                _ => return Err(usage()),
            }
        }
        blank(
            text,
            lines.offset(toks[after].span.start)..lines.offset(toks[k + 1].span.end),
        );
        after = k + 2;
    }
    with_options(lines, toks, after, text, &mut extras)?;
    Ok(extras)
}

/// `WITH ('k' = 'v', …)` starting at token `from`, if there.
fn with_options(
    lines: &Lines<'_>,
    toks: &[&TokenWithSpan],
    from: usize,
    text: &mut [u8],
    extras: &mut TableExtras,
) -> Result<(), SqlError> {
    // WITH ( 'k' = 'v', … )
    let mut i = from;
    if i < toks.len() && is_kw(&toks[i].token, Keyword::WITH) {
        let with_start = lines.offset(toks[i].span.start);
        i += 1;
        if toks.get(i).map(|t| &t.token) != Some(&Token::LParen) {
            return Err(SqlError::at(
                Pos::from(toks[i.min(toks.len() - 1)].span.start),
                "expected WITH ('key' = 'value', …)",
            ));
        }
        i += 1;
        loop {
            let (Some(k), Some(eq), Some(v)) = (toks.get(i), toks.get(i + 1), toks.get(i + 2))
            else {
                return Err(SqlError::at(
                    Pos::from(toks[toks.len() - 1].span.end),
                    "unterminated WITH ('key' = 'value', …)",
                ));
            };
            let key = match &k.token {
                Token::SingleQuotedString(s) => s.clone(),
                _ => {
                    return Err(SqlError::at(
                        Pos::from(k.span.start),
                        "expected a quoted option name, as in 'connector' = 'filesystem'",
                    ));
                }
            };
            if eq.token != Token::Eq {
                return Err(SqlError::at(Pos::from(eq.span.start), "expected `=`"));
            }
            let value = match &v.token {
                Token::SingleQuotedString(s) => s.clone(),
                Token::Number(n, _) => n.clone(),
                _ => {
                    return Err(SqlError::at(
                        Pos::from(v.span.start),
                        format!("expected a quoted value for option '{key}'"),
                    ));
                }
            };
            extras
                .option_pos
                .insert(key.clone(), Pos::from(k.span.start));
            if extras.options.insert(key.clone(), value).is_some() {
                return Err(SqlError::at(
                    Pos::from(k.span.start),
                    format!("option '{key}' is given twice"),
                ));
            }
            match toks.get(i + 3).map(|t| &t.token) {
                Some(Token::Comma) => i += 4,
                Some(Token::RParen) => {
                    i += 3;
                    break;
                }
                _ => {
                    return Err(SqlError::at(
                        Pos::from(toks[(i + 3).min(toks.len() - 1)].span.start),
                        "expected `,` or `)` after an option",
                    ));
                }
            }
        }
        let with_end = lines.offset(toks[i].span.end);
        blank(text, with_start..with_end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_nothing_else_changes() {
        let script = "-- the 'password' = 'in a comment' stays\nCREATE TABLE t (x BIGINT) WITH (\n  'connector' = 'kafka',\n  'properties.sasl.password'   =  'hun''ter2',\n  'properties.sasl.jaas.config' = 'x required password=\"p\";',\n  'properties.ssl.key.pem' = '-----BEGIN',\n  'topic' = 'ünïcode');\nSET 's3.secret-key' = 'abc';\nSELECT 'password' = 'not an option' FROM t;";
        let r = redact_secrets(script);
        assert_eq!(
            r,
            script
                .replace("'hun''ter2'", "'******'")
                .replace("'x required password=\"p\";'", "'******'")
                .replace("'-----BEGIN'", "'******'")
                .replace("'abc'", "'******'")
                .replace("'not an option'", "'******'")
        );
        assert!(!r.contains("hun") && !r.contains("BEGIN"));
        assert_eq!(redact_secrets("SELECT 'unterminated"), REDACTED);
    }

    fn sql(s: &RawStatement) -> (&str, &TableExtras) {
        match s {
            RawStatement::Sql {
                text,
                extras: Some(e),
                ..
            } => (text, e),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn takes_out_flink_ddl_and_keeps_positions() {
        let script = "SET 'parallelism.default' = '2';\nCREATE TABLE bid (\n  auction BIGINT,\n  ts TIMESTAMP(3),\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH ('connector' = 'nexmark', 'events.num' = 1000);\nSELECT * FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND))";
        let s = split(script).unwrap();
        assert_eq!(s.len(), 3);
        match &s[0] {
            RawStatement::Set { key, value, .. } => {
                assert_eq!((key.as_str(), value.as_str()), ("parallelism.default", "2"))
            }
            other => panic!("{other:?}"),
        }
        let (text, e) = sql(&s[1]);
        assert_eq!(text.len(), script.len());
        assert!(!text.contains("WATERMARK") && !text.contains("connector"));
        assert!(text.contains("ts TIMESTAMP(3)"));
        let (col, expr) = e.watermark.as_ref().unwrap();
        assert_eq!(col, "ts");
        assert_eq!(expr.text, "ts - INTERVAL '5' SECOND");
        assert_eq!(
            expr.pos,
            Pos {
                line: 5,
                column: 23
            }
        );
        assert_eq!(e.options["connector"], "nexmark");
        assert_eq!(e.options["events.num"], "1000");
        let RawStatement::Sql { text, .. } = &s[2] else {
            panic!()
        };
        assert!(text.contains("TUMBLE(      bid"));
        assert!(text.lines().next().unwrap().trim().is_empty());
    }

    #[test]
    fn statement_sets_keep_their_inserts() {
        let inserts = |script: &str| -> Vec<String> {
            split(script)
                .unwrap()
                .iter()
                .map(|s| match s {
                    RawStatement::Sql { text, .. } => {
                        text.split_whitespace().collect::<Vec<_>>().join(" ")
                    }
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let want = ["INSERT INTO a SELECT 1", "INSERT INTO b SELECT 2"];
        assert_eq!(
            inserts(
                "EXECUTE STATEMENT SET BEGIN\nINSERT INTO a SELECT 1;\nINSERT INTO b SELECT 2;\nEND;"
            ),
            want
        );
        assert_eq!(
            inserts("BEGIN STATEMENT SET;\nINSERT INTO a SELECT 1;\nINSERT INTO b SELECT 2;\nEND;"),
            want
        );
        assert_eq!(inserts("EXECUTE INSERT INTO a SELECT 1"), want[..1]);
        // Positions stay those of the script.
        let RawStatement::Sql { pos, .. } =
            &split("EXECUTE STATEMENT SET BEGIN\n  INSERT INTO a SELECT 1; END").unwrap()[0]
        else {
            panic!()
        };
        assert_eq!((pos.line, pos.column), (2, 3));
        for (bad, says) in [
            ("BEGIN STATEMENT SET; INSERT INTO a SELECT 1;", "no END"),
            ("INSERT INTO a SELECT 1; END;", "END without"),
            (
                "BEGIN STATEMENT SET; CREATE TABLE t (a INT); END;",
                "INSERT INTO statements only",
            ),
            (
                "BEGIN STATEMENT SET; BEGIN STATEMENT SET; END;",
                "already open",
            ),
        ] {
            let e = split(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn local_time_zone_timestamps_read_as_timestamps() {
        let s = split(
            "CREATE TABLE t (a TIMESTAMP_LTZ(3), b TIMESTAMP(3) WITH LOCAL TIME ZONE, c timestamp_ltz) WITH ('connector' = 'print')",
        )
        .unwrap();
        let (text, _) = sql(&s[0]);
        assert_eq!(
            text.split_whitespace().collect::<Vec<_>>().join(" "),
            "CREATE TABLE t (a TIMESTAMP (3), b TIMESTAMP(3) , c TIMESTAMP )"
        );
    }

    #[test]
    fn computed_columns_and_primary_key() {
        let s = split("CREATE TABLE t (a BIGINT, b AS a * 2, PRIMARY KEY (a) NOT ENFORCED) WITH ('connector' = 'print')").unwrap();
        let (text, e) = sql(&s[0]);
        assert_eq!(e.computed.len(), 1);
        assert_eq!(e.computed[0].0, "b");
        assert_eq!(e.computed[0].1.text, "a * 2");
        assert_eq!(e.primary_key, ["a"]);
        assert_eq!(
            text.split_whitespace().collect::<Vec<_>>().join(" "),
            "CREATE TABLE t (a BIGINT )"
        );
    }

    #[test]
    fn bad_ddl_is_located() {
        let s = split("CREATE TABLE IF NOT EXISTS sink WITH ('connector' = 'blackhole')").unwrap();
        let (text, e) = sql(&s[0]);
        assert_eq!(e.options["connector"], "blackhole");
        assert_eq!(text.trim(), "CREATE TABLE IF NOT EXISTS sink");
        let e = split("CREATE TABLE t (a BIGINT) WITH (connector = 'x')").unwrap_err();
        assert!(e.to_string().contains("line 1, column 33"), "{e}");
        let e = split("SET parallelism = ").unwrap_err();
        assert!(e.to_string().contains("SET 'key' = 'value'"), "{e}");
    }
}
