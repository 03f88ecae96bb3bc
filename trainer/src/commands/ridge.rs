//! `trainer ridge`: the per-task ridge regression baseline on a regression family's test
//! tasks, its regularisation chosen on the validation tasks.

use clap::Args;
use msr_trainer::baselines::{RIDGE_LAMBDAS, ridge_eval};
use msr_trainer::models::ModelKind;
use msr_trainer::tasks::{Family, TaskSource};
use msr_trainer::train::{TrainConfig, evaluate_references, normalize};

use crate::*;

#[derive(Args)]
pub(crate) struct RidgeArgs {
    /// A regression family: rank1, rank2, rank5, cartpole, panda-payload, quadrotor-wind or
    /// npz:PATH.
    #[arg(long)]
    problem: TaskSource,
    /// Support examples per task (the rest are queries).
    #[arg(long, default_value_t = 10)]
    support: usize,
    /// Query examples per task (default: the task's examples after the support ones).
    #[arg(long)]
    query: Option<usize>,
    /// Test tasks (see `trainer eval --tasks`).
    #[arg(long)]
    tasks: Option<usize>,
    /// Seed of a random subset of test tasks, and of the training tasks the input
    /// statistics come from.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn ridge(args: RidgeArgs) -> Result<()> {
    let family = Family::from_source(&args.problem)?;
    if family.is_classification() {
        return Err("ridge regression is a regression baseline".into());
    }
    let (support, query) = split_sizes_with(
        &family,
        args.support,
        EpisodeArgs {
            ways: 0,
            queries: 0,
        },
        args.query,
    )?;
    // Inputs standardised with the training tasks' statistics, as a model would be.
    let mut config = TrainConfig::new(args.problem.clone(), ModelKind::MsrFc);
    (config.support, config.query, config.seed) = (support, query, args.seed);
    let stats = normalize::statistics(&family, &config).and_then(|n| n.input);
    let val = family.val_ids(100);
    let (lambda, val_mse) = RIDGE_LAMBDAS
        .iter()
        .map(|&l| {
            (
                l,
                ridge_eval(&family, &val, support, query, l, stats.as_ref()).loss,
            )
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("a non-empty grid");
    let (ids, subset) = family.eval_ids(args.tasks, args.seed);
    let r = ridge_eval(&family, &ids, support, query, lambda, stats.as_ref());
    let references = evaluate_references(&family, &ids, support, query);
    if args.json {
        let mut v = serde_json::to_value(&r)?;
        v["lambda"] = lambda.into();
        v["support"] = support.into();
        v["subset"] = subset.into();
        // Where each number comes from: lambda chosen on validation tasks, the MSE on test
        // tasks (never the same ones).
        v["split"] = "test".into();
        v["lambda_split"] = "validation".into();
        v["lambda_tasks"] = val.len().into();
        v["lambda_val_mse"] = val_mse.into();
        super::eval::add_references(&mut v, references.as_ref());
        println!("{v}");
    } else {
        println!(
            "per-task ridge on {}: test MSE {:.4} ± {:.4} (95% CI, {} tasks; support {support}; lambda {lambda:e}, chosen on {} validation tasks: {val_mse:.4})",
            args.problem,
            r.loss,
            r.ci95,
            r.tasks,
            val.len()
        );
        super::eval::print_references(references.as_ref());
    }
    Ok(())
}
