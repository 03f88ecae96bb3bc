//! The C ABI called as C would call it: statuses, messages, NULLs, bad data, threads.

// Every call into the C ABI below is `unsafe`: these tests are the C host, passing live
// buffers with their true lengths (or deliberately wrong ones, which libmsr must refuse).
#![allow(clippy::undocumented_unsafe_blocks)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::CStr;
use std::ptr;

use msr::*;
use msr_core::format::{LayerRecord, ModelInfo};
use msr_core::{Activation, FeatureShape, LayerSpec, Loss, ModelRecord, NetSpec, Op};

/// Counts the allocations of threads that ask for it (the C ABI's hot path must make none;
/// the other tests' threads are not counted).
struct Counting;

thread_local! {
    /// `Some(n)`: this thread counts its allocations, `n` so far.
    static COUNTED: Cell<Option<usize>> = const { Cell::new(None) };
}

fn count() {
    // A const-initialised Cell neither allocates nor has a destructor; during a thread's
    // teardown `try_with` fails and nothing counts.
    let _ = COUNTED.try_with(|c| c.set(c.get().map(|n| n + 1)));
}

// SAFETY: every method forwards to the system allocator with the same arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    COUNTED.with(|c| c.set(Some(0)));
    f();
    COUNTED.with(|c| c.replace(None)).unwrap()
}

fn record(loss: Loss) -> ModelRecord {
    let net = NetSpec {
        input: FeatureShape(vec![6]),
        layers: vec![
            LayerSpec {
                op: Op::ShareLinear {
                    inputs: 6,
                    outputs: 5,
                    k: 4,
                    bias: true,
                },
                activation: Activation::Relu,
            },
            LayerSpec {
                op: Op::Linear {
                    inputs: 5,
                    outputs: 3,
                    bias: true,
                },
                activation: Activation::Identity,
            },
        ],
        loss,
    };
    let v = |n: usize, s: f32| {
        (0..n)
            .map(|i| ((i as f32 * 0.37 + s).sin()) * 0.5)
            .collect::<Vec<f32>>()
    };
    ModelRecord {
        info: ModelInfo {
            name: "abi".into(),
            task_family: "test".into(),
            inner_steps: 2,
            trainer_version: "test".into(),
        },
        net,
        layers: vec![
            LayerRecord {
                shared: vec![v(30 * 4, 0.1)],
                adapted0: vec![v(4, 0.2), v(5, 0.3)],
                lr: 0.1,
            },
            LayerRecord {
                shared: vec![],
                adapted0: vec![v(15, 0.4), v(3, 0.5)],
                lr: 0.1,
            },
        ],
        ext: Default::default(),
    }
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(msr_last_error()) }
        .to_str()
        .unwrap()
        .to_string()
}

fn load(bytes: &[u8]) -> (msr_status, *mut msr_model) {
    let mut m = ptr::null_mut();
    let s = unsafe { msr_model_load_bytes(bytes.as_ptr(), bytes.len(), &mut m) };
    (s, m)
}

fn data(n: usize, f: usize, seed: f32) -> Vec<f32> {
    (0..n * f)
        .map(|i| ((i as f32) * 0.61 + seed).cos())
        .collect()
}

/// A default CPU session of the regression test model.
fn mse_session() -> (*mut msr_model, *mut msr_session) {
    let (s, m) = load(&record(Loss::Mse).to_bytes());
    assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
    let mut sess = ptr::null_mut();
    let s = unsafe { msr_session_new(m, ptr::null(), &mut sess) };
    assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
    (m, sess)
}

/// `msr_session_adapt` on whole buffers of `n` examples, without the loss.
fn adapt(sess: *mut msr_session, x: &[f32], y: &[f32], n: usize) -> msr_status {
    unsafe {
        msr_session_adapt(
            sess,
            x.as_ptr(),
            x.len(),
            y.as_ptr(),
            y.len(),
            n,
            ptr::null_mut(),
        )
    }
}

#[test]
fn version_and_model_info() {
    let v = unsafe { CStr::from_ptr(msr_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let (s, mut m) = load(&record(Loss::Mse).to_bytes());
    assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
    let mut info = msr_model_info::default();
    assert_eq!(
        unsafe { msr_model_get_info(m, &mut info) },
        msr_status::MSR_OK
    );
    assert_eq!((info.input_len, info.output_len, info.layers), (6, 3, 2));
    assert_eq!(info.adapted_len, 4 + 5 + 15 + 3);
    assert_eq!(info.loss, msr_loss::MSR_LOSS_MSE as i32);
    assert_eq!(info.inner_steps, 2);
    unsafe { msr_model_free(&mut m) };
    assert!(m.is_null());
    unsafe { msr_model_free(&mut m) }; // pointer to NULL
    unsafe { msr_model_free(ptr::null_mut()) }; // NULL
    let mut s = ptr::null_mut();
    unsafe { msr_session_free(&mut s) };
    unsafe { msr_session_free(ptr::null_mut()) };
}

#[test]
fn bad_files_get_their_own_status_and_message() {
    let good = record(Loss::Mse).to_bytes();
    let mut m = ptr::null_mut();
    assert_eq!(
        unsafe { msr_model_load_bytes(ptr::null(), 10, &mut m) },
        msr_status::MSR_ERR_NULL
    );
    assert!(last_error().contains("NULL"), "{}", last_error());
    assert_eq!(
        unsafe { msr_model_load_bytes(good.as_ptr(), good.len(), ptr::null_mut()) },
        msr_status::MSR_ERR_NULL
    );

    let (s, m) = load(&good[..good.len() - 3]);
    assert_eq!(s, msr_status::MSR_ERR_FORMAT);
    assert!(m.is_null());
    assert!(last_error().contains("truncated"), "{}", last_error());

    let mut corrupt = good.clone();
    corrupt[40] ^= 0x55;
    assert_eq!(load(&corrupt).0, msr_status::MSR_ERR_FORMAT);
    assert!(last_error().contains("checksum"), "{}", last_error());

    let mut v3 = good.clone();
    v3[4] = 3;
    assert_eq!(load(&v3).0, msr_status::MSR_ERR_VERSION);
    assert!(last_error().contains("version 3"), "{}", last_error());
    assert!(last_error().contains("upgrade"), "{}", last_error());

    // A model needing an extension record this reader does not know: a version error
    // naming the record.
    let mut rec = record(Loss::Mse);
    rec.ext.unknown.push(msr_core::format::Extension {
        name: "solver-from-the-future".into(),
        required: true,
        body: vec![0; 4],
    });
    assert_eq!(load(&rec.to_bytes()).0, msr_status::MSR_ERR_VERSION);
    assert!(
        last_error().contains("solver-from-the-future"),
        "{}",
        last_error()
    );

    let path = c"/nonexistent/dir/model.msr";
    let mut m = ptr::null_mut();
    assert_eq!(
        unsafe { msr_model_load_file(path.as_ptr(), &mut m) },
        msr_status::MSR_ERR_IO
    );
    assert!(
        last_error().contains("/nonexistent/dir/model.msr"),
        "{}",
        last_error()
    );
}

#[test]
fn bad_calls_leave_the_session_as_it_was() {
    let (_, mut m) = load(&record(Loss::Mse).to_bytes());
    let mut sess = ptr::null_mut();
    let gpu = msr_session_options {
        backend: msr_backend::MSR_BACKEND_GPU as i32,
        ..Default::default()
    };
    assert_eq!(
        unsafe { msr_session_new(m, &gpu, &mut sess) },
        msr_status::MSR_ERR_BACKEND
    );
    let weird = msr_session_options {
        backend: 7,
        ..Default::default()
    };
    assert_eq!(
        unsafe { msr_session_new(m, &weird, &mut sess) },
        msr_status::MSR_ERR_INVALID_ARGUMENT
    );
    assert!(sess.is_null());
    assert_eq!(
        unsafe { msr_session_new(m, ptr::null(), &mut sess) },
        msr_status::MSR_OK
    );

    let (x, y) = (data(4, 6, 0.0), data(4, 3, 1.0));
    let mut loss = 0.0f32;
    assert_eq!(
        unsafe { msr_session_adapt(sess, x.as_ptr(), x.len(), y.as_ptr(), y.len(), 4, &mut loss) },
        msr_status::MSR_OK,
        "{}",
        last_error()
    );
    assert!(loss.is_finite());
    let mut before = vec![0.0f32; 12];
    assert_eq!(
        unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), 4, before.as_mut_ptr(), 12) },
        msr_status::MSR_OK
    );

    let check_unchanged = |sess: *mut msr_session| {
        let mut now = vec![0.0f32; 12];
        assert_eq!(
            unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), 4, now.as_mut_ptr(), 12) },
            msr_status::MSR_OK
        );
        assert_eq!(now, before);
    };

    // Wrong lengths, n = 0, NULLs, NaN, labels on a regression model.
    let st = unsafe {
        msr_session_adapt(
            sess,
            x.as_ptr(),
            x.len() - 1,
            y.as_ptr(),
            y.len(),
            4,
            ptr::null_mut(),
        )
    };
    assert_eq!(st, msr_status::MSR_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("inputs"), "{}", last_error());
    let st = unsafe { msr_session_adapt(sess, x.as_ptr(), 0, y.as_ptr(), 0, 0, ptr::null_mut()) };
    assert_eq!(st, msr_status::MSR_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("empty"), "{}", last_error());
    let st = unsafe {
        msr_session_adapt(
            sess,
            ptr::null(),
            0,
            y.as_ptr(),
            y.len(),
            4,
            ptr::null_mut(),
        )
    };
    assert_eq!(st, msr_status::MSR_ERR_NULL);
    let mut nan = y.clone();
    nan[5] = f32::NAN;
    let st = adapt(sess, &x, &nan, 4);
    assert_eq!(st, msr_status::MSR_ERR_NON_FINITE);
    let mut inf = x.clone();
    inf[0] = f32::INFINITY;
    let mut out = vec![0.0f32; 12];
    let st = unsafe { msr_session_predict(sess, inf.as_ptr(), inf.len(), 4, out.as_mut_ptr(), 12) };
    assert_eq!(st, msr_status::MSR_ERR_NON_FINITE);
    let st = unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), 4, out.as_mut_ptr(), 11) };
    assert_eq!(st, msr_status::MSR_ERR_INVALID_ARGUMENT);
    let labels = [0i32, 1, 2, 0];
    let st = unsafe {
        msr_session_adapt_labels(
            sess,
            x.as_ptr(),
            x.len(),
            labels.as_ptr(),
            4,
            ptr::null_mut(),
        )
    };
    assert_eq!(st, msr_status::MSR_ERR_UNSUPPORTED);
    check_unchanged(sess);

    // A divergent adaptation is rolled back.
    let mut hot = ptr::null_mut();
    let opts = msr_session_options {
        lr_scale: 1e9,
        ..Default::default()
    };
    assert_eq!(
        unsafe { msr_session_new(m, &opts, &mut hot) },
        msr_status::MSR_OK
    );
    let mut p0 = vec![0.0f32; 12];
    unsafe { msr_session_predict(hot, x.as_ptr(), x.len(), 4, p0.as_mut_ptr(), 12) };
    let st = adapt(hot, &x, &y, 4);
    assert_eq!(st, msr_status::MSR_ERR_DIVERGED, "{}", last_error());
    assert!(last_error().contains("rolled back"), "{}", last_error());
    let mut p1 = vec![0.0f32; 12];
    unsafe { msr_session_predict(hot, x.as_ptr(), x.len(), 4, p1.as_mut_ptr(), 12) };
    assert_eq!(p0, p1);

    // Saved state: round trip into a fresh session; refused when corrupt.
    let mut info = msr_model_info::default();
    unsafe { msr_model_get_info(m, &mut info) };
    let mut buf = vec![0u8; info.state_len];
    let mut written = 0usize;
    assert_eq!(
        unsafe { msr_session_save_state(sess, buf.as_mut_ptr(), buf.len(), &mut written) },
        msr_status::MSR_OK
    );
    assert_eq!(written, info.state_len);
    assert_eq!(unsafe { msr_session_reset(hot) }, msr_status::MSR_OK);
    assert_eq!(
        unsafe { msr_session_load_state(hot, buf.as_ptr(), buf.len()) },
        msr_status::MSR_OK
    );
    check_unchanged(hot);
    buf[13] ^= 1;
    assert_eq!(
        unsafe { msr_session_load_state(hot, buf.as_ptr(), buf.len()) },
        msr_status::MSR_ERR_FORMAT
    );
    check_unchanged(hot);
    let st = unsafe { msr_session_save_state(sess, buf.as_mut_ptr(), 3, &mut written) };
    assert_eq!(st, msr_status::MSR_ERR_INVALID_ARGUMENT);

    // Free the model first: sessions keep it alive.
    unsafe { msr_model_free(&mut m) };
    check_unchanged(sess);
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_session_free(&mut hot) };
    assert!(sess.is_null() && hot.is_null());
}

#[test]
fn classification_models_take_labels() {
    let (_, mut m) = load(&record(Loss::CrossEntropy).to_bytes());
    let mut sess = ptr::null_mut();
    assert_eq!(
        unsafe { msr_session_new(m, ptr::null(), &mut sess) },
        msr_status::MSR_OK
    );
    let x = data(6, 6, 0.3);
    let labels = [0i32, 1, 2, 0, 1, 2];
    let (mut before, mut after) = (0.0f32, 0.0f32);
    let y0: Vec<f32> = labels
        .iter()
        .flat_map(|&l| (0..3).map(move |c| if c == l { 1.0 } else { 0.0 }))
        .collect();
    // The loss before adapting, via a zero-step session.
    let mut zero = ptr::null_mut();
    let opts = msr_session_options {
        inner_steps: 1,
        lr_scale: 1e-12,
        ..Default::default()
    };
    unsafe { msr_session_new(m, &opts, &mut zero) };
    assert_eq!(
        unsafe {
            msr_session_adapt_labels(zero, x.as_ptr(), x.len(), labels.as_ptr(), 6, &mut before)
        },
        msr_status::MSR_OK,
        "{}",
        last_error()
    );
    assert_eq!(
        unsafe {
            msr_session_adapt_labels(sess, x.as_ptr(), x.len(), labels.as_ptr(), 6, &mut after)
        },
        msr_status::MSR_OK
    );
    assert!(
        after < before,
        "adapting lowers the support loss: {before} -> {after}"
    );
    let bad = [0i32, 1, 3, 0, 1, 2];
    let st = unsafe {
        msr_session_adapt_labels(sess, x.as_ptr(), x.len(), bad.as_ptr(), 6, ptr::null_mut())
    };
    assert_eq!(st, msr_status::MSR_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("label 2 is 3"), "{}", last_error());
    let st = adapt(sess, &x, &y0, 6);
    assert_eq!(st, msr_status::MSR_ERR_UNSUPPORTED);
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_session_free(&mut zero) };
    unsafe { msr_model_free(&mut m) };
}

/// 8 threads share one model, each adapting and predicting its own tasks: the results equal
/// the single-threaded ones.
#[test]
fn eight_threads_on_one_model_match_one_thread() {
    struct Shared(*mut msr_model);
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}
    let (_, m) = load(&record(Loss::Mse).to_bytes());
    let shared = std::sync::Arc::new(Shared(m));

    let run = |model: *mut msr_model, task: usize| -> Vec<f32> {
        let mut s = ptr::null_mut();
        assert_eq!(
            unsafe { msr_session_new(model, ptr::null(), &mut s) },
            msr_status::MSR_OK
        );
        let mut results = Vec::new();
        for round in 0..50 {
            let seed = (task * 100 + round) as f32 * 0.01;
            let (x, y) = (data(3, 6, seed), data(3, 3, seed + 0.5));
            assert_eq!(adapt(s, &x, &y, 3), msr_status::MSR_OK);
            let mut out = vec![0.0f32; 9];
            assert_eq!(
                unsafe { msr_session_predict(s, x.as_ptr(), x.len(), 3, out.as_mut_ptr(), 9) },
                msr_status::MSR_OK
            );
            results.extend(out);
        }
        unsafe { msr_session_free(&mut s) };
        results
    };
    let expected: Vec<Vec<f32>> = (0..8).map(|t| run(m, t)).collect();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let shared = shared;
                run(shared.0, t)
            })
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), expected[t], "thread {t}");
    }
    let mut m = m;
    unsafe { msr_model_free(&mut m) };
}

/// The burn path (what a GPU session runs, here on burn-ndarray) and the real-time engine
/// agree through the C ABI, and their saved states are interchangeable.
#[cfg(feature = "burn")]
#[test]
fn the_burn_path_agrees_with_the_real_time_engine() {
    let (_, mut m) = load(&record(Loss::Mse).to_bytes());
    let burn_opts = msr_session_options {
        backend: msr_backend::MSR_BACKEND_CPU_BURN as i32,
        ..Default::default()
    };
    let (mut rt, mut bn) = (ptr::null_mut(), ptr::null_mut());
    assert_eq!(
        unsafe { msr_session_new(m, ptr::null(), &mut rt) },
        msr_status::MSR_OK
    );
    assert_eq!(
        unsafe { msr_session_new(m, &burn_opts, &mut bn) },
        msr_status::MSR_OK,
        "{}",
        last_error()
    );
    let (x, y) = (data(5, 6, 0.2), data(5, 3, 0.9));
    let (mut l_rt, mut l_bn) = (0.0f32, 0.0f32);
    assert_eq!(
        unsafe { msr_session_adapt(rt, x.as_ptr(), 30, y.as_ptr(), 15, 5, &mut l_rt) },
        msr_status::MSR_OK
    );
    assert_eq!(
        unsafe { msr_session_adapt(bn, x.as_ptr(), 30, y.as_ptr(), 15, 5, &mut l_bn) },
        msr_status::MSR_OK
    );
    assert!(
        (l_rt - l_bn).abs() < 1e-5 * l_rt.abs().max(1.0),
        "{l_rt} vs {l_bn}"
    );
    let (mut p_rt, mut p_bn) = (vec![0.0f32; 15], vec![0.0f32; 15]);
    unsafe { msr_session_predict(rt, x.as_ptr(), 30, 5, p_rt.as_mut_ptr(), 15) };
    assert_eq!(
        unsafe { msr_session_predict(bn, x.as_ptr(), 30, 5, p_bn.as_mut_ptr(), 15) },
        msr_status::MSR_OK
    );
    for (a, b) in p_rt.iter().zip(&p_bn) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    // State saved on burn loads into the real-time engine, and vice versa.
    let mut info = msr_model_info::default();
    unsafe { msr_model_get_info(m, &mut info) };
    let mut buf = vec![0u8; info.state_len];
    let mut written = 0;
    assert_eq!(
        unsafe { msr_session_save_state(bn, buf.as_mut_ptr(), buf.len(), &mut written) },
        msr_status::MSR_OK
    );
    unsafe { msr_session_reset(rt) };
    assert_eq!(
        unsafe { msr_session_load_state(rt, buf.as_ptr(), written) },
        msr_status::MSR_OK
    );
    let mut p = vec![0.0f32; 15];
    unsafe { msr_session_predict(rt, x.as_ptr(), 30, 5, p.as_mut_ptr(), 15) };
    for (a, b) in p.iter().zip(&p_bn) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    unsafe { msr_session_reset(bn) };
    assert_eq!(
        unsafe { msr_session_load_state(bn, buf.as_ptr(), written) },
        msr_status::MSR_OK
    );
    unsafe { msr_session_predict(bn, x.as_ptr(), 30, 5, p.as_mut_ptr(), 15) };
    assert_eq!(p, p_bn);

    // Bad input on the burn path: typed errors, nothing changes.
    let st = unsafe { msr_session_adapt(bn, x.as_ptr(), 29, y.as_ptr(), 15, 5, ptr::null_mut()) };
    assert_eq!(st, msr_status::MSR_ERR_INVALID_ARGUMENT);
    let mut nan = x.clone();
    nan[2] = f32::NAN;
    let st = unsafe { msr_session_adapt(bn, nan.as_ptr(), 30, y.as_ptr(), 15, 5, ptr::null_mut()) };
    assert_eq!(st, msr_status::MSR_ERR_NON_FINITE);
    let hot_opts = msr_session_options {
        backend: msr_backend::MSR_BACKEND_CPU_BURN as i32,
        lr_scale: 1e9,
        ..Default::default()
    };
    let mut hot = ptr::null_mut();
    unsafe { msr_session_new(m, &hot_opts, &mut hot) };
    let st = unsafe { msr_session_adapt(hot, x.as_ptr(), 30, y.as_ptr(), 15, 5, ptr::null_mut()) };
    assert_eq!(st, msr_status::MSR_ERR_DIVERGED, "{}", last_error());
    unsafe { msr_session_predict(bn, x.as_ptr(), 30, 5, p.as_mut_ptr(), 15) };
    assert_eq!(p, p_bn);

    // The GPU: present only in a `wgpu` build with an adapter; never a silent CPU fallback.
    let gpu_opts = msr_session_options {
        backend: msr_backend::MSR_BACKEND_GPU as i32,
        ..Default::default()
    };
    let mut g = ptr::null_mut();
    let st = unsafe { msr_session_new(m, &gpu_opts, &mut g) };
    if msr_runtime::device::gpus().is_empty() {
        assert_eq!(st, msr_status::MSR_ERR_BACKEND);
        assert!(last_error().contains("GPU"), "{}", last_error());
        assert!(g.is_null());
    } else {
        assert_eq!(st, msr_status::MSR_OK, "{}", last_error());
    }
    for s in [&mut rt, &mut bn, &mut hot, &mut g] {
        unsafe { msr_session_free(s) };
    }
    unsafe { msr_model_free(&mut m) };
}

#[test]
fn options_over_the_limits_are_invalid_arguments() {
    let (_, mut m) = load(&record(Loss::Mse).to_bytes());
    let mut sess = ptr::null_mut();
    for (capacity, inner_steps) in [
        (usize::MAX, 0),
        (1 << 62, 0),
        (1 << 40, 0),
        (100_000_000, 0),
        (65_537, 0),
        (0, 1001),
        (0, usize::MAX),
    ] {
        let o = msr_session_options {
            capacity,
            inner_steps,
            ..Default::default()
        };
        assert_eq!(
            unsafe { msr_session_new(m, &o, &mut sess) },
            msr_status::MSR_ERR_INVALID_ARGUMENT,
            "capacity {capacity}, inner_steps {inner_steps}"
        );
        assert!(sess.is_null());
        let e = last_error();
        assert!(e.contains("over the limit"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // The memory a session needs, before it is allocated; it grows with the capacity.
    let (mut small, mut large) = (0usize, 0usize);
    assert_eq!(
        unsafe { msr_model_session_bytes(m, 1, &mut small) },
        msr_status::MSR_OK
    );
    assert_eq!(
        unsafe { msr_model_session_bytes(m, 1000, &mut large) },
        msr_status::MSR_OK
    );
    // 1 example per chunk: every buffer once; 999 more examples need at least their
    // inputs, outputs and the hidden activations (6 + 5 + 3 floats each).
    assert!(small > 4 * (6 + 5 + 3), "{small}");
    assert!(large >= small + 999 * 4 * (6 + 5 + 3), "{small} {large}");
    assert_eq!(
        unsafe { msr_model_session_bytes(m, 1 << 20, &mut large) },
        msr_status::MSR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        unsafe { msr_model_session_bytes(ptr::null(), 1, &mut large) },
        msr_status::MSR_ERR_NULL
    );
    // The largest allowed options work.
    let o = msr_session_options {
        capacity: 65_536,
        inner_steps: 1000,
        ..Default::default()
    };
    assert_eq!(
        unsafe { msr_session_new(m, &o, &mut sess) },
        msr_status::MSR_OK
    );
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };
}

#[test]
fn an_overflowing_n_is_refused_before_anything_changes() {
    let (mut m, mut sess) = mse_session();
    let (x, y) = (data(4, 6, 0.0), data(4, 3, 1.0));
    assert_eq!(adapt(sess, &x, &y, 4), msr_status::MSR_OK);
    let mut before = vec![0.0f32; 12];
    unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), 4, before.as_mut_ptr(), 12) };
    // n * 6 wraps to 24 (mod 2^64) and n * 3 to 12.
    let n = 4 + (1usize << 63);
    assert_eq!(n.wrapping_mul(6), 24);
    let st = adapt(sess, &x, &y, n);
    assert_eq!(st, msr_status::MSR_ERR_INVALID_ARGUMENT);
    let e = last_error();
    assert!(e.contains("overflows") && !e.contains("1844674407"), "{e}");
    let mut out = vec![0.0f32; 12];
    let st = unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), n, out.as_mut_ptr(), 12) };
    assert_eq!(st, msr_status::MSR_ERR_INVALID_ARGUMENT);
    unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), 4, out.as_mut_ptr(), 12) };
    assert_eq!(out, before, "the session must be unchanged");
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };
}

#[test]
fn huge_finite_inputs_never_give_ok_with_nan() {
    let (mut m, mut sess) = mse_session();
    let x: Vec<f32> = (0..4 * 6)
        .map(|i| if i % 2 == 0 { 3e38 } else { -3e38 })
        .collect();
    let y = data(4, 3, 1.0);
    let mut loss = 0.0;
    let st =
        unsafe { msr_session_adapt(sess, x.as_ptr(), x.len(), y.as_ptr(), y.len(), 4, &mut loss) };
    assert_eq!(st, msr_status::MSR_ERR_DIVERGED, "{}", last_error());
    // Whether a sum of products of +-3e38 overflows f32 depends on the order of its terms
    // (the kernels' tiles): either every output is finite, or the call says it overflowed.
    let mut out = vec![0.0f32; 12];
    let st = unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), 4, out.as_mut_ptr(), 12) };
    if st == msr_status::MSR_OK {
        assert!(out.iter().all(|v| v.is_finite()), "OK with {out:?}");
    } else {
        assert_eq!(st, msr_status::MSR_ERR_NON_FINITE, "{}", last_error());
        assert!(last_error().contains("overflowed"), "{}", last_error());
    }
    // The session is still at its initialisation: finite, saveable, loadable.
    let mut info = msr_model_info::default();
    unsafe { msr_model_get_info(m, &mut info) };
    let mut state = vec![0u8; info.state_len];
    let mut written = 0;
    assert_eq!(
        unsafe { msr_session_save_state(sess, state.as_mut_ptr(), state.len(), &mut written) },
        msr_status::MSR_OK
    );
    assert_eq!(
        unsafe { msr_session_load_state(sess, state.as_ptr(), written) },
        msr_status::MSR_OK
    );
    // A saved-state error speaks of a saved state.
    assert_eq!(
        unsafe { msr_session_load_state(sess, state.as_ptr(), written - 1) },
        msr_status::MSR_ERR_FORMAT
    );
    assert!(last_error().contains("saved state"), "{}", last_error());
    // Finite parameters whose prediction overflows whatever the order of the sums: the
    // hidden biases and the plain output weights at 1e30 give 5 terms of 1e60 per output.
    let fingerprint = u32::from_le_bytes(state[8..12].try_into().unwrap());
    let values: Vec<f32> = msr_core::realtime::state_values(&state[..written])
        .enumerate()
        .map(|(i, v)| if (4..24).contains(&i) { 1e30 } else { v })
        .collect();
    let mut huge = vec![0u8; written];
    msr_core::realtime::encode_state(
        fingerprint,
        values.into_iter(),
        info.state_len / 4 - 4,
        &mut huge,
    )
    .unwrap();
    assert_eq!(
        unsafe { msr_session_load_state(sess, huge.as_ptr(), written) },
        msr_status::MSR_OK,
        "{}",
        last_error()
    );
    let zeros = [0.0f32; 4 * 6];
    let st =
        unsafe { msr_session_predict(sess, zeros.as_ptr(), zeros.len(), 4, out.as_mut_ptr(), 12) };
    assert_eq!(st, msr_status::MSR_ERR_NON_FINITE, "{}", last_error());
    assert!(last_error().contains("overflowed"), "{}", last_error());
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };
}

/// Two threads calling one session at once: every call either does its work correctly or
/// returns MSR_ERR_BUSY having done nothing. Never a wrong prediction.
#[test]
fn one_session_used_by_two_threads_is_busy_not_wrong() {
    let (mut m, mut sess) = mse_session();
    let x = data(64, 6, 0.0);
    let mut expected = vec![0.0f32; 64 * 3];
    assert_eq!(
        unsafe {
            msr_session_predict(sess, x.as_ptr(), x.len(), 64, expected.as_mut_ptr(), 64 * 3)
        },
        msr_status::MSR_OK
    );
    struct Shared(*mut msr_session);
    // SAFETY: the test shares the pointer on purpose, to check the library refuses the
    // second caller.
    unsafe impl Sync for Shared {}
    let shared = Shared(sess);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let busy = std::sync::atomic::AtomicUsize::new(0);
    let wrong = std::thread::scope(|scope| {
        let run = || {
            let (shared, busy) = (&shared, &busy);
            let mut wrong = 0usize;
            let mut out = vec![0.0f32; 64 * 3];
            for i in 0.. {
                if i >= 20_000
                    && (busy.load(std::sync::atomic::Ordering::Relaxed) > 0
                        || std::time::Instant::now() > deadline)
                {
                    break;
                }
                out.fill(f32::NAN);
                match unsafe {
                    msr_session_predict(shared.0, x.as_ptr(), x.len(), 64, out.as_mut_ptr(), 64 * 3)
                } {
                    msr_status::MSR_OK => wrong += usize::from(out != expected),
                    msr_status::MSR_ERR_BUSY => {
                        busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    s => panic!("unexpected {s:?}: {}", last_error()),
                }
            }
            wrong
        };
        let a = scope.spawn(run);
        let b = scope.spawn(run);
        a.join().unwrap() + b.join().unwrap()
    });
    let busy = busy.into_inner();
    assert_eq!(wrong, 0, "wrong predictions from a shared session");
    assert!(busy > 0, "two threads never collided in 20 s");
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };
}

#[test]
fn gauss_newton_is_chosen_per_session_and_never_raises_the_loss() {
    let (mut m, mut sess) = mse_session();
    let (x, y) = (data(8, 6, 0.3), data(8, 3, 1.1));
    // The model's 2 inner steps, SGD or Gauss-Newton.
    let loss = |sess: *mut msr_session| -> f32 {
        let mut l = f32::NAN;
        let st =
            unsafe { msr_session_adapt(sess, x.as_ptr(), x.len(), y.as_ptr(), y.len(), 8, &mut l) };
        assert_eq!(st, msr_status::MSR_OK, "{}", last_error());
        l
    };
    let sgd = loss(sess);
    assert_eq!(
        unsafe { msr_session_set_inner(sess, msr_inner::MSR_INNER_GAUSS_NEWTON as i32, 0.01) },
        msr_status::MSR_OK,
        "{}",
        last_error()
    );
    let gn = loss(sess);
    assert!(
        gn < sgd,
        "2 Gauss-Newton steps beat 2 SGD steps here: {gn} vs {sgd}"
    );
    // Bad choices are refused by status, and change nothing.
    assert_eq!(
        unsafe { msr_session_set_inner(sess, 7, 0.01) },
        msr_status::MSR_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("unknown inner algorithm 7"),
        "{}",
        last_error()
    );
    for bad in [0.0, -1.0, f32::NAN] {
        assert_eq!(
            unsafe { msr_session_set_inner(sess, 1, bad) },
            msr_status::MSR_ERR_INVALID_ARGUMENT
        );
    }
    assert_eq!(loss(sess), gn, "still Gauss-Newton, same result");
    assert_eq!(
        unsafe { msr_session_set_inner(ptr::null_mut(), 1, 0.01) },
        msr_status::MSR_ERR_NULL
    );
    // Back to SGD.
    assert_eq!(
        unsafe { msr_session_set_inner(sess, msr_inner::MSR_INNER_SGD as i32, 0.0) },
        msr_status::MSR_OK
    );
    assert_eq!(loss(sess), sgd);
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };
}

#[test]
fn observe_streams_examples_into_a_gauss_newton_session() {
    let (mut m, mut sess) = mse_session();
    let (x, y) = (data(6, 6, 0.7), data(6, 3, 0.2));
    let observe = |sess, n: usize| unsafe {
        msr_session_observe(sess, x.as_ptr(), n * 6, y.as_ptr(), n * 3, n)
    };
    assert_eq!(observe(sess, 6), msr_status::MSR_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("Gauss-Newton"), "{}", last_error());
    assert_eq!(
        unsafe { msr_session_set_inner(sess, 1, 1.0) },
        msr_status::MSR_OK
    );
    let mut before = vec![0.0f32; 18];
    let st = unsafe { msr_session_predict(sess, x.as_ptr(), 36, 6, before.as_mut_ptr(), 18) };
    assert_eq!(st, msr_status::MSR_OK);
    assert_eq!(observe(sess, 6), msr_status::MSR_OK, "{}", last_error());
    let mut after = vec![0.0f32; 18];
    let st = unsafe { msr_session_predict(sess, x.as_ptr(), 36, 6, after.as_mut_ptr(), 18) };
    assert_eq!(st, msr_status::MSR_OK);
    let err = |p: &[f32]| p.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
    assert!(
        err(&after) < err(&before),
        "{} vs {}",
        err(&after),
        err(&before)
    );
    for bad in [0.0, 1.01, f32::NAN] {
        assert_eq!(
            unsafe { msr_session_set_forgetting(sess, bad) },
            msr_status::MSR_ERR_INVALID_ARGUMENT
        );
    }
    assert_eq!(
        unsafe { msr_session_set_forgetting(sess, 0.95) },
        msr_status::MSR_OK
    );
    assert_eq!(
        unsafe { msr_session_observe(sess, ptr::null(), 0, y.as_ptr(), 3, 1) },
        msr_status::MSR_ERR_NULL
    );
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };
}

/// The control loop's calls through the C ABI allocate nothing once the session is set up:
/// predict, adapt (SGD and Gauss-Newton), observe, reset, save and load the state, even
/// right after a failed call (clearing the last error frees, never allocates). A failed
/// call may allocate its message.
#[test]
fn the_hot_path_through_the_c_abi_allocates_nothing() {
    let (mut m, mut sess) = mse_session();
    let (x, y) = (data(8, 6, 0.3), data(8, 3, 1.1));
    let mut out = vec![0.0f32; 24];
    let mut info = msr_model_info::default();
    assert_eq!(
        unsafe { msr_model_get_info(m, &mut info) },
        msr_status::MSR_OK
    );
    let mut state = vec![0u8; info.state_len];
    let mut written = 0usize;
    let mut loss = 0.0f32;
    // Every call's status goes into a vector with room for them all (no allocation).
    let mut st = Vec::with_capacity(64);
    let mut calls = |sess: *mut msr_session, observe: bool, st: &mut Vec<msr_status>| unsafe {
        st.clear();
        st.push(msr_session_predict(
            sess,
            x.as_ptr(),
            48,
            8,
            out.as_mut_ptr(),
            24,
        ));
        st.push(msr_session_adapt(
            sess,
            x.as_ptr(),
            48,
            y.as_ptr(),
            24,
            8,
            &mut loss,
        ));
        st.push(msr_session_predict(
            sess,
            x.as_ptr(),
            6,
            1,
            out.as_mut_ptr(),
            3,
        ));
        if observe {
            for i in 0..8 {
                st.push(msr_session_observe(
                    sess,
                    x[i * 6..].as_ptr(),
                    6,
                    y[i * 3..].as_ptr(),
                    3,
                    1,
                ));
                st.push(msr_session_predict(
                    sess,
                    x.as_ptr(),
                    6,
                    1,
                    out.as_mut_ptr(),
                    3,
                ));
            }
        }
        st.push(msr_session_save_state(
            sess,
            state.as_mut_ptr(),
            state.len(),
            &mut written,
        ));
        st.push(msr_session_load_state(sess, state.as_ptr(), written));
        st.push(msr_session_reset(sess));
    };
    // Warm-up (the first calls may set up thread-locals), then counted.
    calls(sess, false, &mut st);
    let sgd = allocations(|| calls(sess, false, &mut st));
    assert!(st.iter().all(|s| *s == msr_status::MSR_OK), "{st:?}");
    assert_eq!(sgd, 0, "SGD session: {sgd} allocations");
    assert_eq!(
        unsafe { msr_session_set_inner(sess, msr_inner::MSR_INNER_GAUSS_NEWTON as i32, 1.0) },
        msr_status::MSR_OK
    );
    calls(sess, true, &mut st);
    // After a failed call (it writes a message), the next calls still allocate nothing.
    assert_eq!(
        unsafe { msr_session_predict(sess, x.as_ptr(), 5, 1, [0.0f32; 3].as_mut_ptr(), 3) },
        msr_status::MSR_ERR_INVALID_ARGUMENT
    );
    let gn = allocations(|| calls(sess, true, &mut st));
    assert_eq!(st.len(), 22);
    assert!(st.iter().all(|s| *s == msr_status::MSR_OK), "{st:?}");
    assert_eq!(gn, 0, "Gauss-Newton session: {gn} allocations");
    assert_eq!(last_error(), "");
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };
}

/// `msr_session_refine`: adaptation from the current parameters. After SGD, a
/// Gauss-Newton refinement through the C ABI equals the engine's `Session::refine` to the
/// bit, lowers the support loss, and allocates nothing; bad calls are refused and leave
/// the session as it was.
#[test]
fn refine_continues_from_the_current_parameters() {
    use msr_core::realtime::{Inner, RtModel, Session};
    let (mut m, mut sess) = mse_session();
    let (x, y) = (data(8, 6, 0.3), data(8, 3, 1.1));
    let mut sgd = f32::NAN;
    let st =
        unsafe { msr_session_adapt(sess, x.as_ptr(), x.len(), y.as_ptr(), y.len(), 8, &mut sgd) };
    assert_eq!(st, msr_status::MSR_OK);
    assert_eq!(
        unsafe { msr_session_set_inner(sess, msr_inner::MSR_INNER_GAUSS_NEWTON as i32, 0.1) },
        msr_status::MSR_OK
    );
    let mut refined = f32::NAN;
    let allocs = allocations(|| {
        let st = unsafe {
            msr_session_refine(
                sess,
                x.as_ptr(),
                x.len(),
                y.as_ptr(),
                y.len(),
                8,
                1,
                &mut refined,
            )
        };
        assert_eq!(st, msr_status::MSR_OK, "{}", last_error());
    });
    assert_eq!(allocs, 0, "refine allocates nothing");
    assert!(refined < sgd, "{refined} vs SGD's {sgd}");
    let mut out = vec![0.0f32; 24];
    let st = unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), 8, out.as_mut_ptr(), 24) };
    assert_eq!(st, msr_status::MSR_OK);

    // The same on the engine directly (its own capacity: the solve's form may differ,
    // hence a tolerance on the outputs).
    let mut s = Session::new(RtModel::new(&record(Loss::Mse)).unwrap(), 8).unwrap();
    assert_eq!(s.adapt(&x, &y, 8).unwrap().to_bits(), sgd.to_bits());
    s.set_inner(Inner::GaussNewton { damping: 0.1 }).unwrap();
    s.inner_steps = 1;
    let engine = s.refine(&x, &y, 8).unwrap();
    assert!(
        (engine - refined).abs() <= 1e-5 * refined.abs(),
        "{engine} vs {refined}"
    );
    let mut engine_out = vec![0.0f32; 24];
    s.predict(&x, 8, &mut engine_out).unwrap();
    for (a, b) in out.iter().zip(&engine_out) {
        assert!((a - b).abs() < 1e-5, "{out:?} vs {engine_out:?}");
    }
    let want = out.clone();

    // Bad calls change nothing.
    assert_eq!(
        unsafe { msr_session_refine(sess, ptr::null(), 0, y.as_ptr(), 24, 8, 1, ptr::null_mut()) },
        msr_status::MSR_ERR_NULL
    );
    assert_eq!(
        unsafe { msr_session_refine(sess, x.as_ptr(), 5, y.as_ptr(), 24, 8, 1, ptr::null_mut()) },
        msr_status::MSR_ERR_INVALID_ARGUMENT
    );
    let too_many = usize::MAX;
    assert_eq!(
        unsafe {
            msr_session_refine(
                sess,
                x.as_ptr(),
                48,
                y.as_ptr(),
                24,
                8,
                too_many,
                ptr::null_mut(),
            )
        },
        msr_status::MSR_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("steps"), "{}", last_error());
    let st = unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), 8, out.as_mut_ptr(), 24) };
    assert_eq!(st, msr_status::MSR_OK);
    assert_eq!(out, want, "the session as it was");
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };
}

/// A model meta-trained through SGD then Gauss-Newton (its file's `refine` record):
/// `msr_session_adapt` runs both stages by default, to the bit what a device got before
/// the record existed (adapt by SGD, switch Gauss-Newton on, refine one step), without
/// allocating; `MSR_INNER_SGD_THEN_GAUSS_NEWTON` switches a plain SGD model to the same;
/// `msr_session_refine` then takes Gauss-Newton steps alone; the switch is refused for a
/// model that adapts by Gauss-Newton alone, and an unknown algorithm is named.
#[test]
fn a_refine_record_makes_sgd_then_gauss_newton_the_default() {
    use msr_core::format::{Refine, Solver};
    let (x, y) = (data(8, 6, 0.3), data(8, 3, 1.1));
    let predict = |sess: *mut msr_session| {
        let mut out = vec![0.0f32; 24];
        let st = unsafe { msr_session_predict(sess, x.as_ptr(), x.len(), 8, out.as_mut_ptr(), 24) };
        assert_eq!(st, msr_status::MSR_OK, "{}", last_error());
        out
    };
    let session = |rec: &ModelRecord| {
        let (s, m) = load(&rec.to_bytes());
        assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
        let mut sess = ptr::null_mut();
        let s = unsafe { msr_session_new(m, ptr::null(), &mut sess) };
        assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
        (m, sess)
    };
    let refine = |sess: *mut msr_session, steps: usize| {
        let st = unsafe {
            msr_session_refine(
                sess,
                x.as_ptr(),
                x.len(),
                y.as_ptr(),
                y.len(),
                8,
                steps,
                ptr::null_mut(),
            )
        };
        assert_eq!(st, msr_status::MSR_OK, "{}", last_error());
    };
    let set = |sess: *mut msr_session, inner: msr_inner, damping: f32| unsafe {
        msr_session_set_inner(sess, inner as i32, damping)
    };

    // Before the record: SGD, then one Gauss-Newton step at damping 0.1.
    let plain = record(Loss::Mse);
    let (m0, s0) = session(&plain);
    assert_eq!(adapt(s0, &x, &y, 8), msr_status::MSR_OK);
    let sgd = predict(s0);
    assert_eq!(
        set(s0, msr_inner::MSR_INNER_GAUSS_NEWTON, 0.1),
        msr_status::MSR_OK
    );
    refine(s0, 1);
    let want = predict(s0);
    assert_ne!(want, sgd, "the Gauss-Newton step moved");

    // With it: msr_session_adapt alone, allocation-free.
    let mut with = plain.clone();
    with.ext.refine = Some(Refine {
        steps: 1,
        damping: 0.1,
    });
    let (m1, s1) = session(&with);
    assert_eq!(adapt(s1, &x, &y, 8), msr_status::MSR_OK);
    let allocs = allocations(|| assert_eq!(adapt(s1, &x, &y, 8), msr_status::MSR_OK));
    assert_eq!(allocs, 0, "adapting allocates nothing");
    assert_eq!(predict(s1), want);
    // Plain SGD on request; back to the model's adaptation on request.
    assert_eq!(set(s1, msr_inner::MSR_INNER_SGD, 0.0), msr_status::MSR_OK);
    assert_eq!(adapt(s1, &x, &y, 8), msr_status::MSR_OK);
    assert_eq!(predict(s1), sgd);
    assert_eq!(
        set(s1, msr_inner::MSR_INNER_SGD_THEN_GAUSS_NEWTON, 0.1),
        msr_status::MSR_OK
    );
    assert_eq!(adapt(s1, &x, &y, 8), msr_status::MSR_OK);
    assert_eq!(predict(s1), want);
    // refine: Gauss-Newton steps alone, as with Gauss-Newton switched on.
    refine(s1, 2);
    refine(s0, 2);
    assert_eq!(predict(s1), predict(s0));
    assert_eq!(adapt(s1, &x, &y, 8), msr_status::MSR_OK);
    assert_eq!(predict(s1), want, "refine left the algorithm as it was");

    // A plain SGD model switched to SGD then Gauss-Newton: the same adaptation.
    let (m2, s2) = session(&plain);
    assert_eq!(
        set(s2, msr_inner::MSR_INNER_SGD_THEN_GAUSS_NEWTON, 0.1),
        msr_status::MSR_OK
    );
    assert_eq!(adapt(s2, &x, &y, 8), msr_status::MSR_OK);
    assert_eq!(predict(s2), want);
    for bad in [0.0, -1.0, f32::NAN] {
        assert_eq!(
            set(s2, msr_inner::MSR_INNER_SGD_THEN_GAUSS_NEWTON, bad),
            msr_status::MSR_ERR_INVALID_ARGUMENT
        );
    }
    assert_eq!(
        unsafe { msr_session_set_inner(s2, 3, 1.0) },
        msr_status::MSR_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("2: SGD then Gauss-Newton"),
        "{}",
        last_error()
    );

    // A model that adapts by Gauss-Newton alone has no SGD rates to run first.
    let mut gn = plain.clone();
    gn.ext.solver = Some(Solver {
        log_damping: vec![0.0; 2],
    });
    let (m3, s3) = session(&gn);
    assert_eq!(
        set(s3, msr_inner::MSR_INNER_SGD_THEN_GAUSS_NEWTON, 1.0),
        msr_status::MSR_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("Gauss-Newton alone"),
        "{}",
        last_error()
    );
    for (mut m, mut s) in [(m0, s0), (m1, s1), (m2, s2), (m3, s3)] {
        unsafe { msr_session_free(&mut s) };
        unsafe { msr_model_free(&mut m) };
    }
}

#[test]
fn every_call_reports_its_bound_and_sessions_past_it_are_refused() {
    let (mut m, mut sess) = mse_session();
    let cost = |sess, call: i32, n| {
        let mut w = 0u64;
        let s = unsafe { msr_session_cost(sess, call, n, &mut w) };
        (s, w)
    };
    let (s, p1) = cost(sess, msr_call::MSR_CALL_PREDICT as i32, 1);
    assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
    let (_, p10) = cost(sess, msr_call::MSR_CALL_PREDICT as i32, 10);
    let (_, a10) = cost(sess, msr_call::MSR_CALL_ADAPT as i32, 10);
    let (_, st) = cost(sess, msr_call::MSR_CALL_STATE as i32, 0);
    // Two layers of 30 and 15 multiply-adds per example, and more to adapt.
    assert!(
        p1 >= 45 && p10 > p1 && a10 > p10 && st > 0,
        "{p1} {p10} {a10} {st}"
    );
    // Observe needs Gauss-Newton; unknown calls and NULLs are refused.
    let (s, _) = cost(sess, msr_call::MSR_CALL_OBSERVE as i32, 1);
    assert_eq!(s, msr_status::MSR_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("Gauss-Newton"), "{}", last_error());
    assert_eq!(cost(sess, 4, 1).0, msr_status::MSR_ERR_INVALID_ARGUMENT);
    let s = unsafe { msr_session_cost(sess, 0, 1, ptr::null_mut()) };
    assert_eq!(s, msr_status::MSR_ERR_NULL);
    let s = unsafe { msr_session_set_inner(sess, msr_inner::MSR_INNER_GAUSS_NEWTON as i32, 1.0) };
    assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
    let (s, o1) = cost(sess, msr_call::MSR_CALL_OBSERVE as i32, 1);
    assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
    assert!(o1 > p1);
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };

    // Two 2048-wide layers: 1000 SGD steps would take ~25 G multiply-adds per example.
    let mut rec = record(Loss::Mse);
    let w = |n: usize| {
        (0..n)
            .map(|i| ((i % 5) as f32 - 2.0) * 1e-3)
            .collect::<Vec<f32>>()
    };
    rec.net.input = FeatureShape(vec![2048]);
    rec.net.layers = (0..2)
        .map(|_| LayerSpec {
            op: Op::Linear {
                inputs: 2048,
                outputs: 2048,
                bias: true,
            },
            activation: Activation::Tanh,
        })
        .collect();
    rec.layers = (0..2)
        .map(|_| LayerRecord {
            shared: vec![],
            adapted0: vec![w(2048 * 2048), w(2048)],
            lr: 0.01,
        })
        .collect();
    let (s, mut m) = load(&rec.to_bytes());
    assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
    let mut options = msr_session_options {
        inner_steps: 1000,
        ..Default::default()
    };
    let mut sess = ptr::null_mut();
    let s = unsafe { msr_session_new(m, &options, &mut sess) };
    assert_eq!(s, msr_status::MSR_ERR_INVALID_ARGUMENT);
    assert!(sess.is_null());
    let e = last_error();
    assert!(
        e.contains("work of adapt (per example") && e.contains("17179869184"),
        "{e}"
    );
    options.inner_steps = 2;
    let s = unsafe { msr_session_new(m, &options, &mut sess) };
    assert_eq!(s, msr_status::MSR_OK, "{}", last_error());
    // refine with more steps than the bound allows is refused before it starts.
    let (x, y) = (data(1, 2048, 0.1), data(1, 2048, 0.2));
    let s = unsafe {
        msr_session_refine(
            sess,
            x.as_ptr(),
            x.len(),
            y.as_ptr(),
            y.len(),
            1,
            1000,
            ptr::null_mut(),
        )
    };
    assert_eq!(s, msr_status::MSR_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("work of adapt"), "{}", last_error());
    unsafe { msr_session_free(&mut sess) };
    unsafe { msr_model_free(&mut m) };
}
