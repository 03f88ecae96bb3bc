//! `trainer demo`: the README's end-to-end job on an embedded default.

use std::fs;
use std::path::Path;

use msr_runtime::{Model, ModelRecord};
use msr_trainer::inspect;
use msr_trainer::models::ModelKind;
use msr_trainer::run::RunOptions;
use msr_trainer::tasks::{Family, Problem};
use msr_trainer::train::{TrainConfig, Trainer, evaluate, evaluate_on};

use crate::*;

pub(crate) fn demo(steps: u64, out: &Path, seed: u64) -> Result<()> {
    let mut rows = Vec::new();
    for kind in [ModelKind::MsrFc, ModelKind::MamlFc] {
        let dir = out.join(kind.to_string());
        if dir.join("checkpoint.bin").exists() {
            fs::remove_file(dir.join("checkpoint.bin"))?;
            let _ = fs::remove_file(dir.join("metrics.jsonl"));
        }
        // The library's run loop, as `trainer train --problem rank1 --model KIND --steps N
        // --seed S` runs it (that command's defaults are TrainConfig's).
        let mut config = TrainConfig::new(Problem::Rank1, kind);
        config.steps = steps;
        config.seed = seed;
        fs::create_dir_all(&dir)?;
        let mut trainer = Trainer::new(config)?;
        let opts = RunOptions {
            eval_every: steps.max(1),
            eval_tasks: 300,
            checkpoint_every: steps.max(1),
        };
        let outcome = msr_trainer::run::run(&mut trainer, &dir, &opts)?;
        // Reload the exported file through the runtime, as a robot would, and evaluate.
        let path = outcome.dir.join("model.msr");
        let size = fs::metadata(&path)?.len();
        let model = Model::load(&path, &msr_runtime::device::cpu())?;
        let family = Family::new(Problem::Rank1);
        // The file holds exactly what was trained: reloaded, it must score what the run's
        // last (validation) evaluation scored.
        let v = evaluate_on(&model, &family, &family.val_ids(300), 1, 19, 1)?;
        if (v.loss - outcome.eval.loss).abs() > 1e-9 * outcome.eval.loss.abs().max(1.0) {
            return Err(format!(
                "reloaded {kind} scores {} but the trained one scored {}",
                v.loss, outcome.eval.loss
            )
            .into());
        }
        // The test tasks: never seen in training, nor in its periodic evaluations.
        let e = evaluate(&model, &family, 300, 1, 19, 1)?;
        rows.push((kind, e, outcome.steps_per_s, outcome.wall_s, size, path));
    }
    println!();
    println!(
        "rank1, {steps} outer steps, 32 tasks/step, 1 inner step, exact second order; 300 held-out tasks"
    );
    println!("| model   | test MSE (95% CI)  | outer steps/s | train wall s | model file |");
    println!("|---------|--------------------|---------------|--------------|------------|");
    for (kind, e, sps, wall, size, _) in &rows {
        println!(
            "| {:<7} | {:.4} ± {:.4}    | {:>13.1} | {:>12.1} | {:>7} B  |",
            kind.to_string(),
            e.loss,
            e.ci95,
            sps,
            wall,
            size
        );
    }
    let (_, _, _, _, _, msr_path) = &rows[0];
    let record = ModelRecord::from_bytes(&fs::read(msr_path)?)?;
    if let (Some(band), Some(random)) = (
        inspect::band_energy(&record),
        inspect::random_band_fraction(&record),
    ) {
        println!(
            "\nMSR-FC's learned U puts {:.1}% of W's energy on the 3-tap band (an unstructured U: {:.1}%).",
            band * 100.0,
            random * 100.0
        );
    }
    println!("models in {}", out.display());
    Ok(())
}
