//! Baselines without meta-learning: per-task ridge regression on the (standardised) inputs
//! and a constant, its regularisation chosen on the validation tasks. What a robot team
//! would fit to K samples of a new condition without msr.

use msr_runtime::format::Standardize;

use crate::tasks::Family;
use crate::train::{EvalResult, PerOutput};

/// The regularisation strengths tried on the validation tasks.
pub const RIDGE_LAMBDAS: [f64; 7] = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0];

/// Solves `a x = b` for a symmetric positive definite `a` (`n x n`, row-major) by
/// Cholesky, in place of `b`; `b` holds `cols` right-hand sides, `[n, cols]`.
pub(crate) fn cholesky_solve(a: &mut [f64], n: usize, b: &mut [f64], cols: usize) {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        let d = d.max(1e-300).sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for c in 0..cols {
        // L z = b, then L^T x = z.
        for i in 0..n {
            let mut s = b[i * cols + c];
            for k in 0..i {
                s -= a[i * n + k] * b[k * cols + c];
            }
            b[i * cols + c] = s / a[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = b[i * cols + c];
            for k in i + 1..n {
                s -= a[k * n + i] * b[k * cols + c];
            }
            b[i * cols + c] = s / a[i * n + i];
        }
    }
}

/// Fits `y = [x, 1] w` to `n` examples by ridge regression (the constant unregularised)
/// and predicts `xq`. `x` `[n, fi]`, `y` `[n, fo]`, row-major.
pub fn ridge_predict(
    x: &[f32],
    y: &[f32],
    xq: &[f32],
    fi: usize,
    fo: usize,
    lambda: f64,
) -> Vec<f64> {
    let d = fi + 1;
    fn feat(row: &[f32]) -> impl Iterator<Item = f64> + '_ {
        row.iter().map(|&v| v as f64).chain([1.0])
    }
    let mut a = vec![0.0; d * d];
    let mut b = vec![0.0; d * fo];
    for (xr, yr) in x.chunks_exact(fi).zip(y.chunks_exact(fo)) {
        let f: Vec<f64> = feat(xr).collect();
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] += f[i] * f[j];
            }
            for o in 0..fo {
                b[i * fo + o] += f[i] * yr[o] as f64;
            }
        }
    }
    for i in 0..fi {
        a[i * d + i] += lambda;
    }
    // A tiny ridge on the constant too, so that a singular system stays solvable.
    a[fi * d + fi] += 1e-9;
    cholesky_solve(&mut a, d, &mut b, fo);
    xq.chunks_exact(fi)
        .flat_map(|xr| {
            let f: Vec<f64> = feat(xr).collect();
            (0..fo)
                .map(|o| (0..d).map(|i| f[i] * b[i * fo + o]).sum::<f64>())
                .collect::<Vec<f64>>()
        })
        .collect()
}

/// Per-task ridge regression on the tasks `ids`: inputs standardised by `inputs` (the
/// training tasks' statistics), fitted to `support` examples, scored by the query MSE in
/// raw units.
pub fn ridge_eval(
    family: &Family,
    ids: &[u64],
    support: usize,
    query: usize,
    lambda: f64,
    inputs: Option<&Standardize>,
) -> EvalResult {
    let (fi, fo) = (family.input_len(), family.output_len());
    let mut losses = Vec::with_capacity(ids.len());
    let mut errors = PerOutput::default();
    for chunk in ids.chunks(100) {
        let mut b = family.batch(chunk, support, query);
        if let Some(s) = inputs {
            s.apply(&mut b.xs);
            s.apply(&mut b.xq);
        }
        for t in 0..b.tasks {
            let xs = &b.xs[t * support * fi..(t + 1) * support * fi];
            let ys = &b.ys[t * support * fo..(t + 1) * support * fo];
            let xq = &b.xq[t * query * fi..(t + 1) * query * fi];
            let yq = &b.yq[t * query * fo..(t + 1) * query * fo];
            let p = ridge_predict(xs, ys, xq, fi, fo, lambda);
            let mse = p
                .iter()
                .zip(yq)
                .map(|(p, y)| (p - *y as f64).powi(2))
                .sum::<f64>()
                / (query * fo) as f64;
            losses.push(mse);
            errors.add(&p, yq, fo);
        }
    }
    EvalResult::of(&losses, &[], 0).with_per_output(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Noise-free linear data is fitted exactly (tiny lambda), and a large lambda shrinks
    /// the slopes towards the mean.
    #[test]
    fn ridge_recovers_a_linear_map() {
        let (fi, fo, n) = (3, 2, 12);
        let w = [[1.5, -2.0, 0.5], [0.0, 1.0, 3.0]];
        let bias = [0.7, -1.2];
        let x: Vec<f32> = (0..n * fi)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let y: Vec<f32> = x
            .chunks(fi)
            .flat_map(|r| {
                (0..fo).map(move |o| (0..fi).map(|i| w[o][i] * r[i]).sum::<f32>() + bias[o])
            })
            .collect();
        let p = ridge_predict(&x, &y, &x, fi, fo, 1e-9);
        for (a, b) in p.iter().zip(&y) {
            assert!((a - *b as f64).abs() < 1e-4, "{a} vs {b}");
        }
        let mean0 = y.iter().step_by(2).map(|&v| v as f64).sum::<f64>() / n as f64;
        let p = ridge_predict(&x, &y, &x, fi, fo, 1e9);
        assert!((p[0] - mean0).abs() < 1e-3, "{} vs {mean0}", p[0]);
    }
}
