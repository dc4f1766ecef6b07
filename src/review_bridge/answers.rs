//! Reviewers' answers back to the gate. They arrive two ways: Label Studio's webhook
//! (`ANNOTATION_CREATED` / `ANNOTATION_UPDATED` to `POST /webhooks/label-studio`, guarded by a
//! shared-secret header) and a periodic poll of the project's annotated tasks, because Label Studio
//! sends each webhook once, with a 1 s timeout and no retry. Both paths go through one
//! [`Forwarder`], which writes each answer once as `{"sample_id","final_label","reviewer"}` on the
//! reviews topic: an annotation is forwarded again only when its label changes (a correction).
//! Skipped tasks (`was_cancelled`) are ignored; the reviewer is the Label Studio user's email.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tokio::sync::{Mutex, OnceCell};

use super::{
    client::{LabelStudio, LsError},
    import::now_ms,
    metrics::BridgeMetrics,
    task::{FROM_NAME, KEY_FIELD},
    task_map::TaskMap,
};
use crate::{config::Secret, state::StateError};

/// The route Label Studio's webhook posts to.
pub const WEBHOOK_PATH: &str = "/webhooks/label-studio";
/// The header that carries the shared secret.
pub const SECRET_HEADER: &str = "X-Labelgate-Webhook-Secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Webhook,
    Poll,
}

impl Path {
    pub fn as_str(&self) -> &'static str {
        match self {
            Path::Webhook => "webhook",
            Path::Poll => "poll",
        }
    }
}

/// One reviewer's answer on one bridge task.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub annotation_id: i64,
    pub sample_id: String,
    pub final_label: String,
    pub user_id: Option<i64>,
    /// When the answer was last saved, unix ms.
    pub saved_ms: Option<u64>,
}

/// Why an annotation is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    Cancelled,
    NoChoice,
    UnknownClass,
    NotABridgeTask,
}

impl Ignored {
    fn as_str(&self) -> &'static str {
        match self {
            Ignored::Cancelled => "cancelled",
            Ignored::NoChoice => "no_choice",
            Ignored::UnknownClass => "unknown_class",
            Ignored::NotABridgeTask => "not_a_bridge_task",
        }
    }
}

/// The answer in an annotation of a task whose data is `task_data`.
pub fn answer(annotation: &Value, task_data: &Value, classes: &[String]) -> Result<Answer, Ignored> {
    if task_data[KEY_FIELD].as_str().is_none() {
        return Err(Ignored::NotABridgeTask);
    }
    let sample_id = task_data["sample_id"].as_str().ok_or(Ignored::NotABridgeTask)?.to_string();
    if annotation["was_cancelled"].as_bool() == Some(true) {
        return Err(Ignored::Cancelled);
    }
    let annotation_id = annotation["id"].as_i64().ok_or(Ignored::NotABridgeTask)?;
    let choice = annotation["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["from_name"].as_str() == Some(FROM_NAME) && r["type"].as_str() == Some("choices"))
        .find_map(|r| r["value"]["choices"].as_array().and_then(|c| c.first()).and_then(Value::as_str))
        .ok_or(Ignored::NoChoice)?;
    if !classes.iter().any(|c| c == choice) {
        return Err(Ignored::UnknownClass);
    }
    let user_id = match &annotation["completed_by"] {
        Value::Number(n) => n.as_i64(),
        Value::Object(o) => o.get("id").and_then(Value::as_i64),
        _ => None,
    };
    let saved_ms = annotation["updated_at"].as_str().or(annotation["created_at"].as_str()).and_then(parse_utc_ms);
    Ok(Answer { annotation_id, sample_id, final_label: choice.to_string(), user_id, saved_ms })
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)` → unix ms; other offsets are not what Label Studio sends.
fn parse_utc_ms(s: &str) -> Option<u64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.strip_suffix('Z').or_else(|| time.strip_suffix("+00:00"))?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let millis: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("task map: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    LabelStudio(#[from] LsError),
}

impl ForwardError {
    pub fn kind(&self) -> String {
        match self {
            ForwardError::Kafka(_) => "kafka".into(),
            ForwardError::State(_) => "state".into(),
            ForwardError::LabelStudio(e) => format!("label_studio_{}", e.kind()),
        }
    }
}

pub struct Forwarder {
    pub producer: FutureProducer,
    pub topic: String,
    pub map: Arc<TaskMap>,
    pub client: Arc<LabelStudio>,
    pub metrics: Arc<BridgeMetrics>,
    pub project: i64,
    pub classes: Vec<String>,
    reviewers: Mutex<HashMap<i64, String>>,
    /// One answer at a time: the webhook and the poll may see the same answer together.
    forwarding: Mutex<()>,
}

impl Forwarder {
    pub fn new(producer: FutureProducer, topic: String, map: Arc<TaskMap>, client: Arc<LabelStudio>, metrics: Arc<BridgeMetrics>, project: i64, classes: Vec<String>) -> Self {
        Self { producer, topic, map, client, metrics, project, classes, reviewers: Mutex::new(HashMap::new()), forwarding: Mutex::new(()) }
    }

    /// The reviewer's name: the user's email (else username, else `label-studio-user-{id}`).
    async fn reviewer(&self, user: Option<i64>) -> String {
        let Some(id) = user else { return "label-studio-unknown-user".into() };
        if let Some(name) = self.reviewers.lock().await.get(&id) {
            return name.clone();
        }
        match self.client.get(&format!("/api/users/{id}/")).await {
            Ok(u) => {
                let name = [&u["email"], &u["username"]].iter().filter_map(|v| v.as_str()).find(|s| !s.is_empty()).map_or_else(|| format!("label-studio-user-{id}"), str::to_string);
                self.reviewers.lock().await.insert(id, name.clone());
                name
            }
            Err(e) => {
                // Not cached: the next answer of this user asks again.
                tracing::warn!(user = id, error = %e, "cannot resolve the reviewer; naming them by id");
                format!("label-studio-user-{id}")
            }
        }
    }

    /// Writes the answer unless this annotation already sent this label. Returns whether it wrote.
    pub async fn forward(&self, a: &Answer, path: Path) -> Result<bool, ForwardError> {
        let _one = self.forwarding.lock().await;
        if self.map.forwarded(self.project, a.annotation_id).await?.as_deref() == Some(a.final_label.as_str()) {
            return Ok(false);
        }
        let reviewer = self.reviewer(a.user_id).await;
        let payload = json!({"sample_id": a.sample_id, "final_label": a.final_label, "reviewer": reviewer}).to_string();
        self.producer.send(FutureRecord::to(&self.topic).key(&a.sample_id).payload(&payload), Duration::from_secs(10)).await.map_err(|(e, _)| ForwardError::Kafka(e.to_string()))?;
        // Written after the record is acknowledged: a crash in between sends it again on the next
        // poll, and the gate counts a sample's review once.
        self.map.record_forwarded(self.project, a.annotation_id, &a.final_label).await?;
        self.metrics.reviews.with_label_values(&[path.as_str()]).inc();
        if let Some(saved) = a.saved_ms {
            self.metrics.review_lag.with_label_values(&[path.as_str()]).observe(now_ms().saturating_sub(saved) as f64 / 1000.0);
        }
        tracing::info!(sample_id = %a.sample_id, final_label = %a.final_label, path = path.as_str(), "review forwarded");
        Ok(true)
    }

    /// Counts an annotation that is not forwarded, once whichever path sees it first.
    async fn ignore(&self, annotation: &Value, why: Ignored) -> Result<(), StateError> {
        let Some(id) = annotation["id"].as_i64() else { return Ok(()) };
        let _one = self.forwarding.lock().await;
        if self.map.forwarded(self.project, id).await?.is_none() {
            self.metrics.answers_ignored.with_label_values(&[why.as_str()]).inc();
            // "" is no label: a later edit that chooses one is forwarded.
            self.map.record_forwarded(self.project, id, "").await?;
        }
        Ok(())
    }

    /// Reads every annotated task of the project and forwards what has not been forwarded.
    pub async fn poll_once(&self) -> Result<usize, ForwardError> {
        let tasks = self.client.get(&format!("/api/projects/{}/export?exportType=JSON", self.project)).await?;
        let mut written = 0;
        for t in tasks.as_array().into_iter().flatten() {
            for annotation in t["annotations"].as_array().into_iter().flatten() {
                match answer(annotation, &t["data"], &self.classes) {
                    Ok(a) => written += self.forward(&a, Path::Poll).await? as usize,
                    Err(why) => self.ignore(annotation, why).await?,
                }
            }
        }
        Ok(written)
    }
}

/// Registers (or updates) the project's webhook to `url` with the secret header.
pub async fn ensure_webhook(client: &LabelStudio, project: i64, url: &str, secret: &Secret) -> Result<i64, LsError> {
    let body = json!({
        "project": project,
        "url": url,
        "send_payload": true,
        "send_for_all_actions": false,
        "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
        "headers": { SECRET_HEADER: secret.expose() },
        "is_active": true,
    });
    let existing = client.get(&format!("/api/webhooks/?project={project}")).await?;
    let found = existing.as_array().into_iter().flatten().find(|w| w["url"].as_str() == Some(url) && w["project"].as_i64() == Some(project)).and_then(|w| w["id"].as_i64());
    let id = match found {
        Some(id) => {
            client.patch(&format!("/api/webhooks/{id}/"), &body).await?;
            id
        }
        None => client.post("/api/webhooks/", &body).await?["id"].as_i64().ok_or_else(|| LsError::Decode { path: "/api/webhooks/".into(), message: "no id in the new webhook".into() })?,
    };
    tracing::info!(webhook = id, url, "Label Studio webhook registered");
    Ok(id)
}

/// What the webhook route needs; the forwarder is set once the project is known.
pub struct WebhookState {
    pub secret: Option<Secret>,
    pub forwarder: OnceCell<Arc<Forwarder>>,
}

/// Equal-time comparison, so that the secret cannot be guessed from response times.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn webhook(State(state): State<Arc<WebhookState>>, headers: HeaderMap, body: Bytes) -> (StatusCode, &'static str) {
    let Some(secret) = &state.secret else { return (StatusCode::NOT_FOUND, "no webhook configured\n") };
    let given = headers.get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !same_secret(given, secret.expose().as_bytes()) {
        tracing::warn!("webhook call without the right {SECRET_HEADER} header refused");
        return (StatusCode::UNAUTHORIZED, "bad or missing secret\n");
    }
    let Some(forwarder) = state.forwarder.get() else { return (StatusCode::SERVICE_UNAVAILABLE, "starting\n") };
    let Ok(event) = serde_json::from_slice::<Value>(&body) else { return (StatusCode::BAD_REQUEST, "not JSON\n") };
    if !matches!(event["action"].as_str(), Some("ANNOTATION_CREATED" | "ANNOTATION_UPDATED")) {
        return (StatusCode::OK, "ignored\n");
    }
    let project = event["project"]["id"].as_i64().or(event["annotation"]["project"].as_i64()).or(event["task"]["project"].as_i64());
    if project != Some(forwarder.project) {
        return (StatusCode::OK, "another project\n");
    }
    match answer(&event["annotation"], &event["task"]["data"], &forwarder.classes) {
        Ok(a) => match forwarder.forward(&a, Path::Webhook).await {
            Ok(_) => (StatusCode::OK, "ok\n"),
            Err(e) => {
                // The poll picks it up.
                forwarder.metrics.errors.with_label_values(&[&e.kind()]).inc();
                tracing::warn!(error = %e, "webhook answer not forwarded now; the poll will");
                (StatusCode::SERVICE_UNAVAILABLE, "retry later\n")
            }
        },
        Err(why) => {
            if let Err(e) = forwarder.ignore(&event["annotation"], why).await {
                tracing::warn!(error = %e, "ignored answer not recorded; the poll will");
            }
            (StatusCode::OK, "ignored\n")
        }
    }
}

pub fn webhook_router(state: Arc<WebhookState>) -> Router {
    Router::new().route(WEBHOOK_PATH, post(webhook)).with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        vec!["cat".into(), "dog".into()]
    }

    fn data() -> Value {
        json!({KEY_FIELD: "[\"v\",\"s1\"]", "sample_id": "s1"})
    }

    #[test]
    fn an_annotation_becomes_an_answer() {
        let a = json!({"id": 7, "completed_by": 3, "was_cancelled": false, "updated_at": "2026-11-29T05:58:55.696878Z",
            "result": [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": ["dog"]}}]});
        let got = answer(&a, &data(), &classes()).unwrap();
        assert_eq!((got.annotation_id, got.sample_id.as_str(), got.final_label.as_str(), got.user_id), (7, "s1", "dog", Some(3)));
        assert_eq!(got.saved_ms, Some(1_795_931_935_696));
        let nested = json!({"id": 8, "completed_by": {"id": 4}, "result": a["result"].clone()});
        assert_eq!(answer(&nested, &data(), &classes()).unwrap().user_id, Some(4));
    }

    #[test]
    fn skips_empty_answers_and_foreign_tasks_are_ignored() {
        let choice = json!([{"from_name": "label", "type": "choices", "value": {"choices": ["cat"]}}]);
        assert_eq!(answer(&json!({"id": 1, "was_cancelled": true, "result": choice}), &data(), &classes()), Err(Ignored::Cancelled));
        assert_eq!(answer(&json!({"id": 1, "result": []}), &data(), &classes()), Err(Ignored::NoChoice));
        assert_eq!(answer(&json!({"id": 1, "result": choice}), &json!({"text": "x"}), &classes()), Err(Ignored::NotABridgeTask));
        let cow = json!([{"from_name": "label", "type": "choices", "value": {"choices": ["cow"]}}]);
        assert_eq!(answer(&json!({"id": 1, "result": cow}), &data(), &classes()), Err(Ignored::UnknownClass));
    }

    #[test]
    fn utc_timestamps_parse() {
        assert_eq!(parse_utc_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc_ms("2000-03-01T00:00:01.5+00:00"), Some(951_868_801_500));
        assert_eq!(parse_utc_ms("yesterday"), None);
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abd", b"abc") && !same_secret(b"ab", b"abc"));
    }
}
