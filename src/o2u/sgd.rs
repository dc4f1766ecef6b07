//! SGD with momentum and weight decay, PyTorch semantics (`torch.optim.SGD`, dampening 0,
//! no Nesterov): `g = grad + wd·p; v = μ·v + g` (v = g on the first step); `p -= lr·v`.
//! `candle_nn::SGD` has no momentum, and O2U-Net's schedule is tuned for it.

use candle_core::{backprop::GradStore, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};

pub struct SgdMomentum {
    params: Vec<Var>,
    velocity: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
}

impl SgdMomentum {
    pub fn new(params: Vec<Var>, momentum: f64, weight_decay: f64) -> Self {
        let velocity = vec![None; params.len()];
        Self { params, velocity, momentum, weight_decay }
    }

    /// Applies one update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        if self.params.first().is_some_and(|p| p.device().is_cpu()) {
            self.step_in_place(grads, lr)
        } else {
            self.step_with_tensor_ops(grads, lr)
        }
    }

    /// CPU: two fused passes over memory per parameter and no allocation (a fresh buffer per
    /// tensor op made page faults the largest cost of training a small MLP).
    fn step_in_place(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for (param, velocity) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(grad) = grads.get(param.as_tensor()) else { continue };
            let grad = grad.contiguous()?;
            let v = match velocity {
                Some(v) => v,
                None => velocity.insert(param.as_tensor().zeros_like()?),
            };
            // With momentum 0 the zero velocity makes this plain `v = g + wd·p`.
            v.inplace_op3(&grad, param.as_tensor(), &VelocityUpdate { momentum: self.momentum as f32, weight_decay: self.weight_decay as f32 })?;
            param.as_tensor().inplace_op2(v, &ParamUpdate { lr: lr as f32 })?;
        }
        Ok(())
    }

    fn step_with_tensor_ops(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for (param, velocity) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(grad) = grads.get(param.as_tensor()) else { continue };
            // Gradients are built from the forward graph; without detaching, the velocity would
            // keep every step's activations alive (GPU memory grew ~10 GB per epoch on the CNN).
            let grad = grad.detach();
            let grad = if self.weight_decay != 0.0 { (grad + (param.as_tensor().detach() * self.weight_decay)?)? } else { grad };
            let direction = match velocity.take() {
                Some(v) if self.momentum != 0.0 => ((v * self.momentum)? + grad)?,
                _ => grad,
            };
            param.set(&(param.as_tensor().detach() - (&direction * lr)?)?)?;
            if self.momentum != 0.0 {
                *velocity = Some(direction);
            }
        }
        Ok(())
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("sgd: expected contiguous f32 tensors"),
    }
}

fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("sgd: expected contiguous f32 tensors"),
    }
}

/// `v = μ·v + g + wd·p`, in place on v.
struct VelocityUpdate {
    momentum: f32,
    weight_decay: f32,
}

impl InplaceOp3 for VelocityUpdate {
    fn name(&self) -> &'static str {
        "sgd-velocity"
    }

    fn cpu_fwd(&self, v: &mut CpuStorage, vl: &Layout, g: &CpuStorage, gl: &Layout, p: &CpuStorage, pl: &Layout) -> Result<()> {
        let (g, p) = (contiguous_f32(g, gl)?, contiguous_f32(p, pl)?);
        let v = contiguous_f32_mut(v, vl)?;
        for ((v, &g), &p) in v.iter_mut().zip(g).zip(p) {
            *v = self.momentum * *v + g + self.weight_decay * p;
        }
        Ok(())
    }
}

/// `p -= lr·v`, in place on p.
struct ParamUpdate {
    lr: f32,
}

impl InplaceOp2 for ParamUpdate {
    fn name(&self) -> &'static str {
        "sgd-param"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout, v: &CpuStorage, vl: &Layout) -> Result<()> {
        let v = contiguous_f32(v, vl)?;
        for (p, &v) in contiguous_f32_mut(p, pl)?.iter_mut().zip(v) {
            *p -= self.lr * v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Hand-computed PyTorch trajectory for loss = 0.5·p² (grad = p), p0 = 1, lr 0.1, μ 0.9, wd 0.1:
    /// step 1: g = 1 + 0.1 = 1.1, v = 1.1, p = 0.89
    /// step 2: g = 0.89 + 0.089 = 0.979, v = 0.99 + 0.979 = 1.969, p = 0.89 - 0.1969 = 0.6931
    #[test]
    fn matches_pytorch_momentum_and_weight_decay() -> Result<()> {
        let p = Var::new(&[1.0f32], &Device::Cpu)?;
        let mut opt = SgdMomentum::new(vec![p.clone()], 0.9, 0.1);
        for _ in 0..2 {
            let loss = (p.as_tensor().sqr()? * 0.5)?.sum_all()?;
            opt.step(&loss.backward()?, 0.1)?;
        }
        let v = p.as_tensor().to_vec1::<f32>()?[0];
        assert!((v - (0.89 - 0.1969)).abs() < 1e-5, "{v}");
        Ok(())
    }

    #[test]
    fn in_place_and_tensor_op_paths_agree() -> Result<()> {
        let init: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |in_place: bool| -> Result<Vec<f32>> {
            let p = Var::from_vec(init.clone(), (8, 8), &Device::Cpu)?;
            let mut opt = SgdMomentum::new(vec![p.clone()], 0.9, 5e-4);
            for step in 0..5 {
                let loss = (p.as_tensor().sqr()? * (step as f64 + 1.0))?.sum_all()?;
                let grads = loss.backward()?;
                if in_place {
                    opt.step_in_place(&grads, 0.01)?
                } else {
                    opt.step_with_tensor_ops(&grads, 0.01)?
                }
            }
            assert!(opt.velocity.iter().flatten().all(|v| !v.track_op()), "velocity must not hold the graph");
            p.as_tensor().flatten_all()?.to_vec1()
        };
        for (a, b) in run(true)?.iter().zip(run(false)?) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn without_momentum_is_plain_sgd() -> Result<()> {
        let p = Var::new(&[2.0f32], &Device::Cpu)?;
        let mut opt = SgdMomentum::new(vec![p.clone()], 0.0, 0.0);
        let loss = (p.as_tensor().sqr()? * 0.5)?.sum_all()?;
        opt.step(&loss.backward()?, 0.5)?;
        assert!((p.as_tensor().to_vec1::<f32>()?[0] - 1.0).abs() < 1e-6);
        Ok(())
    }
}
