//! The C ABI (the real-time engine, with the model's standardisation) predicts what
//! `trainer predict` (the burn path) predicts, on the generated cartpole family, in raw
//! units: a C integration can diff its output against `trainer predict`'s.

// Every unsafe call below passes buffers this test owns, with their true lengths.
#![allow(clippy::undocumented_unsafe_blocks)]

use std::ptr;

use msr::*;
use msr_runtime::Model;
use msr_trainer::models::ModelKind;
use msr_trainer::predict::adapt_predict;
use msr_trainer::tasks::{Family, Problem};
use msr_trainer::train::{TrainConfig, Trainer};

#[test]
fn c_abi_predictions_equal_trainer_predict() {
    let mut config = TrainConfig::new(Problem::Cartpole, ModelKind::MsrMlp);
    (config.support, config.query, config.inner_steps) = (10, 20, 3);
    config.hidden = vec![32, 32];
    config.activation = msr_runtime::Activation::Tanh;
    let mut t = Trainer::new(config).unwrap();
    for _ in 0..60 {
        t.outer_step();
    }
    let bytes = t.record().to_bytes();
    assert!(
        t.record().ext.normalizer.is_some(),
        "cartpole is standardised"
    );
    let model = Model::from_bytes(&bytes, &msr_runtime::device::cpu()).unwrap();

    let mut m = ptr::null_mut();
    assert_eq!(
        unsafe { msr_model_load_bytes(bytes.as_ptr(), bytes.len(), &mut m) },
        msr_status::MSR_OK
    );
    let mut s = ptr::null_mut();
    assert_eq!(
        unsafe { msr_session_new(m, ptr::null(), &mut s) },
        msr_status::MSR_OK
    );

    let family = Family::new(Problem::Cartpole);
    let (mut worst, mut checked) = (0.0f64, 0);
    for (i, &id) in family.test_ids(20).iter().enumerate() {
        let support = [1, 5, 10, 50][i % 4];
        let b = family.batch(&[id], support, 40);
        let reference = adapt_predict(&model, &b.xs, &b.ys, support, &b.xq, 40, 3).unwrap();
        let mut out = vec![0.0f32; 40 * 2];
        let mut loss = 0.0f32;
        let st = unsafe {
            msr_session_adapt(
                s,
                b.xs.as_ptr(),
                b.xs.len(),
                b.ys.as_ptr(),
                b.ys.len(),
                support,
                &mut loss,
            )
        };
        assert_eq!(st, msr_status::MSR_OK, "task {id}");
        let st = unsafe {
            msr_session_predict(
                s,
                b.xq.as_ptr(),
                b.xq.len(),
                40,
                out.as_mut_ptr(),
                out.len(),
            )
        };
        assert_eq!(st, msr_status::MSR_OK);
        let num: f64 = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
        worst = worst.max((num / den).sqrt());
        checked += 1;
    }
    eprintln!(
        "C ABI vs trainer predict on {checked} cartpole tasks: worst relative difference {worst:e}"
    );
    assert!(worst < 1e-5, "relative difference {worst:e}");
    unsafe { msr_session_free(&mut s) };
    unsafe { msr_model_free(&mut m) };
}
