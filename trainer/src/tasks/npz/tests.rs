//! Tests of the task-file reader.

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
    assert_eq!(
        t.val,
        vec![7],
        "then the last 10% (at least one) of the rest"
    );
    assert_eq!(t.train, (0..7).collect::<Vec<_>>());
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
    assert_eq!(t.val, vec![8], "the last non-test task validates");
    assert_eq!(t.train, vec![1, 2, 4, 5, 7]);

    // An explicit split: 0 train, 1 validation, 2 test.
    let split: Vec<f64> = [0, 1, 2, 0, 0, 1, 2, 0, 0, 2].map(f64::from).to_vec();
    let p3 = d.join("split.npz");
    write(
        &p3,
        &[
            ("x", vec![10, 6, 4], x.clone(), "f4"),
            ("y", vec![10, 6, 2], y.clone(), "f4"),
            ("split", vec![10], split, "i4"),
        ],
    );
    let t3 = NpzTasks::open(&p3).unwrap();
    assert_eq!(
        (t3.train.clone(), t3.val.clone(), t3.test.clone()),
        (vec![0, 3, 4, 7, 8], vec![1, 5], vec![2, 6, 9])
    );
    let fam3 = Family::open(&format!("npz:{}", p3.display())).unwrap();
    assert_eq!(fam3.val_ids(10), vec![1, 5]);
    // Evaluation uses every test task, or a seeded subset that says so.
    assert_eq!(fam3.eval_ids(None, 0), (vec![2, 6, 9], false));
    let (sub, is_subset) = fam3.eval_ids(Some(2), 5);
    assert!(is_subset && sub.len() == 2 && sub.iter().all(|i| [2, 6, 9].contains(i)));
    assert_eq!(
        fam3.eval_ids(Some(2), 5),
        (sub, true),
        "seeded: reproducible"
    );

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
        let e = NpzTasks::open(&p).unwrap_err().to_string();
        assert!(e.contains(expect), "{name}: '{e}' lacks '{expect}'");
    };
    case(
        "empty.npz",
        &[
            ("x", vec![10, 6, 0], vec![], "f4"),
            ("y", vec![10, 6, 2], y.clone(), "f4"),
        ],
        "empty.npz: x has shape [10, 6, 0]: each example needs at least one value",
    );
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
            .to_string()
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
    let mut config =
        crate::train::TrainConfig::new(crate::tasks::Problem::Npz, crate::models::ModelKind::MsrFc);
    config.problem = name.parse().unwrap();
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
    let model = msr_runtime::Model::from_bytes(&t.record().to_bytes(), &msr_runtime::device::cpu())
        .unwrap();
    assert_eq!(model.info().task_family, name);
    let e = crate::train::evaluate(&model, t.family(), 100, 2, 4, 1).unwrap();
    assert_eq!(e.tasks, 2, "the file has 2 test tasks");
    // The model carries the run's statistics and configuration.
    let rec = t.record();
    let n = rec
        .ext
        .normalizer
        .as_ref()
        .expect("standardised by default");
    assert_eq!(n.input.as_ref().unwrap().mean.len(), 4);
    assert_eq!(crate::train::trained_config(&rec), Some(config.clone()));
    assert!(e.loss.is_finite());
    config.query = 5;
    assert!(
        crate::train::Trainer::new(config).is_err(),
        "2 + 5 examples > 6"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// An .npz holding raw .npy files: (name, header dict, data bytes), stored deflated.
fn write_raw(path: &Path, arrays: &[(&str, String, Vec<u8>)]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, dict, data) in arrays {
        let opts =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file(format!("{name}.npy"), opts).unwrap();
        let mut header = dict.clone();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        npy.extend_from_slice(data);
        zip.write_all(&npy).unwrap();
    }
    zip.finish().unwrap();
}

fn f4_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn hostile_files_are_refused_before_decompressing() {
    let d = dir("hostile");
    // A deflate bomb: x declares 1000 x 1000000 x 1 float32 (4 GB) of zeros. Refused
    // from its header (the zeros here are only 40 MB, compressed to a few KB).
    let zeros = vec![0u8; 40_000_000];
    let p = d.join("bomb.npz");
    write_raw(
        &p,
        &[
            (
                "x",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 1000000, 1), }".into(),
                zeros,
            ),
            (
                "y",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 1000000, 1), }".into(),
                vec![],
            ),
        ],
    );
    assert!(std::fs::metadata(&p).unwrap().len() < 1_000_000);
    let e = NpzTasks::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("array 'x'") && e.contains("over the limit"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    // A shape whose product overflows u64.
    let p = d.join("overflow.npz");
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 2), }";
    write_raw(
        &p,
        &[("x", dict.into(), vec![]), ("y", dict.into(), vec![])],
    );
    let e = NpzTasks::open(&p).unwrap_err().to_string();
    assert!(e.contains("over the limit"), "{e}");

    // A garbled header: one line naming the file and the array.
    let p = d.join("garbled.npz");
    write_raw(
        &p,
        &[
            (
                "x",
                "{'descr': '<f4', 'fortran_order': Flase, 'shape': (2,".into(),
                vec![],
            ),
            ("y", "{}".into(), vec![]),
        ],
    );
    let e = NpzTasks::open(&p).unwrap_err().to_string();
    assert!(e.contains("garbled.npz") && e.contains("array 'x'"), "{e}");
    assert!(!e.contains('\n'), "multi-line: {e}");

    // Fewer values than the header declares.
    let p = d.join("short.npz");
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 3), }";
    write_raw(
        &p,
        &[
            ("x", dict.into(), f4_bytes(&[1.0; 5])),
            ("y", dict.into(), f4_bytes(&[1.0; 12])),
        ],
    );
    let e = NpzTasks::open(&p).unwrap_err().to_string();
    assert!(e.contains("array 'x'"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// numpy writes `fortran_order: True` for column-major arrays (e.g. `np.asfortranarray`):
/// they are read in their logical (row-major) order, not in file order.
#[test]
fn fortran_order_arrays_are_read_transposed_back() {
    let d = dir("fortran");
    let (t, e, f) = (3usize, 4usize, 2usize);
    let c_order: Vec<f32> = (0..t * e * f).map(|i| i as f32).collect();
    // The same logical array in column-major order: index (i, j, k) at i + t*(j + e*k).
    let mut f_order = vec![0.0f32; t * e * f];
    for i in 0..t {
        for j in 0..e {
            for k in 0..f {
                f_order[i + t * (j + e * k)] = c_order[(i * e + j) * f + k];
            }
        }
    }
    let p = d.join("fortran.npz");
    write_raw(
        &p,
        &[
            (
                "x",
                "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4, 2), }".into(),
                f4_bytes(&f_order),
            ),
            (
                "y",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4, 2), }".into(),
                f4_bytes(&c_order),
            ),
        ],
    );
    let tasks = NpzTasks::open(&p).unwrap();
    assert_eq!(tasks.x, c_order);
    assert_eq!(tasks.y, c_order);
    std::fs::remove_dir_all(&d).unwrap();
}
