//! `panda-payload`: a Franka Emika Panda (robots/panda/panda.xml, derived from the
//! gymnasium-robotics model; robots/panda/PROVENANCE.md) holding a payload it has never
//! seen. A task is one payload: mass 0-3 kg, centre of mass up to 10 cm from the
//! end-effector site, the inertia of a solid box of that mass (sides 2-20 cm) in a random
//! orientation. An example is a measured state along a random smooth joint trajectory
//! inside the joint limits and the torque the joints' sensors measure; its target is what
//! the nominal (payload-free) model does not explain: `tau_measured - tau_nominal(state)`,
//! both by MuJoCo's inverse dynamics. A model predicting 0 is the nominal model.
//!
//! Inputs (28): sin q, cos q, qd (rad/s), qdd (rad/s^2) of the 7 joints, as measured.
//! Targets (7): the residual joint torques (N m).
//!
//! Support and query examples come from two different trajectories of the same task: the
//! adapted model must predict motions it did not see.

use std::sync::Mutex;

use super::sim::{Inertial, Sim};
use super::{References, Robot};
use crate::baselines::cholesky_solve;
use crate::rng::Rng;
use crate::tasks::{Batch, Problem};

mod payload;
pub use payload::Payload;

/// The model, compiled into the trainer (robots/panda/panda.xml).
pub const MJCF: &str = include_str!("../../../../robots/panda/panda.xml");

/// Arm joints.
pub const JOINTS: usize = 7;
/// Scalars per input example.
pub const INPUTS: usize = 4 * JOINTS;
/// Scalars per target example.
pub const OUTPUTS: usize = JOINTS;
/// Examples per task by default: up to 100 support examples and 100 queries.
pub const EXAMPLES: usize = 200;
/// Inertial parameters of a rigid payload: mass, mass x centre of mass (3), inertia about
/// the payload body's origin (xx, yy, zz, xy, xz, yz). Joint torques are linear in them.
pub const PARAMS: usize = 10;

/// Measurement noise (standard deviations): joint angle (rad), velocity (rad/s),
/// acceleration (rad/s^2, a filtered derivative), torque sensor (N m).
pub const NOISE_Q: f64 = 1e-4;
/// See [`NOISE_Q`].
pub const NOISE_QD: f64 = 2e-3;
/// See [`NOISE_Q`].
pub const NOISE_QDD: f64 = 0.05;
/// See [`NOISE_Q`].
pub const NOISE_TAU: f64 = 0.05;

/// Seconds of each trajectory the examples are sampled from.
const DURATION: f64 = 30.0;
/// Fastest joint speed a trajectory reaches (rad/s; the Panda allows 2.1 to 2.6).
const MAX_SPEED: f64 = 1.5;

/// A smooth random joint trajectory: per joint, a centre plus three sines, inside the joint
/// limits (5% margins: at a limit MuJoCo's constraint forces would add to the torques) and
/// under [`MAX_SPEED`].
#[derive(Clone, Debug)]
struct Trajectory {
    centre: [f64; JOINTS],
    amplitude: [[f64; 3]; JOINTS],
    frequency: [[f64; 3]; JOINTS],
    phase: [[f64; 3]; JOINTS],
}

impl Trajectory {
    fn random(limits: &[[f64; 2]; JOINTS], rng: &mut Rng) -> Self {
        let mut t = Trajectory {
            centre: [0.0; JOINTS],
            amplitude: [[0.0; 3]; JOINTS],
            frequency: [[0.0; 3]; JOINTS],
            phase: [[0.0; 3]; JOINTS],
        };
        for (j, [lo, hi]) in limits.iter().enumerate() {
            let margin = 0.05 * (hi - lo);
            let (lo, hi) = (lo + margin, hi - margin);
            let c = rng.range(lo, hi);
            let room = (c - lo).min(hi - c) * rng.range(0.3, 1.0);
            let weights = [(); 3].map(|_| rng.range(0.2, 1.0));
            let total: f64 = weights.iter().sum();
            t.centre[j] = c;
            for (h, weight) in weights.iter().enumerate() {
                t.amplitude[j][h] = room * weight / total;
                t.frequency[j][h] = rng.range(0.2, 1.2);
                t.phase[j][h] = rng.range(0.0, std::f64::consts::TAU);
            }
            let speed: f64 = (0..3).map(|h| t.amplitude[j][h] * t.frequency[j][h]).sum();
            if speed > MAX_SPEED {
                t.amplitude[j]
                    .iter_mut()
                    .for_each(|a| *a *= MAX_SPEED / speed);
            }
        }
        t
    }

    /// Position, velocity and acceleration at time `s`.
    fn state(&self, s: f64) -> [[f64; JOINTS]; 3] {
        let [mut q, mut qd, mut qdd] = [[0.0; JOINTS]; 3];
        for j in 0..JOINTS {
            q[j] = self.centre[j];
            for h in 0..3 {
                let (a, w) = (self.amplitude[j][h], self.frequency[j][h]);
                let (sin, cos) = (w * s + self.phase[j][h]).sin_cos();
                q[j] += a * sin;
                qd[j] += a * w * cos;
                qdd[j] -= a * w * w * sin;
            }
        }
        [q, qd, qdd]
    }
}

/// One example's true and measured state and its torque sensor's noise.
struct Sample {
    truth: [[f64; JOINTS]; 3],
    measured: [[f64; JOINTS]; 3],
    torque_noise: [f64; JOINTS],
}

impl Sample {
    fn features(&self) -> impl Iterator<Item = f32> + '_ {
        let [q, qd, qdd] = &self.measured;
        q.iter()
            .map(|v| v.sin())
            .chain(q.iter().map(|v| v.cos()))
            .chain(qd.iter().copied())
            .chain(qdd.iter().copied())
            .map(|v| v as f32)
    }
}

/// The regressor's reference payloads: torque minus nominal torque for each of them gives
/// the columns of `Y Phi`, `Phi` their parameters (invertible), so `Y = (Y Phi) Phi^-1`.
#[derive(Debug)]
struct Probes {
    payloads: Vec<Payload>,
    /// `Phi^-1`, `[PARAMS, PARAMS]` row-major.
    inverse: Vec<f64>,
}

/// Inverts the `n x n` matrix `a` (row-major) by Gauss-Jordan elimination with partial
/// pivoting; `None` when it is numerically singular.
fn invert(mut a: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    let mut inv: Vec<f64> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect();
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&x, &y| a[x * n + col].abs().total_cmp(&a[y * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-12 * scale {
            return None;
        }
        for k in 0..n {
            a.swap(col * n + k, pivot * n + k);
            inv.swap(col * n + k, pivot * n + k);
        }
        let p = a[col * n + col];
        for k in 0..n {
            a[col * n + k] /= p;
            inv[col * n + k] /= p;
        }
        for r in 0..n {
            if r != col {
                let f = a[r * n + col];
                for k in 0..n {
                    a[r * n + k] -= f * a[col * n + k];
                    inv[r * n + k] -= f * inv[col * n + k];
                }
            }
        }
    }
    Some(inv)
}

impl Probes {
    fn new() -> Self {
        let mut rng = Rng::derive(&[Problem::PandaPayload as u64, 0x9_80BE]);
        loop {
            let payloads: Vec<Payload> = (0..PARAMS)
                .map(|_| {
                    // Large, far: the 10 parameters of similar size, so that Phi is well
                    // conditioned (small ones would lose digits to the arm's own torques).
                    let mass = rng.range(1.0, 3.0);
                    Payload::random(mass, 0.7, [0.5, 1.5], &mut rng)
                })
                .collect();
            let mut phi = vec![0.0; PARAMS * PARAMS];
            for (i, p) in payloads.iter().enumerate() {
                for (r, v) in p.params().iter().enumerate() {
                    phi[r * PARAMS + i] = *v;
                }
            }
            if let Some(inverse) = invert(phi, PARAMS) {
                return Probes { payloads, inverse };
            }
        }
    }
}

/// The Gaussian prior of the oracle: mean and inverse covariance of the payloads'
/// parameters, and the per-joint variance of what the exact model leaves unexplained
/// (measurement noise), both estimated from training tasks.
#[derive(Debug)]
struct Prior {
    mean: [f64; PARAMS],
    precision: Vec<f64>,
    noise: [f64; JOINTS],
}

/// The Panda family.
#[derive(Debug)]
pub struct Panda {
    sim: Mutex<Sim>,
    payload: usize,
    limits: [[f64; 2]; JOINTS],
    probes: Probes,
    prior: Prior,
}

impl Panda {
    /// Compiles the model and estimates the oracle's prior.
    pub fn new() -> Result<Self, crate::train::TrainError> {
        Self::build().map_err(crate::train::TrainError::Tasks)
    }

    /// [`Self::new`]'s work, its errors as messages.
    pub(super) fn build() -> Result<Self, String> {
        let sim = Sim::new("robots/panda/panda.xml", MJCF)?;
        let payload = sim.body("payload")?;
        let m = sim.model();
        if (m.ffi().nq, m.ffi().nv) != (JOINTS as i64, JOINTS as i64) {
            return Err(format!(
                "robots/panda/panda.xml: {} joints, expected {JOINTS}",
                m.ffi().nv
            ));
        }
        let mut limits = [[0.0; 2]; JOINTS];
        for (j, l) in limits.iter_mut().enumerate() {
            *l = m.jnt_range()[j];
        }
        let mut panda = Panda {
            sim: Mutex::new(sim),
            payload,
            limits,
            probes: Probes::new(),
            prior: Prior {
                mean: [0.0; PARAMS],
                precision: Vec::new(),
                noise: [0.0; JOINTS],
            },
        };
        panda.prior = panda.estimate_prior()?;
        Ok(panda)
    }

    fn estimate_prior(&self) -> Result<Prior, String> {
        // Payload parameters of training tasks (ids from the training range's top, not
        // used by runs in practice; any ids would do: the prior is the family's).
        let n = 4096;
        let base = super::super::TEST_TASK_BASE - n as u64;
        let params: Vec<[f64; PARAMS]> = (0..n as u64)
            .map(|i| Payload::of_task(base + i).params())
            .collect();
        let mut mean = [0.0; PARAMS];
        for p in &params {
            for (m, v) in mean.iter_mut().zip(p) {
                *m += v / n as f64;
            }
        }
        let mut cov = vec![0.0; PARAMS * PARAMS];
        for p in &params {
            for a in 0..PARAMS {
                for b in 0..PARAMS {
                    cov[a * PARAMS + b] += (p[a] - mean[a]) * (p[b] - mean[b]) / (n - 1) as f64;
                }
            }
        }
        for a in 0..PARAMS {
            cov[a * PARAMS + a] += 1e-12;
        }
        let precision = invert(cov, PARAMS)
            .ok_or("the payload parameters' covariance is singular: no prior for the oracle")?;
        // Noise: what the exact payload model leaves of the targets.
        let mut noise = [0.0; JOINTS];
        let (tasks, per) = (64u64, 50usize);
        for i in 0..tasks {
            let id = base + i;
            let samples = self.samples(id, per, 0);
            let exact = self.payload_torques(&Payload::of_task(id), &samples);
            let targets = self.targets(&Payload::of_task(id), &samples);
            for (t, e) in targets.chunks(JOINTS).zip(exact.chunks(JOINTS)) {
                for j in 0..JOINTS {
                    noise[j] += (t[j] as f64 - e[j]).powi(2) / (tasks as usize * per) as f64;
                }
            }
        }
        Ok(Prior {
            mean,
            precision,
            noise,
        })
    }

    /// Task `id`'s samples: `support` from one trajectory, `query` from another.
    fn samples(&self, id: u64, support: usize, query: usize) -> Vec<Sample> {
        let mut out = Vec::with_capacity(support + query);
        // One stream each: the first K support examples are the same for every K, and the
        // queries do not depend on K.
        for (stream, n) in [(2, support), (3, query)] {
            let mut rng = Rng::derive(&[Problem::PandaPayload as u64, id, stream]);
            let trajectory = Trajectory::random(&self.limits, &mut rng);
            for _ in 0..n {
                let truth = trajectory.state(rng.range(0.0, DURATION));
                let noise = [NOISE_Q, NOISE_QD, NOISE_QDD];
                let mut measured = truth;
                for (row, s) in measured.iter_mut().zip(noise) {
                    row.iter_mut().for_each(|v| *v += s * rng.normal());
                }
                let torque_noise = [(); JOINTS].map(|_| NOISE_TAU * rng.normal());
                out.push(Sample {
                    truth,
                    measured,
                    torque_noise,
                });
            }
        }
        out
    }

    /// Inverse-dynamics torques of `samples` (measured states if `measured`, else true)
    /// with `payload` attached, `[samples, JOINTS]`.
    fn torques(
        &self,
        sim: &mut Sim,
        payload: &Inertial,
        samples: &[Sample],
        measured: bool,
    ) -> Vec<f64> {
        sim.set_inertial(self.payload, payload);
        let mut out = vec![0.0; samples.len() * JOINTS];
        for (s, o) in samples.iter().zip(out.chunks_exact_mut(JOINTS)) {
            let [q, qd, qdd] = if measured { &s.measured } else { &s.truth };
            sim.inverse(q, qd, qdd, o);
        }
        out
    }

    /// The targets: measured torque minus the nominal model's at the measured state.
    fn targets(&self, payload: &Payload, samples: &[Sample]) -> Vec<f32> {
        let mut sim = self.sim.lock().unwrap_or_else(|p| p.into_inner());
        let truth = self.torques(&mut sim, &payload.0, samples, false);
        let nominal = self.torques(&mut sim, &Inertial::NONE, samples, true);
        samples
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                let (t, n) = (&truth[i * JOINTS..], &nominal[i * JOINTS..]);
                (0..JOINTS).map(move |j| (t[j] + s.torque_noise[j] - n[j]) as f32)
            })
            .collect()
    }

    /// What `payload` adds to the nominal torques at the measured states (the exact model
    /// of the targets, without noise).
    fn payload_torques(&self, payload: &Payload, samples: &[Sample]) -> Vec<f64> {
        let mut sim = self.sim.lock().unwrap_or_else(|p| p.into_inner());
        let with = self.torques(&mut sim, &payload.0, samples, true);
        let without = self.torques(&mut sim, &Inertial::NONE, samples, true);
        with.iter().zip(&without).map(|(a, b)| a - b).collect()
    }

    /// The payload regressor `Y` (`[JOINTS, PARAMS]` per sample) at the measured states:
    /// `payload_torques(p) = Y p.params()` for every payload `p`.
    fn regressors(&self, samples: &[Sample]) -> Vec<f64> {
        let columns: Vec<Vec<f64>> = self
            .probes
            .payloads
            .iter()
            .map(|p| self.payload_torques(p, samples))
            .collect();
        let inv = &self.probes.inverse;
        let mut y = vec![0.0; samples.len() * JOINTS * PARAMS];
        for s in 0..samples.len() {
            for j in 0..JOINTS {
                for c in 0..PARAMS {
                    y[(s * JOINTS + j) * PARAMS + c] = (0..PARAMS)
                        .map(|i| columns[i][s * JOINTS + j] * inv[i * PARAMS + c])
                        .sum();
                }
            }
        }
        y
    }
}

impl Robot for Panda {
    fn inputs(&self) -> usize {
        INPUTS
    }
    fn outputs(&self) -> usize {
        OUTPUTS
    }
    fn examples_per_task(&self) -> usize {
        EXAMPLES
    }

    fn append(&self, id: u64, support: usize, query: usize, b: &mut Batch) {
        let payload = Payload::of_task(id);
        let samples = self.samples(id, support, query);
        let targets = self.targets(&payload, &samples);
        super::append_split(
            &samples,
            |s, v| v.extend(s.features()),
            &targets,
            support,
            JOINTS,
            b,
        );
    }

    /// The nominal model predicts no residual; the oracle is the Bayes estimate of the
    /// payload's 10 inertial parameters from the support examples through the exact
    /// regressor (the posterior mean under the family's payload prior, Gaussian-
    /// approximated, and the measured noise): with many examples, per-task least squares.
    fn references(&self, id: u64, support: usize, query: usize) -> References {
        let payload = Payload::of_task(id);
        let samples = self.samples(id, support, query);
        let targets = self.targets(&payload, &samples);
        let y = self.regressors(&samples);
        let p = &self.prior;
        // (Y^T W Y + P) phi = Y^T W t + P mean, W = diag(1 / noise).
        let mut a = p.precision.clone();
        let mut b: Vec<f64> = (0..PARAMS)
            .map(|r| {
                (0..PARAMS)
                    .map(|c| p.precision[r * PARAMS + c] * p.mean[c])
                    .sum()
            })
            .collect();
        for s in 0..support {
            for j in 0..JOINTS {
                let row = &y[(s * JOINTS + j) * PARAMS..][..PARAMS];
                let w = 1.0 / p.noise[j].max(1e-12);
                for r in 0..PARAMS {
                    b[r] += w * row[r] * targets[s * JOINTS + j] as f64;
                    for c in 0..PARAMS {
                        a[r * PARAMS + c] += w * row[r] * row[c];
                    }
                }
            }
        }
        cholesky_solve(&mut a, PARAMS, &mut b, 1);
        let oracle = (support..support + query)
            .flat_map(|s| {
                let y = &y;
                let b = &b;
                (0..JOINTS).map(move |j| {
                    let row = &y[(s * JOINTS + j) * PARAMS..][..PARAMS];
                    row.iter().zip(b).map(|(r, p)| r * p).sum::<f64>() as f32
                })
            })
            .collect();
        References {
            nominal: vec![0.0; query * JOINTS],
            oracle,
        }
    }
}

#[cfg(test)]
mod tests;
