//! The sections of the configuration, as serde reads them: unknown keys and bad values (an
//! unknown backend or device) fail at load with the key.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::Secret;
pub use crate::wire::GatedInput;
use crate::{
    accuracy::{evidence::EvidencePolicy, offline::JudgeSettings},
    device::DeviceChoice,
    o2u::suspects::NoiseRate,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    pub backend: StateBackend,
    pub redis: RedisConfig,
}

/// Where the gate keeps what must outlive a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    /// Redis, shared by the replicas (production).
    Redis,
    /// One process, lost on exit: the embedded demo and tests.
    Memory,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://…` for TLS. Credentials go in `username` / `password`.
    pub url: String,
    /// ACL user; empty = the default user.
    #[serde(default)]
    pub username: String,
    #[serde(default, skip_serializing)]
    pub password: Option<Secret>,
    /// PEM file of the CA that signed the server certificate (rediss://); empty = system roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    pub key_prefix: String,
    /// How long deliveries, suspects and reviews are kept.
    pub retention_days: u64,
    /// A call that takes longer fails (and the gate retries it).
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`; empty = no HTTP server.
    pub listen: String,
    /// Vendors beyond this many share the label `vendor="_other"` (and are counted).
    pub max_vendor_series: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub transactional_id_prefix: String,
    /// This replica's stable name (transactional id suffix); empty = the host name.
    #[serde(default)]
    pub instance_id: String,
    pub input_topic: String,
    pub accepted_topic: String,
    pub rereview_topic: String,
    pub verdicts_topic: String,
    pub dlq_topic: String,
    pub progress_topic: String,
    /// Human review outcomes of the suspects (`sample_id`, `final_label`, `reviewer`).
    pub reviews_topic: String,
    pub max_message_bytes: usize,
    /// Extra librdkafka properties for every client.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// `sasl.password`, kept out of `client` so it never prints.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    pub classes: Vec<String>,
    /// What records carry: feature vectors (or raw pixel arrays), texts or text pairs.
    #[serde(default)]
    pub input: GatedInput,
    /// Length of a record's feature vector (`input = "features"`); text inputs take the
    /// encoder's.
    pub feature_dim: usize,
    pub delivery_timeout_secs: u64,
    pub min_window_records: usize,
    pub max_window_wait_secs: u64,
    pub max_window_records: usize,
    pub max_buffered_records: usize,
    pub reference_pool_size: usize,
    pub default_sla_accuracy: f64,
    #[serde(default)]
    pub vendor_sla: BTreeMap<String, f64>,
    pub min_gold_items: usize,
    pub confidence: f64,
    #[serde(with = "noise_rate_text")]
    pub noise_rate: NoiseRate,
    /// A vendor's accuracy gauge covers its deliveries gated in this many recent seconds.
    pub vendor_accuracy_window_secs: u64,
    /// Reviews of a vendor's suspects needed before their precision corrects its estimate.
    pub min_reviews: u64,
    /// Share of a window's labels on items labelled by more than one vendor above which the
    /// wrong-label share comes from the agreement model instead of the scores alone.
    pub min_overlap_share: f64,
    /// Readings of the wrong-label share further than this from their median do not agree.
    pub max_estimator_gap: f64,
    /// Out-of-fold accuracy must beat the most frequent label by this share of the possible
    /// gain before the scores may say how many labels are wrong.
    pub min_model_lift: f64,
    /// Reference-pool rows needed before the pool serves as the window's control.
    pub min_pool_control_rows: usize,
    /// A window trained on fewer rows (records + pool) than this has insufficient evidence.
    pub min_evidence_rows: usize,
    /// Mini-batches each cross-fitting network trains for at least.
    pub crossfit_min_steps: usize,
    /// A window whose features lie further than this from the reference pool's (root mean
    /// square standardised mean difference) is `shifted` and does not decide.
    pub max_feature_shift: f64,
    /// Mini-batches stage 1 trains for at least in a window whose labels overlap (agreement sets
    /// its share): the labels of one item cannot all be memorised, so a longer fit learns how far
    /// they agree.
    pub agreement_min_stage1_steps: usize,
    /// Longest `sample_id`, `batch_id`, `vendor_id` or `annotator_id` (bytes); longer: DLQ `field_too_long`.
    pub max_id_length: usize,
    /// Longest label or gold label (bytes); longer: DLQ `field_too_long`.
    pub max_label_length: usize,
    /// Longest `text` or `text_pair` (bytes); longer: DLQ `text_too_long`.
    pub max_text_bytes: usize,
    /// `[height, width, channels]` that encoded images (PNG, JPEG) are converted and resized
    /// to; unset = encoded images go to the DLQ (`invalid_image`).
    #[serde(default)]
    pub image_shape: Option<[usize; 3]>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    pub text: TextEncoderConfig,
    /// Unset: image records train the network on their pixels.
    #[serde(default)]
    pub image: Option<ImageEncoderConfig>,
}

/// The sentence encoder of text records.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderConfig {
    /// A sentence-transformers directory of a BERT-family model (`config.json`,
    /// `tokenizer.json`, `model.safetensors`); empty = all-MiniLM-L6-v2 in the model cache.
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Texts per encoder run.
    pub batch_size: usize,
    /// Embeddings kept by content hash (384 floats each for the default model); 0 = none.
    pub cache_entries: usize,
}

/// A pretrained image encoder whose embeddings the network trains on instead of the pixels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEncoderConfig {
    /// A Hugging Face directory of a CLIP vision tower (`config.json`, `model.safetensors`,
    /// optionally `preprocessor_config.json`).
    pub model_dir: PathBuf,
    /// Images per encoder run.
    #[serde(default = "default_image_batch_size")]
    pub batch_size: usize,
}

fn default_image_batch_size() -> usize {
    16
}

impl GateConfig {
    pub fn sla(&self, vendor: &str) -> f64 {
        self.vendor_sla.get(vendor).copied().unwrap_or(self.default_sla_accuracy)
    }

    /// The evidence bounds these settings set.
    pub fn evidence_policy(&self) -> EvidencePolicy {
        EvidencePolicy {
            max_estimator_gap: self.max_estimator_gap,
            min_evidence_rows: self.min_evidence_rows,
            min_model_lift: self.min_model_lift,
            min_pool_control_rows: self.min_pool_control_rows,
            z: crate::stats::z_for(self.confidence),
        }
    }

    /// How `score` and `eval` judge a file with these settings (with the defaults' settings, as
    /// the gate judges its windows).
    pub fn judge_settings(&self) -> JudgeSettings {
        JudgeSettings { evidence: self.evidence_policy(), crossfit_min_steps: self.crossfit_min_steps }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    pub device: DeviceChoice,
    pub threads: usize,
    /// How long start-up waits for Kafka and for Redis (each, with back-off) before it gives up.
    pub startup_timeout_secs: u64,
    /// `/healthz` turns 503 when records wait and nothing is consumed or committed for this long
    /// (or no partition is assigned) while the broker answers; a blocked loop gets twice this.
    pub stall_timeout_secs: u64,
}

mod noise_rate_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::o2u::suspects::NoiseRate;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NoiseRate, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Number(n) => n.to_string().parse().map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(rate: &NoiseRate, s: S) -> Result<S::Ok, S::Error> {
        match rate {
            NoiseRate::Auto => s.serialize_str("auto"),
            NoiseRate::Fixed(r) => s.serialize_f64(*r),
        }
    }
}
