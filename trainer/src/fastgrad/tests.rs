//! The fast meta-gradient against central finite differences in f64, on small nets of
//! every layer kind, activation and inner-step count; first order against second; threads.

use super::*;
use crate::rng::Rng;

fn layer(inputs: usize, outputs: usize, k: Option<usize>, bias: bool, a: Activation) -> DenseLayer {
    DenseLayer {
        inputs,
        outputs,
        k,
        bias,
        activation: a,
    }
}

/// Random meta-parameters (learning rates 0 where `frozen`), and random tasks.
fn setup(net: &DenseNet, frozen: &[bool], seed: u64) -> (Meta<f64>, Vec<Vec<f64>>) {
    let mut rng = Rng::derive(&[seed, 7]);
    let mut meta = Meta::<f64>::zeros(net);
    for (l, m) in meta.layers.iter_mut().enumerate() {
        let scale = 1.0 / (net.layers[l].inputs as f64).sqrt();
        for x in &mut m.ut {
            *x = rng.normals(1, scale)[0] as f64;
        }
        for x in m.a0.iter_mut() {
            *x = rng.normals(
                1,
                if net.layers[l].k.is_some() {
                    1.0
                } else {
                    scale
                },
            )[0] as f64;
        }
        for x in &mut m.b0 {
            *x = rng.normals(1, 0.3)[0] as f64;
        }
        m.lr = if frozen[l] {
            0.0
        } else {
            0.05 + 0.02 * l as f64
        };
    }
    let (t, s, q) = (2, 5, 6);
    let (din, dout) = (net.inputs(), net.outputs());
    let data = [t * s * din, t * s * dout, t * q * din, t * q * dout]
        .iter()
        .map(|&n| rng.normals(n, 1.0).into_iter().map(f64::from).collect())
        .collect();
    (meta, data)
}

fn tasks(d: &[Vec<f64>]) -> Tasks<'_, f64> {
    Tasks {
        xs: &d[0],
        ys: &d[1],
        xq: &d[2],
        yq: &d[3],
        tasks: 2,
        support: 5,
        query: 6,
    }
}

/// Checks every coordinate of the gradient against central differences of the loss.
fn check_fd(net: &DenseNet, frozen: &[bool], steps: usize, seed: u64) {
    let (meta, data) = setup(net, frozen, seed);
    let mut e = Engine::<f64>::new(net.clone(), steps, false, 1);
    let grad = e.meta_grad(&meta, tasks(&data)).1.flat(net);
    let base = meta.flat(net);
    let mut worst = 0.0f64;
    for (i, v) in base.iter().enumerate() {
        for j in 0..v.len() {
            let h = 1e-5;
            let mut at = |d: f64| {
                let mut f = base.clone();
                f[i][j] += d;
                e.meta_grad(&Meta::from_flat(net, &f), tasks(&data)).0
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let err = (fd - grad[i][j]).abs() / (1.0 + fd.abs());
            worst = worst.max(err);
            assert!(
                err < 1e-6,
                "tensor {i} entry {j}: fd {fd} vs {} ({net:?}, {steps} steps)",
                grad[i][j]
            );
        }
    }
    assert!(worst.is_finite());
    let largest = grad.iter().flatten().fold(0.0f64, |m, g| m.max(g.abs()));
    assert!(largest > 1e-3, "a zero gradient checks nothing");
}

const ACTS: [Activation; 4] = [
    Activation::Identity,
    Activation::Relu,
    Activation::Tanh,
    Activation::Gelu,
];

/// MSR and plain layers mixed, biases on and off, every activation, 0 to 3 inner steps.
#[test]
fn meta_gradient_matches_finite_differences() {
    for (ai, &a) in ACTS.iter().enumerate() {
        for steps in 0..=3 {
            let net = DenseNet {
                layers: vec![
                    layer(3, 4, Some(3), true, a),
                    layer(4, 5, None, steps % 2 == 0, a),
                    layer(5, 2, Some(2), true, Activation::Identity),
                ],
            };
            check_fd(&net, &[false; 3], steps, (ai * 10 + steps) as u64);
        }
    }
}

/// Frozen layers (learning rate 0, as ANIL's body and msr-head's), single layers
/// (msr-fc, maml-fc) without bias.
#[test]
fn frozen_layers_and_single_layers_match_finite_differences() {
    for &a in &[Activation::Tanh, Activation::Relu] {
        let net = DenseNet {
            layers: vec![
                layer(3, 4, None, true, a),
                layer(4, 4, None, true, a),
                layer(4, 2, Some(3), true, Activation::Identity),
            ],
        };
        check_fd(&net, &[true, true, false], 2, 3);
        check_fd(&net, &[true, false, true], 2, 4);
    }
    for k in [Some(2), None] {
        let net = DenseNet {
            layers: vec![layer(4, 3, k, false, Activation::Identity)],
        };
        check_fd(&net, &[false], 1, 5);
        check_fd(&net, &[true], 2, 6);
    }
}

/// The first-order gradient is another number (it drops the Hessian terms) but has the
/// same query loss.
#[test]
fn first_order_differs_from_second() {
    let net = DenseNet {
        layers: vec![
            layer(3, 4, Some(3), true, Activation::Tanh),
            layer(4, 2, Some(2), true, Activation::Identity),
        ],
    };
    let (meta, data) = setup(&net, &[false, false], 11);
    let mut e2 = Engine::<f64>::new(net.clone(), 2, false, 1);
    let (l2, g2) = e2.meta_grad(&meta, tasks(&data));
    let g2 = g2.clone();
    let mut e1 = Engine::<f64>::new(net.clone(), 2, true, 1);
    let (l1, g1) = e1.meta_grad(&meta, tasks(&data));
    assert_eq!(l1, l2);
    let diff: f64 = g1.flat(&net)[0]
        .iter()
        .zip(&g2.flat(&net)[0])
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(diff > 1e-6, "first-order U gradient equals the exact one");
}

/// f32, one thread and four: bit-identical gradients and loss.
#[test]
fn threads_do_not_change_the_result() {
    let net = DenseNet {
        layers: vec![
            layer(6, 16, Some(4), true, Activation::Tanh),
            layer(16, 16, None, true, Activation::Relu),
            layer(16, 3, Some(4), true, Activation::Identity),
        ],
    };
    let mut rng = Rng::derive(&[5, 5]);
    let mut meta = Meta::<f32>::zeros(&net);
    for m in &mut meta.layers {
        for x in m.ut.iter_mut().chain(&mut m.a0).chain(&mut m.b0) {
            *x = rng.normals(1, 0.5)[0];
        }
        m.lr = 0.1;
    }
    let (t, s, q) = (7, 5, 9);
    let d: Vec<Vec<f32>> = [t * s * 6, t * s * 3, t * q * 6, t * q * 3]
        .iter()
        .map(|&n| rng.normals(n, 1.0))
        .collect();
    let tk = Tasks {
        xs: &d[0],
        ys: &d[1],
        xq: &d[2],
        yq: &d[3],
        tasks: t,
        support: s,
        query: q,
    };
    let mut one = Engine::<f32>::new(net.clone(), 3, false, 1);
    let (l1, g1) = one.meta_grad(&meta, tk);
    let g1 = g1.clone();
    for threads in [2, 4] {
        let mut many = Engine::<f32>::new(net.clone(), 3, false, threads);
        let (ln, gn) = many.meta_grad(&meta, tk);
        assert_eq!(l1.to_bits(), ln.to_bits());
        assert_eq!(&g1, gn, "{threads} threads");
        // Again, with its buffers reused.
        let (ln, gn) = many.meta_grad(&meta, tk);
        assert_eq!(l1.to_bits(), ln.to_bits());
        assert_eq!(&g1, gn);
    }
}
