//! "Why is it slow?": the likely causes of a job's trouble, ranked, each with its evidence
//! and what to do, read from its recent history (the last 30 seconds of samples), its
//! subtasks, its graph, its checkpoints and which of its operators keep state forever.
//!
//! ```text
//!  bottleneck      busy near 100 % where the backpressure of the operators before it ends
//!  slow_sink       a sink busy most of the time (writing: waiting on its system)
//!  cpu_bound       a source's task busy most of the time, nothing downstream blocking
//!  skew            one subtask with far more rows than its peers (a hot key after a
//!                  keyed exchange)
//!  watermark       a source subtask whose watermark lags the others' (idle or slow)
//!  alignment       checkpoints spending their time aligning barriers
//!  state_growth    memory growing with operators that keep state without a TTL
//!  late_rows, dead_letters   a high share of the input dropped as late or undecodable
//! ```

use serde::Serialize;
use sluice_plan::{JobPlan, NodeKind};
use sluice_runtime::checkpoint::{CheckpointRecord, CheckpointStatus};
use utoipa::ToSchema;

use crate::history::{Sample, SubtaskSample};
use crate::lineage::GraphEdge;

/// How much history a diagnosis looks at.
pub(crate) const WINDOW_MS: i64 = 30_000;

/// One likely cause.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct Cause {
    /// What kind: `bottleneck`, `slow_sink`, `cpu_bound`, `skew`, `watermark`,
    /// `alignment`, `state_growth`, `late_rows`, `dead_letters`.
    pub(crate) kind: &'static str,
    /// How sure and how much it matters, 0 to 1 (causes come highest first).
    pub(crate) score: f64,
    /// The operator it is about, if one.
    pub(crate) operator: Option<usize>,
    pub(crate) operator_name: Option<String>,
    /// One line.
    pub(crate) title: String,
    /// The figures behind it.
    pub(crate) evidence: Vec<String>,
    /// What to do about it.
    pub(crate) action: String,
}

/// A job's ranked causes.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Diagnosis {
    pub(crate) job: u64,
    /// Seconds of history looked at.
    pub(crate) seconds: usize,
    /// Highest score first; empty when nothing stands out.
    pub(crate) causes: Vec<Cause>,
    /// A sentence: the top cause, or why there is none.
    pub(crate) summary: String,
}

/// An operator as the diagnosis sees it.
#[derive(Clone, Debug)]
pub(crate) struct OperatorInfo {
    pub(crate) id: usize,
    pub(crate) name: String,
    pub(crate) is_source: bool,
    pub(crate) is_sink: bool,
    pub(crate) parallelism: usize,
}

/// Everything a diagnosis reads.
pub(crate) struct Situation<'a> {
    /// The recent samples, oldest first.
    pub(crate) samples: &'a [Sample],
    /// In the samples' operator order.
    pub(crate) operators: &'a [OperatorInfo],
    /// Per operator (same order), its subtasks at the latest sample.
    pub(crate) subtasks: &'a [Vec<SubtaskSample>],
    pub(crate) edges: &'a [GraphEdge],
    pub(crate) checkpoints: &'a [CheckpointRecord],
    /// Operators (ids) that keep state per key with no TTL.
    pub(crate) unbounded_state: &'a [usize],
}

/// The operators of `plan` that keep state per key forever: running aggregates, Top-N,
/// regular joins, OVER and normalizing operators without `table.exec.state.ttl`.
pub(crate) fn unbounded_state(plan: &JobPlan) -> Vec<usize> {
    plan.nodes
        .iter()
        .filter(|n| match &n.kind {
            NodeKind::Aggregate { ttl_ms, .. }
            | NodeKind::TopN { ttl_ms, .. }
            | NodeKind::OverAggregate { ttl_ms, .. } => ttl_ms.is_none(),
            NodeKind::Join {
                interval,
                left_retain_ms,
                right_retain_ms,
                until,
                ..
            } => {
                interval.is_none()
                    && (left_retain_ms.is_none() && until.0.is_none()
                        || right_retain_ms.is_none() && until.1.is_none())
            }
            NodeKind::ChangelogNormalize { .. } | NodeKind::UpsertMaterialize { .. } => true,
            _ => false,
        })
        .map(|n| n.id)
        .collect()
}

fn pct(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M rows/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} K rows/s", v / 1e3)
    } else {
        format!("{v:.0} rows/s")
    }
}

/// A task as the runtime chains it: a head and the operators forward-chained after it.
struct Task {
    members: Vec<usize>,
}

impl Situation<'_> {
    fn index(&self, id: usize) -> Option<usize> {
        self.operators.iter().position(|o| o.id == id)
    }

    /// Mean over the samples of operator `k`'s figure `f`.
    fn mean(&self, k: usize, f: impl Fn(&crate::history::OperatorSample) -> f64) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| s.operators.get(k).map(&f))
            .collect();
        match v.len() {
            0 => 0.0,
            n => v.iter().sum::<f64>() / n as f64,
        }
    }

    fn inputs(&self, id: usize) -> impl Iterator<Item = &GraphEdge> {
        self.edges.iter().filter(move |e| e.to == id)
    }

    fn outputs(&self, id: usize) -> impl Iterator<Item = &GraphEdge> {
        self.edges.iter().filter(move |e| e.from == id)
    }

    /// Whether `id` runs in its upstream's task (one forward input from an operator of
    /// the same parallelism with that one output).
    fn chained(&self, id: usize) -> Option<usize> {
        let mut ins = self.inputs(id);
        let (Some(e), None) = (ins.next(), ins.next()) else {
            return None;
        };
        let same = |a: usize, b: usize| {
            let p = |x| self.index(x).map(|k| self.operators[k].parallelism);
            p(a) == p(b)
        };
        (e.partitioning.starts_with("Forward")
            && self.outputs(e.from).count() == 1
            && same(e.from, id))
        .then_some(e.from)
    }

    fn tasks(&self) -> Vec<Task> {
        let mut tasks: Vec<Task> = Vec::new();
        for o in self.operators {
            if self.chained(o.id).is_some() {
                continue;
            }
            let mut members = vec![o.id];
            let mut last = o.id;
            while let Some(next) = self
                .outputs(last)
                .map(|e| e.to)
                .find(|&t| self.chained(t) == Some(last))
            {
                members.push(next);
                last = next;
            }
            tasks.push(Task { members });
        }
        tasks
    }

    /// Every operator upstream of `id`.
    fn ancestors(&self, id: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut todo = vec![id];
        while let Some(n) = todo.pop() {
            for e in self.inputs(n) {
                if !out.contains(&e.from) {
                    out.push(e.from);
                    todo.push(e.from);
                }
            }
        }
        out
    }

    fn cause(&self, kind: &'static str, score: f64, op: Option<usize>) -> Cause {
        Cause {
            kind,
            score: score.clamp(0.0, 1.0),
            operator: op,
            operator_name: op
                .and_then(|id| self.index(id))
                .map(|k| self.operators[k].name.clone()),
            title: String::new(),
            evidence: Vec::new(),
            action: String::new(),
        }
    }

    /// The ranked causes.
    pub(crate) fn diagnose(&self) -> Vec<Cause> {
        let mut causes = Vec::new();
        if self.samples.len() >= 3 {
            self.throughput(&mut causes);
            self.late_and_dead(&mut causes);
            self.state_growth(&mut causes);
        }
        self.skew(&mut causes);
        self.watermarks(&mut causes);
        self.alignment(&mut causes);
        causes.sort_by(|a, b| b.score.total_cmp(&a.score));
        causes
    }

    /// Where backpressure ends, a slow sink, a saturated source task.
    fn throughput(&self, causes: &mut Vec<Cause>) {
        let busy: Vec<f64> = (0..self.operators.len())
            .map(|k| self.mean(k, |o| o.busy))
            .collect();
        let bp: Vec<f64> = (0..self.operators.len())
            .map(|k| self.mean(k, |o| o.backpressure))
            .collect();
        let of = |id: usize| self.index(id);
        for task in self.tasks() {
            let Some(head) = of(task.members[0]) else {
                continue;
            };
            let blocked = task
                .members
                .iter()
                .filter_map(|&m| of(m))
                .map(|k| bp[k])
                .fold(0.0, f64::max);
            // Busy time includes time blocked sending on: what it worked is the rest.
            let work = (busy[head] - blocked).max(0.0);
            let sink = task
                .members
                .iter()
                .filter_map(|&m| of(m))
                .find(|&k| self.operators[k].is_sink);
            // A sink's own time (its busy when chained behind others; the task's when
            // it heads it).
            let sink_work = sink.map(|k| if k == head { work } else { busy[k] });
            let upstream: Vec<(usize, f64)> = self
                .ancestors(task.members[0])
                .into_iter()
                .filter_map(|a| of(a).map(|k| (k, bp[k])))
                .filter(|&(_, b)| b >= 0.1)
                .collect();
            let up_bp = upstream.iter().map(|u| u.1).fold(0.0, f64::max);
            let name = &self.operators[head].name;
            if let (Some(k), Some(sw)) = (sink, sink_work)
                && sw >= 0.5
                && blocked < 0.2
            {
                let id = self.operators[k].id;
                let mut c = self.cause("slow_sink", 0.5 * sw + 0.5 * up_bp.max(sw * 0.8), Some(id));
                c.title = format!(
                    "sink `{}` is busy writing {} of the time: the job goes at the pace of the system it writes to",
                    self.operators[k].name,
                    pct(sw)
                );
                c.evidence.push(format!(
                    "`{}` busy {} (its own writes)",
                    self.operators[k].name,
                    pct(sw)
                ));
                if up_bp > 0.0 {
                    c.evidence.push(format!(
                        "the operators before it blocked up to {} of the time",
                        pct(up_bp)
                    ));
                }
                c.action = "look at the external system (its latency, quotas, partitions), at the sink's batching options, or raise the sink's parallelism".into();
                causes.push(c);
                continue;
            }
            if work >= 0.5 && blocked < 0.2 && up_bp >= 0.1 {
                let id = self.operators[head].id;
                let mut c = self.cause("bottleneck", 0.5 * work + 0.5 * up_bp, Some(id));
                c.title = format!(
                    "`{name}` is the bottleneck: busy {} while the operators before it are backpressured",
                    pct(work)
                );
                c.evidence.push(format!(
                    "task of {} busy {} and not blocked itself ({})",
                    task.members
                        .iter()
                        .filter_map(|&m| of(m))
                        .map(|k| format!("`{}`", self.operators[k].name))
                        .collect::<Vec<_>>()
                        .join(" → "),
                    pct(work),
                    pct(blocked)
                ));
                for (k, b) in &upstream {
                    c.evidence.push(format!(
                        "`{}` backpressured {}",
                        self.operators[*k].name,
                        pct(*b)
                    ));
                }
                c.action = format!(
                    "raise `{name}`'s parallelism, or make it cheaper (fewer or simpler expressions, a pre-aggregation); backpressure ends here"
                );
                causes.push(c);
            } else if work >= 0.8 && blocked < 0.2 && self.operators[head].is_source {
                let id = self.operators[head].id;
                let mut c = self.cause("cpu_bound", 0.6 * work, Some(id));
                c.title = format!(
                    "the task of source `{name}` is busy {}: the job is CPU-bound there",
                    pct(work)
                );
                c.evidence.push(format!("`{name}`'s task busy {} (decoding and the operators chained after it), nothing after it blocking", pct(work)));
                c.action = "raise the parallelism (more source splits or partitions), or read fewer columns".into();
                causes.push(c);
            }
        }
    }

    /// One subtask far from its peers.
    fn skew(&self, causes: &mut Vec<Cause>) {
        for (k, o) in self.operators.iter().enumerate() {
            let Some(subs) = self.subtasks.get(k) else {
                continue;
            };
            if subs.len() < 2 || o.is_source {
                continue;
            }
            let total: u64 = subs.iter().map(|s| s.records_in).sum();
            if total < 1000 {
                continue;
            }
            let mean = total as f64 / subs.len() as f64;
            let (hot, max) = subs
                .iter()
                .map(|s| (s.subtask, s.records_in))
                .max_by_key(|&(_, r)| r)
                .unwrap_or((0, 0));
            let ratio = max as f64 / mean;
            if ratio < 1.5 {
                continue;
            }
            let keyed = self
                .inputs(o.id)
                .any(|e| e.partitioning.starts_with("Hash"));
            let n = subs.len() as f64;
            let mut c = self.cause(
                "skew",
                0.9 * ((ratio - 1.0) / (n - 1.0)).min(1.0) + 0.05,
                Some(o.id),
            );
            c.title = format!(
                "`{}` is skewed: subtask {hot} has {:.1}× the mean of its {} subtasks",
                o.name,
                ratio,
                subs.len()
            );
            c.evidence.push(format!(
                "subtask {hot}: {max} rows in; the mean {mean:.0} ({})",
                subs.iter()
                    .map(|s| format!("{}: {}", s.subtask, s.records_in))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if let Some(s) = subs.get(hot) {
                c.evidence.push(format!(
                    "now {} there, busy {}",
                    rate(s.in_per_s),
                    pct(s.busy)
                ));
            }
            c.action = match keyed {
                true => "a hot key: the keys hashed to that subtask carry most rows; spread the key (add a salt and aggregate twice), filter the hot key out, or raise the max parallelism so key groups spread finer".into(),
                false => "the input is uneven (source partitions of different sizes): rebalance, or even out the partitions".into(),
            };
            causes.push(c);
        }
    }

    /// A source subtask whose watermark lags the others'.
    fn watermarks(&self, causes: &mut Vec<Cause>) {
        for (k, o) in self.operators.iter().enumerate() {
            let Some(subs) = self.subtasks.get(k) else {
                continue;
            };
            if !o.is_source || subs.len() < 2 {
                continue;
            }
            let marks: Vec<Option<i64>> = subs.iter().map(|s| s.watermark_ms).collect();
            let Some(ahead) = marks.iter().flatten().copied().max() else {
                continue;
            };
            let reading = subs.iter().any(|s| s.out_per_s > 0.0);
            for s in subs {
                let behind = match s.watermark_ms {
                    Some(w) => ahead - w,
                    None => i64::MAX,
                };
                let idle = s.out_per_s == 0.0 && reading;
                if behind < 5_000 && !(idle && s.watermark_ms.is_none()) {
                    continue;
                }
                let mut c = self.cause("watermark", if idle { 0.85 } else { 0.7 }, Some(o.id));
                c.title = format!(
                    "source `{}` subtask {} holds event time back for every window downstream",
                    o.name, s.subtask
                );
                c.evidence.push(match s.watermark_ms {
                    Some(_) => format!(
                        "its watermark is {:.1} s behind the others'",
                        behind as f64 / 1000.0
                    ),
                    None => "it has no watermark yet while the others have".to_string(),
                });
                if idle {
                    c.evidence.push(
                        "it read nothing in the last second while the others did (idle)".into(),
                    );
                }
                if let Some(l) = s.source_lag {
                    c.evidence.push(format!("its Kafka lag: {l} records"));
                }
                c.evidence.push(match s.splits.is_empty() {
                    true => "none of its splits (partitions) has had a row yet".to_string(),
                    false => format!(
                        "its splits: {}",
                        s.splits
                            .iter()
                            .map(|x| {
                                let name = x
                                    .name
                                    .clone()
                                    .unwrap_or_else(|| format!("split {}", x.split));
                                match x.watermark_ms {
                                    Some(w) => format!(
                                        "{name} at {:.1} s behind the others'{}",
                                        (ahead - w) as f64 / 1000.0,
                                        if x.idle { " (idle)" } else { "" }
                                    ),
                                    None => format!("{name} without a watermark"),
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
                c.action = "an idle partition or split: set 'scan.watermark.idle-timeout' (or the table's idle timeout) so it stops holding event time; a slow one: give its partition less data or the source more parallelism".into();
                causes.push(c);
            }
        }
    }

    /// Checkpoints that spend their time aligning barriers.
    fn alignment(&self, causes: &mut Vec<Cause>) {
        let done: Vec<&CheckpointRecord> = self
            .checkpoints
            .iter()
            .rev()
            .filter(|c| c.status == CheckpointStatus::Completed)
            .take(5)
            .collect();
        if done.is_empty() {
            return;
        }
        let n = done.len() as f64;
        let align = done.iter().map(|c| c.alignment_ms).sum::<f64>() / n;
        let duration = done.iter().map(|c| c.duration_ms as f64).sum::<f64>() / n;
        if align < 1000.0 || align < 0.5 * duration {
            return;
        }
        let mut c = self.cause(
            "alignment",
            0.4 + 0.4 * (align / duration.max(1.0)).min(1.0),
            None,
        );
        c.title = format!(
            "checkpoints spend {:.1} s of {:.1} s aligning barriers",
            align / 1000.0,
            duration / 1000.0
        );
        c.evidence.push(format!(
            "the last {} completed checkpoints: alignment {:.0} ms, duration {:.0} ms on average",
            done.len(),
            align,
            duration
        ));
        c.action = "barriers wait behind backpressured channels: remove the bottleneck (see the backpressure chart), or checkpoint less often".into();
        causes.push(c);
    }

    /// Memory growing while operators keep state without a TTL.
    fn state_growth(&self, causes: &mut Vec<Cause>) {
        if self.unbounded_state.is_empty() {
            return;
        }
        let mem: Vec<u64> = self.samples.iter().map(|s| s.memory_bytes).collect();
        let third = (mem.len() / 3).max(1);
        let first = mem[..third].iter().sum::<u64>() as f64 / third as f64;
        let last = mem[mem.len() - third..].iter().sum::<u64>() as f64 / third as f64;
        let rising =
            mem.windows(2).filter(|w| w[1] >= w[0]).count() as f64 / (mem.len() - 1) as f64;
        if first <= 0.0 || last < first * 1.2 || rising < 0.6 {
            return;
        }
        let names: Vec<String> = self
            .unbounded_state
            .iter()
            .filter_map(|&id| self.index(id))
            .map(|k| format!("`{}`", self.operators[k].name))
            .collect();
        let secs = (self.samples[self.samples.len() - 1].time_ms - self.samples[0].time_ms) as f64
            / 1000.0;
        let mut c = self.cause(
            "state_growth",
            0.5 + 0.3 * ((last / first - 1.0).min(1.0)),
            self.unbounded_state.first().copied(),
        );
        c.title = format!(
            "state grows without bound: {} keep every key forever (no state TTL)",
            names.join(", ")
        );
        c.evidence.push(format!(
            "the job's memory went from {:.1} MiB to {:.1} MiB in {secs:.0} s",
            first / 1048576.0,
            last / 1048576.0
        ));
        c.action = "set 'table.exec.state.ttl' (keys not seen for that long are forgotten, as in Flink), or bound the keys (a window instead of a running aggregate)".into();
        causes.push(c);
    }

    /// A high share of the input dropped.
    fn late_and_dead(&self, causes: &mut Vec<Cause>) {
        let (a, b) = (&self.samples[0], &self.samples[self.samples.len() - 1]);
        let input = b.input_records.saturating_sub(a.input_records);
        if input < 100 {
            return;
        }
        let secs = (b.time_ms - a.time_ms) / 1000;
        for (kind, dropped, what, how, action) in [
            (
                "late_rows",
                b.late_records.saturating_sub(a.late_records),
                "late rows",
                "arrives after its window closed and is dropped",
                "allow more out-of-orderness (WATERMARK … - INTERVAL), or allowed lateness, or send late rows to a table to look at them",
            ),
            (
                "dead_letters",
                b.dead_letters.saturating_sub(a.dead_letters),
                "dead letters",
                "does not decode and goes to the dead-letter output",
                "look at the dead letters (their error and raw record: the job's logs, or the dead-letter topic or file) and fix the producer or the table's declared types",
            ),
        ] {
            let share = dropped as f64 / input as f64;
            if share < 0.01 {
                continue;
            }
            let mut c = self.cause(kind, 0.3 + 0.5 * (share * 5.0).min(1.0), None);
            c.title = format!("{} of the input {how}", pct(share));
            c.evidence.push(format!(
                "{dropped} {what} of {input} records read in the last {secs} s"
            ));
            c.action = action.into();
            causes.push(c);
        }
    }
}

/// The sentence above the causes.
pub(crate) fn summary(causes: &[Cause], seconds: usize) -> String {
    match causes.first() {
        Some(c) => c.title.clone(),
        None if seconds < 3 => {
            "not enough history yet: a few seconds of the job running are needed".into()
        }
        None => format!(
            "nothing stands out in the last {seconds} s: no operator is both busy and holding others back, no skew, no held-back watermark"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::OperatorSample;

    fn ops() -> Vec<OperatorInfo> {
        let op = |id, name: &str, src, sink, p| OperatorInfo {
            id,
            name: name.into(),
            is_source: src,
            is_sink: sink,
            parallelism: p,
        };
        vec![
            op(0, "src", true, false, 2),
            op(1, "agg", false, false, 2),
            op(2, "sink", false, true, 2),
        ]
    }

    fn edges() -> Vec<GraphEdge> {
        vec![
            GraphEdge {
                from: 0,
                to: 1,
                partitioning: "Hash([\"k\"])".into(),
            },
            GraphEdge {
                from: 1,
                to: 2,
                partitioning: "Forward".into(),
            },
        ]
    }

    fn samples(busy: [f64; 3], bp: [f64; 3], memory: impl Fn(i64) -> u64) -> Vec<Sample> {
        (0..10)
            .map(|i| Sample {
                time_ms: i * 1000,
                input_per_s: 1000.0,
                output_per_s: 1000.0,
                latency_p50_ms: None,
                latency_p99_ms: None,
                event_time_lag_ms: None,
                source_lag: None,
                checkpoint_ms: None,
                checkpoint_bytes: None,
                memory_bytes: memory(i),
                late_records: 0,
                dead_letters: 0,
                input_records: (i * 1000) as u64,
                operators: (0..3)
                    .map(|k| OperatorSample {
                        id: k,
                        busy: busy[k],
                        backpressure: bp[k],
                        in_per_s: 1000.0,
                    })
                    .collect(),
            })
            .collect()
    }

    fn subtasks(rows: [[u64; 2]; 3]) -> Vec<Vec<SubtaskSample>> {
        rows.iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(i, &n)| SubtaskSample {
                        subtask: i,
                        records_in: n,
                        records_out: n,
                        out_per_s: 10.0,
                        watermark_ms: Some(1_000_000),
                        ..Default::default()
                    })
                    .collect()
            })
            .collect()
    }

    fn diagnose(s: &[Sample], subs: &[Vec<SubtaskSample>], unbounded: &[usize]) -> Vec<Cause> {
        Situation {
            samples: s,
            operators: &ops(),
            subtasks: subs,
            edges: &edges(),
            checkpoints: &[],
            unbounded_state: unbounded,
        }
        .diagnose()
    }

    #[test]
    fn backpressure_ends_at_the_busy_operator() {
        let s = samples([0.95, 0.97, 0.0], [0.9, 0.0, 0.0], |_| 1);
        let c = diagnose(&s, &subtasks([[500, 500], [500, 500], [500, 500]]), &[]);
        assert_eq!(c[0].kind, "bottleneck", "{c:?}");
        assert_eq!(c[0].operator, Some(1));
        assert!(
            c[0].evidence
                .iter()
                .any(|e| e.contains("`src` backpressured 90 %")),
            "{c:?}"
        );
    }

    #[test]
    fn a_sink_busy_writing_is_a_slow_sink() {
        // The sink chained after the aggregate: its own time.
        let s = samples([0.95, 0.99, 0.92], [0.9, 0.0, 0.0], |_| 1);
        let c = diagnose(&s, &subtasks([[500, 500], [500, 500], [500, 500]]), &[]);
        assert_eq!(c[0].kind, "slow_sink", "{c:?}");
        assert_eq!(c[0].operator, Some(2));
    }

    #[test]
    fn one_hot_subtask_after_a_keyed_exchange_is_skew() {
        let s = samples([0.1, 0.1, 0.0], [0.0, 0.0, 0.0], |_| 1);
        let c = diagnose(&s, &subtasks([[500, 500], [990, 10], [990, 10]]), &[]);
        assert_eq!(c[0].kind, "skew", "{c:?}");
        assert_eq!(c[0].operator, Some(1));
        assert!(c[0].action.contains("hot key"), "{c:?}");
    }

    #[test]
    fn a_source_subtask_behind_holds_the_watermark() {
        let s = samples([0.1, 0.1, 0.0], [0.0, 0.0, 0.0], |_| 1);
        let mut subs = subtasks([[500, 500], [500, 500], [500, 500]]);
        subs[0][1].watermark_ms = None;
        subs[0][1].out_per_s = 0.0;
        let c = diagnose(&s, &subs, &[]);
        assert_eq!(c[0].kind, "watermark", "{c:?}");
        assert!(c[0].title.contains("subtask 1"), "{c:?}");
    }

    #[test]
    fn growing_memory_with_state_kept_forever_is_state_growth() {
        let s = samples([0.1, 0.1, 0.0], [0.0, 0.0, 0.0], |i| {
            (10 + i as u64 * 5) << 20
        });
        let subs = subtasks([[500, 500], [500, 500], [500, 500]]);
        let c = diagnose(&s, &subs, &[1]);
        assert_eq!(c[0].kind, "state_growth", "{c:?}");
        // The same growth with a TTL on every operator is not a cause.
        assert!(diagnose(&s, &subs, &[]).is_empty());
    }

    #[test]
    fn a_high_share_of_late_rows_is_a_cause() {
        let mut s = samples([0.1, 0.1, 0.0], [0.0, 0.0, 0.0], |_| 1 << 20);
        for (i, x) in s.iter_mut().enumerate() {
            x.late_records = i as u64 * 100;
        }
        let c = diagnose(&s, &subtasks([[500, 500], [500, 500], [500, 500]]), &[]);
        assert_eq!(c[0].kind, "late_rows", "{c:?}");
        assert!(
            c[0].title.starts_with("10 % of the input arrives after"),
            "{c:?}"
        );
    }

    #[test]
    fn a_quiet_job_has_no_cause() {
        let s = samples([0.1, 0.1, 0.0], [0.0, 0.0, 0.0], |_| 1 << 20);
        assert!(diagnose(&s, &subtasks([[500, 500], [500, 500], [500, 500]]), &[]).is_empty());
        assert!(summary(&[], 30).starts_with("nothing stands out"));
    }
}
