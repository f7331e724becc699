//! A model on a device with its optimiser: the SimSiam training step and feature
//! extraction, shared by pretraining, evaluation and the benchmarks.

use crate::config::{DeviceChoice, TrainConfig};
use crate::engine::amp::{self, LossScaler, Precision};
use crate::engine::loader::ViewBatch;
use crate::engine::loss::{effective_rank, output_std, simsiam_loss};
use crate::engine::model::SimSiam;
use crate::engine::sgd::Sgd;
use crate::TrainError;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use simsiam::preprocess::EvalTransform;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// Mean loss and output std of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub loss: f64,
    pub z_std: f64,
    pub z_rank: f64,
}

pub struct Session {
    pub vs: nn::VarStore,
    pub model: SimSiam,
    pub opt: Sgd,
    pub device: Device,
    size: i64,
    precision: Precision,
    /// Loss scaling, for float16 only.
    scaler: Option<LossScaler>,
    channels_last: bool,
    stop_grad: bool,
}

/// Resolves `run.device`, sets libtorch's thread count and flushes denormals to zero.
pub fn device(cfg: &TrainConfig) -> Result<Device, TrainError> {
    flush_denormals();
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    let cuda_loaded = match cfg.run.device {
        DeviceChoice::Cpu => Ok(()),
        DeviceChoice::Auto | DeviceChoice::Cuda => load_torch_cuda(),
    };
    match cfg.run.device {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(TrainError::NoCuda {
            why: cuda_loaded
                .err()
                .unwrap_or_else(|| "libtorch sees no CUDA device".into()),
        }),
    }
}

/// Loads `libtorch_cuda.so` into the process, which registers libtorch's CUDA backend.
///
/// A binary built on the slim CPU route does not link it (its CUDA dependencies are not
/// installed there), so the same binary runs on a CPU machine and, carried to a GPU
/// machine whose libtorch has them, trains on the GPU. Already linked (full CUDA route)
/// or loaded, this does nothing. The error says why the library did not load.
fn load_torch_cuda() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid C string; RTLD_NOW resolves every symbol at once, so
        // a missing dependency is reported here and not at a later call.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns null or a C string valid until the next dl call.
            let err = unsafe { libc::dlerror() };
            let why = if err.is_null() {
                "unknown error".to_string()
            } else {
                unsafe { std::ffi::CStr::from_ptr(err) }
                    .to_string_lossy()
                    .into_owned()
            };
            log::debug!("no CUDA libtorch: {why}");
            return Err(why);
        }
    }
    Ok(())
}

/// The device and its name: `cpu: <model>, <n> threads`, or `cuda:<i>: <GPU name>` as
/// `nvidia-smi` gives it.
pub fn device_name(device: Device) -> String {
    let name = match device {
        Device::Cuda(i) => std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=name",
                "--format=csv,noheader",
                "-i",
                &i.to_string(),
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| format!("CUDA device {i}")),
        _ => std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|v| v.split(':').nth(1))
                    .map(|v| v.trim().to_string())
            })
            .map(|model| format!("{model}, {} threads", tch::get_num_threads()))
            .unwrap_or_else(|| "CPU".into()),
    };
    match device {
        Device::Cuda(i) => format!("cuda:{i}: {name}"),
        _ => format!("cpu: {name}"),
    }
}

impl Session {
    /// A freshly initialised model (seeded by `run.seed`) and optimiser.
    pub fn new(cfg: &TrainConfig, device: Device) -> Self {
        tch::manual_seed(cfg.run.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = SimSiam::new(&vs.root(), &cfg.model);
        let channels_last = cfg.run.channels_last;
        if channels_last {
            tch::no_grad(|| {
                for (_, mut t) in vs.variables() {
                    if t.dim() == 4 {
                        let cl = to_channels_last(&t);
                        t.set_data(&cl);
                    }
                }
            });
        }
        let opt = Sgd::new(&vs, cfg.optim.momentum, cfg.optim.weight_decay);
        Self {
            vs,
            model,
            opt,
            device,
            size: cfg.data.image_size as i64,
            precision: cfg.run.precision,
            scaler: (cfg.run.precision == Precision::Fp16).then(LossScaler::default),
            channels_last,
            stop_grad: !cfg.debug.no_stop_grad,
        }
    }

    /// Host CHW floats → a `[n, 3, size, size]` tensor on the device. To a GPU the batch
    /// goes through pinned (page-locked) memory, copied without blocking: the copy overlaps
    /// the kernels already queued, and the next batch is prepared meanwhile.
    pub(crate) fn input(&self, data: &[f32], n: usize) -> Tensor {
        let host = Tensor::from_slice(data).view([n as i64, 3, self.size, self.size]);
        let t = if self.device.is_cuda() {
            host.pin_memory(self.device)
                .to_device_(self.device, Kind::Float, true, false)
        } else {
            host
        };
        if self.channels_last {
            to_channels_last(&t)
        } else {
            t
        }
    }

    /// One SimSiam update on a batch of view pairs.
    pub fn step(&mut self, batch: &ViewBatch, lr: f64, predictor_lr: f64) -> StepStats {
        let x1 = self.input(&batch.x1, batch.len);
        let x2 = self.input(&batch.x2, batch.len);
        let v = amp::autocast(self.device, self.precision, || {
            self.model.forward_views(&x1, &x2, true)
        });
        let loss = simsiam_loss(&v.p1, &v.p2, &v.z1, &v.z2, self.stop_grad);
        self.backward_and_update(&loss, |opt| opt.step(lr, predictor_lr));
        StepStats {
            loss: loss.double_value(&[]),
            z_std: output_std(&v.z1),
            z_rank: effective_rank(&v.z1),
        }
    }

    /// Runs `f` (a forward pass) in the run's precision.
    pub(crate) fn autocast<T>(&self, f: impl FnOnce() -> T) -> T {
        amp::autocast(self.device, self.precision, f)
    }

    /// Backpropagates `loss` (scaled, under float16) and lets `update` step the optimiser,
    /// unless float16 gradients overflowed (the step is then skipped and the scale lowered).
    pub(crate) fn backward_and_update(&mut self, loss: &Tensor, update: impl FnOnce(&mut Sgd)) {
        self.opt.zero_grad();
        match &mut self.scaler {
            Some(scaler) => {
                (loss * scaler.scale()).backward();
                let finite = self.opt.unscale(scaler.scale());
                if scaler.update(finite) {
                    update(&mut self.opt);
                }
            }
            None => {
                loss.backward();
                update(&mut self.opt);
            }
        }
    }

    /// Backbone features (global-pooled, before the projector) of `images` after the
    /// evaluation transform, in eval mode: `images.len() × feature_dim` floats.
    pub fn features(
        &self,
        images: &[RgbImage],
        transform: &EvalTransform,
        batch: usize,
        what: &str,
    ) -> Result<Vec<f32>, TrainError> {
        let bar = ProgressBar::new(images.len() as u64).with_message(what.to_string());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let dim = self.model.backbone.feature_dim as usize;
        let mut out = Vec::with_capacity(images.len() * dim);
        let mut buf = Vec::new();
        for chunk in images.chunks(batch.max(1)) {
            buf.resize(chunk.len() * transform.tensor_len(), 0.0);
            for (img, dst) in chunk.iter().zip(buf.chunks_mut(transform.tensor_len())) {
                transform.apply(img, dst);
            }
            let x = self.input(&buf, chunk.len());
            let f = tch::no_grad(|| {
                amp::autocast(self.device, self.precision, || {
                    self.model.backbone.forward_t(&x, false)
                })
            });
            let f = f
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
                .contiguous()
                .view([-1]);
            out.extend(Vec::<f32>::try_from(&f)?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(out)
    }
}

/// Sets the x86 FTZ and DAZ flags (what `torch.set_flush_denormal(True)` does) on this
/// thread; threads created afterwards (libtorch's OpenMP pool, augmentation workers)
/// inherit them. Denormal floats, which appear in momentum buffers and small gradients as
/// training goes on, cost tens of cycles per operation on CPUs and slow SGD down; zero is
/// as good a value for them.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    // _mm_getcsr/_mm_setcsr: deprecated for ordinary code, but MXCSR is the point here
    // SAFETY: setting FTZ (bit 15) and DAZ (bit 6) only changes how subnormal results and
    // inputs are rounded; it cannot make any operation undefined.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// Keeps freed memory in the process instead of handing it back to the kernel.
///
/// Training allocates and frees the same few hundred megabytes of activations every
/// step. With glibc's defaults, blocks above the (adaptive) mmap threshold are mapped and
/// unmapped each time, and the heap top is trimmed after every large free, so each step
/// pays for page faults and zeroing: measured on 2 cores, 6.2 s of system time per
/// 15 steps, and 11% more images/s once this is set. The same effect as the environment
/// variables `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` and `MALLOC_TOP_PAD_`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is called at start-up
    // before any other thread exists. A rejected value leaves the default in place.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts (HEAP_MAX_SIZE / 2).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 512 << 20);
    }
}

/// NCHW logical shape with NHWC strides, which lets oneDNN/cuDNN pick channels-last kernels.
fn to_channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}
