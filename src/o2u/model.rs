//! The classifiers O2U-Net trains: an MLP for feature vectors and the 9-layer CNN of the
//! O2U-Net and Co-teaching papers for small images. Weights come from our own seeded generator
//! (candle's CPU RNG cannot be seeded), with PyTorch's default initialisation, so runs are
//! reproducible and comparable with a PyTorch peer.

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor, Var, D};
use candle_nn::{BatchNorm, Linear};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Shape of one input sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputShape {
    Vector { dim: usize },
    Image { channels: usize, height: usize, width: usize },
}

impl InputShape {
    pub fn len(&self) -> usize {
        match *self {
            InputShape::Vector { dim } => dim,
            InputShape::Image { channels, height, width } => channels * height * width,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which network to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ModelConfig {
    /// Fully connected, ReLU between layers; `hidden` lists the hidden widths.
    Mlp { hidden: Vec<usize> },
    /// Three blocks of three 3×3 conv + batch-norm + leaky-ReLU, max-pool and dropout between
    /// blocks (the last block is 3×3 valid, 1×1, 1×1), global average pooling, linear head.
    Cnn9 { dropout: f32 },
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::Mlp { hidden: vec![256, 256] }
    }
}

/// Seeded source of initial weights and dropout masks.
pub struct WeightRng(ChaCha8Rng);

impl WeightRng {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.0
    }

    fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n).map(|_| self.0.random_range(-bound..bound)).collect()
    }

    /// PyTorch's default for Linear and Conv2d: U(-1/√fan_in, 1/√fan_in) for weight and bias.
    fn var(&mut self, shape: &[usize], fan_in: usize, device: &Device) -> Result<Var> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let data = self.uniform(shape.iter().product(), bound);
        Var::from_tensor(&Tensor::from_vec(data, shape, device)?)
    }
}

/// A square convolution, stride 1, computed as one matrix product over shifted copies of the
/// input (im2col built from tensor views). candle's own conv2d backward copies the kernel once
/// per input channel, which ran an 80 GB GPU out of memory on this network at batch 128; here
/// the backward pass holds only the k² shifted copies.
struct Conv {
    /// `[out, in, k, k]`, PyTorch's layout.
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    padding: usize,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let out_channels = self.weight.dim(0)?;
        let (k, p) = (self.kernel, self.padding);
        let (ho, wo) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
        let cols = if k == 1 {
            x.permute((0, 2, 3, 1))?.reshape((b * h * w, c))?
        } else {
            let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
            let mut shifted = Vec::with_capacity(k * k);
            for dy in 0..k {
                for dx in 0..k {
                    shifted.push(xp.narrow(2, dy, ho)?.narrow(3, dx, wo)?);
                }
            }
            // [b, c, k·k, ho, wo] -> rows of (c, dy, dx) patches, matching the weight layout.
            Tensor::stack(&shifted, 2)?.reshape((b, c * k * k, ho * wo))?.transpose(1, 2)?.reshape((b * ho * wo, c * k * k))?
        };
        let kernel = self.weight.reshape((out_channels, c * k * k))?;
        let out = cols.matmul(&kernel.t()?)?.broadcast_add(&self.bias)?;
        out.reshape((b, ho, wo, out_channels))?.permute((0, 3, 1, 2))
    }
}

struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

enum Layers {
    Mlp(Vec<Linear>),
    Cnn9 { blocks: Vec<ConvBn>, head: Linear, dropout: f32 },
}

/// A network with its trainable parameters.
pub struct Network {
    layers: Layers,
    params: Vec<Var>,
    input: InputShape,
}

impl Network {
    pub fn new(config: &ModelConfig, input: InputShape, classes: usize, rng: &mut WeightRng, device: &Device) -> Result<Self> {
        let mut params = Vec::new();
        let linear = |rng: &mut WeightRng, params: &mut Vec<Var>, i: usize, o: usize| -> Result<Linear> {
            let w = rng.var(&[o, i], i, device)?;
            let b = rng.var(&[o], i, device)?;
            let layer = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
            params.extend([w, b]);
            Ok(layer)
        };
        let layers = match config {
            ModelConfig::Mlp { hidden } => {
                let mut widths = vec![input.len()];
                widths.extend(hidden);
                widths.push(classes);
                let mut ls = Vec::new();
                for pair in widths.windows(2) {
                    ls.push(linear(rng, &mut params, pair[0], pair[1])?);
                }
                Layers::Mlp(ls)
            }
            ModelConfig::Cnn9 { dropout } => {
                let InputShape::Image { channels, .. } = input else { candle_core::bail!("the cnn9 model needs image input, got {input:?}") };
                // (in, out, kernel, padding)
                let spec = [(channels, 128, 3, 1), (128, 128, 3, 1), (128, 128, 3, 1), (128, 256, 3, 1), (256, 256, 3, 1), (256, 256, 3, 1), (256, 512, 3, 0), (512, 256, 1, 0), (256, 128, 1, 0)];
                let mut blocks = Vec::new();
                for (i, o, k, padding) in spec {
                    let fan_in = i * k * k;
                    let w = rng.var(&[o, i, k, k], fan_in, device)?;
                    let b = rng.var(&[o], fan_in, device)?;
                    let conv = Conv { weight: w.as_tensor().clone(), bias: b.as_tensor().clone(), kernel: k, padding };
                    let gamma = Var::ones(o, DType::F32, device)?;
                    let beta = Var::zeros(o, DType::F32, device)?;
                    let bn = BatchNorm::new(o, Tensor::zeros(o, DType::F32, device)?, Tensor::ones(o, DType::F32, device)?, gamma.as_tensor().clone(), beta.as_tensor().clone(), 1e-5)?;
                    params.extend([w, b, gamma, beta]);
                    blocks.push(ConvBn { conv, bn });
                }
                let head = linear(rng, &mut params, 128, classes)?;
                Layers::Cnn9 { blocks, head, dropout: *dropout }
            }
        };
        Ok(Self { layers, params, input })
    }

    pub fn is_convolutional(&self) -> bool {
        matches!(self.layers, Layers::Cnn9 { .. })
    }

    pub fn params(&self) -> Vec<Var> {
        self.params.clone()
    }

    /// Logits for a batch laid out as `[batch, input.len()]`. In training mode batch-norm uses
    /// batch statistics and dropout draws its masks from `rng`.
    pub fn forward(&self, x: &Tensor, train: Option<&mut WeightRng>) -> Result<Tensor> {
        match &self.layers {
            Layers::Mlp(layers) => {
                let mut h = x.clone();
                for (i, layer) in layers.iter().enumerate() {
                    h = layer.forward(&h)?;
                    if i + 1 < layers.len() {
                        h = h.relu()?;
                    }
                }
                Ok(h)
            }
            Layers::Cnn9 { blocks, head, dropout } => {
                let InputShape::Image { channels, height, width } = self.input else { unreachable!() };
                let mut h = x.reshape((x.dim(0)?, channels, height, width))?;
                let mut rng = train;
                for (i, block) in blocks.iter().enumerate() {
                    h = block.conv.forward(&h)?;
                    h = if rng.is_some() { block.bn.forward_train(&h)? } else { block.bn.forward_t(&h, false)? };
                    h = candle_nn::ops::leaky_relu(&h, 0.01)?;
                    if i == 2 || i == 5 {
                        h = h.max_pool2d(2)?;
                        if let Some(r) = rng.as_deref_mut() {
                            h = dropout_with(&h, *dropout, r)?;
                        }
                    }
                }
                let pooled = h.mean(D::Minus1)?.mean(D::Minus1)?;
                head.forward(&pooled)
            }
        }
    }
}

/// Inverted dropout with a mask from our seeded generator.
fn dropout_with(x: &Tensor, p: f32, rng: &mut WeightRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.rng().random::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
    x * Tensor::from_vec(mask, x.shape(), x.device())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights() -> Result<()> {
        let shape = InputShape::Vector { dim: 5 };
        let a = Network::new(&ModelConfig::default(), shape, 3, &mut WeightRng::new(1), &Device::Cpu)?;
        let b = Network::new(&ModelConfig::default(), shape, 3, &mut WeightRng::new(1), &Device::Cpu)?;
        let c = Network::new(&ModelConfig::default(), shape, 3, &mut WeightRng::new(2), &Device::Cpu)?;
        let flat = |n: &Network| -> Result<Vec<f32>> { n.params()[0].as_tensor().flatten_all()?.to_vec1() };
        assert_eq!(flat(&a)?, flat(&b)?);
        assert_ne!(flat(&a)?, flat(&c)?);
        Ok(())
    }

    #[test]
    fn mlp_init_is_bounded_by_fan_in() -> Result<()> {
        let net = Network::new(&ModelConfig::default(), InputShape::Vector { dim: 100 }, 3, &mut WeightRng::new(0), &Device::Cpu)?;
        let w = net.params()[0].as_tensor().flatten_all()?.to_vec1::<f32>()?;
        assert!(w.iter().all(|v| v.abs() <= 0.1));
        assert!(w.iter().any(|v| v.abs() > 0.09));
        Ok(())
    }

    #[test]
    fn cnn9_maps_mnist_and_cifar_shapes_to_logits() -> Result<()> {
        for (c, hw) in [(1, 28), (3, 32)] {
            let shape = InputShape::Image { channels: c, height: hw, width: hw };
            let net = Network::new(&ModelConfig::Cnn9 { dropout: 0.25 }, shape, 10, &mut WeightRng::new(0), &Device::Cpu)?;
            let x = Tensor::zeros((2, shape.len()), DType::F32, &Device::Cpu)?;
            let mut rng = WeightRng::new(5);
            assert_eq!(net.forward(&x, Some(&mut rng))?.dims(), &[2, 10]);
            assert_eq!(net.forward(&x, None)?.dims(), &[2, 10]);
        }
        Ok(())
    }

    #[test]
    fn shifted_matmul_conv_matches_candle_conv2d() -> Result<()> {
        let mut rng = WeightRng::new(3);
        for (cin, cout, k, padding) in [(3, 5, 3, 1), (4, 6, 3, 0), (5, 2, 1, 0)] {
            let x = Tensor::from_vec(rng.uniform(2 * cin * 7 * 6, 1.0), (2, cin, 7, 6), &Device::Cpu)?;
            let weight = rng.var(&[cout, cin, k, k], cin * k * k, &Device::Cpu)?.as_tensor().clone();
            let bias = rng.var(&[cout], 1, &Device::Cpu)?.as_tensor().clone();
            let ours = Conv { weight: weight.clone(), bias: bias.clone(), kernel: k, padding }.forward(&x)?;
            let reference = x.conv2d(&weight, padding, 1, 1, 1)?.broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
            assert_eq!(ours.dims(), reference.dims());
            let diff = (ours - reference)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "k={k} p={padding}: max difference {diff}");
        }
        Ok(())
    }

    #[test]
    fn cnn9_rejects_vector_input() {
        let r = Network::new(&ModelConfig::Cnn9 { dropout: 0.25 }, InputShape::Vector { dim: 4 }, 2, &mut WeightRng::new(0), &Device::Cpu);
        assert!(r.is_err());
    }
}
