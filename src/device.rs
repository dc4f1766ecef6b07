//! Chooses where training runs: the GPU when asked for and present, else the CPU with a clear
//! log line saying why.

use std::str::FromStr;

use candle_core::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    Cpu,
    Cuda,
}

impl DeviceChoice {
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            _ => Err(format!("device `{s}`: use cpu or cuda")),
        }
    }
}

/// The device to train on. Asking for CUDA in a build without the `cuda` feature, or on a
/// machine without a usable GPU, falls back to the CPU with a warning instead of failing.
pub fn select(choice: DeviceChoice) -> Device {
    match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda if !candle_core::utils::cuda_is_available() => {
            tracing::warn!("--device cuda: this binary was built without the `cuda` feature; training on the CPU");
            Device::Cpu
        }
        DeviceChoice::Cuda => match Device::new_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("--device cuda: no usable GPU ({e}); training on the CPU");
                Device::Cpu
            }
        },
    }
}

pub fn describe(device: &Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

/// Sets the CPU worker threads for matrix kernels (candle reads `RAYON_NUM_THREADS`). Call it
/// once, at start-up, before other threads exist: it writes the process environment.
pub fn set_cpu_threads(threads: usize) {
    let threads = threads.max(1);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // Ignored if a global pool already exists (tests): the kernels still read the variable.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
}

/// While it lives, candle's matrix products run on the calling thread alone; on drop the
/// threads set by [`set_cpu_threads`] are back. For work that is parallel across calls (the
/// sentence encoder's batches side by side), where a product split across the pool only waits.
///
/// candle reads the thread count from `RAYON_NUM_THREADS` at every product, so this rewrites
/// that variable. [`set_cpu_threads`] set it at start-up, so the rewrite replaces an existing
/// entry, which glibc does in place without freeing the old string (a concurrent `getenv` in C
/// reads the old or the new value); Rust readers are serialised by std's environment lock.
pub struct SerialKernels {
    before: Option<String>,
}

impl SerialKernels {
    pub fn enter() -> Self {
        let before = std::env::var("RAYON_NUM_THREADS").ok();
        std::env::set_var("RAYON_NUM_THREADS", "1");
        Self { before }
    }
}

impl Drop for SerialKernels {
    fn drop(&mut self) {
        match &self.before {
            Some(v) => std::env::set_var("RAYON_NUM_THREADS", v),
            None => std::env::remove_var("RAYON_NUM_THREADS"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_without_the_feature_falls_back_to_cpu() {
        if !candle_core::utils::cuda_is_available() {
            assert!(select(DeviceChoice::Cuda).is_cpu());
        }
        assert!(select(DeviceChoice::Cpu).is_cpu());
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }
}
