//! A JSON-lines decoder straight into Arrow builders for the common shapes: objects of
//! BIGINT, INT, DOUBLE, BOOLEAN, STRING and TIMESTAMP(3) fields, nested ROWs of those.
//! Fields the table does not declare are skipped without being decoded, and so are the
//! declared (nullable) ones the job does not read (`FieldUse`, nested fields included):
//! their columns come out null, as Flink's JSON format leaves a projected-away field
//! unread.
//!
//! It is a fast path only: on anything it does not read exactly as arrow-json does
//! (another type, a number as a string, a duplicate key, an escaped key, a timestamp
//! in another form, malformed input…) it gives up on the whole chunk, which arrow-json
//! then decodes, so that values, errors and dead letters are arrow-json's in every case.
//! Property tests hold it to that.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, StructArray, TimestampMillisecondBuilder, new_null_array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Fields, SchemaRef, TimeUnit};
use sluice_plan::FieldUse;

/// Builds the columns of one object level.
enum Column {
    I64(Int64Builder),
    I32(Int32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    Ts(TimestampMillisecondBuilder),
    Struct(Box<Level>, Vec<bool>),
    /// A nullable field the job does not read: its values are passed over, unchecked
    /// beyond being JSON, and the column is all null.
    Skip(DataType),
}

/// The fields of one object level and their columns.
struct Level {
    fields: Fields,
    names: Vec<Name>,
    columns: Vec<Column>,
    nullable: Vec<bool>,
    /// Whether every column may be null (a null enclosing object needs it).
    all_nullable: bool,
    /// Nulls for every column not appended yet (see [`Level::append_nulls`]).
    pending: usize,
    seen: Vec<bool>,
}

/// Decodes newline-separated JSON objects of one schema (see the module).
pub(crate) struct FastJson {
    schema: SchemaRef,
    reads: FieldUse,
}

impl FastJson {
    /// A decoder for `schema`, if every column is of a type it reads.
    pub(crate) fn new(schema: &SchemaRef) -> Option<Self> {
        Self::reading(schema, &FieldUse::All)
    }

    /// A decoder for `schema` that builds only what `reads` names (see the module).
    pub(crate) fn reading(schema: &SchemaRef, reads: &FieldUse) -> Option<Self> {
        Level::new(schema.fields(), 0, reads)?;
        Some(Self {
            schema: Arc::clone(schema),
            reads: reads.clone(),
        })
    }

    /// Exactly `rows` rows from `bytes`, or `None` to leave the chunk to arrow-json.
    pub(crate) fn decode(&self, bytes: &[u8], rows: usize) -> Option<RecordBatch> {
        let mut level = Level::new(self.schema.fields(), rows, &self.reads)?;
        // Checked once for the whole chunk (arrow-json refuses what is not UTF-8): every
        // string between two quotes of it is then UTF-8 too, and is sliced, not checked.
        let text = std::str::from_utf8(bytes).ok()?;
        let mut p = Parser {
            text,
            b: bytes,
            i: 0,
            scratch: String::new(),
        };
        let mut n = 0;
        loop {
            p.ws();
            if p.i >= p.b.len() {
                break;
            }
            if p.b[p.i] != b'{' || n == rows {
                return None;
            }
            p.i += 1;
            p.object(&mut level)?;
            n += 1;
        }
        if n != rows {
            return None;
        }
        let columns = level.finish(rows)?;
        RecordBatch::try_new(Arc::clone(&self.schema), columns).ok()
    }
}

impl Level {
    fn new(fields: &Fields, capacity: usize, reads: &FieldUse) -> Option<Self> {
        let mut columns = Vec::with_capacity(fields.len());
        for f in fields {
            let used = match reads.field(f.name()) {
                Some(u) => u,
                None if f.is_nullable() => {
                    columns.push(Column::Skip(f.data_type().clone()));
                    continue;
                }
                None => &FieldUse::All,
            };
            columns.push(match f.data_type() {
                DataType::Int64 => Column::I64(Int64Builder::with_capacity(capacity)),
                DataType::Int32 => Column::I32(Int32Builder::with_capacity(capacity)),
                DataType::Float64 => Column::F64(Float64Builder::with_capacity(capacity)),
                DataType::Boolean => Column::Bool(BooleanBuilder::with_capacity(capacity)),
                DataType::Utf8 => Column::Str(StringBuilder::with_capacity(capacity, capacity * 8)),
                DataType::Timestamp(TimeUnit::Millisecond, None) => {
                    Column::Ts(TimestampMillisecondBuilder::with_capacity(capacity))
                }
                DataType::Struct(children) => Column::Struct(
                    Box::new(Level::new(children, capacity, used)?),
                    Vec::with_capacity(capacity),
                ),
                _ => return None,
            });
        }
        let names: Vec<Name> = fields.iter().map(|f| Name::new(f.name())).collect();
        // Keys are matched unescaped: a name that JSON must escape is not for this path.
        if names
            .iter()
            .any(|n| n.bytes.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20))
        {
            return None;
        }
        Some(Self {
            nullable: fields.iter().map(|f| f.is_nullable()).collect(),
            all_nullable: fields.iter().all(|f| f.is_nullable()),
            pending: 0,
            seen: vec![false; fields.len()],
            fields: fields.clone(),
            names,
            columns,
        })
    }

    /// `n` nulls for every column (a missing or null enclosing object): counted, and
    /// appended in one go before the next value (most enclosing objects of a layout
    /// like Nexmark's are null in a row).
    fn append_nulls(&mut self, n: usize) -> Option<()> {
        if !self.all_nullable {
            return None;
        }
        self.pending += n;
        Some(())
    }

    /// Appends the nulls counted so far.
    fn flush(&mut self) -> Option<()> {
        let n = std::mem::take(&mut self.pending);
        if n == 0 {
            return Some(());
        }
        for c in &mut self.columns {
            match c {
                Column::I64(b) => b.append_nulls(n),
                Column::I32(b) => b.append_nulls(n),
                Column::F64(b) => b.append_nulls(n),
                Column::Bool(b) => b.append_nulls(n),
                Column::Str(b) => b.append_nulls(n),
                Column::Ts(b) => b.append_nulls(n),
                Column::Struct(level, valid) => {
                    level.append_nulls(n)?;
                    valid.extend(std::iter::repeat_n(false, n));
                }
                Column::Skip(_) => {}
            }
        }
        Some(())
    }

    /// The columns of the `len` rows appended.
    fn finish(&mut self, len: usize) -> Option<Vec<ArrayRef>> {
        self.flush()?;
        let mut out = Vec::with_capacity(self.columns.len());
        for c in &mut self.columns {
            out.push(match c {
                Column::I64(b) => Arc::new(b.finish()) as ArrayRef,
                Column::I32(b) => Arc::new(b.finish()),
                Column::F64(b) => Arc::new(b.finish()),
                Column::Bool(b) => Arc::new(b.finish()),
                Column::Str(b) => Arc::new(b.finish()),
                Column::Ts(b) => Arc::new(b.finish()),
                Column::Skip(t) => new_null_array(t, len),
                Column::Struct(level, valid) => {
                    let children = level.finish(valid.len())?;
                    let nulls = NullBuffer::from(std::mem::take(valid));
                    let nulls = (nulls.null_count() > 0).then_some(nulls);
                    Arc::new(StructArray::try_new(level.fields.clone(), children, nulls).ok()?)
                }
            });
        }
        Some(out)
    }
}

impl Column {
    fn append_null(&mut self) -> Option<()> {
        match self {
            Column::I64(b) => b.append_null(),
            Column::I32(b) => b.append_null(),
            Column::F64(b) => b.append_null(),
            Column::Bool(b) => b.append_null(),
            Column::Str(b) => b.append_null(),
            Column::Ts(b) => b.append_null(),
            Column::Struct(level, valid) => {
                // arrow-json leaves a null row's children null: they must allow it.
                level.append_nulls(1)?;
                valid.push(false);
            }
            Column::Skip(_) => {}
        }
        Some(())
    }
}

struct Parser<'a> {
    /// The chunk, known to be UTF-8; `b` is its bytes.
    text: &'a str,
    b: &'a [u8],
    i: usize,
    scratch: String,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// The rest of an object (after `{`) into `level`'s columns, one row.
    fn object(&mut self, level: &mut Level) -> Option<()> {
        level.seen.iter_mut().for_each(|s| *s = false);
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            // Objects mostly list their keys in the table's order: the field after the
            // last one matched is tried first.
            let mut guess = 0;
            loop {
                self.ws();
                self.eat(b'"')?;
                let start = self.i;
                let rest = self.b.get(start..)?;
                // The expected name and its closing quote: the key is that name (names
                // hold no quote, backslash or control character).
                let found = match level.names.get(guess) {
                    Some(n) if n.starts(rest) => {
                        self.i = start + n.bytes.len() + 1;
                        Some(guess)
                    }
                    _ => {
                        // Keys without escapes only (an escaped key may name a field);
                        // short, so scanned byte by byte.
                        let len = rest
                            .iter()
                            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
                        if rest[len] != b'"' {
                            return None;
                        }
                        let key = &rest[..len];
                        self.i = start + len + 1;
                        level.names.iter().position(|n| same(&n.bytes, key))
                    }
                };
                self.ws();
                self.eat(b':')?;
                self.ws();
                match found {
                    Some(f) => {
                        guess = f + 1;
                        if level.seen[f] {
                            return None;
                        }
                        level.seen[f] = true;
                        let nullable = level.nullable[f];
                        self.value(&mut level.columns[f], nullable)?;
                    }
                    None => {
                        // (Keys are UTF-8 for arrow-json even when skipped: the whole
                        // chunk is.)
                        self.skip(0)?;
                    }
                }
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        for f in 0..level.columns.len() {
            if !level.seen[f] {
                if !level.nullable[f] {
                    return None;
                }
                level.columns[f].append_null()?;
            }
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let at = self.b.get(self.i..self.i + word.len())?;
        // (Byte by byte: a call to memcmp costs more than these few bytes.)
        at.iter()
            .zip(word)
            .all(|(a, b)| a == b)
            .then(|| self.i += word.len())
    }

    /// One value into `column`.
    fn value(&mut self, column: &mut Column, nullable: bool) -> Option<()> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            if !nullable {
                return None;
            }
            return column.append_null();
        }
        match column {
            Column::I64(b) => b.append_value(self.integer()?),
            Column::I32(b) => b.append_value(i32::try_from(self.integer()?).ok()?),
            Column::F64(b) => {
                let v = self.number()?.parse::<f64>().ok()?;
                if !v.is_finite() {
                    return None;
                }
                b.append_value(v);
            }
            Column::Bool(b) => match self.peek()? {
                b't' => {
                    self.literal(b"true")?;
                    b.append_value(true);
                }
                b'f' => {
                    self.literal(b"false")?;
                    b.append_value(false);
                }
                _ => return None,
            },
            Column::Str(b) => {
                let s = self.string()?;
                b.append_value(s);
            }
            Column::Ts(b) => {
                let s = self.string()?;
                b.append_value(timestamp_ms(s.as_bytes())?);
            }
            Column::Struct(level, valid) => {
                self.eat(b'{')?;
                level.flush()?;
                self.object(level)?;
                valid.push(true);
            }
            Column::Skip(_) => self.skip(0)?,
        }
        Some(())
    }

    /// A JSON number's text, checked against JSON's grammar.
    fn number(&mut self) -> Option<&str> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            let at = self.i;
            self.digits();
            if self.i == at {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let at = self.i;
            self.digits();
            if self.i == at {
                return None;
            }
        }
        self.delimited()?;
        self.text.get(start..self.i)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    /// What may follow a number or a literal.
    fn delimited(&self) -> Option<()> {
        match self.peek() {
            None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') => Some(()),
            _ => None,
        }
    }

    /// An integer written as one (no fraction, no exponent), in range.
    fn integer(&mut self) -> Option<i64> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let start = self.i;
        let mut v = 0u64;
        while let Some(&c) = self.b.get(self.i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = v.wrapping_mul(10).wrapping_add(u64::from(d));
            self.i += 1;
        }
        let digits = self.i - start;
        // (Nineteen digits cannot overflow a u64; more are out of range or left to
        // arrow-json. A leading zero is not JSON.)
        if digits == 0 || digits > 19 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        // A fraction or an exponent is not an integer's delimiter.
        self.delimited()?;
        match negative {
            true if v <= 1 << 63 => Some((v as i64).wrapping_neg()),
            true => None,
            false => i64::try_from(v).ok(),
        }
    }

    /// A string's text (after its opening quote is next), unescaped.
    fn string(&mut self) -> Option<&str> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + plain_run(self.b.get(start..)?);
        self.i = end;
        match *self.b.get(end)? {
            b'"' => {
                self.i += 1;
                // (Borrowed from the input: no copy; quotes are character boundaries.)
                return self.text.get(start..end);
            }
            b'\\' => {}
            // A control character, which JSON does not allow raw.
            _ => return None,
        }
        // Escapes: the text is built in the scratch buffer.
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.push_str(self.text.get(start..self.i)?);
        loop {
            let c = self.peek()?;
            match c {
                b'"' => {
                    self.i += 1;
                    self.scratch = out;
                    return Some(self.scratch.as_str());
                }
                b'\\' => {
                    self.i += 1;
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let ch = match hi {
                                0xD800..=0xDBFF => {
                                    self.literal(b"\\u")?;
                                    let lo = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&lo) {
                                        return None;
                                    }
                                    let code = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                    char::from_u32(code)?
                                }
                                0xDC00..=0xDFFF => return None,
                                _ => char::from_u32(hi)?,
                            };
                            out.push(ch);
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => {
                    let start = self.i;
                    self.i += plain_run(&self.b[start..]);
                    out.push_str(self.text.get(start..self.i)?);
                }
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        let s = std::str::from_utf8(h).ok()?;
        let v = u32::from_str_radix(s, 16).ok()?;
        if !h.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        self.i += 4;
        Some(v)
    }

    /// Passes over a value of a field the table does not read (checked as JSON enough
    /// that arrow-json would read it too; anything doubtful gives up).
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > 64 {
            return None;
        }
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    self.string()?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => {
                self.number()?;
            }
        }
        Some(())
    }
}

/// The length of the plain text at the start of `b`, up to the first quote, backslash or
/// control character (or the end). Eight bytes at a time: each test below flags exactly
/// the lowest byte that passes it (a borrow only carries upwards).
#[inline]
pub(crate) fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |w: u64| w.wrapping_sub(ONES) & !w;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let hit = (zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// A field's name, with its bytes as words for a quick comparison.
struct Name {
    bytes: Vec<u8>,
    /// Up to 8 bytes: the name, zero-padded, and the mask of its bytes; 9 to 16: its
    /// first and last 8 bytes (overlapping).
    first: u64,
    last: u64,
    mask: u64,
}

impl Name {
    fn new(name: &str) -> Self {
        let bytes = name.as_bytes().to_vec();
        let mut padded = [0u8; 8];
        let n = bytes.len().min(8);
        padded[..n].copy_from_slice(&bytes[..n]);
        let last = match bytes.len() {
            9..=16 => word(&bytes[bytes.len() - 8..]),
            _ => 0,
        };
        Self {
            first: u64::from_le_bytes(padded),
            last,
            mask: match n {
                0 => 0,
                n => u64::MAX >> (64 - 8 * n),
            },
            bytes,
        }
    }

    /// Whether `rest` starts with this name and a closing quote.
    #[inline]
    fn starts(&self, rest: &[u8]) -> bool {
        let len = self.bytes.len();
        if rest.get(len) != Some(&b'"') {
            return false;
        }
        match len {
            0..=8 if rest.len() >= 8 => word(rest) & self.mask == self.first,
            9..=16 => word(rest) == self.first && word(&rest[len - 8..]) == self.last,
            _ => same(&self.bytes, &rest[..len]),
        }
    }
}

/// The first 8 bytes of `b` (which has them) as a word.
#[inline]
fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("eight bytes"))
}

/// Whether a field's name is `key` (byte by byte: keys are short, a call to memcmp costs
/// more).
#[inline]
fn same(name: &[u8], key: &[u8]) -> bool {
    name.len() == key.len() && name.iter().zip(key).all(|(a, b)| a == b)
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.f{1,3}][Z]` from 1970 on, as epoch milliseconds; any other
/// form is left to arrow-json.
pub(crate) fn timestamp_ms(s: &[u8]) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = s.get(r)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(d.iter().fold(0i64, |a, &c| a * 10 + i64::from(c - b'0')))
    };
    if s.len() < 19 || s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b' ') {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=3).contains(&digits) {
            return None;
        }
        ms = frac[..digits]
            .iter()
            .fold(0i64, |a, &c| a * 10 + i64::from(c - b'0'))
            * [100, 10, 1][digits - 1];
        rest = &frac[digits..];
    }
    if !(rest.is_empty() || rest == b"Z") {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 59
    {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let (yy, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("t", DataType::Boolean, true),
            Field::new("i", DataType::Int32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new(
                "r",
                DataType::Struct(Fields::from(vec![
                    Field::new("x", DataType::Int64, true),
                    Field::new("y", DataType::Utf8, true),
                ])),
                true,
            ),
            Field::new("k", DataType::Int64, false),
        ]))
    }

    /// arrow-json's answer for the same chunk, as the table's readers get it.
    fn arrow_json(schema: &SchemaRef, bytes: &[u8], rows: usize) -> Option<RecordBatch> {
        let mut d = arrow::json::ReaderBuilder::new(Arc::clone(schema))
            .with_batch_size(rows + 1)
            .with_strict_mode(false)
            .build_decoder()
            .ok()?;
        let mut off = 0;
        while off < bytes.len() {
            let n = d.decode(&bytes[off..]).ok()?;
            if n == 0 {
                break;
            }
            off += n;
        }
        let b = d.flush().ok()??;
        (b.num_rows() == rows).then_some(b)
    }

    #[test]
    fn common_records_decode_as_arrow_json_decodes_them() {
        let s = schema();
        let lines = concat!(
            r#"{"a": 1, "b": 2.5, "s": "x\"y\u00e9\ud83d\ude00", "t": true, "i": -7, "ts": "2024-02-29 23:59:59.12", "r": {"x": 3, "y": "z"}, "k": 9, "skip": [1, {"q": [true, null]}, "w"]}"#,
            "\n",
            r#"{"k": 0, "ts": "1970-01-01T00:00:00Z", "r": null, "b": -1e-3, "a": null}"#,
            "\n",
            r#"  {"k":-12,"s":"","r":{},"extra":{"deep":{"er":1.5e7}}}  "#,
            "\n"
        );
        let fast = FastJson::new(&s)
            .unwrap()
            .decode(lines.as_bytes(), 3)
            .unwrap();
        let arrow = arrow_json(&s, lines.as_bytes(), 3).unwrap();
        assert_eq!(fast, arrow);
    }

    #[test]
    fn what_it_does_not_read_as_arrow_json_does_is_left_to_arrow_json() {
        let s = schema();
        let fast = FastJson::new(&s).unwrap();
        for line in [
            r#"{"k": 1, "a": "12"}"#,
            r#"{"k": 1, "a": 1.0}"#,
            r#"{"k": 1, "a": 01}"#,
            r#"{"k": 1, "k": 2}"#,
            r#"{"k": 1, "ts": "2024-01-01T00:00:00+01:00"}"#,
            r#"{"k": 1, "ts": 1700000000000}"#,
            r#"{"k": 1, "ts": "1969-12-31 23:59:59"}"#,
            r#"{"a": 1}"#,
            r#"{"k": 1, "\u0061": 2}"#,
            r#"{"k": 1, "i": 3000000000}"#,
            r#"{"k": 1} {"k": 2}"#,
            r#"[1]"#,
            r#"{"k": 1, "s": "\ud800"}"#,
            r#"{"k": 1,}"#,
            r#"{"k": truex}"#,
        ] {
            assert!(
                fast.decode(format!("{line}\n").as_bytes(), 1).is_none(),
                "{line}"
            );
        }
        let unsupported = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
        assert!(FastJson::new(&unsupported).is_none());
    }

    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<i32>().prop_map(|v| v.to_string()),
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| format!("{v:e}")),
            "[a-z\\\\\"é😀 ]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            // Longer than a word, escapes anywhere; raw control characters (not JSON).
            "[a-z\\\\\"é ]{7,30}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            r#""[a-zé\x01\x1f\t ]{0,20}""#,
            prop::sample::select(vec![
                "-0",
                "01",
                "-",
                "-01",
                "1e3",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775808",
                "-9223372036854775809",
                "12345678901234567890",
                "2147483648",
                "-2147483649",
            ])
            .prop_map(String::from),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("1.5".to_string()),
            Just("\"12\"".to_string()),
            (
                1970i32..2100,
                1u32..13,
                1u32..32,
                0u32..24,
                0u32..60,
                0u32..62,
                0u32..1000
            )
                .prop_map(|(y, mo, d, h, mi, s, ms)| format!(
                    "\"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}\""
                )),
            Just("{\"x\": 1, \"y\": \"q\"}".to_string()),
            Just("{\"x\": \"1\"}".to_string()),
            Just("[1, [2, {}]]".to_string()),
        ]
    }

    #[test]
    fn a_record_with_skipped_nested_fields_takes_the_fast_path() {
        let s = schema();
        let fast = FastJson::new(&s).unwrap();
        let line = "{\"k\":1,\"ts\":\"2024-01-01T00:00:00.000\",\"zz\":[1,[2,{}]]}\n";
        assert!(fast.decode(line.as_bytes(), 1).is_some());
    }

    /// A field with a value of its column's type (most of the time, something it reads).
    fn typed_field() -> impl Strategy<Value = (&'static str, String)> {
        prop_oneof![
            any::<i64>().prop_map(|v| ("a", v.to_string())),
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| ("b", v.to_string())),
            "[a-z\\\\\"é😀\\n ]{0,8}".prop_map(|v| ("s", serde_json::to_string(&v).unwrap())),
            any::<bool>().prop_map(|v| ("t", v.to_string())),
            any::<i32>().prop_map(|v| ("i", v.to_string())),
            (
                1970i32..2100,
                1u32..13,
                1u32..29,
                0u32..24,
                0u32..60,
                0u32..60,
                0u32..1000
            )
                .prop_map(|(y, mo, d, h, mi, s, ms)| (
                    "ts",
                    format!("\"{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{ms}\"")
                )),
            (any::<i64>(), "[a-z]{0,4}")
                .prop_map(|(x, y)| ("r", format!("{{\"y\": \"{y}\", \"x\": {x}}}"))),
            Just(("zz", "{\"n\": [1, \"two\", null]}".to_string())),
        ]
    }

    /// `columns` with the nullable columns and nested fields `reads` leaves out made null.
    fn only_read(columns: &[ArrayRef], fields: &Fields, reads: &FieldUse) -> Vec<ArrayRef> {
        columns
            .iter()
            .zip(fields.iter())
            .map(|(c, f)| match (reads.field(f.name()), f.data_type()) {
                (None, t) if f.is_nullable() => new_null_array(t, c.len()),
                (Some(u @ FieldUse::Fields(_)), DataType::Struct(children)) => {
                    let s = c.as_any().downcast_ref::<StructArray>().unwrap();
                    let inner = only_read(s.columns(), children, u);
                    Arc::new(
                        StructArray::try_new(children.clone(), inner, s.nulls().cloned()).unwrap(),
                    ) as ArrayRef
                }
                _ => Arc::clone(c),
            })
            .collect()
    }

    fn selections() -> Vec<FieldUse> {
        let f = |pairs: &[(&str, FieldUse)]| {
            FieldUse::Fields(
                pairs
                    .iter()
                    .map(|(n, u)| (n.to_string(), u.clone()))
                    .collect(),
            )
        };
        vec![
            FieldUse::All,
            f(&[("k", FieldUse::All)]),
            f(&[("a", FieldUse::All), ("ts", FieldUse::All)]),
            f(&[("r", f(&[("y", FieldUse::All)])), ("s", FieldUse::All)]),
            f(&[("r", FieldUse::none()), ("b", FieldUse::All)]),
        ]
    }

    #[test]
    fn fields_not_read_are_passed_over_and_come_out_null() {
        let s = schema();
        let reads = &selections()[3];
        let fast = FastJson::reading(&s, reads).unwrap();
        // `a` holds a string and `t` a number: not what their columns take, but not read.
        let line =
            r#"{"k": 1, "a": "not a number", "t": 7, "r": {"x": [1, 2], "y": "w"}, "s": "q"}"#;
        let b = fast.decode(format!("{line}\n").as_bytes(), 1).unwrap();
        assert_eq!(b.column(0).null_count(), 1, "a not read");
        let r = b.column(6).as_any().downcast_ref::<StructArray>().unwrap();
        assert!(r.column(0).is_null(0), "r.x not read");
        let y = r
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>();
        assert_eq!(y.unwrap().value(0), "w");
        // Malformed JSON in a field not read is still malformed.
        let bad = r#"{"k": 1, "a": [1,}"#;
        assert!(fast.decode(format!("{bad}\n").as_bytes(), 1).is_none());
    }

    proptest! {
        /// A name matches a key's text (up to its closing quote) exactly when their
        /// bytes are the same, whatever their lengths.
        #[test]
        fn a_name_matches_a_key_when_their_bytes_are_the_same(
            name in "[ab]{0,20}",
            key in "[ab]{0,20}",
            tail in "[ab\"]{0,10}",
        ) {
            let text = format!("{key}\"{tail}");
            prop_assert_eq!(Name::new(&name).starts(text.as_bytes()), name == key);
            let same_text = format!("{name}\"{tail}");
            prop_assert!(Name::new(&name).starts(same_text.as_bytes()));
        }

        /// The word-at-a-time scan stops where a byte-at-a-time one does.
        #[test]
        fn a_plain_run_ends_at_the_first_quote_backslash_or_control_character(
            b in prop::collection::vec(
                prop_oneof![6 => 0x20u8..=0xff, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20],
                0..40,
            ),
        ) {
            let naive = b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            prop_assert_eq!(plain_run(&b), naive.unwrap_or(b.len()));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Reading some fields gives arrow-json's rows with the others null.
        #[test]
        fn reading_some_fields_is_arrow_json_with_the_rest_null(
            records in prop::collection::vec(prop::collection::vec(typed_field(), 0..8), 1..6),
            which in 0usize..5,
        ) {
            let s = schema();
            let reads = &selections()[which];
            let mut text = String::new();
            for (n, fields) in records.iter().enumerate() {
                let mut body = vec![format!("\"k\":{n}")];
                body.extend(fields.iter().map(|(k, v)| format!("\"{k}\":{v}")));
                text.push('{');
                text.push_str(&body.join(","));
                text.push_str("}\n");
            }
            let fast = FastJson::reading(&s, reads).unwrap().decode(text.as_bytes(), records.len());
            if let Some(fast) = fast {
                let arrow = arrow_json(&s, text.as_bytes(), records.len()).unwrap();
                let want = RecordBatch::try_new(
                    Arc::clone(&s),
                    only_read(arrow.columns(), s.fields(), reads),
                ).unwrap();
                prop_assert_eq!(fast, want, "{}", text);
            }
        }

        /// Whatever a chunk holds, the fast path gives arrow-json's rows or gives up.
        #[test]
        fn never_differs_from_arrow_json(
            records in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![
                        4 => typed_field(),
                        1 => (prop::sample::select(vec!["a", "b", "s", "t", "i", "ts", "r", "zz"]), json_value()),
                    ],
                    0..8,
                ),
                1..6,
            ),
            spaces in any::<bool>(),
        ) {
            let s = schema();
            let sep = if spaces { " , " } else { "," };
            let mut text = String::new();
            for (n, fields) in records.iter().enumerate() {
                // The non-nullable column is there (else every chunk is arrow-json's).
                let mut body = vec![format!("\"k\":{n}")];
                body.extend(fields.iter().map(|(k, v)| format!("\"{k}\":{v}")));
                text.push('{');
                text.push_str(&body.join(sep));
                text.push_str("}\n");
            }
            let fast = FastJson::new(&s).unwrap().decode(text.as_bytes(), records.len());
            if let Some(fast) = fast {
                let arrow = arrow_json(&s, text.as_bytes(), records.len());
                prop_assert_eq!(Some(fast), arrow, "{}", text);
            }
        }
    }
}
