//! Tests of runs that adapt by Gauss-Newton (alone, or after SGD): their files, both
//! engines, checkpoints, and the refinement a device runs.

use burn::tensor::DType;
use msr_runtime::Model;

use crate::models::ModelKind;
use crate::tasks::Problem;

use super::tests::{flat, glyph_config, small};
use super::*;

/// A run meta-trained through Gauss-Newton: its file says so (the solver record, the
/// dampings), both engines adapt it alike, a checkpoint resumes it exactly.
#[test]
fn gauss_newton_runs_export_resume_and_evaluate_alike_on_both_engines() {
    let mut c = small(ModelKind::MsrFc);
    (c.inner, c.bias, c.damping) = (InnerKind::GaussNewton, false, 0.01);
    let mut t = Trainer::new(c.clone()).unwrap();
    for _ in 0..3 {
        t.outer_step();
    }
    let rec = t.record();
    let solver = rec.ext.solver.as_ref().expect("a solver record");
    assert_eq!(rec.layers[0].lr, 1.0, "lr is the on switch");
    let d = solver.log_damping[0];
    assert!(
        d.is_finite() && d != 0.01f32.ln(),
        "the damping is meta-learned: {d}"
    );
    let model = Model::from_record(&rec, &msr_runtime::device::cpu(), DType::F32).unwrap();
    assert!(model.gauss_newton());
    assert_eq!(model.to_record(), rec);

    let family = crate::tasks::Family::new(Problem::Rank1);
    let ids = family.val_ids(30);
    let burn = evaluate_on(&model, &family, &ids, 1, 19, 1).unwrap();
    let rt = evaluate_realtime(&rec, &family, &ids, 1, 19, 1).unwrap();
    let rel = (burn.loss - rt.loss).abs() / burn.loss;
    assert!(rel < 1e-3, "burn {} vs real-time {}", burn.loss, rt.loss);
    assert_eq!(rt.tasks, 30);

    let dir = std::env::temp_dir().join(format!("msr-gn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = dir.join("checkpoint.bin");
    t.save_checkpoint(&ck).unwrap();
    let mut r = Trainer::resume(&ck, Some(&c)).unwrap();
    t.outer_step();
    r.outer_step();
    assert_eq!(
        flat(&t),
        flat(&r),
        "resumed Gauss-Newton run equals the uninterrupted one"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// msr-head: a plain, frozen body (its layers' learning rates stay 0, their weights are
/// meta-learned) under an MSR head whose U is meta-learned and whose k coefficients adapt;
/// meta-trained through Gauss-Newton, both engines adapt it alike.
#[test]
fn msr_head_freezes_its_body_and_adapts_k_coefficients() {
    use msr_runtime::Op;
    let mut c = TrainConfig::new(Problem::Cartpole, ModelKind::MsrHead);
    (c.support, c.query, c.tasks_per_step, c.hidden, c.k) = (10, 20, 8, vec![16, 16], 4);
    (c.inner, c.damping) = (InnerKind::GaussNewton, 0.01);
    let mut t = Trainer::new(c).unwrap();
    let before = t.record();
    for _ in 0..5 {
        assert!(t.outer_step().is_finite());
    }
    let after = t.record();
    let ops: Vec<&Op> = after.net.layers.iter().map(|l| &l.op).collect();
    assert!(matches!(ops[0], Op::Linear { .. }) && matches!(ops[1], Op::Linear { .. }));
    assert!(matches!(
        ops[2],
        Op::ShareLinear {
            k: 4,
            bias: true,
            ..
        }
    ));
    for l in 0..2 {
        assert_eq!(after.layers[l].lr, 0.0, "body layer {l} does not adapt");
        assert_ne!(
            before.layers[l].adapted0, after.layers[l].adapted0,
            "but is meta-learned"
        );
    }
    assert_eq!(
        after.layers[2].lr, 1.0,
        "the head adapts (Gauss-Newton's on switch)"
    );
    assert_ne!(
        before.layers[2].shared, after.layers[2].shared,
        "U is meta-learned"
    );
    assert_eq!(after.layers[2].adapted0[0].len(), 4);
    let ids = t.family().test_ids(10);
    let model = Model::from_record(&after, &msr_runtime::device::cpu(), DType::F32).unwrap();
    let burn = evaluate_on(&model, t.family(), &ids, 10, 20, 1).unwrap();
    let rt = evaluate_realtime(&after, t.family(), &ids, 10, 20, 1).unwrap();
    assert!(
        (burn.loss - rt.loss).abs() < 1e-3 * burn.loss,
        "burn {} vs real-time {}",
        burn.loss,
        rt.loss
    );
}

/// `sgd+gn` evaluation: Gauss-Newton steps from where the SGD adaptation ended, the prior
/// centred there. Under an overwhelming damping they stay there (the SGD result exactly);
/// under a light one, on a model linear in v (msr-fc), they reach the support set's least
/// squares, the same answer as Gauss-Newton from the initialisation, whatever SGD did.
#[test]
fn gauss_newton_refinement_starts_where_sgd_ended() {
    use msr_runtime::realtime::Inner;
    let mut t = Trainer::new(small(ModelKind::MsrFc)).unwrap();
    for _ in 0..3 {
        t.outer_step();
    }
    let rec = t.record();
    let family = crate::tasks::Family::new(Problem::Rank1);
    let ids = family.val_ids(30);
    let eval = |inner, refine| {
        evaluate_realtime_refined(&rec, &family, &ids, 10, 20, 1, inner, refine).unwrap()
    };
    let sgd = eval(None, None);
    let stiff = eval(None, Some((1e9, 1)));
    let rel = (stiff.loss - sgd.loss).abs() / sgd.loss;
    assert!(
        rel < 1e-4,
        "SGD {} vs refined under 1e9 damping {}",
        sgd.loss,
        stiff.loss
    );
    let refined = eval(None, Some((1e-4, 3)));
    let gn = eval(Some(Inner::GaussNewton { damping: 1e-4 }), None);
    let rel = (refined.loss - gn.loss).abs() / gn.loss;
    assert!(
        rel < 1e-2,
        "least squares from SGD's end {} vs from the initialisation {} (SGD alone {})",
        refined.loss,
        gn.loss,
        sgd.loss
    );
    assert!(
        (refined.loss - sgd.loss).abs() > 0.05 * sgd.loss,
        "the refinement moved"
    );
}

/// `--inner sgd+gn`: meta-trained through SGD then one fixed-damping Gauss-Newton step
/// (burn, autodiff graph), the model gives the same query loss when a device adapts it so
/// (the real-time engine: SGD, then `set_inner(Gauss-Newton)` and `refine`), and not SGD's
/// alone; its file is an SGD model whose recorded configuration says how to refine.
/// `warm_start` carries an SGD run's parameters into such a run, and refuses a model of
/// another architecture.
#[test]
fn sgd_then_gauss_newton_is_meta_trained_as_a_device_adapts() {
    // rank1 (no standardisation: both losses in the same units), a tanh MLP.
    let mut c = TrainConfig::new(Problem::Rank1, ModelKind::MsrMlp);
    (c.support, c.query, c.tasks_per_step, c.hidden, c.k) = (10, 10, 8, vec![8], 4);
    (c.inner_steps, c.damping) = (2, 0.3);
    c.inner = InnerKind::SgdThenGaussNewton;
    let mut t = Trainer::new(c.clone()).unwrap();
    for _ in 0..4 {
        assert!(t.outer_step().is_finite());
    }
    let ids = t.family().val_ids(16);
    let batch = t.family().batch(&ids, c.support, c.query);
    let (sum, n) = t.summed_loss(&t.upload(&batch));
    let trained = sum.to_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0] / n;
    let device = t.evaluate(16).unwrap().loss;
    assert!(
        (trained - device).abs() < 1e-3 * device,
        "meta-training path {trained} vs the device's {device}"
    );
    let rec = t.record();
    let on = |inner, refine| {
        evaluate_realtime_refined(&rec, t.family(), &ids, c.support, c.query, 2, inner, refine)
            .unwrap()
            .loss
    };
    let sgd = on(Some(msr_runtime::realtime::Inner::Sgd), None);
    assert!(
        (sgd - device).abs() > 1e-2 * device,
        "the Gauss-Newton step moved: SGD alone {sgd} vs {device}"
    );
    // The file says how it adapts (a refine record): a session's default adaptation is
    // SGD then the Gauss-Newton step, the same bits as a device's explicit calls (adapt
    // by SGD, switch Gauss-Newton on, refine).
    assert!(rec.ext.solver.is_none(), "an SGD model file");
    assert_eq!(
        rec.ext.refine,
        Some(msr_runtime::format::Refine {
            steps: 1,
            damping: 0.3
        })
    );
    let default = on(None, None);
    let explicit = on(Some(msr_runtime::realtime::Inner::Sgd), Some((0.3, 1)));
    assert_eq!(default, explicit);
    assert_eq!(default, device);
    assert_eq!(
        trained_config(&rec).map(|c| c.inner),
        Some(InnerKind::SgdThenGaussNewton)
    );

    let mut plain = c.clone();
    plain.inner = InnerKind::Sgd;
    let mut s = Trainer::new(plain).unwrap();
    s.outer_step();
    let warm = Trainer::warm_start(c.clone(), &s.record(), msr_runtime::device::cpu()).unwrap();
    assert_eq!(
        flat(&warm),
        flat(&s),
        "the SGD run's parameters, learning rates included"
    );
    assert_eq!(warm.step, 0);
    let mut other = c.clone();
    other.hidden = vec![6];
    assert!(Trainer::warm_start(other, &s.record(), msr_runtime::device::cpu()).is_err());
    let mut gn = c.clone();
    gn.inner = InnerKind::GaussNewton;
    assert!(Trainer::warm_start(gn, &s.record(), msr_runtime::device::cpu()).is_err());
    // maml-mlp and anil-mlp build the same net; a model of one does not start the other.
    let mut maml = c.clone();
    (maml.model, maml.inner) = (ModelKind::MamlMlp, InnerKind::Sgd);
    let mut m = Trainer::new(maml.clone()).unwrap();
    m.outer_step();
    let mut anil = maml;
    anil.model = ModelKind::AnilMlp;
    let err = Trainer::warm_start(anil, &m.record(), msr_runtime::device::cpu())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a"), "{err}");
    // Refused configurations: sgd+gn on a classifier, an inner loop for protonets.
    let mut glyphs = glyph_config(ModelKind::MsrConv);
    glyphs.inner = InnerKind::SgdThenGaussNewton;
    let err = Trainer::new(glyphs).err().expect("refused");
    assert!(err.to_string().contains("regression"), "{err}");
    let mut proto = TrainConfig::new(Problem::Glyphs, ModelKind::ProtoNet);
    proto.inner = InnerKind::GaussNewton;
    assert!(proto.validate().is_err());
}
