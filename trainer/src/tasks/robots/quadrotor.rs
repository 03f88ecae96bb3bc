//! `quadrotor-wind`: a quadrotor (robots/quadrotor/quadrotor.xml, written for this repo) in a
//! wind it has never met. A task is a constant wind (speed 0-12 m/s, direction uniform on
//! the sphere) and a drag factor (0.5-1.5, scaling the hull's blunt and slender drag
//! coefficients). An example is a measured flight state along a random smooth trajectory
//! (velocity, attitude tilted as the acceleration demands, body rates, the four rotor
//! thrusts commanded) and the aerodynamic force MuJoCo's ellipsoid fluid model gives there:
//! what the nominal rigid-body model (thrust and gravity only) does not explain, as an
//! accelerometer measures it. A model predicting 0 is the nominal model.
//!
//! Inputs (19): velocity (m/s, world), attitude (rotation matrix, row-major), body rates
//! (rad/s), rotor thrusts (N). Targets (3): the residual force (N, world).

use std::sync::Mutex;

use super::sim::Sim;
use super::{References, Robot};
use crate::baselines::cholesky_solve;
use crate::rng::Rng;
use crate::tasks::{Batch, Problem};

mod attitude;
use attitude::{Mat3, exp_map, mat_mul, quaternion};

/// The model, compiled into the trainer (robots/quadrotor/quadrotor.xml).
pub const MJCF: &str = include_str!("../../../../robots/quadrotor/quadrotor.xml");

/// Scalars per input example.
pub const INPUTS: usize = 19;
/// Scalars per target example.
pub const OUTPUTS: usize = 3;
/// Examples per task by default.
pub const EXAMPLES: usize = 200;
/// Mass (kg), as in the MJCF.
const MASS: f64 = 1.0;
const GRAVITY: f64 = 9.81;
/// The hull: the model's only geom (checked at load).
const HULL: usize = 0;

/// Measurement noise (standard deviations): velocity (m/s), attitude (rad, a small random
/// rotation), body rates (rad/s), force (N: mass times accelerometer noise).
pub const NOISE_V: f64 = 0.05;
/// See [`NOISE_V`].
pub const NOISE_ATTITUDE: f64 = 0.01;
/// See [`NOISE_V`].
pub const NOISE_RATE: f64 = 0.02;
/// See [`NOISE_V`].
pub const NOISE_FORCE: f64 = 0.1;

/// Seconds of each trajectory the examples are sampled from.
const DURATION: f64 = 30.0;

/// One task's air.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Air {
    /// Wind (m/s, world).
    pub wind: [f64; 3],
    /// Factor on the hull's drag coefficients.
    pub drag: f64,
}

impl Air {
    /// The air of task `id`.
    pub fn of_task(id: u64) -> Self {
        let mut rng = Rng::derive(&[Problem::QuadrotorWind as u64, id, 1]);
        let speed = rng.range(0.0, 12.0);
        let dir = super::unit_vector(&mut rng);
        Air {
            wind: dir.map(|d| d * speed),
            drag: rng.range(0.5, 1.5),
        }
    }

    fn from_params(p: &[f64; 4]) -> Self {
        Air {
            wind: [p[0], p[1], p[2]],
            drag: p[3],
        }
    }
}

/// A smooth random flight: velocity a sum of sines per axis (up to 5 m/s horizontally, 2
/// vertically), yaw a slow sine; attitude and thrust follow from the acceleration.
#[derive(Clone, Debug)]
struct Flight {
    amplitude: [[f64; 2]; 3],
    frequency: [[f64; 2]; 3],
    phase: [[f64; 2]; 3],
    yaw: [f64; 3],
}

/// A flight state: velocity, attitude, body rates, rotor thrusts.
#[derive(Clone, Copy, Debug)]
struct State {
    velocity: [f64; 3],
    attitude: Mat3,
    rates: [f64; 3],
    thrusts: [f64; 4],
}

impl Flight {
    fn random(rng: &mut Rng) -> Self {
        let mut f = Flight {
            amplitude: [[0.0; 2]; 3],
            frequency: [[0.0; 2]; 3],
            phase: [[0.0; 2]; 3],
            yaw: [
                rng.range(-std::f64::consts::PI, std::f64::consts::PI),
                rng.range(0.0, 1.0),
                rng.range(0.1, 0.5),
            ],
        };
        for axis in 0..3 {
            let top = if axis == 2 { 2.0 } else { 5.0 };
            for h in 0..2 {
                f.amplitude[axis][h] = rng.range(0.0, top / 2.0);
                f.frequency[axis][h] = rng.range(0.1, 0.8);
                f.phase[axis][h] = rng.range(0.0, std::f64::consts::TAU);
            }
        }
        f
    }

    /// Velocity, acceleration and attitude at time `t`.
    fn kinematics(&self, t: f64) -> ([f64; 3], [f64; 3], Mat3) {
        let (mut v, mut a) = ([0.0; 3], [0.0; 3]);
        for axis in 0..3 {
            for h in 0..2 {
                let (amp, w) = (self.amplitude[axis][h], self.frequency[axis][h]);
                let (s, c) = (w * t + self.phase[axis][h]).sin_cos();
                v[axis] += amp * s;
                a[axis] += amp * w * c;
            }
        }
        // The thrust points along a + g; the body's x axis follows the yaw.
        let thrust = [a[0], a[1], a[2] + GRAVITY];
        let n = thrust.iter().map(|v| v * v).sum::<f64>().sqrt();
        let z = thrust.map(|v| v / n);
        let yaw = self.yaw[0] + self.yaw[1] * (self.yaw[2] * t).sin();
        let heading = [yaw.cos(), yaw.sin(), 0.0];
        let cross = |a: [f64; 3], b: [f64; 3]| {
            [
                a[1] * b[2] - a[2] * b[1],
                a[2] * b[0] - a[0] * b[2],
                a[0] * b[1] - a[1] * b[0],
            ]
        };
        let y = cross(z, heading);
        let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        let y = y.map(|v| v / ny);
        let x = cross(y, z);
        let r = [[x[0], y[0], z[0]], [x[1], y[1], z[1]], [x[2], y[2], z[2]]];
        (v, a, r)
    }

    fn state(&self, t: f64, rng: &mut Rng) -> State {
        let (velocity, acc, r) = self.kinematics(t);
        let dt = 1e-4;
        let (_, _, r2) = self.kinematics(t + dt);
        // Body rates: R^T dR/dt is the skew matrix of omega.
        let mut d = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                d[i][j] = (0..3).map(|k| r[k][i] * (r2[k][j] - r[k][j]) / dt).sum();
            }
        }
        let rates = [d[2][1], d[0][2], d[1][0]];
        // The total thrust holds the acceleration; the rotors share it, with the small
        // differences attitude control makes.
        let total = MASS * (acc[0] * r[0][2] + acc[1] * r[1][2] + (acc[2] + GRAVITY) * r[2][2]);
        let thrusts = [(); 4].map(|_| total / 4.0 * (1.0 + 0.05 * rng.normal()));
        State {
            velocity,
            attitude: r,
            rates,
            thrusts,
        }
    }
}

/// One example's true and measured state and its force sensor's noise.
struct Sample {
    truth: State,
    measured: State,
    force_noise: [f64; 3],
}

impl Sample {
    fn features(&self) -> impl Iterator<Item = f32> + '_ {
        let s = &self.measured;
        s.velocity
            .iter()
            .chain(s.attitude.iter().flatten())
            .chain(&s.rates)
            .chain(&s.thrusts)
            .map(|v| *v as f32)
    }
}

/// The oracle's Gaussian prior on (wind, drag factor) and the noise variance of the
/// targets under the exact model, estimated from training tasks.
#[derive(Debug)]
struct Prior {
    mean: [f64; 4],
    variance: [f64; 4],
    noise: f64,
}

/// The quadrotor family.
#[derive(Debug)]
pub struct Quadrotor {
    sim: Mutex<Sim>,
    drag0: [f64; 2],
    prior: Prior,
}

impl Quadrotor {
    /// Compiles the model and estimates the oracle's noise level.
    pub fn new() -> Result<Self, crate::train::TrainError> {
        Self::build().map_err(crate::train::TrainError::Tasks)
    }

    /// [`Self::new`]'s work, its errors as messages.
    pub(super) fn build() -> Result<Self, String> {
        let sim = Sim::new("robots/quadrotor/quadrotor.xml", MJCF)?;
        let m = sim.model();
        if (m.ffi().nq, m.ffi().nv, m.ffi().ngeom) != (7, 6, 1) {
            return Err("robots/quadrotor/quadrotor.xml: expected one free body, one geom".into());
        }
        let fluid = m.geom_fluid()[0];
        let mut q = Quadrotor {
            sim: Mutex::new(sim),
            drag0: [fluid[1], fluid[2]],
            // Wind speed uniform in [0, 12] in a uniform direction: E[w_i^2] = 144 / 9.
            prior: Prior {
                mean: [0.0, 0.0, 0.0, 1.0],
                variance: [16.0, 16.0, 16.0, 1.0 / 12.0],
                noise: 0.0,
            },
        };
        let base = super::super::TEST_TASK_BASE - 64;
        let (mut sum, mut n) = (0.0, 0usize);
        for id in base..base + 64 {
            let air = Air::of_task(id);
            let samples = q.samples(id, 50, 0);
            let targets = q.targets(&air, &samples);
            let exact = q.forces(&air, &samples, true);
            for (t, e) in targets.iter().zip(&exact) {
                sum += (*t as f64 - e).powi(2);
                n += 1;
            }
        }
        q.prior.noise = sum / n as f64;
        Ok(q)
    }

    fn samples(&self, id: u64, support: usize, query: usize) -> Vec<Sample> {
        let mut out = Vec::with_capacity(support + query);
        for (stream, n) in [(2, support), (3, query)] {
            let mut rng = Rng::derive(&[Problem::QuadrotorWind as u64, id, stream]);
            let flight = Flight::random(&mut rng);
            for _ in 0..n {
                let truth = flight.state(rng.range(0.0, DURATION), &mut rng);
                let mut measured = truth;
                measured
                    .velocity
                    .iter_mut()
                    .for_each(|v| *v += NOISE_V * rng.normal());
                let tilt = [(); 3].map(|_| NOISE_ATTITUDE * rng.normal());
                measured.attitude = mat_mul(&truth.attitude, &exp_map(tilt));
                measured
                    .rates
                    .iter_mut()
                    .for_each(|v| *v += NOISE_RATE * rng.normal());
                let force_noise = [(); 3].map(|_| NOISE_FORCE * rng.normal());
                out.push(Sample {
                    truth,
                    measured,
                    force_noise,
                });
            }
        }
        out
    }

    /// The aerodynamic forces (world, N) in `air` at the samples' measured or true states,
    /// `[samples, 3]`.
    fn forces(&self, air: &Air, samples: &[Sample], measured: bool) -> Vec<f64> {
        let mut sim = self.sim.lock().unwrap_or_else(|p| p.into_inner());
        sim.options_mut().wind = air.wind;
        let fluid = sim.geom_fluid_mut(HULL);
        fluid[1] = self.drag0[0] * air.drag;
        fluid[2] = self.drag0[1] * air.drag;
        let mut out = Vec::with_capacity(samples.len() * 3);
        for s in samples {
            let st = if measured { &s.measured } else { &s.truth };
            let q = quaternion(&st.attitude);
            let qpos = [0.0, 0.0, 1.0, q[0], q[1], q[2], q[3]];
            let qvel = [
                st.velocity[0],
                st.velocity[1],
                st.velocity[2],
                st.rates[0],
                st.rates[1],
                st.rates[2],
            ];
            sim.forward(&qpos, &qvel);
            out.extend_from_slice(&sim.fluid_force()[..3]);
        }
        out
    }

    fn targets(&self, air: &Air, samples: &[Sample]) -> Vec<f32> {
        let truth = self.forces(air, samples, false);
        truth
            .iter()
            .enumerate()
            .map(|(i, f)| (f + samples[i / 3].force_noise[i % 3]) as f32)
            .collect()
    }

    /// The maximum a posteriori (wind, drag) of `targets` at `samples`: Levenberg-Marquardt
    /// with finite-difference Jacobians through MuJoCo from seven starts (still air, and
    /// 8 m/s along each axis both ways: the objective is not convex in the wind), the best.
    fn fit(&self, samples: &[Sample], targets: &[f32]) -> Air {
        let mut starts = vec![self.prior.mean];
        for axis in 0..3 {
            for sign in [-8.0, 8.0] {
                let mut s = self.prior.mean;
                s[axis] = sign;
                starts.push(s);
            }
        }
        starts
            .iter()
            .map(|s| self.descend(*s, samples, targets))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(theta, _)| Air::from_params(&theta))
            .expect("seven starts")
    }

    /// Levenberg-Marquardt on the MAP objective from `theta`: the end point and its cost.
    fn descend(&self, theta: [f64; 4], samples: &[Sample], targets: &[f32]) -> ([f64; 4], f64) {
        let p = &self.prior;
        let cost = |theta: &[f64; 4], f: &[f64]| -> f64 {
            let data: f64 = f
                .iter()
                .zip(targets)
                .map(|(f, t)| (f - *t as f64).powi(2))
                .sum::<f64>()
                / p.noise;
            data + (0..4)
                .map(|i| (theta[i] - p.mean[i]).powi(2) / p.variance[i])
                .sum::<f64>()
        };
        let mut theta = theta;
        let mut f = self.forces(&Air::from_params(&theta), samples, true);
        let mut c = cost(&theta, &f);
        let mut lambda = 1e-3;
        for _ in 0..50 {
            // Jacobian of the forces by central differences.
            let n = f.len();
            let mut jac = vec![0.0; n * 4];
            for i in 0..4 {
                let h = if i < 3 { 1e-4 } else { 1e-5 };
                let (mut up, mut down) = (theta, theta);
                up[i] += h;
                down[i] -= h;
                let fu = self.forces(&Air::from_params(&up), samples, true);
                let fd = self.forces(&Air::from_params(&down), samples, true);
                for r in 0..n {
                    jac[r * 4 + i] = (fu[r] - fd[r]) / (2.0 * h);
                }
            }
            let mut a = vec![0.0; 16];
            let mut g = [0.0; 4];
            for r in 0..n {
                let e = f[r] - targets[r] as f64;
                for i in 0..4 {
                    g[i] += jac[r * 4 + i] * e / p.noise;
                    for j in 0..4 {
                        a[i * 4 + j] += jac[r * 4 + i] * jac[r * 4 + j] / p.noise;
                    }
                }
            }
            for i in 0..4 {
                a[i * 4 + i] += 1.0 / p.variance[i];
                g[i] += (theta[i] - p.mean[i]) / p.variance[i];
            }
            let mut improved = false;
            for _ in 0..10 {
                let mut m = a.clone();
                for i in 0..4 {
                    m[i * 4 + i] *= 1.0 + lambda;
                }
                let mut step = g.to_vec();
                cholesky_solve(&mut m, 4, &mut step, 1);
                let mut next = theta;
                for i in 0..4 {
                    next[i] -= step[i];
                }
                next[3] = next[3].max(0.0);
                let fnext = self.forces(&Air::from_params(&next), samples, true);
                let cnext = cost(&next, &fnext);
                if cnext < c {
                    let done = c - cnext < 1e-9 * c.max(1.0);
                    (theta, f, c) = (next, fnext, cnext);
                    lambda = (lambda * 0.3).max(1e-9);
                    improved = true;
                    if done {
                        return (theta, c);
                    }
                    break;
                }
                lambda *= 10.0;
            }
            if !improved {
                break;
            }
        }
        (theta, c)
    }
}

impl Robot for Quadrotor {
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
        let air = Air::of_task(id);
        let samples = self.samples(id, support, query);
        let targets = self.targets(&air, &samples);
        super::append_split(
            &samples,
            |s, v| v.extend(s.features()),
            &targets,
            support,
            OUTPUTS,
            b,
        );
    }

    /// The nominal model predicts no residual force; the oracle knows MuJoCo's fluid model
    /// and fits the task's wind and drag factor to the support examples (the maximum a
    /// posteriori estimate under the family's prior, Gaussian-approximated), then predicts
    /// the queries with them.
    fn references(&self, id: u64, support: usize, query: usize) -> References {
        let air = Air::of_task(id);
        let samples = self.samples(id, support, query);
        let targets = self.targets(&air, &samples);
        let (s, q) = samples.split_at(support);
        let fitted = self.fit(s, &targets[..support * OUTPUTS]);
        References {
            nominal: vec![0.0; query * OUTPUTS],
            oracle: self
                .forces(&fitted, q, true)
                .iter()
                .map(|v| *v as f32)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
