//! The real-time engine (msr-core) against the burn path, and its rollback and state
//! guarantees.

mod tests {
    use crate::Model;
    use crate::error::{DataError, Error};
    use crate::format::{ModelInfo, ModelRecord};
    use crate::net::Net;
    use crate::realtime::{RtModel, Session};
    use crate::spec::{Activation, Loss, Op};
    use crate::tensor::{DType, Tensor, TensorData};
    use crate::test_support::{HostParams, Rng, layer_records, nets, rel_err, targets};

    fn record(spec: crate::NetSpec, seed: u64) -> ModelRecord {
        let dev = crate::device::cpu();
        let net = Net::new(spec.clone(), &dev).unwrap();
        let host = HostParams::random(&net, &mut Rng::new(seed));
        let layers = layer_records(&host, &net);
        ModelRecord {
            info: ModelInfo {
                name: "t".into(),
                task_family: "test".into(),
                inner_steps: 2,
                trainer_version: "test".into(),
            },
            net: spec,
            layers,
            ext: Default::default(),
        }
    }

    fn f32s(v: Vec<f64>) -> Vec<f32> {
        v.into_iter().map(|x| x as f32).collect()
    }

    /// The real-time engine computes what the burn path computes, for every layer kind and
    /// both losses, whether examples fit in one chunk or not.
    #[test]
    fn matches_the_burn_path() {
        let dev = crate::device::cpu();
        for loss in [Loss::Mse, Loss::CrossEntropy] {
            for (name, spec) in nets(loss) {
                let rec = record(spec, 21);
                let model = Model::from_record(&rec, &dev, DType::F32).unwrap();
                let rt = RtModel::new(&rec).unwrap();
                let (fi, fo) = (rt.input_len(), rt.output_len());
                let mut rng = Rng::new(22);
                let (ns, nq) = (5, 7);
                let xs = f32s(rng.normals(ns * fi, 1.0));
                let ys = f32s(targets(loss, 1, ns, fo, &mut rng));
                let xq = f32s(rng.normals(nq * fi, 1.0));
                let t = |v: &Vec<f32>, n: usize, f: usize| {
                    Tensor::<3>::from_data(
                        TensorData::new(v.clone(), [1, n, f]),
                        (&dev, DType::F32),
                    )
                };
                let task = model.adapt(t(&xs, ns, fi), t(&ys, ns, fo), 2).unwrap();
                let reference: Vec<f64> = model
                    .predict(&task, t(&xq, nq, fi))
                    .unwrap()
                    .to_data()
                    .convert::<f64>()
                    .iter::<f64>()
                    .collect();
                for capacity in [32, 2] {
                    let mut s = Session::new(rt.clone(), capacity).unwrap();
                    s.inner_steps = 2;
                    s.adapt(&xs, &ys, ns).unwrap();
                    let mut out = vec![0.0; nq * fo];
                    s.predict(&xq, nq, &mut out).unwrap();
                    let got: Vec<f64> = out.iter().map(|&x| x as f64).collect();
                    let err = rel_err(&got, &reference);
                    assert!(
                        err < 1e-4,
                        "{name} {loss:?} capacity {capacity}: rel err {err:e}"
                    );
                }
            }
        }
    }

    /// A model with standardisation statistics takes and returns raw units on both engines:
    /// adapting it on raw data and predicting equals adapting the same model without
    /// statistics on data standardised by hand, and un-standardising its predictions.
    #[test]
    fn normalisation_is_the_models_business() {
        use crate::format::{Normalizer, Standardize};
        let dev = crate::device::cpu();
        let spec = nets(Loss::Mse)
            .into_iter()
            .find(|(n, _)| *n == "mlp-tanh-gelu")
            .unwrap()
            .1;
        let plain = record(spec, 31);
        let (fi, fo) = (5, 3);
        let mut rng = Rng::new(32);
        let stats = |n: usize, rng: &mut Rng, big: f64| Standardize {
            mean: f32s(rng.normals(n, big)),
            scale: (0..n).map(|i| (big * (0.5 + i as f64)) as f32).collect(),
        };
        let mut normed = plain.clone();
        normed.ext.normalizer = Some(Normalizer {
            input: Some(stats(fi, &mut rng, 1e3)),
            output: Some(stats(fo, &mut rng, 20.0)),
        });
        let n = normed.ext.normalizer.clone().unwrap();
        let (sx, sy) = (n.input.unwrap(), n.output.unwrap());
        let (ns, nq) = (6, 5);
        let xs = f32s(rng.normals(ns * fi, 1.0));
        let ys = f32s(rng.normals(ns * fo, 1.0));
        let xq = f32s(rng.normals(nq * fi, 1.0));
        let raw = |v: &[f32], s: &Standardize| {
            let mut v = v.to_vec();
            s.invert(&mut v);
            v
        };
        let (xs_raw, ys_raw, xq_raw) = (raw(&xs, &sx), raw(&ys, &sy), raw(&xq, &sx));

        let predict = |rec: &ModelRecord, xs: &[f32], ys: &[f32], xq: &[f32]| {
            let mut s = Session::new(RtModel::new(rec).unwrap(), 4).unwrap();
            s.adapt(xs, ys, ns).unwrap();
            let mut out = vec![0.0; nq * fo];
            s.predict(xq, nq, &mut out).unwrap();
            out
        };
        let reference = raw(&predict(&plain, &xs, &ys, &xq), &sy);
        let got = predict(&normed, &xs_raw, &ys_raw, &xq_raw);
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let err = rel_err(&f64s(&got), &f64s(&reference));
        assert!(err < 1e-5, "real-time engine: rel err {err:e}");

        // The burn path, through Model.
        let model = Model::from_record(&normed, &dev, DType::F32).unwrap();
        let t = |v: &Vec<f32>, n: usize, f: usize| {
            Tensor::<3>::from_data(TensorData::new(v.clone(), [1, n, f]), (&dev, DType::F32))
        };
        let task = model
            .adapt(t(&xs_raw, ns, fi), t(&ys_raw, ns, fo), 2)
            .unwrap();
        let burn: Vec<f64> = model
            .predict(&task, t(&xq_raw, nq, fi))
            .unwrap()
            .to_data()
            .convert::<f64>()
            .iter::<f64>()
            .collect();
        let err = rel_err(&burn, &f64s(&reference));
        assert!(err < 1e-5, "burn path: rel err {err:e}");
        // And the record keeps its statistics through the model.
        assert_eq!(model.to_record().ext, normed.ext);
    }

    #[test]
    fn divergence_rolls_back_and_bad_input_changes_nothing() {
        // A linear model: a huge step must explode the loss (no ReLU can go dead).
        let spec = crate::NetSpec {
            input: crate::FeatureShape(vec![6]),
            layers: vec![crate::test_support::layer(
                Op::ShareLinear {
                    inputs: 6,
                    outputs: 4,
                    k: 3,
                    bias: true,
                },
                Activation::Identity,
            )],
            loss: Loss::Mse,
        };
        let rt = RtModel::new(&record(spec, 5)).unwrap();
        let (fi, fo) = (rt.input_len(), rt.output_len());
        let mut rng = Rng::new(6);
        let xs = f32s(rng.normals(4 * fi, 1.0));
        let ys = f32s(rng.normals(4 * fo, 1.0));
        let mut s = Session::new(rt.clone(), 8).unwrap();
        s.adapt(&xs, &ys, 4).unwrap();
        let mut before = vec![0.0; 4 * fo];
        s.predict(&xs, 4, &mut before).unwrap();

        s.lr_scale = 1e8;
        let e = s.adapt(&xs, &ys, 4).unwrap_err();
        assert!(matches!(e, Error::Diverged(_)), "{e}");
        let mut after = vec![0.0; 4 * fo];
        s.predict(&xs, 4, &mut after).unwrap();
        assert_eq!(
            before, after,
            "a diverged adaptation must leave the session as it was"
        );
        s.lr_scale = 1.0;

        let mut nan = xs.clone();
        nan[3] = f32::NAN;
        assert!(matches!(
            s.adapt(&nan, &ys, 4),
            Err(Error::Data(DataError::NonFinite(_)))
        ));
        assert!(matches!(
            s.adapt(&xs, &ys[1..], 4),
            Err(Error::Data(DataError::Shape(_)))
        ));
        assert!(matches!(
            s.adapt(&[], &[], 0),
            Err(Error::Data(DataError::Empty(_)))
        ));
        assert!(matches!(
            s.predict(&xs, 4, &mut after[1..]),
            Err(Error::Data(DataError::Shape(_)))
        ));
        s.predict(&xs, 4, &mut after).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn state_round_trips_and_is_refused_elsewhere() {
        let spec = nets(Loss::Mse).remove(2).1;
        let rt = RtModel::new(&record(spec.clone(), 7)).unwrap();
        let (fi, fo) = (rt.input_len(), rt.output_len());
        let mut rng = Rng::new(8);
        let xs = f32s(rng.normals(3 * fi, 1.0));
        let ys = f32s(rng.normals(3 * fo, 1.0));
        let mut a = Session::new(rt.clone(), 4).unwrap();
        a.lr_scale = 0.01; // random parameters: keep the steps small
        a.adapt(&xs, &ys, 3).unwrap();
        let mut buf = vec![0u8; rt.state_len()];
        assert_eq!(a.save_state(&mut buf).unwrap(), rt.state_len());
        let mut b = Session::new(rt.clone(), 4).unwrap();
        b.load_state(&buf).unwrap();
        let (mut pa, mut pb) = (vec![0.0; 3 * fo], vec![0.0; 3 * fo]);
        a.predict(&xs, 3, &mut pa).unwrap();
        b.predict(&xs, 3, &mut pb).unwrap();
        assert_eq!(pa, pb);

        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert!(b.load_state(&bad).is_err());
        assert!(b.load_state(&buf[..buf.len() - 1]).is_err());
        let other = RtModel::new(&record(spec, 99)).unwrap();
        let mut c = Session::new(other, 4).unwrap();
        let e = c.load_state(&buf).unwrap_err();
        assert!(e.to_string().contains("another model"), "{e}");
        // b unchanged by the failed loads.
        b.predict(&xs, 3, &mut pb).unwrap();
        assert_eq!(pa, pb);
    }
}

/// Damped Gauss-Newton adaptation on the real-time engine, against independent
/// references: for a model linear in its adapted parameters the first step is the
/// ridge (MSE) or damped Newton (cross-entropy) step computed here from an explicit
/// design matrix, in f64; on nonlinear nets the support loss never rises with more steps.
mod gauss_newton {
    use crate::format::{ModelInfo, ModelRecord};
    use crate::realtime::{Inner, RtModel, Session};
    use crate::spec::{Activation, FeatureShape, LayerSpec, Loss, NetSpec, Op};
    use crate::test_support::{HostParams, Rng, layer_records, nets, rel_err, targets};

    fn record(spec: NetSpec, seed: u64, steps: u32) -> ModelRecord {
        let net = crate::net::Net::new(spec.clone(), &crate::device::cpu()).unwrap();
        let host = HostParams::random(&net, &mut Rng::new(seed));
        ModelRecord {
            info: ModelInfo {
                name: "gn".into(),
                task_family: "test".into(),
                inner_steps: steps,
                trainer_version: "test".into(),
            },
            net: spec,
            layers: layer_records(&host, &net),
            ext: Default::default(),
        }
    }

    /// Solves `a x = b` (n x n, f64) by Gaussian elimination with partial pivoting.
    fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Vec<f64> {
        for c in 0..n {
            let piv = (c..n)
                .max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs()))
                .unwrap();
            for k in 0..n {
                a.swap(c * n + k, piv * n + k);
            }
            b.swap(c, piv);
            for r in c + 1..n {
                let f = a[r * n + c] / a[c * n + c];
                for k in c..n {
                    a[r * n + k] -= f * a[c * n + k];
                }
                b[r] -= f * b[c];
            }
        }
        for r in (0..n).rev() {
            let s: f64 = (r + 1..n).map(|k| a[r * n + k] * b[k]).sum();
            b[r] = (b[r] - s) / a[r * n + r];
        }
        b
    }

    /// A single share-linear layer with a bias: outputs `z = reshape(U v) x + b`. Returns
    /// the record and, per example, the explicit design matrix `[outputs, k + outputs]`
    /// (d z / d (v, b)) computed from U and x.
    fn linear(loss: Loss, seed: u64) -> (ModelRecord, usize, usize, usize) {
        let (fi, fo, k) = (5, 3, 4);
        let spec = NetSpec {
            input: FeatureShape(vec![fi]),
            layers: vec![LayerSpec {
                op: Op::ShareLinear {
                    inputs: fi,
                    outputs: fo,
                    k,
                    bias: true,
                },
                activation: Activation::Identity,
            }],
            loss,
        };
        (record(spec, seed, 1), fi, fo, k)
    }

    fn design(rec: &ModelRecord, x: &[f32], fi: usize, fo: usize, k: usize) -> Vec<f64> {
        let u = &rec.layers[0].shared[0]; // [fo * fi, k]
        let p = k + fo;
        let mut j = vec![0.0; fo * p];
        for o in 0..fo {
            for c in 0..k {
                j[o * p + c] = (0..fi)
                    .map(|i| u[(o * fi + i) * k + c] as f64 * x[i] as f64)
                    .sum();
            }
            j[o * p + k + o] = 1.0;
        }
        j
    }

    fn params(s: &Session) -> Vec<f64> {
        s.adapted(0).iter().flatten().map(|&v| v as f64).collect()
    }

    #[test]
    fn one_step_on_a_linear_model_is_the_ridge_solution() {
        let (rec, fi, fo, k) = linear(Loss::Mse, 3);
        let rt = RtModel::new(&rec).unwrap();
        let mut rng = Rng::new(4);
        let n = 6;
        let x: Vec<f32> = rng.normals(n * fi, 1.0).iter().map(|&v| v as f32).collect();
        let y: Vec<f32> = rng.normals(n * fo, 1.0).iter().map(|&v| v as f32).collect();
        let lambda = 0.05;
        let mut s = Session::new(rt, 4).unwrap();
        s.inner_steps = 1;
        s.set_inner(Inner::GaussNewton { damping: lambda }).unwrap();
        let theta0 = params(&s);
        s.adapt(&x, &y, n).unwrap();
        let got = params(&s);

        // argmin_theta mean((J theta - y)^2) + lambda/2 |theta - theta0|^2 over the
        // explicit design J, in f64: (s J^T J + lambda I) theta = s J^T y + lambda theta0
        // with s = 2 / (n fo).
        let p = k + fo;
        let sc = 2.0 / (n * fo) as f64;
        let (mut a, mut b) = (vec![0.0; p * p], vec![0.0; p]);
        for e in 0..n {
            let j = design(&rec, &x[e * fi..(e + 1) * fi], fi, fo, k);
            for o in 0..fo {
                for r in 0..p {
                    b[r] += sc * j[o * p + r] * y[e * fo + o] as f64;
                    for c in 0..p {
                        a[r * p + c] += sc * j[o * p + r] * j[o * p + c];
                    }
                }
            }
        }
        for r in 0..p {
            a[r * p + r] += lambda as f64;
            b[r] += lambda as f64 * theta0[r];
        }
        let want = solve(a, b, p);
        let err = crate::test_support::rel_err(&got, &want);
        assert!(
            err < 1e-4,
            "GN step vs ridge: rel err {err:e}\n{got:?}\n{want:?}"
        );
        assert!(
            crate::test_support::rel_err(&theta0, &want) > 1e-2,
            "it moved"
        );
    }

    #[test]
    fn one_step_on_a_linear_classifier_is_the_damped_newton_step() {
        let (rec, fi, fo, k) = linear(Loss::CrossEntropy, 5);
        let rt = RtModel::new(&rec).unwrap();
        let mut rng = Rng::new(6);
        let n = 7;
        let x: Vec<f32> = rng.normals(n * fi, 1.0).iter().map(|&v| v as f32).collect();
        let y: Vec<f32> = targets(Loss::CrossEntropy, 1, n, fo, &mut rng)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let lambda = 0.5;
        let mut s = Session::new(rt, 3).unwrap();
        s.inner_steps = 0;
        s.set_inner(Inner::GaussNewton { damping: lambda }).unwrap();
        let before = s.adapt(&x, &y, n).unwrap();
        s.inner_steps = 1;
        let theta0 = params(&s);
        let after = s.adapt(&x, &y, n).unwrap();
        assert!(after < before, "the step was accepted: {before} -> {after}");
        let got = params(&s);

        // For a model linear in theta the generalised Gauss-Newton matrix is the Hessian:
        // H = 1/n sum_e J_e^T (diag p - p p^T) J_e, g = 1/n sum_e J_e^T (p - y).
        let p = k + fo;
        let (mut h, mut g) = (vec![0.0; p * p], vec![0.0; p]);
        for e in 0..n {
            let j = design(&rec, &x[e * fi..(e + 1) * fi], fi, fo, k);
            let z: Vec<f64> = (0..fo)
                .map(|o| (0..p).map(|c| j[o * p + c] * theta0[c]).sum())
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let ez: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let sum: f64 = ez.iter().sum();
            let pr: Vec<f64> = ez.iter().map(|v| v / sum).collect();
            for o in 0..fo {
                let r = pr[o] - y[e * fo + o] as f64;
                for c in 0..p {
                    g[c] += r * j[o * p + c] / n as f64;
                }
                for o2 in 0..fo {
                    let w = (if o == o2 { pr[o] } else { 0.0 }) - pr[o] * pr[o2];
                    for r1 in 0..p {
                        for c in 0..p {
                            h[r1 * p + c] += w * j[o * p + r1] * j[o2 * p + c] / n as f64;
                        }
                    }
                }
            }
        }
        for r in 0..p {
            h[r * p + r] += lambda as f64;
        }
        let step = solve(h, g.iter().map(|v| -v).collect(), p);
        let want: Vec<f64> = theta0.iter().zip(&step).map(|(a, b)| a + b).collect();
        let err = crate::test_support::rel_err(&got, &want);
        assert!(err < 1e-4, "GN step vs damped Newton: rel err {err:e}");
    }

    /// On every test net (every layer kind and activation, both losses), from random
    /// parameters: the support loss after S Gauss-Newton steps never rises with S, up to
    /// S = 100, and no adaptation fails.
    #[test]
    fn support_loss_never_rises_with_more_steps() {
        for loss in [Loss::Mse, Loss::CrossEntropy] {
            for (name, spec) in nets(loss) {
                let rt = RtModel::new(&record(spec, 8, 1)).unwrap();
                let (fi, fo) = (rt.input_len(), rt.output_len());
                let mut rng = Rng::new(9);
                let n = 6;
                let x: Vec<f32> = rng.normals(n * fi, 1.0).iter().map(|&v| v as f32).collect();
                let y: Vec<f32> = targets(loss, 1, n, fo, &mut rng)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let mut s = Session::new(rt, 4).unwrap();
                s.set_inner(Inner::GaussNewton { damping: 1e-3 }).unwrap();
                s.inner_steps = 0;
                let mut last = s.adapt(&x, &y, n).unwrap();
                for steps in [1, 2, 3, 10, 30, 100] {
                    s.inner_steps = steps;
                    let l = s.adapt(&x, &y, n).unwrap();
                    assert!(
                        l <= last * (1.0 + 1e-6),
                        "{name} {loss:?}: {steps} steps: {l} after {last}"
                    );
                    last = l;
                }
                let l0 = {
                    s.inner_steps = 0;
                    s.adapt(&x, &y, n).unwrap()
                };
                assert!(last < 0.9 * l0, "{name} {loss:?}: {l0} -> {last}");
            }
        }
    }

    #[test]
    fn bad_damping_and_oversized_models_are_refused() {
        let (rec, ..) = linear(Loss::Mse, 3);
        let mut s = Session::new(RtModel::new(&rec).unwrap(), 2).unwrap();
        for d in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(s.set_inner(Inner::GaussNewton { damping: d }).is_err());
        }
        assert_eq!(s.inner(), Inner::Sgd, "a refused switch changes nothing");
        // A plain 64 x 64 layer has 4096 + 64 adapted parameters: over the primal form's
        // limit. Sessions of a small capacity get the dual form (up to capacity x 64 rows),
        // adapt on at most that many examples and cannot stream; a capacity whose rows
        // outnumber the parameters has no form at all and is refused.
        let big = NetSpec {
            input: FeatureShape(vec![64]),
            layers: vec![LayerSpec {
                op: Op::Linear {
                    inputs: 64,
                    outputs: 64,
                    bias: true,
                },
                activation: Activation::Identity,
            }],
            loss: Loss::Mse,
        };
        let rt = RtModel::new(&record(big, 1, 1)).unwrap();
        let mut s = Session::new(rt.clone(), 2).unwrap();
        s.set_inner(Inner::GaussNewton { damping: 1.0 }).unwrap();
        let x = vec![0.5f32; 3 * 64];
        let y = vec![0.25f32; 3 * 64];
        let before = s.loss(&x[..128], &y[..128], 2).unwrap();
        let after = s.adapt(&x[..128], &y[..128], 2).unwrap();
        assert!(after < before, "{before} -> {after}");
        let e = s.adapt(&x, &y, 3).unwrap_err();
        assert!(e.to_string().contains("capacity"), "{e}");
        let e = s.observe(&x[..64], &y[..64], 1).unwrap_err();
        assert!(e.to_string().contains("2048"), "{e}");
        let mut s = Session::new(rt, 80).unwrap();
        let e = s
            .set_inner(Inner::GaussNewton { damping: 1.0 })
            .unwrap_err();
        assert!(e.to_string().contains("Gauss-Newton"), "{e}");
    }

    /// The dual form (a system of the support set's outputs) and the primal form (of the
    /// parameters) take the same step, on every test net and both losses.
    #[test]
    fn dual_and_primal_forms_agree() {
        for loss in [Loss::Mse, Loss::CrossEntropy] {
            for (name, spec) in nets(loss) {
                let rt = RtModel::new(&record(spec, 12, 1)).unwrap();
                let (fi, fo) = (rt.input_len(), rt.output_len());
                let p = rt.adapted_len();
                let n = 2;
                if n * fo >= p {
                    continue; // no dual form for this net at n = 2
                }
                let mut rng = Rng::new(13);
                let x: Vec<f32> = rng.normals(n * fi, 1.0).iter().map(|&v| v as f32).collect();
                let y: Vec<f32> = targets(loss, 1, n, fo, &mut rng)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let run = |capacity: usize| {
                    let mut s = Session::new(rt.clone(), capacity).unwrap();
                    s.set_inner(Inner::GaussNewton { damping: 0.5 }).unwrap();
                    s.inner_steps = 2;
                    let l = s.adapt(&x, &y, n).unwrap();
                    let v: Vec<f64> = (0..rt.layers())
                        .flat_map(|i| {
                            s.adapted(i)
                                .iter()
                                .flatten()
                                .map(|&v| v as f64)
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    (l, v)
                };
                // Capacity 2: n F < P rows, the dual form; capacity P: only the primal.
                let (ld, dual) = run(2);
                let (lp, primal) = run(p);
                let err = rel_err(&dual, &primal);
                assert!(
                    err < 1e-4,
                    "{name} {loss:?}: dual vs primal rel err {err:e}"
                );
                assert!(
                    (ld - lp).abs() <= 1e-4 * lp.abs().max(1e-6),
                    "{name}: {ld} vs {lp}"
                );
            }
        }
    }
}

/// Streaming updates (`Session::observe`): equal to a batch Gauss-Newton solve on the same
/// examples for a model linear in v (no forgetting), tracking a change with forgetting.
mod streaming {
    use crate::format::{ModelInfo, ModelRecord};
    use crate::realtime::{Inner, RtModel, Session};
    use crate::spec::{Activation, FeatureShape, LayerSpec, Loss, NetSpec, Op};
    use crate::test_support::{HostParams, Rng, layer_records, rel_err};

    /// A linear model: share-linear (k = 4), or with `plain` a plain dense layer that can
    /// represent any linear map.
    fn linear_model(plain: bool) -> ModelRecord {
        let op = if plain {
            Op::Linear {
                inputs: 5,
                outputs: 3,
                bias: true,
            }
        } else {
            Op::ShareLinear {
                inputs: 5,
                outputs: 3,
                k: 4,
                bias: true,
            }
        };
        let spec = NetSpec {
            input: FeatureShape(vec![5]),
            layers: vec![LayerSpec {
                op,
                activation: Activation::Identity,
            }],
            loss: Loss::Mse,
        };
        let net = crate::net::Net::new(spec.clone(), &crate::device::cpu()).unwrap();
        let host = HostParams::random(&net, &mut Rng::new(40));
        ModelRecord {
            info: ModelInfo {
                name: "stream".into(),
                task_family: "test".into(),
                inner_steps: 1,
                trainer_version: "test".into(),
            },
            net: spec,
            layers: layer_records(&host, &net),
            ext: Default::default(),
        }
    }

    fn data(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
        data_out(n, 3, rng)
    }

    fn data_out(n: usize, fo: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        (f(rng.normals(n * 5, 1.0)), f(rng.normals(n * fo, 1.0)))
    }

    /// Share-linear 5 -> 8 with k = 3 and no bias: more than twice as many outputs as
    /// parameters, so `observe` folds an example's rows in at once (the information form).
    fn wide_model() -> ModelRecord {
        let mut rec = linear_model(false);
        rec.net.layers[0].op = Op::ShareLinear {
            inputs: 5,
            outputs: 8,
            k: 3,
            bias: false,
        };
        let net = crate::net::Net::new(rec.net.clone(), &crate::device::cpu()).unwrap();
        rec.layers = layer_records(&HostParams::random(&net, &mut Rng::new(45)), &net);
        rec
    }

    fn params(s: &Session) -> Vec<f64> {
        s.adapted(0).iter().flatten().map(|&v| v as f64).collect()
    }

    /// Row at a time (3 outputs, P = 7) and the information form (8 outputs, P = 3).
    #[test]
    fn observing_equals_a_batch_solve_without_forgetting() {
        for (rec, fo) in [(linear_model(false), 3), (wide_model(), 8)] {
            observing_equals_a_batch_solve(&rec, fo);
        }
    }

    fn observing_equals_a_batch_solve(rec: &ModelRecord, fo: usize) {
        let rt = RtModel::new(rec).unwrap();
        let rt_one = rt.clone();
        let mut rng = Rng::new(41);
        let n = 9;
        let (x, y) = data_out(n, fo, &mut rng);
        let scale = 0.7f32;
        let mut stream = Session::new(rt.clone(), 4).unwrap();
        stream
            .set_inner(Inner::GaussNewton { damping: scale })
            .unwrap();
        // In three calls of 2, 3 and 4 examples.
        let (mut at, fi) = (0, 5);
        for m in [2, 3, 4] {
            stream
                .observe(&x[at * fi..(at + m) * fi], &y[at * fo..(at + m) * fo], m)
                .unwrap();
            at += m;
        }
        // The stream's prior is that of `adapt` on one example; the batch step on n
        // examples (mean loss) with damping scale / n solves the same problem.
        let mut batch = Session::new(rt, 4).unwrap();
        batch
            .set_inner(Inner::GaussNewton {
                damping: scale / n as f32,
            })
            .unwrap();
        batch.inner_steps = 1;
        batch.adapt(&x, &y, n).unwrap();
        let err = rel_err(&params(&stream), &params(&batch));
        assert!(err < 1e-4, "stream vs batch: rel err {err:e}");
        // Observing one example is adapting on it.
        let mut one = Session::new(rt_one.clone(), 4).unwrap();
        one.set_inner(Inner::GaussNewton { damping: scale })
            .unwrap();
        one.observe(&x[..fi], &y[..fo], 1).unwrap();
        let mut adapt_one = Session::new(rt_one, 4).unwrap();
        adapt_one
            .set_inner(Inner::GaussNewton { damping: scale })
            .unwrap();
        adapt_one.inner_steps = 1;
        adapt_one.adapt(&x[..fi], &y[..fo], 1).unwrap();
        let err = rel_err(&params(&one), &params(&adapt_one));
        assert!(err < 1e-4, "observe 1 vs adapt 1: rel err {err:e}");
        // Predictions use the current estimate.
        let (mut a, mut b) = (vec![0.0; n * fo], vec![0.0; n * fo]);
        stream.predict(&x, n, &mut a).unwrap();
        batch.predict(&x, n, &mut b).unwrap();
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        assert!(rel_err(&f(&a), &f(&b)) < 1e-4);
        // A reset ends the stream: observing again starts from the prior.
        stream.reset();
        stream.observe(&x, &y, n).unwrap();
        assert!(rel_err(&params(&stream), &params(&batch)) < 1e-4);
    }

    /// The information form under forgetting, on a robot-like stream (1 kHz samples of a
    /// slow trajectory, noisy targets from a map the model can represent): every call
    /// succeeds and the estimate converges to the map.
    #[test]
    fn the_information_form_streams_with_forgetting() {
        let rec = wide_model();
        let rt = RtModel::new(&rec).unwrap();
        let mut noise = Rng::new(46);
        // The map: the model adapted to random data (another v).
        let mut truth = Session::new(rt.clone(), 20).unwrap();
        truth
            .set_inner(Inner::GaussNewton { damping: 1.0 })
            .unwrap();
        let (xr, yr) = data_out(20, 8, &mut noise);
        truth.adapt(&xr, &yr, 20).unwrap();
        let mut probe = Session::new(rt.clone(), 1).unwrap();
        probe
            .set_inner(Inner::GaussNewton { damping: 1.0 })
            .unwrap();
        probe.set_forgetting(0.995).unwrap();
        let mut y = [0.0f32; 8];
        for k in 0..30_000 {
            let t = k as f64 * 1e-3;
            let x: Vec<f32> = (0..5)
                .map(|i| ((0.3 + 0.2 * i as f64) * t + i as f64).sin() as f32)
                .collect();
            truth.predict(&x, 1, &mut y).unwrap();
            for v in y.iter_mut() {
                *v += 0.01 * noise.normal() as f32;
            }
            probe
                .observe(&x, &y, 1)
                .unwrap_or_else(|e| panic!("example {k}: {e}"));
        }
        let got: Vec<f64> = probe.adapted(0)[0].iter().map(|&v| v as f64).collect();
        let want: Vec<f64> = truth.adapted(0)[0].iter().map(|&v| v as f64).collect();
        let err = rel_err(&got, &want);
        assert!(
            err < 0.02,
            "v {got:?} vs the map's {want:?}: rel err {err:e}"
        );
    }

    /// `observe` on a share-linear head moves v without re-materialising W (a stream needs
    /// only U); whatever reads W next must see the current v, and a v whose W overflows f32
    /// must still be refused although W was not computed.
    #[test]
    fn a_stream_defers_the_weights_and_still_catches_their_overflow() {
        let rt = RtModel::new(&linear_model(false)).unwrap();
        let mut rng = Rng::new(44);
        let (x, y) = data(6, &mut rng);
        let mut s = Session::new(rt.clone(), 6).unwrap();
        s.set_inner(Inner::GaussNewton { damping: 0.5 }).unwrap();
        s.observe(&x, &y, 6).unwrap();
        // A session given the same parameters through a saved state (which materialises W).
        let mut buf = vec![0u8; 4096];
        let len = s.save_state(&mut buf).unwrap();
        let mut fresh = Session::new(rt, 6).unwrap();
        fresh.load_state(&buf[..len]).unwrap();
        let (mut a, mut b) = (vec![0.0; 18], vec![0.0; 18]);
        s.predict(&x, 6, &mut a).unwrap();
        fresh.predict(&x, 6, &mut b).unwrap();
        assert_eq!(a, b, "predict after observe uses the current v");
        // Adapting (SGD) after a stream also starts from it.
        let (mut s2, mut f2) = (vec![0.0; 18], vec![0.0; 18]);
        s.set_inner(Inner::Sgd).unwrap();
        fresh.set_inner(Inner::Sgd).unwrap();
        s.refine(&x, &y, 6).unwrap();
        fresh.refine(&x, &y, 6).unwrap();
        s.predict(&x, 6, &mut s2).unwrap();
        fresh.predict(&x, 6, &mut f2).unwrap();
        assert_eq!(s2, f2, "refine after observe starts from the current v");

        // U scaled to 1e30, inputs of 1e-10, targets of 1e30: fitting them needs v near
        // 1e10, finite, but W = U v near 1e40 overflows f32.
        let mut rec = linear_model(false);
        for u in rec.layers[0].shared[0].iter_mut() {
            *u *= 1e30;
        }
        let rt = RtModel::new(&rec).unwrap();
        let mut s = Session::new(rt, 2).unwrap();
        s.set_inner(Inner::GaussNewton { damping: 1.0 }).unwrap();
        let before = params(&s);
        let tiny = [1e-10f32; 5];
        let err = s.observe(&tiny, &[1e30, -1e30, 1e30], 1).unwrap_err();
        assert!(
            matches!(err, crate::error::Error::Diverged(_)),
            "an overflowing W is refused: {err}"
        );
        assert_eq!(params(&s), before, "a refused observe changes nothing");
        let mut out = [0.0f32; 3];
        s.predict(&[1.0; 5], 1, &mut out).unwrap();
        assert!(out.iter().all(|v| v.is_finite()), "{out:?}");
    }

    #[test]
    fn forgetting_tracks_a_change_and_bad_calls_change_nothing() {
        let rt = RtModel::new(&linear_model(true)).unwrap();
        let mut rng = Rng::new(42);
        // Two tasks: targets from two different random linear maps of the inputs.
        let maps: Vec<Vec<f64>> = (0..2).map(|_| rng.normals(15, 1.0)).collect();
        let task = |m: &[f64], n: usize, rng: &mut Rng| {
            let x: Vec<f32> = rng.normals(n * 5, 1.0).iter().map(|&v| v as f32).collect();
            let y: Vec<f32> = x
                .chunks(5)
                .flat_map(|r| {
                    (0..3).map(move |o| (0..5).map(|i| m[o * 5 + i] as f32 * r[i]).sum::<f32>())
                })
                .collect();
            (x, y)
        };
        let mut errors = Vec::new();
        for gamma in [1.0f32, 0.9] {
            let mut s = Session::new(rt.clone(), 8).unwrap();
            s.set_inner(Inner::GaussNewton { damping: 1.0 }).unwrap();
            s.set_forgetting(gamma).unwrap();
            let (xa, ya) = task(&maps[0], 200, &mut Rng::new(1));
            let (xb, yb) = task(&maps[1], 100, &mut Rng::new(2));
            s.observe(&xa, &ya, 200).unwrap();
            s.observe(&xb, &yb, 100).unwrap();
            let (xt, yt) = task(&maps[1], 50, &mut Rng::new(3));
            let mut out = vec![0.0; 150];
            s.predict(&xt, 50, &mut out).unwrap();
            let mse: f32 = out
                .iter()
                .zip(&yt)
                .map(|(p, t)| (p - t).powi(2))
                .sum::<f32>()
                / 150.0;
            errors.push(mse);
        }
        assert!(
            errors[1] < 0.1 * errors[0],
            "forgetting tracks the new task: {errors:?}"
        );

        let mut s = Session::new(rt, 4).unwrap();
        let (x, y) = data(3, &mut rng);
        assert!(s.observe(&x, &y, 3).is_err(), "needs Gauss-Newton");
        // A long stream that never excites some directions: the forgetting factor must
        // not wind their variance up (capped at the prior's), and every call succeeds.
        let mut w = Session::new(s.model().clone(), 4).unwrap();
        w.set_inner(Inner::GaussNewton { damping: 1.0 }).unwrap();
        w.set_forgetting(0.9).unwrap();
        let flat: Vec<f32> = (0..5).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
        for _ in 0..20_000 {
            w.observe(&flat, &[0.5, -0.25, 1.0], 1).unwrap();
        }
        let mut out = [0.0f32; 3];
        w.predict(&flat, 1, &mut out).unwrap();
        assert!((out[0] - 0.5).abs() < 1e-3, "{out:?}");
        // A robot's stream: 1 kHz samples of a slow trajectory (consecutive inputs nearly
        // equal), noisy targets, gamma = 0.995. Rounding must not break the covariance:
        // before it was kept exactly symmetric, this stream was refused after ~6000
        // examples (as the closed-loop Panda's was, every ~6 s).
        let mut r = Session::new(s.model().clone(), 4).unwrap();
        r.set_inner(Inner::GaussNewton { damping: 1.0 }).unwrap();
        r.set_forgetting(0.995).unwrap();
        let mut noise = Rng::new(43);
        for k in 0..30_000 {
            let t = k as f64 * 1e-3;
            let x: Vec<f32> = (0..5)
                .map(|i| ((0.3 + 0.2 * i as f64) * t + i as f64).sin() as f32)
                .collect();
            let y: Vec<f32> = (0..3)
                .map(|o| {
                    let clean: f64 = (0..5).map(|i| maps[0][o * 5 + i] * x[i] as f64).sum();
                    (clean + 0.05 * noise.normals(1, 1.0)[0]) as f32
                })
                .collect();
            r.observe(&x, &y, 1)
                .unwrap_or_else(|e| panic!("example {k} refused: {e}"));
        }
        s.set_inner(Inner::GaussNewton { damping: 1.0 }).unwrap();
        for bad in [0.0, -0.5, 1.5, f32::NAN] {
            assert!(s.set_forgetting(bad).is_err());
        }
        s.observe(&x, &y, 3).unwrap();
        let before = params(&s);
        let mut nan = y.clone();
        nan[2] = f32::NAN;
        assert!(s.observe(&x, &nan, 3).is_err());
        assert!(s.observe(&x, &y[1..], 3).is_err());
        assert_eq!(params(&s), before, "refused calls change nothing");
    }
}
