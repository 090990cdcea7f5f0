//! Joins: interval, window and regular joins of two inputs ([`join`]) and lookup joins
//! against a table ([`lookup`]).

pub mod join;
pub mod lookup;
