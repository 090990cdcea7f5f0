//! Sluice connectors: Kafka (feature `kafka`), the Nexmark and random-data generators,
//! files (CSV, JSON lines, Parquet) as sources and sinks, and the print and blackhole
//! sinks. Formats are kept apart from transports ([`format`] for files, [`codec`] for
//! messages).

pub mod codec;
pub mod datagen;
mod fast_csv;
mod fast_json;
mod fast_json_out;
pub mod file;
pub mod format;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod nexmark;
pub mod options;
pub mod pacer;
pub mod registry;
pub mod sinks;

pub use datagen::DatagenSource;
pub use file::{FileSink, FileSource};
pub use nexmark::NexmarkSource;
pub use sinks::{BlackholeSink, ChannelSink, PrintSink};

use sluice_runtime::ConnectorRegistry;

/// A registry with every built-in connector.
pub fn registry() -> ConnectorRegistry {
    let mut r = ConnectorRegistry::new();
    r.register_source(nexmark::NexmarkConnector);
    r.register_source(datagen::DatagenConnector);
    r.register_source(file::FileSourceConnector);
    r.register_sink(file::FileSinkConnector);
    r.register_sink(sinks::BlackholeConnector);
    r.register_sink(sinks::PrintConnector);
    #[cfg(feature = "kafka")]
    {
        r.register_source(kafka::KafkaSourceConnector);
        r.register_sink(kafka::KafkaSinkConnector);
        r.register_sink(kafka::UpsertKafkaSinkConnector);
        r.register_source(kafka::UpsertKafkaSourceConnector);
    }
    r
}
