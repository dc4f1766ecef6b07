//! The encoder on a tiny BERT made here (random weights, a WordPiece vocabulary of a dozen
//! words): loading a sentence-transformers directory, pooling that ignores padding, truncation
//! counted, pair features, and the cache. The real all-MiniLM-L6-v2 is checked against
//! sentence-transformers in benches/encoder_peers.sh and used by tests/text_gate.rs.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};

use super::{SentenceEncoder, TextEmbedder, TextInput};

const WORDS: [&str; 12] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "film", "is", "good", "bad", "very", "not", "##s"];
/// Tokens a text may have, [CLS] and [SEP] included.
const MAX_TOKENS: usize = 6;

/// A sentence-transformers directory of a 1-layer, 8-wide BERT with mean pooling and
/// normalisation, in a fresh temporary directory.
fn tiny_model() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelgate-tiny-bert-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let config = serde_json::json!({
        "vocab_size": WORDS.len(), "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "max_position_embeddings": 16,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0, "model_type": "bert"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("sentence_bert_config.json"), format!("{{\"max_seq_length\": {MAX_TOKENS}, \"do_lower_case\": false}}")).unwrap();
    std::fs::write(dir.join("1_Pooling/config.json"), r#"{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": true}"#).unwrap();
    std::fs::write(dir.join("modules.json"), r#"[{"type": "sentence_transformers.models.Pooling"}, {"type": "sentence_transformers.models.Normalize"}]"#).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = WORDS.iter().enumerate().map(|(i, w)| (w.to_string(), i.into())).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    // Random weights: the VarMap makes every tensor the model asks for, then saves them.
    let varmap = VarMap::new();
    let config: BertConfig = serde_json::from_value(config).unwrap();
    BertModel::load(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu), &config).unwrap();
    varmap.save(dir.join("model.safetensors")).unwrap();
    dir
}

fn encoder(dir: &Path, batch_size: usize) -> SentenceEncoder {
    SentenceEncoder::load(dir, batch_size, &Device::Cpu).unwrap()
}

fn text(t: &str) -> TextInput {
    TextInput { text: t.into(), pair: None }
}

#[test]
fn a_text_embeds_the_same_alone_and_beside_longer_ones() {
    let dir = tiny_model();
    let enc = encoder(&dir, 8);
    assert_eq!((enc.dim(), enc.max_tokens()), (8, MAX_TOKENS));
    let alone = enc.embed(&["good film"]).unwrap();
    // One batch with a longer text: "good film" is padded, and the padding must not count.
    let padded = enc.embed(&["good film", "the film is very bad"]).unwrap();
    for (a, b) in alone.vectors.iter().zip(&padded.vectors[..8]) {
        assert!((a - b).abs() < 1e-5, "{:?} vs {:?}", alone.vectors, &padded.vectors[..8]);
    }
    let norm: f32 = padded.vectors[8..].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");
    assert_ne!(&padded.vectors[..8], &padded.vectors[8..], "different texts, different vectors");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn texts_beyond_the_token_limit_are_cut_and_counted() {
    let dir = tiny_model();
    let enc = encoder(&dir, 2);
    // [CLS] + 4 words + [SEP] fits; a fifth word does not.
    let fits = enc.embed(&["the film is good"]).unwrap();
    let long = enc.embed(&["the film is good", "the film is good very", "the film is good not very"]).unwrap();
    assert_eq!((fits.truncated, long.truncated), (0, 2));
    // Cut to "the film is good", both long texts embed as that text does.
    for row in 1..3 {
        for (a, b) in fits.vectors.iter().zip(&long.vectors[row * 8..(row + 1) * 8]) {
            assert!((a - b).abs() < 1e-5);
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_pair_is_u_v_their_distance_and_product() {
    let dir = tiny_model();
    let mut pairs = TextEmbedder::new(encoder(&dir, 4), 16, true);
    let mut single = TextEmbedder::new(encoder(&dir, 4), 16, false);
    assert_eq!((pairs.feature_dim(), single.feature_dim()), (32, 8));
    let (f, _) = pairs.embed(&[TextInput { text: "good film".into(), pair: Some("bad film".into()) }]).unwrap();
    let (uv, _) = single.embed(&[text("good film"), text("bad film")]).unwrap();
    let (u, v) = uv.split_at(8);
    for i in 0..8 {
        let want = [u[i], v[i], (u[i] - v[i]).abs(), u[i] * v[i]];
        for (part, w) in want.iter().enumerate() {
            assert!((f[part * 8 + i] - w).abs() < 1e-5, "part {part}, column {i}");
        }
    }
    assert!(single.embed(&[TextInput { text: "a".into(), pair: Some("b".into()) }]).is_err(), "a pair at a single-text encoder");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_cache_embeds_each_text_once() {
    let dir = tiny_model();
    let mut embedder = TextEmbedder::new(encoder(&dir, 4), 16, false);
    let (first, report) = embedder.embed(&[text("good film"), text("bad film"), text("good film")]).unwrap();
    assert_eq!((report.cache.hits, report.cache.misses, report.records), (1, 2, 3), "the repeat within the call is a hit");
    assert_eq!(&first[..8], &first[16..]);
    let (again, report) = embedder.embed(&[text("bad film"), text("the film")]).unwrap();
    assert_eq!((report.cache.hits, report.cache.misses), (1, 1));
    assert_eq!(&again[..8], &first[8..16], "the cached vector");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_directory_without_a_model_says_what_is_missing() {
    let dir = std::env::temp_dir().join(format!("labelgate-no-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = SentenceEncoder::load(&dir, 4, &Device::Cpu).err().expect("no model").to_string();
    assert!(err.contains("config.json, tokenizer.json, model.safetensors missing"), "{err}");
    let err = TextEmbedder::load(Some(&dir), 4, 0, false).err().expect("no model").to_string();
    assert!(err.contains("encoder.text.model_dir") && err.contains("scripts/models.sh"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
