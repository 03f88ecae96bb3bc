//! `msr._msr`: the Python extension of the `msr` package, over msr-core (no burn).
//!
//! It mirrors the C ABI (ffi/src/lib.rs) with Python's conventions: a `Model` (immutable,
//! shared by any number of threads), a `Session` (one thread at a time: a second thread
//! inside the same session gets `BusyError` and nothing is done), errors as exceptions
//! whose class is the C status (`msr/_errors.py`). The GIL is released while the engine
//! computes; C-contiguous float32 arrays are read in place, without a copy.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use msr_core::error::ErrorKind;
use msr_core::format::{Extension, LayerRecord, Normalizer, Refine, Solver, Standardize};
use msr_core::realtime::{
    DEFAULT_CAPACITY, Engine, Inner, MAX_CAPACITY, MAX_SESSION_BYTES, RtModel, Session, check_len,
};
use msr_core::spec::limits;
use msr_core::{
    Activation, ConvGeom, ConvSharing, DataError, Error, FeatureShape, LayerSpec, Loss, ModelInfo,
    ModelRecord, NetSpec, Op,
};
use numpy::{
    PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

/// The C ABI's statuses (`msr_status`), and the two refinements of
/// `MSR_ERR_INVALID_ARGUMENT` Python callers expect (a wrong shape, a wrong dtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// `MSR_ERR_NULL`: in Python, a closed session (the C ABI's freed, NULL, pointer).
    Closed,
    InvalidArgument,
    /// `MSR_ERR_INVALID_ARGUMENT`: data of the wrong shape.
    Shape,
    /// `MSR_ERR_INVALID_ARGUMENT`: data of a dtype that cannot be converted.
    DType,
    NonFinite,
    Format,
    Version,
    Io,
    Diverged,
    Backend,
    Unsupported,
    Busy,
    OutOfMemory,
    Internal,
}

impl Status {
    /// The exception class in `msr._errors`.
    fn class(self) -> &'static str {
        match self {
            Status::Closed => "ClosedError",
            Status::InvalidArgument => "InvalidArgumentError",
            Status::Shape => "ShapeError",
            Status::DType => "DTypeError",
            Status::NonFinite => "NonFiniteError",
            Status::Format => "FormatError",
            Status::Version => "VersionError",
            Status::Io => "IoError",
            Status::Diverged => "DivergedError",
            Status::Backend => "BackendError",
            Status::Unsupported => "UnsupportedError",
            Status::Busy => "BusyError",
            Status::OutOfMemory => "OutOfMemoryError",
            Status::Internal => "InternalError",
        }
    }

    /// The status of a core error, as the C ABI's `status_of` maps it (a data shape error
    /// is the `ShapeError` subclass of `InvalidArgumentError`).
    fn of(e: &Error) -> Self {
        if let Error::Data(DataError::Shape(_)) = e {
            return Status::Shape;
        }
        match e.kind() {
            ErrorKind::InvalidArgument => Status::InvalidArgument,
            ErrorKind::NonFinite => Status::NonFinite,
            ErrorKind::Format => Status::Format,
            ErrorKind::Version => Status::Version,
            ErrorKind::Io => Status::Io,
            ErrorKind::Diverged => Status::Diverged,
            ErrorKind::OutOfMemory => Status::OutOfMemory,
        }
    }
}

/// A failure, built without the GIL, raised once it is held again.
#[derive(Debug)]
struct Fail(Status, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(Status::of(&e), e.to_string())
    }
}

impl From<Fail> for PyErr {
    fn from(f: Fail) -> Self {
        Python::attach(|py| raise(py, f.0, f.1))
    }
}

fn fail<T>(status: Status, message: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(status, message.into()))
}

/// The exception of `status` with `message` (a class of `msr._errors`).
fn raise(py: Python<'_>, status: Status, message: String) -> PyErr {
    static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let made = ERRORS
        .get_or_try_init(py, || py.import("msr._errors").map(Bound::unbind))
        .and_then(|m| m.bind(py).getattr(status.class()))
        .and_then(|class| class.call1((message.clone(),)));
    match made {
        Ok(e) => PyErr::from_value(e),
        // The package is broken (msr._errors missing): still an exception, never a panic.
        Err(e) => e,
    }
}

/// Runs `f`, turning a panic (a bug) into `InternalError` rather than letting it cross
/// into Python.
fn guarded<T>(f: impl FnOnce() -> Result<T, Fail>) -> Result<T, Fail> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            fail(
                Status::Internal,
                format!("internal error (a bug; please report it): {what}"),
            )
        }
    }
}

fn numpy(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static NUMPY: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    Ok(NUMPY
        .get_or_try_init(py, || py.import("numpy").map(Bound::unbind))?
        .bind(py))
}

/// `obj` as a C-contiguous `[rows, cols]` float32 array: the array itself when it is one
/// (no copy); floats and integers of other dtypes, other layouts and array-likes are
/// converted (a copy); anything else is refused with `DTypeError`, a wrong number of
/// dimensions with `ShapeError`.
fn f32_2d<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    if let Ok(a) = obj.cast::<PyArray2<f32>>()
        && a.is_c_contiguous()
    {
        return Ok(a.clone());
    }
    let np = numpy(py)?;
    let arr = np.call_method1("asarray", (obj,))?;
    let arr = arr
        .cast_into::<PyUntypedArray>()
        .map_err(|_| raise(py, Status::DType, format!("{what} is not an array")))?;
    if arr.ndim() != 2 {
        return Err(raise(
            py,
            Status::Shape,
            format!(
                "{what} must be 2-D [n, features], got {} dimension(s) of shape {:?} (one example: x[None, :])",
                arr.ndim(),
                arr.shape()
            ),
        ));
    }
    let kind = arr.dtype().kind();
    if !matches!(kind, b'f' | b'i' | b'u') {
        return Err(raise(
            py,
            Status::DType,
            format!(
                "{what} has dtype {}; msr computes in float32 (float and integer arrays are converted, others refused)",
                arr.dtype()
            ),
        ));
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", np.getattr("float32")?)?;
    let c = np.call_method("ascontiguousarray", (arr,), Some(&kwargs))?;
    Ok(c.cast_into::<PyArray2<f32>>()?)
}

/// `obj` as a contiguous 1-D int64 array of class labels (integers only).
fn labels_1d<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<i64>>> {
    if let Ok(a) = obj.cast::<PyArray1<i64>>()
        && a.is_c_contiguous()
    {
        return Ok(a.clone());
    }
    let np = numpy(py)?;
    let arr = np.call_method1("asarray", (obj,))?;
    let arr = arr
        .cast_into::<PyUntypedArray>()
        .map_err(|_| raise(py, Status::DType, "labels is not an array".into()))?;
    if arr.ndim() != 1 {
        return Err(raise(
            py,
            Status::Shape,
            format!("labels must be 1-D [n], got shape {:?}", arr.shape()),
        ));
    }
    if !matches!(arr.dtype().kind(), b'i' | b'u') {
        return Err(raise(
            py,
            Status::DType,
            format!(
                "labels has dtype {}; class labels are integers",
                arr.dtype()
            ),
        ));
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", np.getattr("int64")?)?;
    let c = np.call_method("ascontiguousarray", (arr,), Some(&kwargs))?;
    Ok(c.cast_into::<PyArray1<i64>>()?)
}

/// `[n, cols]` of a 2-D array, checked against the `cols` the model needs.
fn rows(
    py: Python<'_>,
    a: &Bound<'_, PyArray2<f32>>,
    what: &str,
    cols: usize,
    unit: &str,
) -> PyResult<usize> {
    let shape = a.shape();
    if shape[1] != cols {
        return Err(raise(
            py,
            Status::Shape,
            format!(
                "{what} has shape {:?}: the model takes {cols} {unit} per example, got {}",
                shape, shape[1]
            ),
        ));
    }
    Ok(shape[0])
}

/// A model loaded from a `.msr` file: immutable; share it across threads.
#[pyclass(frozen, module = "msr", name = "Model")]
struct PyModel {
    rt: Arc<RtModel>,
    record: ModelRecord,
}

fn loss_name(l: Loss) -> &'static str {
    match l {
        Loss::Mse => "mse",
        Loss::CrossEntropy => "cross-entropy",
    }
}

fn inner_name(inner: Inner) -> &'static str {
    match inner {
        Inner::Sgd => "sgd",
        Inner::GaussNewton { .. } => "gauss-newton",
        Inner::SgdThenGaussNewton { .. } => "sgd+gauss-newton",
    }
}

impl PyModel {
    fn new(bytes: &[u8]) -> Result<Self, Fail> {
        guarded(|| {
            let record = ModelRecord::from_bytes(bytes).map_err(Error::Format)?;
            let rt = RtModel::with_fingerprint(&record, msr_core::format::trailer(bytes))?;
            Ok(PyModel { rt, record })
        })
    }
}

/// An integer option: `None` is `default`; negative is refused.
fn count(value: Option<i64>, what: &str, default: usize) -> Result<usize, Fail> {
    match value {
        None => Ok(default),
        Some(v) if v < 0 => fail(
            Status::InvalidArgument,
            format!("{what} must be >= 0, got {v}"),
        ),
        Some(v) => Ok(v as usize),
    }
}

fn parse_inner(inner: &str, damping: f32, refine_steps: usize) -> Result<Inner, Fail> {
    match inner {
        "sgd" => Ok(Inner::Sgd),
        "gauss-newton" | "gn" => Ok(Inner::GaussNewton { damping }),
        "sgd+gauss-newton" | "sgd+gn" => Ok(Inner::SgdThenGaussNewton {
            damping,
            steps: refine_steps,
        }),
        other => fail(
            Status::InvalidArgument,
            format!("unknown inner algorithm '{other}' (sgd, gauss-newton, sgd+gauss-newton)"),
        ),
    }
}

#[pymethods]
impl PyModel {
    /// Loads a model from a `.msr` file (checked: magic, version, CRC, shapes, limits).
    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let model = py.detach(|| {
            let bytes = msr_core::format::read_model_file(&path)?;
            PyModel::new(&bytes)
        })?;
        Ok(model)
    }

    /// Loads a model from the bytes of a `.msr` file.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        Ok(py.detach(|| PyModel::new(data))?)
    }

    /// The model as a `.msr` file (re-encoded: the current format version).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.record.to_bytes())
    }

    /// Floats per input example.
    #[getter]
    fn inputs(&self) -> usize {
        self.rt.input_len()
    }
    /// Floats per output example (classes, for a classifier).
    #[getter]
    fn outputs(&self) -> usize {
        self.rt.output_len()
    }
    /// "regression" (adapt with `adapt`) or "classification" (`adapt_labels`).
    #[getter]
    fn kind(&self) -> &'static str {
        match self.rt.loss() {
            Loss::Mse => "regression",
            Loss::CrossEntropy => "classification",
        }
    }
    /// The loss adaptation minimises: "mse" or "cross-entropy".
    #[getter]
    fn loss(&self) -> &'static str {
        loss_name(self.rt.loss())
    }
    /// Adapted parameters per task (every layer's v and biases).
    #[getter]
    fn adapted_len(&self) -> usize {
        self.rt.adapted_len()
    }
    /// Inner SGD steps the model was meta-trained with (the sessions' default).
    #[getter]
    fn inner_steps(&self) -> usize {
        self.rt.inner_steps()
    }
    /// Number of layers.
    #[getter]
    fn layers(&self) -> usize {
        self.rt.layers()
    }
    /// Bytes of a saved session state.
    #[getter]
    fn state_len(&self) -> usize {
        self.rt.state_len()
    }
    /// How its sessions adapt by default: "sgd", "gauss-newton" (a `solver` record) or
    /// "sgd+gauss-newton" (a `refine` record).
    #[getter]
    fn adapts_by(&self) -> &'static str {
        if self.rt.gauss_newton() {
            "gauss-newton"
        } else if self.rt.refine().is_some() {
            "sgd+gauss-newton"
        } else {
            "sgd"
        }
    }
    /// The Gauss-Newton steps after SGD and their damping (`refine` record), or None.
    #[getter]
    fn refine(&self) -> Option<(usize, f32)> {
        self.rt.refine()
    }
    /// The model's standardisation: None, or a dict with "input" and "output", each None
    /// or a (mean, scale) pair of float32 arrays (the network sees (x - mean) / scale;
    /// callers pass and receive raw units).
    #[getter]
    fn normalization<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.rt
            .normalizer()
            .map(|n| normalizer_dict(py, n))
            .transpose()
    }
    /// The model's fingerprint (its file's CRC-32), which ties saved states to it.
    #[getter]
    fn fingerprint(&self) -> u32 {
        self.rt.fingerprint()
    }
    /// The model's name, as its trainer recorded it.
    #[getter]
    fn name(&self) -> &str {
        &self.record.info.name
    }
    /// The task family it was meta-trained on.
    #[getter]
    fn task_family(&self) -> &str {
        &self.record.info.task_family
    }
    /// Bytes a session with this chunk capacity allocates.
    #[pyo3(signature = (capacity=None))]
    fn session_bytes(&self, capacity: Option<i64>) -> PyResult<u128> {
        let capacity = session_capacity(capacity)?;
        Ok(session_bytes(&self.rt, capacity).ok_or_else(|| {
            Fail(
                Status::InvalidArgument,
                format!("the memory of a session with capacity {capacity} overflows"),
            )
        })?)
    }

    /// A new session at the meta-learned initialisation (see the stub for the options).
    #[pyo3(signature = (capacity=None, inner=None, damping=1.0, inner_steps=None, lr_scale=None, backend="cpu"))]
    #[allow(clippy::too_many_arguments)]
    fn session(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        capacity: Option<i64>,
        inner: Option<&str>,
        damping: f32,
        inner_steps: Option<i64>,
        lr_scale: Option<f32>,
        backend: &str,
    ) -> PyResult<PySession> {
        let m = slf.get();
        match backend {
            "cpu" => {}
            "gpu" | "cpu-burn" => {
                return Err(Fail(
                    Status::Backend,
                    format!(
                        "backend '{backend}' runs on burn, and the Python package is built over msr-core alone (use libmsr built with the `burn` or `wgpu` feature)"
                    ),
                )
                .into());
            }
            other => {
                return Err(Fail(
                    Status::InvalidArgument,
                    format!("unknown backend '{other}' (cpu, gpu, cpu-burn)"),
                )
                .into());
            }
        }
        let capacity = session_capacity(capacity)?;
        let steps = count(inner_steps, "inner_steps", 0)?;
        if steps as u64 > limits::MAX_INNER_STEPS {
            return Err(Fail(
                Status::InvalidArgument,
                format!(
                    "inner_steps {steps} is over the limit of {}",
                    limits::MAX_INNER_STEPS
                ),
            )
            .into());
        }
        if let Some(s) = lr_scale
            && !(s.is_finite() && s >= 0.0)
        {
            return Err(Fail(
                Status::InvalidArgument,
                format!("lr_scale must be finite and >= 0, got {s}"),
            )
            .into());
        }
        let total = session_bytes(&m.rt, capacity);
        if total.is_none_or(|b| b > MAX_SESSION_BYTES as u128) {
            return Err(Fail(
                Status::InvalidArgument,
                format!(
                    "a session with capacity {capacity} needs {} bytes, over the limit of {MAX_SESSION_BYTES} (try a smaller capacity)",
                    total.map_or("more than 2^128".into(), |b| b.to_string()),
                ),
            )
            .into());
        }
        let rt = m.rt.clone();
        let refine_steps = rt.refine().map_or(1, |(s, _)| s);
        let state = py.detach(|| {
            guarded(|| {
                let mut session = Session::new(rt.clone(), capacity)?;
                if steps > 0 {
                    session.inner_steps = steps;
                }
                if let Some(s) = lr_scale
                    && s > 0.0
                {
                    session.lr_scale = s;
                }
                if let Some(name) = inner {
                    session.set_inner(parse_inner(name, damping, refine_steps)?)?;
                }
                // Every call with these options within the compute limit, or refused now
                // (as msr_session_new does).
                session.check_budget()?;
                let len = capacity * rt.output_len();
                let mut onehot = Vec::new();
                if onehot.try_reserve_exact(len).is_err() {
                    return fail(
                        Status::OutOfMemory,
                        format!("out of memory: one-hot targets need {} bytes", len * 4),
                    );
                }
                onehot.resize(len, 0.0);
                Ok(State {
                    session,
                    classes: rt.output_len(),
                    refine_steps,
                    onehot,
                })
            })
        })?;
        Ok(PySession {
            busy: AtomicBool::new(false),
            state: UnsafeCell::new(Some(state)),
            inputs: rt.input_len(),
            outputs: rt.output_len(),
            loss: rt.loss(),
            model: slf.clone().unbind(),
        })
    }

    /// Everything the file holds, as the keyword arguments of `msr._msr._encode` (what
    /// `msr.export` writes): exporting it gives back the same model.
    fn describe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        describe(py, &self.record)
    }

    fn __repr__(&self) -> String {
        format!(
            "msr.Model(inputs={}, outputs={}, kind='{}', adapted_len={}, adapts_by='{}')",
            self.inputs(),
            self.outputs(),
            self.kind(),
            self.adapted_len(),
            self.adapts_by()
        )
    }
}

fn session_capacity(capacity: Option<i64>) -> Result<usize, Fail> {
    match count(capacity, "capacity", 0)? {
        0 => Ok(DEFAULT_CAPACITY),
        c if c <= MAX_CAPACITY => Ok(c),
        c => fail(
            Status::InvalidArgument,
            format!("capacity {c} is over the limit of {MAX_CAPACITY} examples per chunk"),
        ),
    }
}

/// Bytes a session allocates: the engine's buffers and the one-hot targets (as the C ABI).
fn session_bytes(rt: &RtModel, capacity: usize) -> Option<u128> {
    let onehot = capacity as u128 * rt.output_len() as u128 * 4;
    rt.session_bytes(capacity).map(|b| b + onehot)
}

struct State {
    session: Session,
    classes: usize,
    /// Gauss-Newton steps of "sgd+gauss-newton": the model's `refine` record's, or 1.
    refine_steps: usize,
    /// One-hot targets built from labels (grown only for label sets over the capacity).
    onehot: Vec<f32>,
}

/// One task's adapted state. One thread at a time: a call made while another thread is
/// inside a call on the same session raises `BusyError` and does nothing.
#[pyclass(frozen, module = "msr", name = "Session")]
struct PySession {
    /// Set while a call is inside the session (one atomic exchange per call, no lock).
    busy: AtomicBool,
    /// `None` once closed.
    state: UnsafeCell<Option<State>>,
    inputs: usize,
    outputs: usize,
    loss: Loss,
    model: Py<PyModel>,
}

// SAFETY: the state is only reached through `claim`, which hands out the `&mut` to one
// call at a time (the atomic flag), whichever thread makes it; `State` is `Send`.
unsafe impl Sync for PySession {}

/// Clears the session's in-use flag when a call leaves it, even by unwinding.
struct Claim<'a>(&'a AtomicBool);
impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl PySession {
    /// Runs `f` on the state (without the GIL when `detach`), unless another thread is
    /// inside a call (`BusyError`) or the session is closed (`ClosedError`).
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        detach: bool,
        f: impl FnOnce(&mut State) -> Result<T, Fail> + Send,
    ) -> PyResult<T> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(raise(
                py,
                Status::Busy,
                "the session is in use by another thread right now (a session belongs to one thread at a time; create one per thread)".into(),
            ));
        }
        let _claim = Claim(&self.busy);
        // SAFETY: the flag was false and is now ours: no other call holds the state until
        // `_claim` is dropped, so this is the only reference to it.
        let slot = unsafe { &mut *self.state.get() };
        let Some(state) = slot.as_mut() else {
            return Err(raise(py, Status::Closed, "the session is closed".into()));
        };
        let run = || guarded(|| f(state));
        let result = if detach { py.detach(run) } else { run() };
        result.map_err(|Fail(s, m)| raise(py, s, m))
    }

    fn regression(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        if self.loss != Loss::Mse {
            return Err(raise(
                py,
                Status::Unsupported,
                format!("{what} is for regression models; this is a classifier (adapt_labels)"),
            ));
        }
        Ok(())
    }
}

#[pymethods]
impl PySession {
    /// Adapts the meta-learned initialisation to a regression support set; returns the
    /// support loss after adapting.
    fn adapt(&self, py: Python<'_>, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> PyResult<f32> {
        self.regression(py, "adapt")?;
        let (x, y) = (f32_2d(py, x, "x")?, f32_2d(py, y, "y")?);
        let n = rows(py, &x, "x", self.inputs, "inputs")?;
        let ny = rows(py, &y, "y", self.outputs, "outputs")?;
        if ny != n {
            return Err(raise(
                py,
                Status::Shape,
                format!("x has {n} examples and y {ny}"),
            ));
        }
        let (xr, yr) = (x.try_readonly()?, y.try_readonly()?);
        let (xs, ys) = (xr.as_slice()?, yr.as_slice()?);
        self.with(py, true, |s| Ok(s.session.adapt(xs, ys, n)?))
    }

    /// Adapts a classifier to a support set: x [n, inputs], labels [n] integers in
    /// [0, outputs). Returns the support loss after adapting.
    fn adapt_labels(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
    ) -> PyResult<f32> {
        if self.loss != Loss::CrossEntropy {
            return Err(raise(
                py,
                Status::Unsupported,
                "this is a regression model: adapt it with adapt(x, y)".into(),
            ));
        }
        let x = f32_2d(py, x, "x")?;
        let labels = labels_1d(py, labels)?;
        let n = rows(py, &x, "x", self.inputs, "inputs")?;
        if labels.len() != n {
            return Err(raise(
                py,
                Status::Shape,
                format!("x has {n} examples and labels {}", labels.len()),
            ));
        }
        let (xr, lr) = (x.try_readonly()?, labels.try_readonly()?);
        let (xs, ls) = (xr.as_slice()?, lr.as_slice()?);
        let inputs = self.inputs;
        self.with(py, true, |s| {
            check_len("inputs", xs.len(), n, inputs)?;
            let classes = s.classes;
            if let Some((i, l)) = ls
                .iter()
                .enumerate()
                .find(|(_, l)| **l < 0 || **l as u64 >= classes as u64)
            {
                return fail(
                    Status::InvalidArgument,
                    format!("label {i} is {l}, outside [0, {classes})"),
                );
            }
            let len = n * classes;
            if s.onehot.len() < len {
                let grow = len - s.onehot.len();
                if s.onehot.try_reserve_exact(grow).is_err() {
                    return fail(
                        Status::OutOfMemory,
                        format!("out of memory: one-hot targets need {} bytes", len * 4),
                    );
                }
                s.onehot.resize(len, 0.0);
            }
            let y = &mut s.onehot[..len];
            y.fill(0.0);
            for (r, l) in ls.iter().enumerate() {
                y[r * classes + *l as usize] = 1.0;
            }
            Ok(s.session.adapt(xs, y, n)?)
        })
    }

    /// Predicts [n, outputs] float32 (logits, for a classifier) for x [n, inputs]. With
    /// `out` (a C-contiguous float32 [n, outputs] array) the result is written there.
    #[pyo3(signature = (x, out=None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        out: Option<Bound<'py, PyArray2<f32>>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = f32_2d(py, x, "x")?;
        let n = rows(py, &x, "x", self.inputs, "inputs")?;
        let out = match out {
            Some(o) => {
                if o.shape() != [n, self.outputs] || !o.is_c_contiguous() {
                    return Err(raise(
                        py,
                        Status::Shape,
                        format!(
                            "out must be a C-contiguous float32 array of shape [{n}, {}], got {:?}",
                            self.outputs,
                            o.shape()
                        ),
                    ));
                }
                o
            }
            // SAFETY: every element is written by predict before the array is returned;
            // on an error it is dropped unread.
            None => unsafe { PyArray2::<f32>::new(py, [n, self.outputs], false) },
        };
        {
            let xr = x.try_readonly()?;
            let mut ow = out.try_readwrite().map_err(|e| {
                raise(
                    py,
                    Status::InvalidArgument,
                    format!("out cannot be written (read-only, or also passed as x): {e}"),
                )
            })?;
            let (xs, os) = (xr.as_slice()?, ow.as_slice_mut()?);
            self.with(py, true, |s| Ok(s.session.predict(xs, n, os)?))?;
        }
        Ok(out)
    }

    /// Folds examples into a Gauss-Newton adaptation (recursive least squares).
    fn observe(&self, py: Python<'_>, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> PyResult<()> {
        self.regression(py, "observe")?;
        let (x, y) = (f32_2d(py, x, "x")?, f32_2d(py, y, "y")?);
        let n = rows(py, &x, "x", self.inputs, "inputs")?;
        let ny = rows(py, &y, "y", self.outputs, "outputs")?;
        if ny != n {
            return Err(raise(
                py,
                Status::Shape,
                format!("x has {n} examples and y {ny}"),
            ));
        }
        let (xr, yr) = (x.try_readonly()?, y.try_readonly()?);
        let (xs, ys) = (xr.as_slice()?, yr.as_slice()?);
        self.with(py, true, |s| {
            match Engine::observe(&mut s.session, xs, ys, n) {
                Some(r) => Ok(r?),
                None => fail(Status::Unsupported, "no streaming updates"),
            }
        })
    }

    /// Adapts from the current parameters with `steps` steps; returns the support loss.
    #[pyo3(signature = (x, y, steps=1))]
    fn refine(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        steps: i64,
    ) -> PyResult<f32> {
        let steps = count(Some(steps), "steps", 0)?;
        if steps as u64 > limits::MAX_INNER_STEPS {
            return Err(raise(
                py,
                Status::InvalidArgument,
                format!(
                    "steps {steps} is over the limit of {}",
                    limits::MAX_INNER_STEPS
                ),
            ));
        }
        self.regression(py, "refine")?;
        let (x, y) = (f32_2d(py, x, "x")?, f32_2d(py, y, "y")?);
        let n = rows(py, &x, "x", self.inputs, "inputs")?;
        let ny = rows(py, &y, "y", self.outputs, "outputs")?;
        if ny != n {
            return Err(raise(
                py,
                Status::Shape,
                format!("x has {n} examples and y {ny}"),
            ));
        }
        let (xr, yr) = (x.try_readonly()?, y.try_readonly()?);
        let (xs, ys) = (xr.as_slice()?, yr.as_slice()?);
        self.with(py, true, |s| {
            match Engine::refine(&mut s.session, xs, ys, n, steps) {
                Some(r) => Ok(r?),
                None => fail(Status::Unsupported, "no refinement"),
            }
        })
    }

    /// Chooses how the session adapts: "sgd", "gauss-newton" or "sgd+gauss-newton";
    /// `damping` multiplies the model's per-layer dampings (Gauss-Newton only).
    #[pyo3(signature = (inner, damping=1.0))]
    fn set_inner(&self, py: Python<'_>, inner: &str, damping: f32) -> PyResult<()> {
        let inner = inner.to_owned();
        self.with(py, true, move |s| {
            let choice = parse_inner(&inner, damping, s.refine_steps)?;
            Ok(s.session.set_inner(choice)?)
        })
    }

    /// The forgetting factor of `observe`, in (0, 1].
    fn set_forgetting(&self, py: Python<'_>, gamma: f32) -> PyResult<()> {
        self.with(py, false, |s| Ok(s.session.set_forgetting(gamma)?))
    }

    /// Back to the meta-learned initialisation.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, false, |s| {
            s.session.reset();
            Ok(())
        })
    }

    /// The adapted parameters, as bytes `load_state` restores (in a session of the same
    /// model).
    fn save_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let len = self.model.get().rt.state_len();
        let buf = self.with(py, false, |s| {
            let mut buf = vec![0u8; len];
            let n = s.session.save_state(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        })?;
        Ok(PyBytes::new(py, &buf))
    }

    /// Restores a state from `save_state`; another model's, a corrupted or truncated one is
    /// refused (`FormatError`) and the session is left as it was.
    fn load_state(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        self.with(py, false, |s| Ok(s.session.load_state(data)?))
    }

    /// How the session adapts now: "sgd", "gauss-newton" or "sgd+gauss-newton".
    #[getter]
    fn inner(&self, py: Python<'_>) -> PyResult<&'static str> {
        self.with(py, false, |s| Ok(inner_name(s.session.inner())))
    }

    /// Inner steps per adaptation.
    #[getter]
    fn inner_steps(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, false, |s| Ok(s.session.inner_steps))
    }

    /// The most work (multiply-adds; an element-wise tanh, erf or exp counts 32) that
    /// `call` ("predict", "adapt", "observe" or "state") on `n` examples does with the
    /// session's current algorithm and steps: the bound every call is checked against
    /// (docs/model-format.md, "The per-call bound"). As `msr_session_cost`.
    #[pyo3(signature = (call, n=1))]
    fn cost(&self, py: Python<'_>, call: String, n: usize) -> PyResult<u128> {
        self.with(py, false, move |s| {
            let c = s.session.costs();
            let cost = match call.as_str() {
                "predict" => c.predict,
                "adapt" => return Ok(s.session.adapt_cost_at(n)),
                "observe" => match c.observe {
                    Some(o) => o,
                    None => {
                        return fail(
                            Status::InvalidArgument,
                            "observe needs Gauss-Newton on (set_inner)",
                        );
                    }
                },
                "state" => c.state,
                other => {
                    return fail(
                        Status::InvalidArgument,
                        format!(
                            "unknown call {other:?} (\"predict\", \"adapt\", \"observe\", \"state\")"
                        ),
                    );
                }
            };
            Ok(cost.at(n))
        })
    }

    /// The model of the session.
    #[getter]
    fn model(&self, py: Python<'_>) -> Py<PyModel> {
        self.model.clone_ref(py)
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        // In use by another call: open (close itself claims the session too).
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let _claim = Claim(&self.busy);
        // SAFETY: claimed, as in `with`: no other reference to the state exists.
        unsafe { (*self.state.get()).is_none() }
    }

    /// Frees the session's buffers; later calls raise `ClosedError`. Closing twice is fine.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(raise(
                py,
                Status::Busy,
                "the session is in use by another thread right now".into(),
            ));
        }
        let _claim = Claim(&self.busy);
        // SAFETY: claimed, as in `with`.
        unsafe { *self.state.get() = None };
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

// ---- export: a model description (a dict) to a validated .msr file, and back ----

fn activation_name(a: Activation) -> &'static str {
    a.name()
}

fn f32_array<'py>(py: Python<'py>, v: &[f32], shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    let a = PyArray1::from_slice(py, v);
    if shape.len() == 1 {
        Ok(a.into_any())
    } else {
        Ok(a.reshape(shape.to_vec())?.into_any())
    }
}

fn normalizer_dict<'py>(py: Python<'py>, n: &Normalizer) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (key, s) in [("input", &n.input), ("output", &n.output)] {
        match s {
            Some(s) => d.set_item(
                key,
                (
                    PyArray1::from_slice(py, &s.mean),
                    PyArray1::from_slice(py, &s.scale),
                ),
            )?,
            None => d.set_item(key, py.None())?,
        }
    }
    Ok(d)
}

fn geom_dict(d: &Bound<'_, PyDict>, g: &ConvGeom) -> PyResult<()> {
    d.set_item("in_channels", g.in_channels)?;
    d.set_item("out_channels", g.out_channels)?;
    d.set_item("kernel", g.kernel.clone())?;
    d.set_item("stride", g.stride.clone())?;
    d.set_item("padding", g.padding.clone())?;
    Ok(())
}

fn describe<'py>(py: Python<'py>, r: &ModelRecord) -> PyResult<Bound<'py, PyDict>> {
    let shapes = r.net.shapes().map_err(|e| Fail::from(Error::Shape(e)))?;
    let d = PyDict::new(py);
    d.set_item("input", r.net.input.0.clone())?;
    d.set_item("loss", loss_name(r.net.loss))?;
    let layers = PyList::empty(py);
    for ((spec, rec), layout) in r.net.layers.iter().zip(&r.layers).zip(&shapes.params) {
        let l = PyDict::new(py);
        match &spec.op {
            Op::ShareLinear {
                inputs,
                outputs,
                k,
                bias,
            } => {
                l.set_item("op", "share_linear")?;
                l.set_item("inputs", inputs)?;
                l.set_item("outputs", outputs)?;
                l.set_item("k", k)?;
                l.set_item("bias", bias)?;
            }
            Op::Linear {
                inputs,
                outputs,
                bias,
            } => {
                l.set_item("op", "linear")?;
                l.set_item("inputs", inputs)?;
                l.set_item("outputs", outputs)?;
                l.set_item("bias", bias)?;
            }
            Op::ShareConv {
                geom,
                sharing,
                bias,
            } => {
                l.set_item("op", "share_conv")?;
                geom_dict(&l, geom)?;
                match sharing {
                    ConvSharing::Dense { k } => {
                        l.set_item("sharing", "dense")?;
                        l.set_item("k", k)?;
                    }
                    ConvSharing::Kronecker { ka, kb, kc } => {
                        l.set_item("sharing", "kronecker")?;
                        l.set_item("ka", ka)?;
                        l.set_item("kb", kb)?;
                        l.set_item("kc", kc)?;
                    }
                }
                l.set_item("bias", bias)?;
            }
            Op::Conv { geom, bias } => {
                l.set_item("op", "conv")?;
                geom_dict(&l, geom)?;
                l.set_item("bias", bias)?;
            }
            Op::LocallyConnected1d { geom, bias } => {
                l.set_item("op", "locally_connected1d")?;
                geom_dict(&l, geom)?;
                l.set_item("bias", bias)?;
            }
            Op::Flatten => l.set_item("op", "flatten")?,
        }
        l.set_item("activation", activation_name(spec.activation))?;
        let shared = PyList::empty(py);
        for (m, shape) in rec.shared.iter().zip(&layout.shared) {
            shared.append(f32_array(py, m, shape)?)?;
        }
        l.set_item("shared", shared)?;
        let adapted = PyList::empty(py);
        for v in &rec.adapted0 {
            adapted.append(PyArray1::from_slice(py, v))?;
        }
        l.set_item("adapted0", adapted)?;
        l.set_item("lr", rec.lr)?;
        layers.append(l)?;
    }
    d.set_item("layers", layers)?;
    d.set_item("name", &r.info.name)?;
    d.set_item("task_family", &r.info.task_family)?;
    d.set_item("inner_steps", r.info.inner_steps)?;
    d.set_item("trainer_version", &r.info.trainer_version)?;
    match &r.ext.normalizer {
        Some(n) => d.set_item("normalize", normalizer_dict(py, n)?)?,
        None => d.set_item("normalize", py.None())?,
    }
    match &r.ext.solver {
        Some(s) => d.set_item("log_damping", PyArray1::from_slice(py, &s.log_damping))?,
        None => d.set_item("log_damping", py.None())?,
    }
    match &r.ext.refine {
        Some(rf) => d.set_item("refine", (rf.steps, rf.damping))?,
        None => d.set_item("refine", py.None())?,
    }
    let records = PyList::empty(py);
    for e in &r.ext.unknown {
        records.append((e.name.clone(), e.required, PyBytes::new(py, &e.body)))?;
    }
    d.set_item("records", records)?;
    Ok(d)
}

/// A required key of a description dict.
fn key<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, name: &str) -> PyResult<T> {
    match d.get_item(name)? {
        Some(v) => v.extract::<T>().map_err(|e| {
            let e: PyErr = e.into();
            let py = d.py();
            raise(
                py,
                Status::InvalidArgument,
                format!("'{name}': {}", e.value(py)),
            )
        }),
        None => Err(raise(
            d.py(),
            Status::InvalidArgument,
            format!("missing key '{name}'"),
        )),
    }
}

/// A flat float32 vector from an array-like (any shape, C order).
fn floats(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f32>> {
    let np = numpy(py)?;
    let arr = np.call_method1("asarray", (obj,))?;
    let arr = arr
        .cast_into::<PyUntypedArray>()
        .map_err(|_| raise(py, Status::DType, format!("{what} is not an array")))?;
    if !matches!(arr.dtype().kind(), b'f' | b'i' | b'u') {
        return Err(raise(
            py,
            Status::DType,
            format!("{what} has dtype {}; parameters are float32", arr.dtype()),
        ));
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", np.getattr("float32")?)?;
    let flat = np
        .call_method("ascontiguousarray", (arr,), Some(&kwargs))?
        .call_method0("ravel")?
        .cast_into::<PyArray1<f32>>()?;
    Ok(flat.to_vec()?)
}

fn geom(d: &Bound<'_, PyDict>) -> PyResult<ConvGeom> {
    Ok(ConvGeom {
        in_channels: key(d, "in_channels")?,
        out_channels: key(d, "out_channels")?,
        kernel: key(d, "kernel")?,
        stride: key(d, "stride")?,
        padding: key(d, "padding")?,
    })
}

fn op(d: &Bound<'_, PyDict>) -> PyResult<Op> {
    let name: String = key(d, "op")?;
    let bias = || key::<bool>(d, "bias");
    Ok(match name.as_str() {
        "share_linear" => Op::ShareLinear {
            inputs: key(d, "inputs")?,
            outputs: key(d, "outputs")?,
            k: key(d, "k")?,
            bias: bias()?,
        },
        "linear" => Op::Linear {
            inputs: key(d, "inputs")?,
            outputs: key(d, "outputs")?,
            bias: bias()?,
        },
        "share_conv" => {
            let sharing: String = key(d, "sharing")?;
            Op::ShareConv {
                geom: geom(d)?,
                sharing: match sharing.as_str() {
                    "dense" => ConvSharing::Dense { k: key(d, "k")? },
                    "kronecker" => ConvSharing::Kronecker {
                        ka: key(d, "ka")?,
                        kb: key(d, "kb")?,
                        kc: key(d, "kc")?,
                    },
                    other => {
                        return Err(raise(
                            d.py(),
                            Status::InvalidArgument,
                            format!("unknown sharing '{other}' (dense, kronecker)"),
                        ));
                    }
                },
                bias: bias()?,
            }
        }
        "conv" => Op::Conv {
            geom: geom(d)?,
            bias: bias()?,
        },
        "locally_connected1d" => Op::LocallyConnected1d {
            geom: geom(d)?,
            bias: bias()?,
        },
        "flatten" => Op::Flatten,
        other => {
            return Err(raise(
                d.py(),
                Status::InvalidArgument,
                format!(
                    "unknown op '{other}' (share_linear, linear, share_conv, conv, locally_connected1d, flatten)"
                ),
            ));
        }
    })
}

fn standardize(
    py: Python<'_>,
    obj: Option<Bound<'_, PyAny>>,
    what: &str,
) -> PyResult<Option<Standardize>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => {
            let pair = o.cast_into::<PyTuple>().map_err(|_| {
                raise(
                    py,
                    Status::InvalidArgument,
                    format!("normalize['{what}'] must be a (mean, scale) tuple"),
                )
            })?;
            if pair.len() != 2 {
                return Err(raise(
                    py,
                    Status::InvalidArgument,
                    format!("normalize['{what}'] must be a (mean, scale) tuple"),
                ));
            }
            Ok(Some(Standardize {
                mean: floats(py, &pair.get_item(0)?, "mean")?,
                scale: floats(py, &pair.get_item(1)?, "scale")?,
            }))
        }
    }
}

/// A `.msr` file from a description (the dict `Model.describe` returns), validated by
/// the loader every file goes through (and the engine built from it).
#[pyfunction]
fn _encode<'py>(py: Python<'py>, d: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyBytes>> {
    let input: Vec<usize> = key(d, "input")?;
    let loss = match key::<String>(d, "loss")?.as_str() {
        "mse" => Loss::Mse,
        "cross-entropy" => Loss::CrossEntropy,
        other => {
            return Err(raise(
                py,
                Status::InvalidArgument,
                format!("unknown loss '{other}' (mse, cross-entropy)"),
            ));
        }
    };
    let mut specs = Vec::new();
    let mut layers = Vec::new();
    let list: Bound<'py, PyList> = key(d, "layers")?;
    for (i, item) in list.iter().enumerate() {
        let l = item.cast_into::<PyDict>().map_err(|_| {
            raise(
                py,
                Status::InvalidArgument,
                format!("layer {i} is not a dict"),
            )
        })?;
        let activation: String = key(&l, "activation")?;
        let activation = activation
            .parse::<Activation>()
            .map_err(|e| raise(py, Status::InvalidArgument, format!("layer {i}: {e}")))?;
        specs.push(LayerSpec {
            op: op(&l)?,
            activation,
        });
        let mut shared = Vec::new();
        for (j, m) in key::<Bound<'py, PyList>>(&l, "shared")?.iter().enumerate() {
            shared.push(floats(py, &m, &format!("layer {i} shared {j}"))?);
        }
        let mut adapted0 = Vec::new();
        for (j, v) in key::<Bound<'py, PyList>>(&l, "adapted0")?
            .iter()
            .enumerate()
        {
            adapted0.push(floats(py, &v, &format!("layer {i} adapted0 {j}"))?);
        }
        layers.push(LayerRecord {
            shared,
            adapted0,
            lr: key(&l, "lr")?,
        });
    }
    let mut record = ModelRecord {
        info: ModelInfo {
            name: key(d, "name")?,
            task_family: key(d, "task_family")?,
            inner_steps: key(d, "inner_steps")?,
            trainer_version: key(d, "trainer_version")?,
        },
        net: NetSpec {
            input: FeatureShape(input),
            layers: specs,
            loss,
        },
        layers,
        ext: Default::default(),
    };
    if let Some(n) = d.get_item("normalize")?
        && !n.is_none()
    {
        let n = n.cast_into::<PyDict>().map_err(|_| {
            raise(
                py,
                Status::InvalidArgument,
                "normalize must be a dict with 'input' and 'output'".into(),
            )
        })?;
        record.ext.normalizer = Some(Normalizer {
            input: standardize(py, n.get_item("input")?, "input")?,
            output: standardize(py, n.get_item("output")?, "output")?,
        });
    }
    if let Some(s) = d.get_item("log_damping")?
        && !s.is_none()
    {
        record.ext.solver = Some(Solver {
            log_damping: floats(py, &s, "log_damping")?,
        });
    }
    if let Some(r) = d.get_item("refine")?
        && !r.is_none()
    {
        let (steps, damping): (u32, f32) = r.extract()?;
        record.ext.refine = Some(Refine { steps, damping });
    }
    if let Some(recs) = d.get_item("records")?
        && !recs.is_none()
    {
        for r in recs.try_iter()? {
            let (name, required, body): (String, bool, Vec<u8>) = r?.extract()?;
            record.ext.unknown.push(Extension {
                name,
                required,
                body,
            });
        }
    }
    let bytes = py.detach(|| {
        guarded(|| {
            // The same checks as every file: decode what was encoded, then build the engine.
            let bytes = record.to_bytes();
            let back = ModelRecord::from_bytes(&bytes).map_err(Error::Format)?;
            RtModel::new(&back)?;
            Ok(bytes)
        })
    })?;
    Ok(PyBytes::new(py, &bytes))
}

/// The version of the msr core this package was built from.
#[pyfunction]
fn _core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _msr(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PySession>()?;
    m.add_function(wrap_pyfunction!(_encode, m)?)?;
    m.add_function(wrap_pyfunction!(_core_version, m)?)?;
    Ok(())
}
