//! Robot families simulated by MuJoCo (cargo feature `mujoco`; scripts/install-mujoco.sh
//! installs the library): a Franka Panda holding a payload it has never seen
//! (`panda-payload`) and a quadrotor in wind (`quadrotor-wind`). docs/robots.md describes
//! them and their results.
//!
//! A robot family knows two references for every test task beside the learned models: the
//! nominal model (what runs on the robot today: no payload, no wind) and an oracle that
//! knows the physics' structure (see [`Robot::references`]).

#[cfg(feature = "mujoco")]
pub mod panda;
#[cfg(feature = "mujoco")]
pub mod quadrotor;
#[cfg(feature = "mujoco")]
mod sim;

use super::Batch;

/// A robot family: tasks generated on the fly by a simulator.
pub trait Robot: Send + Sync + std::fmt::Debug {
    /// Scalars per input example.
    fn inputs(&self) -> usize;
    /// Scalars per target example.
    fn outputs(&self) -> usize;
    /// Support + query examples a task offers by default.
    fn examples_per_task(&self) -> usize;
    /// Appends task `id`'s `support` and `query` examples to `batch`.
    fn append(&self, id: u64, support: usize, query: usize, batch: &mut Batch);
    /// The two references' predictions of task `id`'s query targets, `[query, outputs]`
    /// each: the nominal model's (no payload / no wind), and the oracle's (the physics'
    /// structure with its unknown parameters fitted to the `support` examples).
    fn references(&self, id: u64, support: usize, query: usize) -> References;
}

/// A direction uniform on the unit sphere.
#[cfg(feature = "mujoco")]
fn unit_vector(rng: &mut crate::rng::Rng) -> [f64; 3] {
    loop {
        let d = [rng.normal(), rng.normal(), rng.normal()];
        let n = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        if n > 1e-6 {
            return d.map(|v| v / n);
        }
    }
}

/// Appends a task's examples to `b`: the first `support` samples' features (which
/// `features` appends) and targets to
/// the support set, the rest to the queries (`targets` holds `outputs` per sample).
#[cfg(feature = "mujoco")]
fn append_split<S>(
    samples: &[S],
    features: impl Fn(&S, &mut Vec<f32>),
    targets: &[f32],
    support: usize,
    outputs: usize,
    b: &mut Batch,
) {
    let (s, q) = samples.split_at(support);
    s.iter().for_each(|e| features(e, &mut b.xs));
    q.iter().for_each(|e| features(e, &mut b.xq));
    b.ys.extend_from_slice(&targets[..support * outputs]);
    b.yq.extend_from_slice(&targets[support * outputs..]);
}

/// Query predictions of a robot family's two references for one task.
#[derive(Clone, Debug, PartialEq)]
pub struct References {
    /// The nominal model's.
    pub nominal: Vec<f32>,
    /// The oracle's.
    pub oracle: Vec<f32>,
}

/// The robot of `problem` (`panda-payload` or `quadrotor-wind`), or why it is unavailable.
pub fn open(
    problem: super::Problem,
) -> Result<std::sync::Arc<dyn Robot>, crate::train::TrainError> {
    open_robot(problem).map_err(crate::train::TrainError::Tasks)
}

/// [`open`]'s work, its errors as messages.
fn open_robot(problem: super::Problem) -> Result<std::sync::Arc<dyn Robot>, String> {
    #[cfg(feature = "mujoco")]
    {
        match problem {
            super::Problem::PandaPayload => Ok(std::sync::Arc::new(panda::Panda::build()?)),
            super::Problem::QuadrotorWind => {
                Ok(std::sync::Arc::new(quadrotor::Quadrotor::build()?))
            }
            other => Err(format!("{other} is not a robot family")),
        }
    }
    #[cfg(not(feature = "mujoco"))]
    Err(format!(
        "{problem} is simulated by MuJoCo: this trainer was built without it (install it with \
         scripts/install-mujoco.sh and build with --features mujoco; see docs/robots.md)"
    ))
}
