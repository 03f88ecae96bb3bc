//! `trainer tasks`: a generated family's tasks written as an `.npz` task file (the layout
//! `npz:PATH` reads, docs/data.md), so that a Python user can see the data and the npz path
//! can be exercised end to end.

use std::path::PathBuf;

use clap::Args;
use msr_trainer::tasks::npz::{Array, write_npz};
use msr_trainer::tasks::{Family, TaskSource};

use crate::*;

#[derive(Args)]
pub(crate) struct TasksArgs {
    /// A generated regression family: rank1, rank2, rank5, cartpole, panda-payload,
    /// quadrotor-wind.
    #[arg(long)]
    problem: TaskSource,
    /// Training tasks (drawn from the training range with --seed).
    #[arg(long, default_value_t = 1000)]
    train: usize,
    /// Validation tasks.
    #[arg(long, default_value_t = 100)]
    val: usize,
    /// Test tasks (the same ones `trainer eval` uses on the generated family).
    #[arg(long, default_value_t = 300)]
    test: usize,
    /// Seed of the training tasks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn tasks(args: TasksArgs) -> Result<()> {
    let family = Family::from_source(&args.problem)?;
    if family.is_classification() || family.file().is_some() || family.problem().is_2d() {
        return Err(format!(
            "{} is not a generated 1-D regression family (rank1, rank2, rank5, cartpole, panda-payload, quadrotor-wind)",
            args.problem
        )
        .into());
    }
    let mut ids = family.train_ids(args.seed, 0, args.train);
    ids.extend(family.val_ids(args.val));
    ids.extend(family.test_ids(args.test));
    let split: Vec<i64> = [(0, args.train), (1, args.val), (2, args.test)]
        .iter()
        .flat_map(|&(s, n)| std::iter::repeat_n(s, n))
        .collect();
    let examples = family.examples_per_task();
    let b = family.batch(&ids, examples, 0);
    let (fi, fo, t) = (family.input_len(), family.output_len(), ids.len());
    write_npz(
        &args.out,
        &[
            ("x", &[t, examples, fi], Array::F32(&b.xs)),
            ("y", &[t, examples, fo], Array::F32(&b.ys)),
            ("split", &[t], Array::I64(&split)),
        ],
    )?;
    println!(
        "{}: {} train, {} validation, {} test tasks of {examples} examples ({fi} inputs, {fo} outputs) -> {}",
        args.problem,
        args.train,
        args.val,
        args.test,
        args.out.display()
    );
    Ok(())
}
