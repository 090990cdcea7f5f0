//! Sluice's integration tests: one test binary for the crate.

#![allow(clippy::unwrap_used)]

mod broker;
mod support;

mod checkpoints;
mod cluster;
mod cluster_keyed;
mod dashboard;
mod diagnosis;
mod engine;
mod files;
mod kafka;
mod server;
mod sql;
mod sql_client;
