//! Materialising `W = reshape(U v)` (dense U, or a Kronecker product of three factors)
//! and its backward, `dL/dv` from `dL/dW`.

use super::Weights;
use super::gemm::{Mat, MatMut, gemm};
use super::kernels::axpy;

pub(crate) fn materialize(
    weights: &Weights,
    v: &[f32],
    w: &mut [f32],
    s0: &mut [f32],
    s1: &mut [f32],
) {
    match weights {
        Weights::Plain => w.copy_from_slice(v),
        // W = v^T U^T: one pass over U, W's tiles held in registers.
        Weights::Dense { ut, rows, .. } => gemm(
            Mat::rows(v, 1, v.len()),
            Mat::rows(ut, v.len(), *rows),
            MatMut::rows(w, 1, *rows),
            None,
            false,
        ),
        Weights::Kron { a, b, c, dims } => {
            let [o, i, s, ka, kb, kc] = *dims;
            kron3(v, [ka, kb, kc], (c, s), (b, i), (a, o), false, w, s0, s1);
        }
    }
}

pub(crate) fn weights_backward(
    weights: &Weights,
    dw: &[f32],
    dv: &mut [f32],
    s0: &mut [f32],
    s1: &mut [f32],
) {
    match weights {
        Weights::Plain => dv.copy_from_slice(dw),
        // dv = U^T vec(dW): one pass over U.
        Weights::Dense { ut, rows, .. } => {
            let k = dv.len();
            gemm(
                Mat::rows(dw, 1, *rows),
                Mat::rows(ut, k, *rows).t(),
                MatMut::rows(dv, 1, k),
                None,
                false,
            )
        }
        Weights::Kron { a, b, c, dims } => {
            let [o, i, s, ka, kb, kc] = *dims;
            kron3(dw, [o, i, s], (c, kc), (b, kb), (a, ka), true, dv, s0, s1);
        }
    }
}

/// Applies the three factors to `x` `[n1, n2, n3]`, last mode first. Each factor is
/// `(matrix, rows_out)`; with `transpose`, the matrices (row-major `[big, small]`) are used
/// transposed. Writes `[m1, m2, m3]` to `out`.
#[allow(clippy::too_many_arguments)]
fn kron3(
    x: &[f32],
    [n1, n2, n3]: [usize; 3],
    (f3, m3): (&[f32], usize),
    (f2, m2): (&[f32], usize),
    (f1, m1): (&[f32], usize),
    transpose: bool,
    out: &mut [f32],
    s0: &mut [f32],
    s1: &mut [f32],
) {
    // Element (r, c) of a factor used as an m x n map.
    let at = |f: &[f32], r: usize, c: usize, m: usize, n: usize| {
        if transpose {
            f[c * m + r]
        } else {
            f[r * n + c]
        }
    };
    // Mode 3: s0[i1, i2, r3] = sum_j f3[r3, j] x[i1, i2, j]
    for p in 0..n1 * n2 {
        for r in 0..m3 {
            let mut acc = 0.0;
            for j in 0..n3 {
                acc += at(f3, r, j, m3, n3) * x[p * n3 + j];
            }
            s0[p * m3 + r] = acc;
        }
    }
    // Mode 2: s1[i1, r2, r3] = sum_j f2[r2, j] s0[i1, j, r3], accumulated over j in
    // order along contiguous r3 rows (the strided scalar loop was the adaptation hotspot).
    for i1 in 0..n1 {
        let src = &s0[i1 * n2 * m3..(i1 + 1) * n2 * m3];
        let dst = &mut s1[i1 * m2 * m3..(i1 + 1) * m2 * m3];
        for (r2, row) in dst.chunks_exact_mut(m3).enumerate() {
            row.fill(0.0);
            for (j, s) in src.chunks_exact(m3).enumerate() {
                let f = at(f2, r2, j, m2, n2);
                for (o, v) in row.iter_mut().zip(s) {
                    *o += f * v;
                }
            }
        }
    }
    // Mode 1: out[r1, r2, r3] = sum_j f1[r1, j] s1[j, r2, r3]
    let plane = m2 * m3;
    for r1 in 0..m1 {
        let o = &mut out[r1 * plane..(r1 + 1) * plane];
        o.fill(0.0);
        for j in 0..n1 {
            axpy(at(f1, r1, j, m1, n1), &s1[j * plane..(j + 1) * plane], o);
        }
    }
}
