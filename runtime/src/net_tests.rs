//! The hand-written gradients against burn's autodiff, and the meta-gradient (autodiff
//! through `adapt`) against central finite differences of the whole bilevel objective.
//! All in f64.

use burn::tensor::Tensor;

use super::*;
use crate::spec::{Activation, FeatureShape, Loss, NetSpec, Op};
use crate::test_support::*;

/// Hand-written gradient of the summed per-task loss vs burn's autodiff.
#[test]
fn hand_gradients_match_autodiff() {
    let plain = crate::device::cpu();
    let ad = crate::device::cpu().autodiff();
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        for (name, spec) in nets(loss) {
            let mut rng = Rng::new(7);
            let net = Net::new(spec.clone(), &plain).unwrap();
            let net_ad = Net::new(spec, &ad).unwrap();
            let host = HostParams::random(&net, &mut rng);
            let (t, n) = (2, 3);
            let task = random_task(&net, t, &mut rng);
            let x = rng.normals(t * n * net.input_len(), 1.0);
            let y = targets(loss, t, n, net.output_len(), &mut rng);
            let shape_x = [t, n, net.input_len()];
            let shape_y = [t, n, net.output_len()];

            let params = host.upload(&net, &plain, false);
            let (l_hand, grads) = net.loss_and_grad(
                &params,
                &upload_task(&task, &plain, false),
                f64_tensor(x.clone(), shape_x, &plain),
                f64_tensor(y.clone(), shape_y, &plain),
            );

            let params_ad = host.upload(&net_ad, &ad, false);
            let task_ad = upload_task(&task, &ad, true);
            let out = net_ad.forward(&params_ad, &task_ad, f64_tensor(x, shape_x, &ad));
            let l_ad = net_ad.loss(out, f64_tensor(y, shape_y, &ad));
            assert!(
                rel_err(&to_f64(&l_hand), &to_f64(&l_ad)) < 1e-12,
                "{name} {loss:?}: loss differs"
            );
            let g = l_ad.sum().backward();
            let mut checked = 0;
            for (l, (hand_l, ad_l)) in grads.layers.iter().zip(&task_ad.layers).enumerate() {
                assert_eq!(hand_l.len(), ad_l.len(), "{name}: layer {l} grad count");
                for (j, (h, a)) in hand_l.iter().zip(ad_l).enumerate() {
                    let reference = to_f64(&a.grad(&g).expect("tracked"));
                    let err = rel_err(&to_f64(h), &reference);
                    assert!(
                        err < 1e-9,
                        "{name} {loss:?}: layer {l} param {j}: rel err {err:e}"
                    );
                    checked += 1;
                }
            }
            assert!(checked >= 3, "{name}: only {checked} gradients compared");
        }
    }
}

/// Mean query loss after adapting each task from the meta-parameters.
fn objective(
    net: &Net,
    params: &MetaParams,
    data: &[Vec<f64>; 4],
    dims: (usize, usize, usize),
    steps: usize,
) -> Tensor<1> {
    let (t, ns, nq) = dims;
    let dev = net.device();
    let (fi, fo) = (net.input_len(), net.output_len());
    let task = net.adapt(
        params,
        f64_tensor(data[0].clone(), [t, ns, fi], dev),
        f64_tensor(data[1].clone(), [t, ns, fo], dev),
        steps,
    );
    let out = net.forward(params, &task, f64_tensor(data[2].clone(), [t, nq, fi], dev));
    net.loss(out, f64_tensor(data[3].clone(), [t, nq, fo], dev))
        .mean()
}

fn meta_net(loss: Loss) -> NetSpec {
    meta_net_with(loss, Activation::Relu)
}

fn meta_net_with(loss: Loss, hidden: Activation) -> NetSpec {
    NetSpec {
        input: FeatureShape(vec![5]),
        layers: vec![
            layer(
                Op::ShareLinear {
                    inputs: 5,
                    outputs: 4,
                    k: 3,
                    bias: true,
                },
                hidden,
            ),
            layer(
                Op::ShareLinear {
                    inputs: 4,
                    outputs: 3,
                    k: 3,
                    bias: true,
                },
                Activation::Identity,
            ),
        ],
        loss,
    }
}

/// d(query loss after adapt)/d(U, v0, lr) by autodiff through the hand-written inner loop,
/// against central finite differences of the whole two-level objective.
#[test]
fn meta_gradient_matches_finite_differences() {
    let plain = crate::device::cpu();
    let ad = crate::device::cpu().autodiff();
    let cases = [
        (Loss::Mse, 1, Activation::Relu),
        (Loss::Mse, 3, Activation::Relu),
        (Loss::CrossEntropy, 1, Activation::Relu),
        (Loss::CrossEntropy, 3, Activation::Relu),
        (Loss::Mse, 3, Activation::Tanh),
        (Loss::Mse, 3, Activation::Gelu),
        (Loss::CrossEntropy, 1, Activation::Gelu),
    ];
    for (loss, steps, hidden) in cases {
        {
            let spec = meta_net_with(loss, hidden);
            let net = Net::new(spec.clone(), &plain).unwrap();
            let net_ad = Net::new(spec, &ad).unwrap();
            let mut rng = Rng::new(11 + steps as u64);
            let host = HostParams::random(&net, &mut rng);
            let dims = (3, 4, 5);
            let (t, ns, nq) = dims;
            let data = [
                rng.normals(t * ns * 5, 1.0),
                targets(loss, t, ns, 3, &mut rng),
                rng.normals(t * nq * 5, 1.0),
                targets(loss, t, nq, 3, &mut rng),
            ];

            let tracked = host.upload(&net_ad, &ad, true);
            let j = objective(&net_ad, &tracked, &data, dims, steps);
            let grads = j.backward();
            let analytic: Vec<Vec<f64>> = tracked
                .tensors()
                .iter()
                .map(|p| to_f64(&p.grad(&grads).expect("every meta-parameter is used")))
                .collect();

            let h = 1e-5;
            let eval = |hp: &HostParams| {
                to_f64(&objective(
                    &net,
                    &hp.upload(&net, &plain, false),
                    &data,
                    dims,
                    steps,
                ))[0]
            };
            let fds = finite_differences(&host, h, eval);
            for (p, (reference, fd)) in analytic.iter().zip(&fds).enumerate() {
                let err = rel_err(reference, fd);
                assert!(
                    err < 1e-6,
                    "{loss:?} {hidden:?}, {steps} steps: meta-parameter {p}: rel err {err:e}"
                );
            }
            // The lr must matter: the meta-gradient reaches through the inner step.
            let lr_grad = analytic[3][0];
            assert!(lr_grad.abs() > 1e-8, "lr gradient vanished: {lr_grad}");
        }
    }
}

/// Adapting T tasks as one batch equals adapting each alone.
#[test]
fn batched_adaptation_equals_per_task() {
    let plain = crate::device::cpu();
    let net = Net::new(meta_net(Loss::Mse), &plain).unwrap();
    let mut rng = Rng::new(3);
    let params = HostParams::random(&net, &mut rng).upload(&net, &plain, false);
    let (t, n) = (4, 6);
    let x = rng.normals(t * n * 5, 1.0);
    let y = rng.normals(t * n * 3, 1.0);
    let all = net.adapt(
        &params,
        f64_tensor(x.clone(), [t, n, 5], &plain),
        f64_tensor(y.clone(), [t, n, 3], &plain),
        2,
    );
    for task in 0..t {
        let one = net.adapt(
            &params,
            f64_tensor(
                x[task * n * 5..(task + 1) * n * 5].to_vec(),
                [1, n, 5],
                &plain,
            ),
            f64_tensor(
                y[task * n * 3..(task + 1) * n * 3].to_vec(),
                [1, n, 3],
                &plain,
            ),
            2,
        );
        for (la, lo) in all.layers.iter().zip(&one.layers) {
            for (a, o) in la.iter().zip(lo) {
                let row = to_f64(&a.clone().narrow(0, task, 1));
                assert!(rel_err(&row, &to_f64(o)) < 1e-12);
            }
        }
    }
}

/// One inner step lowers the support loss for a small enough lr (a sanity check of sign).
#[test]
fn inner_step_descends() {
    let plain = crate::device::cpu();
    let net = Net::new(meta_net(Loss::CrossEntropy), &plain).unwrap();
    let mut rng = Rng::new(5);
    let params = HostParams::random(&net, &mut rng).upload(&net, &plain, false);
    let x = f64_tensor(rng.normals(2 * 8 * 5, 1.0), [2, 8, 5], &plain);
    let y = f64_tensor(
        targets(Loss::CrossEntropy, 2, 8, 3, &mut rng),
        [2, 8, 3],
        &plain,
    );
    let before = net.initial(&params, 2);
    let l0 = to_f64(&net.loss(net.forward(&params, &before, x.clone()), y.clone()));
    let after = net.adapt(&params, x.clone(), y.clone(), 1);
    let l1 = to_f64(&net.loss(net.forward(&params, &after, x), y));
    for (a, b) in l1.iter().zip(&l0) {
        assert!(a < b, "loss rose from {b} to {a}");
    }
}
