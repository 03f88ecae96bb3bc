//! The Jacobian's direct paths (a dense last layer's rows from U and its input; forward
//! mode, one layer pass per parameter, for convolutions and Kronecker-factored U) against
//! one backward pass per output, the general path.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::format::ModelRecord;
use crate::spec::{ConvGeom, ConvSharing, FeatureShape, LayerSpec, NetSpec, Op};
use crate::test_rng::Rng;

fn record(net: NetSpec, rng: &mut Rng) -> ModelRecord {
    crate::test_models::record(net, |n| (0..n).map(|_| rng.normal() as f32).collect(), 0.1)
}

/// Rows of `J` by the direct paths against one backward pass per output, for the example
/// in the session's activations.
fn check_rows(net: NetSpec, rng: &mut Rng, what: &str) {
    check_rows_frozen(net, rng, what, &[]);
}

/// [`check_rows`] with the layers `frozen` not adapting (learning rate 0): Gauss-Newton
/// moves the others, and the rows still pass through the frozen ones.
fn check_rows_frozen(net: NetSpec, rng: &mut Rng, what: &str, frozen: &[usize]) {
    let mut rec = record(net, rng);
    for &l in frozen {
        rec.layers[l].lr = 0.0;
    }
    let model = RtModel::new(&rec).unwrap();
    let mut s = Session::new(model.clone(), 1).unwrap();
    s.set_inner(Inner::GaussNewton { damping: 1.0 }).unwrap();
    let x: Vec<f32> = (0..model.input_len).map(|_| rng.normal() as f32).collect();
    s.forward_chunk(&x, 1);
    let mut gn = s.gn.take().unwrap();
    let (fo, p) = (model.output_len, gn.p);
    s.jacobian_rows(&mut gn);
    let direct = gn.jac.clone();
    let mut reverse = vec![0.0f32; fo * p];
    for o in 0..fo {
        s.jacobian_row(o, &mut reverse[o * p..(o + 1) * p]);
    }
    let worst = direct
        .iter()
        .zip(&reverse)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{what}: worst difference {worst}");
    // Not vacuous: every row has entries, and a fair share of them are not zero.
    let nonzero = direct.iter().filter(|v| v.abs() > 1e-6).count();
    for o in 0..fo {
        let row = &direct[o * p..(o + 1) * p];
        assert!(
            row.iter().any(|v| v.abs() > 1e-6),
            "{what}: row {o} is all zeros"
        );
    }
    assert!(4 * nonzero >= p, "{what}: {nonzero} of {p} nonzero");
}

#[test]
fn direct_and_forward_mode_rows_equal_backward_passes() {
    let nets = [
        // rot8's shape: a Kronecker-factored share-conv, 64 outputs, k = 36, 4 biases.
        (
            vec![1, 6, 6],
            Op::ShareConv {
                geom: ConvGeom::d2(1, 4, 3, 1, 0),
                sharing: ConvSharing::Kronecker {
                    ka: 4,
                    kb: 1,
                    kc: 9,
                },
                bias: true,
            },
        ),
        (
            vec![2, 12],
            Op::Conv {
                geom: ConvGeom::d1(2, 3, 3, 0),
                bias: true,
            },
        ),
        (
            vec![7],
            Op::ShareLinear {
                inputs: 7,
                outputs: 5,
                k: 3,
                bias: true,
            },
        ),
    ];
    let mut rng = Rng::new(7);
    for (input, op) in nets {
        let what = op.kind_name();
        let net = NetSpec {
            input: FeatureShape(input),
            layers: vec![LayerSpec {
                op,
                activation: crate::spec::Activation::Identity,
            }],
            loss: crate::spec::Loss::Mse,
        };
        check_rows(net, &mut rng, what);
    }
}

/// Nets of dense layers take `dense_rows` (U layers' `z_j` for a batch of examples):
/// every activation, U and plain weights, with and without biases, against one backward
/// pass per output.
#[test]
fn dense_nets_rows_equal_backward_passes() {
    use crate::spec::Activation::*;
    let share = |inputs, outputs, k, bias| Op::ShareLinear {
        inputs,
        outputs,
        k,
        bias,
    };
    let mut rng = Rng::new(9);
    for (name, layers) in [
        (
            "share tanh-tanh-identity",
            vec![
                (share(6, 9, 4, true), Tanh),
                (share(9, 8, 3, true), Tanh),
                (share(8, 4, 5, true), Identity),
            ],
        ),
        (
            "share relu, linear gelu, share identity",
            vec![
                (share(6, 7, 3, false), Relu),
                (
                    Op::Linear {
                        inputs: 7,
                        outputs: 5,
                        bias: true,
                    },
                    Gelu,
                ),
                (share(5, 3, 2, true), Identity),
            ],
        ),
    ] {
        let net = NetSpec {
            input: FeatureShape(vec![6]),
            layers: layers
                .into_iter()
                .map(|(op, activation)| LayerSpec { op, activation })
                .collect(),
            loss: crate::spec::Loss::Mse,
        };
        check_rows(net.clone(), &mut rng, name);
        check_batched_rows(net.clone(), &mut rng, name, &[]);
        check_batched_rows(net.clone(), &mut rng, name, &[1]);
        // A frozen first layer (the lowest moved one above it) and a frozen middle one.
        check_rows_frozen(net.clone(), &mut rng, name, &[0]);
        check_rows_frozen(net, &mut rng, name, &[1]);
    }
}

/// `dense_rows` for a batch in the middle of a chunk (examples 2..6 of 7, the chunk's
/// activations computed together) against one backward pass per output of each example
/// alone.
fn check_batched_rows(net: NetSpec, rng: &mut Rng, what: &str, frozen: &[usize]) {
    let mut rec = record(net, rng);
    for &l in frozen {
        rec.layers[l].lr = 0.0;
    }
    let model = RtModel::new(&rec).unwrap();
    let (m, first, count) = (7, 2, 4);
    let mut s = Session::new(model.clone(), m).unwrap();
    s.set_inner(Inner::GaussNewton { damping: 1.0 }).unwrap();
    let fi = model.input_len;
    let x: Vec<f32> = (0..m * fi).map(|_| rng.normal() as f32).collect();
    let mut gn = s.gn.take().unwrap();
    assert_eq!(gn.batch, m, "{what}: a batch holds the chunk");
    let (fo, p) = (model.output_len, gn.p);
    s.forward_chunk(&x, m);
    let mut rows = vec![f32::NAN; count * fo * p];
    s.dense_rows(first, count, &mut rows, p, &mut gn.jz, &mut gn.deltas);
    let mut worst = 0.0f32;
    for e in 0..count {
        let ex = first + e;
        s.forward_chunk(&x[ex * fi..(ex + 1) * fi], 1);
        for o in 0..fo {
            let mut want = vec![0.0f32; p];
            s.jacobian_row(o, &mut want);
            let got = &rows[(e * fo + o) * p..(e * fo + o + 1) * p];
            assert!(
                want.iter().any(|v| v.abs() > 1e-6),
                "{what}: example {ex} output {o}: a zero row"
            );
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max((g - w).abs() / (1.0 + w.abs()));
            }
        }
    }
    assert!(
        worst < 1e-5,
        "{what} (frozen {frozen:?}): batched rows differ by {worst}"
    );
}
