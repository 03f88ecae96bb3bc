//! Human-readable views of a model: a layer table, the band-energy figure, and a picture
//! of each learned sharing pattern.

use crate::train::TrainError;
use std::fmt::Write as _;
use std::path::Path;

use msr_runtime::{ModelRecord, Op};

/// A table of the model's layers, shapes and parameter counts.
pub fn describe(record: &ModelRecord, file_bytes: usize) -> String {
    let mut s = String::new();
    let info = &record.info;
    let _ = writeln!(
        s,
        "model '{}' (family {}, {} inner step(s), trainer {}), {} bytes",
        info.name, info.task_family, info.inner_steps, info.trainer_version, file_bytes
    );
    let _ = writeln!(
        s,
        "loss {:?}, input {:?}",
        record.net.loss, record.net.input.0
    );
    let shapes = match record.net.shapes() {
        Ok(shapes) => shapes,
        Err(e) => {
            let _ = writeln!(s, "inconsistent shapes: {e}");
            return s;
        }
    };
    let (mut frozen, mut adapted) = (0usize, 0usize);
    for (i, (layer, rec)) in record.net.layers.iter().zip(&record.layers).enumerate() {
        let layout = &shapes.params[i];
        let f: usize = layout.shared.iter().map(|[r, c]| r * c).sum();
        let a: usize = layout.adapted.iter().sum();
        frozen += f;
        adapted += a;
        let _ = writeln!(
            s,
            "  {i}: {:<20} {:?} -> {:?}  {:?}  frozen {:?} ({f}), adapted {:?} ({a}), lr {:.4}",
            layer.op.kind_name(),
            shapes.activations[i].0,
            shapes.activations[i + 1].0,
            layer.activation,
            layout.shared,
            layout.adapted,
            rec.lr
        );
    }
    let _ = writeln!(s, "frozen parameters {frozen}, adapted per task {adapted}");
    let _ = writeln!(s, "adapts by {}", adaptation(record));
    let _ = writeln!(s, "{}", call_costs(record));
    if let Some(n) = &record.ext.normalizer {
        let _ = writeln!(
            s,
            "standardises {}",
            match (&n.input, &n.output) {
                (Some(_), Some(_)) => "inputs and targets",
                (Some(_), None) => "inputs",
                (None, Some(_)) => "targets",
                (None, None) => "nothing",
            }
        );
    }
    for e in &record.ext.unknown {
        let _ = writeln!(
            s,
            "extension record '{}' ({} bytes, {})",
            e.name,
            e.body.len(),
            if e.required { "required" } else { "optional" }
        );
    }
    // Only where a valid convolution is what the tasks share (the paper's 1-D families):
    // for another model the band is no structure of its tasks.
    let convolution_family = matches!(
        record.info.task_family.as_str(),
        "rank1" | "rank2" | "rank5"
    );
    if let Some(band) = band_energy(record).filter(|_| convolution_family) {
        let _ = writeln!(
            s,
            "energy of W = reshape(U v), v ~ N(0, I), on the valid-convolution band: {:.2}% (a random U: {:.2}%)",
            band * 100.0,
            random_band_fraction(record).unwrap_or(f64::NAN) * 100.0
        );
    }
    s
}

/// The bound of each call of the model's default real-time session (docs/model-format.md,
/// "The per-call bound"), or why the engine refuses the model.
fn call_costs(record: &ModelRecord) -> String {
    use msr_runtime::realtime::{DEFAULT_CAPACITY, RtModel, Session};
    let session = RtModel::new(record).and_then(|m| Session::new(m, DEFAULT_CAPACITY));
    match session {
        Ok(s) => {
            let c = s.costs();
            let mut line = format!(
                "work per call (multiply-adds, at most; limit 2^34 per example and fixed): predict 1 example {}, adapt on 20 examples {}",
                c.predict.at(1),
                s.adapt_cost_at(20)
            );
            if let Some(o) = c.observe {
                line += &format!(", observe 1 example {}", o.at(1));
            }
            line
        }
        Err(e) => format!("refused by the real-time engine: {e}"),
    }
}

/// How the model's sessions adapt by default, from its records.
fn adaptation(record: &ModelRecord) -> String {
    let steps = record.info.inner_steps;
    match (&record.ext.solver, &record.ext.refine) {
        (Some(sv), _) => format!(
            "{steps} damped Gauss-Newton step(s), meta-learned dampings {:?}",
            sv.log_damping.iter().map(|d| d.exp()).collect::<Vec<_>>()
        ),
        (None, Some(r)) => format!(
            "{steps} SGD step(s), then {} damped Gauss-Newton step(s) at damping {} (refine record)",
            r.steps, r.damping
        ),
        (None, None) => format!("{steps} SGD step(s), meta-learned learning rates"),
    }
}

fn first_share_linear(record: &ModelRecord) -> Option<(usize, usize, usize, &Vec<f32>)> {
    record
        .net
        .layers
        .iter()
        .zip(&record.layers)
        .find_map(|(l, rec)| match l.op {
            Op::ShareLinear {
                inputs, outputs, k, ..
            } if inputs >= outputs => Some((inputs, outputs, k, &rec.shared[0])),
            _ => None,
        })
}

/// For the first share-linear layer (in >= out): the expected fraction of ||W||^2 that lies
/// on the band `0 <= i - o <= in - out` (where a valid convolution's taps lie), for
/// v ~ N(0, I). Exact: E||W_band||^2 / E||W||^2 = ||U_band rows||^2 / ||U||^2.
pub fn band_energy(record: &ModelRecord) -> Option<f64> {
    let (inputs, outputs, k, u) = first_share_linear(record)?;
    let (mut band, mut total) = (0.0f64, 0.0f64);
    for o in 0..outputs {
        for i in 0..inputs {
            let row = &u[(o * inputs + i) * k..(o * inputs + i + 1) * k];
            let e: f64 = row.iter().map(|&x| (x as f64).powi(2)).sum();
            total += e;
            if i >= o && i - o <= inputs - outputs {
                band += e;
            }
        }
    }
    (total > 0.0).then_some(band / total)
}

/// The band fraction an unstructured U would have: band entries / all entries.
pub fn random_band_fraction(record: &ModelRecord) -> Option<f64> {
    let (inputs, outputs, _, _) = first_share_linear(record)?;
    Some((outputs * (inputs - outputs + 1)) as f64 / (outputs * inputs) as f64)
}

/// Draws W_j = reshape(U e_j) for every basis vector e_j of every dense-U layer, side by
/// side (one row of tiles per layer); red positive, blue negative, white zero.
pub fn write_png(record: &ModelRecord, path: &Path) -> Result<(), TrainError> {
    let mut tiles: Vec<Vec<(usize, usize, Vec<f32>)>> = Vec::new();
    for (layer, rec) in record.net.layers.iter().zip(&record.layers) {
        let (rows, cols, k) = match &layer.op {
            Op::ShareLinear {
                inputs, outputs, k, ..
            } => (*outputs, *inputs, *k),
            Op::ShareConv {
                geom,
                sharing: msr_runtime::ConvSharing::Dense { k },
                ..
            } => (geom.out_channels, geom.in_channels * geom.kernel_area(), *k),
            _ => continue,
        };
        let u = &rec.shared[0];
        let row = (0..k)
            .map(|j| (rows, cols, (0..rows * cols).map(|r| u[r * k + j]).collect()))
            .collect();
        tiles.push(row);
    }
    if tiles.is_empty() {
        return Err(TrainError::Config(
            "the model has no dense symmetry matrix to draw".into(),
        ));
    }
    let scale = 4usize;
    let gap = 6usize;
    let width = tiles
        .iter()
        .map(|r| r.iter().map(|(_, c, _)| c * scale + gap).sum::<usize>() + gap)
        .max()
        .unwrap_or(1);
    let height: usize = tiles
        .iter()
        .map(|r| r.iter().map(|(h, _, _)| h * scale).max().unwrap_or(0) + gap)
        .sum::<usize>()
        + gap;
    let mut img = vec![255u8; width * height * 3];
    let mut y0 = gap;
    for row in &tiles {
        let mut x0 = gap;
        for (h, w, vals) in row {
            let max = vals.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            for r in 0..h * scale {
                for c in 0..w * scale {
                    let v = vals[(r / scale) * w + c / scale] / max;
                    let (red, green, blue) = if v >= 0.0 {
                        (255.0, 255.0 * (1.0 - v), 255.0 * (1.0 - v))
                    } else {
                        (255.0 * (1.0 + v), 255.0 * (1.0 + v), 255.0)
                    };
                    let at = ((y0 + r) * width + x0 + c) * 3;
                    img[at] = red as u8;
                    img[at + 1] = green as u8;
                    img[at + 2] = blue as u8;
                }
            }
            x0 += w * scale + gap;
        }
        y0 += row.iter().map(|(h, _, _)| h * scale).max().unwrap_or(0) + gap;
    }
    save_png(path, width, height, png::ColorType::Rgb, &img)
}

/// A contact sheet of a glyph data set: one row per character (`rows` characters drawn
/// from every `split`'s alphabets in turn), `cols` instances, then `cols` augmented
/// instances (Algorithm 2's query augmentation) after a gap. Ink is dark on white.
pub fn write_glyph_sheet(
    glyphs: &crate::tasks::glyphs::Glyphs,
    alphabet: Option<&str>,
    rows: usize,
    cols: usize,
    path: &Path,
) -> Result<(), TrainError> {
    use crate::tasks::glyphs::{Augment, SIDE, Split};
    let gap = 4;
    let width = 2 * cols * SIDE + gap;
    let only = match alphabet {
        Some(name) => Some(
            glyphs
                .alphabets
                .iter()
                .position(|a| a.name == name)
                .ok_or_else(|| TrainError::Config(format!("no alphabet named '{name}'")))?,
        ),
        None => None,
    };
    let classes: Vec<(usize, usize)> = match only {
        Some(a) => (0..glyphs.alphabets[a].chars.len().min(rows))
            .map(|c| (a, c))
            .collect(),
        None => [Split::Train, Split::Val, Split::Test]
            .iter()
            .flat_map(|&s| {
                let c = glyphs.classes(s);
                let step = (c.len() / rows.div_ceil(3)).max(1);
                c.iter()
                    .step_by(step)
                    .take(rows.div_ceil(3))
                    .copied()
                    .collect::<Vec<_>>()
            })
            .take(rows)
            .collect(),
    };
    let rows = classes.len();
    let height = rows * SIDE;
    let mut img = vec![255u8; width * height];
    let mut rng = crate::rng::Rng::new(7);
    let mut tile = vec![0.0f32; SIDE * SIDE];
    for (r, &(alphabet, ch)) in classes.iter().enumerate() {
        for c in 0..2 * cols {
            let aug = if c < cols {
                Augment::NONE
            } else {
                Augment::random(&mut rng)
            };
            glyphs.render(alphabet, ch, c % cols, aug, &mut tile);
            let x0 = c * SIDE + if c < cols { 0 } else { gap };
            for y in 0..SIDE {
                for x in 0..SIDE {
                    img[(r * SIDE + y) * width + x0 + x] =
                        (255.0 * (1.0 - tile[y * SIDE + x])).round() as u8;
                }
            }
        }
    }
    save_png(path, width, height, png::ColorType::Grayscale, &img)
}

/// Writes 8-bit `pixels` (`width * height` of `color`) as a PNG file.
fn save_png(
    path: &Path,
    width: usize,
    height: usize,
    color: png::ColorType,
    pixels: &[u8],
) -> Result<(), TrainError> {
    let file = std::fs::File::create(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .and_then(|mut w| w.write_image_data(pixels))
        .map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ModelKind, init};
    use msr_runtime::format::{ModelInfo, Refine, Solver};
    use msr_runtime::{Activation, FeatureShape, LayerSpec, Loss, NetSpec};

    fn record() -> ModelRecord {
        let net = NetSpec {
            input: FeatureShape(vec![3]),
            layers: vec![LayerSpec {
                op: Op::ShareLinear {
                    inputs: 3,
                    outputs: 2,
                    k: 2,
                    bias: true,
                },
                activation: Activation::Identity,
            }],
            loss: Loss::Mse,
        };
        let layers = init(&net, ModelKind::MsrFc, 0.01, &mut crate::rng::Rng::new(1)).unwrap();
        ModelRecord {
            info: ModelInfo {
                name: "m".into(),
                task_family: "rank1".into(),
                inner_steps: 3,
                trainer_version: "test".into(),
            },
            net,
            layers,
            ext: Default::default(),
        }
    }

    #[test]
    fn the_description_says_how_the_model_adapts() {
        let mut rec = record();
        assert!(describe(&rec, 1).contains("adapts by 3 SGD step(s)"));
        let d = describe(&rec, 1);
        assert!(
            d.contains("predict 1 example ") && d.contains("adapt on 20 examples "),
            "{d}"
        );
        assert!(!d.contains("observe"), "{d}");
        assert!(
            d.contains("valid-convolution band"),
            "rank1 shares a convolution: {d}"
        );
        rec.info.task_family = "npz:flights.npz".into();
        let d = describe(&rec, 1);
        assert!(
            !d.contains("band"),
            "no band for a fully connected model of logs: {d}"
        );
        rec.info.task_family = "rank1".into();
        rec.ext.refine = Some(Refine {
            steps: 1,
            damping: 10.0,
        });
        let d = describe(&rec, 1);
        assert!(
            d.contains("3 SGD step(s), then 1 damped Gauss-Newton step(s) at damping 10"),
            "{d}"
        );
        rec.ext.refine = None;
        rec.ext.solver = Some(Solver {
            log_damping: vec![0.0],
        });
        assert!(describe(&rec, 1).contains("Gauss-Newton step(s), meta-learned dampings [1.0]"));
    }
}
