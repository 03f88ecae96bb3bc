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
//! Safety, for every function that takes pointers (all are `unsafe extern "C"`): each
//! pointer is NULL (refused with `MSR_ERR_NULL` where it is required) or valid for what
//! the function documents: arrays for the element counts passed with them, `msr_model`
//! and `msr_session` pointers from this library and not yet freed, and a session used by
//! one thread at a time (a second thread inside the same session gets `MSR_ERR_BUSY`).

use std::cell::{Cell, RefCell, UnsafeCell};
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use msr_core::error::ErrorKind;
use msr_core::realtime::{Engine, Inner, MAX_CAPACITY, RtModel, check_len};
use msr_core::spec::limits;
use msr_core::{DataError, Error, Loss, ModelRecord};

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
    /// The session is in use by another thread right now (a session belongs to one thread
    /// at a time); nothing was done.
    MSR_ERR_BUSY = -10,
    /// Memory could not be allocated (the message says for what and how much); nothing was
    /// changed.
    MSR_ERR_OUT_OF_MEMORY = -11,
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

/// How a session adapts (`msr_session_set_inner`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum msr_inner {
    /// SGD with the meta-learned per-layer learning rates (the default).
    MSR_INNER_SGD = 0,
    /// Damped Gauss-Newton (Levenberg-Marquardt) in the space of the adapted parameters,
    /// with a prior at the meta-learned initialisation: the support objective never rises,
    /// so more steps or more examples never diverge. Switchable on the CPU real-time engine.
    MSR_INNER_GAUSS_NEWTON = 1,
    /// The session's SGD steps, then damped Gauss-Newton steps from where they ended (the
    /// prior centred there): the adaptation `trainer train --inner sgd+gn` meta-trains
    /// through, and the default of a model whose file has a `refine` record (then with its
    /// number of Gauss-Newton steps; 1 otherwise). CPU real-time engine.
    MSR_INNER_SGD_THEN_GAUSS_NEWTON = 2,
}

/// A call of a session, for `msr_session_cost`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum msr_call {
    /// `msr_session_predict`.
    MSR_CALL_PREDICT = 0,
    /// `msr_session_adapt` and `msr_session_adapt_labels` (and `msr_session_refine` with
    /// the session's own number of steps), with the session's algorithm.
    MSR_CALL_ADAPT = 1,
    /// `msr_session_observe` (needs Gauss-Newton on).
    MSR_CALL_OBSERVE = 2,
    /// `msr_session_save_state` and `msr_session_load_state`.
    MSR_CALL_STATE = 3,
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
    /// Inner SGD steps per adaptation; 0 = the model's. At most 1000.
    pub inner_steps: usize,
    /// Multiplier of every layer's meta-learned inner learning rate; 0 = 1.0.
    pub lr_scale: f32,
    /// Examples processed per chunk (the workspace size); 0 = 32, at most 65536. Any number
    /// of examples is accepted; this only sizes the preallocated buffers (see
    /// `msr_model_session_bytes`).
    pub capacity: usize,
}

/// A loaded model (opaque). Immutable; share it freely across threads.
pub struct msr_model {
    rt: Arc<RtModel>,
    /// Kept for burn-backed sessions, which build their own tensors from it.
    #[cfg(feature = "burn")]
    record: ModelRecord,
}

/// One task's adapted state (opaque). One thread at a time: a call made while another
/// thread is inside a call on the same session returns `MSR_ERR_BUSY` and does nothing.
pub struct msr_session {
    /// Set while a call is inside the session (one atomic exchange per call, no lock).
    busy: AtomicBool,
    state: UnsafeCell<SessionState>,
}

struct SessionState {
    /// The backend: the real-time engine, or (feature `burn`) a burn session.
    session: Box<dyn Engine>,
    loss: Loss,
    classes: usize,
    /// Gauss-Newton steps of `MSR_INNER_SGD_THEN_GAUSS_NEWTON`: the model's `refine`
    /// record's, or 1.
    refine_steps: usize,
    /// One-hot targets built from labels, preallocated for `capacity` examples and grown
    /// (outside the real-time guarantee) only for larger label sets.
    onehot: Vec<f32>,
}

thread_local! {
    /// The thread's last error message; `None` after a call that succeeded (clearing it
    /// frees, never allocates: the success path of every call stays allocation-free).
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// How many msr calls this thread is inside (the panic hook stays quiet while > 0).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Where the last caught panic happened (set by the hook).
    static PANIC_LOCATION: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_error(message: impl Into<String>) {
    let mut m = message.into();
    m.retain(|c| c != '\0');
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(CString::new(m).expect("NULs removed")));
}

/// After a call that succeeded: no message (frees the last one; allocates nothing).
fn clear_error() {
    LAST_ERROR.with(|e| e.borrow_mut().take());
}

fn fail(status: msr_status, message: impl Into<String>) -> msr_status {
    set_error(message);
    status
}

/// The status of each kind of error, one to one.
fn status_of(kind: ErrorKind) -> msr_status {
    match kind {
        ErrorKind::InvalidArgument => msr_status::MSR_ERR_INVALID_ARGUMENT,
        ErrorKind::NonFinite => msr_status::MSR_ERR_NON_FINITE,
        ErrorKind::Format => msr_status::MSR_ERR_FORMAT,
        ErrorKind::Version => msr_status::MSR_ERR_VERSION,
        ErrorKind::Io => msr_status::MSR_ERR_IO,
        ErrorKind::Diverged => msr_status::MSR_ERR_DIVERGED,
        ErrorKind::OutOfMemory => msr_status::MSR_ERR_OUT_OF_MEMORY,
    }
}

fn from_error(e: Error) -> msr_status {
    fail(status_of(e.kind()), e.to_string())
}

/// The status of an [`Engine`] call that only some engines implement (`None`: this one
/// does not, `MSR_ERR_UNSUPPORTED` with `why`).
fn engine_only(result: Option<Result<(), Error>>, why: &str) -> msr_status {
    match result {
        Some(Ok(())) => msr_status::MSR_OK,
        Some(Err(e)) => from_error(e),
        None => fail(msr_status::MSR_ERR_UNSUPPORTED, why),
    }
}

const NO_STREAMING: &str = "this backend has no streaming updates; use the CPU real-time engine";

/// Installs, once per process, a panic hook that prints nothing for panics inside an msr
/// call (they become `MSR_ERR_INTERNAL` with the message in `msr_last_error`) and hands
/// every other panic to the hook that was there before.
fn install_quiet_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let inside = DEPTH.try_with(|d| d.get() > 0).unwrap_or(false);
            if inside {
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let _ = PANIC_LOCATION.try_with(|p| *p.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Leaves the DEPTH count as it was, even when the call unwinds.
struct Inside;
impl Inside {
    fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        Inside
    }
}
impl Drop for Inside {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Runs `f`, turning a panic into `MSR_ERR_INTERNAL` (nothing printed on stderr).
fn guard(f: impl FnOnce() -> msr_status) -> msr_status {
    install_quiet_panic_hook();
    let result = {
        let _inside = Inside::enter();
        catch_unwind(AssertUnwindSafe(f))
    };
    match result {
        Ok(status) => {
            if status == msr_status::MSR_OK {
                clear_error();
            }
            status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let at = PANIC_LOCATION.with(|p| std::mem::take(&mut *p.borrow_mut()));
            fail(
                msr_status::MSR_ERR_INTERNAL,
                format!("internal error (a bug; please report it): {what}{at}"),
            )
        }
    }
}

/// Clears the session's in-use flag when a call leaves it, even by unwinding.
struct Claim<'a>(&'a AtomicBool);
impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Runs `f` on the state of `session`, unless another thread is inside a call on it
/// (`MSR_ERR_BUSY`).
///
/// # Safety
/// `session` is non-NULL and a live session from `msr_session_new`.
unsafe fn with_session(
    session: *const msr_session,
    f: impl FnOnce(&mut SessionState) -> msr_status,
) -> msr_status {
    // SAFETY: a live session by the caller's contract; only the atomic is read through
    // this shared reference before the claim.
    let s = unsafe { &*session };
    if s.busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return fail(
            msr_status::MSR_ERR_BUSY,
            "the session is in use by another thread right now (a session belongs to one thread at a time; create one per thread)",
        );
    }
    let _claim = Claim(&s.busy);
    // SAFETY: the flag was false and is now ours: no other call holds the state until
    // `_claim` is dropped, so this is the only reference to it.
    f(unsafe { &mut *s.state.get() })
}

/// [`with_session`] for the calls that take a regression support set (`x` `[n, input_len]`,
/// `y` `[n, output_len]`): a classification model is refused with `MSR_ERR_UNSUPPORTED`
/// and `refusal`; otherwise `f` runs on the state and the two slices. The pointers were
/// checked non-NULL by the caller.
///
/// # Safety
/// `session` a live session; `x` and `y` valid for `x_len` and `y_len` values.
unsafe fn with_regression(
    session: *const msr_session,
    (x, x_len): (*const f32, usize),
    (y, y_len): (*const f32, usize),
    refusal: &'static str,
    f: impl FnOnce(&mut SessionState, &[f32], &[f32]) -> msr_status,
) -> msr_status {
    let run = |s: &mut SessionState| {
        if s.loss != Loss::Mse {
            return fail(msr_status::MSR_ERR_UNSUPPORTED, refusal);
        }
        // SAFETY: pointers and lengths by the caller's contract.
        let (xs, ys) = unsafe { (slice(x, x_len), slice(y, y_len)) };
        f(s, xs, ys)
    };
    // SAFETY: a live session by the caller's contract.
    unsafe { with_session(session, run) }
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

/// The message of the calling thread's last failed call ("" after a success): one line,
/// UTF-8, NUL-terminated. The pointer stays valid, and the text unchanged, until the same
/// thread makes its next msr call (any msr function but this one); copy the text to keep
/// it. Never free it. Each thread has its own message.
#[unsafe(no_mangle)]
pub extern "C" fn msr_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(c"".as_ptr(), |m| m.as_ptr()))
}

/// # Safety
/// `out` is non-NULL and writable.
/// `bytes` are the file the record was decoded from: its CRC trailer is the model's
/// fingerprint (so states saved for a version 1 file still load).
unsafe fn new_model(record: &ModelRecord, bytes: &[u8], out: *mut *mut msr_model) -> msr_status {
    match RtModel::with_fingerprint(record, msr_core::format::trailer(bytes)) {
        Ok(rt) => {
            let model = Box::new(msr_model {
                rt,
                #[cfg(feature = "burn")]
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
/// `msr_model_free`. On failure `*out` is untouched. The header is checked before the body
/// is read: a file that is not a model, or declares a body over the limit, is refused
/// without reading it (a device or a pipe is never read to exhaustion; a FIFO does block
/// until its writer has written or closed, like any read).
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_model_load_file(
    path: *const c_char,
    out: *mut *mut msr_model,
) -> msr_status {
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
        let bytes = match msr_core::format::read_model_file(std::path::Path::new(path)) {
            Ok(b) => b,
            Err(e) => return from_error(e),
        };
        match ModelRecord::from_bytes(&bytes) {
            // SAFETY: `out` was checked non-NULL above.
            Ok(record) => unsafe { new_model(&record, &bytes, out) },
            Err(e) => from_error(Error::Format(e)),
        }
    })
}

/// Loads a model from `len` bytes of a `.msr` file in memory (copied; the buffer may be
/// freed after the call). On success `*out` owns a new model.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_model_load_bytes(
    data: *const u8,
    len: usize,
    out: *mut *mut msr_model,
) -> msr_status {
    guard(|| {
        non_null!(data, out);
        // SAFETY: `data` points to `len` bytes by contract.
        let bytes = unsafe { slice(data, len) };
        match ModelRecord::from_bytes(bytes) {
            // SAFETY: `out` was checked non-NULL above.
            Ok(record) => unsafe { new_model(&record, bytes, out) },
            Err(e) => from_error(Error::Format(e)),
        }
    })
}

/// Frees a model and sets `*model` to NULL. Accepts NULL and a pointer to NULL. Sessions
/// created from the model keep it alive: free them in any order.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_model_free(model: *mut *mut msr_model) {
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
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_model_get_info(
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

/// Writes to `*bytes` the memory a CPU session of `model` with chunk `capacity` (0 = the
/// default, 32) allocates, without allocating it: a robot can reserve it up front, and
/// `msr_session_new` refuses sessions over 1 GiB. `MSR_ERR_INVALID_ARGUMENT` for a capacity
/// over 65536.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_model_session_bytes(
    model: *const msr_model,
    capacity: usize,
    bytes: *mut usize,
) -> msr_status {
    guard(|| {
        non_null!(model, bytes);
        let capacity = match session_capacity(capacity) {
            Ok(c) => c,
            Err(status) => return status,
        };
        // SAFETY: checked non-NULL; a live model by contract.
        let m = unsafe { &*model };
        match session_bytes(m, capacity) {
            Some(b) if b <= usize::MAX as u128 => {
                // SAFETY: checked non-NULL.
                unsafe { *bytes = b as usize };
                msr_status::MSR_OK
            }
            _ => fail(
                msr_status::MSR_ERR_INVALID_ARGUMENT,
                format!("the memory of a session with capacity {capacity} overflows"),
            ),
        }
    })
}

/// Bytes a CPU session of `m` allocates: the engine's buffers and the one-hot targets.
fn session_bytes(m: &msr_model, capacity: usize) -> Option<u128> {
    let onehot = capacity as u128 * m.rt.output_len() as u128 * 4;
    m.rt.session_bytes(capacity).map(|b| b + onehot)
}

/// The chunk capacity an option asks for (0 = the default), or the status that refuses it.
fn session_capacity(capacity: usize) -> Result<usize, msr_status> {
    match capacity {
        0 => Ok(msr_core::realtime::DEFAULT_CAPACITY),
        c if c <= MAX_CAPACITY => Ok(c),
        c => Err(fail(
            msr_status::MSR_ERR_INVALID_ARGUMENT,
            format!("capacity {c} is over the limit of {MAX_CAPACITY} examples per chunk"),
        )),
    }
}

/// A zeroed buffer, or `MSR_ERR_OUT_OF_MEMORY` instead of an abort.
fn try_zeros(n: usize, what: &str) -> Result<Vec<f32>, msr_status> {
    let mut v = Vec::new();
    if v.try_reserve_exact(n).is_err() {
        return Err(fail(
            msr_status::MSR_ERR_OUT_OF_MEMORY,
            format!("out of memory: {what} needs {} bytes", n as u128 * 4),
        ));
    }
    v.resize(n, 0.0);
    Ok(v)
}

/// Creates a session at the model's meta-learned initialisation. `options` may be NULL
/// (defaults). All memory the session needs is allocated here: afterwards, adapt and
/// predict allocate nothing (labels beyond `capacity` examples excepted). Free it with
/// `msr_session_free`.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_new(
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
        if opts.inner_steps as u64 > limits::MAX_INNER_STEPS {
            return fail(
                msr_status::MSR_ERR_INVALID_ARGUMENT,
                format!(
                    "inner_steps {} is over the limit of {}",
                    opts.inner_steps,
                    limits::MAX_INNER_STEPS
                ),
            );
        }
        // SAFETY: checked non-NULL; a live model by contract.
        let m = unsafe { &*model };
        let capacity = match session_capacity(opts.capacity) {
            Ok(c) => c,
            Err(status) => return status,
        };
        // The whole session, one-hot targets included, within the documented budget.
        let total = session_bytes(m, capacity);
        if total.is_none_or(|b| b > msr_core::realtime::MAX_SESSION_BYTES as u128) {
            return fail(
                msr_status::MSR_ERR_INVALID_ARGUMENT,
                format!(
                    "a session with capacity {capacity} needs {} bytes, over the limit of {} (try a smaller capacity)",
                    total.map_or("more than 2^128".into(), |b| b.to_string()),
                    msr_core::realtime::MAX_SESSION_BYTES
                ),
            );
        }
        let session = match backends::open(m, &opts, capacity) {
            Ok(s) => s,
            Err(status) => return status,
        };
        // capacity * output_len is bounded: the session's own buffers hold as much.
        let onehot = match try_zeros(capacity * m.rt.output_len(), "one-hot targets") {
            Ok(v) => v,
            Err(status) => return status,
        };
        let s = Box::new(msr_session {
            busy: AtomicBool::new(false),
            state: UnsafeCell::new(SessionState {
                session,
                loss: m.rt.loss(),
                classes: m.rt.output_len(),
                refine_steps: m.rt.refine().map_or(1, |(steps, _)| steps),
                onehot,
            }),
        });
        // SAFETY: checked non-NULL.
        unsafe { *out = Box::into_raw(s) };
        msr_status::MSR_OK
    })
}

/// Frees a session and sets `*session` to NULL. Accepts NULL and a pointer to NULL.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_free(session: *mut *mut msr_session) {
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
/// `y` `[n, output_len]`, with the session's algorithm (`msr_session_set_inner`; by
/// default the one the model was meta-trained through: its SGD steps, Gauss-Newton for a
/// model with a `solver` record, its SGD steps then its Gauss-Newton steps for a model with
/// a `refine` record; the GPU and burn backends run the SGD steps alone). If `loss_out` is
/// not NULL it receives the support loss after adapting (the objective adaptation
/// minimises: for a model that standardises its targets, the MSE of the standardised
/// targets). On any error the session keeps its previous parameters (`MSR_ERR_DIVERGED`: the adaptation went non-finite or exploded and was
/// rolled back). Allocation-free.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_adapt(
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
        // SAFETY: checked non-NULL; a live session and valid buffers by the C contract.
        unsafe {
            with_regression(
                session,
                (x, x_len),
                (y, y_len),
                "this is a classification model: adapt it with msr_session_adapt_labels",
                |s, xs, ys| adapted(s.session.adapt(xs, ys, n), loss_out),
            )
        }
    })
}

/// Like `msr_session_adapt`, but from the session's current parameters instead of the
/// meta-learned initialisation, with `steps` steps (at most the options' limit on inner
/// steps; 0 only reports the support loss) of the session's current algorithm (for
/// Gauss-Newton, the prior centred where it starts; for SGD then Gauss-Newton, `steps`
/// Gauss-Newton steps). A model meta-trained with `trainer train --inner sgd+gn` carries a
/// `refine` record and `msr_session_adapt` runs both stages; a file written before that
/// record existed adapts as trained with `msr_session_set_inner(s,
/// MSR_INNER_SGD_THEN_GAUSS_NEWTON, D)` and its trained damping `D`, or with
/// `msr_session_adapt` under SGD, then Gauss-Newton on, then `msr_session_refine` on the
/// same support set with `steps` 1 (docs/adaptation.md). Regression models; CPU real-time engine only
/// (`MSR_ERR_UNSUPPORTED`). On any error the session keeps its previous parameters.
/// Allocation-free.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_refine(
    session: *mut msr_session,
    x: *const f32,
    x_len: usize,
    y: *const f32,
    y_len: usize,
    n: usize,
    steps: usize,
    loss_out: *mut f32,
) -> msr_status {
    guard(|| {
        non_null!(session, x, y);
        if steps as u64 > limits::MAX_INNER_STEPS {
            return fail(
                msr_status::MSR_ERR_INVALID_ARGUMENT,
                format!(
                    "steps {steps} is over the limit of {}",
                    limits::MAX_INNER_STEPS
                ),
            );
        }
        // SAFETY: checked non-NULL; a live session and valid buffers by the C contract.
        unsafe {
            with_regression(
                session,
                (x, x_len),
                (y, y_len),
                "refine is for regression models",
                |s, xs, ys| match s.session.refine(xs, ys, n, steps) {
                    Some(result) => adapted(result, loss_out),
                    None => fail(
                        msr_status::MSR_ERR_UNSUPPORTED,
                        "this backend adapts only from the initialisation; use the CPU real-time engine",
                    ),
                },
            )
        }
    })
}

/// Adapts a classification model to a support set: `x` `[n, input_len]`, `labels` `[n]`
/// class indices in `[0, output_len)`. `x_len` is checked against `n` before any label is
/// read. Otherwise as `msr_session_adapt`. Allocation-free for `n <= capacity`.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_adapt_labels(
    session: *mut msr_session,
    x: *const f32,
    x_len: usize,
    labels: *const i32,
    n: usize,
    loss_out: *mut f32,
) -> msr_status {
    guard(|| {
        non_null!(session, x, labels);
        let run = |s: &mut SessionState| {
            let classes = s.classes;
            if s.loss != Loss::CrossEntropy {
                return fail(
                    msr_status::MSR_ERR_UNSUPPORTED,
                    "this is a regression model: adapt it with msr_session_adapt",
                );
            }
            // n examples must be in x before n labels are read.
            let input_len = s.session.input_len();
            if let Err(e) = check_len("inputs", x_len, n, input_len) {
                return from_error(e);
            }
            // SAFETY: pointers and lengths by contract; n <= x_len here.
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
            // n * classes <= x_len * classes: no overflow for any real buffer, but checked.
            let Some(len) = n.checked_mul(classes) else {
                return from_error(
                    DataError::Shape(msr_core::error::overflow("labels", n, classes)).into(),
                );
            };
            if s.onehot.len() < len {
                let grow = len - s.onehot.len();
                if s.onehot.try_reserve_exact(grow).is_err() {
                    return fail(
                        msr_status::MSR_ERR_OUT_OF_MEMORY,
                        format!(
                            "out of memory: one-hot targets need {} bytes",
                            len as u128 * 4
                        ),
                    );
                }
                s.onehot.resize(len, 0.0);
            }
            let y = &mut s.onehot[..len];
            y.fill(0.0);
            for (r, l) in ls.iter().enumerate() {
                y[r * classes + *l as usize] = 1.0;
            }
            adapted(s.session.adapt(xs, y, n), loss_out)
        };
        // SAFETY: `session` was checked non-NULL; a live session by the C contract.
        unsafe { with_session(session, run) }
    })
}

/// Predicts `out` `[n, output_len]` (logits, for classification) for `x` `[n, input_len]`
/// with the session's current parameters. `out_len` must be `n * output_len`. A prediction
/// that overflows f32 (inputs far outside the model's range) is `MSR_ERR_NON_FINITE`; after
/// any error the contents of `out` are unspecified.
/// Allocation-free and lock-free.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_predict(
    session: *mut msr_session,
    x: *const f32,
    x_len: usize,
    n: usize,
    out: *mut f32,
    out_len: usize,
) -> msr_status {
    guard(|| {
        non_null!(session, x, out);
        let run = |s: &mut SessionState| {
            // SAFETY: pointers and lengths by contract; `out` is writable for `out_len`
            // floats.
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
        };
        // SAFETY: `session` was checked non-NULL; a live session by the C contract.
        unsafe { with_session(session, run) }
    })
}

/// Chooses how the session adapts: `inner` is an `msr_inner` (as an integer). For
/// Gauss-Newton, alone or after SGD, `damping` (finite, positive; ignored for SGD) multiplies the model's
/// per-layer dampings (meta-learned for a model trained with Gauss-Newton, 1 otherwise):
/// larger keeps the parameters closer to where they start. Switching Gauss-Newton on
/// allocates its buffers (see docs/adaptation.md: a `P x P` matrix for up to 2048 adapted
/// parameters, or the dual form's rows for a support set of at most the session's
/// capacity; a model with neither is refused with `MSR_ERR_INVALID_ARGUMENT`): call it at
/// set-up, not in the control loop; later adaptations allocate nothing. It ends any stream
/// of `msr_session_observe`. SGD then Gauss-Newton takes the model's `refine` record's
/// number of Gauss-Newton steps (1 without one) and is refused for a model that adapts by
/// Gauss-Newton alone. Sessions on the GPU and burn backends cannot switch
/// (`MSR_ERR_UNSUPPORTED`); they adapt as the model was meta-trained (Gauss-Newton for a
/// model with a solver record), except that they run only the SGD steps of a model with a
/// `refine` record.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_set_inner(
    session: *mut msr_session,
    inner: i32,
    damping: f32,
) -> msr_status {
    guard(|| {
        non_null!(session);
        if !(0..=2).contains(&inner) {
            return fail(
                msr_status::MSR_ERR_INVALID_ARGUMENT,
                format!(
                    "unknown inner algorithm {inner} (0: SGD, 1: Gauss-Newton, 2: SGD then Gauss-Newton)"
                ),
            );
        }
        let run = |s: &mut SessionState| {
            let choice = match inner {
                0 => Inner::Sgd,
                1 => Inner::GaussNewton { damping },
                _ => Inner::SgdThenGaussNewton {
                    damping,
                    steps: s.refine_steps,
                },
            };
            engine_only(
                s.session.set_inner(choice),
                "this backend adapts with SGD only; Gauss-Newton runs on the CPU real-time engine",
            )
        };
        // SAFETY: `session` was checked non-NULL; a live session by the C contract.
        unsafe { with_session(session, run) }
    })
}

/// Writes to `*work` the most work a `call` (an `msr_call`, as an integer) on `n` examples
/// does with the session's current algorithm, steps and capacity, in work units
/// (multiply-adds; an element-wise tanh, erf or exp counts 32): the cost model every call
/// is checked against (docs/model-format.md, "Limits"). A session whose worst call would
/// exceed the limit (2^34 units, fixed and per example) is refused by `msr_session_new` or
/// `msr_session_set_inner`, and `msr_session_refine` with more steps than that allows is
/// refused before it starts. Saturates at `UINT64_MAX`. `MSR_ERR_INVALID_ARGUMENT` for an
/// unknown call or observe without Gauss-Newton on; CPU real-time engine only
/// (`MSR_ERR_UNSUPPORTED`). Allocation-free.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_cost(
    session: *mut msr_session,
    call: i32,
    n: usize,
    work: *mut u64,
) -> msr_status {
    guard(|| {
        non_null!(session, work);
        if !(0..=3).contains(&call) {
            return fail(
                msr_status::MSR_ERR_INVALID_ARGUMENT,
                format!("unknown call {call} (0: predict, 1: adapt, 2: observe, 3: state)"),
            );
        }
        let run = |s: &mut SessionState| {
            let Some(costs) = s.session.costs() else {
                return fail(
                    msr_status::MSR_ERR_UNSUPPORTED,
                    "this backend has no cost model; use the CPU real-time engine",
                );
            };
            let cost = match call {
                0 => costs.predict,
                1 => {
                    // The bound for exactly `n` examples (tighter for Gauss-Newton).
                    let bound = s.session.adapt_cost_at(n).unwrap_or(u128::MAX);
                    // SAFETY: checked non-NULL.
                    unsafe { *work = bound.min(u64::MAX as u128) as u64 };
                    return msr_status::MSR_OK;
                }
                2 => match costs.observe {
                    Some(c) => c,
                    None => {
                        return fail(
                            msr_status::MSR_ERR_INVALID_ARGUMENT,
                            "observe needs Gauss-Newton on (msr_session_set_inner)",
                        );
                    }
                },
                _ => costs.state,
            };
            // SAFETY: checked non-NULL.
            unsafe { *work = cost.at(n).min(u64::MAX as u128) as u64 };
            msr_status::MSR_OK
        };
        // SAFETY: `session` was checked non-NULL; a live session by the C contract.
        unsafe { with_session(session, run) }
    })
}

/// Folds `n` new examples (`x` `[n, input_len]`, `y` `[n, output_len]`, raw units) into
/// the session's adaptation without re-solving from scratch: a recursive least-squares
/// update of the Gauss-Newton system (exact for layers linear in v), so a robot can feed
/// every new sample as it arrives; `msr_session_predict` uses the current estimate. The
/// first call after `msr_session_adapt`, `_reset` or `_load_state` starts from the
/// current parameters, with the prior of a Gauss-Newton `msr_session_adapt` on one example
/// (observing one example from the start equals a one-step Gauss-Newton adaptation on it;
/// n examples, a batch step on them with the damping divided by n). Needs Gauss-Newton on,
/// alone or after SGD (`msr_session_set_inner`; otherwise
/// `MSR_ERR_INVALID_ARGUMENT`) and at most 2048 adapted parameters; CPU real-time engine
/// only (`MSR_ERR_UNSUPPORTED`). A numerically unusable update is undone and reported as
/// `MSR_ERR_DIVERGED` (the stream then restarts).
/// Allocation-free. Cost per example: a forward pass, one backward pass per output and
/// `O(P^2)` per output, P the adapted parameters. Regression models only.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_observe(
    session: *mut msr_session,
    x: *const f32,
    x_len: usize,
    y: *const f32,
    y_len: usize,
    n: usize,
) -> msr_status {
    guard(|| {
        non_null!(session, x, y);
        // SAFETY: checked non-NULL; a live session and valid buffers by the C contract.
        unsafe {
            with_regression(
                session,
                (x, x_len),
                (y, y_len),
                "observe is for regression models",
                |s, xs, ys| engine_only(s.session.observe(xs, ys, n), NO_STREAMING),
            )
        }
    })
}

/// Sets the forgetting factor `gamma` in (0, 1] of `msr_session_observe`: an example `m`
/// observations old weighs `gamma^m` (1, the default: nothing is forgotten, the estimate
/// equals a batch solve; 0.99: a memory of about 100 examples, to track a payload or a
/// wind that changes). `MSR_ERR_INVALID_ARGUMENT` outside (0, 1].
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_set_forgetting(
    session: *mut msr_session,
    gamma: f32,
) -> msr_status {
    guard(|| {
        non_null!(session);
        let run = |s: &mut SessionState| engine_only(s.session.set_forgetting(gamma), NO_STREAMING);
        // SAFETY: `session` was checked non-NULL; a live session by the C contract.
        unsafe { with_session(session, run) }
    })
}

/// Returns the session to the model's meta-learned initialisation.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_reset(session: *mut msr_session) -> msr_status {
    guard(|| {
        non_null!(session);
        let run = |s: &mut SessionState| {
            s.session.reset();
            msr_status::MSR_OK
        };
        // SAFETY: `session` was checked non-NULL; a live session by the C contract.
        unsafe { with_session(session, run) }
    })
}

/// Writes the session's adapted parameters to `buf` (`len` bytes, at least the model's
/// `state_len`) and the byte count to `*written`. A robot can keep one state per tool or
/// terrain and restore it with `msr_session_load_state`. Every state written loads.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_save_state(
    session: *const msr_session,
    buf: *mut u8,
    len: usize,
    written: *mut usize,
) -> msr_status {
    guard(|| {
        non_null!(session, buf, written);
        let run = |s: &mut SessionState| {
            // SAFETY: `buf` is writable for `len` bytes by contract.
            let b = unsafe { std::slice::from_raw_parts_mut(buf, len) };
            match s.session.save_state(b) {
                Ok(n) => {
                    // SAFETY: checked non-NULL.
                    unsafe { *written = n };
                    msr_status::MSR_OK
                }
                Err(e) => from_error(e),
            }
        };
        // SAFETY: `session` was checked non-NULL; a live session by the C contract.
        unsafe { with_session(session, run) }
    })
}

/// Restores parameters saved by `msr_session_save_state` from a session of the same model.
/// A state of another model, a corrupted or truncated one, is refused (`MSR_ERR_FORMAT`)
/// and the session is left as it was.
///
/// # Safety
/// See the crate documentation: pointers NULL or valid for the documented lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msr_session_load_state(
    session: *mut msr_session,
    buf: *const u8,
    len: usize,
) -> msr_status {
    guard(|| {
        non_null!(session, buf);
        let run = |s: &mut SessionState| {
            // SAFETY: pointers and lengths by contract.
            let b = unsafe { slice(buf, len) };
            match s.session.load_state(b) {
                Ok(()) => msr_status::MSR_OK,
                Err(e) => from_error(e),
            }
        };
        // SAFETY: `session` was checked non-NULL; a live session by the C contract.
        unsafe { with_session(session, run) }
    })
}

mod backends;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_kind_has_its_own_status() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::NonFinite,
            ErrorKind::Format,
            ErrorKind::Version,
            ErrorKind::Io,
            ErrorKind::Diverged,
            ErrorKind::OutOfMemory,
        ];
        let statuses: std::collections::HashSet<i32> =
            kinds.iter().map(|k| status_of(*k) as i32).collect();
        assert_eq!(statuses.len(), kinds.len(), "two kinds share a status");
        assert!(!statuses.contains(&(msr_status::MSR_OK as i32)));
        assert!(!statuses.contains(&(msr_status::MSR_ERR_INTERNAL as i32)));
    }

    /// A panic inside a call becomes MSR_ERR_INTERNAL with its message and location, and
    /// prints nothing on the host's stderr, even with RUST_BACKTRACE set. Runs itself as a
    /// child process to see that process's stderr.
    #[test]
    fn caught_panics_are_quiet() {
        if std::env::var_os("MSR_PANIC_CHILD").is_some() {
            let status = guard(|| panic!("boom {}", 42));
            assert_eq!(status, msr_status::MSR_ERR_INTERNAL);
            // SAFETY: a valid NUL-terminated string.
            let message = unsafe { CStr::from_ptr(msr_last_error()) }.to_string_lossy();
            assert!(message.contains("boom 42"), "{message}");
            assert!(message.contains("lib.rs:"), "{message}");
            // A later success clears it; the process goes on normally.
            assert_eq!(guard(|| msr_status::MSR_OK), msr_status::MSR_OK);
            println!("CHILD-DONE");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::caught_panics_are_quiet", "--nocapture"])
            .env("MSR_PANIC_CHILD", "1")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("CHILD-DONE"), "{stdout}");
        assert!(!stderr.contains("panicked"), "printed on stderr:\n{stderr}");
        assert!(!stderr.contains("boom"), "printed on stderr:\n{stderr}");
    }
}
