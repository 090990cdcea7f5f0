//! Sluice's integration tests: one test binary for the crate.

#![allow(clippy::unwrap_used)]

mod support;

mod engine;
mod files;
