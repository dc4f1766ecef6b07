//! Service configuration: the embedded `config/default.toml`, then an optional file, then
//! `LABELGATE__SECTION__KEY` environment variables. Unknown keys are errors, every problem is
//! reported at once with the key that has it and how to fix it, and secrets never print.

use std::{collections::BTreeMap, fmt, path::Path};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

use crate::o2u::{suspects::NoiseRate, O2uConfig};

const DEFAULTS: &str = include_str!("../config/default.toml");

/// A value that is used but never shown: `Debug` and `Display` print `[redacted]`. Environment
/// variables arrive typed, so an all-digit password is a number: any scalar is taken as text.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Int(i64),
            Unsigned(u64),
            Float(f64),
            Bool(bool),
        }
        Ok(Secret(match Scalar::deserialize(d)? {
            Scalar::Text(s) => s,
            Scalar::Int(n) => n.to_string(),
            Scalar::Unsigned(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }))
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub gate: GateConfig,
    pub engine: O2uConfig,
    pub runtime: RuntimeConfig,
    pub state: StateConfig,
    pub metrics: MetricsConfig,
    /// `labelgate review-bridge`: suspects to Label Studio tasks, answers back as reviews.
    pub review_bridge: crate::review_bridge::BridgeConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `redis`, or `memory` (one process, lost on exit: the embedded demo and tests).
    pub backend: String,
    pub redis: crate::state::redis::RedisConfig,
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
}

impl GateConfig {
    pub fn sla(&self, vendor: &str) -> f64 {
        self.vendor_sla.get(vendor).copied().unwrap_or(self.default_sla_accuracy)
    }

    /// How windows turn scores into a wrong-label share.
    pub fn window_policy(&self) -> crate::gate::window::WindowPolicy {
        crate::gate::window::WindowPolicy {
            noise_rate: self.noise_rate,
            min_overlap_share: self.min_overlap_share,
            evidence: crate::accuracy::evidence::EvidencePolicy {
                max_estimator_gap: self.max_estimator_gap,
                min_evidence_rows: self.min_evidence_rows,
                min_model_lift: self.min_model_lift,
                min_pool_control_rows: self.min_pool_control_rows,
                z: crate::gate::verdict::z_for(self.confidence),
            },
            crossfit_min_steps: self.crossfit_min_steps,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `cpu` or `cuda`.
    pub device: String,
    pub threads: usize,
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

/// All configuration problems, one per line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Defaults, then `file`, then `LABELGATE__…` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigErrors> {
        Self::from_figment(Self::figment(file))
    }

    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(Env::prefixed("LABELGATE__").split("__").lowercase(true))
    }

    pub fn from_figment(figment: Figment) -> Result<Self, ConfigErrors> {
        let config: Config = figment.extract().map_err(|e| {
            ConfigErrors(
                e.into_iter()
                    .map(|e| {
                        let key = if e.path.is_empty() { String::from("(top level)") } else { e.path.join(".") };
                        let env = format!("LABELGATE__{}", e.path.join("__").to_uppercase());
                        format!("{key}: {} (set it in the config file or with {env})", e.kind)
                    })
                    .collect(),
            )
        })?;
        let problems = config.validate();
        if problems.is_empty() { Ok(config) } else { Err(ConfigErrors(problems)) }
    }

    fn validate(&self) -> Vec<String> {
        let mut p: Vec<String> = self.engine.validate().into_iter().map(|e| format!("engine.{e}")).collect();
        let g = &self.gate;
        if g.classes.len() < 2 {
            p.push("gate.classes: list at least two class names, e.g. [\"cat\", \"dog\"]".into());
        }
        let mut sorted = g.classes.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != g.classes.len() {
            p.push("gate.classes: a class name appears twice; list each once".into());
        }
        if g.feature_dim == 0 {
            p.push("gate.feature_dim: must be the length of the feature vectors, e.g. 784".into());
        }
        if g.min_window_records == 0 || g.min_window_records > g.max_window_records {
            p.push(format!("gate.min_window_records = {}: must be between 1 and gate.max_window_records ({})", g.min_window_records, g.max_window_records));
        }
        if g.max_buffered_records < g.max_window_records {
            p.push(format!("gate.max_buffered_records = {}: must be at least gate.max_window_records ({}) or windows can never fill", g.max_buffered_records, g.max_window_records));
        }
        for (key, v) in std::iter::once(("gate.default_sla_accuracy".to_string(), g.default_sla_accuracy))
            .chain(g.vendor_sla.iter().map(|(k, v)| (format!("gate.vendor_sla.{k}"), *v)))
        {
            if !(0.0..=1.0).contains(&v) {
                p.push(format!("{key} = {v}: an accuracy between 0 and 1, e.g. 0.95"));
            }
        }
        if !(0.5..1.0).contains(&g.confidence) {
            p.push(format!("gate.confidence = {}: use a level such as 0.95", g.confidence));
        }
        if !(0.0..=1.0).contains(&g.min_overlap_share) {
            p.push(format!("gate.min_overlap_share = {}: a share between 0 and 1, e.g. 0.05", g.min_overlap_share));
        }
        if !(g.max_estimator_gap > 0.0 && g.max_estimator_gap <= 1.0) {
            p.push(format!("gate.max_estimator_gap = {}: a share between 0 and 1, e.g. 0.1", g.max_estimator_gap));
        }
        if !(0.0..1.0).contains(&g.min_model_lift) {
            p.push(format!("gate.min_model_lift = {}: a share in [0, 1), e.g. 0.25", g.min_model_lift));
        }
        if g.vendor_accuracy_window_secs == 0 {
            p.push("gate.vendor_accuracy_window_secs: must be positive, e.g. 86400 (a day)".into());
        }
        let st = &self.state;
        match st.backend.as_str() {
            "memory" => {}
            "redis" => {
                let r = &st.redis;
                if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
                    p.push(format!("state.redis.url = {:?}: use redis://host:port/db or rediss://host:port/db", r.url));
                }
                if r.url.contains('@') {
                    p.push("state.redis.url: put credentials in state.redis.username and state.redis.password (LABELGATE__STATE__REDIS__PASSWORD), not in the URL".into());
                }
                if r.tls_ca_file.is_some() && !r.url.starts_with("rediss://") {
                    p.push("state.redis.tls_ca_file: set only with a rediss:// URL".into());
                }
                if r.timeout_ms == 0 || r.retention_days == 0 {
                    p.push("state.redis.timeout_ms and state.redis.retention_days: must be positive".into());
                }
            }
            other => p.push(format!("state.backend = {other:?}: use \"redis\" or \"memory\"")),
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("metrics.listen = {:?}: use host:port, e.g. \"0.0.0.0:9464\", or \"\" for no HTTP server", self.metrics.listen));
        }
        if self.metrics.max_vendor_series == 0 {
            p.push("metrics.max_vendor_series: must be at least 1, e.g. 1000".into());
        }
        if !matches!(self.runtime.device.as_str(), "cpu" | "cuda") {
            p.push(format!("runtime.device = {:?}: use \"cpu\" or \"cuda\"", self.runtime.device));
        }
        let k = &self.kafka;
        let topics = [&k.input_topic, &k.accepted_topic, &k.rereview_topic, &k.verdicts_topic, &k.dlq_topic, &k.progress_topic, &k.reviews_topic];
        let mut names: Vec<&String> = topics.to_vec();
        names.sort();
        names.dedup();
        if names.len() != topics.len() {
            p.push("kafka.*_topic: the input, output and progress topics must all differ".into());
        }
        if k.client.keys().any(|key| key.contains("password")) {
            p.push("kafka.client: put passwords in kafka.sasl_password (LABELGATE__KAFKA__SASL_PASSWORD), not in client".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(toml: &str) -> Result<Config, ConfigErrors> {
        Config::from_figment(Figment::from(Toml::string(DEFAULTS)).merge(Toml::string(toml)))
    }

    #[test]
    fn embedded_defaults_load() {
        let c = with("").unwrap();
        assert_eq!(c.kafka.input_topic, "annotations");
        assert_eq!(c.gate.classes.len(), 10);
        assert_eq!(c.gate.noise_rate, NoiseRate::Auto);
        assert_eq!(c.gate.sla("anyone"), 0.9);
    }

    #[test]
    fn the_example_deployment_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/labelgate.toml");
        let c = Config::from_figment(Figment::from(Toml::string(DEFAULTS)).merge(Toml::file_exact(path))).unwrap();
        assert_eq!(c.gate.sla("acme-labels"), 0.95);
        assert_eq!(c.gate.sla("unknown-vendor"), 0.9);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let e = with("[gate]\nmin_window_records = 0\nconfidence = 3.0\n[gate.vendor_sla]\nacme = 1.5\n[runtime]\ndevice = \"tpu\"\n").unwrap_err();
        let text = e.to_string();
        for key in ["gate.min_window_records", "gate.confidence", "gate.vendor_sla.acme", "runtime.device"] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        assert_eq!(e.0.len(), 4);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_variable() {
        let text = with("[gate]\nfeature_dimension = 3\n").unwrap_err().to_string();
        assert!(text.contains("feature_dimension"), "{text}");
        let text = with("[gate]\nfeature_dim = \"many\"\n").unwrap_err().to_string();
        assert!(text.contains("gate.feature_dim") && text.contains("LABELGATE__GATE__FEATURE_DIM"), "{text}");
    }

    #[test]
    fn environment_overrides_file_and_secrets_never_print() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("gate.toml", "[kafka]\ngroup_id = \"from-file\"\nsasl_password = \"hunter2\"\n")?;
            jail.set_env("LABELGATE__KAFKA__GROUP_ID", "from-env");
            jail.set_env("LABELGATE__STATE__REDIS__PASSWORD", "12345678");
            let c = Config::load(Some(Path::new("gate.toml"))).unwrap();
            assert_eq!(c.kafka.group_id, "from-env");
            assert_eq!(c.kafka.sasl_password.as_ref().unwrap().expose(), "hunter2");
            assert_eq!(c.state.redis.password.as_ref().unwrap().expose(), "12345678", "an all-digit password stays text");
            assert!(!format!("{c:?}").contains("hunter2"));
            Ok(())
        });
    }
}
