//! SGD with momentum and weight decay, PyTorch semantics (`torch.optim.SGD`, dampening 0,
//! no Nesterov): `g = grad + wd·p; v = μ·v + g` (v = g on the first step); `p -= lr·v`.
//! `candle_nn::SGD` has no momentum, and O2U-Net's schedule is tuned for it.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

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
        for (param, velocity) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(grad) = grads.get(param.as_tensor()) else { continue };
            let grad = if self.weight_decay != 0.0 {
                (grad + (param.as_tensor() * self.weight_decay)?)?
            } else {
                grad.clone()
            };
            let direction = match velocity.take() {
                Some(v) if self.momentum != 0.0 => ((v * self.momentum)? + grad)?,
                _ => grad,
            };
            param.set(&(param.as_tensor() - (&direction * lr)?)?)?;
            if self.momentum != 0.0 {
                *velocity = Some(direction);
            }
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
        assert!((v - 0.6931).abs() < 1e-5, "{v}");
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
