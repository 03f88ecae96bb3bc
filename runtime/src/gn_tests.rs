//! The burn Gauss-Newton step against the real-time engine's (an independent
//! implementation: f64 host Cholesky, J from per-output backward passes, no tensors), the
//! tensor Cholesky against a direct solve, and the meta-gradient through Gauss-Newton
//! steps against finite differences of the whole bilevel objective (f64).

use super::*;
use crate::format::{ModelInfo, ModelRecord, Solver};
use crate::realtime::{Inner, RtModel, Session};
use crate::spec::{Activation, FeatureShape, LayerSpec, NetSpec, Op};
use crate::test_support::*;

/// A model file meta-trained with Gauss-Newton: `log_damping` per layer.
fn gn_record(
    name: &str,
    net: NetSpec,
    layers: Vec<crate::format::LayerRecord>,
    log_damping: Vec<f32>,
) -> ModelRecord {
    ModelRecord {
        info: ModelInfo {
            name: name.into(),
            task_family: "test".into(),
            inner_steps: 1,
            trainer_version: "test".into(),
        },
        net,
        layers,
        ext: crate::format::Extensions {
            solver: Some(Solver { log_damping }),
            ..Default::default()
        },
    }
}

fn moved(net: &Net) -> Vec<bool> {
    net.shapes()
        .params
        .iter()
        .map(|l| !l.adapted.is_empty())
        .collect()
}

#[test]
fn tensor_cholesky_solves() {
    let dev = crate::device::cpu();
    let n = 5;
    let mut rng = Rng::new(1);
    let m = rng.normals(n * n, 1.0);
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>()
                + if i == j { 0.5 } else { 0.0 };
        }
    }
    let x = rng.normals(n, 1.0);
    let b: Vec<f64> = (0..n)
        .map(|i| (0..n).map(|j| a[i * n + j] * x[j]).sum())
        .collect();
    let got = to_f64(&cholesky_solve(
        f64_tensor(a, [1, n, n], &dev),
        f64_tensor(b, [1, n, 1], &dev),
    ));
    assert!(rel_err(&got, &x) < 1e-10, "{got:?} vs {x:?}");
}

/// The host-inverse solve with one refinement step has the tensor Cholesky's value and
/// derivatives (f64, autodiff through both).
#[test]
fn refined_solve_matches_the_tensor_cholesky_and_its_gradient() {
    let ad = crate::device::cpu().autodiff();
    let (t, n) = (2, 6);
    let mut rng = Rng::new(5);
    let mut a = vec![0.0; t * n * n];
    for task in 0..t {
        let m = rng.normals(n * n, 1.0);
        for i in 0..n {
            for j in 0..n {
                a[task * n * n + i * n + j] =
                    (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>()
                        + if i == j { 0.3 } else { 0.0 };
            }
        }
    }
    let b = rng.normals(t * n, 1.0);
    let w = f64_tensor(rng.normals(t * n, 1.0), [t, n, 1], &ad);
    let run = |solve: fn(Tensor<3>, Tensor<3>) -> Tensor<3>| {
        let at = f64_tensor(a.clone(), [t, n, n], &ad).require_grad();
        let bt = f64_tensor(b.clone(), [t, n, 1], &ad).require_grad();
        let x = solve(at.clone(), bt.clone());
        let grads = (x.clone() * w.clone()).sum().backward();
        (
            to_f64(&x),
            to_f64(&at.grad(&grads).unwrap()),
            to_f64(&bt.grad(&grads).unwrap()),
        )
    };
    // The tensor Cholesky reads only the lower triangle of `a`; the refined solve reads
    // all of it. On the symmetric matrices that a Gauss-Newton step builds, the two are
    // the same function: the derivative with respect to a symmetric perturbation of
    // entries (i, j) and (j, i) is the lower-triangle sum.
    let lower = |g: Vec<f64>| -> Vec<f64> {
        let mut out = vec![0.0; g.len()];
        for task in 0..t {
            for i in 0..n {
                for j in 0..=i {
                    let at = |r: usize, c: usize| task * n * n + r * n + c;
                    out[at(i, j)] = g[at(i, j)] + if i == j { 0.0 } else { g[at(j, i)] };
                }
            }
        }
        out
    };
    let (x1, ga1, gb1) = run(spd_solve);
    let (x2, ga2, gb2) = run(cholesky_solve);
    let (ga1, ga2) = (lower(ga1), lower(ga2));
    assert!(rel_err(&x1, &x2) < 1e-10, "{x1:?} vs {x2:?}");
    assert!(rel_err(&ga1, &ga2) < 1e-9, "d/da {ga1:?} vs {ga2:?}");
    assert!(rel_err(&gb1, &gb2) < 1e-9, "d/db {gb1:?} vs {gb2:?}");
    // Not positive definite: NaN, as the tensor factorisation gives.
    let bad = f64_tensor(vec![1.0, 2.0, 2.0, 1.0], [1, 2, 2], &ad);
    let x = to_f64(&spd_solve(bad, f64_tensor(vec![1.0, 1.0], [1, 2, 1], &ad)));
    assert!(x.iter().all(|v| v.is_nan()), "{x:?}");
}

/// One Gauss-Newton step on burn (both the primal and the push-through forms) equals the
/// real-time engine's, for every test net and both losses.
#[test]
fn burn_step_equals_the_real_time_step() {
    let dev = crate::device::cpu();
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        for (name, spec) in nets(loss) {
            for n in [2, 7] {
                let net = Net::new(spec.clone(), &dev).unwrap();
                let mut rng = Rng::new(3);
                let mut host = HostParams::random(&net, &mut rng);
                // Log-dampings in the lr slots: 1.0 (lambda = e) everywhere.
                let mv = moved(&net);
                let mut k = 0;
                for layout in &net.shapes().params {
                    k += layout.shared.len() + layout.adapted.len();
                    host.0[k].0[0] = 1.0;
                    k += 1;
                }
                let mut layers = layer_records(&host, &net);
                for (l, m) in layers.iter_mut().zip(&mv) {
                    l.lr = if *m { 1.0 } else { 0.0 };
                }
                let rec = gn_record("gn", spec.clone(), layers, vec![1.0; spec.layers.len()]);
                let (fi, fo) = (net.input_len(), net.output_len());
                let x = rng.normals(n * fi, 1.0);
                let y = targets(loss, 1, n, fo, &mut rng);

                let params = host.upload(&net, &dev, false);
                let task = net.initial(&params, 1);
                let anchor = task.clone();
                let stepped = net.gn_step(
                    &params,
                    task,
                    f64_tensor(x.clone(), [1, n, fi], &dev),
                    f64_tensor(y.clone(), [1, n, fo], &dev),
                    &mv,
                    &anchor,
                );
                let burn: Vec<f64> = stepped.layers.iter().flatten().flat_map(to_f64).collect();

                let rt = RtModel::new(&rec).unwrap();
                assert!(rt.gauss_newton());
                let mut s = Session::new(rt, 3).unwrap();
                assert_eq!(s.inner(), Inner::GaussNewton { damping: 1.0 });
                let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
                s.inner_steps = 0;
                let before = s.adapt(&f32s(&x), &f32s(&y), n).unwrap();
                s.inner_steps = 1;
                let after = s.adapt(&f32s(&x), &f32s(&y), n).unwrap();
                assert!(after < before, "{name} {loss:?} n={n}: step not accepted");
                let realtime: Vec<f64> = (0..spec.layers.len())
                    .flat_map(|i| {
                        s.adapted(i)
                            .iter()
                            .flatten()
                            .map(|&v| v as f64)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let err = rel_err(&burn, &realtime);
                assert!(err < 2e-4, "{name} {loss:?} n={n}: rel err {err:e}");
            }
        }
    }
}

fn small_net(loss: Loss) -> NetSpec {
    NetSpec {
        input: FeatureShape(vec![4]),
        layers: vec![
            LayerSpec {
                op: Op::ShareLinear {
                    inputs: 4,
                    outputs: 3,
                    k: 3,
                    bias: true,
                },
                activation: Activation::Tanh,
            },
            LayerSpec {
                op: Op::ShareLinear {
                    inputs: 3,
                    outputs: 2,
                    k: 2,
                    bias: true,
                },
                activation: Activation::Identity,
            },
        ],
        loss,
    }
}

/// d(query loss after Gauss-Newton steps)/d(U, v0, log-damping) by autodiff through the
/// tensor solve, against central finite differences of the whole bilevel objective.
#[test]
fn meta_gradient_through_gauss_newton_matches_finite_differences() {
    let plain = crate::device::cpu();
    let ad = crate::device::cpu().autodiff();
    // Support sizes on both sides of the push-through switch (N F vs P = 3+3+2+2 = 10).
    for (loss, ns, steps) in [
        (Loss::Mse, 3, 1),
        (Loss::Mse, 3, 2),
        (Loss::Mse, 7, 2),
        (Loss::CrossEntropy, 4, 2),
        (Loss::CrossEntropy, 7, 1),
    ] {
        let spec = small_net(loss);
        let net = Net::new(spec.clone(), &plain).unwrap();
        let net_ad = Net::new(spec, &ad).unwrap();
        let mv = moved(&net);
        let mut rng = Rng::new(20 + ns as u64);
        let host = HostParams::random(&net, &mut rng);
        let (t, nq) = (2, 5);
        let data = [
            rng.normals(t * ns * 4, 1.0),
            targets(loss, t, ns, 2, &mut rng),
            rng.normals(t * nq * 4, 1.0),
            targets(loss, t, nq, 2, &mut rng),
        ];
        let objective = |net: &Net, params: &MetaParams| {
            let dev = net.device();
            let task = net.initial(params, t);
            let task = net.adapt_gn(
                params,
                task,
                f64_tensor(data[0].clone(), [t, ns, 4], dev),
                f64_tensor(data[1].clone(), [t, ns, 2], dev),
                steps,
                &mv,
            );
            let out = net.forward(params, &task, f64_tensor(data[2].clone(), [t, nq, 4], dev));
            net.loss(out, f64_tensor(data[3].clone(), [t, nq, 2], dev))
                .mean()
        };
        let tracked = host.upload(&net_ad, &ad, true);
        let grads = objective(&net_ad, &tracked).backward();
        let analytic: Vec<Vec<f64>> = tracked
            .tensors()
            .iter()
            .map(|p| to_f64(&p.grad(&grads).expect("every meta-parameter is used")))
            .collect();
        let h = 1e-5;
        let eval = |hp: &HostParams| to_f64(&objective(&net, &hp.upload(&net, &plain, false)))[0];
        let fds = finite_differences(&host, h, eval);
        for (p, (reference, fd)) in analytic.iter().zip(&fds).enumerate() {
            let err = rel_err(reference, fd);
            assert!(
                err < 1e-6,
                "{loss:?} ns={ns} {steps} steps: meta-parameter {p}: rel err {err:e}"
            );
        }
        // The dampings matter: their meta-gradient is not zero.
        let damp = analytic[3][0].abs() + analytic[7][0].abs();
        assert!(damp > 1e-8, "damping gradients vanished");
    }
}

/// A frozen body and a moved dense head (ANIL's shape; the real-time engine takes its
/// direct Jacobian path): the same step on both engines, plain and shared heads.
#[test]
fn frozen_body_and_dense_head_agree_on_both_engines() {
    let dev = crate::device::cpu();
    for shared in [false, true] {
        let head = if shared {
            Op::ShareLinear {
                inputs: 6,
                outputs: 3,
                k: 4,
                bias: true,
            }
        } else {
            Op::Linear {
                inputs: 6,
                outputs: 3,
                bias: true,
            }
        };
        let spec = NetSpec {
            input: FeatureShape(vec![5]),
            layers: vec![
                LayerSpec {
                    op: Op::Linear {
                        inputs: 5,
                        outputs: 6,
                        bias: true,
                    },
                    activation: Activation::Gelu,
                },
                LayerSpec {
                    op: head,
                    activation: Activation::Identity,
                },
            ],
            loss: Loss::Mse,
        };
        let net = Net::new(spec.clone(), &dev).unwrap();
        let mut rng = Rng::new(50);
        let mut host = HostParams::random(&net, &mut rng);
        let lr_slots: Vec<usize> = {
            let mut k = 0;
            net.shapes()
                .params
                .iter()
                .map(|l| {
                    k += l.shared.len() + l.adapted.len();
                    k += 1;
                    k - 1
                })
                .collect()
        };
        host.0[lr_slots[1]].0[0] = -0.5; // the head's log-damping
        let mut layers = layer_records(&host, &net);
        (layers[0].lr, layers[1].lr) = (0.0, 1.0);
        let rec = gn_record("anil", spec, layers, vec![0.0, -0.5]);
        let n = 4;
        let x = rng.normals(n * 5, 1.0);
        let y = rng.normals(n * 3, 1.0);
        let params = host.upload(&net, &dev, false);
        let init = net.initial(&params, 1);
        let stepped = net.gn_step(
            &params,
            init.clone(),
            f64_tensor(x.clone(), [1, n, 5], &dev),
            f64_tensor(y.clone(), [1, n, 3], &dev),
            &[false, true],
            &init,
        );
        let burn: Vec<f64> = stepped.layers[1].iter().flat_map(to_f64).collect();
        let mut s = Session::new(RtModel::new(&rec).unwrap(), 4).unwrap();
        let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        s.adapt(&f32s(&x), &f32s(&y), n).unwrap();
        let rt: Vec<f64> = s.adapted(1).iter().flatten().map(|&v| v as f64).collect();
        let err = rel_err(&burn, &rt);
        assert!(err < 1e-4, "shared head {shared}: rel err {err:e}");
        // The frozen body did not move.
        let body: Vec<f64> = s.adapted(0).iter().flatten().map(|&v| v as f64).collect();
        let body0: Vec<f64> = stepped.layers[0].iter().flat_map(to_f64).collect();
        assert!(rel_err(&body, &body0) < 1e-6);
    }
}

/// A convolution as the only moved layer, with no activation (rot8's shape: a
/// Kronecker-factored share-conv; a dense-U share-conv; a plain convolution): the
/// real-time engine takes its Jacobian in forward mode (one layer pass per parameter,
/// fewer than the outputs), the burn step by one backward pass per output. The same step.
#[test]
fn conv_layers_take_forward_mode_jacobians_and_agree_on_both_engines() {
    use crate::spec::{ConvGeom, ConvSharing};
    let dev = crate::device::cpu();
    let heads = [
        (
            "share-conv2d-kron",
            vec![1, 6, 6],
            Op::ShareConv {
                geom: ConvGeom::d2(1, 4, 3, 1, 0),
                sharing: ConvSharing::Kronecker {
                    ka: 4,
                    kb: 1,
                    kc: 9,
                },
                bias: true,
            },
        ),
        (
            "share-conv1d-dense",
            vec![2, 12],
            Op::ShareConv {
                geom: ConvGeom::d1(2, 3, 3, 1),
                sharing: ConvSharing::Dense { k: 5 },
                bias: false,
            },
        ),
        (
            "conv1d",
            vec![2, 12],
            Op::Conv {
                geom: ConvGeom::d1(2, 3, 3, 0),
                bias: true,
            },
        ),
    ];
    for (name, input, op) in heads {
        let spec = NetSpec {
            input: FeatureShape(input),
            layers: vec![LayerSpec {
                op,
                activation: Activation::Identity,
            }],
            loss: Loss::Mse,
        };
        let net = Net::new(spec.clone(), &dev).unwrap();
        let (fi, fo) = (net.input_len(), net.output_len());
        let mut rng = Rng::new(60);
        let host = HostParams::random(&net, &mut rng);
        let mut layers = layer_records(&host, &net);
        layers[0].lr = 1.0;
        let p: usize = layers[0].adapted0.iter().map(Vec::len).sum();
        assert!(
            layers[0].adapted0[0].len() < fo,
            "{name}: forward mode needs k < F"
        );
        let rec = gn_record(name, spec, layers, vec![0.3]);
        let mut host = host;
        let lr_slot = net.shapes().params[0].shared.len() + net.shapes().params[0].adapted.len();
        host.0[lr_slot].0[0] = 0.3;
        // Two examples: both sides of the dual switch are not the point here (N F > P).
        let n = 2;
        assert!(n * fo > p);
        let x = rng.normals(n * fi, 1.0);
        let y = rng.normals(n * fo, 1.0);
        let params = host.upload(&net, &dev, false);
        let init = net.initial(&params, 1);
        let stepped = net.gn_step(
            &params,
            init.clone(),
            f64_tensor(x.clone(), [1, n, fi], &dev),
            f64_tensor(y.clone(), [1, n, fo], &dev),
            &[true],
            &init,
        );
        let burn: Vec<f64> = stepped.layers[0].iter().flat_map(to_f64).collect();
        let mut s = Session::new(RtModel::new(&rec).unwrap(), n).unwrap();
        let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        s.adapt(&f32s(&x), &f32s(&y), n).unwrap();
        let rt: Vec<f64> = s.adapted(0).iter().flatten().map(|&v| v as f64).collect();
        let err = rel_err(&burn, &rt);
        assert!(err < 1e-4, "{name}: rel err {err:e}");
    }
}

/// The fully connected Jacobian (one pass, rows contracted with `U`) equals the replicas'
/// (one network per row) to rounding, in f64: every activation, `Linear` and
/// `ShareLinear`, biases or not, several tasks with their own parameters, and the moved
/// layers any subset (frozen ones still carry the rows back).
#[test]
fn dense_jacobian_equals_the_replicas() {
    use Activation::*;
    let dev = crate::device::cpu();
    let share = |inputs, outputs, k, bias| Op::ShareLinear {
        inputs,
        outputs,
        k,
        bias,
    };
    let spec = NetSpec {
        input: FeatureShape(vec![5]),
        layers: vec![
            layer(share(5, 6, 4, true), Tanh),
            layer(
                Op::Linear {
                    inputs: 6,
                    outputs: 4,
                    bias: false,
                },
                Gelu,
            ),
            layer(share(4, 5, 3, true), Relu),
            layer(share(5, 3, 2, true), Identity),
        ],
        loss: Loss::Mse,
    };
    let net = Net::new(spec, &dev).unwrap();
    let mut rng = Rng::new(11);
    let params = HostParams::random(&net, &mut rng).upload(&net, &dev, false);
    let (t, n, fi) = (3, 4, net.input_len());
    let task = upload_task(&random_task(&net, t, &mut rng), &dev, false);
    let x = f64_tensor(rng.normals(t * n * fi, 1.0), [t, n, fi], &dev);
    for moved in [
        vec![true; 4],
        vec![false, true, false, true],
        vec![true, false, false, false],
        vec![false, false, false, true],
    ] {
        let (out_d, j_d) = net.jacobian_dense(&params, &task, x.clone(), &moved);
        let (out_r, j_r) = net.jacobian_replicas(&params, &task, x.clone(), &moved);
        assert_eq!(j_d.dims(), j_r.dims(), "{moved:?}");
        assert!(rel_err(&to_f64(&out_d), &to_f64(&out_r)) < 1e-12);
        let err = rel_err(&to_f64(&j_d), &to_f64(&j_r));
        assert!(err < 1e-12, "{moved:?}: rel err {err:e}");
        // Not vacuous: the Jacobian is not all zeros (ReLU could zero a layer).
        assert!(to_f64(&j_d).iter().filter(|v| v.abs() > 1e-6).count() > j_d.dims()[2]);
    }
}
