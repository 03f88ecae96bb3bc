//! The same cases on every enabled backend: forward, hand-written gradients, adapt, the
//! meta-gradient, export and reload. Each backend runs in f32 and is compared with the
//! f64 CPU computation (itself checked against autodiff and finite differences in
//! `net_tests`). With the `wgpu` feature, every GPU adapter found runs the suite too
//! (in CI: lavapipe, Mesa's CPU Vulkan driver).

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::format::{ModelInfo, ModelRecord};
use crate::model::Model;
use crate::net::{MetaParams, Net, TaskParams};
use crate::spec::{Loss, NetSpec};
use crate::test_support::*;

/// CPU always; every GPU adapter when built with `wgpu`.
fn backends() -> Vec<(String, Device)> {
    let mut out = vec![("cpu (ndarray)".to_string(), crate::device::cpu())];
    for (i, d) in crate::device::gpus().into_iter().enumerate() {
        out.push((format!("gpu {i} ({d:?})"), d));
    }
    out
}

fn upload_f32<const D: usize>(v: &[f64], shape: [usize; D], device: &Device) -> Tensor<D> {
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), (device, DType::F32))
}

fn params_f32(host: &HostParams, net: &Net, device: &Device, track: bool) -> MetaParams {
    let mut it = host.0.iter().map(|(v, s)| {
        let t = upload_f32(v, *s, device);
        if track { t.require_grad() } else { t }
    });
    MetaParams {
        layers: net
            .shapes()
            .params
            .iter()
            .map(|l| crate::net::LayerParams {
                shared: l.shared.iter().map(|_| it.next().unwrap()).collect(),
                adapted0: l.adapted.iter().map(|_| it.next().unwrap()).collect(),
                lr: it.next().unwrap(),
            })
            .collect(),
    }
}

fn task_f32(host: &[Vec<(Vec<f64>, [usize; 2])>], device: &Device) -> TaskParams {
    TaskParams {
        layers: host
            .iter()
            .map(|l| l.iter().map(|(v, s)| upload_f32(v, *s, device)).collect())
            .collect(),
    }
}

struct Case {
    name: &'static str,
    spec: NetSpec,
    loss: Loss,
    host: HostParams,
    task: Vec<Vec<(Vec<f64>, [usize; 2])>>,
    x: Vec<f64>,
    y: Vec<f64>,
    dims: [usize; 3],
    out_len: usize,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        for (name, spec) in nets(loss) {
            let cpu = crate::device::cpu();
            let net = Net::new(spec.clone(), &cpu).unwrap();
            let mut rng = Rng::new(31);
            let mut host = HostParams::random(&net, &mut rng);
            for (v, s) in &mut host.0 {
                if *s == [1, 1] {
                    v[0] = 0.05; // small inner steps: no ReLU flips between f32 and f64
                }
            }
            let (t, n) = (2, 4);
            let task = random_task(&net, t, &mut rng);
            out.push(Case {
                name,
                spec,
                loss,
                x: rng.normals(t * n * net.input_len(), 1.0),
                y: targets(loss, t, n, net.output_len(), &mut rng),
                dims: [t, n, net.input_len()],
                out_len: net.output_len(),
                host,
                task,
            });
        }
    }
    out
}

fn close(name: &str, what: &str, got: &[f64], reference: &[f64], tol: f64) {
    let err = rel_err(got, reference);
    assert!(
        err < tol,
        "{name}: {what}: rel err {err:e} (tolerance {tol:e})"
    );
}

#[test]
fn every_backend_computes_what_the_f64_cpu_computes() {
    let cpu = crate::device::cpu();
    let backends = backends();
    let names: Vec<&String> = backends.iter().map(|(n, _)| n).collect();
    println!("conformance backends: {names:?}");
    for case in cases() {
        let [t, n, _] = case.dims;
        let ydims = [t, n, case.out_len];
        // The f64 CPU reference.
        let net64 = Net::new(case.spec.clone(), &cpu).unwrap();
        let p64 = case.host.upload(&net64, &cpu, false);
        let x64 = f64_tensor(case.x.clone(), case.dims, &cpu);
        let y64 = f64_tensor(case.y.clone(), ydims, &cpu);
        let task64 = upload_task(&case.task, &cpu, false);
        let out64 = to_f64(&net64.forward(&p64, &task64, x64.clone()));
        let (_, g64) = net64.loss_and_grad(&p64, &task64, x64.clone(), y64.clone());
        let adapted64 = net64.adapt(&p64, x64.clone(), y64.clone(), 2);
        let pred64 = to_f64(&net64.forward(&p64, &adapted64, x64.clone()));
        let ad64 = cpu.clone().autodiff();
        let net_ad64 = Net::new(case.spec.clone(), &ad64).unwrap();
        let tracked64 = case.host.upload(&net_ad64, &ad64, true);
        let xa = f64_tensor(case.x.clone(), case.dims, &ad64);
        let ya = f64_tensor(case.y.clone(), ydims, &ad64);
        let adapted = net_ad64.adapt(&tracked64, xa.clone(), ya.clone(), 2);
        let meta = net_ad64
            .loss(net_ad64.forward(&tracked64, &adapted, xa), ya)
            .sum();
        let grads = meta.backward();
        // Parameter-free layers (flatten) carry an unused lr: no gradient there.
        let meta64: Vec<Option<Vec<f64>>> = tracked64
            .tensors()
            .iter()
            .map(|p| p.grad(&grads).map(|g| to_f64(&g)))
            .collect();

        for (backend, device) in &backends {
            let name = format!("{} {:?} on {backend}", case.name, case.loss);
            let net = Net::new(case.spec.clone(), device).unwrap();
            let p = params_f32(&case.host, &net, device, false);
            let x = upload_f32(&case.x, case.dims, device);
            let y = upload_f32(&case.y, ydims, device);
            let task = task_f32(&case.task, device);

            close(
                &name,
                "forward",
                &to_f64(&net.forward(&p, &task, x.clone())),
                &out64,
                1e-4,
            );

            let (_, g) = net.loss_and_grad(&p, &task, x.clone(), y.clone());
            for (l, (gl, rl)) in g.layers.iter().zip(&g64.layers).enumerate() {
                for (j, (a, b)) in gl.iter().zip(rl).enumerate() {
                    close(
                        &name,
                        &format!("gradient {l}.{j}"),
                        &to_f64(a),
                        &to_f64(b),
                        1e-3,
                    );
                }
            }

            let adapted = net.adapt(&p, x.clone(), y.clone(), 2);
            let pred = to_f64(&net.forward(&p, &adapted, x.clone()));
            close(&name, "adapt (2 steps) + predict", &pred, &pred64, 1e-3);

            let ad = device.clone().autodiff();
            let net_ad = Net::new(case.spec.clone(), &ad).unwrap();
            let tracked = params_f32(&case.host, &net_ad, &ad, true);
            let (xa, ya) = (
                upload_f32(&case.x, case.dims, &ad),
                upload_f32(&case.y, ydims, &ad),
            );
            let adapted = net_ad.adapt(&tracked, xa.clone(), ya.clone(), 2);
            let meta = net_ad
                .loss(net_ad.forward(&tracked, &adapted, xa), ya)
                .sum();
            let grads = meta.backward();
            for (i, (pt, reference)) in tracked.tensors().iter().zip(&meta64).enumerate() {
                match (pt.grad(&grads), reference) {
                    (Some(g), Some(r)) => {
                        close(&name, &format!("meta-gradient {i}"), &to_f64(&g), r, 2e-3)
                    }
                    (None, None) => {}
                    (g, r) => panic!(
                        "{name}: meta-gradient {i}: present on device {}, on the reference {}",
                        g.is_some(),
                        r.is_some()
                    ),
                }
            }

            // Export and reload: the file written from this device reads back unchanged.
            let rec = ModelRecord {
                info: ModelInfo {
                    name: case.name.into(),
                    task_family: "conformance".into(),
                    inner_steps: 2,
                    trainer_version: "test".into(),
                },
                net: case.spec.clone(),
                layers: layer_records(&case.host, &net64),
                ext: Default::default(),
            };
            let model = Model::from_record(&rec, device, DType::F32).unwrap();
            let bytes = model.to_record().to_bytes();
            assert_eq!(
                bytes,
                rec.to_bytes(),
                "{name}: export after reload changed the file"
            );
        }
    }
}

#[test]
fn gpu_backends_are_listed_when_built() {
    // Not a skip: without `wgpu` this asserts there are no GPU backends; with it, CI
    // (lavapipe) must find at least one adapter unless MSR_ALLOW_NO_GPU is set.
    let gpus = crate::device::gpus();
    if cfg!(feature = "wgpu") {
        assert!(
            !gpus.is_empty() || std::env::var_os("MSR_ALLOW_NO_GPU").is_some(),
            "built with wgpu but no adapter found; install mesa-vulkan-drivers (lavapipe)"
        );
    } else {
        assert!(gpus.is_empty());
    }
}
