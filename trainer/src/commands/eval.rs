//! `trainer eval`: a model file evaluated through the runtime on test tasks.

use std::path::PathBuf;

use clap::Args;
use msr_runtime::Model;
use msr_trainer::tasks::Family;
use msr_trainer::train::{
    InnerKind, evaluate_on, evaluate_realtime_refined, evaluate_references, trained_config,
};

use msr_trainer::learner::Learner;

use crate::*;

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Task family (default: the one the model was trained on).
    #[arg(long)]
    problem: Option<String>,
    /// Test tasks: a task file's are all used by default, this takes a random subset
    /// (seeded by --seed); a generated family's first N (default 300).
    #[arg(long)]
    tasks: Option<usize>,
    /// Seed of the random subset of --tasks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate on the validation tasks (the first --tasks of them, default 300) instead of
    /// the test tasks: to choose a setting such as --damping without looking at the test set.
    #[arg(long)]
    validation: bool,
    /// Support examples per task; on glyphs: per class (shots).
    #[arg(long, default_value_t = 1)]
    support: usize,
    /// Query examples per task (regression; default: the task's examples after the
    /// support ones: 20 - K on the generated families, which can generate more).
    #[arg(long)]
    query: Option<usize>,
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
    /// Adapt through the real-time engine (what libmsr runs: an adaptation that diverges
    /// is rolled back, counted and reported) or the burn path (meta-training's, with no
    /// rollback: an exploded adaptation is averaged as it is) [default: realtime; burn for
    /// prototypical networks, which do not adapt].
    #[arg(long)]
    engine: Option<String>,
    /// Where to compute: cpu, gpu or gpu:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Adapt with this algorithm instead of the model's: sgd, gn (damped Gauss-Newton, e.g.
    /// on a model meta-trained through SGD), or sgd+gn (the model's SGD steps, then
    /// --gn-steps damped Gauss-Newton steps from where they ended, on the same support
    /// set). Runs on the real-time engine. [default: the model's; sgd+gn for a model
    /// meta-trained through sgd+gn]
    #[arg(long)]
    inner: Option<String>,
    /// With --inner gn or sgd+gn: scales the model's per-layer dampings (1 for a model
    /// meta-trained through SGD, which has none). [default: 1; the trained one for a model
    /// meta-trained through sgd+gn]
    #[arg(long)]
    damping: Option<f32>,
    /// With --inner sgd+gn: the Gauss-Newton steps after the SGD ones. [default: the
    /// model's (its refine record), else 1]
    #[arg(long)]
    gn_steps: Option<usize>,
}

pub(crate) fn eval(args: EvalArgs) -> Result<()> {
    let device = msr_runtime::device::by_name(&args.device)?;
    let model = Model::load(&args.model, &device)?;
    let record = model.to_record();
    let trained = trained_config(&record);
    let problem = args
        .problem
        .unwrap_or_else(|| model.info().task_family.clone());
    let family = Family::open(&problem)?;
    let family = if family.is_classification() {
        let outputs = model.net().output_len();
        if Learner::of_spec(model.spec(), 0).adapts() && outputs != args.episodes.ways {
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
    let (support, query) = split_sizes_with(&family, args.support, args.episodes, args.query)?;
    let steps = args
        .inner_steps
        .unwrap_or(model.info().inner_steps as usize);
    let (ids, subset) = if args.validation {
        (family.val_ids(args.tasks.unwrap_or(300)), false)
    } else {
        family.eval_ids(args.tasks, args.seed)
    };
    // A model meta-trained through SGD then Gauss-Newton adapts so unless told otherwise.
    // (Not when the burn engine is asked for: it adapts by the model's SGD alone.)
    // (Its `refine` record, or, in files written before that record, the run's
    // configuration.)
    let trained_refine = record
        .ext
        .refine
        .as_ref()
        .map(|r| (r.damping, r.steps as usize))
        .or_else(|| {
            trained
                .as_ref()
                .filter(|c| c.inner == InnerKind::SgdThenGaussNewton)
                .map(|c| (c.damping, 1))
        })
        .filter(|_| args.engine.as_deref() != Some("burn"));
    let inner_name = args.inner.as_deref().or(trained_refine.map(|_| "sgd+gn"));
    let damping = args
        .damping
        .or(trained_refine.map(|(d, _)| d))
        .unwrap_or(1.0);
    if let (None, Some((d, s))) = (&args.inner, trained_refine) {
        log::info!(
            "adapting as the model was meta-trained: SGD, then {s} Gauss-Newton step(s) (damping {d})"
        );
    }
    if args.gn_steps.is_some() && inner_name != Some("sgd+gn") {
        return Err("--gn-steps is for --inner sgd+gn".into());
    }
    let gn = msr_runtime::realtime::Inner::GaussNewton { damping };
    let trained_steps = trained_refine.map_or(1, |(_, s)| s);
    // sgd+gn as a device runs it by default (one adaptation: after an SGD divergence,
    // rolled back, no refinement).
    let inner = match inner_name {
        None => None,
        Some("sgd") => Some(msr_runtime::realtime::Inner::Sgd),
        Some("gn") => Some(gn),
        Some("sgd+gn") => match args.gn_steps.unwrap_or(trained_steps) {
            0 => return Err("--gn-steps must be at least 1".into()),
            steps => Some(msr_runtime::realtime::Inner::SgdThenGaussNewton { damping, steps }),
        },
        Some(other) => {
            return Err(
                format!("unknown inner loop '{other}' (available: sgd, gn, sgd+gn)").into(),
            );
        }
    };
    let adapts = Learner::of_spec(model.spec(), steps).adapts();
    let realtime = match args.engine.as_deref() {
        None => adapts,
        Some("burn") if inner.is_some() => {
            return Err("--inner runs on the real-time engine (--engine realtime)".into());
        }
        Some("realtime") => true,
        Some("burn") => false,
        Some(other) => {
            return Err(format!("unknown engine '{other}' (available: realtime, burn)").into());
        }
    };
    let r = if realtime {
        if !adapts {
            return Err("prototypical networks evaluate on the burn engine".into());
        }
        evaluate_realtime_refined(
            &model.to_record(),
            &family,
            &ids,
            support,
            query,
            steps,
            inner,
            None,
        )?
    } else {
        evaluate_on(&model, &family, &ids, support, query, steps)?
    };
    let references = evaluate_references(&family, &ids, support, query);
    let trained_support = trained.as_ref().map(|c| {
        if family.is_classification() {
            c.support / c.ways.max(1)
        } else {
            c.support
        }
    });
    let setting = format!(
        "support {}{}{}",
        args.support,
        match trained_support {
            Some(t) if t != args.support => format!(" (trained with {t})"),
            Some(_) => " (as trained)".to_string(),
            None => String::new(),
        },
        if subset {
            format!(
                "; a random subset of {} of the test tasks (seed {})",
                ids.len(),
                args.seed
            )
        } else {
            String::new()
        }
    );
    let split = if args.validation {
        "validation"
    } else {
        "test"
    };
    if args.json {
        let mut v = serde_json::to_value(&r)?;
        v["support"] = args.support.into();
        v["trained_support"] = trained_support.into();
        v["subset"] = subset.into();
        v["split"] = split.into();
        v["engine"] = if realtime { "realtime" } else { "burn" }.into();
        if realtime {
            let (name, damping) = match inner {
                Some(msr_runtime::realtime::Inner::GaussNewton { damping }) => {
                    ("gn", Some(damping))
                }
                Some(msr_runtime::realtime::Inner::SgdThenGaussNewton { damping, steps }) => {
                    v["gn_steps"] = steps.into();
                    ("sgd+gn", Some(damping))
                }
                Some(msr_runtime::realtime::Inner::Sgd) => ("sgd", None),
                None if model.gauss_newton() => ("gn", Some(1.0)),
                None => ("sgd", None),
            };
            v["inner"] = name.into();
            v["damping_scale"] = damping.into();
        }
        add_references(&mut v, references.as_ref());
        println!("{v}");
    } else if let (Some(a), Some(ci)) = (r.accuracy, r.accuracy_ci95) {
        println!(
            "{} on {problem}, {}-way {}-shot{}: {split} accuracy {:.2}% ± {:.2}% (95% CI, {} episodes, {} inner step(s); {setting})",
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
            "{} on {problem}: {split} MSE {} ± {} (95% CI, {} tasks, {} inner step(s); {setting})",
            model.info().name,
            small(r.loss),
            small(r.ci95),
            r.tasks,
            r.inner_steps
        );
        print_references(references.as_ref());
    }
    if !args.json && r.refused > 0 {
        println!(
            "  {} of {} adaptations refused as diverged (rolled back: counted with the unadapted model's predictions)",
            r.refused, r.tasks
        );
    }
    Ok(())
}

/// Adds a robot family's references to an evaluation's JSON: `nominal_mse`, `oracle_mse`
/// and their 95% CIs.
pub(crate) fn add_references(
    v: &mut serde_json::Value,
    references: Option<&(
        msr_trainer::train::EvalResult,
        msr_trainer::train::EvalResult,
    )>,
) {
    if let Some((nominal, oracle)) = references {
        v["nominal_mse"] = nominal.loss.into();
        v["nominal_ci95"] = nominal.ci95.into();
        v["oracle_mse"] = oracle.loss.into();
        v["oracle_ci95"] = oracle.ci95.into();
        v["nominal_per_output_mse"] = nominal.per_output_mse.clone().into();
        v["oracle_per_output_mse"] = oracle.per_output_mse.clone().into();
    }
}

/// Prints a robot family's references under an evaluation's line.
pub(crate) fn print_references(
    references: Option<&(
        msr_trainer::train::EvalResult,
        msr_trainer::train::EvalResult,
    )>,
) {
    if let Some((nominal, oracle)) = references {
        println!(
            "  on the same tasks: nominal model (no payload / no wind) MSE {:.4} ± {:.4}, physics oracle MSE {:.4} ± {:.4}",
            nominal.loss, nominal.ci95, oracle.loss, oracle.ci95
        );
    }
}

/// Four decimals, or three significant digits in scientific notation below 1e-3 (a
/// Gauss-Newton fit of rot8 is near 1e-5).
fn small(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}
