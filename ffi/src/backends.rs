//! The backends a session runs on, opened by one function: the real-time CPU engine
//! always; burn's CPU backend (the reference path) and the GPU where libmsr is built with
//! the `burn` (or `wgpu`) feature, and a stand-in that says how to get them where it is not.

use msr_core::realtime::{Engine, Session};

use crate::{fail, from_error, msr_model, msr_session_options, msr_status};

/// Opens a session of model `m` on `opts.backend` (an `msr_backend`), with the options'
/// inner steps and learning-rate scale (0: the model's) and `capacity` examples per chunk.
pub(crate) fn open(
    m: &msr_model,
    opts: &msr_session_options,
    capacity: usize,
) -> Result<Box<dyn Engine>, msr_status> {
    match opts.backend {
        0 => {
            let mut session = Session::new(m.rt.clone(), capacity).map_err(from_error)?;
            if opts.inner_steps > 0 {
                session.inner_steps = opts.inner_steps;
            }
            if opts.lr_scale > 0.0 {
                session.lr_scale = opts.lr_scale;
            }
            // Every call with these options within the compute limit, or refused now.
            session.check_budget().map_err(from_error)?;
            Ok(Box::new(session))
        }
        1 => burn::open(m, opts, burn::Device::Gpu),
        2 => burn::open(m, opts, burn::Device::Cpu),
        b => Err(fail(
            msr_status::MSR_ERR_INVALID_ARGUMENT,
            format!("unknown backend {b}"),
        )),
    }
}

/// burn's sessions.
#[cfg(feature = "burn")]
mod burn {
    use super::*;
    use msr_runtime::burn_session::BurnSession;

    /// Where a burn session runs.
    pub(super) enum Device {
        Gpu,
        Cpu,
    }

    pub(super) fn open(
        m: &msr_model,
        opts: &msr_session_options,
        device: Device,
    ) -> Result<Box<dyn Engine>, msr_status> {
        let device = match device {
            Device::Gpu => msr_runtime::device::gpu(0)
                .map_err(|e| fail(msr_status::MSR_ERR_BACKEND, e.to_string()))?,
            Device::Cpu => msr_runtime::device::cpu(),
        };
        let mut b = BurnSession::new(&m.record, &m.rt, &device).map_err(from_error)?;
        if opts.inner_steps > 0 {
            b.inner_steps = opts.inner_steps;
        }
        if opts.lr_scale > 0.0 {
            b.lr_scale = opts.lr_scale as f64;
        }
        Ok(Box::new(b))
    }
}

/// The stand-in for burn's sessions in a libmsr built without them.
#[cfg(not(feature = "burn"))]
mod burn {
    use super::*;

    /// Where a burn session would run.
    pub(super) enum Device {
        Gpu,
        Cpu,
    }

    pub(super) fn open(
        _m: &msr_model,
        _opts: &msr_session_options,
        device: Device,
    ) -> Result<Box<dyn Engine>, msr_status> {
        let b = match device {
            Device::Gpu => 1,
            Device::Cpu => 2,
        };
        Err(fail(
            msr_status::MSR_ERR_BACKEND,
            format!(
                "backend {b} runs on burn, and this libmsr was built without it (cargo feature `burn`, or `wgpu` for the GPU)"
            ),
        ))
    }
}
