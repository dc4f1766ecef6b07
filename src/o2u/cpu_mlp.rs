//! The MLP's training steps on the CPU, data-parallel: each mini-batch is cut into one part per
//! kernel thread, each part's forward and backward pass runs on its own thread into buffers kept
//! across steps, and the parts' gradients are summed into one SGD update (PyTorch's semantics, as
//! [`super::SgdMomentum`]).
//!
//! candle splits each matrix product across threads instead, and its autograd allocates and
//! zeroes every gradient at every step: at batch 128 a second core added nothing (0.85–0.97×),
//! and half a batch cost 57 % of a whole one. Here a step allocates nothing, and a part's products
//! run whole on one core. The network's weights live in one flat vector for the epoch and are
//! written back to its `Var`s at the end, so evaluation and the GPU path are candle's as before.

use candle_core::{Result, Tensor, Var};

/// Rows × columns of a row-major block, read through strides so that a transposed view needs no
/// copy.
/// The lifetime ties a view to the slice it reads, so it cannot outlive a reallocation.
#[derive(Clone, Copy)]
struct View<'a> {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
    data: std::marker::PhantomData<&'a [f32]>,
}

impl<'a> View<'a> {
    fn rows_of(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols);
        View { ptr: data.as_ptr(), rows, cols, row_stride: cols, col_stride: 1, data: std::marker::PhantomData }
    }

    fn t(self) -> Self {
        View { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// `dst = a · b` (`dst += a · b` with `accumulate`), `dst` row-major `a.rows × b.cols`, on the
/// calling thread.
fn matmul(dst: &mut [f32], a: View, b: View, accumulate: bool) {
    assert!(a.cols == b.rows && dst.len() >= a.rows * b.cols);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    // SAFETY: `View`s are built from slices that hold their rows × cols elements at their
    // strides (`rows_of`, transposed by `t`), and `dst` holds m × n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a.col_stride as isize,
            a.row_stride as isize,
            b.ptr,
            b.col_stride as isize,
            b.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Where each layer's weight and bias `[out]` sit in the flat parameter vector. The weight is
/// held transposed, `[in, out]`: the forward product then reads it in the order gemm wants, and
/// gemm does not repack it for every part of every batch (half a batch paid the same repacking
/// as a whole one).
#[derive(Clone, Copy)]
struct LayerSpan {
    inputs: usize,
    outputs: usize,
    weight: usize,
    bias: usize,
}

/// One thread's part of a batch: its rows and every buffer its passes write.
#[derive(Default)]
struct Part {
    x: Vec<f32>,
    labels: Vec<u32>,
    /// Activations after each layer (ReLU'd for hidden layers; logits for the last).
    activations: Vec<Vec<f32>>,
    /// The gradient flowing back through the current layer's output, and the one before it.
    delta: Vec<f32>,
    delta_in: Vec<f32>,
    grads: Vec<f32>,
    losses: Vec<f32>,
}

/// An MLP's parameters, velocity and per-thread buffers while it trains on the CPU.
pub(super) struct CpuMlp {
    vars: Vec<Var>,
    layers: Vec<LayerSpan>,
    params: Vec<f32>,
    velocity: Vec<f32>,
    parts: Vec<Part>,
    /// Threads that take every part but the first (the caller takes that): one fewer than the
    /// parts, so no third thread competes for two cores. `None` with one part.
    helpers: Option<rayon::ThreadPool>,
    momentum: f32,
    weight_decay: f32,
    /// The first step sets the velocity to the gradient (PyTorch's SGD).
    stepped: bool,
}

impl CpuMlp {
    /// `vars` as the MLP lays them out: `[w0, b0, w1, b1, …]`, `w` `[out, in]`.
    pub fn new(vars: Vec<Var>, momentum: f64, weight_decay: f64, threads: usize) -> Result<Self> {
        let mut layers = Vec::new();
        let mut offset = 0;
        for pair in vars.chunks(2) {
            let [w, b] = pair else { candle_core::bail!("an MLP has a bias for every weight") };
            let (outputs, inputs) = w.as_tensor().dims2()?;
            if b.as_tensor().dims1()? != outputs {
                candle_core::bail!("bias of {} for a weight of {outputs} rows", b.as_tensor().dims1()?);
            }
            layers.push(LayerSpan { inputs, outputs, weight: offset, bias: offset + inputs * outputs });
            offset += (inputs + 1) * outputs;
        }
        let parts = (0..threads.max(1)).map(|_| Part { grads: vec![0.0; offset], ..Part::default() }).collect();
        let helpers = match threads {
            0 | 1 => None,
            n => Some(rayon::ThreadPoolBuilder::new().num_threads(n - 1).thread_name(|i| format!("labelgate-mlp-{i}")).build().map_err(candle_core::Error::wrap)?),
        };
        Ok(Self { vars, layers, params: vec![0.0; offset], velocity: vec![0.0; offset], parts, helpers, momentum: momentum as f32, weight_decay: weight_decay as f32, stepped: false })
    }

    /// Reads the weights out of the network's `Var`s (before an epoch).
    pub fn load(&mut self) -> Result<()> {
        for (layer, pair) in self.layers.iter().zip(self.vars.chunks(2)) {
            let weight = pair[0].as_tensor().t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            self.params[layer.weight..layer.bias].copy_from_slice(&weight);
            let bias = pair[1].as_tensor().to_vec1::<f32>()?;
            self.params[layer.bias..layer.bias + layer.outputs].copy_from_slice(&bias);
        }
        Ok(())
    }

    /// Writes the weights back into the network's `Var`s (after an epoch).
    pub fn store(&self) -> Result<()> {
        for (layer, pair) in self.layers.iter().zip(self.vars.chunks(2)) {
            let device = pair[0].device();
            let weight = Tensor::from_slice(&self.params[layer.weight..layer.bias], (layer.inputs, layer.outputs), device)?;
            pair[0].set(&weight.t()?.contiguous()?)?;
            pair[1].set(&Tensor::from_slice(&self.params[layer.bias..layer.bias + layer.outputs], layer.outputs, device)?)?;
        }
        Ok(())
    }

    /// One SGD step on the samples `batch` of `features` (row-major, `dim` per sample); writes
    /// each sample's loss, in the batch's order, to `losses`.
    pub fn step(&mut self, features: &[f32], labels: &[u32], batch: &[u32], lr: f64, losses: &mut Vec<f32>) {
        let n = batch.len();
        let per_part = n.div_ceil(self.parts.len());
        let (params, layers) = (&self.params, &self.layers);
        let used = batch.chunks(per_part).len();
        side_by_side(self.helpers.as_ref(), &mut self.parts[..used], |i, part| part.gradients(params, layers, features, labels, &batch[i * per_part..((i + 1) * per_part).min(n)], n));
        for part in &self.parts[..used] {
            losses.extend_from_slice(&part.losses);
        }
        self.update(used, lr as f32);
    }

    /// `v = μ·v + Σ grads + wd·p` (`v = Σ grads + wd·p` at the first step); `p -= lr·v`.
    fn update(&mut self, used: usize, lr: f32) {
        let (momentum, decay) = (if self.stepped { self.momentum } else { 0.0 }, self.weight_decay);
        self.stepped = true;
        // Small networks are updated on this thread: a hand-over costs more than the pass.
        let chunk = self.params.len().div_ceil(self.parts.len()).max(1 << 14);
        let (first, others) = self.parts[..used].split_first_mut().expect("a batch has a part");
        let mut slices: Vec<_> = self.params.chunks_mut(chunk).zip(self.velocity.chunks_mut(chunk)).zip(first.grads.chunks_mut(chunk)).collect();
        side_by_side(self.helpers.as_ref(), &mut slices, |c, ((p, v), g)| {
            let range = c * chunk..c * chunk + g.len();
            for other in others.iter() {
                g.iter_mut().zip(&other.grads[range.clone()]).for_each(|(g, &o)| *g += o);
            }
            for ((p, v), &g) in p.iter_mut().zip(v.iter_mut()).zip(g.iter()) {
                *v = momentum * *v + g + decay * *p;
                *p -= lr * *v;
            }
        });
    }
}

impl Part {
    /// Forward and backward over `rows`; `grads` gets their share of the gradient of the batch's
    /// mean loss (the batch has `batch_len` samples), `losses` their per-sample losses.
    fn gradients(&mut self, params: &[f32], layers: &[LayerSpan], features: &[f32], labels: &[u32], rows: &[u32], batch_len: usize) {
        let m = rows.len();
        let dim = layers[0].inputs;
        self.x.clear();
        self.labels.clear();
        for &r in rows {
            let r = r as usize;
            self.x.extend_from_slice(&features[r * dim..(r + 1) * dim]);
            self.labels.push(labels[r]);
        }
        self.activations.resize_with(layers.len(), Vec::new);
        for (l, layer) in layers.iter().enumerate() {
            let (before, rest) = self.activations.split_at_mut(l);
            let input = if l == 0 { &self.x } else { &before[l - 1] };
            let out = &mut rest[0];
            out.resize(m * layer.outputs, 0.0);
            let weight_t = View::rows_of(&params[layer.weight..], layer.inputs, layer.outputs);
            matmul(out, View::rows_of(input, m, layer.inputs), weight_t, false);
            let bias = &params[layer.bias..layer.bias + layer.outputs];
            let hidden = l + 1 < layers.len();
            for row in out.chunks_exact_mut(layer.outputs) {
                if hidden {
                    row.iter_mut().zip(bias).for_each(|(o, &b)| *o = (*o + b).max(0.0));
                } else {
                    row.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
                }
            }
        }
        // d(mean loss)/d(logits) = (softmax − one-hot) / batch, and each sample's loss.
        let classes = layers.last().unwrap().outputs;
        self.delta.clear();
        self.delta.extend_from_slice(&self.activations[layers.len() - 1]);
        self.losses.clear();
        let scale = 1.0 / batch_len as f32;
        for (row, &y) in self.delta.chunks_exact_mut(classes).zip(&self.labels) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&z| (z - max).exp()).sum();
            let log_sum = max + sum.ln();
            self.losses.push(log_sum - row[y as usize]);
            for z in row.iter_mut() {
                *z = (*z - log_sum).exp() * scale;
            }
            row[y as usize] -= scale;
        }
        for (l, layer) in layers.iter().enumerate().rev() {
            let input = if l == 0 { &self.x } else { &self.activations[l - 1] };
            let delta = View::rows_of(&self.delta, m, layer.outputs);
            matmul(&mut self.grads[layer.weight..layer.bias], View::rows_of(input, m, layer.inputs).t(), delta, false);
            let bias_grad = &mut self.grads[layer.bias..layer.bias + layer.outputs];
            bias_grad.fill(0.0);
            for row in self.delta.chunks_exact(layer.outputs) {
                for (g, &d) in bias_grad.iter_mut().zip(row) {
                    *g += d;
                }
            }
            if l == 0 {
                break;
            }
            // Back through the weight, then through the ReLU (its output is positive where it
            // passed the gradient).
            self.delta_in.resize(m * layer.inputs, 0.0);
            matmul(&mut self.delta_in, delta, View::rows_of(&params[layer.weight..], layer.inputs, layer.outputs).t(), false);
            for (d, &a) in self.delta_in.iter_mut().zip(&self.activations[l - 1]) {
                *d = if a > 0.0 { *d } else { 0.0 };
            }
            std::mem::swap(&mut self.delta, &mut self.delta_in);
        }
    }
}

/// `f` on every item, the first on the calling thread and the others on `helpers` at the same
/// time: the caller works instead of waiting, and one item costs no hand-over at all.
fn side_by_side<T: Send>(helpers: Option<&rayon::ThreadPool>, items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    let Some((first, rest)) = items.split_first_mut() else { return };
    let Some(helpers) = helpers.filter(|_| !rest.is_empty()) else {
        items.iter_mut().enumerate().for_each(|(i, item)| f(i, item));
        return;
    };
    helpers.in_place_scope(|scope| {
        for (i, item) in rest.iter_mut().enumerate() {
            let f = &f;
            scope.spawn(move |_| f(i + 1, item));
        }
        f(0, first);
    });
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::o2u::{per_sample_nll, InputShape, ModelConfig, Network, SgdMomentum, WeightRng};

    /// The same steps as candle's autograd and [`SgdMomentum`] take, whole or cut into parts.
    #[test]
    fn steps_match_candle_autograd_in_one_part_or_several() -> Result<()> {
        let (dim, classes, n) = (5, 3, 11);
        let features: Vec<f32> = (0..n * dim).map(|i| ((i * 37 % 17) as f32 - 8.0) / 5.0).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i * 7 % classes as u32).collect();
        let batches: Vec<Vec<u32>> = vec![(0..n as u32).rev().collect(), vec![3, 1, 4, 10, 5, 9, 2], (0..n as u32).collect()];
        let config = ModelConfig::Mlp { hidden: vec![7, 6] };
        let shape = InputShape::Vector { dim };
        let reference = {
            let net = Network::new(&config, shape, classes, &mut WeightRng::new(3), &Device::Cpu)?;
            let mut opt = SgdMomentum::new(net.params(), 0.9, 5e-4);
            let mut losses = Vec::new();
            for batch in &batches {
                let idx = Tensor::from_slice(batch, batch.len(), &Device::Cpu)?;
                let x = Tensor::from_slice(&features, (n, dim), &Device::Cpu)?.index_select(&idx, 0)?;
                let y = Tensor::from_slice(&labels, n, &Device::Cpu)?.index_select(&idx, 0)?;
                let per_sample = per_sample_nll(&net.forward(&x, None)?, &y)?;
                losses.extend(per_sample.to_vec1::<f32>()?);
                opt.step(&per_sample.mean_all()?.backward()?, 0.05)?;
            }
            (net.params().iter().map(|p| p.as_tensor().flatten_all()?.to_vec1::<f32>()).collect::<Result<Vec<_>>>()?, losses)
        };
        for parts in [1, 2, 3] {
            let net = Network::new(&config, shape, classes, &mut WeightRng::new(3), &Device::Cpu)?;
            let mut mlp = CpuMlp::new(net.params(), 0.9, 5e-4, parts)?;
            mlp.load()?;
            let mut losses = Vec::new();
            for batch in &batches {
                mlp.step(&features, &labels, batch, 0.05, &mut losses);
            }
            mlp.store()?;
            let params: Vec<Vec<f32>> = net.params().iter().map(|p| p.as_tensor().flatten_all()?.to_vec1::<f32>()).collect::<Result<_>>()?;
            for (got, want) in params.iter().flatten().zip(reference.0.iter().flatten()).chain(losses.iter().zip(&reference.1)) {
                assert!((got - want).abs() < 1e-5, "{parts} parts: {got} against candle's {want}");
            }
            assert_eq!(losses.len(), reference.1.len());
        }
        Ok(())
    }
}
