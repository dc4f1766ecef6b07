//! The `[review_bridge]` section: how `labelgate review-bridge` reaches Label Studio, and its
//! checks (the `run` command ignores it).

use serde::Deserialize;

use super::Secret;

/// `[review_bridge]`: see config/default.toml and docs/label-studio.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub label_studio_url: String,
    /// A Label Studio personal access token (a JWT refresh token).
    #[serde(default)]
    pub token: Option<Secret>,
    pub project_title: String,
    pub group_id: String,
    pub import_batch_size: usize,
    pub import_linger_ms: u64,
    pub poll_interval_secs: u64,
    pub listen: String,
    /// Where Label Studio posts annotation events; empty = poll only.
    pub webhook_url: String,
    #[serde(default)]
    pub webhook_secret: Option<Secret>,
    pub request_timeout_secs: u64,
}

impl BridgeConfig {
    /// What `review-bridge` needs beyond the shared checks, each problem with its key and fix.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.label_studio_url.starts_with("http://") || self.label_studio_url.starts_with("https://")) {
            p.push(format!("review_bridge.label_studio_url = {:?}: use the base URL, e.g. \"http://label-studio:8080\"", self.label_studio_url));
        }
        if self.token.as_ref().is_none_or(|t| t.expose().is_empty()) {
            p.push("review_bridge.token: set a Label Studio personal access token (Account & Settings > Personal Access Token) with LABELGATE__REVIEW_BRIDGE__TOKEN".into());
        }
        if self.project_title.trim().is_empty() {
            p.push("review_bridge.project_title: name the Label Studio project, e.g. \"labelgate re-review\"".into());
        }
        if self.group_id.is_empty() {
            p.push("review_bridge.group_id: name the bridge's consumer group, e.g. \"labelgate-review-bridge\"".into());
        }
        if !(1..=1000).contains(&self.import_batch_size) {
            p.push(format!("review_bridge.import_batch_size = {}: between 1 and 1000, e.g. 100", self.import_batch_size));
        }
        if self.poll_interval_secs == 0 {
            p.push("review_bridge.poll_interval_secs: must be positive, e.g. 30".into());
        }
        if self.request_timeout_secs == 0 {
            p.push("review_bridge.request_timeout_secs: must be positive, e.g. 30".into());
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("review_bridge.listen = {:?}: use host:port, e.g. \"0.0.0.0:9465\"", self.listen));
        }
        if !self.webhook_url.is_empty() {
            if !(self.webhook_url.starts_with("http://") || self.webhook_url.starts_with("https://")) {
                p.push(format!("review_bridge.webhook_url = {:?}: use the URL Label Studio reaches this bridge's /webhooks/label-studio at, or \"\" to poll only", self.webhook_url));
            }
            if self.webhook_secret.as_ref().is_none_or(|s| s.expose().len() < 16) {
                p.push("review_bridge.webhook_secret: with a webhook_url, set a shared secret of at least 16 characters with LABELGATE__REVIEW_BRIDGE__WEBHOOK_SECRET".into());
            }
        }
        p
    }
}
