//! Loading, layering and reporting every problem with its key.
// figment::Jail's closures return figment's own (large) error.
#![allow(clippy::result_large_err)]

use figment::{
    providers::{Format, Toml},
    Figment,
};

use super::*;
use crate::o2u::suspects::NoiseRate;

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

#[test]
fn problems_in_different_sections_are_all_reported() {
    let e = with("[kafka]\nbootstrap = \"x\"\n[state]\nbackend = \"redis\"\n[state.redis]\nurl = \"http://r\"\n[runtime]\ndevice = \"tpu\"\n").unwrap_err();
    let text = e.to_string();
    for key in ["kafka.bootstrap: unknown field", "state.redis.url", "runtime.device"] {
        assert!(text.contains(key), "{key} missing in {text}");
    }
    assert!(text.contains("LABELGATE__RUNTIME__DEVICE"), "{text}");
}

#[test]
fn a_wrong_type_does_not_hide_an_unknown_key_in_the_same_section() {
    let text = with("[gate]\nfeature_dim = \"many\"\nfeature_dimension = 3\n[state.redis]\ntimeout_ms = \"soon\"\nurll = \"redis://x\"\n").unwrap_err().to_string();
    for key in ["gate.feature_dim", "gate.feature_dimension: unknown key", "state.redis.timeout_ms", "state.redis.urll: unknown key"] {
        assert!(text.contains(key), "{key} missing in {text}");
    }
}

#[test]
fn a_stall_bound_too_short_to_be_safe_is_refused() {
    let text = with("[runtime]\nstall_timeout_secs = 3\n").unwrap_err().to_string();
    assert!(text.contains("runtime.stall_timeout_secs = 3"), "{text}");
}

#[test]
fn a_text_gate_starts_from_the_sentence_embedding_engine_settings() {
    use crate::o2u::SentenceEmbeddingDefaults as Text;
    figment::Jail::expect_with(|jail| {
        jail.create_file("features.toml", "")?;
        jail.create_file("text.toml", "[gate]\ninput = \"text\"\n")?;
        jail.create_file("tuned.toml", "[gate]\ninput = \"text_pair\"\n[engine]\nstage1_epochs = 3\n")?;
        let features = Config::load(Some(Path::new("features.toml"))).unwrap();
        assert_eq!((features.gate.input, features.engine.stage1_epochs, features.engine.schedule.cycle_len), (GatedInput::Features, 5, 10));
        let text = Config::load(Some(Path::new("text.toml"))).unwrap();
        assert_eq!((text.engine.stage1_epochs, text.engine.schedule.cycle_len, text.engine.min_stage1_steps), (Text::STAGE1_EPOCHS, Text::CYCLE_LEN, Text::MIN_STAGE1_STEPS));
        assert_eq!(text.engine.schedule.lr_max, features.engine.schedule.lr_max, "the rest of the schedule is the default's");
        let tuned = Config::load(Some(Path::new("tuned.toml"))).unwrap();
        assert_eq!((tuned.engine.stage1_epochs, tuned.engine.schedule.cycle_len), (3, Text::CYCLE_LEN), "the file still overrides");
        jail.set_env("LABELGATE__GATE__INPUT", "text");
        assert_eq!(Config::load(Some(Path::new("features.toml"))).unwrap().engine.stage1_epochs, Text::STAGE1_EPOCHS, "set by the environment too");
        Ok(())
    });
}

#[test]
fn an_image_shape_must_match_the_feature_length() {
    assert!(with("[gate]\nimage_shape = [28, 28, 1]\n").is_ok());
    let e = with("[gate]\nimage_shape = [28, 28, 3]\n").unwrap_err().to_string();
    assert!(e.contains("gate.image_shape = [28, 28, 3]") && e.contains("784"), "{e}");
    assert!(with("[gate]\nimage_shape = [392, 1, 2]\n").is_err(), "two channels");
}

#[test]
fn an_image_encoder_is_optional_and_only_for_a_gate_of_images() {
    assert!(with("").unwrap().encoder.image.is_none(), "absent: the network trains on the pixels");
    let c = with("[gate]\nimage_shape = [28, 28, 1]\n[encoder.image]\nmodel_dir = \"/models/clip-vit-base-patch32\"\n").unwrap();
    let image = c.encoder.image.expect("set");
    assert_eq!((image.model_dir, image.batch_size), ("/models/clip-vit-base-patch32".into(), 16));
    let e = with("[encoder.image]\nmodel_dir = \"/models/clip\"\n").unwrap_err().to_string();
    assert!(e.contains("encoder.image") && e.contains("gate.image_shape"), "{e}");
    let e = with("[gate]\ninput = \"text\"\nimage_shape = [28, 28, 1]\n[encoder.image]\nmodel_dir = \"/models/clip\"\n").unwrap_err().to_string();
    assert!(e.contains("encoder.image") && e.contains("gate.input"), "{e}");
    let e = with("[gate]\nimage_shape = [28, 28, 1]\n[encoder.image]\nmodel_dir = \"\"\nbatch_size = 0\n").unwrap_err().to_string();
    for key in ["encoder.image.model_dir: give a CLIP model directory", "encoder.image.batch_size: must be positive"] {
        assert!(e.contains(key), "{key} missing in {e}");
    }
    let e = with("[gate]\nimage_shape = [28, 28, 1]\n[encoder.image]\nmodel_dir = \"/models/clip\"\nmodel = \"clip\"\n").unwrap_err().to_string();
    assert!(e.contains("encoder.image.model: unknown field") && e.contains("LABELGATE__ENCODER__IMAGE__MODEL"), "{e}");
    let e = with("[gate]\nimage_shape = [28, 28, 1]\n[encoder.image]\nbatch_size = 8\n").unwrap_err().to_string();
    assert!(e.contains("encoder.image: missing field `model_dir`"), "{e}");
}
