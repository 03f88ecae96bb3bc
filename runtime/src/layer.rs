//! Forward and hand-written backward of every layer kind, as burn tensor ops.
//!
//! Every function here is ordinary tensor code, so an autodiff device can differentiate
//! through the backward as well: burn cannot take a gradient of a gradient, so the inner
//! gradient is written by hand and autodiff through it gives the exact second-order
//! meta-gradient (checked against finite differences in f64).
//!
//! Conventions (T tasks, N examples per task):
//! - activations are `[T, N, C, S]`: channels and the flattened spatial positions
//!   (S = 1 for a flat feature vector);
//! - adapted parameters are `[T, len]`, one row per task;
//! - a layer's weight is first *materialised* per task ([`weights`]), then *applied*
//!   ([`apply`]); the backward runs the two in reverse ([`apply_backward`],
//!   [`weights_backward`]).

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::spec::{ConvGeom, ConvSharing, FeatureShape, Op};

/// Precomputed, device-resident data a layer needs beyond its parameters.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per layer, built once
pub(crate) enum Plan {
    /// No parameters (flatten).
    Reshape,
    /// Dense layer: W `[out, in]`.
    Dense { inputs: usize, outputs: usize },
    /// Convolution (or locally connected) as gather + batched matmul.
    ///
    /// `gather` has `positions * taps` entries: for output position p and tap q, the flat
    /// input position to read, or `in_positions` for the zero slot (padding).
    Patches {
        gather: Tensor<1, Int>,
        in_channels: usize,
        out_channels: usize,
        in_positions: usize,
        positions: usize,
        taps: usize,
        /// A different filter at every output position (locally connected).
        local: bool,
    },
}

impl Plan {
    /// Builds the plan of `op` for inputs of shape `input` (already checked by the spec).
    pub(crate) fn new(
        op: &Op,
        input: &FeatureShape,
        output: &FeatureShape,
        device: &Device,
    ) -> Self {
        match op {
            Op::ShareLinear {
                inputs, outputs, ..
            }
            | Op::Linear {
                inputs, outputs, ..
            } => Plan::Dense {
                inputs: *inputs,
                outputs: *outputs,
            },
            Op::ShareConv { geom, .. } | Op::Conv { geom, .. } => {
                patches(geom, input, output, false, device)
            }
            Op::LocallyConnected1d { geom, .. } => patches(geom, input, output, true, device),
            Op::Flatten => Plan::Reshape,
        }
    }
}

fn patches(
    geom: &ConvGeom,
    input: &FeatureShape,
    output: &FeatureShape,
    local: bool,
    device: &Device,
) -> Plan {
    let in_sp = input.spatial();
    let out_sp = output.spatial();
    let in_positions = input.spatial_numel();
    let positions = output.spatial_numel();
    let taps = geom.kernel_area();
    let index: Vec<i64> = geom
        .gather_index(in_sp, out_sp)
        .expect("a gather index within the limits fits in memory")
        .into_iter()
        .map(i64::from)
        .collect();
    let gather = Tensor::<1, Int>::from_data(TensorData::new(index, [positions * taps]), device);
    Plan::Patches {
        gather,
        in_channels: geom.in_channels,
        out_channels: geom.out_channels,
        in_positions,
        positions,
        taps,
        local,
    }
}

/// `out[t, p, q, r] = sum_ijk m1[p, i] m2[q, j] m3[r, k] x[t, i, j, k]`, i.e.
/// `vec(out_t) = (m1 ⊗ m2 ⊗ m3) vec(x_t)` for each task t.
fn kron3(x: Tensor<4>, m1: &Tensor<2>, m2: &Tensor<2>, m3: &Tensor<2>) -> Tensor<4> {
    let [t, n1, n2, n3] = x.dims();
    let [r1, _] = m1.dims();
    let [r2, _] = m2.dims();
    let [r3, _] = m3.dims();
    // Contract the last axis, then rotate it to the front; three times.
    let y = x
        .reshape([t * n1 * n2, n3])
        .matmul(m3.clone().transpose())
        .reshape([t, n1, n2, r3])
        .swap_dims(2, 3); // [t, n1, r3, n2]
    let y = y
        .reshape([t * n1 * r3, n2])
        .matmul(m2.clone().transpose())
        .reshape([t, n1, r3, r2])
        .permute([0, 2, 3, 1]); // [t, r3, r2, n1]
    y.reshape([t * r3 * r2, n1])
        .matmul(m1.clone().transpose())
        .reshape([t, r3, r2, r1])
        .permute([0, 3, 2, 1]) // [t, r1, r2, r3]
}

/// The per-task weight `[T, len]` of `op` from its frozen matrices and first adapted vector.
pub(crate) fn weights(op: &Op, shared: &[Tensor<2>], main: Tensor<2>) -> Tensor<2> {
    match op {
        Op::ShareLinear { .. }
        | Op::ShareConv {
            sharing: ConvSharing::Dense { .. },
            ..
        } => main.matmul(shared[0].clone().transpose()),
        Op::ShareConv {
            geom,
            sharing: ConvSharing::Kronecker { ka, kb, kc },
            ..
        } => {
            let t = main.dims()[0];
            kron3(
                main.reshape([t, *ka, *kb, *kc]),
                &shared[0],
                &shared[1],
                &shared[2],
            )
            .reshape([t, geom.filter_len()])
        }
        Op::Linear { .. } | Op::Conv { .. } | Op::LocallyConnected1d { .. } => main,
        Op::Flatten => unreachable!("flatten has no weights"),
    }
}

/// Gradient with respect to the first adapted vector, given the gradient `dw` `[T, len]`
/// with respect to the materialised weight.
pub(crate) fn weights_backward(op: &Op, shared: &[Tensor<2>], dw: Tensor<2>) -> Tensor<2> {
    match op {
        Op::ShareLinear { .. }
        | Op::ShareConv {
            sharing: ConvSharing::Dense { .. },
            ..
        } => dw.matmul(shared[0].clone()),
        Op::ShareConv {
            geom,
            sharing: ConvSharing::Kronecker { ka, kb, kc },
            ..
        } => {
            let t = dw.dims()[0];
            let ka_ = geom.kernel_area();
            kron3(
                dw.reshape([t, geom.out_channels, geom.in_channels, ka_]),
                &shared[0].clone().transpose(),
                &shared[1].clone().transpose(),
                &shared[2].clone().transpose(),
            )
            .reshape([t, ka * kb * kc])
        }
        Op::Linear { .. } | Op::Conv { .. } | Op::LocallyConnected1d { .. } => dw,
        Op::Flatten => unreachable!("flatten has no weights"),
    }
}

/// What the backward of [`apply`] needs from the forward.
#[derive(Clone, Debug)]
pub(crate) enum ApplyCache {
    /// Dense layers: the input `[T, N, in]`.
    Input(Tensor<3>),
    /// Convolutions: the im2col matrix `[T, N*P, C*K]`.
    Cols(Tensor<3>),
    /// Locally connected layers: the im2col matrix `[T, P, N, C*K]`.
    LocalCols(Tensor<4>),
}

/// Applies a layer with per-task weight `w` `[T, len]` and optional bias `[T, len_b]` to
/// `x` `[T, N, C, S]`. Returns the output `[T, N, C', S']` and what the backward needs.
pub(crate) fn apply(
    plan: &Plan,
    w: &Tensor<2>,
    bias: Option<&Tensor<2>>,
    x: Tensor<4>,
    out_shape: &FeatureShape,
) -> (Tensor<4>, Option<ApplyCache>) {
    let [t, n, c, s] = x.dims();
    match plan {
        Plan::Reshape => {
            let f = out_shape.channels();
            (x.reshape([t, n, f, c * s / f]), None)
        }
        Plan::Dense { inputs, outputs } => {
            let x = x.reshape([t, n, *inputs]);
            let wm = w.clone().reshape([t, *outputs, *inputs]);
            let mut y = x.clone().matmul(wm.swap_dims(1, 2)); // [T, N, out]
            if let Some(b) = bias {
                y = y + b.clone().reshape([t, 1, *outputs]);
            }
            (y.reshape([t, n, *outputs, 1]), Some(ApplyCache::Input(x)))
        }
        Plan::Patches {
            gather,
            in_channels,
            out_channels,
            in_positions,
            positions,
            taps,
            local,
        } => {
            let (p, o, j) = (*positions, *out_channels, in_channels * taps);
            // Append one zero position: padding taps read it.
            let zero = Tensor::zeros([t, n, c, 1], (&x.device(), x.dtype()));
            let xz = Tensor::cat(vec![x, zero], 3);
            debug_assert_eq!(xz.dims()[3], in_positions + 1);
            let cols = xz
                .select(3, gather.clone())
                .reshape([t, n, c, p, *taps])
                .permute([0, 1, 3, 2, 4]); // [T, N, P, C, K]
            if *local {
                let cols = cols.reshape([t, n, p, j]).swap_dims(1, 2); // [T, P, N, J]
                let wm = w.clone().reshape([t, p, o, j]);
                let mut y = cols
                    .clone()
                    .matmul(wm.swap_dims(2, 3))
                    .permute([0, 2, 3, 1]); // [T, N, O, P]
                if let Some(b) = bias {
                    y = y + b.clone().reshape([t, 1, o, p]);
                }
                (y, Some(ApplyCache::LocalCols(cols)))
            } else {
                let cols = cols.reshape([t, n * p, j]);
                let wm = w.clone().reshape([t, o, j]);
                let y = cols.clone().matmul(wm.swap_dims(1, 2)); // [T, N*P, O]
                let mut y = y.reshape([t, n, p, o]).swap_dims(2, 3); // [T, N, O, P]
                if let Some(b) = bias {
                    y = y + b.clone().reshape([t, 1, o, 1]);
                }
                (y, Some(ApplyCache::Cols(cols)))
            }
        }
    }
}

/// Gradients of one layer application.
pub(crate) struct ApplyGrads {
    /// With respect to the materialised weight, `[T, len]`.
    pub dw: Option<Tensor<2>>,
    /// With respect to the bias, `[T, len_b]`.
    pub db: Option<Tensor<2>>,
    /// With respect to the input, `[T, N, C, S]` (only when asked for).
    pub dx: Option<Tensor<4>>,
}

/// Backward of [`apply`]: `dy` is the gradient of the loss with respect to its output.
pub(crate) fn apply_backward(
    plan: &Plan,
    w: Option<&Tensor<2>>,
    cache: Option<&ApplyCache>,
    has_bias: bool,
    dy: Tensor<4>,
    in_shape: [usize; 4],
    need_dx: bool,
) -> ApplyGrads {
    let [t, n, c, s] = in_shape;
    match plan {
        Plan::Reshape => ApplyGrads {
            dw: None,
            db: None,
            dx: need_dx.then(|| dy.reshape(in_shape)),
        },
        Plan::Dense { inputs, outputs } => {
            let (Some(ApplyCache::Input(input)), Some(w)) = (cache, w) else {
                unreachable!("dense layers keep their input and weight")
            };
            let g = dy.reshape([t, n, *outputs]);
            let dw = g
                .clone()
                .swap_dims(1, 2)
                .matmul(input.clone()) // [T, out, in]
                .reshape([t, outputs * inputs]);
            let db = has_bias.then(|| g.clone().sum_dim(1).reshape([t, *outputs]));
            let dx = need_dx.then(|| {
                g.matmul(w.clone().reshape([t, *outputs, *inputs]))
                    .reshape(in_shape)
            });
            ApplyGrads {
                dw: Some(dw),
                db,
                dx,
            }
        }
        Plan::Patches {
            gather,
            in_channels,
            out_channels,
            in_positions,
            positions,
            taps,
            ..
        } => {
            let (Some(cache), Some(w)) = (cache, w) else {
                unreachable!("patch layers keep their columns and weight")
            };
            let (p, o, j) = (*positions, *out_channels, in_channels * taps);
            let (dw, db, dcols) = if let ApplyCache::LocalCols(cols) = cache {
                let g = dy.clone().permute([0, 3, 1, 2]); // [T, P, N, O]
                let dw = g
                    .clone()
                    .swap_dims(2, 3)
                    .matmul(cols.clone()) // [T, P, O, J]
                    .reshape([t, p * o * j]);
                let db = has_bias.then(|| dy.sum_dim(1).reshape([t, o * p]));
                let dcols = need_dx.then(|| {
                    g.matmul(w.clone().reshape([t, p, o, j])) // [T, P, N, J]
                        .swap_dims(1, 2) // [T, N, P, J]
                });
                (dw, db, dcols)
            } else {
                let ApplyCache::Cols(cols) = cache else {
                    unreachable!("convolutions keep their columns")
                };
                let g = dy.clone().swap_dims(2, 3).reshape([t, n * p, o]);
                let dw = g
                    .clone()
                    .swap_dims(1, 2)
                    .matmul(cols.clone()) // [T, O, J]
                    .reshape([t, o * j]);
                let db = has_bias.then(|| dy.sum_dim(3).sum_dim(1).reshape([t, o]));
                let dcols = need_dx.then(|| {
                    g.matmul(w.clone().reshape([t, o, j])) // [T, N*P, J]
                        .reshape([t, n, p, j])
                });
                (dw, db, dcols)
            };
            let dx = dcols.map(|dcols| {
                let dcols = dcols
                    .reshape([t, n, p, c, *taps])
                    .permute([0, 1, 3, 2, 4])
                    .reshape([t, n, c, p * taps]);
                let zero = Tensor::zeros(
                    [t, n, c, in_positions + 1],
                    (&dcols.device(), dcols.dtype()),
                );
                zero.select_assign(3, gather.clone(), dcols, IndexingUpdateOp::Add)
                    .narrow(3, 0, s)
            });
            ApplyGrads {
                dw: Some(dw),
                db,
                dx,
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::net::{Net, TaskParams};
    use crate::spec::{Activation, LayerSpec, Loss, NetSpec};
    use crate::test_support::*;

    fn single(op: Op, input: Vec<usize>) -> NetSpec {
        NetSpec {
            input: FeatureShape(input),
            layers: vec![LayerSpec {
                op,
                activation: Activation::Identity,
            }],
            loss: Loss::Mse,
        }
    }

    fn run(net: &Net, u: &[f64], u_shape: [usize; 2], v: &[f64], x: &[f64]) -> Vec<f64> {
        let dev = net.device();
        let host = HostParams(vec![
            (u.to_vec(), u_shape),
            (vec![0.0; v.len()], [1, v.len()]),
            (vec![0.1], [1, 1]),
        ]);
        let params = host.upload(net, dev, false);
        let task = TaskParams {
            layers: vec![vec![f64_tensor(v.to_vec(), [1, v.len()], dev)]],
        };
        let x = f64_tensor(x.to_vec(), [1, 1, net.input_len()], dev);
        to_f64(&net.forward(&params, &task, x))
    }

    /// U that encodes a 3-tap valid convolution gives a Toeplitz W and a layer that commutes
    /// with shifts.
    #[test]
    fn conv_sharing_gives_toeplitz_and_shift_equivariance() {
        let dev = crate::device::cpu();
        let (n_in, n_out, k) = (10, 8, 3);
        let op = Op::ShareLinear {
            inputs: n_in,
            outputs: n_out,
            k,
            bias: false,
        };
        let net = Net::new(single(op.clone(), vec![n_in]), &dev).unwrap();
        let mut u = vec![0.0; n_in * n_out * k];
        for o in 0..n_out {
            for j in 0..k {
                u[(o * n_in + o + j) * k + j] = 1.0;
            }
        }
        let mut rng = Rng::new(1);
        let v = rng.normals(k, 1.0);
        let w = to_f64(&weights(
            &op,
            &[f64_tensor(u.clone(), [n_in * n_out, k], &dev)],
            f64_tensor(v.clone(), [1, k], &dev),
        ));
        for o in 0..n_out {
            for i in 0..n_in {
                let expected = if (o..o + k).contains(&i) {
                    v[i - o]
                } else {
                    0.0
                };
                assert_eq!(w[o * n_in + i], expected, "W[{o}, {i}]");
            }
        }
        let x = rng.normals(n_in, 1.0);
        let mut shifted = x[1..].to_vec();
        shifted.push(rng.normal());
        let y = run(&net, &u, [n_in * n_out, k], &v, &x);
        let ys = run(&net, &u, [n_in * n_out, k], &v, &shifted);
        for o in 0..n_out - 1 {
            assert!(
                (ys[o] - y[o + 1]).abs() < 1e-12,
                "shift equivariance at {o}"
            );
        }
        // A random U has no such structure: the same check fails.
        let u_rand = rng.normals(u.len(), 1.0);
        let y = run(&net, &u_rand, [n_in * n_out, k], &v, &x);
        let ys = run(&net, &u_rand, [n_in * n_out, k], &v, &shifted);
        assert!((0..n_out - 1).any(|o| (ys[o] - y[o + 1]).abs() > 1e-3));
    }

    /// Rotates an n x n image by 90 degrees: out[i][j] = img[n-1-j][i].
    fn rot90(img: &[f64], n: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] = img[(n - 1 - j) * n + i];
            }
        }
        out
    }

    /// U that ties output channel g to the base filter rotated g times: rotating the input
    /// rotates every output map and shifts the channels by one.
    #[test]
    fn rotation_sharing_gives_rotation_equivariant_conv() {
        let dev = crate::device::cpu();
        let (c_out, ks, side) = (4, 3, 7);
        let taps = ks * ks;
        let op = Op::ShareConv {
            geom: ConvGeom::d2(1, c_out, ks, 1, 1),
            sharing: ConvSharing::Dense { k: taps },
            bias: false,
        };
        let net = Net::new(single(op, vec![1, side, side]), &dev).unwrap();
        // Column j of U is filter bank made of e_j rotated g times in channel g.
        let mut u = vec![0.0; c_out * taps * taps];
        for j in 0..taps {
            let mut basis = vec![0.0; taps];
            basis[j] = 1.0;
            for g in 0..c_out {
                for (q, b) in basis.iter().enumerate() {
                    u[(g * taps + q) * taps + j] = *b;
                }
                basis = rot90(&basis, ks);
            }
        }
        let mut rng = Rng::new(2);
        let v = rng.normals(taps, 1.0);
        let x = rng.normals(side * side, 1.0);
        let y = run(&net, &u, [c_out * taps, taps], &v, &x);
        let yr = run(&net, &u, [c_out * taps, taps], &v, &rot90(&x, side));
        let map = |y: &[f64], g: usize| y[g * side * side..(g + 1) * side * side].to_vec();
        for g in 0..c_out {
            let expected = rot90(&map(&y, (g + c_out - 1) % c_out), side);
            let got = map(&yr, g);
            assert!(rel_err(&got, &expected) < 1e-12, "channel {g}");
        }
    }

    /// The Kronecker path equals a dense U built as kron(A, kron(B, C)).
    #[test]
    fn kronecker_weights_equal_dense_kronecker_product() {
        let dev = crate::device::cpu();
        let geom = ConvGeom::d2(2, 3, 2, 1, 0);
        let (ka, kb, kc) = (2, 3, 4);
        let mut rng = Rng::new(4);
        let (o, i, s) = (3, 2, 4);
        let a = rng.normals(o * ka, 1.0);
        let b = rng.normals(i * kb, 1.0);
        let c = rng.normals(s * kc, 1.0);
        let v = rng.normals(2 * ka * kb * kc, 1.0); // two tasks
        let kron = Op::ShareConv {
            geom: geom.clone(),
            sharing: ConvSharing::Kronecker { ka, kb, kc },
            bias: false,
        };
        let w = to_f64(&weights(
            &kron,
            &[
                f64_tensor(a.clone(), [o, ka], &dev),
                f64_tensor(b.clone(), [i, kb], &dev),
                f64_tensor(c.clone(), [s, kc], &dev),
            ],
            f64_tensor(v.clone(), [2, ka * kb * kc], &dev),
        ));
        let k = ka * kb * kc;
        let mut u = vec![0.0; o * i * s * k];
        for (r1, r2, r3) in
            (0..o).flat_map(|p| (0..i).flat_map(move |q| (0..s).map(move |r| (p, q, r))))
        {
            for (c1, c2, c3) in
                (0..ka).flat_map(|p| (0..kb).flat_map(move |q| (0..kc).map(move |r| (p, q, r))))
            {
                let row = (r1 * i + r2) * s + r3;
                let col = (c1 * kb + c2) * kc + c3;
                u[row * k + col] = a[r1 * ka + c1] * b[r2 * kb + c2] * c[r3 * kc + c3];
            }
        }
        let dense = Op::ShareConv {
            geom,
            sharing: ConvSharing::Dense { k },
            bias: false,
        };
        let w_dense = to_f64(&weights(
            &dense,
            &[f64_tensor(u, [o * i * s, k], &dev)],
            f64_tensor(v, [2, k], &dev),
        ));
        assert!(rel_err(&w, &w_dense) < 1e-12);
    }
}
