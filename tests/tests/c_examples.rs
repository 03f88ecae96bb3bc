//! Builds the C and C++ examples with the system compilers against the freshly built
//! libmsr, runs them on a freshly trained model, and runs the C example under valgrind.

use std::path::{Path, PathBuf};
use std::process::Command;

use msr_runtime::Model;
use msr_runtime::format::{LayerRecord, ModelInfo};
use msr_runtime::tensor::{DType, Tensor, TensorData};
use msr_runtime::{Activation, FeatureShape, LayerSpec, Loss, ModelRecord, NetSpec, Op};
use msr_tests::{lib_dir, number_after, root, run, work_dir};
use msr_trainer::models::ModelKind;
use msr_trainer::tasks::{Family, Problem};
use msr_trainer::train::{TrainConfig, Trainer};

/// The robot loop's per-task errors: before adapting, and the mean after.
fn errors_before_after(out: &str) -> (Vec<f64>, Vec<f64>) {
    let all = |label: &str| -> Vec<f64> {
        out.match_indices(label)
            .map(|(i, _)| number_after(&out[i..], label))
            .collect()
    };
    (
        all("error before adapting"),
        all("mean error after adapting"),
    )
}

fn trained_rank1(dir: &Path) -> PathBuf {
    let mut config = TrainConfig::new(Problem::Rank1, ModelKind::MsrFc);
    config.steps = 400;
    let mut t = Trainer::new(config).unwrap();
    for _ in 0..400 {
        t.outer_step();
    }
    let path = dir.join("rank1.msr");
    std::fs::write(&path, t.record().to_bytes()).unwrap();
    path
}

fn classifier(dir: &Path) -> PathBuf {
    let net = NetSpec {
        input: FeatureShape(vec![8]),
        layers: vec![LayerSpec {
            op: Op::ShareLinear {
                inputs: 8,
                outputs: 4,
                k: 32,
                bias: true,
            },
            activation: Activation::Identity,
        }],
        loss: Loss::CrossEntropy,
    };
    // U = identity: a plain linear classifier that adapts all its weights.
    let u: Vec<f32> = (0..32 * 32)
        .map(|e| if e / 32 == e % 32 { 1.0 } else { 0.0 })
        .collect();
    let rec = ModelRecord {
        info: ModelInfo {
            name: "linear-classifier".into(),
            task_family: "synthetic".into(),
            inner_steps: 5,
            trainer_version: "test".into(),
        },
        net,
        layers: vec![LayerRecord {
            shared: vec![u],
            adapted0: vec![vec![0.0; 32], vec![0.0; 4]],
            lr: 2.0,
        }],
        ext: Default::default(),
    };
    let path = dir.join("classifier.msr");
    std::fs::write(&path, rec.to_bytes()).unwrap();
    path
}

/// A small glyph classifier (MSR-Conv, 8 channels, a few outer steps on the committed font
/// set), a 5-way 1-shot test episode with augmented queries written as an episode file, and
/// how many of its queries the runtime (burn path) classifies correctly after adapting.
fn glyph_classifier(dir: &Path) -> (PathBuf, PathBuf, usize) {
    let mut config = TrainConfig::new(Problem::Glyphs, ModelKind::MsrConv);
    config.problem = msr_trainer::tasks::TaskSource::Glyphs { mini: true };
    (config.ways, config.support, config.query) = (5, 5, 25);
    (config.channels, config.tasks_per_step, config.steps) = (8, 4, 30);
    let mut t = Trainer::new(config.clone()).unwrap();
    for _ in 0..config.steps {
        t.outer_step();
    }
    let model_path = dir.join("glyphs.msr");
    std::fs::write(&model_path, t.record().to_bytes()).unwrap();

    let family = Family::open("glyphs-mini")
        .unwrap()
        .with_episodes(5, true)
        .unwrap();
    let b = family.batch(&family.test_ids(1), 5, 25);
    let episode = dir.join("episode.bin");
    std::fs::write(&episode, b.episode_bytes(5)).unwrap();

    let device = msr_runtime::device::cpu();
    let model = Model::load(&model_path, &device).unwrap();
    let t3 = |v: &Vec<f32>, n: usize, f: usize| {
        Tensor::<3>::from_data(TensorData::new(v.clone(), [1, n, f]), (&device, DType::F32))
    };
    let task = model
        .adapt(
            t3(&b.xs, 5, 784),
            t3(&b.ys, 5, 5),
            model.info().inner_steps as usize,
        )
        .unwrap();
    let logits = model.predict(&task, t3(&b.xq, 25, 784)).unwrap();
    let pred: Vec<i64> = logits
        .argmax(2)
        .to_data()
        .convert::<i64>()
        .iter::<i64>()
        .collect();
    let truth: Vec<i64> =
        b.yq.chunks(5)
            .map(|r| r.iter().position(|&v| v == 1.0).unwrap() as i64)
            .collect();
    let correct = pred.iter().zip(&truth).filter(|(p, t)| p == t).count();
    (model_path, episode, correct)
}

#[test]
fn c_and_cpp_examples_build_run_and_are_valgrind_clean() {
    let lib = lib_dir();
    let dir = work_dir("examples");
    let include = root().join("include");
    let model = trained_rank1(&dir);

    let adapt = dir.join("adapt");
    run(
        Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args([
                "-std=c99",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
            ])
            .arg("-I")
            .arg(&include)
            .arg(root().join("examples/c/adapt.c"))
            .arg("-o")
            .arg(&adapt)
            .arg(format!("-L{}", lib.display()))
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .args(["-lmsr", "-lm"]),
    );
    let out = run(Command::new(&adapt).arg(&model));
    let before = number_after(&out, "query MSE before adapting:");
    let after = number_after(&out, "query MSE after adapting on 1 example(s):");
    assert!(after < 0.5 * before, "adapting must help:\n{out}");
    assert!(
        out.contains("saved and restored the adapted state"),
        "{out}"
    );
    assert!(out.contains("a NULL input is refused"), "{out}");

    let out = run(Command::new(&adapt).arg(classifier(&dir)).arg("classify"));
    assert!(out.contains("query accuracy"), "{out}");

    // Glyph classification through the whole stack: trainer -> model file -> libmsr's
    // real-time engine from C, on an episode file; it must classify exactly the queries the
    // runtime's burn path classifies.
    let (glyphs, episode, expected) = glyph_classifier(&dir);
    let out = run(Command::new(&adapt)
        .arg(&glyphs)
        .arg("classify")
        .arg(&episode));
    let correct = number_after(&out, "query accuracy");
    assert_eq!(
        correct as usize, expected,
        "C and the runtime disagree:\n{out}"
    );
    assert!(out.contains("/25"), "{out}");

    let out = Command::new(&adapt)
        .arg(dir.join("missing.msr"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.msr"));

    let robot = dir.join("robot_loop");
    run(
        Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()))
            .args(["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror"])
            .arg("-I")
            .arg(&include)
            .arg(root().join("examples/cpp/robot_loop.cpp"))
            .arg("-o")
            .arg(&robot)
            .arg(format!("-L{}", lib.display()))
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lmsr"),
    );
    let out = run(Command::new(&robot).arg(&model).args([
        "--ticks", "900", "--rate", "5000", "--switch", "300", "--window", "3",
    ]));
    let (befores, afters) = errors_before_after(&out);
    assert_eq!((befores.len(), afters.len()), (3, 3), "{out}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&afters) < 0.5 * mean(&befores),
        "adapting in the loop must help:\n{out}"
    );
    assert!(out.contains("predict latency"), "{out}");

    // Streaming: Gauss-Newton switched on at set-up, every tick's observation folded in.
    let out = run(Command::new(&robot).arg(&model).args([
        "--ticks", "600", "--rate", "5000", "--switch", "200", "--stream", "1",
    ]));
    let (befores, afters) = errors_before_after(&out);
    assert_eq!((befores.len(), afters.len()), (3, 3), "{out}");
    assert!(
        mean(&afters) < 0.5 * mean(&befores),
        "observing in the loop must help:\n{out}"
    );
    assert!(out.contains("observe latency (1 example)"), "{out}");
    assert!(
        out.contains("over 600 ticks"),
        "observed every tick:\n{out}"
    );

    // valgrind: no memory errors, no leaks.
    if std::env::var_os("MSR_SKIP_VALGRIND").is_none() {
        let vg = Command::new("valgrind")
            .args([
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite,indirect",
                "--show-leak-kinds=definite,indirect",
            ])
            .arg(&adapt)
            .arg(&model)
            .output()
            .expect("valgrind is required (apt-get install valgrind; MSR_SKIP_VALGRIND=1 to skip)");
        let text = String::from_utf8_lossy(&vg.stderr);
        assert!(vg.status.success(), "valgrind found problems:\n{text}");
        assert!(text.contains("ERROR SUMMARY: 0 errors"), "{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The C reproducers of tests/reliability/api_repro.c (found by fuzzing libmsr), each now a
/// status: an overflowing n, absurd capacities, finite inputs that overflow a glyph model,
/// and more labels than x has rows (run under valgrind: no invalid read).
#[test]
fn c_api_reproducers_get_statuses() {
    let lib = lib_dir();
    let dir = work_dir("api-repro");
    let repro = dir.join("api_repro");
    run(
        Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-std=c99", "-O1", "-g"])
            .arg("-I")
            .arg(root().join("include"))
            .arg(root().join("tests/reliability/api_repro.c"))
            .arg("-o")
            .arg(&repro)
            .arg(format!("-L{}", lib.display()))
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .args(["-lmsr", "-lm"]),
    );
    let rank1 = trained_rank1(&dir);
    let (glyphs, _, _) = glyph_classifier(&dir);
    let case = |name: &str| run(Command::new(&repro).arg(name).arg(&rank1).arg(&glyphs));

    let out = case("n_overflow");
    assert!(out.contains("adapt(n=2^63+64) -> -2: "), "{out}");
    assert!(out.contains("overflow"), "{out}");
    assert!(out.contains("session unchanged: yes"), "{out}");

    let out = case("capacity");
    assert!(out.contains("capacity SIZE_MAX -> -2: "), "{out}");
    assert!(out.contains("capacity 1e8 -> -2"), "{out}");

    let out = case("relu_nan");
    assert!(
        out.contains("adapt_labels(finite x = +-3e38) -> -7"),
        "{out}"
    );
    assert!(out.contains("non-finite adapted parameters: 0 of"), "{out}");
    assert!(
        out.contains("load_state(its own saved state) -> 0"),
        "{out}"
    );
    let logits = out
        .lines()
        .filter(|l| l.starts_with("logits"))
        .collect::<Vec<_>>();
    assert_eq!(logits.len(), 5, "{out}");
    assert!(
        logits
            .iter()
            .all(|l| !l.contains("nan") && !l.contains("inf")),
        "{out}"
    );

    let out = case("labels_read");
    assert!(out.contains("-> -2: inputs length"), "{out}");
    if std::env::var_os("MSR_SKIP_VALGRIND").is_none() {
        let vg = Command::new("valgrind")
            .args(["--error-exitcode=99", "-q"])
            .arg(&repro)
            .arg("labels_read")
            .arg(&rank1)
            .arg(&glyphs)
            .output()
            .expect("valgrind is required (apt-get install valgrind; MSR_SKIP_VALGRIND=1 to skip)");
        let text = String::from_utf8_lossy(&vg.stderr);
        assert!(vg.status.success(), "valgrind found problems:\n{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
