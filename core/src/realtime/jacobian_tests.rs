//! The Jacobian's direct paths (a dense last layer's rows from U and its input; forward
//! mode, one layer pass per parameter, for convolutions and Kronecker-factored U) against
//! one backward pass per output, the general path.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::format::{LayerRecord, ModelInfo, ModelRecord};
use crate::spec::{ConvGeom, ConvSharing, FeatureShape, LayerSpec, NetSpec, Op};
use crate::test_rng::Rng;

fn record(net: NetSpec, rng: &mut Rng) -> ModelRecord {
    let shapes = net.shapes().unwrap();
    let mut normals = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
    let layers = shapes
        .params
        .iter()
        .map(|l| LayerRecord {
            shared: l.shared.iter().map(|[r, c]| normals(r * c)).collect(),
            adapted0: l.adapted.iter().map(|&n| normals(n)).collect(),
            lr: 0.1,
        })
        .collect();
    ModelRecord {
        info: ModelInfo {
            name: "jacobian".into(),
            task_family: "test".into(),
            inner_steps: 1,
            trainer_version: "test".into(),
        },
        net,
        layers,
        ext: Default::default(),
    }
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
        let net = NetSpec {
            input: FeatureShape(input),
            layers: vec![LayerSpec {
                op,
                activation: crate::spec::Activation::Identity,
            }],
            loss: crate::spec::Loss::Mse,
        };
        let rec = record(net, &mut rng);
        let model = RtModel::new(&rec).unwrap();
        let mut s = Session::new(model.clone(), 1).unwrap();
        s.set_inner(Inner::GaussNewton { damping: 1.0 }).unwrap();
        let x: Vec<f32> = (0..model.input_len).map(|_| rng.normal() as f32).collect();
        s.forward_chunk(&x, 1);
        let mut gn = s.gn.take().unwrap();
        let (fo, p) = (model.output_len, gn.p);
        s.jacobian_rows(&mut gn.jac);
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
        assert!(
            worst < 1e-5,
            "{}: worst difference {worst}",
            rec.net.layers[0].op.kind_name()
        );
    }
}
