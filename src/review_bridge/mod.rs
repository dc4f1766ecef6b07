//! The Label Studio review bridge (`labelgate review-bridge`): every suspect on the re-review topic
//! becomes one Label Studio task showing the item and the gate's guess, and every reviewer's answer
//! comes back as a review (`{"sample_id","final_label","reviewer"}`) on the reviews topic. One job
//! per file:
//! - [`client`]: the REST client and its access-token refresh;
//! - [`render`]: the item as HTML for the task, raw pixels as a PNG data URI;
//! - [`task`]: the project's labelling config and the task made from a suspect;
//! - [`task_map`]: sample+vendor → task id, import markers and forwarded answers (Redis or memory);
//! - [`import`]: the project, batched idempotent import and its reconciliation after a crash;
//! - [`answers`]: answers from the webhook and the poll to the reviews topic, once each;
//! - [`metrics`]: the bridge's metrics;
//! - [`bridge`]: the process that ties them together.

pub mod answers;
pub mod bridge;
pub mod client;
pub mod import;
pub mod metrics;
pub mod render;
pub mod task;
pub mod task_map;

pub use bridge::run;

pub use crate::config::BridgeConfig;

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};

    use crate::config::Config;

    fn with(toml: &str) -> Config {
        Config::from_figment(Config::figment(None).merge(Toml::string(toml))).unwrap()
    }

    #[test]
    fn the_bridge_needs_a_token_and_a_long_webhook_secret() {
        let problems = with("").review_bridge.validate().join("\n");
        assert!(problems.contains("review_bridge.token") && problems.contains("LABELGATE__REVIEW_BRIDGE__TOKEN"), "{problems}");
        let c = with("[review_bridge]\ntoken = \"pat\"\nwebhook_url = \"http://bridge:9465/webhooks/label-studio\"\nwebhook_secret = \"short\"\n");
        let problems = c.review_bridge.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("review_bridge.webhook_secret"), "{problems:?}");
        let shown = format!("{:?}", c.review_bridge);
        assert!(shown.contains("token: Some([redacted])") && !shown.contains("\"pat\""), "the token never prints: {shown}");
        let ok = with("[review_bridge]\ntoken = \"pat\"\n");
        assert!(ok.review_bridge.validate().is_empty());
    }
}
