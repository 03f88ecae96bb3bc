//! End-to-end tests live in tests/tests/; this is what several of them share: where the
//! repository and the freshly built libmsr are, and running the programs they build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// target/<profile>, from this test binary's path (target/<profile>/deps/<binary>).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    {
        // `cargo test` builds msr-ffi as an rlib only, so libmsr.so may be missing or stale.
        // Build the workspace with every target, as `cargo test --workspace --release`
        // resolved it: the same features, so this only links libmsr.so/.a (building
        // `-p msr-ffi` alone would resolve other features and rebuild burn). A no-op when
        // the library is fresh.
        let mut args = vec!["build", "--release", "--workspace", "--all-targets"];
        // As the tests were built (CI's robots-and-MPI stage): the same features again.
        let features: Vec<&str> = [
            (cfg!(feature = "mujoco"), "msr-tests/mujoco"),
            (cfg!(feature = "mpi"), "msr-tests/mpi"),
        ]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect();
        let features = features.join(",");
        if !features.is_empty() {
            args.extend(["--features", &features]);
        }
        let status = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(root())
            .status()
            .unwrap();
        assert!(status.success(), "building libmsr failed");
    }
    assert!(
        dir.join("libmsr.so").exists(),
        "no libmsr.so in {}",
        dir.display()
    );
    dir
}

/// Runs `cmd`; its stdout and stderr, or a panic with them if it failed.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A fresh scratch directory for test `name` of this process.
pub fn work_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msr-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The number after the first `label` in `text` (the first of `a/b`; trailing punctuation
/// dropped); panics with the text if there is none.
pub fn number_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no '{label}' in:\n{text}"))
        + label.len();
    text[at..]
        .split_whitespace()
        .next()
        .and_then(|w| {
            w.split('/')
                .next()?
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no number after '{label}' in:\n{text}"))
}
