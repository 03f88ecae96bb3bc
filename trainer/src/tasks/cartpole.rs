//! `cartpole`: a generated robot-like regression family. A task is a cart-pole with its own
//! cart mass, pole mass, pole half-length and viscous cart and pole friction; an example is
//! a state and a horizontal force, and its target the accelerations the classic cart-pole
//! equations give (Barto, Sutton & Anderson 1983, with friction as in Florian 2007), plus
//! accelerometer-like noise. Inputs are in raw units (m/s, rad/s, N): a model must
//! normalise them.
//!
//! Inputs (5): cart velocity (m/s), sin and cos of the pole angle, pole angular velocity
//! (rad/s), force on the cart (N). Targets (2): cart acceleration (m/s^2), pole angular
//! acceleration (rad/s^2).

use super::*;

/// Scalars per input example.
pub const INPUTS: usize = 5;
/// Scalars per target example.
pub const OUTPUTS: usize = 2;
/// Examples per task: enough for 50 support examples and 50 queries.
pub const EXAMPLES: usize = 100;

const GRAVITY: f64 = 9.81;
/// Standard deviation of the target noise, per output (m/s^2, rad/s^2).
const NOISE: [f64; OUTPUTS] = [0.05, 0.1];

/// The physical parameters of one task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CartPole {
    /// Cart mass (kg), 0.5 to 2.
    pub cart_mass: f64,
    /// Pole mass (kg), 0.05 to 0.5.
    pub pole_mass: f64,
    /// Pole half-length (m), 0.25 to 1.
    pub half_length: f64,
    /// Viscous friction of the cart (N s/m), 0 to 1.
    pub cart_friction: f64,
    /// Viscous friction of the pole joint (N m s/rad), 0 to 0.05.
    pub pole_friction: f64,
}

impl CartPole {
    /// The task `id`'s parameters.
    pub fn of_task(id: u64) -> Self {
        let mut rng = Rng::derive(&[Problem::Cartpole as u64, id, 1]);
        CartPole {
            cart_mass: rng.range(0.5, 2.0),
            pole_mass: rng.range(0.05, 0.5),
            half_length: rng.range(0.25, 1.0),
            cart_friction: rng.range(0.0, 1.0),
            pole_friction: rng.range(0.0, 0.05),
        }
    }

    /// Cart and pole accelerations for cart velocity `v`, pole angle `theta`, pole angular
    /// velocity `omega` and force `force`.
    pub fn accelerations(&self, v: f64, theta: f64, omega: f64, force: f64) -> [f64; 2] {
        let (m_c, m_p, l) = (self.cart_mass, self.pole_mass, self.half_length);
        let total = m_c + m_p;
        let (sin, cos) = theta.sin_cos();
        let temp = (force + m_p * l * omega * omega * sin - self.cart_friction * v) / total;
        let alpha = (GRAVITY * sin - cos * temp - self.pole_friction * omega / (m_p * l))
            / (l * (4.0 / 3.0 - m_p * cos * cos / total));
        let acc = temp - m_p * l * alpha * cos / total;
        [acc, alpha]
    }
}

/// Appends `n` examples of the task `pole` (drawn from `rng`) to `x` and `y`.
pub(super) fn examples(
    pole: &CartPole,
    n: usize,
    rng: &mut Rng,
    x: &mut Vec<f32>,
    y: &mut Vec<f32>,
) {
    for _ in 0..n {
        let v = rng.range(-2.0, 2.0);
        let theta = rng.range(-std::f64::consts::PI, std::f64::consts::PI);
        let omega = rng.range(-3.0, 3.0);
        let force = rng.range(-10.0, 10.0);
        x.extend([v, theta.sin(), theta.cos(), omega, force].map(|f| f as f32));
        let acc = pole.accelerations(v, theta, omega, force);
        for (a, s) in acc.iter().zip(NOISE) {
            y.push((a + s * rng.normal()) as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At rest and upright, nothing moves; a hanging pole swings back; a push accelerates
    /// the cart by F / (m_c + m_p) when the pole hangs straight down (no torque on it).
    #[test]
    fn the_equations_behave_physically() {
        let p = CartPole::of_task(3);
        let [a, alpha] = p.accelerations(0.0, 0.0, 0.0, 0.0);
        assert_eq!((a, alpha), (0.0, 0.0));
        let [_, alpha] = p.accelerations(0.0, 0.1, 0.0, 0.0);
        assert!(
            alpha > 0.0,
            "an upright pole tipped right falls right: {alpha}"
        );
        let [a, _] = p.accelerations(0.0, std::f64::consts::PI, 0.0, 5.0);
        let m = p.cart_mass + p.pole_mass;
        // Hanging down, a push also swings the pole, which couples back: close, not equal.
        assert!((a - 5.0 / m).abs() < 0.5 * 5.0 / m, "{a} vs {}", 5.0 / m);
        assert_ne!(CartPole::of_task(1), CartPole::of_task(2));
    }
}
