//! Window geometry (which slices a window is made of, when it may fire) and slice storage:
//! groups interned per slice, open parts accumulating, sealed parts as columns.

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion_expr::GroupsAccumulator;
use sluice_types::Result;

pub(super) fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Window geometry in milliseconds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub(super) size: i64,
    pub(super) slide: i64,
    /// Slice width: gcd(size, slide).
    pub(super) width: i64,
    pub(super) lateness: i64,
    /// CUMULATE: the windows of a period share its start (a multiple of `size`) and end
    /// every `slide` (the step) up to `start + size`.
    pub(super) cumulate: bool,
}

impl Geometry {
    /// Where the window ending at `end` starts.
    pub(super) fn start_of(&self, end: i64) -> i64 {
        match self.cumulate {
            true => end
                .saturating_sub(1)
                .div_euclid(self.size)
                .saturating_mul(self.size),
            false => end.saturating_sub(self.size),
        }
    }

    pub(super) fn slice_of(&self, t: i64) -> i64 {
        t.div_euclid(self.width).saturating_mul(self.width)
    }

    /// Window starts lie on the slide grid; ends are `start + size` (on the grid only
    /// when the slide divides the size). The smallest window end at or above `x`.
    pub(super) fn end_at_or_after(&self, x: i64) -> i64 {
        if self.cumulate {
            // Every point of the step grid ends a window.
            return x
                .saturating_add(self.slide - 1)
                .div_euclid(self.slide)
                .saturating_mul(self.slide);
        }
        let start = x.saturating_sub(self.size);
        start
            .saturating_add(self.slide - 1)
            .div_euclid(self.slide)
            .saturating_mul(self.slide)
            .saturating_add(self.size)
    }

    /// End of the first window containing the slice starting at `s`
    /// (the window must reach the slice's end, `s + width`).
    pub(super) fn first_end(&self, s: i64) -> i64 {
        self.end_at_or_after(s.saturating_add(self.width))
    }

    /// End of the last window containing the slice starting at `s`
    /// (the last grid start at or before `s`).
    pub(super) fn last_end(&self, s: i64) -> i64 {
        if self.cumulate {
            // The period's full window.
            return s
                .div_euclid(self.size)
                .saturating_mul(self.size)
                .saturating_add(self.size);
        }
        s.div_euclid(self.slide)
            .saturating_mul(self.slide)
            .saturating_add(self.size)
    }

    /// A window fires once the watermark reaches its last millisecond.
    pub(super) fn fired(end: i64, watermark: i64) -> bool {
        end.saturating_sub(1) <= watermark
    }

    /// Whether the window ending at `end` can still change.
    pub(super) fn expired(&self, end: i64, watermark: i64) -> bool {
        end.saturating_sub(1).saturating_add(self.lateness) <= watermark
    }
}

/// Key rows to dense group indices. The table holds only indices (with their rows'
/// hashes): a group's key is its row in `keys`, so a new group allocates nothing of its
/// own and dropping a fired slice frees a few buffers, not one box per group.
pub(super) struct GroupMap {
    pub(super) converter: Option<RowConverter>,
    ids: crate::operators::row_ids::RowIds,
    pub(super) keys: Option<Rows>,
    pub(super) len: usize,
}

impl GroupMap {
    pub(super) fn new(key_types: &[DataType]) -> Result<Self> {
        let converter = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                key_types
                    .iter()
                    .map(|t| SortField::new(t.clone()))
                    .collect(),
            )?)
        };
        let keys = converter.as_ref().map(|c| c.empty_rows(0, 0));
        Ok(Self {
            converter,
            ids: Default::default(),
            keys,
            len: 0,
        })
    }

    /// Group index of every row of `key_columns` (`rows` rows).
    pub(super) fn intern(
        &mut self,
        key_columns: &[ArrayRef],
        rows: usize,
        out: &mut Vec<usize>,
    ) -> Result<()> {
        out.clear();
        let (Some(conv), Some(keys)) = (self.converter.as_mut(), self.keys.as_mut()) else {
            // Not keyed: one group.
            self.len = self.len.max(usize::from(rows > 0));
            out.resize(rows, 0);
            return Ok(());
        };
        let encoded = conv.convert_columns(key_columns)?;
        for row in encoded.iter() {
            let bytes = row.as_ref();
            let hash = self.ids.hash(bytes);
            let found = self
                .ids
                .get(hash, |id| keys.row(id as usize).as_ref() == bytes);
            let id = match found {
                Some(id) => id,
                None => {
                    let id = self.len as u32;
                    self.ids.insert(hash, id);
                    keys.push(row);
                    self.len += 1;
                    id
                }
            };
            out.push(id as usize);
        }
        Ok(())
    }

    /// The key columns of all groups, in group order.
    pub(super) fn key_columns(&self) -> Result<Vec<ArrayRef>> {
        match (&self.converter, &self.keys) {
            (Some(c), Some(k)) => Ok(c.convert_rows(k.iter())?),
            _ => Ok(Vec::new()),
        }
    }
}

/// Intermediate state of a finished part of a slice: key columns and, per aggregate,
/// its state columns (one row per group).
pub(super) struct Sealed {
    pub(super) keys: Vec<ArrayRef>,
    pub(super) states: Vec<Vec<ArrayRef>>,
    pub(super) groups: usize,
}

pub(super) struct OpenPart {
    pub(super) groups: GroupMap,
    pub(super) accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

#[derive(Default)]
pub(super) struct Slice {
    pub(super) sealed: Vec<Sealed>,
    pub(super) open: Option<OpenPart>,
}
