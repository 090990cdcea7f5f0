//! Reads CSV, converts prices to euros, writes Parquet; malformed lines go to a
//! dead-letter file with their position.
//!
//! `cargo run --release -p sluice --example file_to_file`

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use sluice::prelude::*;

#[tokio::main]
async fn main() -> sluice::Result<()> {
    let dir = std::env::temp_dir().join("sluice-example-files");
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("bids.csv");
    std::fs::write(&input, "auction,price\n1,1000\n2,2500\nthree,oops\n3,990\n")?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
    ]));
    let p = Pipeline::new("file-to-file");
    p.dead_letters(dir.join("dead-letters.jsonl"));
    p.source(FileSource::csv(&input).with_header().with_schema(schema))
        .select([col("auction"), (col("price") * lit(0.908)).alias("euros")])
        .sink(FileSink::parquet(dir.join("out")));
    p.run().await?;
    println!("wrote {}", dir.join("out/part-0.parquet").display());
    println!(
        "dead letters: {}",
        std::fs::read_to_string(dir.join("dead-letters.jsonl"))?
    );
    Ok(())
}
