//! The state store on Redis (standalone; ACL user and `rediss://` TLS by config), through a
//! reconnecting connection manager. Callers are blocking threads, so each call runs on the
//! service's tokio runtime and waits. Keys (all under `key_prefix`, see docs/state.md):
//!
//! | key | type | holds | expires |
//! | --- | --- | --- | --- |
//! | `pool:{class}` | list | pooled feature vectors (f32 little-endian), newest first | never (bounded) |
//! | `delivery:{batch_id}` | string | `{"state":…,"record":…}` JSON | retention |
//! | `vendor:{vendor}:deliveries` | sorted set | batch ids scored by gating time (ms) | retention |
//! | `suspect:{sample_id}` | hash | vendor → routed suspect JSON | retention |
//! | `reviewed:{sample_id}` | hash | vendor → final label (review idempotency) | retention |
//! | `vendor:{vendor}:reviews` | hash | `reviewed`, `confirmed_wrong` counters | never |
//! | `labels:{sample_id}` | hash | vendor → `{"label","score","batch_id","p_wrong","gated_p_wrong","rejudged_flag"}` of its gated label | retention |
//! | `revised:{batch_id}` | string (float) | later windows' change to the delivery's expected wrong count | retention |
//! | `rejudged:{batch_id}` | hash | `labels` (its labels later windows judged again), `wrong` (how many of them they flagged) | retention |

use std::time::Duration;

use redis::{aio::ConnectionManager, AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::{DeliveryState, Review, ReviewOutcome, StateError, StateStore, SuspectRecord, WindowState};
use crate::gate::window::PriorLabel;
use crate::{
    accuracy::{DeliveryRecord, Rejudged, ReviewStats},
    config::RedisConfig,
};

pub struct RedisState {
    manager: ConnectionManager,
    runtime: Handle,
    prefix: String,
    retention_secs: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredLabel {
    label: u32,
    score: f32,
    #[serde(default)]
    batch_id: String,
    #[serde(default)]
    p_wrong: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gated_p_wrong: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejudged_flag: Option<f32>,
}

#[derive(Serialize, Deserialize)]
struct StoredDelivery {
    state: DeliveryState,
    record: Option<DeliveryRecord>,
}

/// HSETNX the review, and count it only if it is new: one atomic step, so a replayed review or a
/// crash between the two writes cannot count twice or lose a count.
const REVIEW_SCRIPT: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('HINCRBY', KEYS[2], 'reviewed', 1)
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[2], 'confirmed_wrong', 1) end
  return 1
end
return 0
"#;

fn unavailable(e: redis::RedisError) -> StateError {
    StateError::from_redis(e)
}

impl RedisState {
    /// Connects (from a thread that is not a runtime worker). Fails if the server cannot be
    /// reached within the timeout; later outages are retried by the caller.
    pub fn connect(config: &RedisConfig, runtime: Handle) -> Result<Self, StateError> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(|e| StateError::Config { key: "state.redis.url", message: format!("{e}; expected redis://host:port/db or rediss://…") })?;
        let mut settings = info.redis_settings().clone();
        if !config.username.is_empty() {
            settings = settings.set_username(config.username.clone());
        }
        if let Some(p) = &config.password {
            settings = settings.set_password(p.expose());
        }
        info = info.set_redis_settings(settings);
        let client = match &config.tls_ca_file {
            Some(ca) => {
                let root = std::fs::read(ca).map_err(|e| StateError::Config { key: "state.redis.tls_ca_file", message: format!("cannot read {}: {e}", ca.display()) })?;
                redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(root) })
            }
            None => redis::Client::open(info),
        }
        .map_err(unavailable)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let manager_config = redis::aio::ConnectionManagerConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(timeout)).set_number_of_retries(2).set_max_delay(timeout);
        let manager = runtime.block_on(async { tokio::time::timeout(timeout * 3, ConnectionManager::new_with_config(client, manager_config)).await });
        let manager = match manager {
            Ok(m) => m.map_err(unavailable)?,
            Err(_) => return Err(StateError::NoAnswer { target: redact(&config.url), after: timeout * 3 }),
        };
        let state = Self { manager, runtime, prefix: config.key_prefix.clone(), retention_secs: config.retention_days * 86_400 };
        state.ping()?;
        Ok(state)
    }

    /// The reconnecting connection, for components that keep keys of their own under the prefix
    /// (the review bridge's task map).
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        k.push_str(&parts.join(":"));
        k
    }

    fn run<T>(&self, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StateError> {
        self.runtime.block_on(f).map_err(unavailable)
    }
}

/// The URL without a password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn encode(features: &[f32]) -> Vec<u8> {
    features.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

impl StateStore for RedisState {
    fn ping(&self) -> Result<(), StateError> {
        let mut c = self.manager.clone();
        self.run(async move { redis::cmd("PING").query_async::<String>(&mut c).await }).map(|_| ())
    }

    fn load_pool(&self, classes: usize) -> Result<Vec<(u32, Vec<f32>)>, StateError> {
        let mut out = Vec::new();
        for c in 0..classes {
            let key = self.key(&["pool", &c.to_string()]);
            let mut conn = self.manager.clone();
            let items: Vec<Vec<u8>> = self.run(async move { conn.lrange(key, 0, -1).await })?;
            // Stored newest first; the pool wants oldest first.
            out.extend(items.iter().rev().map(|b| (c as u32, decode(b))));
        }
        Ok(out)
    }

    fn mark_scoring(&self, _window_id: &str, batch_ids: &[String]) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        let body = serde_json::to_string(&StoredDelivery { state: DeliveryState::Scoring, record: None }).expect("serialisable");
        for b in batch_ids {
            // NX: never overwrite a gated delivery with `scoring` on a replay.
            pipe.cmd("SET").arg(self.key(&["delivery", b])).arg(&body).arg("NX").arg("EX").arg(self.retention_secs).ignore();
        }
        let mut c = self.manager.clone();
        self.run(async move { pipe.query_async::<()>(&mut c).await })
    }

    fn save_window(&self, w: &WindowState) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut classes: Vec<u32> = w.pool_added.iter().map(|(c, _)| *c).collect();
        classes.sort_unstable();
        classes.dedup();
        for (c, f) in &w.pool_added {
            pipe.lpush(self.key(&["pool", &c.to_string()]), encode(f)).ignore();
        }
        for c in classes {
            pipe.ltrim(self.key(&["pool", &c.to_string()]), 0, w.pool_capacity_per_class as isize - 1).ignore();
        }
        let now_ms = crate::clock::unix_millis();
        let cutoff = now_ms.saturating_sub(self.retention_secs * 1000);
        for d in &w.deliveries {
            let body = serde_json::to_string(&StoredDelivery { state: DeliveryState::Gated, record: Some(d.clone()) }).expect("serialisable");
            pipe.set_ex(self.key(&["delivery", &d.batch_id]), body, self.retention_secs).ignore();
            // Gated (again): its labels carry fresh values, so earlier revisions no longer apply.
            pipe.del(self.key(&["revised", &d.batch_id])).ignore();
            pipe.del(self.key(&["rejudged", &d.batch_id])).ignore();
            let list = self.key(&["vendor", &d.vendor_id, "deliveries"]);
            pipe.zadd(&list, &d.batch_id, d.gated_at_ms).ignore();
            pipe.zrembyscore(&list, 0, cutoff).ignore();
            pipe.expire(&list, self.retention_secs as i64).ignore();
        }
        for s in &w.suspects {
            let key = self.key(&["suspect", &s.sample_id]);
            pipe.hset(&key, &s.vendor_id, serde_json::to_string(s).expect("serialisable")).ignore();
            pipe.expire(&key, self.retention_secs as i64).ignore();
        }
        for l in &w.labels {
            let key = self.key(&["labels", &l.sample_id]);
            let stored = StoredLabel { label: l.label, score: l.score, batch_id: l.batch_id.clone(), p_wrong: l.p_wrong, gated_p_wrong: l.gated_p_wrong, rejudged_flag: l.rejudged_flag };
            pipe.hset(&key, &l.vendor_id, serde_json::to_string(&stored).expect("serialisable")).ignore();
            pipe.expire(&key, self.retention_secs as i64).ignore();
        }
        for r in &w.revisions {
            let key = self.key(&["revised", &r.batch_id]);
            pipe.cmd("INCRBYFLOAT").arg(&key).arg(r.wrong_delta).ignore();
            pipe.expire(&key, self.retention_secs as i64).ignore();
            let key = self.key(&["rejudged", &r.batch_id]);
            pipe.hincr(&key, "labels", r.rejudged_labels).ignore();
            pipe.cmd("HINCRBYFLOAT").arg(&key).arg("wrong").arg(r.rejudged_wrong_delta).ignore();
            pipe.expire(&key, self.retention_secs as i64).ignore();
        }
        let mut c = self.manager.clone();
        self.run(async move { pipe.query_async::<()>(&mut c).await })
    }

    fn vendor_history(&self, vendor: &str, since_ms: u64) -> Result<Vec<DeliveryRecord>, StateError> {
        let list = self.key(&["vendor", vendor, "deliveries"]);
        let mut c = self.manager.clone();
        let batches: Vec<String> = self.run(async move { c.zrangebyscore(list, since_ms, "+inf").await })?;
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = batches.iter().map(|b| self.key(&["delivery", b])).collect();
        let revised_keys: Vec<String> = batches.iter().map(|b| self.key(&["revised", b])).collect();
        let mut c = self.manager.clone();
        let (bodies, revised): (Vec<Option<String>>, Vec<Option<f64>>) = self.run(async move { redis::pipe().cmd("MGET").arg(&keys).cmd("MGET").arg(&revised_keys).query_async(&mut c).await })?;
        let mut pipe = redis::pipe();
        for b in &batches {
            pipe.cmd("HMGET").arg(self.key(&["rejudged", b])).arg("labels").arg("wrong");
        }
        let mut c = self.manager.clone();
        let rejudged: Vec<(Option<u32>, Option<f64>)> = self.run(async move { pipe.query_async(&mut c).await })?;
        let mut out = Vec::new();
        for (((b, body), revised), (labels, wrong)) in batches.iter().zip(bodies).zip(revised).zip(rejudged) {
            // A delivery whose record expired before its index entry: skip it.
            let Some(body) = body else { continue };
            let stored: StoredDelivery = serde_json::from_str(&body).map_err(|e| StateError::Corrupt { key: self.key(&["delivery", b]), source: e })?;
            let rejudged = Rejudged { labels: labels.unwrap_or(0), wrong: wrong.unwrap_or(0.0) };
            out.extend(stored.record.map(|d| DeliveryRecord { revised_wrong: revised.unwrap_or(0.0), rejudged, ..d }));
        }
        Ok(out)
    }

    fn delivery(&self, batch_id: &str) -> Result<Option<(DeliveryState, Option<DeliveryRecord>)>, StateError> {
        let key = self.key(&["delivery", batch_id]);
        let mut c = self.manager.clone();
        let k = key.clone();
        let body: Option<String> = self.run(async move { c.get(k).await })?;
        body.map(|b| {
            let s: StoredDelivery = serde_json::from_str(&b).map_err(|e| StateError::Corrupt { key, source: e })?;
            Ok((s.state, s.record))
        })
        .transpose()
    }

    fn record_review(&self, review: &Review) -> Result<ReviewOutcome, StateError> {
        let key = self.key(&["suspect", &review.sample_id]);
        let mut c = self.manager.clone();
        let suspects: Vec<(String, String)> = self.run(async move { c.hgetall(key).await })?;
        let script = Script::new(REVIEW_SCRIPT);
        let mut outcome = Vec::new();
        for (vendor, body) in suspects {
            let s: SuspectRecord = match serde_json::from_str(&body) {
                Ok(s) => s,
                Err(e) => {
                    // One unreadable entry must not block every later review.
                    tracing::warn!(key = ?self.key(&["suspect", &review.sample_id]), vendor = ?vendor, error = %e, "suspect entry unreadable; review not counted for this vendor");
                    continue;
                }
            };
            let wrong = s.label != review.final_label;
            let mut invocation = script.key(self.key(&["reviewed", &review.sample_id]));
            invocation.key(self.key(&["vendor", &vendor, "reviews"])).arg(&vendor).arg(&review.final_label).arg(if wrong { "1" } else { "0" }).arg(self.retention_secs);
            let mut c = self.manager.clone();
            let counted: i64 = self.run(async move { invocation.invoke_async(&mut c).await })?;
            if counted == 1 {
                outcome.push((vendor, wrong));
            }
        }
        Ok(outcome)
    }

    fn review_stats(&self, vendor: &str) -> Result<ReviewStats, StateError> {
        let key = self.key(&["vendor", vendor, "reviews"]);
        let mut c = self.manager.clone();
        let (reviewed, confirmed_wrong): (Option<u64>, Option<u64>) = self.run(async move { redis::cmd("HMGET").arg(key).arg("reviewed").arg("confirmed_wrong").query_async(&mut c).await })?;
        Ok(ReviewStats { reviewed: reviewed.unwrap_or(0), confirmed_wrong: confirmed_wrong.unwrap_or(0) })
    }

    fn sample_labels(&self, sample_ids: &[String]) -> Result<Vec<PriorLabel>, StateError> {
        let mut out = Vec::new();
        // One pipelined round trip per thousand samples.
        for chunk in sample_ids.chunks(1000) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hgetall(self.key(&["labels", id]));
            }
            let mut c = self.manager.clone();
            let found: Vec<Vec<(String, String)>> = self.run(async move { pipe.query_async(&mut c).await })?;
            for (id, by_vendor) in chunk.iter().zip(found) {
                for (vendor_id, body) in by_vendor {
                    let stored: StoredLabel = serde_json::from_str(&body).map_err(|e| StateError::Corrupt { key: self.key(&["labels", id]), source: e })?;
                    out.push(PriorLabel {
                        sample_id: id.clone(),
                        vendor_id,
                        label: stored.label,
                        score: stored.score,
                        batch_id: stored.batch_id,
                        p_wrong: stored.p_wrong,
                        gated_p_wrong: stored.gated_p_wrong,
                        rejudged_flag: stored.rejudged_flag,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_print_without_passwords_and_features_round_trip() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://…@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        let f = vec![1.5f32, -2.0, f32::MAX];
        assert_eq!(decode(&encode(&f)), f);
    }
}
