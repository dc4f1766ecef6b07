//! Plain REST to Label Studio: a personal access token is exchanged for short-lived access tokens
//! (`POST /api/token/refresh/`), which are refreshed before they expire and once more on a 401.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum LsError {
    #[error("Label Studio unreachable at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("Label Studio answered {status} to {method} {path}: {body}")]
    Status { method: Method, path: String, status: StatusCode, body: String },
    #[error("review_bridge.token was refused by Label Studio ({status}): create a personal access token under Account & Settings and set LABELGATE__REVIEW_BRIDGE__TOKEN")]
    TokenRefused { status: StatusCode },
    #[error("unexpected answer to {path}: {message}")]
    Decode { path: String, message: String },
}

impl LsError {
    /// A 4xx other than timeouts and rate limits will fail again the same way.
    pub fn is_client_error(&self) -> bool {
        matches!(self, LsError::Status { status, .. } if status.is_client_error() && *status != StatusCode::REQUEST_TIMEOUT && *status != StatusCode::TOO_MANY_REQUESTS)
    }

    /// The metric label of this kind of failure.
    /// A refused token stays refused: waiting cannot fix it.
    pub fn recovery(&self) -> crate::retry::Recovery {
        match self {
            LsError::TokenRefused { .. } => crate::retry::Recovery::Stop,
            _ => crate::retry::Recovery::Retry,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            LsError::Unreachable { .. } => "unreachable",
            LsError::Status { status, .. } if status.is_server_error() => "server_error",
            LsError::Status { .. } => "rejected",
            LsError::TokenRefused { .. } => "token_refused",
            LsError::Decode { .. } => "bad_answer",
        }
    }
}

struct Access {
    token: String,
    refresh_at: Instant,
}

pub struct LabelStudio {
    http: reqwest::Client,
    base: String,
    token: Secret,
    access: Mutex<Option<Access>>,
}

impl LabelStudio {
    pub fn new(base: &str, token: Secret, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout.min(Duration::from_secs(5))).build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), token, access: Mutex::new(None) })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: reqwest::Error) -> LsError {
        LsError::Unreachable { url: self.base.clone(), message: e.without_url().to_string() }
    }

    /// A valid access token, refreshed when three quarters of its life are gone.
    async fn access(&self) -> Result<String, LsError> {
        let mut held = self.access.lock().await;
        if let Some(a) = held.as_ref().filter(|a| Instant::now() < a.refresh_at) {
            return Ok(a.token.clone());
        }
        let path = "/api/token/refresh/";
        let response = self.http.post(format!("{}{path}", self.base)).json(&json!({ "refresh": self.token.expose() })).send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST {
            return Err(LsError::TokenRefused { status });
        }
        if !status.is_success() {
            return Err(LsError::Status { method: Method::POST, path: path.into(), status, body: short(&response.text().await.unwrap_or_default()) });
        }
        let body: Value = response.json().await.map_err(|e| LsError::Decode { path: path.into(), message: e.to_string() })?;
        let token = body["access"].as_str().ok_or_else(|| LsError::Decode { path: path.into(), message: "no `access` in the answer".into() })?.to_string();
        let life = seconds_left(&token).unwrap_or(60).max(8);
        *held = Some(Access { refresh_at: Instant::now() + Duration::from_secs(life * 3 / 4), token: token.clone() });
        Ok(token)
    }

    /// One JSON request; `Value::Null` for an empty answer.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, LsError> {
        for attempt in 0..2 {
            let token = self.access().await?;
            let mut request = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(token);
            if let Some(b) = body {
                request = request.json(b);
            }
            let response = request.send().await.map_err(|e| self.unreachable(e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                // Revoked or expired early (a restarted server with a new secret): refresh once.
                *self.access.lock().await = None;
                continue;
            }
            let text = response.text().await.map_err(|e| self.unreachable(e))?;
            if !status.is_success() {
                return Err(LsError::Status { method, path: path.into(), status, body: short(&text) });
            }
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| LsError::Decode { path: path.into(), message: e.to_string() });
        }
        unreachable!("the loop returns on its second attempt")
    }

    pub async fn get(&self, path: &str) -> Result<Value, LsError> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, LsError> {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, LsError> {
        self.request(Method::PATCH, path, Some(body)).await
    }
}

/// Error bodies can be whole HTML pages: keep the start.
fn short(text: &str) -> String {
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// Seconds until the JWT's `exp`, read from its payload (no signature check: the server does it).
fn seconds_left(jwt: &str) -> Option<u64> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(exp.saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_token_lifetime_comes_from_its_exp() {
        use base64::Engine;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"token_type":"access","exp":{}}}"#, now + 300));
        let left = seconds_left(&format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig")).unwrap();
        assert!((298..=300).contains(&left), "{left}");
        assert_eq!(seconds_left("not a jwt"), None);
    }

    #[test]
    fn client_errors_are_told_apart_from_outages() {
        let status = |s: u16| LsError::Status { method: Method::POST, path: "/x".into(), status: StatusCode::from_u16(s).unwrap(), body: String::new() };
        assert!(status(400).is_client_error());
        assert!(!status(503).is_client_error() && !status(429).is_client_error());
        assert_eq!(status(502).kind(), "server_error");
    }
}
