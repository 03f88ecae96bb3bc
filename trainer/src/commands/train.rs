//! `trainer train`: the run's configuration from the command line, then the library's run
//! loop (`msr_trainer::run`), on one process or, with the `mpi` feature, on every process of
//! an MPI job.

use std::fs;
use std::path::PathBuf;

use log::info;
use msr_trainer::models::ModelKind;
use msr_trainer::run::{RunOptions, RunOutcome};
use msr_trainer::tasks::{Family, TaskSource};
use msr_trainer::train::{TrainConfig, Trainer};

use crate::*;

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Task family: rank1, rank2, rank5, rot8, rot8-flip, cartpole, glyphs, glyphs-mini,
    /// panda-payload, quadrotor-wind (MuJoCo robots: feature `mujoco`, docs/robots.md), or
    /// npz:PATH (your own tasks: the file layout, splits and normalisation are in
    /// docs/data.md).
    #[arg(long)]
    pub(crate) problem: TaskSource,
    /// Meta-learner: msr-fc, maml-fc, maml-lc, maml-conv, msr-conv, and for any regression
    /// family msr-mlp, maml-mlp, anil-mlp, msr-head (a frozen body, an MSR head); on glyphs:
    /// maml-conv, msr-conv, anil, protonet.
    #[arg(long)]
    pub(crate) model: ModelKind,
    /// Hidden widths of msr-mlp, maml-mlp, anil-mlp and msr-head, comma-separated
    /// [default: 64,64].
    #[arg(long, value_delimiter = ',')]
    pub(crate) hidden: Option<Vec<usize>>,
    /// Activation after each hidden layer: relu, tanh or gelu.
    #[arg(long, default_value = "relu")]
    pub(crate) activation: msr_runtime::Activation,
    /// No biases (by default every regression model has adapted biases).
    #[arg(long)]
    pub(crate) no_bias: bool,
    /// Standardise inputs and targets with statistics of the training tasks, stored in the
    /// model (so it takes and returns raw units): standard or none [default: standard for
    /// task files and cartpole; none for the paper's N(0, 1) families and classification].
    #[arg(long)]
    pub(crate) normalize: Option<msr_trainer::train::Normalize>,
    /// Outer steps.
    #[arg(long, default_value_t = 1000)]
    pub(crate) steps: u64,
    /// Seed of initialisation and task sampling.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Output directory.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run in this directory from its checkpoint, with the same options except
    /// --steps (the new total), --outer-lr (a run may go on at a lower rate) and --shards (with
    /// more processes).
    #[arg(long, conflicts_with = "out")]
    pub(crate) resume: Option<PathBuf>,
    /// Start from this trained model's parameters instead of the seed's initialisation
    /// (a new run in --out: fresh optimizer, step 0), e.g. to fine-tune a model
    /// meta-trained through SGD through --inner sgd+gn. Same architecture and data options.
    #[arg(long, conflicts_with = "resume")]
    pub(crate) init: Option<PathBuf>,
    /// MSR latent size (default: 3 / 6 / 30 for rank1 / rank2 / rank5, 8 otherwise); for
    /// msr-mlp one value for every layer or one per layer, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) k: Option<Vec<usize>>,
    /// Inner steps (SGD or Gauss-Newton).
    #[arg(long, default_value_t = 1)]
    pub(crate) inner_steps: usize,
    /// The inner loop meta-trained through: sgd (meta-learned learning rates), gn
    /// (damped Gauss-Newton with meta-learned dampings: the support objective never rises
    /// with more steps; the test error can)
    /// or sgd+gn (--inner-steps SGD steps, then one Gauss-Newton step damped by --damping,
    /// fixed; the model is an SGD model that `trainer eval` refines so by default).
    #[arg(long, default_value = "sgd")]
    pub(crate) inner: msr_trainer::train::InnerKind,
    /// Initial damping of every layer, for --inner gn; the fixed damping, for --inner sgd+gn.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) damping: f32,
    /// Initial inner learning rate (meta-learned per layer).
    #[arg(long, default_value_t = 0.1)]
    pub(crate) inner_lr: f32,
    /// Adam learning rate [default: 1e-3; on --resume: the checkpoint's, or this one to
    /// continue at another rate].
    #[arg(long)]
    pub(crate) outer_lr: Option<f64>,
    /// Tasks per outer step.
    #[arg(long, default_value_t = 32)]
    pub(crate) tasks_per_step: usize,
    /// Support examples per task (the rest are queries); on glyphs: per class (shots).
    #[arg(long, default_value_t = 1)]
    pub(crate) support: usize,
    #[command(flatten)]
    pub(crate) episodes: EpisodeArgs,
    /// Augment the query examples of training episodes: random rotations, flips and resizes
    /// (the paper's Algorithm 2; classification only; the runtime never augments).
    #[arg(long)]
    pub(crate) augment_query: bool,
    /// Filters per conv block of the glyph nets.
    #[arg(long, default_value_t = 32)]
    pub(crate) channels: usize,
    /// Detach the inner gradient (first-order MAML).
    #[arg(long)]
    pub(crate) first_order: bool,
    /// Evaluate on the validation tasks every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub(crate) eval_every: u64,
    /// Validation tasks per evaluation.
    #[arg(long, default_value_t = 300)]
    pub(crate) eval_tasks: usize,
    /// Write a checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    pub(crate) checkpoint_every: u64,
    /// Where to compute: cpu, gpu (the first adapter) or gpu:N (needs the `wgpu` feature).
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// Define each step's meta-gradient as the sum of this many shards of its tasks, one
    /// backward pass each, added in shard order: the run's result then does not depend on
    /// how many processes share the shards (`mpirun -np N`, feature `mpi`). 1: one backward
    /// pass over all the tasks. A resumed run keeps its checkpoint's unless this is given (the
    /// meta-gradient is the same up to the order of float additions)
    #[arg(long)]
    pub(crate) shards: Option<usize>,
    /// The meta-gradient's engine: fast (hand-written, for nets of dense layers with SGD
    /// inner steps on the CPU) or burn (autodiff: every model and device) [default: fast
    /// where it applies]
    #[arg(long)]
    pub(crate) engine: Option<msr_trainer::train::GradEngine>,
    /// Threads of a fast step (its result does not depend on them) [default: the cores
    /// this process may run on]
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

/// Episode shape of the classification families (ignored by regression families).
#[derive(Args, Clone, Copy)]
pub(crate) struct EpisodeArgs {
    /// Classes per episode.
    #[arg(long, default_value_t = 5)]
    pub(crate) ways: usize,
    /// Query examples per class.
    #[arg(long, default_value_t = 5)]
    pub(crate) queries: usize,
}

pub(crate) fn train(args: TrainArgs) -> Result<RunOutcome> {
    let family = Family::from_source(&args.problem)?;
    let mut config = TrainConfig::new(args.problem.clone(), args.model);
    config.steps = args.steps;
    config.seed = args.seed;
    match args.k.as_deref() {
        Some([k]) => config.k = *k,
        Some(ks) => config.k_per_layer = ks.to_vec(),
        None => {}
    }
    if let Some(h) = &args.hidden {
        if !args.model.is_mlp() {
            return Err(format!(
                "--hidden is for msr-mlp, maml-mlp, anil-mlp and msr-head, not {}",
                args.model
            )
            .into());
        }
        config.hidden = h.clone();
    }
    config.activation = args.activation;
    config.bias = !args.no_bias;
    if let Some(n) = args.normalize {
        config.normalize = n;
    }
    config.inner_steps = args.inner_steps;
    config.inner = args.inner;
    config.damping = args.damping;
    config.inner_lr = args.inner_lr;
    if let Some(lr) = args.outer_lr {
        config.outer_lr = lr;
    }
    config.tasks_per_step = args.tasks_per_step;
    config.channels = args.channels;
    config.augment_query = args.augment_query;
    (config.support, config.query) = split_sizes(&family, args.support, args.episodes)?;
    if family.is_classification() {
        config.ways = args.episodes.ways;
    } else if args.augment_query {
        return Err("--augment-query is for the classification families (glyphs)".into());
    }
    config.first_order = args.first_order;

    let device = msr_runtime::device::by_name(&args.device)?;
    // Under mpirun (feature `mpi`; main initialised MPI): this process's place in the job.
    let collective = msr_trainer::train::shard::process_collective();
    let (dir, mut trainer) = match (&args.resume, &args.out) {
        (Some(dir), _) => {
            let mut t = Trainer::resume_on(&dir.join("checkpoint.bin"), Some(&config), device)?;
            if let Some(lr) = args.outer_lr {
                if collective.rank() == 0 && lr != t.config.outer_lr {
                    info!("outer learning rate {} -> {lr}", t.config.outer_lr);
                }
                t.set_outer_lr(lr)?;
            }
            // The same tasks and the same meta-gradient, summed in another order: a run
            // may go on with more processes than it started with.
            if let Some(s) = args.shards.filter(|&s| s != t.shards()) {
                if collective.rank() == 0 {
                    info!("gradient shards {} -> {s}", t.shards());
                }
                t.set_shards(s)?;
            }
            if collective.rank() == 0 {
                info!("resuming {} at step {}", dir.display(), t.step);
            }
            (dir.clone(), t)
        }
        (None, Some(dir)) => {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut t = match &args.init {
                Some(path) => {
                    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                    let record = msr_runtime::ModelRecord::from_bytes(&bytes)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    if collective.rank() == 0 {
                        info!("starting from {}", path.display());
                    }
                    Trainer::warm_start(config.clone(), &record, device)?
                }
                None => Trainer::on_device(config.clone(), device)?,
            };
            t.set_shards(args.shards.unwrap_or(1))?;
            (dir.clone(), t)
        }
        (None, None) => return Err("give --out DIR (or --resume DIR)".into()),
    };
    if collective.size() > 1 && trainer.shards() < collective.size() {
        return Err(format!(
            "{} processes but --shards {}: every process needs a shard (use --shards >= {})",
            collective.size(),
            trainer.shards(),
            collective.size()
        )
        .into());
    }
    if let Some(e) = args.engine {
        trainer.set_engine(e)?;
    }
    if let Some(n) = args.threads {
        trainer.set_threads(n);
    }
    if collective.rank() == 0 {
        info!("meta-gradient engine: {}", trainer.engine());
    }
    trainer.set_collective(collective);
    let opts = RunOptions {
        eval_every: args.eval_every,
        eval_tasks: args.eval_tasks,
        checkpoint_every: args.checkpoint_every,
    };
    Ok(msr_trainer::run::run(&mut trainer, &dir, &opts)?)
}

/// Support and query examples per task: for classification, `support` shots and
/// `queries` queries per class; for regression, `support` examples and the rest as queries.
pub(crate) fn split_sizes(
    family: &Family,
    support: usize,
    ep: EpisodeArgs,
) -> Result<(usize, usize)> {
    if family.is_classification() {
        let per_class = msr_trainer::tasks::glyphs::INSTANCES;
        if support == 0 || ep.queries == 0 || support + ep.queries > per_class {
            return Err(format!(
                "--support ({support}) and --queries ({}) must be positive and add up to at most {per_class} per class",
                ep.queries
            )
            .into());
        }
        return Ok((ep.ways * support, ep.ways * ep.queries));
    }
    let examples = family.examples_per_task();
    let query = examples
        .checked_sub(support)
        .filter(|&q| q > 0)
        .ok_or_else(|| format!("--support must be below the {examples} examples per task"))?;
    Ok((support, query))
}

/// [`split_sizes`], with an explicit number of query examples per task for regression
/// (`--query`): a generated family generates as many examples as asked; a task file has
/// what it has.
pub(crate) fn split_sizes_with(
    family: &Family,
    support: usize,
    ep: EpisodeArgs,
    query: Option<usize>,
) -> Result<(usize, usize)> {
    match query {
        Some(q) if !family.is_classification() => {
            let generated = family.file().is_none();
            let examples = family.examples_per_task();
            if support == 0 || q == 0 || q > 100_000 || support > 100_000 {
                return Err("--support and --query must be positive (at most 100000)".into());
            }
            if !generated && support + q > examples {
                return Err(format!(
                    "--support {support} + --query {q} exceed the file's {examples} examples per task"
                )
                .into());
            }
            Ok((support, q))
        }
        _ => split_sizes(family, support, ep),
    }
}
