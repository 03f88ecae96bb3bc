//! `trainer windows`: robot logs to a task file. A CSV log (a header, a row per sample) is
//! cut into windows of consecutive samples, each window a task, split by condition: the
//! held-out condition is the test set (docs/data.md, "From logs to tasks").

use std::path::PathBuf;

use clap::Args;
use msr_trainer::tasks::logs::{LogSpec, split_by_condition, windows_from_csv};
use msr_trainer::tasks::npz::{Array, write_npz};

use crate::*;

#[derive(Args)]
pub(crate) struct WindowsArgs {
    /// The log: a CSV file with a header row.
    #[arg(long)]
    log: PathBuf,
    /// Input columns, comma-separated, in order.
    #[arg(long, value_delimiter = ',', required = true)]
    inputs: Vec<String>,
    /// Target columns, comma-separated, in order.
    #[arg(long, value_delimiter = ',', required = true)]
    outputs: Vec<String>,
    /// The column naming each row's condition (a wind, a payload, a terrain).
    #[arg(long)]
    condition: String,
    /// The column naming each row's run (a flight, an episode): windows never cross runs.
    /// Without it, a run is a stretch of consecutive rows of one condition.
    #[arg(long)]
    run: Option<String>,
    /// Samples per window: the examples of one task (support and queries).
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// Samples between two windows' starts [default: the window, no overlap].
    #[arg(long)]
    stride: Option<usize>,
    /// The condition held out as the test set (never seen in training or validation).
    #[arg(long, required_unless_present = "folds")]
    hold_out: Option<String>,
    /// Instead of one file, one per condition held out (leave-one-condition-out folds),
    /// written as OUT with the condition in its name (tasks.npz -> tasks-COND.npz).
    #[arg(long)]
    folds: bool,
    /// The task file to write (.npz).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn windows(args: WindowsArgs) -> Result<()> {
    let spec = LogSpec {
        inputs: args.inputs.clone(),
        outputs: args.outputs.clone(),
        condition: args.condition.clone(),
        run: args.run.clone(),
        window: args.window,
        stride: args.stride.unwrap_or(args.window),
    };
    let file =
        std::fs::File::open(&args.log).map_err(|e| format!("{}: {e}", args.log.display()))?;
    let w = windows_from_csv(std::io::BufReader::new(file), &spec)
        .map_err(|e| format!("{}: {e}", args.log.display()))?;
    let held: Vec<String> = match (&args.hold_out, args.folds) {
        (_, true) => w.conditions.clone(),
        (Some(c), false) => vec![c.clone()],
        (None, false) => unreachable!("clap requires --hold-out or --folds"),
    };
    let (fi, fo, win) = (spec.inputs.len(), spec.outputs.len(), spec.window);
    for cond in &held {
        let split = split_by_condition(&w, cond, win)?;
        let keep: Vec<usize> = (0..split.len()).filter(|&t| split[t] >= 0).collect();
        let pick = |v: &[f32], per: usize| -> Vec<f32> {
            keep.iter()
                .flat_map(|&t| v[t * per..(t + 1) * per].iter().copied())
                .collect()
        };
        let (x, y) = (pick(&w.x, win * fi), pick(&w.y, win * fo));
        let s: Vec<i64> = keep.iter().map(|&t| split[t]).collect();
        let out = if args.folds {
            fold_path(&args.out, cond)
        } else {
            args.out.clone()
        };
        let t = keep.len();
        write_npz(
            &out,
            &[
                ("x", &[t, win, fi], Array::F32(&x)),
                ("y", &[t, win, fo], Array::F32(&y)),
                ("split", &[t], Array::I64(&s)),
            ],
        )?;
        let count = |k: i64| s.iter().filter(|&&v| v == k).count();
        println!(
            "{}: {} windows of {win} samples ({fi} inputs, {fo} outputs): {} train, {} validation, {} test (condition '{cond}'){} -> {}",
            args.log.display(),
            t,
            count(0),
            count(1),
            count(2),
            match split.len() - t {
                0 => String::new(),
                n => format!("; {n} dropped for overlapping validation samples"),
            },
            out.display()
        );
    }
    Ok(())
}

/// OUT with the condition in its name: `tasks.npz` -> `tasks-COND.npz` (the condition's
/// characters other than letters, digits, '-', '_' and '.' made '_').
fn fold_path(out: &std::path::Path, cond: &str) -> PathBuf {
    let safe: String = cond
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = out
        .file_stem()
        .map_or("tasks".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}-{safe}.npz"))
}
