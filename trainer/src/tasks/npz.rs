//! A user's own task set from a `.npz` file (numpy's `savez`), so a robot team can
//! meta-train on its logs.
//!
//! Arrays: `x` `[tasks, examples, ...]` and `y` `[tasks, examples, ...]` (float32 or
//! float64), and optionally `test` `[tasks]` (bool or integer; nonzero marks a test task).
//! Without `test`, the last 20% of tasks are the test tasks, as in the paper.

use std::path::Path;

use npyz::Order;

use super::Batch;

/// The most elements one array of a task file may declare (1 GiB of float32): a file
/// declaring more is refused from its header, before anything is decompressed.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 28;

/// The first line of a library's error, without parser art: messages stay one line.
fn one_line(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("-->") && !l.starts_with('|'))
        .unwrap_or("")
        .to_string();
    if line.is_empty() {
        "malformed".into()
    } else {
        line
    }
}

/// Checks an array's declared shape against [`MAX_ARRAY_ELEMENTS`] with checked arithmetic;
/// returns its element count.
fn declared_len(shape: &[u64], name: &str, path: &Path) -> Result<usize, String> {
    let n = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ARRAY_ELEMENTS);
    n.map(|n| n as usize).ok_or_else(|| {
        format!(
            "{}: array '{name}' declares shape {shape:?}, over the limit of {MAX_ARRAY_ELEMENTS} elements",
            path.display()
        )
    })
}

/// Reads `len` values into a buffer reserved fallibly (no abort when memory is short).
fn read_values<T: npyz::Deserialize>(
    file: npyz::NpyFile<impl std::io::Read>,
    len: usize,
    convert: impl Fn(T) -> f32,
    name: &str,
    path: &Path,
) -> Result<Vec<f32>, String> {
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| {
        format!(
            "{}: array '{name}': out of memory for {len} values",
            path.display()
        )
    })?;
    let data = file
        .data::<T>()
        .map_err(|e| format!("{}: array '{name}': {}", path.display(), one_line(e)))?;
    for v in data {
        out.push(convert(v.map_err(|e| {
            format!("{}: array '{name}': {}", path.display(), one_line(e))
        })?));
    }
    if out.len() != len {
        return Err(format!(
            "{}: array '{name}': {} values for a declared {len}",
            path.display(),
            out.len()
        ));
    }
    Ok(out)
}

/// Reorders a Fortran-order (column-major) array of `shape` into C (row-major) order.
fn fortran_to_c(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    let mut index = vec![0usize; shape.len()];
    for slot in out.iter_mut() {
        // Column-major offset of the row-major multi-index `index`.
        let mut offset = 0;
        for d in (0..shape.len()).rev() {
            offset = offset * shape[d] + index[d];
        }
        *slot = values[offset];
        // Next row-major index: the last dimension fastest.
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

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
        .map_err(|e| {
            format!(
                "{}: array '{name}': unreadable .npy header ({})",
                path.display(),
                one_line(e)
            )
        })?
        .ok_or_else(|| format!("{}: no array '{name}'", path.display()))?;
    let len = declared_len(file.shape(), name, path)?;
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let order = file.order();
    let type_str = file.dtype().descr().trim_matches('\'').to_string();
    let values: Vec<f32> = if type_str.ends_with("f4") {
        read_values::<f32>(file, len, |v| v, name, path)?
    } else if type_str.ends_with("f8") {
        read_values::<f64>(file, len, |v| v as f32, name, path)?
    } else {
        return Err(format!(
            "{}: array '{name}' has dtype {type_str}; use float32 or float64",
            path.display()
        ));
    };
    // numpy writes fortran_order=True for column-major arrays: reorder to row-major.
    let values = match order {
        Order::C => values,
        Order::Fortran => fortran_to_c(&values, &shape),
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
        let mut archive = npyz::npz::NpzArchive::open(path).map_err(|e| {
            format!(
                "{}: not a readable .npz file ({})",
                path.display(),
                one_line(e)
            )
        })?;
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
        for (name, shape) in [("x", &xs), ("y", &ys)] {
            if shape[2..].contains(&0) {
                return Err(format!(
                    "{}: {name} has shape {shape:?}: each example needs at least one value",
                    path.display()
                ));
            }
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
                .map_err(|e| {
                    format!(
                        "{}: array 'test': unreadable .npy header ({})",
                        path.display(),
                        one_line(e)
                    )
                })?
                .ok_or_else(|| format!("{}: no array 'test'", path.display()))?;
            let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
            if shape != [tasks] {
                return Err(format!(
                    "{}: 'test' has shape {shape:?}; it must be [tasks] = [{tasks}]",
                    path.display()
                ));
            }
            let descr = file.dtype().descr().trim_matches('\'').to_string();
            let bad = |e: std::io::Error| format!("{}: 'test': {}", path.display(), one_line(e));
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

/// The tasks `ids` of a task file, each split into its first `support` examples and the
/// next `query`.
pub(super) fn file_batch(f: &NpzTasks, ids: &[u64], support: usize, query: usize) -> Batch {
    assert!(
        support + query <= f.examples,
        "support + query exceeds the file's examples"
    );
    let (fi, fo) = (f.input_len(), f.output_len());
    let mut b = Batch {
        tasks: ids.len(),
        support,
        query,
        xs: Vec::with_capacity(ids.len() * support * fi),
        ys: Vec::with_capacity(ids.len() * support * fo),
        xq: Vec::with_capacity(ids.len() * query * fi),
        yq: Vec::with_capacity(ids.len() * query * fo),
    };
    for &id in ids {
        let t = id as usize;
        let x = &f.x[t * f.examples * fi..(t + 1) * f.examples * fi];
        let y = &f.y[t * f.examples * fo..(t + 1) * f.examples * fo];
        b.xs.extend_from_slice(&x[..support * fi]);
        b.ys.extend_from_slice(&y[..support * fo]);
        b.xq.extend_from_slice(&x[support * fi..(support + query) * fi]);
        b.yq.extend_from_slice(&y[support * fo..(support + query) * fo]);
    }
    b
}

#[cfg(test)]
mod tests;
