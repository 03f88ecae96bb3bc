//! The vectorised inner loops. Plain Rust written so the compiler can vectorise it; with
//! the `std` feature each kernel is compiled twice (baseline x86-64 and AVX2+FMA) and the
//! best is picked at run time; without it, for the target's own features.

use multiversion::multiversion;

/// Whether every value is finite. Branch-free so that it vectorises: `x * 0` is 0 for a
/// finite x and NaN for NaN or infinity, and NaN survives the sum.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(crate) fn all_finite(xs: &[f32]) -> bool {
    let mut acc = [0.0f32; 8];
    let (chunks, rest) = xs.as_chunks::<8>();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l] * 0.0;
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for x in rest {
        s += x * 0.0;
    }
    s == 0.0
}
// The kernels below are plain Rust written so the compiler can vectorise them; each is
// compiled twice (baseline x86-64 and AVX2+FMA) and the best is picked at run time.
// (No `mul_add`: without FMA at compile time it becomes a slow libm call.)

/// Dot product with 32 independent accumulators (four vectors of eight: one chain of
/// fused multiply-adds would wait on its own latency every step).
#[multiversion(targets("x86_64+avx2+fma"))]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    let (ca, ra) = a.as_chunks::<32>();
    let (cb, rb) = b.as_chunks::<32>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..32 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Dot product of f32 vectors with the products and sums in f64, 16 independent
/// accumulators (four AVX registers of f64).
#[multiversion(targets("x86_64+avx2+fma"))]
pub(crate) fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let mut s = acc.iter().sum::<f64>();
    for (x, y) in ra.iter().zip(rb) {
        s += *x as f64 * *y as f64;
    }
    s
}

/// Dot product of an f32 vector with an f64 one, in f64, 16 independent accumulators.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(crate) fn dot_mixed(a: &[f32], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] as f64 * y[l];
        }
    }
    let mut s = acc.iter().sum::<f64>();
    for (x, y) in ra.iter().zip(rb) {
        s += *x as f64 * y;
    }
    s
}

/// `y += alpha * x` in f64 for an f32 `x`.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(crate) fn axpy_f64(alpha: f64, x: &[f32], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * *xi as f64;
    }
}

/// `y += alpha * x`.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `x = tanh(x)` for every value, vectorised (libm's scalar `tanhf` took a third of an
/// adaptation of the tanh robot models). Within 4 ulp of the exact value (checked against
/// f64 over every f32 magnitude in the test below); NaN stays NaN, +-inf gives +-1.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(crate) fn tanh_in_place(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = tanh_branch_free(*x);
    }
}

/// tanh without branches (both halves computed, one selected) so that a loop of it
/// vectorises: below |x| = 0.5 its odd Taylor series (each term under a tenth of the
/// last), above it `1 - 2 / (e^{2|x|} + 1)` with `e^y = 2^n e^r`, `|r| <= ln 2 / 2`.
#[inline(always)]
fn tanh_branch_free(x: f32) -> f32 {
    // Taylor coefficients of tanh: x - x^3/3 + 2x^5/15 - 17x^7/315 + ...
    const C: [f32; 9] = [
        -1.0 / 3.0,
        2.0 / 15.0,
        -17.0 / 315.0,
        62.0 / 2835.0,
        -1382.0 / 155_925.0,
        21844.0 / 6_081_075.0,
        -929_569.0 / 638_512_875.0,
        6_404_582.0 / 10_854_718_875.0,
        -443_861_162.0 / 1_856_156_927_625.0,
    ];
    // ln 2 split so that n * LN2_HI is exact for the n used here (|n| < 32).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let ax = x.abs();
    let z = ax * ax;
    let mut p = C[8];
    for c in C[..8].iter().rev() {
        p = p * z + c;
    }
    let small = ax + ax * (p * z);
    // tanh(x) rounds to 1 in f32 from x = 9.1; the clamp keeps e^y finite. (A
    // comparison, not `min`: NaN must stay NaN.)
    let y = 2.0 * if ax > 10.0 { 10.0 } else { ax };
    // n = round(y / ln 2) by the 1.5 * 2^23 trick: the sum's low mantissa bits hold n
    // (a float-to-int `as` would not vectorise: it saturates).
    const SHIFT: f32 = 12_582_912.0;
    let shifted = y * core::f32::consts::LOG2_E + SHIFT;
    let nf = shifted - SHIFT;
    let n = shifted.to_bits() as i32 - SHIFT.to_bits() as i32;
    let r = (y - nf * LN2_HI) - nf * LN2_LO;
    // e^r by its Taylor series to r^7 (|r| <= 0.35: the next term is under 1e-8).
    let mut er = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        er = er * r + c;
    }
    let e = er * f32::from_bits(((n + 127) << 23) as u32);
    let large = 1.0 - 2.0 / (e + 1.0);
    let t = if ax < 0.5 { small } else { large };
    t.copysign(x)
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    /// The distance in representable f32 values between `a` and `b` (same sign).
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn tanh_is_within_4_ulp_everywhere() {
        // Every 97th f32 from the smallest subnormal to 12, both signs, plus the edges of
        // the two formulas and of the clamp.
        let mut xs: Vec<f32> = (1u32..12.0f32.to_bits())
            .step_by(97)
            .map(f32::from_bits)
            .collect();
        for e in [0.5f32, 10.0] {
            for d in -64i32..64 {
                xs.push(f32::from_bits((e.to_bits() as i32 + d) as u32));
            }
        }
        xs.extend([0.0, 20.0, 1e30, f32::MAX, f32::INFINITY]);
        let neg: Vec<f32> = xs.iter().map(|x| -x).collect();
        xs.extend(neg);
        let mut got = xs.clone();
        tanh_in_place(&mut got);
        let mut worst = (0, 0.0f32);
        for (x, g) in xs.iter().zip(&got) {
            let want = (*x as f64).tanh() as f32;
            let u = ulps(*g, want);
            if u > worst.0 {
                worst = (u, *x);
            }
        }
        assert!(worst.0 <= 4, "{} ulp at x = {:e}", worst.0, worst.1);
        let mut odd = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0];
        tanh_in_place(&mut odd);
        assert!(odd[0].is_nan() && odd[1].is_nan());
        assert_eq!(&odd[2..4], &[1.0, -1.0]);
        assert!(odd[4] == 0.0 && odd[4].is_sign_negative());
    }
}
