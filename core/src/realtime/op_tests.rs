//! Per-op conformance of the real-time engine: every op (dense and convolution layers,
//! shared and locally connected, forward and backward; `W = reshape(U v)` with a dense and a
//! Kronecker U, and its backward; the activations and their gradients; the loss and its
//! gradient) against an independent f64 reference written from the definition, over a table
//! of shapes. A failure names the op and the case, not a whole net.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::activation::{activate, activation_backward};
use super::layers::{backward, forward};
use super::weights::{materialize, weights_backward};
use super::*;
use crate::format::{LayerRecord, ModelInfo, ModelRecord};
use crate::spec::{ConvGeom, ConvSharing, FeatureShape, LayerSpec, NetSpec};
use crate::test_rng::Rng;

/// Relative tolerance of an f32 result against its f64 reference: `|a - r| <= TOL (1 +
/// scale)`, with `scale` the sum of the magnitudes of the terms (the rounding bound).
const TOL: f64 = 2e-5;

fn normals(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// The one-layer model of `op` on inputs `input`, random parameters, and its layer.
fn one_layer(op: Op, input: &[usize], rng: &mut Rng) -> Arc<RtModel> {
    let net = NetSpec {
        input: FeatureShape(input.to_vec()),
        layers: vec![LayerSpec {
            op,
            activation: Activation::Identity,
        }],
        loss: Loss::Mse,
    };
    let rec = crate::test_models::record(net, |n| normals(rng, n), 0.1);
    RtModel::new(&rec).unwrap()
}

/// Checks `got` against the f64 reference `want` with magnitudes `scale`, naming `what`.
fn close(what: &str, got: &[f32], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            err <= TOL * (1.0 + s),
            "{what}: element {i}: {g} against the reference {w} (error {err:e}, terms {s:e})"
        );
    }
}

/// The reference forward of a dense or convolution layer in f64, for `m` examples: output
/// values and the sum of the magnitudes of their terms. The convolution from its geometry
/// (no gather index), weights `[out][in_channels * taps]` (per position for a locally
/// connected layer).
fn reference_forward(
    model: &RtModel,
    op: &Op,
    input: &[usize],
    w: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    m: usize,
) -> (Vec<f64>, Vec<f64>) {
    let layer = &model.layers[0];
    let (fi, fo) = (layer.in_len, layer.out_len);
    let (mut out, mut mag) = (vec![0.0; m * fo], vec![0.0; m * fo]);
    for e in 0..m {
        let xe = &x[e * fi..(e + 1) * fi];
        let (oe, me) = (
            &mut out[e * fo..(e + 1) * fo],
            &mut mag[e * fo..(e + 1) * fo],
        );
        match op {
            Op::Linear {
                inputs, outputs, ..
            }
            | Op::ShareLinear {
                inputs, outputs, ..
            } => {
                for o in 0..*outputs {
                    for i in 0..*inputs {
                        let t = w[o * inputs + i] as f64 * xe[i] as f64;
                        oe[o] += t;
                        me[o] += t.abs();
                    }
                    if let Some(b) = bias {
                        oe[o] += b[o] as f64;
                        me[o] += (b[o] as f64).abs();
                    }
                }
            }
            Op::Conv { geom, .. }
            | Op::ShareConv { geom, .. }
            | Op::LocallyConnected1d { geom, .. } => {
                let local = matches!(op, Op::LocallyConnected1d { .. });
                let in_sp: Vec<usize> = input[1..].to_vec();
                let out_sp: Vec<usize> = in_sp
                    .iter()
                    .enumerate()
                    .map(|(d, n)| (n + 2 * geom.padding[d] - geom.kernel[d]) / geom.stride[d] + 1)
                    .collect();
                let positions: usize = out_sp.iter().product();
                let taps = geom.kernel_area();
                let j = geom.in_channels * taps;
                for o in 0..geom.out_channels {
                    for p in 0..positions {
                        let wo = if local {
                            &w[(p * geom.out_channels + o) * j..][..j]
                        } else {
                            &w[o * j..][..j]
                        };
                        let idx = o * positions + p;
                        for c in 0..geom.in_channels {
                            for q in 0..taps {
                                if let Some(at) = tap(&in_sp, &out_sp, geom, p, q) {
                                    let xv = xe[c * in_sp.iter().product::<usize>() + at];
                                    let t = wo[c * taps + q] as f64 * xv as f64;
                                    oe[idx] += t;
                                    me[idx] += t.abs();
                                }
                            }
                        }
                        if let Some(b) = bias {
                            let bv = if local { b[o * positions + p] } else { b[o] } as f64;
                            oe[idx] += bv;
                            me[idx] += bv.abs();
                        }
                    }
                }
            }
            Op::Flatten => {
                for (o, v) in xe.iter().enumerate() {
                    oe[o] = *v as f64;
                    me[o] = (*v as f64).abs();
                }
            }
        }
    }
    (out, mag)
}

/// The input position (flat, within a channel) that output position `p` reads through
/// kernel tap `q`, or `None` in the zero padding: from the definition, last dimension
/// fastest.
fn tap(in_sp: &[usize], out_sp: &[usize], g: &ConvGeom, p: usize, q: usize) -> Option<usize> {
    let dims = in_sp.len();
    let (mut pc, mut qc) = (vec![0; dims], vec![0; dims]);
    let (mut pr, mut qr) = (p, q);
    for d in (0..dims).rev() {
        pc[d] = pr % out_sp[d];
        pr /= out_sp[d];
        qc[d] = qr % g.kernel[d];
        qr /= g.kernel[d];
    }
    let mut flat = 0;
    for d in 0..dims {
        let c = (pc[d] * g.stride[d] + qc[d]) as isize - g.padding[d] as isize;
        if c < 0 || c >= in_sp[d] as isize {
            return None;
        }
        flat = flat * in_sp[d] + c as usize;
    }
    Some(flat)
}

/// The ops of the table: dense and convolution layers of every kind, with and without
/// bias, padding and stride.
fn cases() -> Vec<(String, Op, Vec<usize>)> {
    let mut g2 = ConvGeom::d2(2, 3, 3, 2, 1);
    g2.stride = vec![2, 1];
    vec![
        (
            "linear 7 -> 5, bias".into(),
            Op::Linear {
                inputs: 7,
                outputs: 5,
                bias: true,
            },
            vec![7],
        ),
        (
            "share-linear 9 -> 4, k 3".into(),
            Op::ShareLinear {
                inputs: 9,
                outputs: 4,
                k: 3,
                bias: false,
            },
            vec![9],
        ),
        (
            "conv 1-D, 2 -> 3 channels, kernel 3, padding 1".into(),
            Op::Conv {
                geom: ConvGeom::d1(2, 3, 3, 1),
                bias: true,
            },
            vec![2, 8],
        ),
        (
            "conv 2-D, stride (2, 1), padding 1, bias".into(),
            Op::Conv {
                geom: g2.clone(),
                bias: true,
            },
            vec![2, 6, 5],
        ),
        (
            "share-conv dense U, k 4".into(),
            Op::ShareConv {
                geom: ConvGeom::d1(2, 2, 3, 0),
                sharing: ConvSharing::Dense { k: 4 },
                bias: true,
            },
            vec![2, 7],
        ),
        (
            "share-conv Kronecker (2, 1, 2)".into(),
            Op::ShareConv {
                geom: g2,
                sharing: ConvSharing::Kronecker {
                    ka: 2,
                    kb: 1,
                    kc: 2,
                },
                bias: false,
            },
            vec![2, 6, 5],
        ),
        (
            "locally connected 1-D, kernel 2, bias".into(),
            Op::LocallyConnected1d {
                geom: ConvGeom::d1(2, 2, 2, 0),
                bias: true,
            },
            vec![2, 6],
        ),
    ]
}

/// `W = reshape(U v)` from the record's factors, in f64, with each entry's magnitude.
fn reference_weights(model: &RtModel) -> (Vec<f64>, Vec<f64>) {
    let layer = &model.layers[0];
    let v = &layer.adapted0[0];
    match &layer.weights {
        Weights::Plain => (
            v.iter().map(|x| *x as f64).collect(),
            v.iter().map(|x| (*x as f64).abs()).collect(),
        ),
        Weights::Dense { ut, rows, .. } => {
            let k = ut.len() / rows;
            let (mut w, mut m) = (vec![0.0; *rows], vec![0.0; *rows]);
            for r in 0..*rows {
                for j in 0..k {
                    let t = ut[j * rows + r] as f64 * v[j] as f64;
                    w[r] += t;
                    m[r] += t.abs();
                }
            }
            (w, m)
        }
        Weights::Kron { a, b, c, dims } => {
            let [o, i, s, ka, kb, kc] = *dims;
            let (mut w, mut m) = (vec![0.0; o * i * s], vec![0.0; o * i * s]);
            for (oo, ii, ss) in
                (0..o).flat_map(|x| (0..i).flat_map(move |y| (0..s).map(move |z| (x, y, z))))
            {
                let at = (oo * i + ii) * s + ss;
                for (aa, bb, cc) in
                    (0..ka).flat_map(|x| (0..kb).flat_map(move |y| (0..kc).map(move |z| (x, y, z))))
                {
                    let t = a[oo * ka + aa] as f64
                        * b[ii * kb + bb] as f64
                        * c[ss * kc + cc] as f64
                        * v[(aa * kb + bb) * kc + cc] as f64;
                    w[at] += t;
                    m[at] += t.abs();
                }
            }
            (w, m)
        }
    }
}

#[test]
fn every_layer_op_matches_its_f64_reference() {
    let mut rng = Rng::new(21);
    for (name, op, input) in cases() {
        let model = one_layer(op.clone(), &input, &mut rng);
        let layer = &model.layers[0];
        let m = 3;
        let (fi, fo) = (layer.in_len, layer.out_len);
        let x = normals(&mut rng, m * fi);

        // W = reshape(U v), against the definition (dense U, Kronecker factors, plain).
        let mut w = vec![0.0f32; layer.weight_len];
        let scratch = kron_scratch_len(&model.layers);
        let (mut s0, mut s1) = (vec![0.0; scratch], vec![0.0; scratch]);
        materialize(&layer.weights, &layer.adapted0[0], &mut w, &mut s0, &mut s1);
        let (w_ref, w_mag) = reference_weights(&model);
        close(&format!("{name}: W = reshape(U v)"), &w, &w_ref, &w_mag);

        // Forward.
        let bias = layer.adapted0.get(1).map(Vec::as_slice);
        let mut out = vec![0.0f32; m * fo];
        let mut patch = vec![0.0f32; model.max_patch()];
        forward(layer, &w, bias, &x, &mut out, m, &mut patch);
        let (want, mag) = reference_forward(&model, &op, &input, &w, bias, &x, m);
        close(&format!("{name}: forward"), &out, &want, &mag);

        // Backward, against the reference forward's derivatives: the op is linear in x and
        // in W, so each derivative is a difference of two f64 forwards (exact up to
        // rounding), dotted with the output gradient dz.
        let dz = normals(&mut rng, m * fo);
        let (mut dw, mut dx) = (vec![0.0f32; layer.weight_len], vec![0.0f32; m * fi]);
        let mut db = bias.map(|b| vec![0.0f32; b.len()]);
        let mut dpatch = vec![0.0f32; model.max_patch()];
        backward(
            layer,
            &w,
            &x,
            &dz,
            &mut dw,
            db.as_deref_mut(),
            Some(&mut dx),
            m,
            &mut patch,
            &mut dpatch,
        );
        let directional = |w1: &[f32], b1: Option<&[f32]>, x1: &[f32]| -> (f64, f64) {
            let (o1, g1) = reference_forward(&model, &op, &input, w1, b1, x1, m);
            let (o0, _) = reference_forward(&model, &op, &input, &w, bias, &x, m);
            let d = o1
                .iter()
                .zip(&o0)
                .zip(&dz)
                .map(|((a, b), g)| (a - b) * *g as f64)
                .sum();
            let s = g1.iter().zip(&dz).map(|(a, g)| a * (*g as f64).abs()).sum();
            (d, s)
        };
        let check = |what: &str, got: f32, delta: (f64, f64)| {
            let err = (got as f64 - delta.0).abs();
            assert!(
                err <= 1e-4 * (1.0 + delta.1),
                "{name}: {what}: {got} against the reference {} (error {err:e})",
                delta.0
            );
        };
        for i in 0..layer.weight_len.min(40) {
            let mut w1 = w.clone();
            w1[i] += 1.0;
            check(&format!("dW[{i}]"), dw[i], directional(&w1, bias, &x));
        }
        for i in 0..(m * fi).min(40) {
            let mut x1 = x.clone();
            x1[i] += 1.0;
            check(&format!("dx[{i}]"), dx[i], directional(&w, bias, &x1));
        }
        if let (Some(db), Some(b)) = (&db, bias) {
            for i in 0..b.len() {
                let mut b1 = b.to_vec();
                b1[i] += 1.0;
                check(
                    &format!("dbias[{i}]"),
                    db[i],
                    directional(&w, Some(&b1), &x),
                );
            }
        }

        // The weights' backward: dv = d<dW, reshape(U v)>/dv, U^T vec(dW) for a dense U.
        let v0 = &layer.adapted0[0];
        let mut dv = vec![0.0f32; v0.len()];
        weights_backward(&layer.weights, &dw, &mut dv, &mut s0, &mut s1);
        for j in 0..v0.len().min(40) {
            // The weights are linear in v: the reference is W(e_j) . dW, in f64.
            let mut e = vec![0.0f32; v0.len()];
            e[j] = 1.0;
            let mut wj = vec![0.0f32; layer.weight_len];
            materialize(&layer.weights, &e, &mut wj, &mut s0, &mut s1);
            let (want, scale) = wj.iter().zip(&dw).fold((0.0, 0.0), |(a, s), (x, g)| {
                (a + *x as f64 * *g as f64, s + (*x as f64 * *g as f64).abs())
            });
            let err = (dv[j] as f64 - want).abs();
            assert!(
                err <= TOL * (1.0 + scale),
                "{name}: dv[{j}]: {} against {want}",
                dv[j]
            );
        }
    }
}

/// The activations and their gradients against f64 (GELU with f64's erf).
#[test]
fn every_activation_matches_its_f64_reference() {
    let mut rng = Rng::new(5);
    // Values across the range that matters, tails included, and a length that is not a
    // multiple of the vector width.
    let mut z: Vec<f32> = (0..203).map(|_| (rng.normal() * 3.0) as f32).collect();
    z.extend([0.0, -0.0, 1e-8, -1e-8, 9.0, -9.0, 20.0, -20.0]);
    let f64_of = |a: Activation, x: f64| -> (f64, f64) {
        match a {
            Activation::Identity => (x, 1.0),
            Activation::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }),
            Activation::Tanh => {
                let t = libm::tanh(x);
                (t, 1.0 - t * t)
            }
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erf(x / core::f64::consts::SQRT_2));
                let pdf = libm::exp(-0.5 * x * x) / libm::sqrt(2.0 * core::f64::consts::PI);
                (x * cdf, cdf + x * pdf)
            }
        }
    };
    for a in [
        Activation::Identity,
        Activation::Relu,
        Activation::Tanh,
        Activation::Gelu,
    ] {
        let mut out = z.clone();
        let mut pre = vec![0.0f32; z.len()];
        activate(a, &mut out, &mut pre);
        let mut d = vec![1.0f32; z.len()];
        activation_backward(a, &mut d, &out, &pre);
        for (i, &x) in z.iter().enumerate() {
            let (y, dy) = f64_of(a, x as f64);
            let what = format!("{a:?} at {x}");
            assert!(
                (out[i] as f64 - y).abs() <= 4e-7 * (1.0 + y.abs()),
                "{what}: {} against {y}",
                out[i]
            );
            assert!(
                (d[i] as f64 - dy).abs() <= 2e-6 * (1.0 + dy.abs()),
                "{what}: gradient {} against {dy}",
                d[i]
            );
        }
    }
}

/// The loss of a session and its gradient (through one SGD step of a plain linear layer:
/// `v1 = v0 - lr * dL/dv`) against f64, for the mean squared error and cross-entropy.
#[test]
fn the_loss_and_its_gradient_match_their_f64_reference() {
    let mut rng = Rng::new(9);
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        let (fi, fo, n) = (4, 3, 5);
        let net = NetSpec {
            input: FeatureShape(vec![fi]),
            layers: vec![LayerSpec {
                op: Op::Linear {
                    inputs: fi,
                    outputs: fo,
                    bias: false,
                },
                activation: Activation::Identity,
            }],
            loss,
        };
        let w0 = normals(&mut rng, fi * fo);
        let lr = 0.25f32;
        let rec = ModelRecord {
            info: ModelInfo {
                name: "loss".into(),
                task_family: "test".into(),
                inner_steps: 1,
                trainer_version: "test".into(),
            },
            net,
            layers: vec![LayerRecord {
                shared: vec![],
                adapted0: vec![w0.clone()],
                lr,
            }],
            ext: Default::default(),
        };
        let model = RtModel::new(&rec).unwrap();
        let mut s = Session::new(model, 2).unwrap(); // two chunks and a partial one
        let x = normals(&mut rng, n * fi);
        let y: Vec<f32> = match loss {
            Loss::Mse => normals(&mut rng, n * fo),
            Loss::CrossEntropy => (0..n * fo)
                .map(|i| (i % fo == i / fo % fo) as u8 as f32)
                .collect(),
        };
        // f64 reference: outputs, mean loss, gradient with respect to W.
        let mut total = 0.0;
        let mut grad = vec![0.0f64; fi * fo];
        for e in 0..n {
            let z: Vec<f64> = (0..fo)
                .map(|o| {
                    (0..fi)
                        .map(|i| w0[o * fi + i] as f64 * x[e * fi + i] as f64)
                        .sum()
                })
                .collect();
            let t = &y[e * fo..(e + 1) * fo];
            let dz: Vec<f64> = match loss {
                Loss::Mse => {
                    total += z
                        .iter()
                        .zip(t)
                        .map(|(a, b)| (a - *b as f64).powi(2))
                        .sum::<f64>()
                        / fo as f64;
                    z.iter()
                        .zip(t)
                        .map(|(a, b)| 2.0 * (a - *b as f64) / (n * fo) as f64)
                        .collect()
                }
                Loss::CrossEntropy => {
                    let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let lse = mx + libm::log(z.iter().map(|v| libm::exp(v - mx)).sum::<f64>());
                    let mass: f64 = t.iter().map(|v| *v as f64).sum();
                    total += z
                        .iter()
                        .zip(t)
                        .map(|(a, b)| *b as f64 * (lse - a))
                        .sum::<f64>();
                    z.iter()
                        .zip(t)
                        .map(|(a, b)| (mass * libm::exp(a - lse) - *b as f64) / n as f64)
                        .collect()
                }
            };
            for o in 0..fo {
                for i in 0..fi {
                    grad[o * fi + i] += dz[o] * x[e * fi + i] as f64;
                }
            }
        }
        let want = total / n as f64;
        let got = s.loss(&x, &y, n).unwrap() as f64;
        assert!(
            (got - want).abs() <= 1e-5 * (1.0 + want),
            "{loss:?}: loss {got} against {want}"
        );
        s.inner_steps = 1;
        s.adapt(&x, &y, n).unwrap();
        let v1 = &s.adapted(0)[0];
        for (j, (a, g)) in v1.iter().zip(&grad).enumerate() {
            let step = (w0[j] - a) as f64 / lr as f64;
            assert!(
                (step - g).abs() <= 1e-5 * (1.0 + g.abs()) + 1e-6,
                "{loss:?}: dL/dW[{j}] {step} against {g}"
            );
        }
    }
}
