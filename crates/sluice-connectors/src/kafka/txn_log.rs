//! The exactly-once sink's transaction log: a one-partition topic listing the tags of
//! committed transactions, read back on restore.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_types::{Result, SluiceError};

use super::sink::{REPLACES_HEADER, TXN_TIMEOUT};
use super::{METADATA_TIMEOUT, Topics, client_config, kafka_err, partitions};

pub(crate) fn log_topic(txn_id: &str) -> String {
    format!("{txn_id}.commits")
}

/// Creates a one-partition topic if it does not exist.
pub(crate) async fn ensure_topic(props: &BTreeMap<String, String>, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(props)
        .create()
        .map_err(kafka_err("cannot create a Kafka admin client"))?;
    if partitions(props, &Topics::Names(vec![topic.to_string()])).is_ok() {
        return Ok(());
    }
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .map_err(kafka_err(format!(
            "cannot create the transaction log topic `{topic}` (create it, one partition, and start again)"
        )))?;
    for res in r {
        if let Err((t, e)) = res
            && e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(SluiceError::external(format!(
                "cannot create topic `{t}`: {e}"
            )));
        }
    }
    Ok(())
}

/// Every tag in a transaction log topic.
pub(crate) async fn read_log(
    props: &BTreeMap<String, String>,
    topic: &str,
) -> Result<HashSet<String>> {
    let props = props.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || -> Result<HashSet<String>> {
        let c: BaseConsumer = client_config(&props)
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(kafka_err("cannot create a Kafka consumer"))?;
        let (low, high) = c
            .fetch_watermarks(&topic, 0, METADATA_TIMEOUT)
            .map_err(kafka_err(format!("cannot read transaction log `{topic}`")))?;
        let mut tags = HashSet::new();
        if high <= low {
            return Ok(tags);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(low))
            .map_err(kafka_err("bad partition"))?;
        c.assign(&tpl).map_err(kafka_err("cannot assign"))?;
        let deadline = std::time::Instant::now() + TXN_TIMEOUT;
        let mut next = low;
        while next < high {
            if std::time::Instant::now() > deadline {
                return Err(SluiceError::external(format!(
                    "reading transaction log `{topic}` timed out at offset {next} of {high}"
                )));
            }
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.map_err(kafka_err(format!("cannot read transaction log `{topic}`")))?;
                next = m.offset() + 1;
                if let Some(p) = m.payload() {
                    tags.insert(String::from_utf8_lossy(p).into_owned());
                }
                // The tag a re-produced transaction replaced is settled too.
                if let Some(r) = m.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == REPLACES_HEADER)
                        .and_then(|x| x.value)
                }) {
                    tags.insert(String::from_utf8_lossy(r).into_owned());
                }
            }
        }
        Ok(tags)
    })
    .await
    .map_err(|e| SluiceError::internal(e.to_string()))?
}
