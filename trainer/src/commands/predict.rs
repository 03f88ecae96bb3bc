//! `trainer predict`: adapt a model on a support set from a file and predict a query set,
//! in raw units, as a device would. The reference a C integration diffs against.

use std::path::{Path, PathBuf};

use clap::Args;
use msr_runtime::Model;
use msr_trainer::predict::adapt_predict;
use msr_trainer::tasks::npz::{Array, read_array, write_npz};

use crate::*;

#[derive(Args)]
pub(crate) struct PredictArgs {
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Support set: an .npz with `x` [n, ...] and `y` [n, ...] (one task's examples).
    #[arg(long)]
    support: PathBuf,
    /// Query set: an .npz with `x` [m, ...] and optionally `y` [m, ...] (then the query
    /// MSE is printed).
    #[arg(long)]
    query: PathBuf,
    /// Output: an .npz with `y` [m, outputs], float32, raw units.
    #[arg(long)]
    out: PathBuf,
    /// Inner steps (default: the model's).
    #[arg(long)]
    inner_steps: Option<usize>,
}

/// Array `name` of `path` as `[examples, features]`, checked against `features`.
fn examples(path: &Path, name: &str, features: usize) -> Result<Option<(usize, Vec<f32>)>> {
    let Some((shape, values)) = read_array(path, name)? else {
        return Ok(None);
    };
    let per: usize = shape.iter().skip(1).product();
    if shape.is_empty() || shape[0] == 0 || per != features {
        return Err(format!(
            "{}: '{name}' has shape {shape:?}; the model needs [examples, {features}] (or any shape with {features} values per example)",
            path.display()
        )
        .into());
    }
    Ok(Some((shape[0], values)))
}

pub(crate) fn predict(args: PredictArgs) -> Result<()> {
    let device = msr_runtime::device::cpu();
    let model = Model::load(&args.model, &device)?;
    let (fi, fo) = (model.net().input_len(), model.net().output_len());
    let need = |p: &Path, name: &str, f: usize| -> Result<(usize, Vec<f32>)> {
        examples(p, name, f)?.ok_or_else(|| format!("{}: no array '{name}'", p.display()).into())
    };
    let (n, xs) = need(&args.support, "x", fi)?;
    let (ny, ys) = need(&args.support, "y", fo)?;
    if n != ny {
        return Err(format!("{}: {n} inputs but {ny} targets", args.support.display()).into());
    }
    let (m, xq) = need(&args.query, "x", fi)?;
    let yq = examples(&args.query, "y", fo)?;
    let steps = args
        .inner_steps
        .unwrap_or(model.info().inner_steps as usize);
    let out = adapt_predict(&model, &xs, &ys, n, &xq, m, steps)?;
    write_npz(&args.out, &[("y", &[m, fo], Array::F32(&out))])?;
    print!(
        "{}: adapted on {n} examples ({steps} inner step(s)), predicted {m} -> {}",
        model.info().name,
        args.out.display()
    );
    match yq {
        Some((my, y)) if my == m => {
            let mse = out
                .iter()
                .zip(&y)
                .map(|(p, t)| ((p - t) as f64).powi(2))
                .sum::<f64>()
                / (m * fo) as f64;
            println!("; query MSE {mse:.6} (raw units)");
        }
        Some((my, _)) => {
            println!();
            return Err(format!("{}: {m} inputs but {my} targets", args.query.display()).into());
        }
        None => println!(),
    }
    Ok(())
}
