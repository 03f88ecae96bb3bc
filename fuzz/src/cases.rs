//! Deterministic generators of hostile inputs: model records with random architectures and
//! boundary values in every integer and float field (written with a valid CRC), splices of
//! two models, byte-level mutations of real and generated model files, saved-state
//! mutations, and the arguments of each call.

use msr_runtime::ModelRecord;
use msr_runtime::format::{
    Extension, Extensions, LayerRecord, ModelInfo, Normalizer, Refine, Solver, Standardize,
};
use msr_runtime::spec::{
    Activation, ConvGeom, ConvSharing, FeatureShape, LayerSpec, Loss, NetSpec, Op,
};

/// SplitMix64, seeded per case: `(seed, index)` names a case for ever.
pub struct Rng(u64, f64);

impl Rng {
    /// The generator of case `index` of the run with `seed`.
    pub fn for_case(seed: u64, index: u64) -> Self {
        let mut r = Rng(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03), 1.0);
        r.next();
        r
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// How often sizes come from the edges (1: as drawn; 0: always small and valid).
    pub fn set_wildness(&mut self, w: f64) {
        self.1 = w;
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    /// True with probability `p` at full wildness, always when tame.
    pub fn tame(&mut self, p: f64) -> bool {
        self.chance(1.0 - (1.0 - p) * self.1)
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// Roughly standard normal (sum of uniforms; enough for data).
    pub fn normal(&mut self) -> f32 {
        (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum::<f32>()
            * 1.7
            - 3.4
    }
}

/// Sizes: mostly small and valid, then the edges of the documented limits, then values
/// that overflow any product.
pub fn dim(r: &mut Rng) -> usize {
    if !r.chance(r.1) {
        return 1 + r.below(6) as usize;
    }
    match r.below(20) {
        0..=13 => 1 + r.below(6) as usize,
        14..=16 => r.pick(&[0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 28, 32]),
        17 => r.pick(&[63, 64, 65, 127, 128, 255, 256, 1000, 4095, 4096, 4097]),
        18 => r.pick(&[
            65_535,
            65_536,
            1 << 20,
            (1 << 28) - 1,
            1 << 28,
            (1 << 28) + 1,
        ]),
        _ => r.pick(&[
            (1 << 31) - 1,
            1 << 31,
            1 << 32,
            (1 << 32) + 1,
            1 << 62,
            1 << 63,
            (1 << 63) + 64,
            usize::MAX / 2,
            usize::MAX - 1,
            usize::MAX,
        ]),
    }
}

/// Floats: mostly ordinary, sometimes every IEEE edge.
pub fn float(r: &mut Rng, special: f64) -> f32 {
    if r.chance(special) {
        r.pick(&[
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            3e38,
            -3e38,
            1e30,
            -1e30,
            1e19,
            f32::MIN_POSITIVE,
            1e-40,
            -0.0,
            0.0,
        ])
    } else {
        r.normal() * 0.5
    }
}

fn geom(r: &mut Rng, in_channels: usize, spatial: &[usize]) -> ConvGeom {
    let dims = if !r.tame(0.95) {
        r.pick(&[0usize, 3])
    } else if spatial.len() == 2 || spatial.len() == 1 {
        spatial.len()
    } else {
        1 + r.below(2) as usize
    };
    let mut g = ConvGeom {
        in_channels: if r.tame(0.9) { in_channels } else { dim(r) },
        out_channels: dim(r).min(if r.chance(0.9) { 8 } else { usize::MAX }),
        kernel: vec![],
        stride: vec![],
        padding: vec![],
    };
    for d in 0..dims {
        let n = spatial.get(d).copied().unwrap_or(4);
        let k = if r.chance(0.85) {
            1 + r.below(n.clamp(1, 5) as u64) as usize
        } else {
            dim(r)
        };
        g.kernel.push(k);
        g.stride.push(if r.chance(0.85) {
            1 + r.below(2) as usize
        } else {
            dim(r)
        });
        g.padding.push(if r.chance(0.85) {
            r.below(k as u64) as usize
        } else {
            dim(r)
        });
    }
    if !r.tame(0.95) {
        g.padding.pop();
    }
    g
}

/// A random architecture, usually consistent from layer to layer.
pub fn net(r: &mut Rng) -> NetSpec {
    let rank = if !r.tame(0.95) {
        r.pick(&[0usize, 4])
    } else {
        1 + r.below(3) as usize
    };
    let mut shape: Vec<usize> = (0..rank)
        .map(|i| {
            if i == 0 {
                dim(r).min(if r.chance(0.9) { 4 } else { usize::MAX })
            } else {
                dim(r) + 3
            }
        })
        .collect();
    let input = shape.clone();
    let layers = if !r.tame(0.98) {
        r.pick(&[0usize, 257, 300])
    } else {
        1 + r.below(4) as usize
    };
    let mut out = Vec::with_capacity(layers.min(300));
    for _ in 0..layers {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        let spatial: Vec<usize> = shape.iter().skip(1).copied().collect();
        let channels = shape.first().copied().unwrap_or(1);
        let inputs = if r.tame(0.9) { numel } else { dim(r) };
        let bias = r.chance(0.6);
        // An op that fits the current shape, or (when wild) any op.
        let kind = if !r.tame(0.8) {
            r.below(7)
        } else {
            match spatial.len() {
                0 => r.pick(&[0, 1, 2]),
                1 => r.pick(&[0, 2, 3, 3, 4, 5, 6]),
                _ => r.pick(&[3, 3, 4, 6]),
            }
        };
        let op = match kind {
            0 | 1 => Op::ShareLinear {
                inputs,
                outputs: dim(r).min(if r.chance(0.9) { 16 } else { usize::MAX }),
                k: dim(r),
                bias,
            },
            2 => Op::Linear {
                inputs,
                outputs: dim(r).min(if r.chance(0.9) { 16 } else { usize::MAX }),
                bias,
            },
            3 => Op::ShareConv {
                geom: geom(r, channels, &spatial),
                sharing: if r.chance(0.5) {
                    ConvSharing::Dense { k: dim(r) }
                } else {
                    ConvSharing::Kronecker {
                        ka: dim(r),
                        kb: dim(r),
                        kc: dim(r),
                    }
                },
                bias,
            },
            4 => Op::Conv {
                geom: geom(r, channels, &spatial),
                bias,
            },
            5 => Op::LocallyConnected1d {
                geom: geom(r, channels, &spatial),
                bias,
            },
            _ => Op::Flatten,
        };
        let activation = r.pick(&[
            Activation::Relu,
            Activation::Relu,
            Activation::Identity,
            Activation::Identity,
            Activation::Tanh,
            Activation::Gelu,
        ]);
        if let Ok(next) = op.output_shape(&FeatureShape(shape.clone())) {
            shape = next.0;
        }
        out.push(LayerSpec { op, activation });
    }
    NetSpec {
        input: FeatureShape(input),
        layers: out,
        loss: if r.chance(0.3) {
            Loss::CrossEntropy
        } else {
            Loss::Mse
        },
    }
}

/// Parameters for `net`: the right lengths when the architecture is valid and small, with
/// special floats at rate `special`; otherwise short vectors of random lengths.
pub fn record(r: &mut Rng, net: NetSpec, special: f64) -> ModelRecord {
    let layers = match net.shapes() {
        Ok(shapes)
            if shapes.params.iter().all(|p| {
                p.shared.iter().map(|[a, b]| a * b).sum::<usize>() + p.adapted.iter().sum::<usize>()
                    <= 1 << 16
            }) && r.chance(0.95) =>
        {
            shapes
                .params
                .iter()
                .map(|p| LayerRecord {
                    shared: p
                        .shared
                        .iter()
                        .map(|[a, b]| (0..a * b).map(|_| float(r, special)).collect())
                        .collect(),
                    adapted0: p
                        .adapted
                        .iter()
                        .map(|&n| (0..n).map(|_| float(r, special)).collect())
                        .collect(),
                    lr: if r.chance(0.9) {
                        0.05 + 0.2 * r.normal().abs()
                    } else {
                        float(r, 0.5) * 1e3
                    },
                })
                .collect()
        }
        _ => (0..net.layers.len().min(8) + r.below(2) as usize)
            .map(|_| LayerRecord {
                shared: (0..r.below(3))
                    .map(|_| (0..r.below(64)).map(|_| float(r, special)).collect())
                    .collect(),
                adapted0: (0..r.below(3))
                    .map(|_| (0..r.below(64)).map(|_| float(r, special)).collect())
                    .collect(),
                lr: float(r, 0.3),
            })
            .collect(),
    };
    let ext = extensions(r, &net, special);
    ModelRecord {
        info: ModelInfo {
            name: "fuzz".into(),
            task_family: "fuzz".into(),
            inner_steps: if r.chance(0.9) {
                r.below(4) as u32
            } else {
                r.pick(&[1000, 1001, 65_535, 1 << 31, u32::MAX])
            },
            trainer_version: "fuzz".into(),
        },
        net,
        layers,
        ext,
    }
}

/// Extension records: sometimes standardisation statistics (usually of the right lengths,
/// with special floats and non-positive scales at rate `special`), rarely a record from the
/// future (required or optional).
fn extensions(r: &mut Rng, net: &NetSpec, special: f64) -> Extensions {
    let mut ext = Extensions::default();
    if r.chance(0.3) {
        let lens = net.shapes().ok().map(|s| {
            (
                s.activations[0].numel(),
                s.activations.last().expect("non-empty").numel(),
            )
        });
        let (fi, fo) = lens.unwrap_or((r.below(8) as usize, r.below(8) as usize));
        let stats = |r: &mut Rng, n: usize| {
            let n = if r.chance(0.95) {
                n
            } else {
                r.below(8) as usize
            };
            Standardize {
                mean: (0..n).map(|_| float(r, special)).collect(),
                scale: (0..n)
                    .map(|_| {
                        if r.chance(special) {
                            r.pick(&[0.0, -1.0, f32::NAN, f32::INFINITY, 1e-38])
                        } else {
                            0.1 + 10.0 * (r.next() >> 40) as f32 / (1u64 << 24) as f32
                        }
                    })
                    .collect(),
            }
        };
        let input = r.chance(0.9).then(|| stats(r, fi.min(1 << 16)));
        let output = r.chance(0.8).then(|| stats(r, fo.min(1 << 16)));
        ext.normalizer = Some(Normalizer { input, output });
    }
    if r.chance(0.08) {
        // Gauss-Newton alone: one log-damping per layer, usually in range.
        ext.solver = Some(Solver {
            log_damping: (0..net.layers.len().max(1))
                .map(|_| {
                    if r.chance(0.9) {
                        r.normal() * 2.0
                    } else {
                        float(r, 0.5) * 100.0
                    }
                })
                .collect(),
        });
    }
    if r.chance(0.1) {
        // SGD then Gauss-Newton: usually valid, sometimes steps or dampings out of range
        // (the loss may be cross-entropy: refused).
        ext.refine = Some(Refine {
            steps: if r.chance(0.8) {
                1 + r.below(3) as u32
            } else {
                r.pick(&[0, 17, u32::MAX])
            },
            damping: if r.chance(0.8) {
                0.1 + 10.0 * (r.next() >> 40) as f32 / (1u64 << 24) as f32
            } else {
                float(r, 1.0)
            },
        });
    }
    if r.chance(0.05) {
        ext.unknown.push(Extension {
            name: r.pick(&["solver", "refine", "normalize2", ""]).into(),
            required: r.chance(0.5),
            body: (0..r.below(16))
                .map(|_| r.below(256) as u8)
                .collect::<Vec<u8>>(),
        });
    }
    ext
}

/// Architectures the trainer writes: rank1 MSR-FC and a small glyph MSR-Conv classifier.
pub fn real_like(r: &mut Rng) -> ModelRecord {
    let net = if r.chance(0.5) {
        NetSpec {
            input: FeatureShape(vec![70]),
            layers: vec![LayerSpec {
                op: Op::ShareLinear {
                    inputs: 70,
                    outputs: 68,
                    k: 3,
                    bias: r.chance(0.5),
                },
                activation: Activation::Identity,
            }],
            loss: Loss::Mse,
        }
    } else {
        let c = 1 + r.below(4) as usize;
        NetSpec {
            input: FeatureShape(vec![1, 28, 28]),
            layers: vec![
                LayerSpec {
                    op: Op::ShareConv {
                        geom: ConvGeom::d2(1, c, 3, 2, 1),
                        sharing: ConvSharing::Kronecker {
                            ka: c,
                            kb: 1,
                            kc: 9,
                        },
                        bias: true,
                    },
                    activation: Activation::Relu,
                },
                LayerSpec {
                    op: Op::ShareConv {
                        geom: ConvGeom::d2(c, c, 3, 2, 1),
                        sharing: ConvSharing::Dense { k: 4 },
                        bias: true,
                    },
                    activation: Activation::Relu,
                },
                LayerSpec {
                    op: Op::Flatten,
                    activation: Activation::Identity,
                },
                LayerSpec {
                    op: Op::Linear {
                        inputs: c * 49,
                        outputs: 5,
                        bias: true,
                    },
                    activation: Activation::Identity,
                },
            ],
            loss: Loss::CrossEntropy,
        }
    };
    let special = if r.chance(0.8) { 0.0 } else { 0.001 };
    record(r, net, special)
}

/// Model files made from real trainer models by the fuzzing that found the reliability
/// issues: mutation seeds.
const SEEDS: &[&[u8]] = &[
    include_bytes!("../../tests/reliability/state_nonfinite_273.msr"),
    include_bytes!("../../tests/reliability/slow_predict_conv_pad65535.msr"),
    include_bytes!("../../tests/reliability/load_internal_capacity_overflow.msr"),
    include_bytes!("../../tests/reliability/session_new_alloc_abort_2318.msr"),
    include_bytes!("../../tests/reliability/conv2d_pad_wrap_flatten.msr"),
];

/// Rewrites the header's body length and the CRC trailer, so the parser behind the
/// checksum sees the damage. (The CRC is the library's own `frame::seal`, tested against
/// the IEEE check value in msr-core.)
pub fn fix_crc(bytes: &mut [u8]) {
    if bytes.len() < 16 {
        return;
    }
    let body = (bytes.len() - 16) as u32;
    bytes[8..12].copy_from_slice(&body.to_le_bytes());
    msr_runtime::frame::seal(bytes);
}

/// Byte-level damage: flips, boundary bytes, varint-shaped runs, insertions, deletions,
/// duplicated chunks.
pub fn mutate(r: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + r.below(6) {
        if bytes.is_empty() {
            bytes.push(0);
        }
        let at = r.below(bytes.len() as u64) as usize;
        match r.below(7) {
            0 => bytes[at] ^= 1 << r.below(8),
            1 => bytes[at] = r.pick(&[0, 1, 0x7F, 0x80, 0xFE, 0xFF]),
            2 => {
                // A long varint: postcard lengths and sizes become huge.
                let run = 1 + r.below(10) as usize;
                for i in 0..run {
                    if at + i < bytes.len() {
                        bytes[at + i] = if i + 1 == run { 0x01 } else { 0xFF };
                    }
                }
            }
            3 => {
                let n = 1 + r.below(8) as usize;
                for _ in 0..n {
                    bytes.insert(at, r.next() as u8);
                }
            }
            4 => {
                let n = (1 + r.below(8) as usize).min(bytes.len() - at);
                bytes.drain(at..at + n);
            }
            5 => {
                let n = (1 + r.below(32) as usize).min(bytes.len() - at);
                let chunk: Vec<u8> = bytes[at..at + n].to_vec();
                let to = r.below(bytes.len() as u64) as usize;
                bytes.splice(to..to, chunk);
            }
            _ => {
                // A float field set to an IEEE edge.
                if at + 4 <= bytes.len() {
                    let f = float(r, 1.0);
                    bytes[at..at + 4].copy_from_slice(&f.to_le_bytes());
                }
            }
        }
    }
}

/// Wide element-wise layers (a flatten with an activation, thousands of outputs) around a
/// few adapted parameters, usually with a `solver` or `refine` record: where Gauss-Newton's
/// Jacobian rows cost the square of the width (a 57-byte file of this shape took 18-29 s).
pub fn wide(r: &mut Rng) -> ModelRecord {
    let width = r.pick(&[1024usize, 4096, 16_384, 46_341, 65_536]);
    let act = |r: &mut Rng| {
        r.pick(&[
            Activation::Gelu,
            Activation::Tanh,
            Activation::Relu,
            Activation::Identity,
        ])
    };
    let flatten = |r: &mut Rng| LayerSpec {
        op: Op::Flatten,
        activation: act(r),
    };
    let small = 1 + r.below(4) as usize;
    let (input, layers) = match r.below(4) {
        // No parameters at all.
        0 => (width, vec![flatten(r)]),
        // A few adapted parameters after the wide layer.
        1 => (
            width,
            vec![
                flatten(r),
                LayerSpec {
                    op: Op::ShareLinear {
                        inputs: width,
                        outputs: small,
                        k: 1 + r.below(3) as usize,
                        bias: r.chance(0.5),
                    },
                    activation: act(r),
                },
            ],
        ),
        // A few adapted parameters, then a wide output (many Jacobian rows).
        _ => (
            small,
            vec![
                LayerSpec {
                    op: Op::ShareLinear {
                        inputs: small,
                        outputs: small,
                        k: 1 + r.below(3) as usize,
                        bias: r.chance(0.5),
                    },
                    activation: act(r),
                },
                LayerSpec {
                    op: Op::Linear {
                        inputs: small,
                        outputs: width,
                        bias: false,
                    },
                    activation: act(r),
                },
                flatten(r),
            ],
        ),
    };
    let net = NetSpec {
        input: FeatureShape(vec![input]),
        layers,
        loss: Loss::Mse,
    };
    let mut rec = record(r, net.clone(), 0.0);
    // Parameters of the right lengths (record's cap on a layer's size would garble the wide
    // dense layer's).
    if let Ok(shapes) = net.shapes() {
        rec.layers = shapes
            .params
            .iter()
            .map(|p| LayerRecord {
                shared: p
                    .shared
                    .iter()
                    .map(|[a, b]| (0..a * b).map(|_| r.normal() * 0.3).collect())
                    .collect(),
                adapted0: p
                    .adapted
                    .iter()
                    .map(|&n| (0..n).map(|_| r.normal() * 0.3).collect())
                    .collect(),
                lr: 0.1,
            })
            .collect();
    }
    // The wide dense layer is frozen (learning rate 0: Gauss-Newton does not move it) or
    // adapts.
    if rec.layers.len() == 3 && r.chance(0.7) {
        rec.layers[1].lr = 0.0;
    }
    match r.below(3) {
        0 => {
            rec.ext.solver = Some(Solver {
                log_damping: vec![0.0; rec.net.layers.len()],
            })
        }
        1 => {
            rec.ext.refine = Some(Refine {
                steps: 1 + r.below(2) as u32,
                damping: 1.0,
            })
        }
        _ => {}
    }
    if r.chance(0.3) {
        rec.info.inner_steps = r.pick(&[1, 10, 100, 1000]);
    }
    rec
}

/// The model file of one case.
pub fn model_bytes(r: &mut Rng) -> Vec<u8> {
    if r.chance(0.03) {
        return wide(r).to_bytes();
    }
    match r.below(10) {
        // Structured: random architecture, boundary values, valid CRC.
        0..=3 => {
            let wild = r.pick(&[0.0, 0.02, 0.1, 1.0]);
            r.set_wildness(wild);
            let net = net(r);
            r.set_wildness(1.0);
            let special = r.pick(&[0.0, 0.0, 0.001, 0.05]);
            record(r, net, special).to_bytes()
        }
        // The trainer's architectures with edge values in the parameters.
        4 => real_like(r).to_bytes(),
        // A splice of two models' bodies.
        5 => {
            let a = if r.chance(0.5) {
                real_like(r).to_bytes()
            } else {
                let n = net(r);
                record(r, n, 0.0).to_bytes()
            };
            let b = if r.chance(0.5) {
                real_like(r).to_bytes()
            } else {
                r.pick(SEEDS).to_vec()
            };
            let cut_a = 12 + r.below((a.len() - 16) as u64 + 1) as usize;
            let cut_b = 12 + r.below((b.len().saturating_sub(16)) as u64 + 1) as usize;
            let mut out = a[..cut_a].to_vec();
            out.extend_from_slice(&b[cut_b.min(b.len())..]);
            fix_crc(&mut out);
            out
        }
        // Byte mutations of real and generated files, the CRC fixed most of the time.
        _ => {
            let mut bytes = match r.below(3) {
                0 => r.pick(SEEDS).to_vec(),
                1 => real_like(r).to_bytes(),
                _ => {
                    let n = net(r);
                    record(r, n, 0.0).to_bytes()
                }
            };
            mutate(r, &mut bytes);
            if r.chance(0.9) {
                fix_crc(&mut bytes);
            }
            bytes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tame architectures are mostly valid (so the fuzzer reaches adapt and predict), and
    /// the generator is deterministic.
    #[test]
    fn tame_architectures_are_mostly_valid_and_cases_repeat() {
        let mut valid = 0;
        let mut errors = std::collections::BTreeMap::<String, usize>::new();
        for i in 0..1000 {
            let mut r = Rng::for_case(7, i);
            r.set_wildness(0.0);
            match net(&mut r).shapes() {
                Ok(_) => valid += 1,
                Err(e) => {
                    let key: String = e.to_string().chars().take(40).collect();
                    *errors.entry(key).or_default() += 1;
                }
            }
        }
        assert!(valid > 500, "{valid} of 1000 valid; errors: {errors:#?}");
        let a = model_bytes(&mut Rng::for_case(3, 99));
        let b = model_bytes(&mut Rng::for_case(3, 99));
        assert_eq!(a, b);
    }
}
