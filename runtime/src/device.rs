//! Choosing where tensors live. The only place in msr that knows which backends were built.

use burn::tensor::Device;

/// The GPU backend cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// This build has no GPU backend.
    #[error("this build has no GPU backend: rebuild with the cargo feature `wgpu`")]
    NotBuilt,
    /// No GPU adapter was found.
    #[error(
        "no GPU adapter found (on Linux without a GPU, install mesa-vulkan-drivers for lavapipe)"
    )]
    NoAdapter,
    /// The requested adapter index does not exist.
    #[error("GPU adapter {index} requested, but only {found} found")]
    NoSuchAdapter {
        /// Requested index.
        index: usize,
        /// Adapters present.
        found: usize,
    },
}

/// The CPU device (burn-ndarray).
///
/// burn 0.22 marks ndarray deprecated in favour of burn-flex; msr pins ndarray, the backend
/// whose speed and results docs/results.md reports, and names it in this one place only.
#[allow(deprecated)]
pub fn cpu() -> Device {
    Device::ndarray()
}

/// The GPU adapters burn-wgpu sees (empty without the `wgpu` feature).
pub fn gpus() -> Vec<Device> {
    #[cfg(feature = "wgpu")]
    {
        Device::enumerate(burn::tensor::DeviceType::Wgpu).into_vec()
    }
    #[cfg(not(feature = "wgpu"))]
    {
        Vec::new()
    }
}

/// GPU adapter `index` (0 = the first), or why there is none. Never panics.
pub fn gpu(index: usize) -> Result<Device, BackendError> {
    if !cfg!(feature = "wgpu") {
        return Err(BackendError::NotBuilt);
    }
    // Adapter enumeration talks to system drivers; a broken driver must not take the
    // caller down with it.
    let found = std::panic::catch_unwind(gpus).map_err(|_| BackendError::NoAdapter)?;
    if found.is_empty() {
        return Err(BackendError::NoAdapter);
    }
    let n = found.len();
    found
        .into_iter()
        .nth(index)
        .ok_or(BackendError::NoSuchAdapter { index, found: n })
}

/// A device by name: "cpu", "gpu" (the first adapter) or "gpu:N".
pub fn by_name(name: &str) -> Result<Device, String> {
    match name {
        "cpu" => Ok(cpu()),
        "gpu" => gpu(0).map_err(|e| e.to_string()),
        other => match other.strip_prefix("gpu:").map(str::parse::<usize>) {
            Some(Ok(i)) => gpu(i).map_err(|e| e.to_string()),
            _ => Err(format!("unknown device '{other}' (cpu, gpu, gpu:N)")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_or_explain() {
        assert!(by_name("cpu").is_ok());
        assert!(by_name("tpu").unwrap_err().contains("unknown device"));
        assert!(by_name("gpu:x").is_err());
        if !cfg!(feature = "wgpu") {
            assert_eq!(gpu(0).unwrap_err(), BackendError::NotBuilt);
            assert!(by_name("gpu").unwrap_err().contains("feature `wgpu`"));
        }
        if cfg!(feature = "wgpu") {
            let n = gpus().len();
            assert_eq!(
                gpu(n).unwrap_err(),
                if n == 0 {
                    BackendError::NoAdapter
                } else {
                    BackendError::NoSuchAdapter { index: n, found: n }
                }
            );
        }
    }
}
