//! The real-time engine (msr-core) against the burn path, and its rollback and state
//! guarantees.

mod tests {
    use crate::error::{DataError, Error};
    use crate::format::{ModelInfo, ModelRecord};
    use crate::net::Net;
    use crate::realtime::{RtModel, Session};
    use crate::spec::{Activation, Loss, Op};
    use crate::test_support::{HostParams, Rng, layer_records, nets, rel_err, targets};
    use crate::{DType, Model, Tensor, TensorData};

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
