//! Kafka administration for `sluice who-consumes TOPIC`: every consumer group reading a topic — Sluice jobs and any
//! other Kafka consumers — with its members, their partitions, committed offsets and lag.
//!
//! ```text
//!  Metadata(topic) ──> partitions ──ListOffsets──> end offsets
//!  ListGroups + DescribeGroups ──> groups, members (client id, host, assignment)
//!  OffsetFetch(group, partitions) ──> committed offsets ──> lag = end − committed
//! ```
//!
//! A group reads the topic when it has committed offsets for it or a member is assigned
//! one of its partitions. Members are shown only where the broker reports them (Sluice's
//! own jobs assign partitions themselves and have none); nothing is invented.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sluice_types::{Result, SluiceError};

use super::mark::CommitMark;

/// One member of a group, as the broker describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The member id.
    pub id: String,
    /// The client's `client.id`.
    pub client_id: String,
    /// The client's host, as the broker saw it.
    pub host: String,
    /// Partitions of the topic assigned to it.
    pub partitions: Vec<i32>,
}

/// One partition's progress in a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// The partition.
    pub partition: i32,
    /// The group's committed offset, if it has one.
    pub committed: Option<i64>,
    /// The partition's end offset.
    pub end: i64,
    /// `end − committed`.
    pub lag: Option<i64>,
}

/// A consumer group reading the topic.
#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    /// The group id.
    pub group: String,
    /// The broker's state for it (Stable, Empty, …).
    pub state: String,
    /// The members the broker reports.
    pub members: Vec<Member>,
    /// Per partition: committed offset, end and lag.
    pub partitions: Vec<PartitionLag>,
    /// Sum of the lags.
    pub total_lag: i64,
}

fn err(what: String) -> impl FnOnce(rdkafka::error::KafkaError) -> SluiceError {
    move |e| SluiceError::external(what).with_source(e)
}

/// The consumer groups of `topic` at the cluster `bootstrap`.
pub fn who_consumes(bootstrap: &str, topic: &str, timeout: Duration) -> Result<Vec<GroupReport>> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(err("cannot create a Kafka client".into()))?;
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(err(format!("cannot read the metadata of {bootstrap}")))?;
    if !md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none())
    {
        return Err(SluiceError::user(format!("topic `{topic}` does not exist")));
    }
    let ends = topic_ends(&client, bootstrap, topic, timeout)?;
    let groups = client
        .fetch_group_list(None, timeout)
        .map_err(err("cannot list the consumer groups".into()))?;
    let mut out = Vec::new();
    for g in groups.groups() {
        let members: Vec<Member> = g
            .members()
            .iter()
            .map(|m| {
                let assigned = m.assignment().map(decode_assignment).unwrap_or_default();
                member(m, assigned.into_iter().filter(|(t, _)| t == topic))
            })
            .collect();
        let partitions = lags(
            &ends,
            &committed_offsets(bootstrap, g.name(), topic, &ends, timeout)?,
        );
        let reads = partitions.iter().any(|p| p.committed.is_some())
            || members.iter().any(|m| !m.partitions.is_empty());
        if !reads {
            continue;
        }
        out.push(GroupReport {
            group: g.name().to_string(),
            state: g.state().to_string(),
            total_lag: partitions.iter().filter_map(|p| p.lag).sum(),
            members,
            partitions,
        });
    }
    out.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(out)
}

/// One instance of a cluster (`sluice run --cluster`), from its subtasks' group members.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceReport {
    /// The instance's name (`--instance`, or host and process id).
    pub instance: String,
    /// Its host, as the broker saw it.
    pub host: String,
    /// Its subtasks that are members of the group.
    pub subtasks: usize,
    /// The partitions it reads: `topic/partition`.
    pub partitions: Vec<String>,
    /// Records between the group's committed offsets and the ends of its partitions.
    pub lag: i64,
    /// A job with keyed state: the partitions of its repartition topic whose tasks
    /// (keyed state and all) this instance runs.
    pub tasks: Vec<String>,
    /// Records of those partitions not committed yet by their tasks.
    pub task_lag: i64,
    /// The size of its tasks' keyed state, as of their last commits (bytes).
    pub state_bytes: u64,
    /// The partition (read, or of a task) it took most recently, as its last commit
    /// says; none before its first commit.
    pub last_rebalance: Option<Rebalance>,
}

/// When an instance took a partition, and how long the partition stood still then.
#[derive(Clone, Debug, Serialize)]
pub struct Rebalance {
    /// `topic/partition`.
    pub partition: String,
    /// When the instance first committed it (epoch ms).
    pub at_ms: i64,
    /// From the previous owner's last commit to this instance's first (ms); none when
    /// nobody had committed it before.
    pub pause_ms: Option<u64>,
}

impl InstanceReport {
    /// Takes in the mark of this instance's last commit of `partition`.
    fn saw(&mut self, partition: String, mark: &CommitMark) {
        if mark.instance != self.instance {
            return;
        }
        self.state_bytes += mark.state_bytes.unwrap_or(0);
        if self
            .last_rebalance
            .as_ref()
            .is_none_or(|r| r.at_ms < mark.since)
        {
            self.last_rebalance = Some(Rebalance {
                partition,
                at_ms: mark.since,
                pause_ms: mark.pause_ms,
            });
        }
    }
}

/// A cluster's consumer group: its instances and where each partition stands.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    /// The group id.
    pub group: String,
    /// The broker's state for it (Stable, PreparingRebalance, Empty, …).
    pub state: String,
    /// The instances, by name.
    pub instances: Vec<InstanceReport>,
    /// Members that are not a Sluice instance of this cluster (other consumers).
    pub others: Vec<Member>,
    /// Per topic and partition: committed offset, end and lag.
    pub partitions: Vec<(String, PartitionLag)>,
    /// Sum of the lags.
    pub total_lag: i64,
}

/// The instances of cluster `cluster`, as the members of its consumer group `group`
/// (each instance's subtasks are members named `sluice-CLUSTER-INSTANCE-SUBTASK`), with
/// the partitions they read and their lag.
pub fn cluster_status(
    bootstrap: &str,
    cluster: &str,
    group: &str,
    timeout: Duration,
) -> Result<ClusterReport> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(err("cannot create a Kafka client".into()))?;
    let groups = client
        .fetch_group_list(Some(group), timeout)
        .map_err(err(format!("cannot describe the consumer group `{group}`")))?;
    let Some(g) = groups.groups().iter().find(|g| g.name() == group) else {
        return Err(SluiceError::user(format!(
            "no consumer group `{group}` at {bootstrap}"
        )));
    };
    let mut instances: Vec<InstanceReport> = Vec::new();
    let mut others = Vec::new();
    let mut partitions = Vec::new();
    let mut seen = Readers {
        instances: &mut instances,
        others: &mut others,
        partitions: &mut partitions,
    };
    seen.add(&client, bootstrap, cluster, g, timeout)?;
    // A job with keyed state reads its other sources in groups of their own (its
    // fronts `NAME-in1`, `NAME-in2`, …).
    for k in 1..MAX_GROUPS {
        let name = format!("sluice-{cluster}-in{k}");
        let more = client
            .fetch_group_list(Some(&name), timeout)
            .map_err(err(format!("cannot describe the consumer group `{name}`")))?;
        let Some(more) = more.groups().iter().find(|g| exists(g, &name)) else {
            break;
        };
        seen.add(
            &client,
            bootstrap,
            &format!("{cluster}-in{k}"),
            more,
            timeout,
        )?;
    }
    add_tasks(&client, bootstrap, cluster, &mut instances, timeout)?;
    for r in &mut instances {
        r.partitions.sort();
        r.tasks.sort();
    }
    instances.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(ClusterReport {
        group: group.to_string(),
        state: g.state().to_string(),
        total_lag: partitions.iter().filter_map(|(_, p)| p.lag).sum(),
        instances,
        others,
        partitions,
    })
}

/// The most groups of one kind a cluster has (sources, keyed stages) that are looked for.
const MAX_GROUPS: usize = 64;

/// Whether `g` is group `name` as the broker knows it (an unknown group is described
/// as `Dead`).
fn exists(g: &rdkafka::groups::GroupInfo, name: &str) -> bool {
    g.name() == name && g.state() != "Dead"
}

/// What the groups of a cluster's readers show, instance by instance.
struct Readers<'a> {
    instances: &'a mut Vec<InstanceReport>,
    others: &'a mut Vec<Member>,
    partitions: &'a mut Vec<(String, PartitionLag)>,
}

impl Readers<'_> {
    /// Takes in group `g`, whose members are the subtasks of the instances of cluster
    /// `cluster` (`sluice-CLUSTER-INSTANCE-SUBTASK`): their partitions, lag and commits.
    fn add(
        &mut self,
        client: &BaseConsumer,
        bootstrap: &str,
        cluster: &str,
        g: &rdkafka::groups::GroupInfo,
        timeout: Duration,
    ) -> Result<()> {
        let prefix = format!("sluice-{cluster}-");
        let mut owner: Vec<((String, i32), usize)> = Vec::new();
        for m in g.members() {
            let assigned = m.assignment().map(decode_assignment).unwrap_or_default();
            // `sluice-CLUSTER-INSTANCE-SUBTASK`: the instance is what lies between.
            let instance = m
                .client_id()
                .strip_prefix(&prefix)
                .and_then(|rest| rest.rsplit_once('-'))
                .filter(|(_, subtask)| subtask.parse::<usize>().is_ok())
                .map(|(instance, _)| instance.to_string());
            let Some(instance) = instance else {
                self.others.push(member(m, assigned));
                continue;
            };
            let i = instance_of(self.instances, &instance, m.client_host());
            self.instances[i].subtasks += 1;
            for (t, ps) in assigned {
                for p in ps {
                    self.instances[i].partitions.push(format!("{t}/{p}"));
                    owner.push(((t.clone(), p), i));
                }
            }
        }
        // Every topic the group reads: those assigned now.
        let mut topics: Vec<String> = owner.iter().map(|((t, _), _)| t.clone()).collect();
        topics.sort();
        topics.dedup();
        for topic in &topics {
            let ends = topic_ends(client, bootstrap, topic, timeout)?;
            let committed = committed_offsets(bootstrap, g.name(), topic, &ends, timeout)?;
            for p in lags(&ends, &committed) {
                let owned = owner
                    .iter()
                    .find(|(k, _)| k.0 == *topic && k.1 == p.partition);
                if let Some(&(_, i)) = owned {
                    self.instances[i].lag += p.lag.unwrap_or(p.end);
                    if let Some(m) = mark_of(&committed, p.partition) {
                        self.instances[i].saw(format!("{topic}/{}", p.partition), m);
                    }
                }
                self.partitions.push((topic.clone(), p));
            }
        }
        Ok(())
    }
}

/// The place of instance `name` in `instances`, added (seen at `host`) if new.
fn instance_of(instances: &mut Vec<InstanceReport>, name: &str, host: &str) -> usize {
    if let Some(i) = instances.iter().position(|r| r.instance == name) {
        return i;
    }
    instances.push(InstanceReport {
        instance: name.to_string(),
        host: host.trim_start_matches('/').to_string(),
        subtasks: 0,
        partitions: Vec::new(),
        lag: 0,
        tasks: Vec::new(),
        task_lag: 0,
        state_bytes: 0,
        last_rebalance: None,
    });
    instances.len() - 1
}

/// A job with keyed state: which instance runs the task of which partition of its
/// repartition topic (members `sluice-CLUSTER-INSTANCE-tasks` of group
/// `sluice-CLUSTER-repartition`), and how far each task has committed (group
/// `sluice-CLUSTER-tasks`). Nothing for other jobs.
fn add_tasks(
    client: &BaseConsumer,
    bootstrap: &str,
    cluster: &str,
    instances: &mut Vec<InstanceReport>,
    timeout: Duration,
) -> Result<()> {
    let prefix = format!("sluice-{cluster}-");
    let mut owner: Vec<((String, i32), usize)> = Vec::new();
    // One group per keyed stage: `…-repartition`, then `…-repartition-s1`, ….
    let mut members = Vec::new();
    for stage in 0..MAX_GROUPS {
        let group = match stage {
            0 => format!("sluice-{cluster}-repartition"),
            s => format!("sluice-{cluster}-repartition-s{s}"),
        };
        let groups = client
            .fetch_group_list(Some(&group), timeout)
            .map_err(err(format!("cannot describe the consumer group `{group}`")))?;
        let Some(g) = groups.groups().iter().find(|g| exists(g, &group)) else {
            break;
        };
        for m in g.members() {
            members.push((
                m.client_id().to_string(),
                m.client_host().to_string(),
                m.assignment().map(decode_assignment).unwrap_or_default(),
            ));
        }
    }
    for (client_id, host, assigned) in members {
        // `sluice-CLUSTER-INSTANCE-tasks`, `…-tasks-sS` in later stages.
        let Some(instance) = client_id
            .strip_prefix(&prefix)
            .and_then(|rest| rest.rsplit_once("-tasks"))
            .filter(|(_, stage)| stage.is_empty() || stage.starts_with("-s"))
            .map(|(instance, _)| instance)
        else {
            continue;
        };
        let i = instance_of(instances, instance, &host);
        for (t, ps) in assigned {
            for p in ps {
                instances[i].tasks.push(format!("{t}/{p}"));
                owner.push(((t.clone(), p), i));
            }
        }
    }
    let mut topics: Vec<String> = owner.iter().map(|((t, _), _)| t.clone()).collect();
    topics.sort();
    topics.dedup();
    let offsets = format!("sluice-{cluster}-tasks");
    for topic in &topics {
        let ends = topic_ends(client, bootstrap, topic, timeout)?;
        let committed = committed_offsets(bootstrap, &offsets, topic, &ends, timeout)?;
        for p in lags(&ends, &committed) {
            if let Some(&(_, i)) = owner
                .iter()
                .find(|(k, _)| k.0 == *topic && k.1 == p.partition)
            {
                instances[i].task_lag += p.lag.unwrap_or(p.end);
                if let Some(m) = mark_of(&committed, p.partition) {
                    instances[i].saw(format!("{topic}/{}", p.partition), m);
                }
            }
        }
    }
    Ok(())
}

/// A cluster report as a table.
pub fn render_cluster(cluster: &str, r: &ClusterReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cluster {cluster}  group {}  state {}  instances {}  lag {}",
        r.group,
        r.state,
        r.instances.len(),
        r.total_lag
    );
    for i in &r.instances {
        let _ = writeln!(
            s,
            "  instance {}  host {}  subtasks {}  lag {}  partitions {}",
            i.instance,
            i.host,
            i.subtasks,
            i.lag,
            i.partitions.join(" ")
        );
        if !i.tasks.is_empty() {
            let _ = writeln!(
                s,
                "    keyed tasks {}  lag {}  state {} bytes",
                i.tasks.join(" "),
                i.task_lag,
                i.state_bytes
            );
        }
        if let Some(r) = &i.last_rebalance {
            let pause = r.pause_ms.map_or(String::new(), |p| {
                format!(", paused {:.1} s", p as f64 / 1000.0)
            });
            let _ = writeln!(
                s,
                "    last rebalance: took {} at {}{pause}",
                r.partition,
                sluice_types::time_of_day(r.at_ms)
            );
        }
    }
    for m in &r.others {
        let _ = writeln!(
            s,
            "  other member {}  client {}  host {}  partitions {:?}",
            m.id, m.client_id, m.host, m.partitions
        );
    }
    s
}

/// The end offset of each partition of `topic`, by partition.
fn topic_ends(
    client: &BaseConsumer,
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(err(format!("cannot read the metadata of {bootstrap}")))?;
    let mut ends = Vec::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (_, high) = client
                .fetch_watermarks(topic, p.id(), timeout)
                .map_err(err(format!("cannot read the end of {topic}/{}", p.id())))?;
            ends.push((p.id(), high));
        }
    }
    ends.sort();
    Ok(ends)
}

/// A group's committed offset of a partition: the partition, the offset, and what a
/// cluster instance's commit says besides.
type Committed = (i32, i64, Option<CommitMark>);

/// The mark of partition `p`'s committed offset, if any.
fn mark_of(committed: &[Committed], p: i32) -> Option<&CommitMark> {
    committed
        .iter()
        .find(|(q, _, _)| *q == p)
        .and_then(|(_, _, m)| m.as_ref())
}

/// Each partition's progress: its end, the group's committed offset, the lag between.
fn lags(ends: &[(i32, i64)], committed: &[Committed]) -> Vec<PartitionLag> {
    ends.iter()
        .map(|&(p, end)| {
            let c = committed
                .iter()
                .find(|(q, _, _)| *q == p)
                .map(|(_, o, _)| *o);
            PartitionLag {
                partition: p,
                committed: c,
                end,
                lag: c.map(|c| (end - c).max(0)),
            }
        })
        .collect()
}

/// A group member as the report shows it, with the partitions of `assigned`.
fn member(
    m: &rdkafka::groups::GroupMemberInfo,
    assigned: impl IntoIterator<Item = (String, Vec<i32>)>,
) -> Member {
    Member {
        id: m.id().to_string(),
        client_id: m.client_id().to_string(),
        host: m.client_host().to_string(),
        partitions: assigned.into_iter().flat_map(|(_, p)| p).collect(),
    }
}

/// A group's committed offsets for the topic's partitions.
fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    ends: &[(i32, i64)],
    timeout: Duration,
) -> Result<Vec<Committed>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(err("cannot create a Kafka client".into()))?;
    let mut tpl = TopicPartitionList::new();
    for &(p, _) in ends {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, timeout)
        .map_err(err(format!("cannot read the offsets of group `{group}`")))?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => {
                Some((e.partition(), o, CommitMark::parse(e.metadata())))
            }
            _ => None,
        })
        .collect())
}

/// Decodes a member assignment of Kafka's consumer protocol: version (i16), then topics
/// (i32 count; each a string with an i16 length and an i32 count of i32 partitions), then
/// user data. A malformed assignment decodes to what was read before the damage.
pub fn decode_assignment(b: &[u8]) -> Vec<(String, Vec<i32>)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(pos..pos + n)?;
        pos += n;
        Some(s)
    };
    let _version = take(2);
    let Some(n) = take(4).map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]])) else {
        return out;
    };
    for _ in 0..n.max(0) {
        let Some(len) = take(2).map(|x| i16::from_be_bytes([x[0], x[1]])) else {
            break;
        };
        let Some(name) = take(len.max(0) as usize).map(|x| String::from_utf8_lossy(x).into_owned())
        else {
            break;
        };
        let Some(count) = take(4).map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]])) else {
            break;
        };
        let mut parts = Vec::new();
        for _ in 0..count.max(0) {
            match take(4) {
                Some(x) => parts.push(i32::from_be_bytes([x[0], x[1], x[2], x[3]])),
                None => break,
            }
        }
        out.push((name, parts));
    }
    out
}

/// The report as a table.
pub fn render(topic: &str, groups: &[GroupReport]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if groups.is_empty() {
        let _ = writeln!(s, "no consumer group reads `{topic}`");
        return s;
    }
    for g in groups {
        let _ = writeln!(
            s,
            "group {}  state {}  lag {}",
            g.group, g.state, g.total_lag
        );
        if g.members.is_empty() {
            let _ = writeln!(s, "  members: none reported by the broker");
        }
        for m in &g.members {
            let _ = writeln!(
                s,
                "  member {}  client {}  host {}  partitions {:?}",
                m.id, m.client_id, m.host, m.partitions
            );
        }
        for p in &g.partitions {
            let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                s,
                "  partition {:>3}  committed {:>10}  end {:>10}  lag {:>8}",
                p.partition,
                show(p.committed),
                p.end,
                show(p.lag)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend_from_slice(&(t.len() as i16).to_be_bytes());
            b.extend_from_slice(t.as_bytes());
            b.extend_from_slice(&(ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        b.extend_from_slice(&(user_data.len() as i32).to_be_bytes());
        b.extend_from_slice(user_data);
        b
    }

    #[test]
    fn member_assignments_decode_to_their_topics_and_partitions() {
        let b = assignment(&[("bids", &[0, 2, 5]), ("other", &[1])], b"x");
        assert_eq!(
            decode_assignment(&b),
            vec![
                ("bids".to_string(), vec![0, 2, 5]),
                ("other".to_string(), vec![1])
            ]
        );
        // Cut anywhere, it keeps what it could read and never panics.
        for cut in 0..b.len() {
            let _ = decode_assignment(&b[..cut]);
        }
        assert_eq!(decode_assignment(&b[..10]), vec![]);
    }

    #[test]
    fn the_table_shows_members_only_where_reported() {
        let g = GroupReport {
            group: "g".into(),
            state: "Stable".into(),
            members: vec![Member {
                id: "m-1".into(),
                client_id: "app".into(),
                host: "/10.0.0.7".into(),
                partitions: vec![0, 1],
            }],
            partitions: vec![PartitionLag {
                partition: 0,
                committed: Some(5),
                end: 9,
                lag: Some(4),
            }],
            total_lag: 4,
        };
        let t = render("bids", std::slice::from_ref(&g));
        assert!(
            t.contains("member m-1  client app  host /10.0.0.7  partitions [0, 1]"),
            "{t}"
        );
        assert!(
            t.contains("committed          5  end          9  lag        4"),
            "{t}"
        );
        let none = render(
            "bids",
            &[GroupReport {
                members: vec![],
                ..g
            }],
        );
        assert!(
            none.contains("members: none reported by the broker"),
            "{none}"
        );
        assert!(render("bids", &[]).contains("no consumer group reads `bids`"));
    }
}
