//! The payloads of panda-payload's tasks: solid boxes of random size and orientation, their
//! centre of mass near the end effector, and their 10 inertial parameters.

use super::super::sim::Inertial;
use super::{PARAMS, Problem, Rng};

/// One task's payload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Payload(pub(in crate::tasks::robots) Inertial);

/// Rotation matrix of the unit quaternion `[w, x, y, z]`.
fn rotation(q: [f64; 4]) -> [[f64; 3]; 3] {
    let [w, x, y, z] = q;
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// A uniformly random unit quaternion.
fn random_rotation(rng: &mut Rng) -> [f64; 4] {
    loop {
        let q = [rng.normal(), rng.normal(), rng.normal(), rng.normal()];
        let n = q.iter().map(|v| v * v).sum::<f64>().sqrt();
        if n > 1e-6 {
            return q.map(|v| v / n);
        }
    }
}

impl Payload {
    /// A solid box of `mass` with random sides (`sides` m) and orientation, its centre of
    /// mass uniformly inside a ball of `radius` around the end-effector site.
    pub(super) fn random(mass: f64, radius: f64, sides: [f64; 2], rng: &mut Rng) -> Self {
        let dir = crate::tasks::robots::unit_vector(rng);
        let r = radius * rng.uniform().cbrt();
        let [a, b, c] = [(); 3].map(|_| rng.range(sides[0], sides[1]));
        Payload(Inertial {
            mass,
            com: dir.map(|d| d * r),
            axes: random_rotation(rng),
            principal: [b * b + c * c, a * a + c * c, a * a + b * b].map(|s| mass * s / 12.0),
        })
    }

    /// The payload of task `id`.
    pub fn of_task(id: u64) -> Self {
        let mut rng = Rng::derive(&[Problem::PandaPayload as u64, id, 1]);
        let mass = rng.range(0.0, 3.0);
        Self::random(mass, 0.1, [0.02, 0.2], &mut rng)
    }

    /// The payload's mass (kg).
    pub fn mass(&self) -> f64 {
        self.0.mass
    }

    /// Its 10 inertial parameters ([`PARAMS`]).
    pub fn params(&self) -> [f64; PARAMS] {
        let Inertial {
            mass: m,
            com: c,
            axes,
            principal: d,
        } = self.0;
        let r = rotation(axes);
        // Inertia about the centre of mass in body axes, R diag(d) R^T, then moved to the
        // body's origin (parallel axis theorem).
        let mut i = [[0.0; 3]; 3];
        let cc = c.iter().map(|v| v * v).sum::<f64>();
        for (a, row) in i.iter_mut().enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|k| r[a][k] * d[k] * r[b][k]).sum::<f64>()
                    + m * (if a == b { cc } else { 0.0 } - c[a] * c[b]);
            }
        }
        [
            m,
            m * c[0],
            m * c[1],
            m * c[2],
            i[0][0],
            i[1][1],
            i[2][2],
            i[0][1],
            i[0][2],
            i[1][2],
        ]
    }
}
