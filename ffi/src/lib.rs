//! C ABI over the msr runtime.
