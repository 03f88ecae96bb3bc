//! `trainer`: meta-train, evaluate, export, inspect and demo msr models.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

// The outer loop allocates and frees many short-lived tensors of a few hundred KB; glibc
// returns each to the OS (mmap/brk, page faults). mimalloc keeps them: see docs/results.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod commands;

use commands::demo::demo;
use commands::eval::{EvalArgs, eval};
use commands::plot::{PlotArgs, PlotLoopArgs, plot, plot_loop};
use commands::predict::{PredictArgs, predict};
use commands::ridge::{RidgeArgs, ridge};
use commands::tasks::{TasksArgs, tasks};
use log::info;
use msr_runtime::ModelRecord;
use msr_trainer::inspect;
use msr_trainer::models::ModelKind;
use msr_trainer::run::{RunOptions, RunOutcome};
use msr_trainer::tasks::{Family, TaskSource};
use msr_trainer::train::shard::Collective;
use msr_trainer::train::{TrainConfig, Trainer};

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "Meta-learn symmetries (MSR) offline and export .msr models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Meta-train a model; writes DIR/model.msr, DIR/metrics.jsonl and DIR/checkpoint.bin.
    Train(TrainArgs),
    /// Adapt a model on held-out test tasks through the runtime and report the test loss.
    Eval(EvalArgs),
    /// Adapt a model on a support set (.npz) and predict a query set, in raw units.
    Predict(PredictArgs),
    /// Write a generated family's tasks to an .npz task file (x, y, split).
    Tasks(TasksArgs),
    /// The per-task ridge regression baseline on a regression family's test tasks.
    Ridge(RidgeArgs),
    /// Draw error against support examples, one line per method, from a results script's
    /// JSON lines (PNG).
    Plot(PlotArgs),
    /// Draw a closed-loop run's tracking error over time, one line per controller, from its
    /// CSV (examples/cpp/panda_payload.cpp --csv) (PNG).
    PlotLoop(PlotLoopArgs),
    /// Export the model of a (possibly unfinished) run's checkpoint to a .msr file.
    Export {
        /// Run directory (holds checkpoint.bin).
        #[arg(long)]
        run: PathBuf,
        /// Output model file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a model's layers, shapes and sizes; optionally draw its learned sharing patterns.
    Inspect {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Write a PNG of W = reshape(U e_j) for every basis vector e_j, side by side.
        #[arg(long)]
        png: Option<PathBuf>,
    },
    /// Describe a glyph data set (alphabets per split, characters, styles) and optionally
    /// draw a contact sheet of its instances and augmented instances.
    Glyphs {
        /// glyphs (Debian's fonts-noto-core) or glyphs-mini (the committed subset).
        #[arg(long, default_value = "glyphs-mini")]
        set: String,
        /// Write a PNG: rows of characters, 10 instances, then 10 augmented instances.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Draw only this alphabet's characters (e.g. "Runic", "Latin (Hershey)").
        #[arg(long)]
        alphabet: Option<String>,
    },
    /// Write one test episode of a classification family to a file a C program can read
    /// (the C example's classification mode; the layout is in docs/file-formats.md).
    Episode {
        /// Classification family: glyphs or glyphs-mini.
        #[arg(long, default_value = "glyphs-mini")]
        problem: String,
        /// Shots per class.
        #[arg(long, default_value_t = 1)]
        support: usize,
        #[command(flatten)]
        episodes: EpisodeArgs,
        /// Augment the queries.
        #[arg(long)]
        augment_query: bool,
        /// Which test episode.
        #[arg(long, default_value_t = 0)]
        index: u64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// The end-to-end demo: meta-train MSR-FC and MAML-FC on rank1, export, reload, evaluate.
    Demo {
        /// Outer steps per model.
        #[arg(long, default_value_t = 1000)]
        steps: u64,
        /// Where to write the models and metrics.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Time one outer step (median over repetitions), for the speed table.
    Bench {
        /// Task family (as for train).
        #[arg(long, default_value = "rank1")]
        problem: TaskSource,
        /// Model.
        #[arg(long, default_value = "msr-fc")]
        model: ModelKind,
        /// Tasks per outer step.
        #[arg(long, default_value_t = 32)]
        tasks: usize,
        /// Timed repetitions (after 20 warm-up steps).
        #[arg(long, default_value_t = 200)]
        reps: usize,
        /// Where to compute: cpu, gpu or gpu:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Training throughput of sharded steps instead: this many shards per step over the
        /// processes of the job (run it under `mpirun -np N`, feature `mpi`); reports outer
        /// steps per second, per-shard compute and the gathered bytes. On the CPU.
        #[arg(long)]
        shards: Option<usize>,
        /// Support examples per task (shots per class on glyphs), for --shards.
        #[arg(long, default_value_t = 1)]
        support: usize,
        #[command(flatten)]
        episodes: EpisodeArgs,
        /// Augment the training queries (glyphs), for --shards.
        #[arg(long)]
        augment_query: bool,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// Task family: rank1, rank2, rank5, rot8, rot8-flip, cartpole, glyphs, glyphs-mini,
    /// panda-payload, quadrotor-wind (MuJoCo robots: feature `mujoco`, docs/robots.md), or
    /// npz:PATH (your own tasks: the file layout, splits and normalisation are in
    /// docs/data.md).
    #[arg(long)]
    problem: TaskSource,
    /// Meta-learner: msr-fc, maml-fc, maml-lc, maml-conv, msr-conv, and for any regression
    /// family msr-mlp, maml-mlp, anil-mlp, msr-head (a frozen body, an MSR head); on glyphs:
    /// maml-conv, msr-conv, anil, protonet.
    #[arg(long)]
    model: ModelKind,
    /// Hidden widths of msr-mlp, maml-mlp, anil-mlp and msr-head, comma-separated
    /// [default: 64,64].
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Activation after each hidden layer: relu, tanh or gelu.
    #[arg(long, default_value = "relu")]
    activation: msr_runtime::Activation,
    /// No biases (by default every regression model has adapted biases).
    #[arg(long)]
    no_bias: bool,
    /// Standardise inputs and targets with statistics of the training tasks, stored in the
    /// model (so it takes and returns raw units): standard or none [default: standard for
    /// task files and cartpole; none for the paper's N(0, 1) families and classification].
    #[arg(long)]
    normalize: Option<msr_trainer::train::Normalize>,
    /// Outer steps.
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Seed of initialisation and task sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its checkpoint.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// MSR latent size (default: 3 / 6 / 30 for rank1 / rank2 / rank5, 8 otherwise); for
    /// msr-mlp one value for every layer or one per layer, comma-separated.
    #[arg(long, value_delimiter = ',')]
    k: Option<Vec<usize>>,
    /// Inner steps (SGD or Gauss-Newton).
    #[arg(long, default_value_t = 1)]
    inner_steps: usize,
    /// The inner loop meta-trained through: sgd (meta-learned learning rates) or gn
    /// (damped Gauss-Newton with meta-learned dampings: error never rises with more steps).
    #[arg(long, default_value = "sgd")]
    inner: msr_trainer::train::InnerKind,
    /// Initial damping of every layer, for --inner gn.
    #[arg(long, default_value_t = 1.0)]
    damping: f32,
    /// Initial inner learning rate (meta-learned per layer).
    #[arg(long, default_value_t = 0.1)]
    inner_lr: f32,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    outer_lr: f64,
    /// Tasks per outer step.
    #[arg(long, default_value_t = 32)]
    tasks_per_step: usize,
    /// Support examples per task (the rest are queries); on glyphs: per class (shots).
    #[arg(long, default_value_t = 1)]
    support: usize,
    #[command(flatten)]
    episodes: EpisodeArgs,
    /// Augment the query examples of training episodes: random rotations, flips and resizes
    /// (the paper's Algorithm 2; classification only; the runtime never augments).
    #[arg(long)]
    augment_query: bool,
    /// Filters per conv block of the glyph nets.
    #[arg(long, default_value_t = 32)]
    channels: usize,
    /// Detach the inner gradient (first-order MAML).
    #[arg(long)]
    first_order: bool,
    /// Evaluate on the validation tasks every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Validation tasks per evaluation.
    #[arg(long, default_value_t = 300)]
    eval_tasks: usize,
    /// Write a checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Where to compute: cpu, gpu (the first adapter) or gpu:N (needs the `wgpu` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Define each step's meta-gradient as the sum of this many shards of its tasks, one
    /// backward pass each, added in shard order: the run's result then does not depend on
    /// how many processes share the shards (`mpirun -np N`, feature `mpi`). 1: one backward
    /// pass over all the tasks. A resumed run keeps its checkpoint's.
    #[arg(long)]
    shards: Option<usize>,
}

/// Episode shape of the classification families (ignored by regression families).
#[derive(Args, Clone, Copy)]
struct EpisodeArgs {
    /// Classes per episode.
    #[arg(long, default_value_t = 5)]
    ways: usize,
    /// Query examples per class.
    #[arg(long, default_value_t = 5)]
    queries: usize,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(command: Command) -> Result<()> {
    match command {
        Command::Train(args) => {
            train(args)?;
            Ok(())
        }
        Command::Eval(args) => eval(args),
        Command::Predict(args) => predict(args),
        Command::Tasks(args) => tasks(args),
        Command::Ridge(args) => ridge(args),
        Command::Plot(args) => plot(args),
        Command::PlotLoop(args) => plot_loop(args),
        Command::Export { run, out } => {
            let t = Trainer::resume(&run.join("checkpoint.bin"), None)?;
            fs::write(&out, t.record().to_bytes())
                .map_err(|e| format!("{}: {e}", out.display()))?;
            println!(
                "exported step {} of {} to {}",
                t.step,
                run.display(),
                out.display()
            );
            Ok(())
        }
        Command::Inspect { model, png } => {
            let bytes = fs::read(&model).map_err(|e| format!("{}: {e}", model.display()))?;
            let record = ModelRecord::from_bytes(&bytes)?;
            print!("{}", inspect::describe(&record, bytes.len()));
            if let Some(path) = png {
                inspect::write_png(&record, &path)?;
                println!("sharing patterns written to {}", path.display());
            }
            Ok(())
        }
        Command::Demo { steps, out, seed } => demo(steps, &out, seed),
        Command::Episode {
            problem,
            support,
            episodes,
            augment_query,
            index,
            out,
        } => {
            let family = Family::open(&problem)?;
            if !family.is_classification() {
                return Err(format!("{problem} is not a classification family").into());
            }
            let family = family.with_episodes(episodes.ways, augment_query)?;
            let (s, q) = split_sizes(&family, support, episodes)?;
            let id = family.test_ids(index as usize + 1)[index as usize];
            let b = family.batch(&[id], s, q);
            let bytes = b.episode_bytes(episodes.ways);
            fs::write(&out, bytes).map_err(|e| format!("{}: {e}", out.display()))?;
            println!(
                "test episode {index} of {problem}: {}-way, {s} support, {q} query examples -> {}",
                episodes.ways,
                out.display()
            );
            Ok(())
        }
        Command::Glyphs { set, png, alphabet } => {
            let family = Family::open(&set)?;
            let g = family
                .glyphs()
                .ok_or_else(|| format!("{set} is not a glyph set (glyphs, glyphs-mini)"))?;
            use msr_trainer::tasks::glyphs::{INSTANCES, Split};
            println!(
                "{set}: {} alphabets, {} characters, {INSTANCES} instances each",
                g.alphabets.len(),
                g.num_chars()
            );
            for split in [Split::Train, Split::Val, Split::Test] {
                let names: Vec<String> = g
                    .split_alphabets(split)
                    .iter()
                    .map(|&a| {
                        let al = &g.alphabets[a];
                        format!("{} ({} chars, {} fonts)", al.name, al.chars.len(), al.fonts)
                    })
                    .collect();
                println!(
                    "{split:?}: {} alphabets, {} characters: {}",
                    names.len(),
                    g.classes(split).len(),
                    names.join(", ")
                );
            }
            if let Some(path) = png {
                inspect::write_glyph_sheet(g, alphabet.as_deref(), 24, 10, &path)?;
                println!("contact sheet written to {}", path.display());
            }
            Ok(())
        }
        Command::Bench {
            shards: Some(shards),
            problem,
            model,
            tasks,
            reps,
            support,
            episodes,
            augment_query,
            ..
        } => {
            let family = Family::from_source(&problem)?;
            let mut c = TrainConfig::new(problem.clone(), model);
            c.tasks_per_step = tasks;
            (c.support, c.query) = split_sizes(&family, support, episodes)?;
            if family.is_classification() {
                c.ways = episodes.ways;
                c.augment_query = augment_query;
            }
            #[cfg(feature = "mpi")]
            let (_universe, collective) =
                msr_trainer::train::shard::mpi_world().ok_or("MPI could not be initialised")?;
            #[cfg(not(feature = "mpi"))]
            let collective = msr_trainer::train::shard::Local;
            let rank = collective.rank();
            let r =
                msr_trainer::train::bench_sharded(c, shards, Box::new(collective), 5, reps as u64)?;
            if rank == 0 {
                println!(
                    "{problem} {model}, {tasks} tasks per step in {shards} shards over {} process(es): {:.2} outer steps/s ({reps} steps after 5 warm-up); {:.2} ms per shard (median), gather {:.3} ms per step (median), {} bytes gathered per step",
                    r.processes, r.steps_per_s, r.shard_ms, r.gather_ms, r.gathered_bytes
                );
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
        Command::Bench {
            problem,
            model,
            tasks,
            reps,
            device,
            ..
        } => {
            let device = msr_runtime::device::by_name(&device)?;
            let mut c = TrainConfig::new(problem.clone(), model);
            c.tasks_per_step = tasks;
            let mut fo = c.clone();
            fo.first_order = true;
            // Both in this process, interleaved in rounds, so machine noise hits both alike.
            let (mut exact, mut first) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                exact.push(msr_trainer::train::bench_outer_step(
                    c.clone(),
                    device.clone(),
                    reps / 5,
                )?);
                first.push(msr_trainer::train::bench_outer_step(
                    fo.clone(),
                    device.clone(),
                    reps / 5,
                )?);
            }
            let med = |rs: &[msr_trainer::train::BenchResult]| {
                let mut m: Vec<f64> = rs.iter().map(|r| r.median_ms).collect();
                m.sort_by(f64::total_cmp);
                (m[m.len() / 2], m[0], m[m.len() - 1])
            };
            let (e, elo, ehi) = med(&exact);
            let (f, flo, fhi) = med(&first);
            println!(
                "{problem} {model}, {tasks} tasks per outer step, median ms per step (5 rounds of {} steps; range of round medians)",
                reps / 5
            );
            println!("  exact second order: {e:.3} ms ({elo:.3}..{ehi:.3})");
            println!("  first order:        {f:.3} ms ({flo:.3}..{fhi:.3})");
            println!("  ratio exact / first order: {:.2}", e / f);
            Ok(())
        }
    }
}

fn train(args: TrainArgs) -> Result<RunOutcome> {
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
    config.outer_lr = args.outer_lr;
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
    // Under mpirun (feature `mpi`): this process's place in the job.
    #[cfg(feature = "mpi")]
    let (_universe, collective) = msr_trainer::train::shard::mpi_world()
        .ok_or("MPI could not be initialised (was it initialised twice?)")?;
    #[cfg(not(feature = "mpi"))]
    let collective = msr_trainer::train::shard::Local;
    let (dir, mut trainer) = match (&args.resume, &args.out) {
        (Some(dir), _) => {
            let t = Trainer::resume_on(&dir.join("checkpoint.bin"), Some(&config), device)?;
            if args.shards.is_some_and(|s| s != t.shards()) {
                return Err(format!(
                    "{} was trained with --shards {}: a resumed run keeps it",
                    dir.display(),
                    t.shards()
                )
                .into());
            }
            if collective.rank() == 0 {
                info!("resuming {} at step {}", dir.display(), t.step);
            }
            (dir.clone(), t)
        }
        (None, Some(dir)) => {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut t = Trainer::on_device(config.clone(), device)?;
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
    trainer.set_collective(Box::new(collective));
    let opts = RunOptions {
        eval_every: args.eval_every,
        eval_tasks: args.eval_tasks,
        checkpoint_every: args.checkpoint_every,
    };
    Ok(msr_trainer::run::run(&mut trainer, &dir, &opts)?)
}

/// Support and query examples per task: for classification, `support` shots and
/// `queries` queries per class; for regression, `support` examples and the rest as queries.
fn split_sizes(family: &Family, support: usize, ep: EpisodeArgs) -> Result<(usize, usize)> {
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
fn split_sizes_with(
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
