//! Alerts: rules over the jobs' live state, evaluated every interval, delivered to
//! webhooks once when they fire and once when they resolve.
//!
//! ```text
//!  every interval: JobSample per job ──Alerts::evaluate──> transitions ──> webhook (retried)
//!  per (rule, job):   ok ──condition──> pending ──held for `for_ms`──> firing ──clears──> ok
//!                                         │ clears                        notify "firing"   notify "resolved"
//!                                         └──> ok (nothing sent)
//! ```
//!
//! A notification carries an `id` (`rule/job/started`) shared by its firing and resolved
//! messages, so a receiver that sees a retry twice can drop the second.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_runtime::metrics::HistogramSnapshot;
use sluice_types::{Result, SluiceError};

/// One rule: a condition over a job (or every job), held for `for_ms`, sent to a webhook.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Unique name.
    #[schema(min_length = 1)]
    pub name: String,
    /// What makes it fire.
    pub condition: Condition,
    /// The job (by name) it watches; every job when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// How long the condition must hold before the alert fires (0: at once).
    #[serde(default)]
    pub for_ms: u64,
    /// Where notifications go.
    pub webhook: Webhook,
}

/// What makes an alert fire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// The job failed (and is not restarting).
    JobFailed,
    /// More than `more_than` restarts within the last `within_ms`.
    Restarts {
        /// Restarts allowed in the window.
        more_than: usize,
        /// The window.
        within_ms: u64,
    },
    /// At least `at_least` failed checkpoints within the last `within_ms`.
    CheckpointFailures {
        /// Failed checkpoints that fire it.
        at_least: u64,
        /// The window.
        within_ms: u64,
    },
    /// The p99 end-to-end latency at the job's sinks, over the last interval, above this.
    LatencyP99 {
        /// The limit, ms.
        above_ms: f64,
    },
    /// The job's Kafka consumer lag (records behind the partitions' ends) above this.
    ConsumerLag {
        /// The limit, records.
        above: i64,
    },
    /// Records sent to the dead-letter output per second, over the last interval.
    DeadLetterRate {
        /// The limit, records per second.
        above_per_s: f64,
    },
}

/// A webhook.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://host:port/path` or `https://…`.
    pub url: String,
    /// `json` (the notification as is) or `slack` (`{"text": …}`, as Slack, Mattermost
    /// and Rocket.Chat incoming webhooks take).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Attempts before giving up (with backoff: 0.5 s, 1 s, 2 s, … up to 30 s).
    #[serde(default = "default_attempts")]
    #[schema(minimum = 1)]
    pub max_attempts: u32,
    /// For `https://`: PEM certificates trusted besides the system's (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Webhook {
    /// The webhook's address, with its extra trusted certificates; only public
    /// addresses when `public_only`.
    pub fn address(&self, public_only: bool) -> Result<sluice_connectors::http::HttpUrl> {
        let mut url = sluice_connectors::http::HttpUrl::parse(&self.url)?;
        if public_only {
            url = url.public_only()?;
        }
        match &self.ca_file {
            Some(ca) => url.with_ca_file(ca),
            None => Ok(url),
        }
    }
}

fn default_attempts() -> u32 {
    8
}

/// How a notification is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The [`Notification`] as JSON.
    #[default]
    Json,
    /// `{"text": "…"}`.
    Slack,
}

impl AlertRule {
    /// Checks the rule; a bad one is refused when it is loaded, not when it would fire.
    /// With `public_only`, its webhook must not be a non-public address.
    pub fn validate(&self, public_only: bool) -> Result<()> {
        let bad = |m: String| {
            Err(SluiceError::user(format!(
                "alert rule `{}`: {m}",
                self.name
            )))
        };
        if self.name.trim().is_empty() {
            return Err(SluiceError::user("an alert rule needs a name"));
        }
        self.webhook.address(public_only).map_err(|e| {
            SluiceError::user(format!(
                "alert rule `{}`: webhook `{}`: {}",
                self.name, self.webhook.url, e.message
            ))
        })?;
        if self.webhook.max_attempts == 0 {
            return bad("webhook max_attempts must be at least 1".into());
        }
        match &self.condition {
            Condition::Restarts { within_ms: 0, .. }
            | Condition::CheckpointFailures { within_ms: 0, .. } => {
                bad("within_ms must be more than 0".into())
            }
            Condition::CheckpointFailures { at_least: 0, .. } => {
                bad("at_least must be at least 1".into())
            }
            Condition::LatencyP99 { above_ms } if !(above_ms.is_finite() && *above_ms >= 0.0) => {
                bad(format!("above_ms {above_ms} is not a duration"))
            }
            Condition::DeadLetterRate { above_per_s }
                if !(above_per_s.is_finite() && *above_per_s >= 0.0) =>
            {
                bad(format!("above_per_s {above_per_s} is not a rate"))
            }
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        let held = match self.for_ms {
            0 => String::new(),
            ms => format!(" for {ms} ms"),
        };
        let c = match &self.condition {
            Condition::JobFailed => "the job failed".to_string(),
            Condition::Restarts {
                more_than,
                within_ms,
            } => format!("more than {more_than} restarts within {within_ms} ms"),
            Condition::CheckpointFailures {
                at_least,
                within_ms,
            } => format!("at least {at_least} failed checkpoints within {within_ms} ms"),
            Condition::LatencyP99 { above_ms } => {
                format!("end-to-end latency p99 above {above_ms} ms")
            }
            Condition::ConsumerLag { above } => format!("consumer lag above {above} records"),
            Condition::DeadLetterRate { above_per_s } => {
                format!("dead letters above {above_per_s}/s")
            }
        };
        format!("{c}{held}")
    }
}

/// Reads rules from a JSON file (an array of rules); fails on the first bad one.
pub fn load_rules(path: &std::path::Path) -> Result<Vec<AlertRule>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SluiceError::user(format!("cannot read the alert rules {}", path.display())).with_source(e)
    })?;
    let rules: Vec<AlertRule> = serde_json::from_str(&text).map_err(|e| {
        SluiceError::user(format!(
            "the alert rules {} are not a JSON array of rules",
            path.display()
        ))
        .with_source(e)
    })?;
    let mut names = std::collections::HashSet::new();
    for r in &rules {
        r.validate(false)?;
        if !names.insert(r.name.clone()) {
            return Err(SluiceError::user(format!(
                "two alert rules are named `{}`",
                r.name
            )));
        }
    }
    Ok(rules)
}

/// What the rules see of one job at one evaluation.
#[derive(Clone, Debug, Default)]
pub struct JobSample {
    /// Job id.
    pub id: u64,
    /// Job name.
    pub name: String,
    /// Whether it is running.
    pub running: bool,
    /// Whether it failed for good.
    pub failed: bool,
    /// When it restarted after failures (epoch ms).
    pub restarts_ms: Vec<i64>,
    /// When its checkpoints failed (epoch ms).
    pub failed_checkpoints_ms: Vec<i64>,
    /// The sinks' end-to-end latency so far (µs), merged.
    pub latency: HistogramSnapshot,
    /// Dead letters so far.
    pub dead_letters: u64,
    /// Consumer lag of its sources, if they know it.
    pub source_lag: Option<i64>,
}

/// An alert's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition holds, not yet for `for_ms`.
    Pending,
    /// Fired (and notified).
    Firing,
}

/// A rule's alert on one job.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ActiveAlert {
    /// The rule.
    pub rule: String,
    /// The job.
    pub job: String,
    /// Its id.
    pub job_id: u64,
    /// Pending or firing.
    pub state: AlertState,
    /// When the condition started to hold (epoch ms).
    pub since_ms: i64,
    /// When it fired, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired_ms: Option<i64>,
    /// The value that breached, for a person.
    pub value: String,
}

/// A message to a webhook.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Notification {
    /// `rule/job_id/started_ms`: the same for an alert's firing and resolved messages.
    pub id: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// The rule.
    pub rule: String,
    /// What the rule watches.
    pub condition: String,
    /// The job.
    pub job: String,
    /// Its id.
    pub job_id: u64,
    /// The value that breached (for `resolved`: the last one seen).
    pub value: String,
    /// When the condition started to hold.
    pub started_ms: i64,
    /// When it fired.
    pub fired_ms: i64,
    /// When it resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<i64>,
}

impl Notification {
    /// The body for `format`.
    pub fn body(&self, format: WebhookFormat) -> String {
        match format {
            WebhookFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            WebhookFormat::Slack => {
                let text = match self.status {
                    "firing" => format!(
                        ":red_circle: *FIRING* `{}` on job `{}`: {} ({})",
                        self.rule, self.job, self.value, self.condition
                    ),
                    _ => format!(
                        ":large_green_circle: *RESOLVED* `{}` on job `{}` ({})",
                        self.rule, self.job, self.condition
                    ),
                };
                serde_json::json!({ "text": text }).to_string()
            }
        }
    }
}

/// What the last evaluation saw of a job, for the interval rates.
struct Previous {
    latency: HistogramSnapshot,
    dead_letters: u64,
    at_ms: i64,
}

/// The rules and the state of their alerts.
#[derive(Default)]
pub struct Alerts {
    rules: Vec<AlertRule>,
    active: BTreeMap<(String, u64), ActiveAlert>,
    previous: HashMap<u64, Previous>,
    public_only: bool,
}

impl Alerts {
    /// Rules, checked.
    pub fn new(rules: Vec<AlertRule>) -> Self {
        Self {
            rules,
            ..Default::default()
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    /// Alerts pending or firing, optionally of one job.
    pub fn active(&self, job_id: Option<u64>) -> Vec<ActiveAlert> {
        self.active
            .values()
            .filter(|a| job_id.is_none_or(|j| a.job_id == j))
            .cloned()
            .collect()
    }

    /// Webhooks call public addresses only (see `HttpUrl::public_only`).
    pub fn public_only(mut self, on: bool) -> Self {
        self.public_only = on;
        self
    }

    /// Whether webhooks call public addresses only.
    pub fn is_public_only(&self) -> bool {
        self.public_only
    }

    /// Adds a rule; its name must be new.
    pub fn add(&mut self, rule: AlertRule) -> Result<()> {
        rule.validate(self.public_only)?;
        if self.rules.iter().any(|r| r.name == rule.name) {
            return Err(SluiceError::user(format!(
                "an alert rule named `{}` exists; delete it first",
                rule.name
            )));
        }
        self.rules.push(rule);
        Ok(())
    }

    /// Removes a rule; its firing alerts resolve. `None` when there is no such rule.
    pub fn remove(&mut self, name: &str, now_ms: i64) -> Option<Vec<(Webhook, Notification)>> {
        let i = self.rules.iter().position(|r| r.name == name)?;
        let rule = self.rules.remove(i);
        let keys: Vec<_> = self
            .active
            .keys()
            .filter(|(r, _)| r == name)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for k in keys {
            if let Some(a) = self.active.remove(&k)
                && a.state == AlertState::Firing
            {
                out.push((rule.webhook.clone(), notification(&rule, &a, now_ms)));
            }
        }
        Some(out)
    }

    /// One evaluation at `now_ms`: the notifications to send (firing and resolved).
    pub fn evaluate(&mut self, now_ms: i64, jobs: &[JobSample]) -> Vec<(Webhook, Notification)> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for rule in &self.rules {
            for job in jobs
                .iter()
                .filter(|j| rule.job.as_ref().is_none_or(|n| *n == j.name))
            {
                let key = (rule.name.clone(), job.id);
                seen.insert(key.clone());
                let breach = check(&rule.condition, job, self.previous.get(&job.id), now_ms);
                match (breach, self.active.get_mut(&key)) {
                    (Some(value), Some(a)) => {
                        a.value = value;
                        if a.state == AlertState::Pending
                            && now_ms - a.since_ms >= rule.for_ms as i64
                        {
                            a.state = AlertState::Firing;
                            a.fired_ms = Some(now_ms);
                            out.push((rule.webhook.clone(), notification(rule, a, 0)));
                        }
                    }
                    (Some(value), None) => {
                        let mut a = ActiveAlert {
                            rule: rule.name.clone(),
                            job: job.name.clone(),
                            job_id: job.id,
                            state: AlertState::Pending,
                            since_ms: now_ms,
                            fired_ms: None,
                            value,
                        };
                        if rule.for_ms == 0 {
                            a.state = AlertState::Firing;
                            a.fired_ms = Some(now_ms);
                            out.push((rule.webhook.clone(), notification(rule, &a, 0)));
                        }
                        self.active.insert(key, a);
                    }
                    (None, Some(_)) => {
                        if let Some(a) = self.active.remove(&key)
                            && a.state == AlertState::Firing
                        {
                            out.push((rule.webhook.clone(), notification(rule, &a, now_ms)));
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        // A job that is gone resolves its alerts.
        let gone: Vec<_> = self
            .active
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let (Some(a), Some(rule)) = (
                self.active.remove(&k),
                self.rules.iter().find(|r| r.name == k.0),
            ) && a.state == AlertState::Firing
            {
                out.push((rule.webhook.clone(), notification(rule, &a, now_ms)));
            }
        }
        self.previous = jobs
            .iter()
            .map(|j| {
                (
                    j.id,
                    Previous {
                        latency: j.latency.clone(),
                        dead_letters: j.dead_letters,
                        at_ms: now_ms,
                    },
                )
            })
            .collect();
        out
    }
}

/// A firing notification (`resolved_ms == 0`) or a resolved one.
fn notification(rule: &AlertRule, a: &ActiveAlert, resolved_ms: i64) -> Notification {
    let fired = a.fired_ms.unwrap_or(a.since_ms);
    Notification {
        id: format!("{}/{}/{}", rule.name, a.job_id, a.since_ms),
        status: if resolved_ms == 0 {
            "firing"
        } else {
            "resolved"
        },
        rule: rule.name.clone(),
        condition: rule.describe(),
        job: a.job.clone(),
        job_id: a.job_id,
        value: a.value.clone(),
        started_ms: a.since_ms,
        fired_ms: fired,
        resolved_ms: (resolved_ms != 0).then_some(resolved_ms),
    }
}

/// Whether `c` holds for `job`: the breaching value, for a person.
fn check(c: &Condition, job: &JobSample, prev: Option<&Previous>, now_ms: i64) -> Option<String> {
    match c {
        Condition::JobFailed => job.failed.then(|| "the job failed".to_string()),
        Condition::Restarts {
            more_than,
            within_ms,
        } => {
            let n = job
                .restarts_ms
                .iter()
                .filter(|&&t| t > now_ms - *within_ms as i64)
                .count();
            (n > *more_than).then(|| format!("{n} restarts within {within_ms} ms"))
        }
        Condition::CheckpointFailures {
            at_least,
            within_ms,
        } => {
            let n = job
                .failed_checkpoints_ms
                .iter()
                .filter(|&&t| t > now_ms - *within_ms as i64)
                .count() as u64;
            (n >= *at_least).then(|| format!("{n} failed checkpoints within {within_ms} ms"))
        }
        Condition::LatencyP99 { above_ms } => {
            let p = prev?;
            let recent = job.latency.since(&p.latency);
            if !job.running || recent.count == 0 {
                return None;
            }
            let p99 = recent.quantile(0.99) as f64 / 1000.0;
            (p99 > *above_ms).then(|| format!("p99 {p99:.1} ms over {} rows", recent.count))
        }
        Condition::ConsumerLag { above } => {
            let lag = job.source_lag.filter(|_| job.running)?;
            (lag > *above).then(|| format!("lag {lag} records"))
        }
        Condition::DeadLetterRate { above_per_s } => {
            let p = prev?;
            let secs = (now_ms - p.at_ms) as f64 / 1000.0;
            if secs <= 0.0 {
                return None;
            }
            let rate = job.dead_letters.saturating_sub(p.dead_letters) as f64 / secs;
            (rate > *above_per_s).then(|| format!("{rate:.1} dead letters/s"))
        }
    }
}

/// The backoff before attempt `n` (1-based) after a failed one.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((500u64 << attempt.saturating_sub(1).min(10)).min(30_000))
}

/// Posts a notification, retrying with backoff: the attempts it took, and the last
/// error if it was not delivered. What the webhook answers is never kept or shown
/// (only its status): the answer of whatever a rule points at is not for API readers.
pub async fn deliver(hook: &Webhook, n: &Notification, public_only: bool) -> (u32, Option<String>) {
    let body = n.body(hook.format);
    let mut last = String::new();
    for attempt in 1..=hook.max_attempts {
        let (h, b) = (hook.clone(), body.clone());
        let r = tokio::task::spawn_blocking(move || {
            h.address(public_only)?.status_of(
                "POST",
                "",
                Some(&b),
                &[("Content-Type", "application/json")],
            )
        })
        .await;
        match r {
            Ok(Ok(status)) if (200..300).contains(&status) => return (attempt, None),
            Ok(Ok(status)) => {
                last = format!("HTTP {status}");
                tracing::warn!(url = %hook.url, answer = %last, attempt, "the alert webhook refused a notification");
            }
            Ok(Err(e)) => {
                last = e.report().lines().next().unwrap_or_default().to_string();
                tracing::warn!(url = %hook.url, error = %e, attempt, "cannot reach the alert webhook");
            }
            Err(e) => {
                last = e.to_string();
                tracing::warn!(error = %e, "the webhook call did not run");
            }
        }
        if attempt < hook.max_attempts {
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    tracing::error!(url = %hook.url, id = %n.id, status = n.status, error = %last, "gave up delivering an alert");
    (hook.max_attempts, Some(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, condition: Condition, for_ms: u64) -> AlertRule {
        AlertRule {
            name: name.into(),
            condition,
            job: None,
            for_ms,
            webhook: Webhook {
                url: "http://127.0.0.1:9/hook".into(),
                format: WebhookFormat::Json,
                max_attempts: 1,
                ca_file: None,
            },
        }
    }

    fn job() -> JobSample {
        JobSample {
            id: 1,
            name: "orders".into(),
            running: true,
            ..Default::default()
        }
    }

    fn statuses(out: &[(Webhook, Notification)]) -> Vec<&'static str> {
        out.iter().map(|(_, n)| n.status).collect()
    }

    #[test]
    fn an_alert_fires_after_its_hold_once_and_resolves_once() {
        let mut a = Alerts::new(vec![rule(
            "lag",
            Condition::ConsumerLag { above: 100 },
            3000,
        )]);
        let mut j = job();
        j.source_lag = Some(500);
        assert!(a.evaluate(0, std::slice::from_ref(&j)).is_empty());
        assert_eq!(a.active(None)[0].state, AlertState::Pending);
        assert!(a.evaluate(2000, std::slice::from_ref(&j)).is_empty());
        let out = a.evaluate(3000, std::slice::from_ref(&j));
        assert_eq!(statuses(&out), ["firing"]);
        assert_eq!(out[0].1.value, "lag 500 records");
        // Still breaching: nothing more is sent.
        for t in [4000, 5000, 6000] {
            assert!(a.evaluate(t, std::slice::from_ref(&j)).is_empty());
        }
        j.source_lag = Some(10);
        let out = a.evaluate(7000, std::slice::from_ref(&j));
        assert_eq!(statuses(&out), ["resolved"]);
        assert_eq!(out[0].1.id, "lag/1/0");
        assert_eq!(out[0].1.resolved_ms, Some(7000));
        assert!(a.evaluate(8000, &[j]).is_empty());
        assert!(a.active(None).is_empty());
    }

    #[test]
    fn a_breach_shorter_than_the_hold_sends_nothing() {
        let mut a = Alerts::new(vec![rule(
            "lag",
            Condition::ConsumerLag { above: 100 },
            3000,
        )]);
        let mut j = job();
        j.source_lag = Some(500);
        assert!(a.evaluate(0, std::slice::from_ref(&j)).is_empty());
        j.source_lag = Some(0);
        assert!(a.evaluate(1000, std::slice::from_ref(&j)).is_empty());
        j.source_lag = Some(500);
        assert!(a.evaluate(2000, std::slice::from_ref(&j)).is_empty());
        // The hold restarted at 2000.
        assert!(a.evaluate(4000, std::slice::from_ref(&j)).is_empty());
        assert_eq!(statuses(&a.evaluate(5000, &[j])), ["firing"]);
    }

    #[test]
    fn restarts_and_checkpoint_failures_count_within_their_window() {
        let mut a = Alerts::new(vec![
            rule(
                "restarts",
                Condition::Restarts {
                    more_than: 1,
                    within_ms: 10_000,
                },
                0,
            ),
            rule(
                "checkpoints",
                Condition::CheckpointFailures {
                    at_least: 2,
                    within_ms: 5_000,
                },
                0,
            ),
        ]);
        let mut j = job();
        j.restarts_ms = vec![1000];
        j.failed_checkpoints_ms = vec![1000];
        assert!(a.evaluate(2000, std::slice::from_ref(&j)).is_empty());
        j.restarts_ms.push(3000);
        j.failed_checkpoints_ms.push(3000);
        let out = a.evaluate(3500, std::slice::from_ref(&j));
        assert_eq!(statuses(&out), ["firing", "firing"]);
        // The first checkpoint failure leaves the 5 s window at 6 000; the first restart
        // the 10 s window at 11 000.
        assert_eq!(
            a.evaluate(6500, std::slice::from_ref(&j))
                .iter()
                .map(|(_, n)| (n.rule.as_str(), n.status))
                .collect::<Vec<_>>(),
            [("checkpoints", "resolved")]
        );
        assert_eq!(statuses(&a.evaluate(11_500, &[j])), ["resolved"]);
    }

    #[test]
    fn latency_and_dead_letter_rates_are_over_the_last_interval() {
        let mut a = Alerts::new(vec![
            rule("p99", Condition::LatencyP99 { above_ms: 100.0 }, 0),
            rule("dlq", Condition::DeadLetterRate { above_per_s: 5.0 }, 0),
        ]);
        let h = sluice_runtime::metrics::Histogram::default();
        for _ in 0..1000 {
            h.record_n(500_000, 1); // 500 ms: a slow start
        }
        let mut j = job();
        j.latency = h.snapshot();
        assert!(a.evaluate(0, std::slice::from_ref(&j)).is_empty());
        // The next second is fast: the slow start does not count any more.
        for _ in 0..1000 {
            h.record_n(2_000, 1);
        }
        j.latency = h.snapshot();
        j.dead_letters = 20; // 20 in one second
        let out = a.evaluate(1000, std::slice::from_ref(&j));
        assert_eq!(
            out.iter().map(|(_, n)| n.rule.as_str()).collect::<Vec<_>>(),
            ["dlq"]
        );
        for _ in 0..100 {
            h.record_n(900_000, 1);
        }
        j.latency = h.snapshot();
        let out = a.evaluate(2000, std::slice::from_ref(&j));
        let got: Vec<_> = out
            .iter()
            .map(|(_, n)| (n.rule.as_str(), n.status))
            .collect();
        assert_eq!(got, [("p99", "firing"), ("dlq", "resolved")]);
    }

    #[test]
    fn rules_watch_their_job_and_gone_jobs_resolve() {
        let mut r = rule("failed", Condition::JobFailed, 0);
        r.job = Some("orders".into());
        let mut a = Alerts::new(vec![r]);
        let mut other = job();
        other.id = 2;
        other.name = "payments".into();
        other.failed = true;
        assert!(a.evaluate(0, std::slice::from_ref(&other)).is_empty());
        let mut j = job();
        j.failed = true;
        assert_eq!(statuses(&a.evaluate(1, &[j, other.clone()])), ["firing"]);
        assert_eq!(statuses(&a.evaluate(2, &[other])), ["resolved"]);
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let mut r = rule("x", Condition::JobFailed, 0);
        r.webhook.url = "hooks.example.com/x".into();
        assert!(r.validate(false).unwrap_err().message.contains("webhook"));
        r.webhook.url = "https://hooks.example.com/x".into();
        r.validate(false).unwrap();
        r.webhook.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(r.validate(false).unwrap_err().message.contains("ca.pem"));
        let r = rule(
            "y",
            Condition::Restarts {
                more_than: 1,
                within_ms: 0,
            },
            0,
        );
        assert!(r.validate(false).unwrap_err().message.contains("within_ms"));
        let text = r#"[{"name": "a", "condition": {"type": "latency_p99", "above_ms": 50},
                       "webhook": {"url": "http://127.0.0.1:1/"}, "extra": 1}]"#;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rules.json");
        std::fs::write(&p, text).unwrap();
        let e = load_rules(&p).unwrap_err();
        assert!(format!("{e}").contains("not a JSON array of rules"), "{e}");
        std::fs::write(&p, text.replace(", \"extra\": 1", "")).unwrap();
        let rules = load_rules(&p).unwrap();
        assert_eq!(rules[0].condition, Condition::LatencyP99 { above_ms: 50.0 });
        assert_eq!(rules[0].webhook.max_attempts, 8);
    }

    #[test]
    fn slack_bodies_are_text_and_backoff_grows_to_a_cap() {
        let r = rule("p99", Condition::LatencyP99 { above_ms: 10.0 }, 0);
        let a = ActiveAlert {
            rule: "p99".into(),
            job: "orders".into(),
            job_id: 1,
            state: AlertState::Firing,
            since_ms: 5,
            fired_ms: Some(5),
            value: "p99 20.0 ms".into(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&notification(&r, &a, 0).body(WebhookFormat::Slack)).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("FIRING") && text.contains("orders") && text.contains("20.0 ms"));
        let v: serde_json::Value =
            serde_json::from_str(&notification(&r, &a, 9).body(WebhookFormat::Json)).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["resolved_ms"].as_i64()),
            (Some("resolved"), Some(9))
        );
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
