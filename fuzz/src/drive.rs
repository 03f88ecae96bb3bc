//! One case through the whole C ABI, as a careless or hostile host would call it: load,
//! info, session (random options), adapt (random n, lengths, data, labels), predict,
//! save and load the state, a damaged state, reset. Whatever happens must be a status:
//! `MSR_ERR_INTERNAL`, an OK call with a non-finite number, a saved state that does not
//! load, or a failed call that changed the session are findings.

// The fuzzer is a C host: every unsafe block below calls the C ABI with live buffers and
// their true lengths, or with deliberately wrong lengths that never exceed the buffers
// (libmsr must refuse them before reading).
#![allow(clippy::undocumented_unsafe_blocks)]

use std::ptr;

use msr::*;
use msr_runtime::ModelRecord;

use crate::cases::{self, Rng};

/// Multiply-adds one case may spend adapting and predicting (about a second of one core);
/// inner steps are capped so a valid but large model stays under it.
const COMPUTE_BUDGET: u128 = 1 << 30;

/// The documented time bound of a call whose cost model predicts `work` units
/// (docs/model-format.md, "Limits"): [`BOUND_SLACK_NS`] plus [`BOUND_NS_PER_UNIT`] per unit,
/// in the calling thread's CPU time (a busy machine adds waiting, not work). A call over it
/// in two runs of its case is a finding.
pub const BOUND_NS_PER_UNIT: f64 = 4.0;
/// The bound's constant part: scheduling noise and a call's set-up.
pub const BOUND_SLACK_NS: f64 = 5e6;
/// Calls shorter than this are not used for the slowest-ratio statistic (where a cold
/// cache or a page fault weighs more than the work).
const TIMED_MIN_NS: f64 = 1e6;

/// What a case did.
pub enum Outcome {
    /// Every call gave a status; `loaded`, `adapted`: how far the case got; `slowest`: the
    /// largest time per predicted work unit (ns) of its calls over 1 ms, and which.
    Ok {
        loaded: bool,
        adapted: bool,
        slowest: Option<(f64, &'static str)>,
    },
    /// The model loads but no adaptation fits the compute budget.
    Skipped,
    /// A call returned MSR_ERR_INTERNAL.
    Internal(String),
    /// A call took longer than its bound (confirmed by running the case again).
    Slow(String),
    /// An OK call returned a non-finite number, or broke another guarantee.
    Broken(String),
}

/// Times calls of one session against the cost model's bound (`msr_session_cost`).
struct Clock {
    session: *mut msr_session,
    slowest: Option<(f64, &'static str)>,
}

impl Clock {
    /// The bound of `call` (an `msr_call`) on `n` examples, in work units; `None` when the
    /// session has none for it (observe without Gauss-Newton: refused anyway).
    fn predicted(&self, call: msr_call, n: usize) -> Option<u64> {
        let mut work = 0u64;
        let s = unsafe { msr_session_cost(self.session, call as i32, n, &mut work) };
        (s == msr_status::MSR_OK).then_some(work)
    }

    /// Runs `f`, a call of kind `call` on `n` examples; an error if it took longer than the
    /// bound.
    fn time(
        &mut self,
        call: msr_call,
        what: &'static str,
        n: usize,
        f: impl FnOnce() -> msr_status,
    ) -> Result<msr_status, String> {
        let predicted = self.predicted(call, n);
        let start = thread_cpu_ns();
        let status = f();
        let ns = thread_cpu_ns() - start;
        if let Some(work) = predicted {
            let bound = BOUND_SLACK_NS + BOUND_NS_PER_UNIT * work as f64;
            if ns > bound {
                return Err(format!(
                    "{what} took {:.1} ms, over its bound of {:.1} ms ({work} work units predicted)",
                    ns / 1e6,
                    bound / 1e6
                ));
            }
            if ns >= TIMED_MIN_NS {
                let ratio = ns / (work.max(1) as f64);
                if self.slowest.is_none_or(|(r, _)| ratio > r) {
                    self.slowest = Some((ratio, what));
                }
            }
        }
        Ok(status)
    }
}

/// The calling thread's CPU time, in ns.
fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; the clock id is a constant Linux knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

fn last_error() -> String {
    // SAFETY: msr_last_error returns a valid NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(msr_last_error()) }
        .to_string_lossy()
        .replace('\n', " ")
}

macro_rules! check {
    ($call:expr, $what:expr) => {{
        let s = $call;
        if s == msr_status::MSR_ERR_INTERNAL {
            return Outcome::Internal(format!("{}: {}", $what, last_error()));
        }
        s
    }};
}

struct Guard(*mut msr_model, *mut msr_session);
impl Drop for Guard {
    fn drop(&mut self) {
        unsafe { msr_session_free(&mut self.1) };
        unsafe { msr_model_free(&mut self.0) };
    }
}

fn data(r: &mut Rng, n: usize, special: f64, scale: f32) -> Vec<f32> {
    (0..n).map(|_| cases::float(r, special) * scale).collect()
}

/// Runs case `index` of the run with `seed`.
pub fn case(seed: u64, index: u64) -> Outcome {
    let once = || {
        let mut r = Rng::for_case(seed, index);
        let bytes = cases::model_bytes(&mut r);
        run(&mut r, &bytes)
    };
    match once() {
        // A time over the bound once can be a page of memory or a cache that another
        // process took: it counts if the case's second run is over it too.
        Outcome::Slow(_) => once(),
        o => o,
    }
}

fn run(r: &mut Rng, bytes: &[u8]) -> Outcome {
    let mut g = Guard(ptr::null_mut(), ptr::null_mut());
    let s = check!(
        unsafe { msr_model_load_bytes(bytes.as_ptr(), bytes.len(), &mut g.0) },
        "load"
    );
    if s != msr_status::MSR_OK {
        if !g.0.is_null() {
            return Outcome::Broken("a failed load handed out a model".into());
        }
        return Outcome::Ok {
            loaded: false,
            adapted: false,
            slowest: None,
        };
    }
    let mut info = msr_model_info::default();
    if check!(unsafe { msr_model_get_info(g.0, &mut info) }, "info") != msr_status::MSR_OK {
        return Outcome::Broken(format!("info failed: {}", last_error()));
    }
    // One example's work per pass: its multiply-adds, plus its activations' element-wise
    // work (an activation function, a loss term: erf or exp, counted as 32 multiply-adds
    // each). Without the second term a model of reshapes and activations alone counted as
    // free, and 1000 inner steps over 114 772 GELU outputs (13 s) passed the budget.
    let (macs, work) = match ModelRecord::from_bytes(bytes).map(|rec| rec.net.shapes()) {
        Ok(Ok(shapes)) => {
            let elems: u128 = shapes.activations.iter().map(|a| a.numel() as u128).sum();
            let macs = shapes.macs_per_example as u128;
            (macs, macs + 32 * elems)
        }
        _ => return Outcome::Broken("libmsr loaded a model the runtime refuses".into()),
    };

    // Options, sometimes at or past their limits.
    let mut o = msr_session_options {
        backend: if r.chance(0.01) {
            r.pick(&[-1, 1, 3, i32::MAX])
        } else {
            0
        },
        capacity: if r.chance(0.9) {
            r.pick(&[0, 1, 2, 3, 8])
        } else {
            r.pick(&[65_535, 65_536, 65_537, 1 << 40, usize::MAX])
        },
        inner_steps: if r.chance(0.9) {
            r.below(4) as usize
        } else {
            r.pick(&[1000, 1001, usize::MAX])
        },
        lr_scale: if r.chance(0.85) {
            r.pick(&[0.0, 0.5, 1.0, 2.0])
        } else {
            r.pick(&[1e30, -1.0, f32::NAN, f32::INFINITY, 1e-30])
        },
    };
    // burn's CPU backend (the reference path) for small models now and then.
    if o.backend == 0 && macs < 10_000 && r.chance(0.03) {
        o.backend = msr_backend::MSR_BACKEND_CPU_BURN as i32;
    }
    let n = 1 + r.below(4) as usize;
    let steps = if o.inner_steps == 0 {
        info.inner_steps
    } else {
        o.inner_steps
    } as u128;
    let cost = |steps: u128| work * n as u128 * (3 * steps + 4);
    if cost(steps.min(1000)) > COMPUTE_BUDGET {
        if cost(1) > COMPUTE_BUDGET {
            return Outcome::Skipped;
        }
        o.inner_steps = (1..=steps.min(1000))
            .rev()
            .find(|&s| cost(s) <= COMPUTE_BUDGET)
            .unwrap_or(1) as usize;
    }
    let s = check!(unsafe { msr_session_new(g.0, &o, &mut g.1) }, "session_new");
    if s != msr_status::MSR_OK {
        return Outcome::Ok {
            loaded: true,
            adapted: false,
            slowest: None,
        };
    }
    let (fi, fo) = (info.input_len, info.output_len);
    // Damped Gauss-Newton now and then, when its cost fits the budget: per step, a
    // forward and `outputs` backward passes per example, the P x P matrix and its solve.
    let p = info.adapted_len as u128;
    let steps_now = if o.inner_steps == 0 {
        info.inner_steps
    } else {
        o.inner_steps
    } as u128;
    let gn_cost = (steps_now + 1) * (n as u128 * (fo as u128 + 2) * (3 * work + p * p) + p * p * p);
    let gauss_newton = p <= 2048 && gn_cost <= COMPUTE_BUDGET && r.chance(0.25);
    if gauss_newton {
        let damping = if r.chance(0.9) {
            r.pick(&[1e-3, 0.01, 1.0, 100.0])
        } else {
            r.pick(&[0.0, -1.0, f32::NAN, f32::INFINITY, 1e-38, 3e38])
        };
        let inner = if r.chance(0.95) {
            r.pick(&[1, 2])
        } else {
            r.pick(&[3, -1, i32::MAX])
        };
        check!(
            unsafe { msr_session_set_inner(g.1, inner, damping) },
            "set_inner"
        );
        if r.chance(0.3) {
            let gamma = r.pick(&[1.0, 0.99, 0.5, 0.0, 1.5, f32::NAN]);
            check!(
                unsafe { msr_session_set_forgetting(g.1, gamma) },
                "set_forgetting"
            );
        }
    }
    // The cost model says what fits the case's budget: a session whose adaptation would
    // take more (a model whose file asks for Gauss-Newton, alone or after SGD) falls back
    // to SGD, and the case is skipped if even that does not fit. Now and then (2%) a case
    // runs an adaptation of up to 2^32 units, so that the time check sees the large end.
    let adapt_cost = |s: *mut msr_session| {
        let mut w = 0u64;
        let status = unsafe { msr_session_cost(s, msr_call::MSR_CALL_ADAPT as i32, n, &mut w) };
        (status == msr_status::MSR_OK).then_some(w as u128)
    };
    let large = r.chance(0.02);
    let fits = |w: u128| w <= COMPUTE_BUDGET || (large && w <= 1 << 32);
    if adapt_cost(g.1).is_some_and(|w| !fits(w)) {
        check!(unsafe { msr_session_set_inner(g.1, 0, 0.0) }, "set_inner");
        if adapt_cost(g.1).is_some_and(|w| !fits(w)) {
            return Outcome::Skipped;
        }
    }
    let special = r.pick(&[0.0, 0.0, 0.0, 0.01, 0.3]);
    let scale = r.pick(&[1.0, 1.0, 1e3, 1e18]);
    let x = data(r, n * fi, special, scale);
    let y = data(r, n * fo, special, 1.0);
    // A careless caller: wrong lengths, an n that overflows n * input_len.
    let (call_n, x_len) = match r.below(20) {
        0 => (n, x.len().saturating_sub(1)),
        1 => (n.wrapping_add(1 << 63), x.len()),
        2 => (usize::MAX / fi.max(1) + 1, x.len()),
        3 => (0, x.len()),
        _ => (n, x.len()),
    };
    let mut clock = Clock {
        session: g.1,
        slowest: None,
    };
    let mut loss = f32::NAN;
    let s = if info.loss == msr_loss::MSR_LOSS_MSE as i32 {
        check!(
            match clock.time(msr_call::MSR_CALL_ADAPT, "adapt", n, || unsafe {
                msr_session_adapt(
                    g.1,
                    x.as_ptr(),
                    x_len,
                    y.as_ptr(),
                    y.len(),
                    call_n,
                    &mut loss,
                )
            }) {
                Ok(s) => s,
                Err(m) => return Outcome::Slow(m),
            },
            "adapt"
        )
    } else {
        let labels: Vec<i32> = (0..n)
            .map(|i| {
                if r.chance(0.97) {
                    (i % fo) as i32
                } else {
                    r.pick(&[-1, fo as i32, i32::MAX])
                }
            })
            .collect();
        // `labels` holds n entries; a call_n above n comes with an x_len that cannot hold
        // call_n rows, and libmsr checks x_len before it reads a label.
        check!(
            match clock.time(msr_call::MSR_CALL_ADAPT, "adapt_labels", n, || unsafe {
                msr_session_adapt_labels(g.1, x.as_ptr(), x_len, labels.as_ptr(), call_n, &mut loss)
            }) {
                Ok(s) => s,
                Err(m) => return Outcome::Slow(m),
            },
            "adapt_labels"
        )
    };
    let adapted = s == msr_status::MSR_OK;
    if adapted && !loss.is_finite() {
        return Outcome::Broken(format!("adapt returned OK with loss {loss}"));
    }

    let mut out = vec![0.0f32; n * fo];
    let s = check!(
        match clock.time(msr_call::MSR_CALL_PREDICT, "predict", n, || unsafe {
            msr_session_predict(g.1, x.as_ptr(), x.len(), n, out.as_mut_ptr(), out.len())
        }) {
            Ok(s) => s,
            Err(m) => return Outcome::Slow(m),
        },
        "predict"
    );
    if s == msr_status::MSR_OK && out.iter().any(|v| !v.is_finite()) {
        return Outcome::Broken("predict returned OK with a non-finite output".into());
    }
    let mut predicted = (s == msr_status::MSR_OK).then(|| out.clone());

    // Streaming updates on a Gauss-Newton session: OK leaves finite predictions.
    if gauss_newton && info.loss == msr_loss::MSR_LOSS_MSE as i32 && r.chance(0.5) {
        let o = check!(
            match clock.time(msr_call::MSR_CALL_OBSERVE, "observe", n, || unsafe {
                msr_session_observe(g.1, x.as_ptr(), x_len, y.as_ptr(), y.len(), call_n)
            }) {
                Ok(s) => s,
                Err(m) => return Outcome::Slow(m),
            },
            "observe"
        );
        let mut after = vec![0.0f32; n * fo];
        let p = check!(
            unsafe {
                msr_session_predict(g.1, x.as_ptr(), x.len(), n, after.as_mut_ptr(), after.len())
            },
            "predict after observe"
        );
        if o == msr_status::MSR_OK
            && p == msr_status::MSR_OK
            && after.iter().any(|v| !v.is_finite())
        {
            return Outcome::Broken(
                "predict returned OK with a non-finite output after observe".into(),
            );
        }
        if o != msr_status::MSR_OK
            && p == msr_status::MSR_OK
            && let Some(before) = &predicted
            && after
                .iter()
                .zip(before)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Outcome::Broken("a refused observe changed the session".into());
        }
        // What the session predicts now (a successful observe moved it).
        predicted = (p == msr_status::MSR_OK).then_some(after);
    }

    // Save, and every saved state loads back.
    let mut state = vec![0u8; info.state_len];
    let mut written = 0usize;
    let s = check!(
        unsafe { msr_session_save_state(g.1, state.as_mut_ptr(), state.len(), &mut written) },
        "save_state"
    );
    if s == msr_status::MSR_OK {
        if written != info.state_len {
            return Outcome::Broken(format!(
                "save_state wrote {written} bytes, info says {}",
                info.state_len
            ));
        }
        let l = check!(
            unsafe { msr_session_load_state(g.1, state.as_ptr(), written) },
            "load_state"
        );
        if l != msr_status::MSR_OK {
            return Outcome::Broken(format!(
                "a state save_state wrote is refused: {}",
                last_error()
            ));
        }
        // A damaged state: refused without touching the session, or loaded and finite.
        let mut bad = state.clone();
        cases::mutate(r, &mut bad);
        if r.chance(0.7) && bad.len() >= 4 {
            msr_runtime::frame::seal(&mut bad);
        }
        let l = check!(
            unsafe { msr_session_load_state(g.1, bad.as_ptr(), bad.len()) },
            "load_state (damaged)"
        );
        let mut again = vec![0.0f32; n * fo];
        let p = check!(
            unsafe {
                msr_session_predict(g.1, x.as_ptr(), x.len(), n, again.as_mut_ptr(), again.len())
            },
            "predict after load_state"
        );
        if p == msr_status::MSR_OK && again.iter().any(|v| !v.is_finite()) {
            return Outcome::Broken(
                "predict returned OK with a non-finite output after load_state".into(),
            );
        }
        if l != msr_status::MSR_OK
            && p == msr_status::MSR_OK
            && let Some(before) = &predicted
            && again
                .iter()
                .zip(before)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Outcome::Broken("a refused load_state changed the session".into());
        }
    }
    check!(unsafe { msr_session_reset(g.1) }, "reset");
    Outcome::Ok {
        loaded: true,
        adapted,
        slowest: clock.slowest,
    }
}
