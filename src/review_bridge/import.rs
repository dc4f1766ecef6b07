//! Suspects into Label Studio, each exactly once: the project is found by title (or made), each
//! batch is looked up in the task map, only suspects without a task are imported, and the task ids
//! Label Studio returns are recorded. A batch is marked in the map before it is sent; a mark left
//! by a crash or an unanswered request is settled against the project's tasks (each carries its
//! suspect key) before anything is imported again.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};

use super::{
    client::{LabelStudio, LsError},
    metrics::BridgeMetrics,
    task::{self, KEY_FIELD},
    task_map::TaskMap,
};
use crate::{state::StateError, wire::RereviewMessage};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    LabelStudio(#[from] LsError),
    #[error("task map: {0}")]
    State(#[from] StateError),
    /// An import mark is younger than the request timeout: its request may still be running.
    #[error("an earlier import may still be running in Label Studio; settling it in {0:?}")]
    InFlight(Duration),
}

impl ImportError {
    pub fn recovery(&self) -> crate::retry::Recovery {
        match self {
            ImportError::LabelStudio(e) => e.recovery(),
            ImportError::State(e) => e.recovery(),
            ImportError::InFlight(_) => crate::retry::Recovery::Retry,
        }
    }

    pub fn kind(&self) -> String {
        match self {
            ImportError::LabelStudio(e) => format!("label_studio_{}", e.kind()),
            ImportError::State(_) => "state".into(),
            ImportError::InFlight(_) => "import_in_flight".into(),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The project titled `title`, made with `label_config` if there is none. Returns its id.
pub async fn ensure_project(client: &LabelStudio, title: &str, label_config: &str) -> Result<i64, LsError> {
    let query: String = title.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    let mut path = format!("/api/projects/?title={query}&page_size=100");
    loop {
        let page = client.get(&path).await?;
        let results = page["results"].as_array().cloned().unwrap_or_default();
        if let Some(p) = results.iter().find(|p| p["title"].as_str() == Some(title)) {
            let id = p["id"].as_i64().ok_or_else(|| LsError::Decode { path: path.clone(), message: "project without id".into() })?;
            if p["label_config"].as_str().is_some_and(|c| c != label_config) {
                tracing::warn!(project = id, title, "the project's labelling config differs from the one built from gate.classes; keeping the project's (predictions name `label` and `item`)");
            }
            return Ok(id);
        }
        match page["next"].as_str() {
            // `next` is absolute; keep the path part.
            Some(next) => path = next.find("/api/").map(|i| next[i..].to_string()).unwrap_or_default(),
            None => break,
        }
        if path.is_empty() {
            break;
        }
    }
    let made = client.post("/api/projects/", &json!({"title": title, "label_config": label_config, "description": "Suspects the labelgate gate routed to re-review. Choose the right label; the gate's guess is pre-selected.", "show_collab_predictions": true})).await?;
    let id = made["id"].as_i64().ok_or_else(|| LsError::Decode { path: "/api/projects/".into(), message: "no id in the new project".into() })?;
    tracing::info!(project = id, title, "created the Label Studio project");
    Ok(id)
}

pub struct Importer {
    pub client: Arc<LabelStudio>,
    pub map: Arc<TaskMap>,
    pub metrics: Arc<BridgeMetrics>,
    pub project: i64,
    /// How long a request may run: an import mark younger than this may still be in flight.
    pub request_timeout: Duration,
}

/// What one batch came to.
#[derive(Debug, Default, PartialEq)]
pub struct Imported {
    pub created: usize,
    pub existing: usize,
    pub refused: usize,
}

impl Importer {
    /// Every task of the project as suspect key → task id (the lowest id if a key had several).
    async fn project_tasks(&self) -> Result<HashMap<String, i64>, LsError> {
        let mut found = HashMap::new();
        let page_size = 500;
        for page in 1.. {
            let path = format!("/api/tasks/?project={}&page={page}&page_size={page_size}&fields=task_only", self.project);
            let body = match self.client.get(&path).await {
                Ok(b) => b,
                // Past the last page.
                Err(LsError::Status { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => break,
                Err(e) => return Err(e),
            };
            let tasks = body["tasks"].as_array().cloned().unwrap_or_default();
            for t in &tasks {
                if let (Some(key), Some(id)) = (t["data"][KEY_FIELD].as_str(), t["id"].as_i64()) {
                    let e = found.entry(key.to_string()).or_insert(id);
                    *e = (*e).min(id);
                }
            }
            if tasks.len() < page_size {
                break;
            }
        }
        Ok(found)
    }

    /// Settles the import marks a crash or a lost answer left: tasks Label Studio has are recorded,
    /// the rest are cleared so that their suspects are imported again.
    pub async fn reconcile(&self) -> Result<usize, ImportError> {
        let marked = self.map.importing(self.project).await?;
        if marked.is_empty() {
            return Ok(0);
        }
        let youngest = marked.iter().map(|(_, t)| *t).max().unwrap_or(0);
        let settle_at = youngest + self.request_timeout.as_millis() as u64 + 2_000;
        let now = now_ms();
        if now < settle_at {
            return Err(ImportError::InFlight(Duration::from_millis(settle_at - now)));
        }
        let tasks = self.project_tasks().await?;
        let keys: Vec<String> = marked.into_iter().map(|(k, _)| k).collect();
        let found: Vec<(String, i64)> = keys.iter().filter_map(|k| tasks.get(k).map(|id| (k.clone(), *id))).collect();
        self.map.finish_import(self.project, &found, &keys).await?;
        self.metrics.tasks_reconciled.inc_by(found.len() as u64);
        tracing::info!(marked = keys.len(), found = found.len(), "settled interrupted imports against Label Studio");
        Ok(found.len())
    }

    /// Imports the suspects that have no task yet. On an error the batch's marks stay, and
    /// [`Importer::reconcile`] must run before the batch is tried again.
    pub async fn import(&self, suspects: &[RereviewMessage]) -> Result<Imported, ImportError> {
        let mut seen = HashSet::new();
        let unique: Vec<&RereviewMessage> = suspects.iter().filter(|m| seen.insert(task::suspect_key(&m.vendor_id, &m.sample_id))).collect();
        let keys: Vec<String> = unique.iter().map(|m| task::suspect_key(&m.vendor_id, &m.sample_id)).collect();
        let ids = self.map.task_ids(self.project, &keys).await?;
        let missing: Vec<(&RereviewMessage, String)> = unique.iter().zip(keys).zip(&ids).filter(|(_, id)| id.is_none()).map(|((m, k), _)| (*m, k)).collect();
        let mut outcome = Imported { existing: suspects.len() - missing.len(), ..Imported::default() };
        self.metrics.tasks_existing.inc_by(outcome.existing as u64);
        if missing.is_empty() {
            return Ok(outcome);
        }
        match self.send(&missing).await {
            Ok(n) => outcome.created += n,
            Err(ImportError::LabelStudio(e)) if e.is_client_error() && missing.len() > 1 => {
                // One bad suspect must not hold back the batch: find it by sending one at a time.
                tracing::warn!(error = %e, "Label Studio refused a batch; importing its suspects one by one");
                self.map.finish_import(self.project, &[], &missing.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>()).await?;
                for one in &missing {
                    match self.send(std::slice::from_ref(one)).await {
                        Ok(n) => outcome.created += n,
                        Err(ImportError::LabelStudio(e)) if e.is_client_error() => {
                            self.refuse(one, &e).await?;
                            outcome.refused += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(ImportError::LabelStudio(e)) if e.is_client_error() => {
                self.refuse(&missing[0], &e).await?;
                outcome.refused += 1;
            }
            Err(e) => return Err(e),
        }
        Ok(outcome)
    }

    async fn refuse(&self, (m, key): &(&RereviewMessage, String), e: &LsError) -> Result<(), ImportError> {
        tracing::error!(sample_id = %m.sample_id, vendor_id = %m.vendor_id, error = %e, "Label Studio refused the suspect's task; it stays on the re-review topic");
        self.metrics.suspects_rejected.with_label_values(&["refused"]).inc();
        self.map.finish_import(self.project, &[], std::slice::from_ref(key)).await?;
        Ok(())
    }

    /// Marks, imports and records one group of suspects that have no task.
    async fn send(&self, missing: &[(&RereviewMessage, String)]) -> Result<usize, ImportError> {
        let keys: Vec<String> = missing.iter().map(|(_, k)| k.clone()).collect();
        self.map.begin_import(self.project, &keys, now_ms()).await?;
        let tasks: Vec<Value> = missing.iter().map(|(m, _)| task::task(m)).collect();
        let path = format!("/api/projects/{}/import?return_task_ids=true", self.project);
        let answer = self.client.post(&path, &Value::Array(tasks)).await?;
        let ids: Vec<i64> = answer["task_ids"].as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default();
        if ids.len() != keys.len() {
            // The marks stay: reconciliation finds what was made.
            return Err(LsError::Decode { path, message: format!("{} task ids for {} tasks", ids.len(), keys.len()) }.into());
        }
        let pairs: Vec<(String, i64)> = keys.iter().cloned().zip(ids).collect();
        self.map.finish_import(self.project, &pairs, &keys).await?;
        self.metrics.tasks_created.inc_by(pairs.len() as u64);
        Ok(pairs.len())
    }
}
