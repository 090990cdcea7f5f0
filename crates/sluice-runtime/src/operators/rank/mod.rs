//! Top-N: per partition over a whole stream, with retractions ([`topn`]), and per window
//! once the window is complete ([`window_topn`]).

pub mod topn;
pub mod window_topn;

use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use arrow::row::SortField;

/// Sort fields of the ranking columns `order` (index, largest first) of `input`: their
/// row encodings compare in rank order, nulls last.
pub(crate) fn ranking_fields(input: &SchemaRef, order: &[(usize, bool)]) -> Vec<SortField> {
    order
        .iter()
        .map(|&(i, descending)| {
            SortField::new_with_options(
                input.field(i).data_type().clone(),
                SortOptions {
                    descending,
                    nulls_first: false,
                },
            )
        })
        .collect()
}
