//! The exactly-once sink's commit markers.
//!
//! A compacted one-partition topic, `<transactional-id-prefix>.commits`: the record
//! keyed by a transactional id holds the tag of that id's last committed transaction.
//! The sink writes it *inside* the transaction it names, so a `read_committed` reader
//! sees it exactly when the transaction committed: no crash between the broker's commit
//! and Sluice's record of it can make a restore produce a transaction again.
//!
//! A tag is `<transactional id>:<attempt>:<sequence>`; one id commits its transactions
//! one after another in tag order (the attempt is the run's start time in µs), so a
//! transaction committed exactly when its tag is at most its id's marker.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_types::{Result, SluiceError};

use super::sink::TXN_TIMEOUT;
use super::{METADATA_TIMEOUT, Topics, client_config, kafka_err, partitions};

pub(crate) fn log_topic(prefix: &str) -> String {
    format!("{prefix}.commits")
}

/// A tag's transactional id and its place in that id's order of commits.
pub(crate) fn parse_tag(tag: &str) -> Option<(&str, u64, u64)> {
    let mut parts = tag.rsplitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let attempt = parts.next()?.parse().ok()?;
    Some((parts.next()?, attempt, seq))
}

/// Whether the transaction tagged `tag` committed, given each id's marker.
pub(crate) fn committed(markers: &HashMap<String, String>, tag: &str) -> bool {
    let Some((id, attempt, seq)) = parse_tag(tag) else {
        return false;
    };
    markers
        .get(id)
        .and_then(|m| parse_tag(m))
        .is_some_and(|(_, a, s)| (attempt, seq) <= (a, s))
}

/// Creates the marker topic (one partition, compacted) if it does not exist.
pub(crate) async fn ensure_topic(props: &BTreeMap<String, String>, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(props)
        .create()
        .map_err(kafka_err("cannot create a Kafka admin client"))?;
    if partitions(props, &Topics::Names(vec![topic.to_string()])).is_ok() {
        return Ok(());
    }
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")
                // Compaction only cleans closed segments: roll them hourly.
                .set("segment.ms", "3600000")],
            &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .map_err(kafka_err(format!(
            "cannot create the commit marker topic `{topic}` (create it, one partition, cleanup.policy=compact, and start again)"
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

/// Every transactional id's marker in `topic`, read under read_committed once every
/// transaction open on it when the call began has ended (committed, aborted by a
/// fencing `init_transactions`, or timed out by the broker).
pub(crate) async fn read_markers(
    props: &BTreeMap<String, String>,
    topic: &str,
) -> Result<HashMap<String, String>> {
    let props = props.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || -> Result<HashMap<String, String>> {
        let consumer = |isolation: &str| -> Result<BaseConsumer> {
            client_config(&props)
                .set("group.id", format!("{topic}-reader"))
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                .set("isolation.level", isolation)
                .create()
                .map_err(kafka_err("cannot create a Kafka consumer"))
        };
        let what = || format!("cannot read the commit markers in `{topic}`");
        let (_, high) = consumer("read_uncommitted")?
            .fetch_watermarks(&topic, 0, METADATA_TIMEOUT)
            .map_err(kafka_err(what()))?;
        let c = consumer("read_committed")?;
        // A read_committed client's end is the last stable offset: wait until it has
        // passed every record there was (the broker times out an orphaned transaction).
        let deadline = Instant::now() + TXN_TIMEOUT + Duration::from_secs(30);
        loop {
            let (low, stable) = c
                .fetch_watermarks(&topic, 0, METADATA_TIMEOUT)
                .map_err(kafka_err(what()))?;
            if stable >= high {
                if stable <= low {
                    return Ok(HashMap::new());
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(SluiceError::external(format!(
                    "a transaction on `{topic}` stayed open: its stable offset is {stable}, its end {high}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .map_err(kafka_err("bad partition"))?;
        c.assign(&tpl).map_err(kafka_err("cannot assign"))?;
        let mut markers = HashMap::new();
        loop {
            if Instant::now() > deadline {
                return Err(SluiceError::external(format!(
                    "reading the commit markers in `{topic}` timed out"
                )));
            }
            match c.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(markers),
                Some(m) => {
                    let m = m.map_err(kafka_err(what()))?;
                    if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                        markers.insert(
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        );
                    }
                }
            }
        }
    })
    .await
    .map_err(|e| SluiceError::internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_committed_when_its_id_committed_it_or_a_later_one() {
        assert_eq!(parse_tag("p:x-0-of-2:17:3"), Some(("p:x-0-of-2", 17, 3)));
        assert_eq!(parse_tag("no-numbers"), None);
        let markers: HashMap<String, String> =
            [("a-0-of-1".to_string(), "a-0-of-1:20:5".to_string())]
                .into_iter()
                .collect();
        assert!(committed(&markers, "a-0-of-1:20:5"));
        assert!(committed(&markers, "a-0-of-1:20:4"));
        // An earlier run's transaction with a larger sequence number.
        assert!(committed(&markers, "a-0-of-1:19:900"));
        assert!(!committed(&markers, "a-0-of-1:20:6"));
        assert!(!committed(&markers, "a-0-of-1:21:1"));
        assert!(!committed(&markers, "a-1-of-2:1:1"));
    }
}
