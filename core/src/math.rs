//! The transcendental functions the engine needs: the platform's with `std`, libm's
//! without (and libm's erf always: std has none).

#[cfg(feature = "std")]
pub(crate) fn exp(x: f32) -> f32 {
    x.exp()
}
#[cfg(feature = "std")]
pub(crate) fn ln(x: f32) -> f32 {
    x.ln()
}
#[cfg(not(feature = "std"))]
pub(crate) fn exp(x: f32) -> f32 {
    libm::expf(x)
}
#[cfg(not(feature = "std"))]
pub(crate) fn ln(x: f32) -> f32 {
    libm::logf(x)
}
pub(crate) fn erf(x: f32) -> f32 {
    libm::erff(x)
}

/// 1 / sqrt(2), for GELU's Phi(x) = (1 + erf(x / sqrt 2)) / 2.
const FRAC_1_SQRT_2: f32 = core::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi), the standard normal density's constant.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// GELU: x Phi(x).
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// d GELU / dx = Phi(x) + x phi(x).
pub(crate) fn gelu_grad(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x)
}
#[cfg(feature = "std")]
pub(crate) fn sqrt64(x: f64) -> f64 {
    x.sqrt()
}
#[cfg(not(feature = "std"))]
pub(crate) fn sqrt64(x: f64) -> f64 {
    libm::sqrt(x)
}
