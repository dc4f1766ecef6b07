//! An image encoder: the vision tower of a CLIP model in the Hugging Face layout, run in candle
//! (`candle_transformers::models::clip`). Loading reads the model files; embedding is pure
//! computation.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::clip::{
    text_model::Activation,
    vision_model::{ClipVisionConfig, ClipVisionTransformer},
};
use serde::Deserialize;

use super::{clip_preprocess::ClipPreprocess, ImageInput};

/// The files a model directory must hold (`preprocessor_config.json` is optional).
pub const MODEL_FILES: [&str; 2] = ["config.json", "model.safetensors"];

/// Which of [`MODEL_FILES`] `dir` lacks (none: a model is there to load).
pub fn missing_files(dir: &Path) -> Vec<&'static str> {
    MODEL_FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect()
}

/// What the fix is when a directory holds no loadable model.
const SUPPORTED: &str = "labelgate loads CLIP vision towers in the Hugging Face layout (config.json with model_type \"clip\" or \"clip_vision_model\", model.safetensors with vision_model.* weights), e.g. openai/clip-vit-base-patch32";

/// `vision_config` of a CLIP `config.json` (or the whole file of a `clip_vision_model`), with the
/// defaults of transformers' `CLIPVisionConfig` for what a saved config leaves out.
#[derive(Debug, Clone, Deserialize)]
struct VisionConfigJson {
    #[serde(default = "defaults::hidden_size")]
    hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    intermediate_size: usize,
    #[serde(default = "defaults::layers_or_heads")]
    num_hidden_layers: usize,
    #[serde(default = "defaults::layers_or_heads")]
    num_attention_heads: usize,
    #[serde(default = "defaults::num_channels")]
    num_channels: usize,
    #[serde(default = "defaults::image_size")]
    image_size: usize,
    #[serde(default = "defaults::patch_size")]
    patch_size: usize,
    #[serde(default = "defaults::hidden_act")]
    hidden_act: String,
    #[serde(default = "defaults::layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "defaults::projection_dim")]
    projection_dim: usize,
}

mod defaults {
    pub fn hidden_size() -> usize {
        768
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn layers_or_heads() -> usize {
        12
    }
    pub fn num_channels() -> usize {
        3
    }
    pub fn image_size() -> usize {
        224
    }
    pub fn patch_size() -> usize {
        32
    }
    pub fn hidden_act() -> String {
        "quick_gelu".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub fn projection_dim() -> usize {
        512
    }
}

/// The vision tower's settings from `config.json`: a whole CLIP model (`model_type = "clip"`,
/// its `vision_config` and the top-level `projection_dim`) or a vision tower alone
/// (`"clip_vision_model"`). Anything else is refused with what does load.
fn vision_config(path: &Path) -> Result<ClipVisionConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let parse = |v: serde_json::Value| serde_json::from_value::<VisionConfigJson>(v).with_context(|| format!("parsing {}", path.display()));
    let config = match json.get("model_type").and_then(|t| t.as_str()) {
        Some("clip") => {
            let vision = json.get("vision_config").filter(|v| v.is_object()).with_context(|| format!("{}: a \"clip\" model without `vision_config`; {SUPPORTED}", path.display()))?;
            let mut c = parse(vision.clone())?;
            // A whole CLIP model projects to the top-level `projection_dim`.
            c.projection_dim = json.get("projection_dim").and_then(|d| d.as_u64()).map_or(defaults::projection_dim(), |d| d as usize);
            c
        }
        Some("clip_vision_model") => parse(json.clone())?,
        Some(other) => bail!("{}: model_type \"{other}\" is not supported; {SUPPORTED}", path.display()),
        None => bail!("{}: no `model_type`; {SUPPORTED}", path.display()),
    };
    // What candle-transformers' CLIP implements: QuickGELU, LayerNorm ε 1e-5, RGB input.
    if config.hidden_act != "quick_gelu" {
        bail!("{}: hidden_act \"{}\" is not supported (candle-transformers' CLIP runs \"quick_gelu\", as OpenAI's CLIP models do)", path.display(), config.hidden_act);
    }
    if (config.layer_norm_eps - 1e-5).abs() > 1e-12 {
        bail!("{}: layer_norm_eps {} is not supported (candle-transformers' CLIP uses 1e-5, as OpenAI's CLIP models do)", path.display(), config.layer_norm_eps);
    }
    if config.num_channels != 3 {
        bail!("{}: num_channels {} is not supported: images are converted to RGB (3 channels)", path.display(), config.num_channels);
    }
    let sizes_fit = config.patch_size > 0 && config.image_size % config.patch_size == 0 && config.num_attention_heads > 0 && config.hidden_size % config.num_attention_heads == 0;
    if !sizes_fit {
        bail!(
            "{}: image_size {} must be a multiple of patch_size {}, and hidden_size {} of num_attention_heads {}",
            path.display(),
            config.image_size,
            config.patch_size,
            config.hidden_size,
            config.num_attention_heads
        );
    }
    Ok(ClipVisionConfig {
        embed_dim: config.hidden_size,
        activation: Activation::QuickGelu,
        intermediate_size: config.intermediate_size,
        num_hidden_layers: config.num_hidden_layers,
        num_attention_heads: config.num_attention_heads,
        projection_dim: config.projection_dim,
        num_channels: config.num_channels,
        image_size: config.image_size,
        patch_size: config.patch_size,
    })
}

pub struct ImageEncoder {
    model: ClipVisionTransformer,
    /// `visual_projection`, when the directory has it: the image embedding of CLIP's joint space.
    projection: Option<Linear>,
    preprocess: ClipPreprocess,
    dim: usize,
    batch_size: usize,
    device: Device,
    dir: PathBuf,
}

impl ImageEncoder {
    /// Loads `dir`: `config.json` and `model.safetensors` (`vision_model.*`, and
    /// `visual_projection.weight` where the model has one), and `preprocessor_config.json` where
    /// present (CLIP's preprocessing otherwise).
    pub fn load(dir: &Path, batch_size: usize, device: &Device) -> Result<Self> {
        let missing = missing_files(dir);
        if !missing.is_empty() {
            bail!("no image encoder at {}: {} missing; {SUPPORTED}", dir.display(), missing.join(", "));
        }
        let config = vision_config(&dir.join("config.json"))?;
        let preprocessor = dir.join("preprocessor_config.json");
        let preprocess = if preprocessor.is_file() { ClipPreprocess::from_file(&preprocessor, config.image_size)? } else { ClipPreprocess::defaults(config.image_size) };
        let weights = dir.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; nothing in this process writes it.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }.with_context(|| format!("{}: not a safetensors file", weights.display()))?;
        // candle-transformers draws a missing class embedding at random: refused, so that the
        // same image always embeds the same.
        for required in ["vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight"] {
            if !vb.contains_tensor(required) {
                bail!("{}: no tensor `{required}`; {SUPPORTED}", weights.display());
            }
        }
        let model = ClipVisionTransformer::new(vb.pp("vision_model"), &config).with_context(|| format!("{}: the weights do not fit config.json's vision tower", weights.display()))?;
        let projection = if vb.contains_tensor("visual_projection.weight") {
            Some(
                candle_nn::linear_no_bias(config.embed_dim, config.projection_dim, vb.pp("visual_projection"))
                    .with_context(|| format!("{}: visual_projection.weight is not {}×{} (projection_dim × hidden_size)", weights.display(), config.projection_dim, config.embed_dim))?,
            )
        } else {
            None
        };
        let dim = if projection.is_some() { config.projection_dim } else { config.embed_dim };
        Ok(Self { model, projection, preprocess, dim, batch_size: batch_size.max(1), device: device.clone(), dir: dir.to_path_buf() })
    }

    /// Length of one image's vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The model's square input side, which every image is resized and cropped to.
    pub fn image_size(&self) -> usize {
        self.preprocess.image_size()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One vector per image, `dim` each, row-major: the pooled output of the vision tower,
    /// projected when the model has a projection, `batch_size` images per run.
    pub fn embed(&self, images: &[ImageInput<'_>]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(images.len() * self.dim);
        for (i, batch) in images.chunks(self.batch_size).enumerate() {
            let first = i * self.batch_size;
            let mut values = Vec::with_capacity(batch.len() * 3 * self.image_size() * self.image_size());
            for (j, image) in batch.iter().enumerate() {
                values.extend(self.preprocess.pixel_values(*image).with_context(|| format!("image {}", first + j))?);
            }
            let side = self.image_size();
            let pixel_values = Tensor::from_vec(values, (batch.len(), 3, side, side), &self.device)?;
            out.extend(self.embed_pixel_values(&pixel_values)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// The normalised embeddings of preprocessed `[n, 3, side, side]` pixel values.
    fn embed_pixel_values(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let pooled = self.model.forward(pixel_values)?;
        let features = match &self.projection {
            Some(p) => p.forward(&pooled)?,
            None => pooled,
        };
        // Unit length: a linear probe on L2-normalised CLIP features is how they are meant to be used.
        let norms = features.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(features.broadcast_div(&norms)?)
    }
}
