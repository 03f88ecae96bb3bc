//! A user's own task set from a `.npz` file (numpy's `savez`), so a robot team can
//! meta-train on its logs.
//!
//! Arrays: `x` `[tasks, examples, ...]` and `y` `[tasks, examples, ...]` (float32 or
//! float64), and optionally `test` `[tasks]` (bool or integer; nonzero marks a test task).
//! Without `test`, the last 20% of tasks are the test tasks, as in the paper.

use std::path::Path;

/// A task set read from a file.
#[derive(Clone, Debug)]
pub struct NpzTasks {
    /// Inputs `[tasks, examples, input_len]`, row-major.
    pub x: Vec<f32>,
    /// Targets `[tasks, examples, output_len]`, row-major.
    pub y: Vec<f32>,
    /// Number of tasks.
    pub tasks: usize,
    /// Examples per task.
    pub examples: usize,
    /// Shape of one input example.
    pub x_shape: Vec<usize>,
    /// Shape of one target example.
    pub y_shape: Vec<usize>,
    /// Indices of the training tasks.
    pub train: Vec<usize>,
    /// Indices of the test tasks.
    pub test: Vec<usize>,
}

fn floats(
    archive: &mut npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>,
    name: &str,
    path: &Path,
) -> Result<(Vec<usize>, Vec<f32>), String> {
    let file = archive
        .by_name(name)
        .map_err(|e| format!("{}: reading array '{name}': {e}", path.display()))?
        .ok_or_else(|| format!("{}: no array '{name}'", path.display()))?;
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let type_str = file.dtype().descr().trim_matches('\'').to_string();
    let values: Vec<f32> = if type_str.ends_with("f4") {
        file.into_vec::<f32>()
            .map_err(|e| format!("{}: array '{name}': {e}", path.display()))?
    } else if type_str.ends_with("f8") {
        file.into_vec::<f64>()
            .map_err(|e| format!("{}: array '{name}': {e}", path.display()))?
            .into_iter()
            .map(|v| v as f32)
            .collect()
    } else {
        return Err(format!(
            "{}: array '{name}' has dtype {type_str}; use float32 or float64",
            path.display()
        ));
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{}: array '{name}' holds a non-finite value at flat index {i}",
            path.display()
        ));
    }
    Ok((shape, values))
}

impl NpzTasks {
    /// Reads and checks a task file. Every problem is reported by name.
    pub fn open(path: &Path) -> Result<Self, String> {
        let mut archive = npyz::npz::NpzArchive::open(path)
            .map_err(|e| format!("{}: not a readable .npz file: {e}", path.display()))?;
        let names: Vec<String> = archive.array_names().map(str::to_string).collect();
        for needed in ["x", "y"] {
            if !names.iter().any(|n| n == needed) {
                return Err(format!(
                    "{}: no array '{needed}' (found: {}); expected x [tasks, examples, ...] and y [tasks, examples, ...]",
                    path.display(),
                    names.join(", ")
                ));
            }
        }
        let (xs, x) = floats(&mut archive, "x", path)?;
        let (ys, y) = floats(&mut archive, "y", path)?;
        if xs.len() < 2 || ys.len() < 2 {
            return Err(format!(
                "{}: x has shape {xs:?} and y {ys:?}; both need [tasks, examples, ...]",
                path.display()
            ));
        }
        if xs[..2] != ys[..2] {
            return Err(format!(
                "{}: x is {xs:?} but y is {ys:?}: their [tasks, examples] must match",
                path.display()
            ));
        }
        let (tasks, examples) = (xs[0], xs[1]);
        if tasks < 2 || examples < 2 {
            return Err(format!(
                "{}: {tasks} tasks of {examples} examples; need at least 2 of each",
                path.display()
            ));
        }
        let is_test: Vec<bool> = if names.iter().any(|n| n == "test") {
            let file = archive
                .by_name("test")
                .map_err(|e| format!("{}: reading 'test': {e}", path.display()))?
                .expect("listed");
            let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
            if shape != [tasks] {
                return Err(format!(
                    "{}: 'test' has shape {shape:?}; it must be [tasks] = [{tasks}]",
                    path.display()
                ));
            }
            let descr = file.dtype().descr().trim_matches('\'').to_string();
            let bad = |e: std::io::Error| format!("{}: 'test': {e}", path.display());
            let nonzero = |v: Vec<i64>| v.into_iter().map(|v| v != 0).collect::<Vec<bool>>();
            if descr.ends_with("b1") {
                file.into_vec::<bool>().map_err(bad)?
            } else if descr.ends_with("i8") {
                nonzero(file.into_vec::<i64>().map_err(bad)?)
            } else if descr.ends_with("i4") {
                let v = file.into_vec::<i32>().map_err(bad)?;
                nonzero(v.into_iter().map(i64::from).collect())
            } else if descr.ends_with("u1") {
                let v = file.into_vec::<u8>().map_err(bad)?;
                nonzero(v.into_iter().map(i64::from).collect())
            } else {
                return Err(format!(
                    "{}: 'test' has dtype {descr}; use bool, uint8, int32 or int64",
                    path.display()
                ));
            }
        } else {
            let first_test = tasks - (tasks / 5).max(1);
            (0..tasks).map(|t| t >= first_test).collect()
        };
        let test: Vec<usize> = (0..tasks).filter(|&t| is_test[t]).collect();
        let train: Vec<usize> = (0..tasks).filter(|&t| !is_test[t]).collect();
        if test.is_empty() || train.is_empty() {
            return Err(format!(
                "{}: {} train and {} test tasks; need at least one of each",
                path.display(),
                train.len(),
                test.len()
            ));
        }
        Ok(NpzTasks {
            x,
            y,
            tasks,
            examples,
            x_shape: xs[2..].to_vec(),
            y_shape: ys[2..].to_vec(),
            train,
            test,
        })
    }

    /// Scalars per input example.
    pub fn input_len(&self) -> usize {
        self.x_shape.iter().product()
    }
    /// Scalars per target example.
    pub fn output_len(&self) -> usize {
        self.y_shape.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use npyz::WriterBuilder;

    use super::*;
    use crate::tasks::Family;

    fn write(path: &Path, arrays: &[(&str, Vec<u64>, Vec<f64>, &str)]) {
        let mut npz = npyz::npz::NpzWriter::create(path).unwrap();
        for (name, shape, values, kind) in arrays {
            let opts = zip::write::FileOptions::default();
            match *kind {
                "f4" => {
                    let mut w = npz
                        .array::<f32>(name, opts)
                        .unwrap()
                        .default_dtype()
                        .shape(shape)
                        .begin_nd()
                        .unwrap();
                    w.extend(values.iter().map(|&v| v as f32)).unwrap();
                    w.finish().unwrap();
                }
                "f8" => {
                    let mut w = npz
                        .array::<f64>(name, opts)
                        .unwrap()
                        .default_dtype()
                        .shape(shape)
                        .begin_nd()
                        .unwrap();
                    w.extend(values.iter().copied()).unwrap();
                    w.finish().unwrap();
                }
                "b1" => {
                    let mut w = npz
                        .array::<bool>(name, opts)
                        .unwrap()
                        .default_dtype()
                        .shape(shape)
                        .begin_nd()
                        .unwrap();
                    w.extend(values.iter().map(|&v| v != 0.0)).unwrap();
                    w.finish().unwrap();
                }
                "i4" => {
                    let mut w = npz
                        .array::<i32>(name, opts)
                        .unwrap()
                        .default_dtype()
                        .shape(shape)
                        .begin_nd()
                        .unwrap();
                    w.extend(values.iter().map(|&v| v as i32)).unwrap();
                    w.finish().unwrap();
                }
                other => panic!("{other}"),
            }
        }
    }

    fn dir(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("msr-npz-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// 10 tasks of 6 examples: y = a_t * (x0 + x1), a per-task slope.
    fn tasks() -> (Vec<f64>, Vec<f64>) {
        let mut rng = crate::rng::Rng::new(4);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for t in 0..10 {
            let a = 0.5 + t as f64 * 0.1;
            for _ in 0..6 {
                let xi: Vec<f64> = (0..4).map(|_| rng.normal()).collect();
                y.push(a * (xi[0] + xi[1]));
                y.push(-a * xi[3]);
                x.extend(xi);
            }
        }
        (x, y)
    }

    #[test]
    fn reads_a_task_file_and_splits_train_and_test() {
        let d = dir("read");
        let (x, y) = tasks();
        let p = d.join("ok.npz");
        write(
            &p,
            &[
                ("x", vec![10, 6, 4], x.clone(), "f4"),
                ("y", vec![10, 6, 2], y.clone(), "f8"),
            ],
        );
        let t = NpzTasks::open(&p).unwrap();
        assert_eq!(
            (t.tasks, t.examples, t.input_len(), t.output_len()),
            (10, 6, 4, 2)
        );
        assert_eq!(t.test, vec![8, 9], "the last 20% are test tasks");
        assert_eq!(t.x[4 * 6 + 1] as f64, x[4 * 6 + 1] as f32 as f64);

        let mask: Vec<f64> = (0..10).map(|i| (i % 3 == 0) as u8 as f64).collect();
        let p2 = d.join("mask.npz");
        write(
            &p2,
            &[
                ("x", vec![10, 6, 4], x.clone(), "f8"),
                ("y", vec![10, 6, 2], y.clone(), "f4"),
                ("test", vec![10], mask, "i4"),
            ],
        );
        let t = NpzTasks::open(&p2).unwrap();
        assert_eq!(t.test, vec![0, 3, 6, 9]);
        assert_eq!(t.train.len(), 6);

        // Through the family: batches and ids.
        let fam = Family::open(&format!("npz:{}", p2.display())).unwrap();
        assert_eq!(
            (fam.input_len(), fam.output_len(), fam.examples_per_task()),
            (4, 2, 6)
        );
        let ids = fam.train_ids(0, 0, 16);
        assert!(ids.iter().all(|id| !t.test.contains(&(*id as usize))));
        let b = fam.batch(&fam.test_ids(300), 2, 4);
        assert_eq!(b.tasks, 4);
        assert_eq!(b.xs.len(), 4 * 2 * 4);
        assert_eq!(b.yq.len(), 4 * 4 * 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn malformed_files_are_refused_by_name() {
        let d = dir("bad");
        let (x, y) = tasks();
        let case = |name: &str, arrays: &[(&str, Vec<u64>, Vec<f64>, &str)], expect: &str| {
            let p = d.join(name);
            write(&p, arrays);
            let e = NpzTasks::open(&p).unwrap_err();
            assert!(e.contains(expect), "{name}: '{e}' lacks '{expect}'");
        };
        case(
            "noy.npz",
            &[("x", vec![10, 6, 4], x.clone(), "f4")],
            "no array 'y'",
        );
        case(
            "dims.npz",
            &[
                ("x", vec![10, 6, 4], x.clone(), "f4"),
                ("y", vec![10, 3, 4], y.clone(), "f4"),
            ],
            "must match",
        );
        let mut nan = y.clone();
        nan[7] = f64::NAN;
        case(
            "nan.npz",
            &[
                ("x", vec![10, 6, 4], x.clone(), "f4"),
                ("y", vec![10, 6, 2], nan, "f8"),
            ],
            "non-finite",
        );
        case(
            "mask.npz",
            &[
                ("x", vec![10, 6, 4], x.clone(), "f4"),
                ("y", vec![10, 6, 2], y.clone(), "f4"),
                ("test", vec![9], vec![0.0; 9], "b1"),
            ],
            "'test' has shape",
        );
        case(
            "alltest.npz",
            &[
                ("x", vec![10, 6, 4], x.clone(), "f4"),
                ("y", vec![10, 6, 2], y.clone(), "f4"),
                ("test", vec![10], vec![1.0; 10], "b1"),
            ],
            "0 train",
        );
        case(
            "int.npz",
            &[
                ("x", vec![10, 6, 4], x.clone(), "i4"),
                ("y", vec![10, 6, 2], y, "f4"),
            ],
            "dtype",
        );
        std::fs::write(d.join("junk.npz"), b"not a zip").unwrap();
        assert!(
            NpzTasks::open(&d.join("junk.npz"))
                .unwrap_err()
                .contains("not a readable .npz")
        );
        assert!(NpzTasks::open(&d.join("missing.npz")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn msr_meta_trains_on_a_task_file() {
        let d = dir("train");
        let (x, y) = tasks();
        let p = d.join("tasks.npz");
        write(
            &p,
            &[
                ("x", vec![10, 6, 4], x, "f4"),
                ("y", vec![10, 6, 2], y, "f4"),
            ],
        );
        let name = format!("npz:{}", p.display());
        let mut config = crate::train::TrainConfig::new(
            crate::tasks::Problem::Npz,
            crate::models::ModelKind::MsrFc,
        );
        config.problem = name.clone();
        config.support = 2;
        config.query = 4;
        config.tasks_per_step = 4;
        let mut t = crate::train::Trainer::new(config.clone()).unwrap();
        let first = t.outer_step();
        for _ in 0..150 {
            t.outer_step();
        }
        let last = t.outer_step();
        assert!(
            last < first,
            "meta-training on the file lowers the loss: {first} -> {last}"
        );
        let model =
            msr_runtime::Model::from_bytes(&t.record().to_bytes(), &msr_runtime::device::cpu())
                .unwrap();
        assert_eq!(model.info().task_family, name);
        let e = crate::train::evaluate(&model, t.family(), 100, 2, 4, 1).unwrap();
        assert_eq!(e.tasks, 2, "the file has 2 test tasks");
        assert!(e.mse.is_finite());
        config.query = 5;
        assert!(
            crate::train::Trainer::new(config).is_err(),
            "2 + 5 examples > 6"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
