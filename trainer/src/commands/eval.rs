//! `trainer eval`: a model file evaluated through the runtime on test tasks.

use std::path::PathBuf;

use clap::Args;
use msr_runtime::Model;
use msr_trainer::tasks::Family;
use msr_trainer::train::evaluate;

use crate::*;

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Task family (default: the one the model was trained on).
    #[arg(long)]
    problem: Option<String>,
    /// Test tasks.
    #[arg(long, default_value_t = 300)]
    tasks: usize,
    /// Support examples per task; on glyphs: per class (shots).
    #[arg(long, default_value_t = 1)]
    support: usize,
    #[command(flatten)]
    episodes: EpisodeArgs,
    /// Augment the query examples (random rotations, flips and resizes), as Aug-Omniglot's
    /// test episodes.
    #[arg(long)]
    augment_query: bool,
    /// Inner steps (default: the model's).
    #[arg(long)]
    inner_steps: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Where to compute: cpu, gpu or gpu:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub(crate) fn eval(args: EvalArgs) -> Result<()> {
    let device = msr_runtime::device::by_name(&args.device)?;
    let model = Model::load(&args.model, &device)?;
    let problem = args
        .problem
        .unwrap_or_else(|| model.info().task_family.clone());
    let family = Family::open(&problem)?;
    let family = if family.is_classification() {
        let outputs = model.net().output_len();
        if !msr_trainer::models::embeds(model.spec()) && outputs != args.episodes.ways {
            return Err(format!(
                "{} is a {outputs}-way classifier; pass --ways {outputs}",
                args.model.display()
            )
            .into());
        }
        family.with_episodes(args.episodes.ways, args.augment_query)?
    } else {
        family
    };
    let (support, query) = split_sizes(&family, args.support, args.episodes)?;
    let steps = args
        .inner_steps
        .unwrap_or(model.info().inner_steps as usize);
    let r = evaluate(&model, &family, args.tasks, support, query, steps)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else if let (Some(a), Some(ci)) = (r.accuracy, r.accuracy_ci95) {
        println!(
            "{} on {problem}, {}-way {}-shot{}: test accuracy {:.2}% ± {:.2}% (95% CI, {} episodes, {} inner step(s))",
            model.info().name,
            family.ways(),
            args.support,
            if args.augment_query {
                ", augmented queries"
            } else {
                ""
            },
            100.0 * a,
            100.0 * ci,
            r.tasks,
            r.inner_steps
        );
    } else {
        println!(
            "{} on {problem}: test MSE {:.4} ± {:.4} (95% CI, {} tasks, {} inner step(s))",
            model.info().name,
            r.mse,
            r.ci95,
            r.tasks,
            r.inner_steps
        );
    }
    Ok(())
}
