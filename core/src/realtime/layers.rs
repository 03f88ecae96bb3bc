//! Forward and backward of one layer over a chunk of examples: dense layers, and
//! convolutions (shared or locally connected filters) through the gather index.

use super::gemm::{Mat, MatMut, gemm};
use super::kernels::{axpy, dot};
use super::{Kind, Layer};

fn gather_patch(x: &[f32], gather: &[u32], c_in: usize, s: usize, taps: usize, patch: &mut [f32]) {
    for c in 0..c_in {
        let xc = &x[c * s..(c + 1) * s];
        for (q, &g) in gather.iter().enumerate() {
            patch[c * taps + q] = if (g as usize) < s {
                xc[g as usize]
            } else {
                0.0
            };
        }
    }
}

pub(crate) fn forward(
    layer: &Layer,
    w: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    out: &mut [f32],
    m: usize,
    patch: &mut [f32],
) {
    match &layer.kind {
        Kind::Reshape => out.copy_from_slice(x),
        Kind::Dense { inputs, outputs } => gemm(
            Mat::rows(x, m, *inputs),
            Mat::rows(w, *outputs, *inputs).t(),
            MatMut::rows(out, m, *outputs),
            bias,
            false,
        ),
        Kind::Patches {
            gather,
            in_channels: c,
            out_channels: o_n,
            in_positions: s,
            positions: p_n,
            taps: k,
            local,
        } => {
            let (c, s, o_n, p_n, k) = (*c, *s, *o_n, *p_n, *k);
            let j = c * k;
            let patch = &mut patch[..j];
            for n in 0..m {
                let xn = &x[n * c * s..(n + 1) * c * s];
                let on = &mut out[n * o_n * p_n..(n + 1) * o_n * p_n];
                for p in 0..p_n {
                    gather_patch(xn, &gather[p * k..(p + 1) * k], c, s, k, patch);
                    for o in 0..o_n {
                        let wo = if *local {
                            &w[(p * o_n + o) * j..(p * o_n + o + 1) * j]
                        } else {
                            &w[o * j..(o + 1) * j]
                        };
                        let b = match bias {
                            Some(b) if *local => b[o * p_n + p],
                            Some(b) => b[o],
                            None => 0.0,
                        };
                        on[o * p_n + p] = dot(wo, patch) + b;
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    layer: &Layer,
    w: &[f32],
    x: &[f32],
    dz: &[f32],
    dw: &mut [f32],
    mut dbias: Option<&mut [f32]>,
    mut dx: Option<&mut [f32]>,
    m: usize,
    patch: &mut [f32],
    dpatch: &mut [f32],
) {
    match &layer.kind {
        Kind::Reshape => {
            if let Some(dx) = dx {
                dx.copy_from_slice(dz);
            }
        }
        Kind::Dense { inputs, outputs } => {
            let (inputs, outputs) = (*inputs, *outputs);
            let dz = Mat::rows(dz, m, outputs);
            // dW += dz^T x, dx = dz W.
            gemm(
                dz.t(),
                Mat::rows(x, m, inputs),
                MatMut::rows(dw, outputs, inputs),
                None,
                true,
            );
            if let Some(db) = dbias.as_deref_mut() {
                for n in 0..m {
                    axpy(1.0, dz.row(n), db);
                }
            }
            if let Some(dx) = dx.as_deref_mut() {
                gemm(
                    dz,
                    Mat::rows(w, outputs, inputs),
                    MatMut::rows(dx, m, inputs),
                    None,
                    false,
                );
            }
        }
        Kind::Patches {
            gather,
            in_channels: c,
            out_channels: o_n,
            in_positions: s,
            positions: p_n,
            taps: k,
            local,
        } => {
            let (c, s, o_n, p_n, k) = (*c, *s, *o_n, *p_n, *k);
            let j = c * k;
            let patch = &mut patch[..j];
            let dpatch = &mut dpatch[..j];
            if let Some(dx) = dx.as_deref_mut() {
                dx.fill(0.0);
            }
            for n in 0..m {
                let xn = &x[n * c * s..(n + 1) * c * s];
                let dzn = &dz[n * o_n * p_n..(n + 1) * o_n * p_n];
                for p in 0..p_n {
                    let g = &gather[p * k..(p + 1) * k];
                    gather_patch(xn, g, c, s, k, patch);
                    dpatch.fill(0.0);
                    for o in 0..o_n {
                        let d = dzn[o * p_n + p];
                        let range = if *local {
                            (p * o_n + o) * j..(p * o_n + o + 1) * j
                        } else {
                            o * j..(o + 1) * j
                        };
                        axpy(d, patch, &mut dw[range.clone()]);
                        if dx.is_some() {
                            axpy(d, &w[range], dpatch);
                        }
                        if let Some(db) = dbias.as_deref_mut() {
                            if *local {
                                db[o * p_n + p] += d;
                            } else {
                                db[o] += d;
                            }
                        }
                    }
                    if let Some(dx) = dx.as_deref_mut() {
                        let dxn = &mut dx[n * c * s..(n + 1) * c * s];
                        for ch in 0..c {
                            for (q, &gi) in g.iter().enumerate() {
                                if (gi as usize) < s {
                                    dxn[ch * s + gi as usize] += dpatch[ch * k + q];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
