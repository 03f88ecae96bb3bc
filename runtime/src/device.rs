//! Choosing where tensors live.

use burn::tensor::Device;

/// The CPU device (burn-ndarray).
///
/// burn 0.22 marks ndarray deprecated in favour of burn-flex; msr pins ndarray, the backend
/// whose numbers DESIGN.md measured, and names it in this one place only.
#[allow(deprecated)]
pub fn cpu() -> Device {
    Device::ndarray()
}
