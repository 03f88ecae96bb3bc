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
///
/// With AVX2 and FMA, eight lanes at a time with fused multiply-adds (the compiler keeps a
/// separate multiply and add for `p * z + c`, a chain twice as long), two vectors in flight,
/// the tail padded to a vector: every value goes through the same arithmetic wherever it
/// sits in the slice, so a batch and a single example give the same bits.
pub(crate) fn tanh_in_place(xs: &mut [f32]) {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are present (checked just above).
        unsafe { avx2::tanh_in_place(xs) };
        return;
    }
    tanh_portable(xs);
}

#[multiversion(targets("x86_64+avx2+fma"))]
fn tanh_portable(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = tanh_branch_free(*x);
    }
}

/// Taylor coefficients of tanh below |x| = 0.5: x - x^3/3 + 2x^5/15 - 17x^7/315 + ...
const TANH_TAYLOR: [f32; 9] = [
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
/// ln 2 split so that n * LN2_HI is exact for the n used here (|n| < 32).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5 * 2^23: adding it leaves round(x) in the low mantissa bits (|x| < 2^22).
const ROUND_SHIFT: f32 = 12_582_912.0;
/// e^r's Taylor coefficients, highest first: 1/7!, 1/6!, ..., 1/1!, 1/0!.
const EXP_TAYLOR: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

#[cfg(all(target_arch = "x86_64", feature = "std"))]
mod avx2 {
    use core::arch::x86_64::*;

    use super::{EXP_TAYLOR, LN2_HI, LN2_LO, ROUND_SHIFT, TANH_TAYLOR};

    /// [`super::tanh_in_place`] on AVX2 + FMA.
    ///
    /// # Safety
    /// AVX2 and FMA must be present.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tanh_in_place(xs: &mut [f32]) {
        let (pairs, rest) = xs.as_chunks_mut::<16>();
        for p in pairs {
            // SAFETY: 16 floats: two unaligned vectors inside the chunk.
            unsafe {
                let (a, b) = (p.as_mut_ptr(), p.as_mut_ptr().add(8));
                let (ta, tb) = (tanh8(_mm256_loadu_ps(a)), tanh8(_mm256_loadu_ps(b)));
                _mm256_storeu_ps(a, ta);
                _mm256_storeu_ps(b, tb);
            }
        }
        for c in rest.chunks_mut(8) {
            let mut v = [0.0f32; 8];
            v[..c.len()].copy_from_slice(c);
            // SAFETY: 8 floats of a local array.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), tanh8(_mm256_loadu_ps(v.as_ptr()))) };
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    /// tanh of eight lanes: the formula of [`super::tanh_branch_free`] with fused
    /// multiply-adds.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn tanh8(x: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let ax = _mm256_andnot_ps(sign, x);
        let z = _mm256_mul_ps(ax, ax);
        let mut p = _mm256_set1_ps(TANH_TAYLOR[8]);
        for c in TANH_TAYLOR[..8].iter().rev() {
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(*c));
        }
        let small = _mm256_fmadd_ps(ax, _mm256_mul_ps(p, z), ax);
        // min(10, NaN) is NaN: NaN stays NaN (min_ps returns its second operand then).
        let y = _mm256_mul_ps(_mm256_set1_ps(2.0), _mm256_min_ps(_mm256_set1_ps(10.0), ax));
        let shift = _mm256_set1_ps(ROUND_SHIFT);
        let shifted = _mm256_fmadd_ps(y, _mm256_set1_ps(core::f32::consts::LOG2_E), shift);
        let nf = _mm256_sub_ps(shifted, shift);
        let n = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(shift));
        let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_HI), y);
        let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_LO), r);
        let mut er = _mm256_set1_ps(EXP_TAYLOR[0]);
        for c in &EXP_TAYLOR[1..] {
            er = _mm256_fmadd_ps(er, r, _mm256_set1_ps(*c));
        }
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            n,
            _mm256_set1_epi32(127),
        )));
        let one = _mm256_set1_ps(1.0);
        let e = _mm256_mul_ps(er, two_n);
        let large = _mm256_sub_ps(
            one,
            _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
        );
        // ax < 0.5 is false for NaN: the large branch, whose NaN propagates.
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(ax, _mm256_set1_ps(0.5));
        let t = _mm256_blendv_ps(large, small, is_small);
        _mm256_or_ps(t, _mm256_and_ps(sign, x))
    }
}

/// tanh without branches (both halves computed, one selected) so that a loop of it
/// vectorises: below |x| = 0.5 its odd Taylor series (each term under a tenth of the
/// last), above it `1 - 2 / (e^{2|x|} + 1)` with `e^y = 2^n e^r`, `|r| <= ln 2 / 2`.
#[inline(always)]
fn tanh_branch_free(x: f32) -> f32 {
    let ax = x.abs();
    let z = ax * ax;
    let mut p = TANH_TAYLOR[8];
    for c in TANH_TAYLOR[..8].iter().rev() {
        p = p * z + c;
    }
    let small = ax + ax * (p * z);
    // tanh(x) rounds to 1 in f32 from x = 9.1; the clamp keeps e^y finite. (A
    // comparison, not `min`: NaN must stay NaN.)
    let y = 2.0 * if ax > 10.0 { 10.0 } else { ax };
    // n = round(y / ln 2) by the 1.5 * 2^23 trick: the sum's low mantissa bits hold n
    // (a float-to-int `as` would not vectorise: it saturates).
    let shifted = y * core::f32::consts::LOG2_E + ROUND_SHIFT;
    let nf = shifted - ROUND_SHIFT;
    let n = shifted.to_bits() as i32 - ROUND_SHIFT.to_bits() as i32;
    let r = (y - nf * LN2_HI) - nf * LN2_LO;
    // e^r by its Taylor series to r^7 (|r| <= 0.35: the next term is under 1e-8).
    let mut er = EXP_TAYLOR[0];
    for c in &EXP_TAYLOR[1..] {
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
        // Both paths: the vector one this machine dispatches to and the portable one.
        for (path, f) in [
            ("dispatched", tanh_in_place as fn(&mut [f32])),
            ("portable", tanh_portable),
        ] {
            let mut got = xs.clone();
            f(&mut got);
            let mut worst = (0, 0.0f32);
            for (x, g) in xs.iter().zip(&got) {
                let want = (*x as f64).tanh() as f32;
                let u = ulps(*g, want);
                if u > worst.0 {
                    worst = (u, *x);
                }
            }
            assert!(worst.0 <= 4, "{path}: {} ulp at x = {:e}", worst.0, worst.1);
            let mut odd = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0];
            f(&mut odd);
            assert!(odd[0].is_nan() && odd[1].is_nan(), "{path}");
            assert_eq!(&odd[2..4], &[1.0, -1.0], "{path}");
            assert!(odd[4] == 0.0 && odd[4].is_sign_negative(), "{path}");
        }
    }

    #[test]
    fn tanh_of_a_value_does_not_depend_on_where_it_sits() {
        // A batch of examples and one example alone must give the same bits: values at
        // every offset of every length up to 40, against each value on its own.
        let xs: Vec<f32> = (0..40).map(|i| (i as f32 - 17.5) * 0.173).collect();
        let alone: Vec<f32> = xs
            .iter()
            .map(|x| {
                let mut v = [*x];
                tanh_in_place(&mut v);
                v[0]
            })
            .collect();
        for start in 0..xs.len() {
            for end in start..=xs.len() {
                let mut got = xs[start..end].to_vec();
                tanh_in_place(&mut got);
                for (g, a) in got.iter().zip(&alone[start..end]) {
                    assert_eq!(g.to_bits(), a.to_bits(), "slice {start}..{end}");
                }
            }
        }
    }
}
