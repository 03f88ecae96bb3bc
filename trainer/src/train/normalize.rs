//! Standardisation statistics of a run's training tasks, stored in the model file (its
//! `normalize` record): the network trains on standardised data, and every engine applies
//! the same statistics, so the model's users pass and receive raw units.

use msr_runtime::format::{Normalizer, Standardize};

use crate::tasks::{Batch, Family};

use super::*;

/// Training tasks the statistics of a generated family are computed on.
const STAT_TASKS: usize = 256;

/// Per-feature mean and scale of `values` (`[rows, features]`), in f64. A feature that is
/// constant (its standard deviation below 1e-6 of its magnitude, or zero) gets scale 1:
/// it is only centred, so a constant column (a bias input) neither divides by zero nor
/// blows up float noise.
pub fn standardize(values: &[f32], features: usize) -> Standardize {
    let rows = (values.len() / features.max(1)).max(1);
    let mut mean = vec![0.0f64; features];
    for row in values.chunks_exact(features) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let mut var = vec![0.0f64; features];
    for row in values.chunks_exact(features) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (*v as f64 - m).powi(2);
        }
    }
    let scale = var
        .iter()
        .zip(&mean)
        .map(|(v, m)| {
            let sd = (v / rows as f64).sqrt();
            if sd > 1e-6 * m.abs() && sd > 1e-30 {
                sd as f32
            } else {
                1.0
            }
        })
        .collect();
    Standardize {
        mean: mean.into_iter().map(|m| m as f32).collect(),
        scale,
    }
}

/// The statistics a run standardises with: none for classification or `--normalize
/// none`; else the mean and scale of every input and target feature over the training
/// tasks (all of a task file's training tasks; 256 tasks of a generated family, drawn
/// with the run's seed from the training range, never a validation or test task).
pub fn statistics(family: &Family, config: &TrainConfig) -> Option<Normalizer> {
    if config.normalize == Normalize::None || family.is_classification() {
        return None;
    }
    let (fi, fo) = (family.input_len(), family.output_len());
    let (x, y) = match family.file() {
        Some(f) => {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for &t in &f.train {
                x.extend_from_slice(&f.x[t * f.examples * fi..(t + 1) * f.examples * fi]);
                y.extend_from_slice(&f.y[t * f.examples * fo..(t + 1) * f.examples * fo]);
            }
            (x, y)
        }
        None => {
            // u64::MAX is no outer step: these tasks are drawn for the statistics alone.
            let ids = family.train_ids(config.seed, u64::MAX, STAT_TASKS);
            let b = family.batch(&ids, config.support, config.query);
            ([b.xs, b.xq].concat(), [b.ys, b.yq].concat())
        }
    };
    Some(Normalizer {
        input: Some(standardize(&x, fi)),
        output: Some(standardize(&y, fo)),
    })
}

/// Standardises a batch in place.
pub fn apply(n: &Normalizer, b: &mut Batch) {
    if let Some(s) = &n.input {
        s.apply(&mut b.xs);
        s.apply(&mut b.xq);
    }
    if let Some(s) = &n.output {
        s.apply(&mut b.ys);
        s.apply(&mut b.yq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_features_are_centred_not_scaled() {
        // Features: varying, constant 1, constant 1000, tiny float noise around 5.
        let rows: Vec<[f32; 4]> = (0..50)
            .map(|i| {
                [
                    i as f32,
                    1.0,
                    1000.0,
                    5.0 + if i % 2 == 0 { 1e-7 } else { 0.0 },
                ]
            })
            .collect();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let s = standardize(&flat, 4);
        assert!((s.mean[0] - 24.5).abs() < 1e-5);
        assert!((s.scale[0] - 14.43).abs() < 0.01, "{}", s.scale[0]);
        assert_eq!(&s.scale[1..], &[1.0, 1.0, 1.0]);
        assert_eq!(s.mean[2], 1000.0);
        // Scaling the data by 1000 scales the statistics, and leaves the standardised
        // values as they were.
        let big: Vec<f32> = flat.iter().map(|v| v * 1000.0).collect();
        let sb = standardize(&big, 4);
        let (mut a, mut b) = (flat.clone(), big.clone());
        s.apply(&mut a);
        sb.apply(&mut b);
        for (u, v) in a.iter().zip(&b).step_by(4) {
            assert!((u - v).abs() < 1e-5, "{u} vs {v}");
        }
    }
}
