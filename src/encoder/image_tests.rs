//! The image encoder on a tiny CLIP vision tower made here (random weights, 32×32 images of 8×8
//! patches): loading a Hugging Face directory, preprocessing as CLIP does, the projection and
//! normalisation, and refusals that name the file. No real image weights are available offline,
//! so this model stands in for one; the code path is the one a real CLIP directory takes.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, Module, VarBuilder, VarMap};
use candle_transformers::models::clip::{
    text_model::Activation,
    vision_model::{ClipVisionConfig, ClipVisionTransformer},
};

use super::{
    clip_preprocess::{CLIP_MEAN, CLIP_STD},
    ImageEncoder, ImageInput,
};

const SIDE: usize = 32;
const HIDDEN: usize = 32;
pub(crate) const PROJECTION: usize = 16;

fn tiny_config() -> ClipVisionConfig {
    ClipVisionConfig {
        embed_dim: HIDDEN,
        activation: Activation::QuickGelu,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        projection_dim: PROJECTION,
        num_channels: 3,
        image_size: SIDE,
        patch_size: 8,
    }
}

/// A fresh temporary directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelgate-{name}-{}-{:?}", std::process::id(), std::thread::current().id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Hugging Face CLIP directory (`model_type = "clip"`, as openai/clip-vit-base-patch32 ships)
/// of a 2-layer, 32-wide vision tower, with a visual projection when `projection` is set.
pub(crate) fn tiny_clip(name: &str, projection: bool) -> PathBuf {
    let dir = temp_dir(name);
    let config = serde_json::json!({
        "model_type": "clip", "projection_dim": PROJECTION,
        "vision_config": {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                          "image_size": SIDE, "patch_size": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "model_type": "clip_vision_model"}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    // Random weights: the VarMap makes every tensor the model asks for, then saves them. The
    // class embedding first: candle-transformers only reads it when the weights have it.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    vb.pp("vision_model.embeddings").get_with_hints(HIDDEN, "class_embedding", Init::Randn { mean: 0.0, stdev: 1.0 }).unwrap();
    ClipVisionTransformer::new(vb.pp("vision_model"), &tiny_config()).unwrap();
    if projection {
        candle_nn::linear_no_bias(HIDDEN, PROJECTION, vb.pp("visual_projection")).unwrap();
    }
    varmap.save(dir.join("model.safetensors")).unwrap();
    dir
}

fn with_preprocessor(dir: &Path, json: serde_json::Value) {
    std::fs::write(dir.join("preprocessor_config.json"), json.to_string()).unwrap();
}

/// An image of `[h, w, c]` whose values vary smoothly, different for each `seed`.
fn image(shape: [usize; 3], seed: usize) -> Vec<f32> {
    (0..shape.iter().product::<usize>()).map(|i| ((i * 7 + seed * 13) % 97) as f32 / 96.0).collect()
}

fn input(pixels: &[f32], shape: [usize; 3]) -> ImageInput<'_> {
    ImageInput { pixels, shape }
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{what}: differ by {worst}\n{a:?}\n{b:?}");
}

#[test]
fn an_image_embeds_as_candle_transformers_clip_does_on_the_same_input() {
    let dir = tiny_clip("clip-direct", true);
    let encoder = ImageEncoder::load(&dir, 4, &Device::Cpu).unwrap();
    assert_eq!((encoder.dim(), encoder.image_size()), (PROJECTION, SIDE));
    let rgb = image([SIDE, SIDE, 3], 1);
    let ours = encoder.embed(&[input(&rgb, [SIDE, SIDE, 3])]).unwrap();
    // The same image normalised by hand (no resize at the model's size), channels first, through
    // the vision tower and projection read straight from the file.
    let mut values = vec![0.0f32; 3 * SIDE * SIDE];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            values[c * SIDE * SIDE + i] = (px[c] - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu) }.unwrap();
    let tower = ClipVisionTransformer::new(vb.pp("vision_model"), &tiny_config()).unwrap();
    let projection = candle_nn::linear_no_bias(HIDDEN, PROJECTION, vb.pp("visual_projection")).unwrap();
    let pixels = Tensor::from_vec(values, (1, 3, SIDE, SIDE), &Device::Cpu).unwrap();
    let direct = projection.forward(&tower.forward(&pixels).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let norm = direct.iter().map(|v| v * v).sum::<f32>().sqrt();
    let direct: Vec<f32> = direct.iter().map(|v| v / norm).collect();
    assert_close(&ours, &direct, "loader vs candle-transformers");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn embeddings_do_not_depend_on_the_batch_and_differ_between_images() {
    let dir = tiny_clip("clip-batch", true);
    let images: Vec<Vec<f32>> = (0..5).map(|seed| image([SIDE, SIDE, 3], seed)).collect();
    let inputs: Vec<ImageInput> = images.iter().map(|p| input(p, [SIDE, SIDE, 3])).collect();
    let one_at_a_time = ImageEncoder::load(&dir, 1, &Device::Cpu).unwrap().embed(&inputs).unwrap();
    let in_twos = ImageEncoder::load(&dir, 2, &Device::Cpu).unwrap().embed(&inputs).unwrap();
    let all_at_once = ImageEncoder::load(&dir, 8, &Device::Cpu).unwrap();
    let together = all_at_once.embed(&inputs).unwrap();
    assert_eq!(together.len(), 5 * PROJECTION);
    assert_close(&one_at_a_time, &together, "batch 1 vs 8");
    assert_close(&in_twos, &together, "batch 2 vs 8");
    assert_eq!(all_at_once.embed(&inputs).unwrap(), together, "the same run twice");
    for row in together.chunks_exact(PROJECTION) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit length: {norm}");
    }
    let cosine: f32 = together[..PROJECTION].iter().zip(&together[PROJECTION..2 * PROJECTION]).map(|(a, b)| a * b).sum();
    assert!(cosine < 0.9999, "two different images, two different vectors (cosine {cosine})");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn grey_is_its_rgb_replication_and_alpha_is_dropped() {
    let dir = tiny_clip("clip-grey", true);
    let encoder = ImageEncoder::load(&dir, 4, &Device::Cpu).unwrap();
    let grey = image([SIDE, SIDE, 1], 3);
    let replicated: Vec<f32> = grey.iter().flat_map(|&v| [v, v, v]).collect();
    let rgba: Vec<f32> = replicated.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 0.25]).collect();
    let out = encoder.embed(&[input(&grey, [SIDE, SIDE, 1]), input(&replicated, [SIDE, SIDE, 3]), input(&rgba, [SIDE, SIDE, 4])]).unwrap();
    assert_eq!(&out[..PROJECTION], &out[PROJECTION..2 * PROJECTION], "grey vs RGB");
    assert_eq!(&out[..PROJECTION], &out[2 * PROJECTION..], "grey vs RGBA");
    let other = encoder.embed(&[input(&image([SIDE, SIDE, 1], 4), [SIDE, SIDE, 1])]).unwrap();
    assert_ne!(&out[..PROJECTION], &other[..], "another grey image");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn images_of_other_sizes_are_resized_and_cropped_to_the_model() {
    let dir = tiny_clip("clip-resize", true);
    let encoder = ImageEncoder::load(&dir, 4, &Device::Cpu).unwrap();
    // A flat colour stays that colour whatever the resize and crop: a 28×28 grey digit-sized
    // image and a 16×48 strip embed as the model-sized image of the same colour.
    let flat = |[h, w, c]: [usize; 3]| vec![0.6f32; h * w * c];
    let (small, strip, exact) = (flat([28, 28, 1]), flat([16, 48, 3]), flat([SIDE, SIDE, 3]));
    let out = encoder.embed(&[input(&small, [28, 28, 1]), input(&strip, [16, 48, 3]), input(&exact, [SIDE, SIDE, 3])]).unwrap();
    assert_close(&out[..PROJECTION], &out[2 * PROJECTION..], "28×28 grey vs 32×32");
    assert_close(&out[PROJECTION..2 * PROJECTION], &out[2 * PROJECTION..], "16×48 vs 32×32");
    // A left-to-right ramp: the upscaled 16×16 ramp is near the 32×32 one, and far from its mirror.
    let ramp = |n: usize, mirror: bool| -> Vec<f32> {
        (0..n * n)
            .map(|i| {
                let x = (i % n) as f32 / (n - 1) as f32;
                if mirror {
                    1.0 - x
                } else {
                    x
                }
            })
            .collect()
    };
    let (r16, r32, m32) = (ramp(16, false), ramp(SIDE, false), ramp(SIDE, true));
    let out = encoder.embed(&[input(&r16, [16, 16, 1]), input(&r32, [SIDE, SIDE, 1]), input(&m32, [SIDE, SIDE, 1])]).unwrap();
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let (near, far) = (cos(&out[..PROJECTION], &out[PROJECTION..2 * PROJECTION]), cos(&out[..PROJECTION], &out[2 * PROJECTION..]));
    assert!(near > far, "the upscaled ramp is nearer its own size's ramp ({near}) than the mirror ({far})");
    assert!(encoder.embed(&[input(&small, [SIDE, SIDE, 1])]).is_err(), "pixels that do not fill the shape");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_preprocessor_config_sets_mean_and_deviation() {
    let dir = tiny_clip("clip-preprocessor", false);
    let pixels = image([SIDE, SIDE, 3], 5);
    let default = ImageEncoder::load(&dir, 4, &Device::Cpu).unwrap();
    assert_eq!(default.dim(), HIDDEN, "no projection: the pooled output");
    let before = default.embed(&[input(&pixels, [SIDE, SIDE, 3])]).unwrap();
    // The CLIP values written out change nothing; a mean of 0.5 and deviation 0.5 changes the vector.
    with_preprocessor(&dir, serde_json::json!({"image_mean": CLIP_MEAN, "image_std": CLIP_STD, "size": {"shortest_edge": SIDE}, "crop_size": {"height": SIDE, "width": SIDE}, "resample": 3}));
    assert_close(&ImageEncoder::load(&dir, 4, &Device::Cpu).unwrap().embed(&[input(&pixels, [SIDE, SIDE, 3])]).unwrap(), &before, "CLIP's own values");
    with_preprocessor(&dir, serde_json::json!({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": SIDE, "crop_size": SIDE}));
    let half = ImageEncoder::load(&dir, 4, &Device::Cpu).unwrap().embed(&[input(&pixels, [SIDE, SIDE, 3])]).unwrap();
    let gap = half.iter().zip(&before).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(gap > 1e-3, "another normalisation, another vector (gap {gap})");
    // A crop the model cannot take is refused with the key and the file.
    with_preprocessor(&dir, serde_json::json!({"crop_size": 224}));
    let e = ImageEncoder::load(&dir, 4, &Device::Cpu).err().expect("crop of another size").to_string();
    assert!(e.contains("preprocessor_config.json") && e.contains("crop_size"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_corrupt_or_unsupported_model_is_refused_naming_the_file() {
    let empty = temp_dir("clip-empty");
    let e = ImageEncoder::load(&empty, 4, &Device::Cpu).err().expect("no model").to_string();
    assert!(e.contains("config.json, model.safetensors missing") && e.contains("clip"), "{e}");
    std::fs::remove_dir_all(empty).unwrap();

    let dir = tiny_clip("clip-broken", true);
    std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap();
    let e = format!("{:#}", ImageEncoder::load(&dir, 4, &Device::Cpu).err().expect("corrupt weights"));
    assert!(e.contains("model.safetensors"), "{e}");

    std::fs::write(dir.join("config.json"), "{\"model_type\": \"clip\"").unwrap();
    let e = format!("{:#}", ImageEncoder::load(&dir, 4, &Device::Cpu).err().expect("truncated config"));
    assert!(e.contains("parsing") && e.contains("config.json"), "{e}");

    std::fs::write(dir.join("config.json"), r#"{"model_type": "resnet", "hidden_sizes": [64, 128]}"#).unwrap();
    let e = format!("{:#}", ImageEncoder::load(&dir, 4, &Device::Cpu).err().expect("a ResNet"));
    assert!(e.contains("config.json") && e.contains("\"resnet\" is not supported") && e.contains("clip_vision_model"), "{e}");

    std::fs::write(dir.join("config.json"), r#"{"model_type": "clip_vision_model", "hidden_act": "gelu"}"#).unwrap();
    let e = format!("{:#}", ImageEncoder::load(&dir, 4, &Device::Cpu).err().expect("gelu"));
    assert!(e.contains("hidden_act \"gelu\""), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn weights_without_a_class_embedding_are_refused_rather_than_drawn_at_random() {
    let dir = tiny_clip("clip-no-class", true);
    // The same tower saved without its class embedding (which candle-transformers would draw).
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    ClipVisionTransformer::new(vb.pp("vision_model"), &tiny_config()).unwrap();
    varmap.save(dir.join("model.safetensors")).unwrap();
    let e = ImageEncoder::load(&dir, 4, &Device::Cpu).err().expect("no class embedding").to_string();
    assert!(e.contains("model.safetensors") && e.contains("vision_model.embeddings.class_embedding"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_vision_tower_alone_loads_from_its_own_config() {
    let dir = tiny_clip("clip-vision-only", true);
    // transformers' CLIPVisionModelWithProjection: the vision settings at the top level.
    let config = serde_json::json!({"model_type": "clip_vision_model", "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": SIDE, "patch_size": 8, "projection_dim": PROJECTION});
    let whole = ImageEncoder::load(&dir, 4, &Device::Cpu).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let alone = ImageEncoder::load(&dir, 4, &Device::Cpu).unwrap();
    let pixels = image([SIDE, SIDE, 3], 9);
    assert_eq!(whole.embed(&[input(&pixels, [SIDE, SIDE, 3])]).unwrap(), alone.embed(&[input(&pixels, [SIDE, SIDE, 3])]).unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn flipped_labels_of_separable_images_rank_first_through_the_embeddings() {
    use crate::{
        data::{LabelledSet, Standardizer},
        o2u::{self, InputShape, ModelConfig, O2uConfig},
    };
    let dir = tiny_clip("clip-o2u", true);
    let encoder = ImageEncoder::load(&dir, 16, &Device::Cpu).unwrap();
    // 28×28 grey images (as MNIST's): class 0 bright on top, class 1 at the bottom, each with a
    // grain of its own; every tenth label flipped.
    let (n, side) = (120, 28);
    let mut features = Vec::with_capacity(n * side * side);
    for i in 0..n {
        for y in 0..side {
            for x in 0..side {
                let bright = (y < side / 2) == (i % 2 == 0);
                let grain = ((i * 31 + y * 7 + x * 3) % 17) as f32 / 17.0 * 0.3;
                features.push(if bright { 0.7 + grain } else { grain });
            }
        }
    }
    let truth: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
    let flipped: Vec<usize> = (0..n).step_by(10).collect();
    let labels: Vec<u32> = truth.iter().enumerate().map(|(i, &t)| if flipped.contains(&i) { 1 - t } else { t }).collect();
    let mut set = LabelledSet {
        sample_ids: (0..n).map(|i| format!("s{i}")).collect(),
        features,
        shape: InputShape::Image { channels: 1, height: side, width: side },
        labels,
        classes: vec!["top".into(), "bottom".into()],
        truth: Some(truth),
        annotators: None,
        items: None,
        texts: None,
    };
    set.embed_images(&encoder).unwrap();
    assert_eq!((set.shape, set.features.len()), (InputShape::Vector { dim: PROJECTION }, n * PROJECTION));
    Standardizer::standardize_in_place(&mut set.features, set.shape);
    let config = O2uConfig { model: ModelConfig::Mlp { hidden: vec![32] }, batch_size: 16, ..O2uConfig::default() };
    let outcome = o2u::score(set.samples(), None, &config, &Device::Cpu, &mut o2u::Silent).unwrap();
    let most_suspect: Vec<usize> = o2u::suspects::rank_descending(&outcome.scores)[..flipped.len()].to_vec();
    let found = flipped.iter().filter(|i| most_suspect.contains(i)).count();
    assert!(found >= 10, "{found} of the {} flipped labels among the {} most suspect: {most_suspect:?}", flipped.len(), flipped.len());
    std::fs::remove_dir_all(dir).unwrap();
}
