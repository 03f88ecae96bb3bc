//! Behaviour is pinned: three short training runs of the `trainer` binary (rank1 MSR-FC,
//! rot8 MSR-Conv, a glyphs-mini MSR-Conv classifier) must write byte-identical model files
//! and checkpoints, and the same metrics (timings aside), as the files in
//! tests/reference/, which the code of commit "reference runs" wrote. A refactoring that
//! changes a single bit fails here.
//!
//! To accept an intended change of results, regenerate them and say why in the commit:
//!   MSR_BLESS_REFERENCE=1 cargo test --release -p msr-trainer --test reference_runs
//!
//! The float results depend on the CPU's SIMD kernels (burn-ndarray's matrix products):
//! the references were written on x86-64 with AVX2 and FMA.

use std::path::{Path, PathBuf};
use std::process::Command;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

/// The metrics file without the fields that measure time.
fn metrics_without_timings(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            if let Some(o) = v.as_object_mut() {
                o.retain(|k, _| k != "elapsed_s" && k != "steps_per_s");
            }
            v
        })
        .collect()
}

fn run(name: &str, args: &[&str]) {
    let out = std::env::temp_dir().join(format!("msr-reference-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("train")
        .args(args)
        .arg("--out")
        .arg(&out)
        .env("RUST_LOG", "error")
        .status()
        .expect("run the trainer");
    assert!(status.success(), "{name}: trainer train failed");
    let reference = reference_dir().join(name);
    let bless = std::env::var_os("MSR_BLESS_REFERENCE").is_some();
    if bless {
        std::fs::create_dir_all(&reference).unwrap();
    }
    for file in ["model.msr", "checkpoint.bin", "metrics.jsonl"] {
        let got = std::fs::read(out.join(file)).unwrap();
        let path = reference.join(file);
        if bless {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (bless the references first)", path.display()));
        if file == "metrics.jsonl" {
            assert_eq!(
                metrics_without_timings(&String::from_utf8(got).unwrap()),
                metrics_without_timings(&String::from_utf8(want).unwrap()),
                "{name}: metrics differ from the reference run"
            );
        } else {
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            assert!(
                got == want,
                "{name}/{file}: {} bytes vs {} in the reference; first difference at byte {first:?}",
                got.len(),
                want.len()
            );
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// The rank1 run's arguments (burn's engine: the bit-pinned reference).
const RANK1: &[&str] = &[
    "--problem",
    "rank1",
    "--model",
    "msr-fc",
    "--steps",
    "20",
    "--seed",
    "3",
    "--tasks-per-step",
    "8",
    "--eval-every",
    "10",
    "--eval-tasks",
    "16",
    "--checkpoint-every",
    "10",
];

/// The fast engine (the default for msr-fc) keeps the reference run's metrics: the same
/// losses within 1e-4 relative (float sums in another order, not bit for bit).
#[test]
fn rank1_msr_fc_fast_engine_keeps_the_metrics() {
    let out = std::env::temp_dir().join(format!("msr-reference-fast-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("train")
        .args(RANK1)
        .args(["--engine", "fast", "--out"])
        .arg(&out)
        .env("RUST_LOG", "error")
        .status()
        .expect("run the trainer");
    assert!(status.success());
    let got = metrics_without_timings(&std::fs::read_to_string(out.join("metrics.jsonl")).unwrap());
    let want = metrics_without_timings(
        &std::fs::read_to_string(reference_dir().join("rank1/metrics.jsonl")).unwrap(),
    );
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        for key in ["train_loss", "val_loss", "val_ci95"] {
            let (a, b) = (g[key].as_f64().unwrap(), w[key].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-4 * b.abs(),
                "{key}: {a} vs reference {b}"
            );
        }
        assert_eq!(g["step"], w["step"]);
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn rank1_msr_fc_is_bit_identical() {
    let mut args = RANK1.to_vec();
    args.extend(["--engine", "burn"]);
    run("rank1", &args);
}

#[test]
fn rot8_msr_conv_is_bit_identical() {
    run(
        "rot8",
        &[
            "--problem",
            "rot8",
            "--model",
            "msr-conv",
            "--steps",
            "3",
            "--seed",
            "4",
            "--tasks-per-step",
            "2",
            "--eval-every",
            "3",
            "--eval-tasks",
            "2",
        ],
    );
}

#[test]
fn glyphs_mini_msr_conv_is_bit_identical() {
    run(
        "glyphs-mini",
        &[
            "--problem",
            "glyphs-mini",
            "--model",
            "msr-conv",
            "--channels",
            "4",
            "--steps",
            "4",
            "--seed",
            "5",
            "--tasks-per-step",
            "2",
            "--augment-query",
            "--eval-every",
            "2",
            "--eval-tasks",
            "4",
        ],
    );
}
