//! The two transcendental functions the engine needs: the platform's with `std`, libm's
//! without.

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
