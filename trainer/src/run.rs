//! The training run loop as a library function: the CLI and `demo` call [`run`], on one
//! process or on every process of an MPI job (the trainer's collective says which; rank 0
//! alone evaluates and writes). It meta-trains a [`Trainer`] to its configured number of
//! steps with a progress bar, batches (this process's shards) generated on another thread,
//! metrics (`DIR/metrics.jsonl`), periodic evaluation, and checkpoints plus the model file
//! (`DIR/checkpoint.bin`, `DIR/model.msr`) that survive a kill.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use log::info;

use crate::train::{EvalResult, TrainError, Trainer, elapsed, train_batch, train_shards};

/// Steps between the checks that every process holds the same parameters.
pub const CHECK_EVERY: u64 = 50;

/// What a finished run reports.
pub struct RunOutcome {
    /// Where it wrote its files.
    pub dir: PathBuf,
    /// The last evaluation (rank 0's; on the other ranks of a distributed run, an empty
    /// one: 0 tasks).
    pub eval: EvalResult,
    /// Outer steps per second over this invocation.
    pub steps_per_s: f64,
    /// Wall time of this invocation, seconds.
    pub wall_s: f64,
}

/// How often a run evaluates and checkpoints.
pub struct RunOptions {
    /// Evaluate every this many steps (and at step 1 and at the end).
    pub eval_every: u64,
    /// Tasks per evaluation.
    pub eval_tasks: usize,
    /// Write a checkpoint and the model file every this many steps (and at the end).
    pub checkpoint_every: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Meta-trains `trainer` from its current step to its configured steps, writing into
/// `dir` (see the module documentation).
pub fn run(trainer: &mut Trainer, dir: &Path, opts: &RunOptions) -> Result<RunOutcome, TrainError> {
    let cfg = trainer.config.clone();
    // In a distributed run every rank trains; rank 0 alone evaluates and writes.
    let (rank, size) = (trainer.collective().rank(), trainer.collective().size());
    let writer = rank == 0;
    let metrics_path = dir.join("metrics.jsonl");
    let mut metrics = if writer {
        Some(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(io(&metrics_path))?,
        )
    } else {
        None
    };
    let bar = if writer {
        ProgressBar::new(cfg.steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} {}", cfg.problem, cfg.model));
    bar.set_position(trainer.step);
    let start = Instant::now();
    let first = trainer.step;
    // Where no terminal shows the bar (a log file, CI, nohup), a progress line in the log
    // every half minute instead.
    let log_progress = writer && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_log = Instant::now();
    let mut last_eval: Option<EvalResult> = None;
    let mut running = 0.0;
    let mut count = 0;
    let inner = trainer.learner().describe();
    let shards = trainer.shards();
    let sharded = trainer.is_sharded();
    if writer {
        info!(
            "training {} on {} for {} outer steps ({} tasks/step, {inner}{}{}) into {}",
            cfg.model,
            cfg.problem,
            cfg.steps,
            cfg.tasks_per_step,
            if cfg.augment_query {
                ", augmented queries"
            } else {
                ""
            },
            if sharded {
                format!(", {shards} gradient shards over {size} process(es)")
            } else {
                String::new()
            },
            dir.display()
        );
    }
    // Generate the next batches (this rank's shards) on another thread while this one
    // meta-trains.
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let producer = {
        let family = trainer.family().clone();
        let cfg = cfg.clone();
        let from = trainer.step;
        std::thread::spawn(move || {
            for step in from..cfg.steps {
                let batches = if sharded {
                    train_shards(&family, &cfg, step, shards, rank, size)
                } else {
                    vec![train_batch(&family, &cfg, step)]
                };
                if tx.send(batches).is_err() {
                    break; // the trainer stopped early
                }
            }
        })
    };
    while trainer.step < cfg.steps {
        let batches = rx
            .recv()
            .map_err(|_| TrainError::Config("the batch generator stopped".into()))?;
        let loss = if sharded {
            trainer.outer_step_shards(&batches)?
        } else {
            trainer.outer_step_on(&batches[0])
        };
        // A cheap check that the processes still hold the same parameters.
        if size > 1 && trainer.step.is_multiple_of(CHECK_EVERY) {
            trainer.check_ranks_agree()?;
        }
        if !loss.is_finite() {
            return Err(TrainError::Config(format!(
                "training diverged at step {}: loss {loss}",
                trainer.step
            )));
        }
        running += loss;
        count += 1;
        let step = trainer.step;
        let done = step == cfg.steps;
        let sps = (step - first) as f64 / elapsed(start).max(1e-9);
        if writer && (step.is_multiple_of(10) || done) {
            let mut line = serde_json::json!({
                "step": step,
                "train_loss": running / count as f64,
                "steps_per_s": sps,
                "elapsed_s": elapsed(start),
            });
            if step.is_multiple_of(opts.eval_every) || done || step == 1 {
                let e = trainer.evaluate(opts.eval_tasks)?;
                line["val_loss"] = e.loss.into();
                line["val_ci95"] = e.ci95.into();
                if let Some(a) = e.accuracy {
                    line["val_accuracy"] = a.into();
                    line["val_accuracy_ci95"] = e.accuracy_ci95.into();
                }
                last_eval = Some(e);
            }
            if let Some(m) = metrics.as_mut() {
                writeln!(m, "{line}").map_err(io(&metrics_path))?;
            }
            bar.set_message(format!(
                "train {:.4}{}",
                running / count as f64,
                last_eval
                    .as_ref()
                    .map(|e| match e.accuracy {
                        Some(a) => format!(
                            " val acc {:.1}%±{:.1}",
                            100.0 * a,
                            100.0 * e.accuracy_ci95.unwrap_or(0.0)
                        ),
                        None => format!(" val {:.4}±{:.4}", e.loss, e.ci95),
                    })
                    .unwrap_or_default()
            ));
            if log_progress && (last_log.elapsed().as_secs_f64() >= 30.0 || done) {
                last_log = Instant::now();
                let eta = (cfg.steps - step) as f64 / sps.max(1e-9);
                info!(
                    "step {step}/{}: {sps:.2} steps/s, eta {eta:.0} s, train loss {:.4}{}",
                    cfg.steps,
                    running / count as f64,
                    last_eval
                        .as_ref()
                        .map(|e| format!(", last validation loss {:.4} ± {:.4}", e.loss, e.ci95))
                        .unwrap_or_default()
                );
            }
            running = 0.0;
            count = 0;
        }
        if writer && (step.is_multiple_of(opts.checkpoint_every) || done) {
            trainer.save_checkpoint(&dir.join("checkpoint.bin"))?;
            let model = dir.join("model.msr");
            fs::write(&model, trainer.record().to_bytes()).map_err(io(&model))?;
        }
        bar.set_position(step);
    }
    bar.finish();
    drop(rx);
    producer
        .join()
        .map_err(|_| TrainError::Config("the batch generator panicked".into()))?;
    let wall_s = elapsed(start);
    let steps_per_s = (trainer.step - first) as f64 / wall_s.max(1e-9);
    if size > 1 {
        trainer.check_ranks_agree()?;
    }
    let eval = match last_eval {
        Some(e) => e,
        None if writer => trainer.evaluate(opts.eval_tasks)?,
        // The other ranks of a distributed run leave evaluation to rank 0.
        None => EvalResult::of(&[], &[], cfg.inner_steps),
    };
    let score = match (eval.accuracy, eval.accuracy_ci95) {
        (Some(a), Some(ci)) => {
            format!("validation accuracy {:.2}% ± {:.2}%", 100.0 * a, 100.0 * ci)
        }
        _ => format!("validation loss {:.4} ± {:.4}", eval.loss, eval.ci95),
    };
    if writer {
        info!(
            "{} {}: {score} after {} steps ({:.1} steps/s)",
            cfg.problem, cfg.model, trainer.step, steps_per_s
        );
    }
    Ok(RunOutcome {
        dir: dir.to_path_buf(),
        eval,
        steps_per_s,
        wall_s,
    })
}
