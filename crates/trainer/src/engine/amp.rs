//! Mixed precision: autocast regions in bfloat16 or float16, and the loss scaling that
//! float16 needs.
//!
//! tch's own `autocast` switches CUDA autocast to float16 only. The trainer wants
//! bfloat16 on Hopper GPUs (same exponent range as float32, so no loss scaling) and on
//! CPUs with AVX512-BF16, and float16 with dynamic loss scaling as the fallback for older
//! GPUs. A small C++ shim (`csrc/autocast.cpp`, compiled by `build.rs`) sets libtorch's
//! per-device autocast type and switch; [`autocast`] wraps a closure in it.

use serde::{Deserialize, Serialize};
use std::os::raw::c_int;
use tch::Device;

/// The precision of the forward pass. Weights, gradients and optimiser state stay float32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    Fp32,
    /// Autocast to bfloat16: matmuls and convolutions in bf16, reductions in fp32.
    Bf16,
    /// Autocast to float16, with dynamic loss scaling ([`LossScaler`]).
    Fp16,
}

extern "C" {
    fn simsiam_autocast_set(cuda: c_int, enabled: c_int, bf16: c_int) -> c_int;
    fn simsiam_autocast_nesting(enter: c_int) -> c_int;
}

/// Restores the previous autocast state when the region ends, even by a panic.
struct Region {
    cuda: c_int,
    bf16: c_int,
    before: c_int,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: plain C functions taking integers; failures come back as -1 and leave
        // libtorch's state as it was.
        unsafe {
            simsiam_autocast_nesting(0);
            simsiam_autocast_set(self.cuda, self.before, self.bf16);
        }
    }
}

/// Runs `f` with autocast on `device` at `precision` (a no-op region for float32).
pub fn autocast<T>(device: Device, precision: Precision, f: impl FnOnce() -> T) -> T {
    let bf16 = match precision {
        Precision::Fp32 => return f(),
        Precision::Bf16 => 1,
        Precision::Fp16 => 0,
    };
    let cuda = c_int::from(device.is_cuda());
    // SAFETY: as in `Region::drop`.
    let before = unsafe { simsiam_autocast_set(cuda, 1, bf16) };
    if before < 0 {
        log::warn!("libtorch refused autocast to {precision:?} on {device:?}; running in float32");
        return f();
    }
    // SAFETY: as above; the region is left in `Region::drop`.
    unsafe { simsiam_autocast_nesting(1) };
    let _region = Region { cuda, bf16, before };
    f()
}

/// Dynamic loss scaling for float16 (as `torch.cuda.amp.GradScaler`): the loss is
/// multiplied by `scale` before the backward pass so that small gradients do not flush to
/// zero in float16; the gradients are divided by it again before the step. A step whose
/// gradients overflowed is skipped and the scale halved; after [`GROWTH_INTERVAL`] good
/// steps in a row it doubles.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    scale: f64,
    good_steps: usize,
}

/// Clean steps before the scale grows.
pub const GROWTH_INTERVAL: usize = 2000;

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Records whether the unscaled gradients were all finite; returns whether the
    /// optimiser may step.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_a_clean_run() {
        let mut s = LossScaler::default();
        assert!(!s.update(false), "an overflowing step is skipped");
        assert_eq!(s.scale(), 32768.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale(), 32768.0);
        assert!(s.update(true));
        assert_eq!(s.scale(), 65536.0);
        let mut tiny = LossScaler {
            scale: 1.0,
            good_steps: 0,
        };
        tiny.update(false);
        assert_eq!(tiny.scale(), 1.0, "never below 1");
    }

    #[test]
    fn cpu_autocast_to_bf16_runs_matmuls_in_bf16_and_restores_float32() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let inside = autocast(Device::Cpu, Precision::Bf16, || a.matmul(&b));
        assert_eq!(inside.kind(), Kind::BFloat16);
        let close = (inside.to_kind(Kind::Float) - a.matmul(&b)).abs().max();
        assert!(close.double_value(&[]) < 0.1, "{close}");
        assert_eq!(a.matmul(&b).kind(), Kind::Float, "autocast is off again");
        let fp32 = autocast(Device::Cpu, Precision::Fp32, || a.matmul(&b));
        assert_eq!(fp32.kind(), Kind::Float);
        // A panic inside the region still turns autocast off.
        let caught = std::panic::catch_unwind(|| {
            autocast(Device::Cpu, Precision::Bf16, || panic!("inside"))
        });
        assert!(caught.is_err());
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }
}
