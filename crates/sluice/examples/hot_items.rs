//! Nexmark bids over $10, counted per auction, printed as they update.
//!
//! `cargo run --release -p sluice --example hot_items`

use sluice::prelude::*;

#[tokio::main]
async fn main() -> sluice::Result<()> {
    let p = Pipeline::new("hot-items");
    p.source(NexmarkSource::bids().events(100_000))
        .filter(col("price").gt(lit(1_000)))
        .key_by(["auction"])
        .aggregate([
            count_star().alias("bids"),
            max(col("price")).alias("top_price"),
        ])
        .filter(col("bids").gt(lit(1_000)))
        .sink(PrintSink::new().identifier("hot"));
    println!("{}", p.explain()?);
    p.run().await
}
