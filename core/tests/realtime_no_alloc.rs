//! The real-time path allocates nothing after a session is created: proven with a global
//! allocator that counts every allocation the test's own thread makes, in this test binary,
//! which links msr-core alone. (Only that thread's: the test harness's main thread may
//! still be allocating for its bookkeeping when the test starts, on a loaded machine.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use msr_core::format::{LayerRecord, ModelInfo, ModelRecord};
use msr_core::realtime::{RtModel, Session};
use msr_core::{Activation, ConvGeom, ConvSharing, FeatureShape, LayerSpec, Loss, NetSpec, Op};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations count (the measured thread's).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // A const-initialised Cell<bool> neither allocates nor has a destructor; during a
    // thread's teardown `try_with` fails and nothing counts.
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    }
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

fn values(n: usize, seed: u32) -> Vec<f32> {
    // A small LCG: this test needs numbers, not quality.
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn model(loss: Loss) -> ModelRecord {
    let layer = |op, activation| LayerSpec { op, activation };
    let net = NetSpec {
        input: FeatureShape(vec![2, 8, 8]),
        layers: vec![
            layer(
                Op::ShareConv {
                    geom: ConvGeom::d2(2, 3, 3, 1, 1),
                    sharing: ConvSharing::Kronecker {
                        ka: 3,
                        kb: 2,
                        kc: 9,
                    },
                    bias: true,
                },
                Activation::Relu,
            ),
            layer(
                Op::ShareConv {
                    geom: ConvGeom::d2(3, 4, 3, 2, 1),
                    sharing: ConvSharing::Dense { k: 12 },
                    bias: false,
                },
                Activation::Gelu,
            ),
            layer(Op::Flatten, Activation::Tanh),
            layer(
                Op::ShareLinear {
                    inputs: 64,
                    outputs: 5,
                    k: 20,
                    bias: true,
                },
                Activation::Identity,
            ),
        ],
        loss,
    };
    let shapes = net.shapes().unwrap();
    let layers = shapes
        .params
        .iter()
        .enumerate()
        .map(|(i, l)| LayerRecord {
            shared: l
                .shared
                .iter()
                .map(|[r, c]| values(r * c, i as u32).iter().map(|v| v * 0.3).collect())
                .collect(),
            adapted0: l.adapted.iter().map(|n| values(*n, 7 + i as u32)).collect(),
            lr: 0.01,
        })
        .collect();
    ModelRecord {
        info: ModelInfo {
            name: "no-alloc".into(),
            task_family: "test".into(),
            inner_steps: 3,
            trainer_version: "test".into(),
        },
        net,
        layers,
        // Standardisation on both sides for MSE (inputs only for classification): the
        // engine applies it in place, without allocating.
        ext: msr_core::format::Extensions {
            normalizer: Some(msr_core::format::Normalizer {
                input: Some(msr_core::format::Standardize {
                    mean: vec![0.1; 128],
                    scale: vec![2.0; 128],
                }),
                output: (loss == Loss::Mse).then(|| msr_core::format::Standardize {
                    mean: vec![-0.3; 5],
                    scale: vec![0.5; 5],
                }),
            }),
            solver: None,
            refine: None,
            unknown: Vec::new(),
        },
    }
}

/// One share-linear layer, 8 -> 3, k = 4, with a bias.
fn linear() -> ModelRecord {
    let net = NetSpec {
        input: FeatureShape(vec![8]),
        layers: vec![LayerSpec {
            op: Op::ShareLinear {
                inputs: 8,
                outputs: 3,
                k: 4,
                bias: true,
            },
            activation: Activation::Identity,
        }],
        loss: Loss::Mse,
    };
    ModelRecord {
        info: ModelInfo {
            name: "linear".into(),
            task_family: "test".into(),
            inner_steps: 2,
            trainer_version: "test".into(),
        },
        net,
        layers: vec![LayerRecord {
            shared: vec![values(24 * 4, 3)],
            adapted0: vec![values(4, 4), values(3, 5)],
            lr: 0.1,
        }],
        ext: Default::default(),
    }
}

#[test]
fn adapt_and_predict_do_not_allocate() {
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        let rt = RtModel::new(&model(loss)).unwrap();
        let (fi, fo) = (rt.input_len(), rt.output_len());
        let n = 10; // more than the capacity: chunking must not allocate either
        let x = values(n * fi, 1);
        let mut y = vec![0.0f32; n * fo];
        for r in 0..n {
            y[r * fo + r % fo] = 1.0;
        }
        let mut out = vec![0.0f32; n * fo];
        let mut state = vec![0u8; rt.state_len()];
        let mut session = Session::new(rt.clone(), 4).unwrap();
        // Warm up once (nothing is lazily allocated, but make that a measured fact).
        session.adapt(&x, &y, n).unwrap();
        // A second session adapting by Gauss-Newton: switching it on allocates, adapting
        // does not.
        let mut gn = Session::new(rt.clone(), 4).unwrap();
        gn.set_inner(msr_core::realtime::Inner::GaussNewton { damping: 0.1 })
            .unwrap();
        gn.adapt(&x, &y, n).unwrap();
        let lin_model = RtModel::new(&linear()).unwrap();
        let mut lin = Session::new(lin_model, 4).unwrap();
        lin.set_inner(msr_core::realtime::Inner::GaussNewton { damping: 0.1 })
            .unwrap();
        lin.adapt(&x[..2 * 8], &y[..2 * 3], 2).unwrap();
        lin.observe(&x[..8], &y[..3], 1).unwrap();

        COUNTED.with(|c| c.set(true));
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..5 {
            session.adapt(&x, &y, n).unwrap();
            session.refine(&x, &y, n).unwrap();
            session.predict(&x, n, &mut out).unwrap();
            session.predict(&x[..fi], 1, &mut out[..fo]).unwrap();
            session.save_state(&mut state).unwrap();
            session.load_state(&state).unwrap();
            session.reset();
            gn.adapt(&x, &y, n).unwrap();
            gn.refine(&x, &y, n).unwrap();
            gn.predict(&x, n, &mut out).unwrap();
            if loss == Loss::Mse {
                gn.observe(&x[..2 * fi], &y[..2 * fo], 2).unwrap();
                gn.predict(&x, n, &mut out).unwrap();
            }
            // Two examples: fewer outputs than parameters, the dual form.
            gn.adapt(&x[..2 * fi], &y[..2 * fo], 2).unwrap();
            // A single dense layer: its Jacobian rows come straight from the input.
            lin.adapt(&x[..2 * 8], &y[..2 * 3], 2).unwrap();
            lin.observe(&x[..8], &y[..3], 1).unwrap();
            lin.predict(&x[..8], 1, &mut out[..3]).unwrap();
        }
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        COUNTED.with(|c| c.set(false));
        assert_eq!(
            after - before,
            0,
            "{loss:?}: {} allocations on the hot path",
            after - before
        );
        assert!(out.iter().all(|v| v.is_finite()));

        // The counter does count: creating a session on this thread allocates.
        COUNTED.with(|c| c.set(true));
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        let s2 = Session::new(rt.clone(), 4).unwrap();
        let counted = ALLOCATIONS.load(Ordering::SeqCst) - before;
        COUNTED.with(|c| c.set(false));
        assert!(counted > 0);
        drop(s2);
    }
}
