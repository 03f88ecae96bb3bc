//! The paper's synthetic families: per-task filters of the rank-r 1-D problems and the
//! rotation-equivariant 2-D ones, and their examples.

use super::*;

impl Family {
    /// The task's filters: per-position `[68, 3]` (1-D), or the filter bank
    /// `[channels, 3, 3]` (2-D); empty for a task file (its targets are data).
    pub fn filters(&self, id: u64) -> Vec<f64> {
        let mut rng = Rng::derive(&[self.problem as u64, id, 1]);
        match self.problem {
            Problem::Npz
            | Problem::Glyphs
            | Problem::Cartpole
            | Problem::PandaPayload
            | Problem::QuadrotorWind => Vec::new(),
            Problem::Rot8 | Problem::Rot8Flip => rot::filter_bank(self.problem, &mut rng),
            Problem::Rank1 => {
                let f: Vec<f64> = (0..TAPS).map(|_| rng.normal()).collect();
                (0..SEQ_OUT).flat_map(|_| f.iter().cloned()).collect()
            }
            Problem::Rank2 | Problem::Rank5 => {
                let rank = self.connectivity().len() / SEQ_OUT;
                let basis: Vec<f64> = (0..rank * TAPS).map(|_| rng.normal()).collect();
                let mut out = vec![0.0; SEQ_OUT * TAPS];
                for p in 0..SEQ_OUT {
                    for r in 0..rank {
                        let c = self.connectivity()[p * rank + r];
                        for q in 0..TAPS {
                            out[p * TAPS + q] += c * basis[r * TAPS + q];
                        }
                    }
                }
                out
            }
        }
    }

    /// Appends `n` examples of task `id` (drawn from `rng`) to `x` and `y`.
    pub(super) fn examples(
        &self,
        filters: &[f64],
        n: usize,
        rng: &mut Rng,
        x: &mut Vec<f32>,
        y: &mut Vec<f32>,
    ) {
        if self.problem.is_2d() {
            for _ in 0..n {
                let img: Vec<f64> = (0..IMG * IMG).map(|_| rng.normal()).collect();
                x.extend(img.iter().map(|&v| v as f32));
                y.extend(
                    rot::conv_valid(&img, IMG, filters)
                        .iter()
                        .map(|&v| v as f32),
                );
            }
            return;
        }
        for _ in 0..n {
            let xi: Vec<f64> = (0..SEQ_IN).map(|_| rng.normal()).collect();
            x.extend(xi.iter().map(|&v| v as f32));
            for p in 0..SEQ_OUT {
                let f = &filters[p * TAPS..(p + 1) * TAPS];
                y.push((0..TAPS).map(|q| f[q] * xi[p + q]).sum::<f64>() as f32);
            }
        }
    }
}
