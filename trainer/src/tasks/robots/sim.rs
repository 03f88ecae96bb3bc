//! The little of MuJoCo the robot families use, over the `mujoco-rs` binding: a model
//! compiled from an MJCF string, its data, inverse dynamics and a body's inertial
//! parameters.

use mujoco_rs::mujoco_c::{mj_version, mjVERSION_HEADER};
use mujoco_rs::prelude::*;

/// A compiled model and its data. Not shareable between threads: the families keep it
/// behind a mutex (one task's examples at a time).
pub(super) struct Sim {
    data: MjData<Box<MjModel>>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.data.model().ffi();
        write!(
            f,
            "Sim {{ nq: {}, nv: {}, nbody: {} }}",
            m.nq, m.nv, m.nbody
        )
    }
}

/// A body's inertial parameters as MuJoCo stores them: mass, centre of mass and principal
/// inertia (in the frame of the quaternion `axes`), all in the body's frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Inertial {
    pub mass: f64,
    pub com: [f64; 3],
    pub axes: [f64; 4],
    pub principal: [f64; 3],
}

impl Inertial {
    /// No mass at all.
    pub const NONE: Inertial = Inertial {
        mass: 0.0,
        com: [0.0; 3],
        axes: [1.0, 0.0, 0.0, 0.0],
        principal: [0.0; 3],
    };
}

impl Sim {
    /// Compiles `mjcf` (named `name` in errors). Refuses a MuJoCo library other than the
    /// one the binding was generated for (3.17.0) instead of letting the binding abort.
    pub fn new(name: &str, mjcf: &str) -> Result<Self, String> {
        // SAFETY: mj_version only reads a constant of the loaded library.
        let linked = unsafe { mj_version() } as u32;
        if linked != mjVERSION_HEADER {
            return Err(format!(
                "the MuJoCo library found is version {linked}, this build needs {mjVERSION_HEADER} \
                 (scripts/install-mujoco.sh installs it; check LD_LIBRARY_PATH)"
            ));
        }
        let model =
            MjModel::from_xml_string(mjcf).map_err(|e| format!("MuJoCo rejects {name}: {e}"))?;
        let data = MjData::try_new(Box::new(model))
            .map_err(|e| format!("MuJoCo cannot allocate {name}'s data: {e}"))?;
        Ok(Sim { data })
    }

    /// The model.
    pub fn model(&self) -> &MjModel {
        self.data.model()
    }

    /// The id of the body `name`.
    pub fn body(&self, name: &str) -> Result<usize, String> {
        self.model()
            .name_to_id(MjtObjBase::mjOBJ_BODY, name)
            .ok_or_else(|| format!("the model has no body '{name}'"))
    }

    /// Gives body `id` the inertial parameters `p`.
    pub fn set_inertial(&mut self, id: usize, p: &Inertial) {
        // SAFETY: only values change, no size, index or address table (model_mut's contract).
        let m = unsafe { self.data.model_mut() };
        m.body_mass_mut()[id] = p.mass;
        m.body_ipos_mut()[id] = p.com;
        m.body_iquat_mut()[id] = p.axes;
        m.body_inertia_mut()[id] = p.principal;
        // The compiler marks a body whose inertial frame is its own frame (the payload's,
        // massless in the file) and kinematics then skips ipos and iquat: unmark it.
        m.body_sameframe_mut()[id] = MjtSameFrame::mjSAMEFRAME_NONE;
    }

    /// The model's physics options (wind, density...), to change.
    pub fn options_mut(&mut self) -> &mut MjOption {
        self.data.model_opt_mut()
    }

    /// Geom `geom`'s fluid coefficients, to change (`geom_fluid`, 12 per geom).
    pub fn geom_fluid_mut(&mut self, geom: usize) -> &mut [f64; 12] {
        // SAFETY: only values change (model_mut's contract).
        let m = unsafe { self.data.model_mut() };
        &mut m.geom_fluid_mut()[geom]
    }

    /// Generalised forces that produce accelerations `qacc` at `qpos`, `qvel`
    /// (`mj_inverse`'s `qfrc_inverse`), written to `out` (`nv` long).
    pub fn inverse(&mut self, qpos: &[f64], qvel: &[f64], qacc: &[f64], out: &mut [f64]) {
        self.data.qpos_mut().copy_from_slice(qpos);
        self.data.qvel_mut().copy_from_slice(qvel);
        self.data.qacc_mut().copy_from_slice(qacc);
        self.data.inverse();
        out.copy_from_slice(self.data.qfrc_inverse());
    }

    /// Runs the position and velocity stages at `qpos`, `qvel` (`mj_forward`).
    pub fn forward(&mut self, qpos: &[f64], qvel: &[f64]) {
        self.data.qpos_mut().copy_from_slice(qpos);
        self.data.qvel_mut().copy_from_slice(qvel);
        self.data.forward();
    }

    /// The fluid forces of the last [`Sim::forward`] (`qfrc_fluid`, `nv` long).
    pub fn fluid_force(&self) -> &[f64] {
        self.data.qfrc_fluid()
    }

    #[cfg(test)]
    /// After [`Sim::forward`]: body `body`'s origin, joint `joint`'s anchor and axis, in
    /// world coordinates.
    pub fn frames(&self, body: usize, joint: usize) -> [[f64; 3]; 3] {
        [
            self.data.xpos()[body],
            self.data.xanchor()[joint],
            self.data.xaxis()[joint],
        ]
    }
}
