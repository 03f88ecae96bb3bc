//! The fast meta-gradient against burn's, the reference, on every dense model kind,
//! activation, bias setting and inner-step count (f32, relative 1e-4); the trainer's
//! engine choice and threads.

use msr_runtime::Activation;
use msr_runtime::model::download;

use crate::models::ModelKind;
use crate::tasks::Problem;

use super::*;

/// A summed query loss and a meta-gradient per parameter tensor.
type LossAndGrad = (f64, Vec<Vec<f32>>);

/// burn's and the fast engine's summed query loss and meta-gradient on step 0's batch of
/// `c`, after `warm` outer steps (so that biases and learning rates are not at their
/// initial values).
fn both(c: &TrainConfig, warm: usize) -> (LossAndGrad, LossAndGrad) {
    let mut t = Trainer::new(c.clone()).unwrap();
    assert_eq!(t.engine(), GradEngine::Fast, "{} applies", c.model);
    for _ in 0..warm {
        t.outer_step();
    }
    let batch = train_batch(t.family(), &t.config, 0);
    let (total, _) = t.summed_loss(&t.upload(&batch));
    let grads = total.backward();
    let burn: Vec<Vec<f32>> = t.gradients(&grads).iter().map(download).collect();
    let burn_loss = total.into_scalar::<f64>();
    let fast = t.fast_grads(&t.standardized(&batch));
    ((burn_loss, burn), fast)
}

/// Every tensor within 1e-4 of its largest burn entry; the losses within 1e-5.
fn assert_close(c: &TrainConfig, warm: usize) {
    let ((bl, bg), (fl, fg)) = both(c, warm);
    let what = format!(
        "{} {:?} bias {} {} steps first order {}",
        c.model, c.activation, c.bias, c.inner_steps, c.first_order
    );
    assert!(
        (bl - fl).abs() <= 1e-5 * bl.abs().max(1e-6),
        "{what}: loss {bl} vs {fl}"
    );
    assert_eq!(bg.len(), fg.len(), "{what}");
    let mut some = false;
    for (i, (b, f)) in bg.iter().zip(&fg).enumerate() {
        assert_eq!(b.len(), f.len(), "{what}: tensor {i}");
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let err = b
            .iter()
            .zip(f)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err <= 1e-4 * scale.max(1e-6),
            "{what}: tensor {i} differs by {err} (scale {scale})"
        );
        some |= scale > 0.0;
    }
    assert!(some, "{what}: all-zero gradients compare nothing");
}

fn mlp(model: ModelKind, activation: Activation, bias: bool, steps: usize) -> TrainConfig {
    let mut c = TrainConfig::new(Problem::Rank1, model);
    (c.hidden, c.k, c.activation, c.bias) = (vec![12, 10], 4, activation, bias);
    (c.inner_steps, c.tasks_per_step, c.support, c.query) = (steps, 5, 6, 9);
    c
}

/// msr-mlp, maml-mlp, anil-mlp and msr-head: every activation, biases on and off, 1 to 3
/// inner steps.
#[test]
fn fast_meta_gradient_equals_burns_on_mlps() {
    let acts = [
        Activation::Tanh,
        Activation::Relu,
        Activation::Gelu,
        Activation::Identity,
    ];
    for model in [
        ModelKind::MsrMlp,
        ModelKind::MamlMlp,
        ModelKind::AnilMlp,
        ModelKind::MsrHead,
    ] {
        for (i, &a) in acts.iter().enumerate() {
            let steps = 1 + i % 3;
            assert_close(&mlp(model, a, i % 2 == 0, steps), 2);
        }
        assert_close(&mlp(model, Activation::Tanh, true, 3), 0);
    }
}

/// msr-fc and maml-fc (one layer), with and without bias, 1 and 3 inner steps; first
/// order equals burn's first order and differs from the exact gradient.
#[test]
fn fast_meta_gradient_equals_burns_on_single_layers_and_first_order() {
    for model in [ModelKind::MsrFc, ModelKind::MamlFc] {
        for (bias, steps) in [(true, 1), (false, 3)] {
            let mut c = TrainConfig::new(Problem::Rank1, model);
            (c.bias, c.inner_steps, c.tasks_per_step) = (bias, steps, 6);
            assert_close(&c, 2);
        }
    }
    let mut c = mlp(ModelKind::MsrMlp, Activation::Tanh, true, 2);
    c.first_order = true;
    assert_close(&c, 1);
    let first = both(&c, 1).1;
    c.first_order = false;
    let exact = both(&c, 1).1;
    assert_ne!(
        first.1[0], exact.1[0],
        "first order drops the Hessian terms"
    );
}

/// A few outer steps by either engine land on nearly the same parameters; the fast
/// engine's are bit-identical on 1 and 2 threads; convolutions refuse it.
#[test]
fn trainer_engines_agree_and_threads_do_not_matter() {
    let c = mlp(ModelKind::MsrMlp, Activation::Tanh, true, 2);
    let run = |engine: GradEngine, threads: usize| {
        let mut t = Trainer::new(c.clone()).unwrap();
        t.set_engine(engine).unwrap();
        t.set_threads(threads);
        let losses: Vec<f64> = (0..4).map(|_| t.outer_step()).collect();
        (losses, tests::flat(&t))
    };
    let (burn_losses, burn) = run(GradEngine::Burn, 1);
    let (fast_losses, fast1) = run(GradEngine::Fast, 1);
    let (_, fast2) = run(GradEngine::Fast, 2);
    assert_eq!(fast1, fast2, "1 and 2 threads");
    for (b, f) in burn_losses.iter().zip(&fast_losses) {
        assert!((b - f).abs() < 1e-4 * b, "loss {b} vs {f}");
    }
    let max_diff = burn
        .iter()
        .zip(&fast1)
        .map(|(b, f)| (f32::from_bits(*b) - f32::from_bits(*f)).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "parameters differ by {max_diff}");
    let mut conv = TrainConfig::new(Problem::Rank1, ModelKind::MamlConv);
    conv.steps = 1;
    let mut t = Trainer::new(conv).unwrap();
    assert_eq!(t.engine(), GradEngine::Burn);
    assert!(t.set_engine(GradEngine::Fast).is_err());
}
