//! SGD with momentum and weight decay, step for step as `torch.optim.SGD`.
//!
//! Written here rather than using `tch::nn::Optimizer` because that one cannot save its
//! momentum buffers: keeping them in a checkpoint is what makes `--resume` continue the
//! run exactly instead of restarting the momentum from zero.

use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, Tensor};

/// Parameters whose names start with this prefix form the predictor group, which the
/// "fix predictor lr" option keeps at the initial learning rate.
pub const PREDICTOR_PREFIX: &str = "predictor.";

struct Param {
    name: String,
    value: Tensor,
    momentum: Tensor,
}

pub struct Sgd {
    params: Vec<Param>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// All trainable variables of `vs` (BN running statistics are not trainable).
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64) -> Self {
        let vars: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let params = vars
            .into_iter()
            .map(|(name, value)| Param {
                momentum: value.zeros_like(),
                name,
                value,
            })
            .collect();
        Self {
            params,
            momentum,
            weight_decay,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.value.zero_grad();
        }
    }

    /// One update: `buf = m·buf + (g + wd·w)`, `w -= lr·buf` (no dampening, no Nesterov).
    /// Divides every gradient by `scale` (float16's loss scale, see
    /// [`crate::engine::amp::LossScaler`]); returns whether all of them are finite.
    pub fn unscale(&mut self, scale: f64) -> bool {
        tch::no_grad(|| {
            let mut sums = Vec::new();
            for p in &mut self.params {
                let mut grad = p.value.grad();
                if grad.defined() {
                    let _ = grad.g_mul_scalar_(1.0 / scale);
                    sums.push(grad.abs().sum(tch::Kind::Float));
                }
            }
            // One device-to-host read for all parameters, not one each.
            sums.is_empty() || Tensor::stack(&sums, 0).isfinite().all().int64_value(&[]) != 0
        })
    }

    pub fn step(&mut self, lr: f64, predictor_lr: f64) {
        self.step_by_name(|name| {
            if name.starts_with(PREDICTOR_PREFIX) {
                predictor_lr
            } else {
                lr
            }
        });
    }

    /// One update with the learning rate `lr_of(name)` for each parameter: fine-tuning
    /// gives the breed head and the backbone their own. Parameters without a gradient
    /// (not in this step's graph) are left alone, momentum included.
    pub fn step_by_name(&mut self, lr_of: impl Fn(&str) -> f64) {
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.value.grad();
                if !grad.defined() {
                    continue;
                }
                let d = grad + &p.value * self.weight_decay;
                let _ = p.momentum.g_mul_scalar_(self.momentum).g_add_(&d);
                let _ = p.value.g_sub_(&(&p.momentum * lr_of(&p.name)));
            }
        });
    }

    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        // Contiguous copies: the momentum of channels-last weights has NHWC strides, which
        // safetensors cannot store.
        let named: Vec<(&str, Tensor)> = self
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.momentum.contiguous()))
            .collect();
        Tensor::write_safetensors(&named, path)
    }

    /// Restores momentum buffers saved by [`Self::save`]; every parameter must be present.
    pub fn load(&mut self, path: &Path) -> Result<(), tch::TchError> {
        let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        for p in &mut self.params {
            let t = saved.get(&p.name).ok_or_else(|| {
                tch::TchError::FileFormat(format!("{}: no momentum for {}", path.display(), p.name))
            })?;
            tch::no_grad(|| p.momentum.copy_(&t.to_device(p.momentum.device())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn matches_torch_sgd_by_hand() {
        // w = [1, -2], loss = sum(w²)/2 ⇒ g = w. momentum 0.9, wd 0.1, lr 0.5.
        let vs = VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut opt = Sgd::new(&vs, 0.9, 0.1);
        let mut expect = [1.0f64, -2.0];
        let mut buf = [0.0f64; 2];
        for _ in 0..3 {
            opt.zero_grad();
            (&w * &w).sum(Kind::Float).multiply_scalar(0.5).backward();
            opt.step(0.5, 0.5);
            for i in 0..2 {
                buf[i] = 0.9 * buf[i] + expect[i] * 1.1;
                expect[i] -= 0.5 * buf[i];
            }
        }
        let got: Vec<f32> = Vec::try_from(&w).expect("vec");
        for i in 0..2 {
            assert!(
                (got[i] as f64 - expect[i]).abs() < 1e-5,
                "{got:?} vs {expect:?}"
            );
        }
    }

    #[test]
    fn unscaling_divides_gradients_and_finds_overflow() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut opt = Sgd::new(&vs, 0.9, 0.0);
        (&w * &w).sum(Kind::Float).multiply_scalar(512.0).backward();
        assert!(opt.unscale(256.0));
        let g: Vec<f32> = Vec::try_from(&w.grad()).expect("vec");
        assert_eq!(g, [4.0, -8.0], "d(512 w²)/dw / 256 = 4w");
        opt.zero_grad();
        (&w * f64::INFINITY).sum(Kind::Float).backward();
        assert!(!opt.unscale(2.0), "an infinite gradient is reported");
    }

    #[test]
    fn momentum_round_trips_through_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[3.0f32]));
        let mut opt = Sgd::new(&vs, 0.9, 0.0);
        (&w * 2.0).sum(Kind::Float).backward();
        opt.step(0.1, 0.1);
        let path = dir.path().join("m.safetensors");
        opt.save(&path).expect("save");
        let mut fresh = Sgd::new(&vs, 0.9, 0.0);
        fresh.load(&path).expect("load");
        assert_eq!(fresh.params[0].momentum.double_value(&[0]), 2.0);
    }
}
