//! A user's own task set from a `.npz` file (numpy's `savez`), so a robot team can
//! meta-train on its logs.
//!
//! Arrays: `x` `[tasks, examples, ...]` and `y` `[tasks, examples, ...]` (float32 or
//! float64), and optionally `split` `[tasks]` (integers: 0 train, 1 validation, 2 test) or
//! the older `test` `[tasks]` (bool or integer; nonzero marks a test task). Without
//! `split`, the test tasks are those `test` marks, or else the last 20% of the tasks; the
//! validation tasks are the last 10% (at least one) of the remaining tasks, a contiguous
//! block. The layout is documented in docs/data.md.

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
    /// Indices of the validation tasks (periodic evaluations during training).
    pub val: Vec<usize>,
    /// Indices of the test tasks.
    pub test: Vec<usize>,
}

/// The archive's array `name`, its header read, or why not.
fn array<'a>(
    archive: &'a mut npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>,
    name: &str,
    path: &Path,
) -> Result<npyz::NpyFile<zip::read::ZipFile<'a>>, String> {
    archive
        .by_name(name)
        .map_err(|e| {
            format!(
                "{}: array '{name}': unreadable .npy header ({})",
                path.display(),
                one_line(e)
            )
        })?
        .ok_or_else(|| format!("{}: no array '{name}'", path.display()))
}

/// An integer (or bool) array `[tasks]`, as i64.
fn task_labels(
    archive: &mut npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>,
    name: &str,
    tasks: usize,
    path: &Path,
) -> Result<Vec<i64>, String> {
    let file = array(archive, name, path)?;
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    if shape != [tasks] {
        return Err(format!(
            "{}: '{name}' has shape {shape:?}; it must be [tasks] = [{tasks}]",
            path.display()
        ));
    }
    let descr = file.dtype().descr().trim_matches('\'').to_string();
    let bad = |e: std::io::Error| format!("{}: '{name}': {}", path.display(), one_line(e));
    let widen = |v: Vec<i32>| v.into_iter().map(i64::from).collect::<Vec<i64>>();
    Ok(if descr.ends_with("b1") {
        let v = file.into_vec::<bool>().map_err(bad)?;
        v.into_iter().map(i64::from).collect()
    } else if descr.ends_with("i8") {
        file.into_vec::<i64>().map_err(bad)?
    } else if descr.ends_with("i4") {
        widen(file.into_vec::<i32>().map_err(bad)?)
    } else if descr.ends_with("u1") {
        let v = file.into_vec::<u8>().map_err(bad)?;
        v.into_iter().map(i64::from).collect()
    } else {
        return Err(format!(
            "{}: '{name}' has dtype {descr}; use bool, uint8, int32 or int64",
            path.display()
        ));
    })
}

fn floats(
    archive: &mut npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>,
    name: &str,
    path: &Path,
) -> Result<(Vec<usize>, Vec<f32>), String> {
    let file = array(archive, name, path)?;
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
    pub fn open(path: &Path) -> Result<Self, crate::train::TrainError> {
        Self::read(path).map_err(crate::train::TrainError::Tasks)
    }

    /// [`open`]'s work, its errors as messages.
    fn read(path: &Path) -> Result<Self, String> {
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
        if tasks < 3 || examples < 2 {
            return Err(format!(
                "{}: {tasks} tasks of {examples} examples; need at least 3 tasks (train, validation, test) and 2 examples",
                path.display()
            ));
        }
        let has = |name: &str| names.iter().any(|n| n == name);
        // 0 train, 1 validation, 2 test.
        let split: Vec<i64> = if has("split") {
            let split = task_labels(&mut archive, "split", tasks, path)?;
            if let Some(t) = split.iter().position(|s| !(0..=2).contains(s)) {
                return Err(format!(
                    "{}: 'split' of task {t} is {}; use 0 (train), 1 (validation) or 2 (test)",
                    path.display(),
                    split[t]
                ));
            }
            split
        } else {
            let mut split: Vec<i64> = if has("test") {
                let test = task_labels(&mut archive, "test", tasks, path)?;
                test.iter().map(|&t| if t != 0 { 2 } else { 0 }).collect()
            } else {
                let first_test = tasks - (tasks / 5).max(1);
                (0..tasks)
                    .map(|t| if t >= first_test { 2 } else { 0 })
                    .collect()
            };
            // Validation: the last 10% (at least one) of the other tasks.
            let rest: Vec<usize> = (0..tasks).filter(|&t| split[t] == 0).collect();
            let n_val = (rest.len() / 10).max(1).min(rest.len().saturating_sub(1));
            for &t in &rest[rest.len() - n_val..] {
                split[t] = 1;
            }
            split
        };
        let of = |k: i64| {
            (0..tasks)
                .filter(|&t| split[t] == k)
                .collect::<Vec<usize>>()
        };
        let (train, val, test) = (of(0), of(1), of(2));
        if train.is_empty() || val.is_empty() || test.is_empty() {
            return Err(format!(
                "{}: {} train, {} validation and {} test tasks; need at least one of each",
                path.display(),
                train.len(),
                val.len(),
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
            val,
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

/// An array's shape and row-major values.
pub type Shaped = (Vec<usize>, Vec<f32>);

/// The float array `name` of an `.npz` file (shape and row-major values, checked finite),
/// or `None` if the file has no such array.
pub fn read_array(path: &Path, name: &str) -> Result<Option<Shaped>, crate::train::TrainError> {
    read_named(path, name).map_err(crate::train::TrainError::Tasks)
}

/// [`read_array`]'s work, its errors as messages.
fn read_named(path: &Path, name: &str) -> Result<Option<Shaped>, String> {
    let mut archive = npyz::npz::NpzArchive::open(path).map_err(|e| {
        format!(
            "{}: not a readable .npz file ({})",
            path.display(),
            one_line(e)
        )
    })?;
    if !archive.array_names().any(|n| n == name) {
        return Ok(None);
    }
    floats(&mut archive, name, path).map(Some)
}

/// An array to write with [`write_npz`].
pub enum Array<'a> {
    /// float32 values.
    F32(&'a [f32]),
    /// int64 values.
    I64(&'a [i64]),
}

/// Writes named arrays (row-major, with their shapes) to an `.npz` file numpy reads.
pub fn write_npz(
    path: &Path,
    arrays: &[(&str, &[usize], Array)],
) -> Result<(), crate::train::TrainError> {
    write(path, arrays).map_err(crate::train::TrainError::Tasks)
}

/// [`write_npz`]'s work, its errors as messages.
fn write(path: &Path, arrays: &[(&str, &[usize], Array)]) -> Result<(), String> {
    use npyz::WriterBuilder;
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut npz = npyz::npz::NpzWriter::create(path).map_err(err)?;
    for (name, shape, values) in arrays {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let opts = zip::write::FileOptions::default();
        match values {
            Array::F32(v) => {
                let mut w = npz
                    .array::<f32>(name, opts)
                    .map_err(err)?
                    .default_dtype()
                    .shape(&shape)
                    .begin_nd()
                    .map_err(err)?;
                w.extend(v.iter().copied()).map_err(err)?;
                w.finish().map_err(err)?;
            }
            Array::I64(v) => {
                let mut w = npz
                    .array::<i64>(name, opts)
                    .map_err(err)?
                    .default_dtype()
                    .shape(&shape)
                    .begin_nd()
                    .map_err(err)?;
                w.extend(v.iter().copied()).map_err(err)?;
                w.finish().map_err(err)?;
            }
        }
    }
    Ok(())
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
