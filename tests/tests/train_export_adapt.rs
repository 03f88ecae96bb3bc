//! Train -> export -> load from disk through the runtime -> adapt -> predict.

use msr_runtime::Model;
use msr_runtime::tensor::{DType, Tensor, TensorData};
use msr_trainer::models::ModelKind;
use msr_trainer::tasks::{Family, Problem};
use msr_trainer::train::{TrainConfig, Trainer, evaluate};

#[test]
fn a_trained_msr_model_adapts_after_a_round_trip_through_a_file() {
    let mut config = TrainConfig::new(Problem::Rank1, ModelKind::MsrFc);
    config.steps = 300;
    let mut trainer = Trainer::new(config).unwrap();
    for _ in 0..300 {
        trainer.outer_step();
    }
    let dir = std::env::temp_dir().join(format!("msr-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.msr");
    std::fs::write(&path, trainer.record().to_bytes()).unwrap();

    let device = msr_runtime::device::cpu();
    let model = Model::load(&path, &device).unwrap();
    assert_eq!(model.info().task_family, "rank1");
    let family = Family::new(Problem::Rank1);
    let adapted = evaluate(&model, &family, 100, 1, 19, 1).unwrap();
    let unadapted = evaluate(&model, &family, 100, 1, 19, 0).unwrap();
    assert!(
        adapted.loss < 0.5 * unadapted.loss,
        "adapting must help: {} vs {} without adapting",
        adapted.loss,
        unadapted.loss
    );

    // One task by hand: adapt on 1 example, predict 19, compare with the true convolution.
    let batch = family.batch(&family.test_ids(1), 1, 19);
    let t = |v: &Vec<f32>, n: usize, f: usize| {
        Tensor::<3>::from_data(TensorData::new(v.clone(), [1, n, f]), (&device, DType::F32))
    };
    let task = model
        .adapt(t(&batch.xs, 1, 70), t(&batch.ys, 1, 68), 1)
        .unwrap();
    let pred = model.predict(&task, t(&batch.xq, 19, 70)).unwrap();
    assert_eq!(pred.dims(), [1, 19, 68]);

    // Bad input is refused with a typed error, not a panic.
    let nan = t(&vec![f32::NAN; 70], 1, 70);
    assert!(matches!(
        model.adapt(nan, t(&batch.ys, 1, 68), 1),
        Err(msr_runtime::Error::Data(msr_runtime::DataError::NonFinite(
            _
        )))
    ));
    let wrong = t(&vec![0.0; 69], 1, 69);
    assert!(matches!(
        model.predict(&task, wrong),
        Err(msr_runtime::Error::Data(msr_runtime::DataError::Shape(_)))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
