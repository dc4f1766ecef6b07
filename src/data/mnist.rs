//! MNIST in the canonical gzipped IDX format.

use std::{fs::File, io::Read, path::Path};

use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;

use super::LabelledSet;
use crate::o2u::InputShape;

fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    GzDecoder::new(file).read_to_end(&mut bytes).with_context(|| format!("{} is not valid gzip", path.display()))?;
    if bytes.len() < 8 || u32::from_be_bytes(bytes[0..4].try_into()?) != magic {
        bail!("{}: not an IDX file with magic {magic:#x}", path.display());
    }
    let dims_count = (magic & 0xff) as usize;
    let header = 4 + 4 * dims_count;
    let dims: Vec<usize> = (0..dims_count).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    if bytes.len() != header + dims.iter().product::<usize>() {
        bail!("{}: size does not match its header {dims:?}", path.display());
    }
    Ok((dims, bytes.split_off(header)))
}

/// Loads `train` or `t10k` images scaled to [0, 1] with their labels.
pub fn load(dir: &Path, split: &str) -> Result<LabelledSet> {
    let dir = dir.join("mnist");
    let (dims, pixels) = read_idx(&dir.join(format!("{split}-images.idx3-ubyte.gz")), 0x0803)?;
    let (ldims, labels) = read_idx(&dir.join(format!("{split}-labels.idx1-ubyte.gz")), 0x0801)?;
    if dims[0] != ldims[0] {
        bail!("MNIST {split}: {} images but {} labels", dims[0], ldims[0]);
    }
    let labels: Vec<u32> = labels.into_iter().map(u32::from).collect();
    Ok(LabelledSet {
        sample_ids: (0..dims[0]).map(|i| format!("mnist-{split}-{i}")).collect(),
        features: pixels.into_iter().map(|p| p as f32 / 255.0).collect(),
        shape: InputShape::Image { channels: 1, height: dims[1], width: dims[2] },
        truth: Some(labels.clone()),
        labels,
        classes: (0..10).map(|d| d.to_string()).collect(),
        annotators: None,
        items: None,
        texts: None,
    })
}
