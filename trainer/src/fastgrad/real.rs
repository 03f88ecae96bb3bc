//! The scalar the fast meta-gradient computes in: f32 for training (its products through
//! the real-time engine's register-blocked kernel, `msr_core::realtime::gemm`), f64 for
//! the finite-difference tests (plain loops).

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use msr_core::realtime::gemm::{Mat, MatMut, gemm};

/// A strided read-only matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a, R> {
    /// The elements.
    pub data: &'a [R],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, R> View<'a, R> {
    /// The row-major `rows x cols` matrix at the start of `data`.
    pub fn rows(data: &'a [R], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (same data).
    pub fn t(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// What the fast meta-gradient needs of a scalar type.
pub trait Real:
    Copy
    + Debug
    + Default
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    /// From f64 (rounded).
    fn of(x: f64) -> Self;
    /// To f64 (exact).
    fn f64(self) -> f64;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// e^x.
    fn exp(self) -> Self;
    /// The error function.
    fn erf(self) -> Self;
    /// `C (+)= A B`, `C` row-major `[a.rows, b.cols]` at the start of `c`.
    fn gemm(a: View<Self>, b: View<Self>, c: &mut [Self], accumulate: bool);
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn tanh(self) -> Self {
        tanh_f32(self)
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn gemm(a: View<f32>, b: View<f32>, c: &mut [f32], accumulate: bool) {
        let (m, n) = (a.rows, b.cols);
        gemm(
            Mat::strided(a.data, a.rows, a.cols, a.rs, a.cs),
            Mat::strided(b.data, b.rows, b.cols, b.rs, b.cs),
            MatMut::strided(&mut c[..m * n], m, n, n),
            None,
            accumulate,
        );
    }
}

/// tanh as a rational function (Eigen's `ptanh_float` coefficients): no call into libm,
/// within a few ulp of it (tested), where libm's tanhf was a fifth of a tanh MLP's step.
#[inline]
pub fn tanh_f32(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    if x.abs() < 0.0004 {
        return x;
    }
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let p = x2 * -2.760_768_5e-16 + 2.000_188e-13;
    let p = p * x2 + -8.604_672e-11;
    let p = p * x2 + 5.122_297e-8;
    let p = p * x2 + 1.485_722_4e-5;
    let p = p * x2 + 6.372_619_3e-4;
    let p = (p * x2 + 4.893_524_6e-3) * x;
    let q = x2 * 1.198_258_4e-6 + 1.185_347_1e-4;
    let q = q * x2 + 2.268_434_6e-3;
    let q = q * x2 + 4.893_525e-3;
    p / q
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn gemm(a: View<f64>, b: View<f64>, c: &mut [f64], accumulate: bool) {
        assert_eq!(a.cols, b.rows, "gemm inner dimensions");
        let (m, n) = (a.rows, b.cols);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for t in 0..a.cols {
                    s += a.data[i * a.rs + t * a.cs] * b.data[t * b.rs + j * b.cs];
                }
                let o = &mut c[i * n + j];
                *o = if accumulate { *o + s } else { s };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The rational tanh is within 5e-7 (absolute, about 4 ulp near 1) of f64's over its whole range.
    #[test]
    fn fast_tanh_matches_the_true_one() {
        let mut worst = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-5;
            let err = (super::tanh_f32(x) as f64 - (x as f64).tanh()).abs();
            worst = worst.max(err);
        }
        for x in [20.0f32, -20.0, 1e-6, -1e-6, 0.0] {
            worst = worst.max((super::tanh_f32(x) as f64 - (x as f64).tanh()).abs());
        }
        assert!(worst < 5e-7, "worst error {worst}");
    }
}
