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

use commands::bench::{BenchArgs, bench};
use commands::demo::demo;
use commands::eval::{EvalArgs, eval};
use commands::plot::{PlotArgs, PlotLoopArgs, plot, plot_loop};
use commands::predict::{PredictArgs, predict};
use commands::ridge::{RidgeArgs, ridge};
use commands::tasks::{TasksArgs, tasks};
use commands::train::{EpisodeArgs, TrainArgs, split_sizes, split_sizes_with, train};
use commands::windows::{WindowsArgs, windows};
use msr_runtime::ModelRecord;
use msr_trainer::inspect;
use msr_trainer::tasks::Family;
use msr_trainer::train::Trainer;

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
    /// Cut robot logs (CSV: a row per sample) into windows, one task each, split by
    /// condition (one held out for testing), and write them as an .npz task file.
    Windows(WindowsArgs),
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
    /// Time one outer step (median over repetitions), for the speed table; with --shards,
    /// the throughput of sharded steps over the processes of an MPI job.
    Bench(BenchArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    // Under the `mpi` feature, training and its bench run as one process of an MPI job (a
    // singleton without mpirun): initialised once, finalised when main returns.
    #[cfg(feature = "mpi")]
    let _universe = matches!(cli.command, Command::Train(_) | Command::Bench(_))
        .then(msr_trainer::train::shard::mpi_init)
        .flatten();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let world = msr_trainer::train::shard::process_collective();
            if world.size() > 1 {
                // The other processes would wait for this one in their next collective
                // (and MPI_Finalize would wait for them): end the whole job.
                eprintln!("error on rank {} of {}: {e}", world.rank(), world.size());
                world.abort(1);
            }
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
        Command::Windows(args) => windows(args),
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
        Command::Bench(args) => bench(args),
    }
}
