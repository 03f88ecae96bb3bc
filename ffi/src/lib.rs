//! libmsr: the C ABI over the msr runtime.
//!
//! Conventions, for every function:
//! - the return value is an [`msr_status`]; `MSR_OK` (0) is success;
//! - on failure, [`msr_last_error`] returns a message for the calling thread;
//! - pointers to arrays come with their element counts; shapes are row-major;
//! - a failed call leaves its objects exactly as they were;
//! - no panic crosses this boundary: an internal panic becomes `MSR_ERR_INTERNAL`.
//!
//! Threads: an `msr_model` is immutable and may be shared by any number of threads; an
//! `msr_session` belongs to one thread at a time (move it, don't share it).

#![allow(non_camel_case_types)]
// Every exported function checks its pointers before use; the safety contract is the
// header's documentation, not a Rust `unsafe fn` signature.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

mod burn_engine;

use burn_engine::BurnSession;
use msr_runtime::realtime::{RtModel, Session};
use msr_runtime::{DataError, Error, FormatError, Loss, ModelRecord};

/// Status of a call. `MSR_OK` is 0; every error is negative.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum msr_status {
    /// Success.
    MSR_OK = 0,
    /// A required pointer was NULL.
    MSR_ERR_NULL = -1,
    /// An argument is out of range: a wrong length, n = 0, an unknown option, a label out
    /// of range.
    MSR_ERR_INVALID_ARGUMENT = -2,
    /// The data holds NaN or infinity.
    MSR_ERR_NON_FINITE = -3,
    /// The model file (or saved state) is corrupted, truncated or inconsistent.
    MSR_ERR_FORMAT = -4,
    /// The model file (or saved state) has a format version this library does not read.
    MSR_ERR_VERSION = -5,
    /// A file could not be read.
    MSR_ERR_IO = -6,
    /// Adaptation diverged (non-finite or exploding loss); the session was rolled back.
    MSR_ERR_DIVERGED = -7,
    /// The requested backend is not available in this build or on this machine.
    MSR_ERR_BACKEND = -8,
    /// The operation does not apply to this model (e.g. labels for a regression model).
    MSR_ERR_UNSUPPORTED = -9,
    /// A bug: an internal panic was caught. Please report it with the message.
    MSR_ERR_INTERNAL = -100,
}

/// Loss a model adapts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum msr_loss {
    /// Regression: mean squared error; adapt with `msr_session_adapt`.
    MSR_LOSS_MSE = 0,
    /// Classification: softmax cross-entropy; adapt with `msr_session_adapt_labels`.
    MSR_LOSS_CROSS_ENTROPY = 1,
}

/// Compute backend of a session.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum msr_backend {
    /// The allocation-free CPU engine (the default; the real-time path).
    MSR_BACKEND_CPU = 0,
    /// The first GPU adapter, through burn-wgpu. Needs a libmsr built with the `wgpu`
    /// feature and an adapter (`MSR_ERR_BACKEND` otherwise; the library never falls back
    /// to the CPU on its own). Not allocation-free.
    MSR_BACKEND_GPU = 1,
    /// burn-ndarray on the CPU: the reference path the GPU shares (for checking results
    /// against the real-time engine). Not allocation-free.
    MSR_BACKEND_CPU_BURN = 2,
}

/// Facts about a model.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct msr_model_info {
    /// Floats per input example.
    pub input_len: usize,
    /// Floats per output example (classes, for classification).
    pub output_len: usize,
    /// `msr_loss` as an integer.
    pub loss: i32,
    /// Adapted parameters per task (all layers' v and biases).
    pub adapted_len: usize,
    /// Inner SGD steps the model was meta-trained with (the default for sessions).
    pub inner_steps: usize,
    /// Number of layers.
    pub layers: usize,
    /// Bytes needed by `msr_session_save_state`.
    pub state_len: usize,
}

/// Options of a new session. Zero-initialise, then set what you need; zeros mean defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct msr_session_options {
    /// `msr_backend` as an integer; 0 = CPU.
    pub backend: i32,
    /// Inner SGD steps per adaptation; 0 = the model's.
    pub inner_steps: usize,
    /// Multiplier of every layer's meta-learned inner learning rate; 0 = 1.0.
    pub lr_scale: f32,
    /// Examples processed per chunk (the workspace size); 0 = 32. Any number of examples
    /// is accepted; this only sizes the preallocated buffers.
    pub capacity: usize,
}

/// A loaded model (opaque). Immutable; share it freely across threads.
pub struct msr_model {
    rt: Arc<RtModel>,
    /// Kept for burn-backed sessions, which build their own tensors from it.
    record: ModelRecord,
}

// One per session, so the size difference costs nothing; the real-time engine stays inline.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Realtime(Session),
    Burn(Box<BurnSession>),
}

impl Engine {
    fn adapt(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        match self {
            Engine::Realtime(s) => s.adapt(x, y, n),
            Engine::Burn(s) => s.adapt(x, y, n),
        }
    }
    fn predict(&mut self, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), Error> {
        match self {
            Engine::Realtime(s) => s.predict(x, n, out),
            Engine::Burn(s) => s.predict(x, n, out),
        }
    }
    fn reset(&mut self) {
        match self {
            Engine::Realtime(s) => s.reset(),
            Engine::Burn(s) => s.reset(),
        }
    }
    fn save_state(&self, buf: &mut [u8]) -> Result<usize, Error> {
        match self {
            Engine::Realtime(s) => s.save_state(buf),
            Engine::Burn(s) => s.save_state(buf),
        }
    }
    fn load_state(&mut self, buf: &[u8]) -> Result<(), Error> {
        match self {
            Engine::Realtime(s) => s.load_state(buf),
            Engine::Burn(s) => s.load_state(buf),
        }
    }
}

/// One task's adapted state (opaque). One thread at a time.
pub struct msr_session {
    session: Engine,
    loss: Loss,
    classes: usize,
    /// One-hot targets built from labels, preallocated for `capacity` examples and grown
    /// (outside the real-time guarantee) only for larger label sets.
    onehot: Vec<f32>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: impl Into<String>) {
    let mut m = message.into();
    m.retain(|c| c != '\0');
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(m).expect("NULs removed"));
}

fn fail(status: msr_status, message: impl Into<String>) -> msr_status {
    set_error(message);
    status
}

fn from_error(e: Error) -> msr_status {
    let status = match &e {
        Error::Format(FormatError::UnsupportedVersion { .. }) => msr_status::MSR_ERR_VERSION,
        Error::Format(_) | Error::Shape(_) => msr_status::MSR_ERR_FORMAT,
        Error::Data(DataError::NonFinite(_)) => msr_status::MSR_ERR_NON_FINITE,
        Error::Data(_) => msr_status::MSR_ERR_INVALID_ARGUMENT,
        Error::Diverged(_) => msr_status::MSR_ERR_DIVERGED,
        Error::Io { .. } => msr_status::MSR_ERR_IO,
    };
    fail(status, e.to_string())
}

/// Runs `f`, turning a panic into `MSR_ERR_INTERNAL`.
fn guard(f: impl FnOnce() -> msr_status) -> msr_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(status) => {
            if status == msr_status::MSR_OK {
                set_error("");
            }
            status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            fail(
                msr_status::MSR_ERR_INTERNAL,
                format!("internal error (a bug): {what}"),
            )
        }
    }
}

macro_rules! non_null {
    ($($p:ident),+) => {
        $(if $p.is_null() {
            return fail(msr_status::MSR_ERR_NULL, concat!("`", stringify!($p), "` is NULL"));
        })+
    };
}

/// A slice from a C pointer and length. `ptr` must be non-NULL (checked by the caller).
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `ptr` points to `len` valid elements (documented).
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// The library version, e.g. "0.1.0". Static; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn msr_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the calling thread's last failed call ("" after a success). Valid until
/// the next msr call on this thread; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn msr_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn new_model(record: &ModelRecord, out: *mut *mut msr_model) -> msr_status {
    match RtModel::new(record) {
        Ok(rt) => {
            let model = Box::new(msr_model {
                rt,
                record: record.clone(),
            });
            // SAFETY: `out` was checked non-NULL by the caller.
            unsafe { *out = Box::into_raw(model) };
            msr_status::MSR_OK
        }
        Err(e) => from_error(e),
    }
}

/// Loads a model from a `.msr` file. On success `*out` owns a new model: free it with
/// `msr_model_free`. On failure `*out` is untouched.
#[unsafe(no_mangle)]
pub extern "C" fn msr_model_load_file(path: *const c_char, out: *mut *mut msr_model) -> msr_status {
    guard(|| {
        non_null!(path, out);
        // SAFETY: non-NULL, NUL-terminated by contract.
        let path = unsafe { CStr::from_ptr(path) };
        let Ok(path) = path.to_str() else {
            return fail(
                msr_status::MSR_ERR_INVALID_ARGUMENT,
                "path is not valid UTF-8",
            );
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return fail(msr_status::MSR_ERR_IO, format!("{path}: {e}")),
        };
        match ModelRecord::from_bytes(&bytes) {
            Ok(record) => new_model(&record, out),
            Err(e) => from_error(Error::Format(e)),
        }
    })
}

/// Loads a model from `len` bytes of a `.msr` file in memory (copied; the buffer may be
/// freed after the call). On success `*out` owns a new model.
#[unsafe(no_mangle)]
pub extern "C" fn msr_model_load_bytes(
    data: *const u8,
    len: usize,
    out: *mut *mut msr_model,
) -> msr_status {
    guard(|| {
        non_null!(data, out);
        // SAFETY: `data` points to `len` bytes by contract.
        let bytes = unsafe { slice(data, len) };
        match ModelRecord::from_bytes(bytes) {
            Ok(record) => new_model(&record, out),
            Err(e) => from_error(Error::Format(e)),
        }
    })
}

/// Frees a model and sets `*model` to NULL. Accepts NULL and a pointer to NULL. Sessions
/// created from the model keep it alive: free them in any order.
#[unsafe(no_mangle)]
pub extern "C" fn msr_model_free(model: *mut *mut msr_model) {
    let _ = guard(|| {
        if !model.is_null() {
            // SAFETY: `*model` is NULL or a pointer from msr_model_load_*.
            unsafe {
                if !(*model).is_null() {
                    drop(Box::from_raw(*model));
                    *model = std::ptr::null_mut();
                }
            }
        }
        msr_status::MSR_OK
    });
}

/// Fills `*info` with facts about `model`.
#[unsafe(no_mangle)]
pub extern "C" fn msr_model_get_info(
    model: *const msr_model,
    info: *mut msr_model_info,
) -> msr_status {
    guard(|| {
        non_null!(model, info);
        // SAFETY: checked non-NULL; a live model by contract.
        let rt = unsafe { &(*model).rt };
        let i = msr_model_info {
            input_len: rt.input_len(),
            output_len: rt.output_len(),
            loss: match rt.loss() {
                Loss::Mse => msr_loss::MSR_LOSS_MSE as i32,
                Loss::CrossEntropy => msr_loss::MSR_LOSS_CROSS_ENTROPY as i32,
            },
            adapted_len: rt.adapted_len(),
            inner_steps: rt.inner_steps(),
            layers: rt.layers(),
            state_len: rt.state_len(),
        };
        // SAFETY: checked non-NULL.
        unsafe { *info = i };
        msr_status::MSR_OK
    })
}

/// Creates a session at the model's meta-learned initialisation. `options` may be NULL
/// (defaults). All memory the session needs is allocated here: afterwards, adapt and
/// predict allocate nothing (labels beyond `capacity` examples excepted). Free it with
/// `msr_session_free`.
#[unsafe(no_mangle)]
pub extern "C" fn msr_session_new(
    model: *const msr_model,
    options: *const msr_session_options,
    out: *mut *mut msr_session,
) -> msr_status {
    guard(|| {
        non_null!(model, out);
        let opts = if options.is_null() {
            msr_session_options::default()
        } else {
            // SAFETY: checked non-NULL.
            unsafe { *options }
        };
        if !opts.lr_scale.is_finite() || opts.lr_scale < 0.0 {
            return fail(
                msr_status::MSR_ERR_INVALID_ARGUMENT,
                format!("lr_scale must be finite and >= 0, got {}", opts.lr_scale),
            );
        }
        // SAFETY: checked non-NULL; a live model by contract.
        let m = unsafe { &*model };
        let capacity = if opts.capacity == 0 {
            msr_runtime::realtime::DEFAULT_CAPACITY
        } else {
            opts.capacity
        };
        let burn = |device: msr_runtime::Device| -> Result<Engine, msr_status> {
            let mut b =
                BurnSession::new(&m.record, &device, m.rt.fingerprint(), m.rt.adapted_len())
                    .map_err(from_error)?;
            if opts.inner_steps > 0 {
                b.inner_steps = opts.inner_steps;
            }
            if opts.lr_scale > 0.0 {
                b.lr_scale = opts.lr_scale as f64;
            }
            Ok(Engine::Burn(Box::new(b)))
        };
        let session = match opts.backend {
            0 => {
                let mut session = Session::new(m.rt.clone(), capacity);
                if opts.inner_steps > 0 {
                    session.inner_steps = opts.inner_steps;
                }
                if opts.lr_scale > 0.0 {
                    session.lr_scale = opts.lr_scale;
                }
                Engine::Realtime(session)
            }
            1 => match msr_runtime::device::gpu(0) {
                Ok(device) => match burn(device) {
                    Ok(e) => e,
                    Err(status) => return status,
                },
                Err(e) => return fail(msr_status::MSR_ERR_BACKEND, e.to_string()),
            },
            2 => match burn(msr_runtime::device::cpu()) {
                Ok(e) => e,
                Err(status) => return status,
            },
            b => {
                return fail(
                    msr_status::MSR_ERR_INVALID_ARGUMENT,
                    format!("unknown backend {b}"),
                );
            }
        };
        let s = Box::new(msr_session {
            session,
            loss: m.rt.loss(),
            classes: m.rt.output_len(),
            onehot: vec![0.0; capacity * m.rt.output_len()],
        });
        // SAFETY: checked non-NULL.
        unsafe { *out = Box::into_raw(s) };
        msr_status::MSR_OK
    })
}

/// Frees a session and sets `*session` to NULL. Accepts NULL and a pointer to NULL.
#[unsafe(no_mangle)]
pub extern "C" fn msr_session_free(session: *mut *mut msr_session) {
    let _ = guard(|| {
        if !session.is_null() {
            // SAFETY: `*session` is NULL or a pointer from msr_session_new.
            unsafe {
                if !(*session).is_null() {
                    drop(Box::from_raw(*session));
                    *session = std::ptr::null_mut();
                }
            }
        }
        msr_status::MSR_OK
    });
}

fn session_mut<'a>(session: *mut msr_session) -> &'a mut msr_session {
    // SAFETY: checked non-NULL by the caller; a live session used by one thread by contract.
    unsafe { &mut *session }
}

/// The status of an adaptation; on success the loss goes to `*loss_out` unless it is NULL.
fn adapted(result: Result<f32, Error>, loss_out: *mut f32) -> msr_status {
    match result {
        Ok(loss) => {
            if !loss_out.is_null() {
                // SAFETY: checked non-NULL; a writable float by contract.
                unsafe { *loss_out = loss };
            }
            msr_status::MSR_OK
        }
        Err(e) => from_error(e),
    }
}

/// Adapts the meta-learned initialisation to a regression support set: `x` `[n, input_len]`,
/// `y` `[n, output_len]`, with the session's inner steps. If `loss_out` is not NULL it
/// receives the support loss after adapting. On `MSR_ERR_DIVERGED` the session keeps its
/// previous parameters. Allocation-free.
#[unsafe(no_mangle)]
pub extern "C" fn msr_session_adapt(
    session: *mut msr_session,
    x: *const f32,
    x_len: usize,
    y: *const f32,
    y_len: usize,
    n: usize,
    loss_out: *mut f32,
) -> msr_status {
    guard(|| {
        non_null!(session, x, y);
        let s = session_mut(session);
        if s.loss != Loss::Mse {
            return fail(
                msr_status::MSR_ERR_UNSUPPORTED,
                "this is a classification model: adapt it with msr_session_adapt_labels",
            );
        }
        // SAFETY: pointers and lengths by contract.
        let (xs, ys) = unsafe { (slice(x, x_len), slice(y, y_len)) };
        adapted(s.session.adapt(xs, ys, n), loss_out)
    })
}

/// Adapts a classification model to a support set: `x` `[n, input_len]`, `labels` `[n]`
/// class indices in `[0, output_len)`. Otherwise as `msr_session_adapt`. Allocation-free
/// for `n <= capacity`.
#[unsafe(no_mangle)]
pub extern "C" fn msr_session_adapt_labels(
    session: *mut msr_session,
    x: *const f32,
    x_len: usize,
    labels: *const i32,
    n: usize,
    loss_out: *mut f32,
) -> msr_status {
    guard(|| {
        non_null!(session, x, labels);
        let s = session_mut(session);
        let classes = s.classes;
        if s.loss != Loss::CrossEntropy {
            return fail(
                msr_status::MSR_ERR_UNSUPPORTED,
                "this is a regression model: adapt it with msr_session_adapt",
            );
        }
        // SAFETY: pointers and lengths by contract.
        let (xs, ls) = unsafe { (slice(x, x_len), slice(labels, n)) };
        if let Some((i, l)) = ls
            .iter()
            .enumerate()
            .find(|(_, l)| **l < 0 || **l as usize >= classes)
        {
            return fail(
                msr_status::MSR_ERR_INVALID_ARGUMENT,
                format!("label {i} is {l}, outside [0, {classes})"),
            );
        }
        if s.onehot.len() < n * classes {
            s.onehot.resize(n * classes, 0.0);
        }
        let y = &mut s.onehot[..n * classes];
        y.fill(0.0);
        for (r, l) in ls.iter().enumerate() {
            y[r * classes + *l as usize] = 1.0;
        }
        adapted(s.session.adapt(xs, y, n), loss_out)
    })
}

/// Predicts `out` `[n, output_len]` (logits, for classification) for `x` `[n, input_len]`
/// with the session's current parameters. `out_len` must be `n * output_len`.
/// Allocation-free and lock-free.
#[unsafe(no_mangle)]
pub extern "C" fn msr_session_predict(
    session: *mut msr_session,
    x: *const f32,
    x_len: usize,
    n: usize,
    out: *mut f32,
    out_len: usize,
) -> msr_status {
    guard(|| {
        non_null!(session, x, out);
        let s = session_mut(session);
        // SAFETY: pointers and lengths by contract; `out` is writable for `out_len` floats.
        let (xs, o) = unsafe {
            (
                slice(x, x_len),
                std::slice::from_raw_parts_mut(out, out_len),
            )
        };
        match s.session.predict(xs, n, o) {
            Ok(()) => msr_status::MSR_OK,
            Err(e) => from_error(e),
        }
    })
}

/// Returns the session to the model's meta-learned initialisation.
#[unsafe(no_mangle)]
pub extern "C" fn msr_session_reset(session: *mut msr_session) -> msr_status {
    guard(|| {
        non_null!(session);
        session_mut(session).session.reset();
        msr_status::MSR_OK
    })
}

/// Writes the session's adapted parameters to `buf` (`len` bytes, at least the model's
/// `state_len`) and the byte count to `*written`. A robot can keep one state per tool or
/// terrain and restore it with `msr_session_load_state`.
#[unsafe(no_mangle)]
pub extern "C" fn msr_session_save_state(
    session: *const msr_session,
    buf: *mut u8,
    len: usize,
    written: *mut usize,
) -> msr_status {
    guard(|| {
        non_null!(session, buf, written);
        // SAFETY: checked non-NULL; `buf` is writable for `len` bytes by contract.
        let (s, b) = unsafe { (&*session, std::slice::from_raw_parts_mut(buf, len)) };
        match s.session.save_state(b) {
            Ok(n) => {
                // SAFETY: checked non-NULL.
                unsafe { *written = n };
                msr_status::MSR_OK
            }
            Err(e) => from_error(e),
        }
    })
}

/// Restores parameters saved by `msr_session_save_state` from a session of the same model.
/// A state of another model, a corrupted or truncated one, is refused (`MSR_ERR_FORMAT`)
/// and the session is left as it was.
#[unsafe(no_mangle)]
pub extern "C" fn msr_session_load_state(
    session: *mut msr_session,
    buf: *const u8,
    len: usize,
) -> msr_status {
    guard(|| {
        non_null!(session, buf);
        // SAFETY: pointers and lengths by contract.
        let b = unsafe { slice(buf, len) };
        match session_mut(session).session.load_state(b) {
            Ok(()) => msr_status::MSR_OK,
            Err(e) => from_error(e),
        }
    })
}
