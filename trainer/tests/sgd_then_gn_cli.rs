//! The `trainer` binary end to end with `--inner sgd+gn`: a run meta-trained so is
//! evaluated so by default (its JSON says which adaptation ran), `--init` starts a run
//! from a trained model's parameters, and options that do not fit are refused.

use std::path::PathBuf;
use std::process::{Command, Output};

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run the trainer")
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msr-sgn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const RUN: [&str; 14] = [
    "train",
    "--problem",
    "rank1",
    "--model",
    "msr-mlp",
    "--hidden",
    "8",
    "--inner-steps",
    "2",
    "--steps",
    "3",
    "--tasks-per-step",
    "4",
    "--eval-tasks",
];

fn eval_json(model: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let m = model.to_str().unwrap();
    let mut args = vec!["eval", "--model", m, "--tasks", "20", "--json"];
    args.extend(extra);
    let out = trainer(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn sgd_then_gauss_newton_runs_evaluates_and_warm_starts() {
    let sgd = dir("sgd");
    let mut args: Vec<&str> = RUN.to_vec();
    args.extend(["10", "--out", sgd.to_str().unwrap()]);
    assert!(trainer(&args).status.success());

    // Fine-tuned through SGD then one Gauss-Newton step, from the SGD run's model.
    let sgn = dir("sgn");
    let model = sgd.join("model.msr");
    let mut args: Vec<&str> = RUN.to_vec();
    args.extend([
        "10",
        "--inner",
        "sgd+gn",
        "--damping",
        "0.5",
        "--init",
        model.to_str().unwrap(),
        "--out",
        sgn.to_str().unwrap(),
    ]);
    let out = trainer(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Evaluated as a device adapts: the real-time engine, with its rollback.
    let plain = eval_json(&model, &[]);
    assert_eq!(plain["engine"], "realtime", "{plain}");
    assert_eq!(plain["inner"], "sgd", "{plain}");
    assert_eq!(plain["refused"], 0, "{plain}");
    let burn = eval_json(&model, &["--engine", "burn"]);
    assert_eq!(burn["engine"], "burn", "{burn}");
    assert_eq!(
        burn["inner"],
        serde_json::Value::Null,
        "SGD on burn: {burn}"
    );
    let (a, b) = (
        plain["loss"].as_f64().unwrap(),
        burn["loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-3 * b, "the two engines agree: {a} {b}");
    let refined = eval_json(&sgn.join("model.msr"), &[]);
    assert_eq!(refined["inner"], "sgd+gn", "{refined}");
    assert_eq!(
        refined["damping_scale"], 0.5,
        "the trained damping: {refined}"
    );
    let explicit = eval_json(
        &sgn.join("model.msr"),
        &["--inner", "sgd+gn", "--damping", "0.5", "--gn-steps", "1"],
    );
    assert_eq!(
        refined["loss"], explicit["loss"],
        "the default is the trained refinement"
    );
    let sgd_only = eval_json(&sgn.join("model.msr"), &["--inner", "sgd"]);
    assert_ne!(refined["loss"], sgd_only["loss"], "--inner overrides it");

    // Refused: --gn-steps without sgd+gn; --init of another architecture.
    let m = model.to_str().unwrap();
    let out = trainer(&["eval", "--model", m, "--tasks", "5", "--gn-steps", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--gn-steps"));
    let other = dir("other");
    let out = trainer(&[
        "train",
        "--problem",
        "rank1",
        "--model",
        "msr-mlp",
        "--hidden",
        "6",
        "--steps",
        "1",
        "--init",
        m,
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("architecture"));
    for d in [sgd, sgn, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}
