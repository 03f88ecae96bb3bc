//! The loss of a chunk and its gradient with respect to the outputs.

use super::Session;
use crate::format::Standardize;
use crate::math::exp;
use crate::math::ln;
use crate::spec::Loss;

/// Targets `y` in the units the model is fitted in: as they are, or standardised into
/// `buf` (at least as long as `y`) with the model's output statistics `stats`,
/// `(y - mean) / scale` per output. The one place targets are standardised.
pub(super) fn standardised<'a>(
    stats: Option<&Standardize>,
    y: &'a [f32],
    buf: &'a mut [f32],
) -> &'a [f32] {
    match stats {
        Some(s) => {
            let t = &mut buf[..y.len()];
            t.copy_from_slice(y);
            s.apply(t);
            t
        }
        None => y,
    }
}

impl Session {
    /// Sum over the chunk of per-example losses; with `grad`, writes dL/d(output) (for the
    /// mean over all `n` examples) into `self.da`.
    pub(super) fn loss_chunk(&mut self, y: &[f32], m: usize, n: usize, grad: bool) -> f64 {
        let fo = self.model.output_len;
        let out = &self.acts.last().expect("non-empty")[..m * fo];
        let mut total = 0.0f64;
        match self.model.loss {
            Loss::Mse => {
                let scale = 2.0 / (n * fo) as f32;
                for (j, (o, t)) in out.iter().zip(y).enumerate() {
                    let d = o - t;
                    total += (d * d) as f64 / fo as f64;
                    if grad {
                        self.da[j] = d * scale;
                    }
                }
            }
            Loss::CrossEntropy => {
                for r in 0..m {
                    let z = &out[r * fo..(r + 1) * fo];
                    let t = &y[r * fo..(r + 1) * fo];
                    let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = z.iter().map(|v| exp(v - max)).sum();
                    let log_sum = max + ln(sum);
                    let mass: f32 = t.iter().sum();
                    total += z
                        .iter()
                        .zip(t)
                        .map(|(zi, ti)| (ti * (log_sum - zi)) as f64)
                        .sum::<f64>();
                    if grad {
                        for c in 0..fo {
                            let p = exp(z[c] - log_sum);
                            self.da[r * fo + c] = (p * mass - t[c]) / n as f32;
                        }
                    }
                }
            }
        }
        total
    }
}
