//! Service configuration: the embedded `config/default.toml`, then an optional file, then
//! `LABELGATE__SECTION__KEY` environment variables. Unknown keys are errors, every problem is
//! reported at once with the key that has it and how to fix it, and secrets never print.

mod review_bridge;
mod secret;
mod sections;
mod unknown_keys;
mod validate;

use std::{fmt, path::Path};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use serde::{de::DeserializeOwned, de::IgnoredAny, Deserialize};

pub use review_bridge::BridgeConfig;
pub use secret::Secret;
pub use sections::{EncoderConfig, GateConfig, GatedInput, ImageEncoderConfig, KafkaConfig, MetricsConfig, RedisConfig, RuntimeConfig, StateBackend, StateConfig, TextEncoderConfig};

pub use crate::image_fetch::ImageFetchConfig;
use crate::o2u::O2uConfig;

const DEFAULTS: &str = include_str!("../../config/default.toml");

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
    pub review_bridge: BridgeConfig,
    /// How texts become features (used when `gate.input` is `text` or `text_pair`), and
    /// optionally images (`[encoder.image]`).
    pub encoder: EncoderConfig,
    /// Where images named by URI are fetched from.
    pub image_fetch: ImageFetchConfig,
}

/// The engine defaults of a text gate ([`crate::o2u::SentenceEmbeddingDefaults`]).
fn text_engine_defaults() -> Figment {
    use crate::o2u::SentenceEmbeddingDefaults as Text;
    use figment::providers::Serialized;
    Figment::new()
        .merge(Serialized::default("engine.stage1_epochs", Text::STAGE1_EPOCHS))
        .merge(Serialized::default("engine.min_stage1_steps", Text::MIN_STAGE1_STEPS))
        .merge(Serialized::default("engine.schedule.cycle_len", Text::CYCLE_LEN))
        // The cross-fitting networks that check the fit train as long as stage 1.
        .merge(Serialized::default("gate.crossfit_min_steps", Text::MIN_STAGE1_STEPS))
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

/// The top level alone, to report unknown sections.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Sections {
    kafka: IgnoredAny,
    gate: IgnoredAny,
    engine: IgnoredAny,
    runtime: IgnoredAny,
    state: IgnoredAny,
    metrics: IgnoredAny,
    review_bridge: IgnoredAny,
    encoder: IgnoredAny,
    image_fetch: IgnoredAny,
}

/// Each problem of a failed extraction as `key: what (where to set it)`, under `section`.
fn describe(section: &str, e: figment::Error) -> Vec<String> {
    e.into_iter()
        .map(|e| {
            let path: Vec<&str> = std::iter::once(section).filter(|s| !s.is_empty()).chain(e.path.iter().map(String::as_str)).collect();
            let key = if path.is_empty() { String::from("(top level)") } else { path.join(".") };
            let env = format!("LABELGATE__{}", path.join("__").to_uppercase());
            format!("{key}: {} (set it in the config file or with {env})", e.kind)
        })
        .collect()
}

impl Config {
    /// Defaults, then `file`, then `LABELGATE__…` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigErrors> {
        Self::from_figment(Self::figment(file))
    }

    pub fn figment(file: Option<&Path>) -> Figment {
        let over = |mut figment: Figment| {
            if let Some(path) = file {
                figment = figment.merge(Toml::file_exact(path));
            }
            figment.merge(Env::prefixed("LABELGATE__").split("__").lowercase(true))
        };
        let figment = over(Self::defaults_figment());
        // A text gate starts from the engine settings for sentence embeddings, under the file and
        // the environment, which still override them.
        match figment.extract_inner::<GatedInput>("gate.input") {
            Ok(input) if input.is_text() => over(Self::defaults_figment().merge(text_engine_defaults())),
            _ => figment,
        }
    }

    /// The embedded defaults alone (no file, no environment): for unit tests and the demo.
    pub fn defaults_figment() -> Figment {
        Figment::from(Toml::string(DEFAULTS))
    }

    /// The embedded defaults alone, parsed.
    pub fn defaults() -> Self {
        Self::from_figment(Self::defaults_figment()).expect("the embedded defaults are valid")
    }

    /// The text gate's defaults for `texts`, else the feature gate's.
    pub fn defaults_for(texts: bool) -> Self {
        if texts {
            Self::text_defaults()
        } else {
            Self::defaults()
        }
    }

    /// The embedded defaults of a text gate: `gate.input = "text"` with the engine settings for
    /// sentence embeddings.
    pub fn text_defaults() -> Self {
        use figment::providers::Serialized;
        let figment = Self::defaults_figment().merge(text_engine_defaults()).merge(Serialized::default("gate.input", GatedInput::Text));
        Self::from_figment(figment).expect("the embedded text defaults are valid")
    }

    /// Each section is read and checked on its own, so that every problem is reported at once:
    /// an unknown key in one section does not hide a bad URL in another.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        if let Err(e) = figment.extract::<Sections>() {
            problems.extend(describe("", e));
        }
        /// The section, or its problems: those of the parse, and any unknown key the parse's
        /// first error hid.
        fn section<T: DeserializeOwned>(figment: &Figment, name: &str, problems: &mut Vec<String>) -> Option<T> {
            let e = match figment.focus(name).extract::<T>() {
                Ok(section) => return Some(section),
                Err(e) => e,
            };
            problems.extend(describe(name, e));
            add_hidden(problems, unknown_keys::unknown_keys::<T>(figment, name));
            None
        }
        /// Problems not yet reported under their key.
        fn add_hidden(problems: &mut Vec<String>, hidden: Vec<String>) {
            for h in hidden {
                let key = &h[..h.find(':').unwrap_or(h.len())];
                if !problems.iter().any(|p| p.starts_with(key) && p[key.len()..].starts_with(':')) {
                    problems.push(h);
                }
            }
        }
        let kafka: Option<KafkaConfig> = section(&figment, "kafka", &mut problems);
        let gate: Option<GateConfig> = section(&figment, "gate", &mut problems);
        let engine: Option<O2uConfig> = section(&figment, "engine", &mut problems);
        let runtime: Option<RuntimeConfig> = section(&figment, "runtime", &mut problems);
        let state: Option<StateConfig> = section(&figment, "state", &mut problems);
        if state.is_none() {
            add_hidden(&mut problems, unknown_keys::unknown_keys::<RedisConfig>(&figment, "state.redis"));
        }
        let metrics: Option<MetricsConfig> = section(&figment, "metrics", &mut problems);
        let review_bridge: Option<BridgeConfig> = section(&figment, "review_bridge", &mut problems);
        let encoder: Option<EncoderConfig> = section(&figment, "encoder", &mut problems);
        let image_fetch: Option<ImageFetchConfig> = section(&figment, "image_fetch", &mut problems);
        problems.extend(kafka.iter().flat_map(validate::kafka));
        problems.extend(gate.iter().flat_map(validate::gate));
        problems.extend(engine.iter().flat_map(|e| e.validate().into_iter().map(|e| format!("engine.{e}"))));
        problems.extend(runtime.iter().flat_map(validate::runtime));
        problems.extend(state.iter().flat_map(validate::state));
        problems.extend(metrics.iter().flat_map(validate::metrics));
        problems.extend(encoder.iter().flat_map(validate::encoder));
        problems.extend(image_fetch.iter().flat_map(validate::image_fetch));
        if let (Some(gate), Some(encoder)) = (&gate, &encoder) {
            problems.extend(validate::image_encoder_at_gate(encoder, gate));
        }
        match (kafka, gate, engine, runtime, state, metrics, review_bridge, encoder, image_fetch) {
            (Some(kafka), Some(gate), Some(engine), Some(runtime), Some(state), Some(metrics), Some(review_bridge), Some(encoder), Some(image_fetch)) if problems.is_empty() => {
                let config = Config { kafka, gate, engine, runtime, state, metrics, review_bridge, encoder, image_fetch };
                Ok(config)
            }
            _ => Err(ConfigErrors(problems)),
        }
    }
}

#[cfg(test)]
mod tests;
