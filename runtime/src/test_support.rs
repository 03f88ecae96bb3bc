//! Helpers for the unit tests: a seeded generator and f64 parameter construction.

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::net::{LayerParams, MetaParams, Net, TaskParams};
use crate::spec::{Activation, ConvGeom, ConvSharing, FeatureShape, LayerSpec, Loss, NetSpec, Op};

/// SplitMix64: tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub fn f64_tensor<const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F64))
}

pub fn to_f64<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.to_data().convert::<f64>().try_to_vec::<f64>().unwrap()
}

/// Central finite differences (step `h`) of `eval` with respect to every entry of
/// every tensor of `host`, in the same layout as [`HostParams`].
pub fn finite_differences(
    host: &HostParams,
    h: f64,
    eval: impl Fn(&HostParams) -> f64,
) -> Vec<Vec<f64>> {
    (0..host.0.len())
        .map(|p| {
            (0..host.0[p].0.len())
                .map(|e| {
                    let mut plus = host.clone();
                    plus.0[p].0[e] += h;
                    let mut minus = host.clone();
                    minus.0[p].0[e] -= h;
                    (eval(&plus) - eval(&minus)) / (2.0 * h)
                })
                .collect()
        })
        .collect()
}

/// Host copy of meta-parameters, in [`MetaParams::tensors`] order: (values, [rows, cols]).
#[derive(Clone, Debug)]
pub struct HostParams(pub Vec<(Vec<f64>, [usize; 2])>);

impl HostParams {
    /// Random parameters for `net`: U ~ N(0, 0.5), v0 ~ N(0, 0.5), lr = 0.3.
    pub fn random(net: &Net, rng: &mut Rng) -> Self {
        let mut out = Vec::new();
        for layout in &net.shapes().params {
            for [r, c] in &layout.shared {
                out.push((rng.normals(r * c, 0.5), [*r, *c]));
            }
            for n in &layout.adapted {
                out.push((rng.normals(*n, 0.5), [1, *n]));
            }
            out.push((vec![0.3], [1, 1]));
        }
        HostParams(out)
    }

    /// Upload to `device` in f64; `track` marks every tensor as requiring a gradient.
    pub fn upload(&self, net: &Net, device: &Device, track: bool) -> MetaParams {
        let mut it = self.0.iter().map(|(v, s)| {
            let t = f64_tensor(v.clone(), *s, device);
            if track { t.require_grad() } else { t }
        });
        let layers = net
            .shapes()
            .params
            .iter()
            .map(|layout| LayerParams {
                shared: layout.shared.iter().map(|_| it.next().unwrap()).collect(),
                adapted0: layout.adapted.iter().map(|_| it.next().unwrap()).collect(),
                lr: it.next().unwrap(),
            })
            .collect();
        MetaParams { layers }
    }
}

/// Random per-task parameters for `tasks` tasks, as host vectors per layer.
pub fn random_task(net: &Net, tasks: usize, rng: &mut Rng) -> Vec<Vec<(Vec<f64>, [usize; 2])>> {
    net.shapes()
        .params
        .iter()
        .map(|l| {
            l.adapted
                .iter()
                .map(|n| (rng.normals(tasks * n, 0.5), [tasks, *n]))
                .collect()
        })
        .collect()
}

pub fn upload_task(
    host: &[Vec<(Vec<f64>, [usize; 2])>],
    device: &Device,
    track: bool,
) -> TaskParams {
    TaskParams {
        layers: host
            .iter()
            .map(|l| {
                l.iter()
                    .map(|(v, s)| {
                        let t = f64_tensor(v.clone(), *s, device);
                        if track { t.require_grad() } else { t }
                    })
                    .collect()
            })
            .collect(),
    }
}

/// Targets for `loss`: Gaussian for MSE, random one-hot for cross-entropy.
pub fn targets(loss: crate::spec::Loss, t: usize, n: usize, f: usize, rng: &mut Rng) -> Vec<f64> {
    match loss {
        crate::spec::Loss::Mse => rng.normals(t * n * f, 1.0),
        crate::spec::Loss::CrossEntropy => {
            let mut y = vec![0.0; t * n * f];
            for row in 0..t * n {
                y[row * f + rng.below(f)] = 1.0;
            }
            y
        }
    }
}

/// Relative L2 error of `a` against reference `b`.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

pub fn layer(op: Op, activation: Activation) -> LayerSpec {
    LayerSpec { op, activation }
}

/// Small networks that together use every layer kind, every activation and flatten.
pub fn nets(loss: Loss) -> Vec<(&'static str, NetSpec)> {
    use Activation::*;
    vec![
        (
            "share-linear",
            NetSpec {
                input: FeatureShape(vec![6]),
                layers: vec![
                    layer(
                        Op::ShareLinear {
                            inputs: 6,
                            outputs: 4,
                            k: 5,
                            bias: true,
                        },
                        Relu,
                    ),
                    layer(
                        Op::ShareLinear {
                            inputs: 4,
                            outputs: 3,
                            k: 2,
                            bias: false,
                        },
                        Identity,
                    ),
                ],
                loss,
            },
        ),
        (
            "linear",
            NetSpec {
                input: FeatureShape(vec![6]),
                layers: vec![
                    layer(
                        Op::Linear {
                            inputs: 6,
                            outputs: 5,
                            bias: true,
                        },
                        Relu,
                    ),
                    layer(
                        Op::Linear {
                            inputs: 5,
                            outputs: 3,
                            bias: true,
                        },
                        Identity,
                    ),
                ],
                loss,
            },
        ),
        (
            "share-conv1d-dense",
            NetSpec {
                input: FeatureShape(vec![2, 9]),
                layers: vec![
                    layer(
                        Op::ShareConv {
                            geom: ConvGeom::d1(2, 3, 3, 1),
                            sharing: ConvSharing::Dense { k: 7 },
                            bias: true,
                        },
                        Relu,
                    ),
                    layer(
                        Op::ShareConv {
                            geom: ConvGeom::d1(3, 2, 2, 0),
                            sharing: ConvSharing::Dense { k: 4 },
                            bias: false,
                        },
                        Relu,
                    ),
                    layer(Op::Flatten, Identity),
                    layer(
                        Op::Linear {
                            inputs: 16,
                            outputs: 3,
                            bias: true,
                        },
                        Identity,
                    ),
                ],
                loss,
            },
        ),
        (
            "share-conv2d-kron+conv2d-stride2",
            NetSpec {
                input: FeatureShape(vec![2, 6, 6]),
                layers: vec![
                    layer(
                        Op::ShareConv {
                            geom: ConvGeom::d2(2, 3, 3, 1, 1),
                            sharing: ConvSharing::Kronecker {
                                ka: 3,
                                kb: 2,
                                kc: 4,
                            },
                            bias: true,
                        },
                        Relu,
                    ),
                    layer(
                        Op::Conv {
                            geom: ConvGeom::d2(3, 2, 3, 2, 1),
                            bias: true,
                        },
                        Relu,
                    ),
                    layer(Op::Flatten, Identity),
                    layer(
                        Op::Linear {
                            inputs: 18,
                            outputs: 3,
                            bias: false,
                        },
                        Identity,
                    ),
                ],
                loss,
            },
        ),
        (
            "mlp-tanh-gelu",
            NetSpec {
                input: FeatureShape(vec![5]),
                layers: vec![
                    layer(
                        Op::ShareLinear {
                            inputs: 5,
                            outputs: 6,
                            k: 4,
                            bias: true,
                        },
                        Tanh,
                    ),
                    layer(
                        Op::Linear {
                            inputs: 6,
                            outputs: 4,
                            bias: true,
                        },
                        Gelu,
                    ),
                    layer(
                        Op::ShareLinear {
                            inputs: 4,
                            outputs: 3,
                            k: 3,
                            bias: true,
                        },
                        Identity,
                    ),
                ],
                loss,
            },
        ),
        (
            "conv1d-stride2+locally-connected",
            NetSpec {
                input: FeatureShape(vec![1, 11]),
                layers: vec![
                    layer(
                        Op::Conv {
                            geom: ConvGeom {
                                in_channels: 1,
                                out_channels: 2,
                                kernel: vec![3],
                                stride: vec![2],
                                padding: vec![1],
                            },
                            bias: true,
                        },
                        Relu,
                    ),
                    layer(
                        Op::LocallyConnected1d {
                            geom: ConvGeom::d1(2, 2, 3, 0),
                            bias: true,
                        },
                        Relu,
                    ),
                    layer(Op::Flatten, Identity),
                    layer(
                        Op::ShareLinear {
                            inputs: 8,
                            outputs: 3,
                            k: 4,
                            bias: true,
                        },
                        Identity,
                    ),
                ],
                loss,
            },
        ),
    ]
}

/// Host parameters as stored layer records (f32).
pub fn layer_records(host: &HostParams, net: &Net) -> Vec<crate::format::LayerRecord> {
    let mut it = host
        .0
        .iter()
        .map(|(v, _)| v.iter().map(|&x| x as f32).collect::<Vec<f32>>());
    net.shapes()
        .params
        .iter()
        .map(|l| crate::format::LayerRecord {
            shared: l.shared.iter().map(|_| it.next().unwrap()).collect(),
            adapted0: l.adapted.iter().map(|_| it.next().unwrap()).collect(),
            lr: it.next().unwrap()[0],
        })
        .collect()
}
