//! Latency of the real-time path through the C ABI, against the same work through
//! burn-ndarray in the same process.
//!
//!   cargo bench -p msr-ffi --bench latency
//!
//! Besides criterion's medians, prints p50 / p99 / max of single calls, measured one by
//! one (criterion reports central tendencies, not tails).

// Every call into the C ABI below is `unsafe`: these tests are the C host, passing live
// buffers with their true lengths (or deliberately wrong ones, which libmsr must refuse).
#![allow(clippy::undocumented_unsafe_blocks)]
// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::ptr;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use msr::*;
use msr_runtime::format::{LayerRecord, ModelInfo};
use msr_runtime::tensor::{DType, Tensor, TensorData};
use msr_runtime::{Activation, FeatureShape, LayerSpec, Loss, Model, ModelRecord, NetSpec, Op};

fn values(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// A model with the shapes of rank1 MSR-FC (70 -> 68, k = 3).
fn rank1() -> ModelRecord {
    ModelRecord {
        info: ModelInfo {
            name: "rank1-shaped".into(),
            task_family: "rank1".into(),
            inner_steps: 1,
            trainer_version: "bench".into(),
        },
        net: NetSpec {
            input: FeatureShape(vec![70]),
            layers: vec![LayerSpec {
                op: Op::ShareLinear {
                    inputs: 70,
                    outputs: 68,
                    k: 3,
                    bias: false,
                },
                activation: Activation::Identity,
            }],
            loss: Loss::Mse,
        },
        layers: vec![LayerRecord {
            shared: vec![values(4760 * 3, 0.05, 1)],
            adapted0: vec![values(3, 0.1, 2)],
            lr: 0.1,
        }],
        ext: Default::default(),
    }
}

/// A 64 -> 256 -> 64 MSR MLP (k = 256 per layer, ReLU): the PyTorch reference
/// (shared/reference/torch_msr_bench.py) times the same network.
fn mlp() -> ModelRecord {
    let share = |i, o| Op::ShareLinear {
        inputs: i,
        outputs: o,
        k: 256,
        bias: false,
    };
    ModelRecord {
        info: ModelInfo {
            name: "mlp".into(),
            task_family: "bench".into(),
            inner_steps: 5,
            trainer_version: "bench".into(),
        },
        net: NetSpec {
            input: FeatureShape(vec![64]),
            layers: vec![
                LayerSpec {
                    op: share(64, 256),
                    activation: Activation::Relu,
                },
                LayerSpec {
                    op: share(256, 64),
                    activation: Activation::Identity,
                },
            ],
            loss: Loss::Mse,
        },
        layers: vec![
            LayerRecord {
                shared: vec![values(64 * 256 * 256, 0.01, 3)],
                adapted0: vec![values(256, 0.1, 4)],
                lr: 0.1,
            },
            LayerRecord {
                shared: vec![values(256 * 64 * 256, 0.01, 5)],
                adapted0: vec![values(256, 0.1, 6)],
                lr: 0.1,
            },
        ],
        ext: Default::default(),
    }
}

/// One task's `[1, n, f]` tensor on `device`.
fn tensor(device: &msr_runtime::tensor::Device, v: &[f32], n: usize, f: usize) -> Tensor<3> {
    Tensor::from_data(TensorData::new(v.to_vec(), [1, n, f]), (device, DType::F32))
}

/// One inner step on `(xs, ys)` through burn, then a prediction of `xq`, read back.
fn burn_adapt_predict(
    model: &Model,
    xs: Tensor<3>,
    ys: Tensor<3>,
    xq: Tensor<3>,
) -> impl FnMut() + '_ {
    move || {
        let task = model.net().adapt(model.params(), xs.clone(), ys.clone(), 1);
        let pred = model.net().forward(model.params(), &task, xq.clone());
        black_box(pred.into_data());
    }
}

fn c_session(rec: &ModelRecord) -> (*mut msr_model, *mut msr_session) {
    let bytes = rec.to_bytes();
    let mut m = ptr::null_mut();
    assert_eq!(
        unsafe { msr_model_load_bytes(bytes.as_ptr(), bytes.len(), &mut m) },
        msr_status::MSR_OK
    );
    let mut s = ptr::null_mut();
    assert_eq!(
        unsafe { msr_session_new(m, ptr::null(), &mut s) },
        msr_status::MSR_OK
    );
    (m, s)
}

/// Times single calls for up to 20,000 calls or 3 seconds, after a short warm-up.
fn tails(name: &str, mut f: impl FnMut()) {
    for _ in 0..100 {
        f();
    }
    let start = Instant::now();
    let mut us = Vec::with_capacity(20_000);
    while us.len() < 20_000 && (us.len() < 100 || start.elapsed().as_secs() < 3) {
        let t = Instant::now();
        f();
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    let q = |p: f64| us[((us.len() - 1) as f64 * p) as usize];
    println!(
        "{name}: single calls p50 {:.2} us, p99 {:.2} us, max {:.2} us ({} calls)",
        q(0.5),
        q(0.99),
        q(1.0),
        us.len()
    );
}

fn rank1_adapt_predict(c: &mut Criterion) {
    let rec = rank1();
    let (x, y) = (values(20 * 70, 1.0, 7), values(20 * 68, 1.0, 8));
    let (xs, ys, xq) = (&x[..70], &y[..68], &x[70..]);
    let mut out = vec![0.0f32; 19 * 68];

    let (mut m, mut s) = c_session(&rec);
    let mut c_abi = || {
        let st =
            unsafe { msr_session_adapt(s, xs.as_ptr(), 70, ys.as_ptr(), 68, 1, ptr::null_mut()) };
        let sp =
            unsafe { msr_session_predict(s, xq.as_ptr(), 19 * 70, 19, out.as_mut_ptr(), 19 * 68) };
        assert_eq!((st, sp), (msr_status::MSR_OK, msr_status::MSR_OK));
        black_box(&out);
    };

    let device = msr_runtime::device::cpu();
    let model = Model::from_record(&rec, &device, DType::F32).unwrap();
    let t = |v: &[f32], n: usize, f: usize| tensor(&device, v, n, f);
    let (txs, tys, txq) = (t(xs, 1, 70), t(ys, 1, 68), t(xq, 19, 70));
    // The same work, on burn-ndarray: adapt (1 step, 1 example), predict 19, read back.
    let mut burn = burn_adapt_predict(&model, txs, tys, txq);

    let mut g = c.benchmark_group("rank1 msr-fc: adapt (1 step, 1 example) + predict 19");
    g.bench_function("C ABI, real-time engine", |b| b.iter(&mut c_abi));
    g.bench_function("burn-ndarray", |b| b.iter(&mut burn));
    g.finish();
    tails("rank1 adapt+predict, C ABI", &mut c_abi);
    tails("rank1 adapt+predict, burn-ndarray", &mut burn);
    unsafe { msr_session_free(&mut s) };
    unsafe { msr_model_free(&mut m) };
}

/// Gauss-Newton against SGD on the rank1-shaped model, in the same process: adapt (1 step,
/// 1 example) + predict 19 through the C ABI, and one streaming update (observe 1
/// example) + predict 1.
fn rank1_gauss_newton(c: &mut Criterion) {
    let rec = rank1();
    let (x, y) = (values(20 * 70, 1.0, 7), values(20 * 68, 1.0, 8));
    let (xs, ys, xq) = (&x[..70], &y[..68], &x[70..]);
    let mut out = vec![0.0f32; 19 * 68];
    let (mut m_sgd, mut sgd) = c_session(&rec);
    let (mut m_gn, mut gn) = c_session(&rec);
    assert_eq!(
        unsafe { msr_session_set_inner(gn, msr_inner::MSR_INNER_GAUSS_NEWTON as i32, 0.01) },
        msr_status::MSR_OK
    );
    let adapt_predict = |s: *mut msr_session, out: &mut [f32]| {
        let st =
            unsafe { msr_session_adapt(s, xs.as_ptr(), 70, ys.as_ptr(), 68, 1, ptr::null_mut()) };
        let sp =
            unsafe { msr_session_predict(s, xq.as_ptr(), 19 * 70, 19, out.as_mut_ptr(), 19 * 68) };
        assert_eq!((st, sp), (msr_status::MSR_OK, msr_status::MSR_OK));
        black_box(&out);
    };
    let mut g =
        c.benchmark_group("rank1 msr-fc: adapt (1 step, 1 example) + predict 19, SGD vs GN");
    g.bench_function("C ABI, SGD", |b| b.iter(|| adapt_predict(sgd, &mut out)));
    g.bench_function("C ABI, Gauss-Newton", |b| {
        b.iter(|| adapt_predict(gn, &mut out))
    });
    g.finish();
    tails("rank1 adapt+predict, C ABI, SGD", || {
        adapt_predict(sgd, &mut out)
    });
    tails("rank1 adapt+predict, C ABI, Gauss-Newton", || {
        adapt_predict(gn, &mut out)
    });

    // Streaming: a robot's tick, observe the last sample then predict the next.
    let mut i = 0usize;
    let mut one = vec![0.0f32; 68];
    let mut tick = || {
        let k = i % 19;
        i += 1;
        let so = unsafe {
            msr_session_observe(gn, x[k * 70..].as_ptr(), 70, y[k * 68..].as_ptr(), 68, 1)
        };
        let sp = unsafe {
            msr_session_predict(gn, x[(k + 1) * 70..].as_ptr(), 70, 1, one.as_mut_ptr(), 68)
        };
        assert_eq!((so, sp), (msr_status::MSR_OK, msr_status::MSR_OK));
        black_box(&one);
    };
    let mut g = c.benchmark_group("rank1 msr-fc: observe 1 example + predict 1 (Gauss-Newton)");
    g.bench_function("C ABI", |b| b.iter(&mut tick));
    g.finish();
    tails("rank1 observe+predict, C ABI", &mut tick);

    // The update alone: one example per call, and 19 per call (the per-example cost is the
    // median divided by 19). A stream of observes never materialises W.
    let mut j = 0usize;
    let mut observe_one = || {
        let k = j % 19;
        j += 1;
        let so = unsafe {
            msr_session_observe(gn, x[k * 70..].as_ptr(), 70, y[k * 68..].as_ptr(), 68, 1)
        };
        assert_eq!(so, msr_status::MSR_OK);
    };
    let observe_19 = || {
        let so = unsafe { msr_session_observe(gn, x.as_ptr(), 19 * 70, y.as_ptr(), 19 * 68, 19) };
        assert_eq!(so, msr_status::MSR_OK);
    };
    let mut g = c.benchmark_group("rank1 msr-fc: observe alone (Gauss-Newton)");
    g.bench_function("C ABI, 1 example per call", |b| b.iter(&mut observe_one));
    g.bench_function("C ABI, 19 examples per call", |b| b.iter(observe_19));
    g.finish();
    tails("rank1 observe 1, C ABI", &mut observe_one);
    unsafe { msr_session_free(&mut sgd) };
    unsafe { msr_model_free(&mut m_sgd) };
    unsafe { msr_session_free(&mut gn) };
    unsafe { msr_model_free(&mut m_gn) };
}

fn mlp_predict(c: &mut Criterion) {
    let rec = mlp();
    let x = values(64, 1.0, 9);
    let mut out = vec![0.0f32; 64];
    let (mut m, mut s) = c_session(&rec);
    // Adapt once (10 examples, 5 steps) so the weights are a task's, then time predict.
    let (xs, ys) = (values(10 * 64, 1.0, 10), values(10 * 64, 1.0, 11));
    assert_eq!(
        unsafe {
            msr_session_adapt(
                s,
                xs.as_ptr(),
                xs.len(),
                ys.as_ptr(),
                ys.len(),
                10,
                ptr::null_mut(),
            )
        },
        msr_status::MSR_OK
    );
    let mut c_abi = || {
        let st = unsafe { msr_session_predict(s, x.as_ptr(), 64, 1, out.as_mut_ptr(), 64) };
        assert_eq!(st, msr_status::MSR_OK);
        black_box(&out);
    };
    let device = msr_runtime::device::cpu();
    let model = Model::from_record(&rec, &device, DType::F32).unwrap();
    let task = model.initial(1);
    let tx = tensor(&device, &x, 1, 64);
    let mut burn = || {
        let pred = model.net().forward(model.params(), &task, tx.clone());
        black_box(pred.into_data());
    };
    let mut g = c.benchmark_group("msr mlp 64-256-64 (k=256): predict 1 example");
    g.sample_size(20);
    g.bench_function("C ABI, real-time engine", |b| b.iter(&mut c_abi));
    g.bench_function("burn-ndarray", |b| b.iter(&mut burn));
    g.finish();
    tails("mlp predict, C ABI", &mut c_abi);
    tails("mlp predict, burn-ndarray", &mut burn);

    let mut adapt = || {
        let st = unsafe {
            msr_session_adapt(
                s,
                xs.as_ptr(),
                xs.len(),
                ys.as_ptr(),
                ys.len(),
                10,
                ptr::null_mut(),
            )
        };
        assert_eq!(st, msr_status::MSR_OK);
    };
    let mut g = c.benchmark_group("msr mlp 64-256-64 (k=256): adapt 5 steps, 10 examples");
    g.sample_size(20);
    g.bench_function("C ABI, real-time engine", |b| b.iter(&mut adapt));
    g.finish();
    unsafe { msr_session_free(&mut s) };
    unsafe { msr_model_free(&mut m) };
}

/// The glyph classifier of docs/results.md (MSR-Conv, 4 stride-2 blocks of 32 channels, a
/// 5-way head; freshly initialised: latency does not depend on the values).
fn glyph_classifier() -> ModelRecord {
    let net = msr_trainer::models::glyph_spec(msr_trainer::models::ModelKind::MsrConv, 5, 32)
        .expect("a glyph net");
    let mut rng = msr_trainer::rng::Rng::new(3);
    let layers =
        msr_trainer::models::init(&net, msr_trainer::models::ModelKind::MsrConv, 0.1, &mut rng)
            .expect("init");
    ModelRecord {
        info: ModelInfo {
            name: "glyphs-msr-conv".into(),
            task_family: "glyphs".into(),
            inner_steps: 1,
            trainer_version: "bench".into(),
        },
        net,
        layers,
        ext: Default::default(),
    }
}

fn glyph_classify(c: &mut Criterion) {
    let rec = glyph_classifier();
    let x = values(6 * 784, 0.5, 12);
    let (xs, xq) = (&x[..5 * 784], &x[5 * 784..]);
    let labels: Vec<i32> = (0..5).collect();
    let mut out = vec![0.0f32; 5];
    let (mut m, mut s) = c_session(&rec);
    let mut adapt = || {
        let st = unsafe {
            msr_session_adapt_labels(
                s,
                xs.as_ptr(),
                xs.len(),
                labels.as_ptr(),
                5,
                ptr::null_mut(),
            )
        };
        assert_eq!(st, msr_status::MSR_OK);
    };
    let mut predict = || {
        let st = unsafe { msr_session_predict(s, xq.as_ptr(), 784, 1, out.as_mut_ptr(), 5) };
        assert_eq!(st, msr_status::MSR_OK);
        black_box(&out);
    };
    let device = msr_runtime::device::cpu();
    let model = Model::from_record(&rec, &device, DType::F32).unwrap();
    let t = |v: &[f32], n: usize, f: usize| tensor(&device, v, n, f);
    let onehot: Vec<f32> = (0..25)
        .map(|i| if i / 5 == i % 5 { 1.0 } else { 0.0 })
        .collect();
    let (txs, tys, txq) = (t(xs, 5, 784), t(&onehot, 5, 5), t(xq, 1, 784));
    let mut burn = burn_adapt_predict(&model, txs, tys, txq);
    let mut g = c.benchmark_group("glyph msr-conv 5-way: adapt (1 step, 5 labelled images)");
    g.sample_size(20);
    g.bench_function("C ABI, real-time engine", |b| b.iter(&mut adapt));
    g.bench_function("burn-ndarray, adapt + predict 1", |b| b.iter(&mut burn));
    g.finish();
    let mut g = c.benchmark_group("glyph msr-conv 5-way: predict 1 image");
    g.bench_function("C ABI, real-time engine", |b| b.iter(&mut predict));
    g.finish();
    tails("glyph predict 1 image, C ABI", &mut predict);
    unsafe { msr_session_free(&mut s) };
    unsafe { msr_model_free(&mut m) };
}

/// The robot models of docs/robots.md with `hidden` units per hidden layer: panda-payload's
/// msr-mlp (28 -> hidden... -> 7, tanh, k = 10 per layer, adapted biases) or msr-head (the
/// same body plain and frozen, an MSR head with k = 10); freshly initialised, with
/// `inner_steps` SGD steps.
fn panda_model(
    kind: msr_trainer::models::ModelKind,
    hidden: &[usize],
    inner_steps: u32,
) -> ModelRecord {
    use msr_trainer::models::{ModelKind, init};
    let head_only = kind == ModelKind::MsrHead;
    let share = |i, o| Op::ShareLinear {
        inputs: i,
        outputs: o,
        k: 10,
        bias: true,
    };
    let body = |i, o| {
        if head_only {
            Op::Linear {
                inputs: i,
                outputs: o,
                bias: true,
            }
        } else {
            share(i, o)
        }
    };
    let mut layers = Vec::new();
    let mut inputs = 28;
    for &h in hidden {
        layers.push(LayerSpec {
            op: body(inputs, h),
            activation: Activation::Tanh,
        });
        inputs = h;
    }
    layers.push(LayerSpec {
        op: share(inputs, 7),
        activation: Activation::Identity,
    });
    let net = NetSpec {
        input: FeatureShape(vec![28]),
        layers,
        loss: Loss::Mse,
    };
    let layers = init(&net, kind, 0.01, &mut msr_trainer::rng::Rng::new(4)).expect("init");
    ModelRecord {
        info: ModelInfo {
            name: "panda-payload-shaped".into(),
            task_family: "panda-payload".into(),
            inner_steps,
            trainer_version: "bench".into(),
        },
        net,
        layers,
        ext: Default::default(),
    }
}

/// The robot model through the C ABI: predict one sample (a control tick), adapt on K = 20
/// samples (3 SGD steps, as trained, or 3 Gauss-Newton steps, or 3 SGD steps then one
/// Gauss-Newton step from where they end, as `--inner sgd+gn` trains: adapt, switch,
/// refine, switch back), observe one sample.
fn panda_payload(c: &mut Criterion) {
    use msr_trainer::models::ModelKind;
    for (kind, hidden) in [
        (ModelKind::MsrMlp, &[64, 64][..]),
        (ModelKind::MsrMlp, &[256, 256][..]),
        (ModelKind::MsrHead, &[64, 64][..]),
        (ModelKind::MsrMlp, &[128, 128, 128][..]),
    ] {
        let rec = panda_model(kind, hidden, 3);
        let (x, y) = (values(21 * 28, 1.0, 13), values(21 * 7, 1.0, 14));
        let (xs, ys, xq) = (&x[..20 * 28], &y[..20 * 7], &x[20 * 28..]);
        let mut out = vec![0.0f32; 7];
        let (mut m, mut s) = c_session(&rec);
        let (mut m_gn, mut gn) = c_session(&rec);
        assert_eq!(
            unsafe { msr_session_set_inner(gn, msr_inner::MSR_INNER_GAUSS_NEWTON as i32, 0.01) },
            msr_status::MSR_OK
        );
        let adapt = |s: *mut msr_session| {
            let st = unsafe {
                msr_session_adapt(
                    s,
                    xs.as_ptr(),
                    xs.len(),
                    ys.as_ptr(),
                    ys.len(),
                    20,
                    ptr::null_mut(),
                )
            };
            assert_eq!(st, msr_status::MSR_OK);
        };
        adapt(s);
        let mut predict = || {
            let st = unsafe { msr_session_predict(s, xq.as_ptr(), 28, 1, out.as_mut_ptr(), 7) };
            assert_eq!(st, msr_status::MSR_OK);
            black_box(&out);
        };
        let (mut m_sg, mut sg) = c_session(&rec);
        // The same adaptation written in the model file (a `refine` record, as
        // `trainer train --inner sgd+gn` exports): one msr_session_adapt call.
        let mut with_refine = rec.clone();
        with_refine.ext.refine = Some(msr_runtime::format::Refine {
            steps: 1,
            damping: 10.0,
        });
        let (mut m_rf, mut rf) = c_session(&with_refine);
        let sgd_then_gn = |s: *mut msr_session| {
            use msr_inner::{MSR_INNER_GAUSS_NEWTON, MSR_INNER_SGD};
            unsafe {
                assert_eq!(
                    msr_session_set_inner(s, MSR_INNER_SGD as i32, 0.0),
                    msr_status::MSR_OK
                );
                adapt(s);
                assert_eq!(
                    msr_session_set_inner(s, MSR_INNER_GAUSS_NEWTON as i32, 10.0),
                    msr_status::MSR_OK
                );
                let st = msr_session_refine(
                    s,
                    xs.as_ptr(),
                    xs.len(),
                    ys.as_ptr(),
                    ys.len(),
                    20,
                    1,
                    ptr::null_mut(),
                );
                assert_eq!(st, msr_status::MSR_OK);
            }
        };
        let widths: Vec<String> = hidden.iter().map(|h| h.to_string()).collect();
        let name = format!("panda-payload {kind} 28-{}-7 (k=10)", widths.join("-"));
        let mut g = c.benchmark_group(format!("{name}: predict 1 sample"));
        g.bench_function("C ABI, real-time engine", |b| b.iter(&mut predict));
        g.finish();
        tails(&format!("{name} predict 1, C ABI"), &mut predict);
        let mut g = c.benchmark_group(format!("{name}: adapt on 20 samples"));
        g.sample_size(30);
        g.bench_function("C ABI, 3 SGD steps", |b| b.iter(|| adapt(s)));
        g.bench_function("C ABI, 3 Gauss-Newton steps", |b| b.iter(|| adapt(gn)));
        g.bench_function("C ABI, 3 SGD steps then 1 Gauss-Newton step", |b| {
            b.iter(|| sgd_then_gn(sg))
        });
        g.bench_function("C ABI, the file's refine record: msr_session_adapt", |b| {
            b.iter(|| adapt(rf))
        });
        g.finish();
        let mut i = 0usize;
        let mut tick = || {
            let k = i % 20;
            i += 1;
            let so = unsafe {
                msr_session_observe(gn, x[k * 28..].as_ptr(), 28, y[k * 7..].as_ptr(), 7, 1)
            };
            let sp = unsafe { msr_session_predict(gn, xq.as_ptr(), 28, 1, out.as_mut_ptr(), 7) };
            assert_eq!((so, sp), (msr_status::MSR_OK, msr_status::MSR_OK));
            black_box(&out);
        };
        let mut g = c.benchmark_group(format!(
            "{name}: observe 1 sample + predict 1 (Gauss-Newton)"
        ));
        g.bench_function("C ABI", |b| b.iter(&mut tick));
        g.finish();
        tails(&format!("{name} observe+predict, C ABI"), &mut tick);
        unsafe { msr_session_free(&mut s) };
        unsafe { msr_model_free(&mut m) };
        unsafe { msr_session_free(&mut gn) };
        unsafe { msr_model_free(&mut m_gn) };
        unsafe { msr_session_free(&mut sg) };
        unsafe { msr_model_free(&mut m_sg) };
        unsafe { msr_session_free(&mut rf) };
        unsafe { msr_model_free(&mut m_rf) };
    }
}

criterion_group!(
    benches,
    rank1_adapt_predict,
    rank1_gauss_newton,
    mlp_predict,
    glyph_classify,
    panda_payload
);
criterion_main!(benches);
