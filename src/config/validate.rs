//! Checks that serde cannot make: ranges, relations between keys, URLs. One function per section,
//! so that a section that fails to parse does not hide the problems of the others.

use super::{EncoderConfig, GateConfig, ImageFetchConfig, KafkaConfig, MetricsConfig, RuntimeConfig, StateBackend, StateConfig};

pub fn runtime(r: &RuntimeConfig) -> Vec<String> {
    let mut p = Vec::new();
    if r.stall_timeout_secs < 10 {
        p.push(format!("runtime.stall_timeout_secs = {}: use 10 or more (a shorter bound restarts a gate that is only busy), e.g. 30", r.stall_timeout_secs));
    }
    p
}

pub fn gate(g: &GateConfig) -> Vec<String> {
    let mut p = Vec::new();
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
    for (key, v) in std::iter::once(("gate.default_sla_accuracy".to_string(), g.default_sla_accuracy)).chain(g.vendor_sla.iter().map(|(k, v)| (format!("gate.vendor_sla.{k}"), *v))) {
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
    if !(g.max_feature_shift > 0.0 && g.max_feature_shift.is_finite()) {
        p.push(format!("gate.max_feature_shift = {}: a positive number of standard deviations, e.g. 0.25", g.max_feature_shift));
    }
    if !(0.0..1.0).contains(&g.min_model_lift) {
        p.push(format!("gate.min_model_lift = {}: a share in [0, 1), e.g. 0.25", g.min_model_lift));
    }
    if let Some(shape) = g.image_shape {
        let values: usize = shape.iter().product();
        if shape.contains(&0) || ![1, 3, 4].contains(&shape[2]) || values != g.feature_dim {
            p.push(format!(
                "gate.image_shape = {shape:?}: [height, width, channels] with 1, 3 or 4 channels and height·width·channels = gate.feature_dim ({}), e.g. [28, 28, 1] for 784",
                g.feature_dim
            ));
        }
    }
    if g.max_text_bytes == 0 {
        p.push("gate.max_text_bytes: must be positive, e.g. 16384".into());
    }
    if g.vendor_accuracy_window_secs == 0 {
        p.push("gate.vendor_accuracy_window_secs: must be positive, e.g. 86400 (a day)".into());
    }
    p
}

pub fn encoder(e: &EncoderConfig) -> Vec<String> {
    let mut p = Vec::new();
    if e.text.batch_size == 0 {
        p.push("encoder.text.batch_size: must be positive, e.g. 32".into());
    }
    if let Some(image) = &e.image {
        if image.model_dir.as_os_str().is_empty() {
            p.push("encoder.image.model_dir: give a CLIP model directory (config.json, model.safetensors), or remove [encoder.image] to train on the pixels".into());
        }
        if image.batch_size == 0 {
            p.push("encoder.image.batch_size: must be positive, e.g. 16".into());
        }
    }
    p
}

/// An image encoder embeds pixels of a known `[height, width, channels]`: only at a gate of
/// images (`gate.image_shape` set), not at a text gate.
pub fn image_encoder_at_gate(e: &EncoderConfig, g: &GateConfig) -> Vec<String> {
    let mut p = Vec::new();
    if e.image.is_none() {
        return p;
    }
    if g.image_shape.is_none() {
        p.push("encoder.image: set only at a gate of images: give gate.image_shape ([height, width, channels] of the records' pixels, e.g. [28, 28, 1]), or remove [encoder.image]".into());
    }
    if g.input.is_text() {
        p.push(format!("encoder.image: a text gate (gate.input = \"{}\") embeds texts with encoder.text; remove [encoder.image] or set gate.input = \"features\"", g.input.as_str()));
    }
    p
}

pub fn image_fetch(f: &ImageFetchConfig) -> Vec<String> {
    let mut p = Vec::new();
    if let Err(e) = crate::image_fetch::AllowList::parse(&f.allowed_hosts) {
        p.push(e);
    }
    if f.file_root.as_ref().is_some_and(|r| !r.is_absolute()) {
        p.push("image_fetch.file_root: must be an absolute path, e.g. \"/data/images\"".into());
    }
    for (key, value, example) in [("max_bytes", f.max_bytes, "10485760 (10 MiB)"), ("timeout_secs", f.timeout_secs, "10"), ("concurrency", f.concurrency as u64, "16")] {
        if value == 0 {
            p.push(format!("image_fetch.{key}: must be positive, e.g. {example}"));
        }
    }
    p
}

pub fn state(st: &StateConfig) -> Vec<String> {
    let mut p = Vec::new();
    if st.backend != StateBackend::Redis {
        return p;
    }
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
    p
}

pub fn metrics(m: &MetricsConfig) -> Vec<String> {
    let mut p = Vec::new();
    if !m.listen.is_empty() && m.listen.parse::<std::net::SocketAddr>().is_err() {
        p.push(format!("metrics.listen = {:?}: use host:port, e.g. \"0.0.0.0:9464\", or \"\" for no HTTP server", m.listen));
    }
    if m.max_vendor_series == 0 {
        p.push("metrics.max_vendor_series: must be at least 1, e.g. 1000".into());
    }
    p
}

pub fn kafka(k: &KafkaConfig) -> Vec<String> {
    let mut p = Vec::new();
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
