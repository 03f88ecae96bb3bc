//! Tests of the training library.

use burn::tensor::{DType, Tensor};
use msr_runtime::Model;

use crate::learner::proto_logits;
use crate::models::ModelKind;
use crate::tasks::Problem;

use super::*;

pub(super) fn small(model: ModelKind) -> TrainConfig {
    let mut c = TrainConfig::new(Problem::Rank1, model);
    c.steps = 6;
    c.tasks_per_step = 4;
    c
}

pub(super) fn flat(t: &Trainer) -> Vec<u32> {
    t.record()
        .layers
        .iter()
        .flat_map(|l| {
            l.shared
                .iter()
                .chain(&l.adapted0)
                .flatten()
                .copied()
                .chain([l.lr])
                .map(f32::to_bits)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn same_seed_same_result_and_resume_is_exact() {
    let dir = std::env::temp_dir().join(format!("msr-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = dir.join("checkpoint.bin");

    let mut a = Trainer::new(small(ModelKind::MsrFc)).unwrap();
    let mut b = Trainer::new(small(ModelKind::MsrFc)).unwrap();
    for _ in 0..6 {
        a.outer_step();
    }
    for _ in 0..3 {
        b.outer_step();
    }
    assert_ne!(flat(&a), flat(&b), "training must change the parameters");
    b.save_checkpoint(&ck).unwrap();
    drop(b);
    let mut c = Trainer::resume(&ck, Some(&small(ModelKind::MsrFc))).unwrap();
    assert_eq!(c.step, 3);
    for _ in 0..3 {
        c.outer_step();
    }
    assert_eq!(
        flat(&a),
        flat(&c),
        "resumed run must equal the uninterrupted one"
    );

    // A run may be continued at another outer learning rate (a manual schedule): a
    // checkpoint asked for with another rate is accepted and keeps its own until told.
    let mut slower = small(ModelKind::MsrFc);
    slower.outer_lr /= 10.0;
    let mut d = Trainer::resume(&ck, Some(&slower)).unwrap();
    assert_eq!(d.config.outer_lr, small(ModelKind::MsrFc).outer_lr);
    assert!(d.set_outer_lr(f64::NAN).is_err());
    d.set_outer_lr(slower.outer_lr).unwrap();
    assert_eq!(d.config.outer_lr, slower.outer_lr);
    let start = flat(&d);
    for _ in 0..3 {
        d.outer_step();
    }
    let moved = |x: &[u32]| -> f64 {
        x.iter()
            .zip(&start)
            .map(|(a, b)| f64::from(f32::from_bits(*a) - f32::from_bits(*b)).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (full, tenth) = (moved(&flat(&c)), moved(&flat(&d)));
    assert!(
        tenth > 0.0 && tenth < 0.5 * full,
        "a tenth of the rate must move the parameters less: {tenth} vs {full}"
    );

    let mut other = small(ModelKind::MsrFc);
    other.seed = 9;
    let e = Trainer::resume(&ck, Some(&other))
        .err()
        .expect("config mismatch");
    assert!(e.to_string().contains("another configuration"), "{e}");
    assert!(e.to_string().contains("seed (0 vs 9)"), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");

    // A CRC-valid checkpoint with an out-of-range field is refused by name.
    let mut bad = small(ModelKind::MsrFc);
    bad.inner_steps = usize::MAX;
    let mut t = Trainer::new(small(ModelKind::MsrFc)).unwrap();
    t.config = bad;
    t.save_checkpoint(&ck).unwrap();
    let e = Trainer::resume(&ck, None)
        .err()
        .expect("out-of-range checkpoint");
    assert!(e.to_string().contains("inner_steps"), "{e}");
    Trainer::new(small(ModelKind::MsrFc))
        .unwrap()
        .save_checkpoint(&ck)
        .unwrap();

    let mut bytes = std::fs::read(&ck).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&ck, &bytes).unwrap();
    let e = Trainer::resume(&ck, None)
        .err()
        .expect("corrupt checkpoint");
    assert!(e.to_string().contains("corrupt"), "{e}");
    std::fs::write(&ck, b"hello").unwrap();
    assert!(Trainer::resume(&ck, None).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_model_trains_and_first_order_differs_from_exact() {
    for kind in [
        ModelKind::MsrFc,
        ModelKind::MamlFc,
        ModelKind::MamlLc,
        ModelKind::MamlConv,
    ] {
        let mut t = Trainer::new(small(kind)).unwrap();
        let l = t.outer_step();
        assert!(l.is_finite() && l > 0.0, "{kind}: {l}");
    }
    let mut exact = Trainer::new(small(ModelKind::MsrFc)).unwrap();
    let mut cfg = small(ModelKind::MsrFc);
    cfg.first_order = true;
    let mut first = Trainer::new(cfg).unwrap();
    exact.outer_step();
    first.outer_step();
    assert_ne!(flat(&exact), flat(&first));
}

#[test]
fn evaluation_through_the_runtime_matches_the_trained_model() {
    let mut t = Trainer::new(small(ModelKind::MsrFc)).unwrap();
    t.outer_step();
    let bytes = t.record().to_bytes();
    let model = Model::from_bytes(&bytes, &msr_runtime::device::cpu()).unwrap();
    let a = evaluate(&model, t.family(), 20, 1, 19, 1).unwrap();
    let b = evaluate(&model, t.family(), 20, 1, 19, 1).unwrap();
    assert_eq!(a.loss, b.loss);
    assert!(a.loss.is_finite() && a.ci95 > 0.0);
}

pub(super) fn glyph_config(model: ModelKind) -> TrainConfig {
    let mut c = TrainConfig::new(Problem::Glyphs, model);
    c.problem = crate::tasks::TaskSource::Glyphs { mini: true };
    (c.ways, c.support, c.query) = (5, 5, 10);
    (c.channels, c.tasks_per_step, c.steps) = (4, 2, 3);
    c.augment_query = true;
    c
}

#[test]
fn every_classifier_trains_and_anil_and_protonets_keep_their_inner_loop_off() {
    for kind in [
        ModelKind::MsrConv,
        ModelKind::MamlConv,
        ModelKind::Anil,
        ModelKind::ProtoNet,
    ] {
        let mut t = Trainer::new(glyph_config(kind)).unwrap();
        let before = t.record();
        for _ in 0..3 {
            let l = t.outer_step();
            assert!(l.is_finite() && l > 0.0, "{kind}: {l}");
        }
        let after = t.record();
        let n = after.layers.len();
        for (l, (a, b)) in before.layers.iter().zip(&after.layers).enumerate() {
            let adapts = kind.adapts(l, n) && !b.adapted0.is_empty();
            // Layers that do not adapt keep a zero learning rate, untouched by Adam;
            // their weights are still meta-learned.
            assert_eq!(b.lr == 0.0, !adapts, "{kind} layer {l}: lr {}", b.lr);
            if !adapts {
                assert_eq!(a.lr, b.lr, "{kind} layer {l}");
            }
            if !b.adapted0.is_empty() {
                assert_ne!(
                    a.adapted0, b.adapted0,
                    "{kind} layer {l} must be meta-learned"
                );
            }
        }
        let e = t.evaluate(6).unwrap();
        let acc = e.accuracy.expect("classification reports accuracy");
        assert!((0.0..=1.0).contains(&acc) && e.accuracy_ci95.is_some());
    }
    // MSR-Conv's Kronecker factors start at the identity and are meta-learned.
    let mut t = Trainer::new(glyph_config(ModelKind::MsrConv)).unwrap();
    let a0 = t.record().layers[1].shared.clone();
    t.outer_step();
    assert_ne!(a0, t.record().layers[1].shared);
    assert!(Trainer::new(glyph_config(ModelKind::MsrFc)).is_err());
}

#[test]
fn prototype_logits_are_minus_squared_distances_to_class_means() {
    let device = msr_runtime::device::cpu();
    let t = Trainer::new(glyph_config(ModelKind::ProtoNet)).unwrap();
    let model = Model::from_record(&t.record(), &device, DType::F32).unwrap();
    let fam = t.family();
    let batch = fam.batch(&fam.test_ids(1), 5, 10);
    let b = DeviceBatch::new(&batch, fam.input_len(), fam.output_len(), &device);
    let logits = proto_logits(model.net(), model.params(), &b);
    assert_eq!(logits.dims(), [1, 10, 5]);
    let got: Vec<f64> = logits.to_data().convert::<f64>().iter::<f64>().collect();
    // Independent computation on the host from the embeddings.
    let task = model.initial(1);
    let emb = |x: Tensor<3>| -> Vec<Vec<f64>> {
        let e = model.predict(&task, x).unwrap();
        let d = e.dims()[2];
        let v: Vec<f64> = e.to_data().convert::<f64>().iter::<f64>().collect();
        v.chunks(d).map(|c| c.to_vec()).collect()
    };
    let (es, eq) = (emb(b.xs.clone()), emb(b.xq.clone()));
    let label = |y: &[f32]| y.iter().position(|&v| v == 1.0).unwrap();
    let d = es[0].len();
    let mut protos = vec![vec![0.0; d]; 5];
    for (i, e) in es.iter().enumerate() {
        let c = label(&batch.ys[i * 5..i * 5 + 5]);
        for (p, v) in protos[c].iter_mut().zip(e) {
            *p += v; // one shot: the mean is the example
        }
    }
    for (q, e) in eq.iter().enumerate() {
        for (c, p) in protos.iter().enumerate() {
            let want: f64 = -e.iter().zip(p).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
            let g = got[q * 5 + c];
            assert!(
                (g - want).abs() <= 1e-3 * want.abs().max(1.0),
                "{g} vs {want}"
            );
        }
    }
}

/// Normalisation belongs to the model: a model trained on data in units a thousand times
/// larger (inputs and targets) predicts the same, relative to those units, as one trained on
/// the original data, through the real-time engine (the C ABI's).
#[test]
fn units_do_not_matter() {
    use crate::tasks::npz::{Array, write_npz};
    use msr_runtime::realtime::{RtModel, Session};
    let dir = std::env::temp_dir().join(format!("msr-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let family = crate::tasks::Family::new(Problem::Cartpole);
    let (fi, fo, ex) = (5, 2, 30);
    let mut ids = family.train_ids(0, 0, 40);
    ids.extend(family.test_ids(10));
    let b = family.batch(&ids, ex, 0);
    let split: Vec<i64> = (0..50)
        .map(|t| (t >= 40) as i64 + (t >= 45) as i64)
        .collect();
    let mut runs = Vec::new();
    for scale in [1.0f32, 1000.0] {
        let x: Vec<f32> = b.xs.iter().map(|v| v * scale).collect();
        let y: Vec<f32> = b.ys.iter().map(|v| v * scale).collect();
        let path = dir.join(format!("cartpole-{scale}.npz"));
        write_npz(
            &path,
            &[
                ("x", &[50, ex, fi], Array::F32(&x)),
                ("y", &[50, ex, fo], Array::F32(&y)),
                ("split", &[50], Array::I64(&split)),
            ],
        )
        .unwrap();
        let source: crate::tasks::TaskSource = format!("npz:{}", path.display()).parse().unwrap();
        let mut c = TrainConfig::new(source, ModelKind::MsrMlp);
        assert_eq!(c.normalize, Normalize::Standard);
        (c.support, c.query, c.tasks_per_step, c.hidden) = (10, 20, 8, vec![16]);
        let mut t = Trainer::new(c).unwrap();
        for _ in 0..30 {
            t.outer_step();
        }
        // Adapt on 10 examples of a test task, predict 20, in the run's units.
        let rt = RtModel::new(&t.record()).unwrap();
        let mut s = Session::new(rt, 16).unwrap();
        let task = 49;
        let at = |v: &[f32], f: usize, from: usize, n: usize| {
            v[(task * ex + from) * f..(task * ex + from + n) * f].to_vec()
        };
        s.adapt(&at(&x, fi, 0, 10), &at(&y, fo, 0, 10), 10).unwrap();
        let mut out = vec![0.0; 20 * fo];
        s.predict(&at(&x, fi, 10, 20), 20, &mut out).unwrap();
        runs.push(out.iter().map(|v| v / scale).collect::<Vec<f32>>());
    }
    let (a, b) = (&runs[0], &runs[1]);
    let num: f64 = a.iter().zip(b).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|p| (*p as f64).powi(2)).sum();
    let rel = (num / den).sqrt();
    eprintln!("trained in raw and in 1000x units: relative difference {rel:e}");
    assert!(rel < 1e-4, "relative difference {rel:e}");
    assert!(den > 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
