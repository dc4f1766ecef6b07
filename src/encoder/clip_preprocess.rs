//! Pixels as the gate holds them to the input a CLIP vision tower expects, as the Hugging Face
//! `CLIPImageProcessor` makes it: RGB, the shortest edge resized, a centre crop of the model's
//! size, and each channel normalised by the preprocessor's mean and deviation. Pure computation.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use image::{imageops::FilterType, Rgb32FImage};
use serde_json::Value;

use super::ImageInput;

/// OpenAI CLIP's channel means and deviations (RGB), the processor's defaults, written as CLIP
/// publishes them.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// How an image is resized before the centre crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resize {
    /// The shorter side to this length, the aspect ratio kept (CLIP's `shortest_edge`).
    ShortestEdge(u32),
    /// To exactly this `(height, width)`.
    Exact(u32, u32),
}

/// The preprocessing of one model.
#[derive(Debug, Clone)]
pub struct ClipPreprocess {
    /// The model's square input side.
    image_size: u32,
    resize: Resize,
    filter: FilterType,
    mean: [f32; 3],
    std: [f32; 3],
}

impl ClipPreprocess {
    /// CLIP's own preprocessing for a model of `image_size`: bicubic resize of the shortest edge
    /// to `image_size`, centre crop, CLIP's mean and deviation.
    pub fn defaults(image_size: usize) -> Self {
        let side = image_size as u32;
        Self { image_size: side, resize: Resize::ShortestEdge(side), filter: FilterType::CatmullRom, mean: CLIP_MEAN, std: CLIP_STD }
    }

    /// The defaults, overridden by what `path` (a `preprocessor_config.json`) sets:
    /// `image_mean`, `image_std`, `size` (a number or `{"shortest_edge"}` or
    /// `{"height", "width"}`), `crop_size` (must be the model's `image_size`) and `resample`
    /// (PIL's codes: 0 nearest, 1 Lanczos, 2 bilinear, 3 bicubic).
    pub fn from_file(path: &Path, image_size: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut p = Self::defaults(image_size);
        let bad = |key: &str, why: String| anyhow::anyhow!("{}: `{key}` {why}", path.display());
        let triple = |key: &str| -> Result<Option<[f32; 3]>> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let values: Vec<f32> = serde_json::from_value(v.clone()).map_err(|e| bad(key, format!("is not a list of numbers: {e}")))?;
                    <[f32; 3]>::try_from(values.as_slice()).map(Some).map_err(|_| bad(key, format!("has {} values; give one per RGB channel", values.len())))
                }
            }
        };
        if let Some(mean) = triple("image_mean")? {
            p.mean = mean;
        }
        if let Some(std) = triple("image_std")? {
            if std.iter().any(|s| !(*s > 0.0)) {
                return Err(bad("image_std", format!("= {std:?}: every deviation must be positive")));
            }
            p.std = std;
        }
        let side = |v: &Value, key: &str| v.as_u64().filter(|&n| n > 0).map(|n| n as u32).ok_or_else(|| bad(key, format!("= {v}: expected a positive number of pixels")));
        match json.get("size") {
            None | Some(Value::Null) => {}
            Some(v) if v.is_number() => p.resize = Resize::ShortestEdge(side(v, "size")?),
            Some(v) if v.get("shortest_edge").is_some() => p.resize = Resize::ShortestEdge(side(&v["shortest_edge"], "size.shortest_edge")?),
            Some(v) if v.get("height").is_some() && v.get("width").is_some() => p.resize = Resize::Exact(side(&v["height"], "size.height")?, side(&v["width"], "size.width")?),
            Some(v) => return Err(bad("size", format!("= {v}: use a number, {{\"shortest_edge\": n}} or {{\"height\": h, \"width\": w}}"))),
        }
        let crop = match json.get("crop_size") {
            None | Some(Value::Null) => None,
            Some(v) if v.is_number() => Some((side(v, "crop_size")?, side(v, "crop_size")?)),
            Some(v) => Some((side(&v["height"], "crop_size.height")?, side(&v["width"], "crop_size.width")?)),
        };
        if let Some((h, w)) = crop.filter(|&c| c != (p.image_size, p.image_size)) {
            return Err(bad("crop_size", format!("is {h}×{w} but the model (config.json) takes {0}×{0} images; make them agree", p.image_size)));
        }
        let too_small = match p.resize {
            Resize::ShortestEdge(s) => s < p.image_size,
            Resize::Exact(h, w) => h < p.image_size || w < p.image_size,
        };
        if too_small {
            return Err(bad("size", format!("resizes below the model's {0}×{0} input; use at least {0}", p.image_size)));
        }
        p.filter = match json.get("resample").and_then(Value::as_u64) {
            None => p.filter,
            Some(0) => FilterType::Nearest,
            Some(1) => FilterType::Lanczos3,
            Some(2) => FilterType::Triangle,
            Some(3) => FilterType::CatmullRom,
            Some(n) => return Err(bad("resample", format!("= {n}: use 0 (nearest), 1 (Lanczos), 2 (bilinear) or 3 (bicubic)"))),
        };
        Ok(p)
    }

    /// The model's square input side.
    pub fn image_size(&self) -> usize {
        self.image_size as usize
    }

    /// Channel-first `[3, image_size, image_size]` values of one image, normalised.
    pub fn pixel_values(&self, image: ImageInput<'_>) -> Result<Vec<f32>> {
        let rgb = to_rgb(image)?;
        let (h, w) = (rgb.height(), rgb.width());
        let (rh, rw) = match self.resize {
            // As the processor computes it: the longer side scaled and floored.
            Resize::ShortestEdge(s) if h <= w => (s, ((s as u64 * w as u64) / h as u64) as u32),
            Resize::ShortestEdge(s) => (((s as u64 * h as u64) / w as u64) as u32, s),
            Resize::Exact(rh, rw) => (rh, rw),
        };
        let (rh, rw) = (rh.max(self.image_size), rw.max(self.image_size));
        let resized = if (rh, rw) == (h, w) { rgb } else { image::imageops::resize(&rgb, rw, rh, self.filter) };
        let side = self.image_size;
        let (top, left) = ((rh - side) / 2, (rw - side) / 2);
        let plane = (side * side) as usize;
        let mut out = vec![0.0; 3 * plane];
        for y in 0..side {
            for x in 0..side {
                let p = resized.get_pixel(left + x, top + y);
                for c in 0..3 {
                    out[c * plane + (y * side + x) as usize] = (p[c] - self.mean[c]) / self.std[c];
                }
            }
        }
        Ok(out)
    }
}

/// The image as RGB: grey replicated to three channels, alpha dropped (as PIL's `convert("RGB")`).
fn to_rgb(image: ImageInput<'_>) -> Result<Rgb32FImage> {
    let [h, w, c] = image.shape;
    if h == 0 || w == 0 || h * w * c != image.pixels.len() {
        bail!("{} pixel values for an image of shape {:?}", image.pixels.len(), image.shape);
    }
    let rgb: Vec<f32> = match c {
        1 => image.pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        3 => image.pixels.to_vec(),
        4 => image.pixels.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        c => bail!("{c} channels: images have 1 (grey), 3 (RGB) or 4 (RGBA)"),
    };
    Rgb32FImage::from_raw(w as u32, h as u32, rgb).context("image buffer")
}
