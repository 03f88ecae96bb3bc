//! The closed-loop Panda (examples/cpp/panda_payload.cpp): built with the system C++
//! compiler against the freshly built libmsr and MuJoCo (pkg-config), it flies 5 simulated
//! seconds with a payload change halfway; the controller adapted online through libmsr must
//! halve the nominal controller's end-effector error, and the loops must neither allocate
//! nor lock a mutex (the program's malloc and pthread_mutex_lock counters). Then 0.5 s under valgrind, and a bad model path.
//! Needs MuJoCo: `--features msr-tests/mujoco` (CI's robots stage).
#![cfg(feature = "mujoco")]

use std::path::PathBuf;
use std::process::Command;

use msr_tests::{lib_dir, number_after, root, run, work_dir};

/// Builds the example into `dir`.
fn build(dir: &std::path::Path) -> PathBuf {
    let lib = lib_dir();
    let flags = run(Command::new("pkg-config").args(["--cflags", "--libs", "mujoco"]));
    let exe = dir.join("panda_payload");
    let examples = root().join("examples/cpp");
    run(
        Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()))
            .args(["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(root().join("include"))
            .arg(examples.join("panda_payload.cpp"))
            .arg(examples.join("alloc_count.cpp"))
            .args(flags.split_whitespace())
            .arg(format!("-L{}", lib.display()))
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .args(["-lmsr", "-o"])
            .arg(&exe),
    );
    exe
}

#[test]
fn robots_closed_loop_panda_adapts_online_without_allocating() {
    let dir = work_dir("panda-loop");
    let exe = build(&dir);
    let model = root().join("robots/panda/msr-head.msr");
    let xml = root().join("robots/panda/panda.xml");
    let csv = dir.join("run.csv");
    let out = run(Command::new(&exe)
        .arg(&model)
        .arg(&xml)
        .args([
            "--seconds",
            "5",
            "--switch",
            "2.5",
            "--count-allocs",
            "--csv",
        ])
        .arg(&csv));
    println!("{out}");
    let ratio = number_after(&out, "msr/nominal");
    assert!(
        ratio <= 0.5,
        "msr must at most halve the nominal error: {ratio}\n{out}"
    );
    // The oracle tracks best, the payload-blind PD worst.
    let ee = |name: &str| number_after(&out, &format!("\n{name:<8} "));
    assert!(
        ee("oracle") < ee("msr") && ee("nominal") < ee("pd"),
        "{out}"
    );
    assert_eq!(number_after(&out, "allocations inside the loops:"), 0.0);
    assert_eq!(number_after(&out, "mutex locks inside the loops:"), 0.0);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("t,payload_kg,pd_mm,nominal_mm,msr_mm,window_mm,oracle_mm")
    );
    assert_eq!(lines.count(), 5000);

    // valgrind: no memory errors on the whole path (MuJoCo, libmsr, the loop).
    let vg = Command::new("valgrind")
        .args(["--error-exitcode=99", "-q"])
        .arg(&exe)
        .arg(&model)
        .arg(&xml)
        // (No --count-allocs: valgrind replaces malloc itself, so nothing would be counted.)
        .args(["--seconds", "0.5", "--switch", "0.25"])
        .output()
        .expect("valgrind is required (apt-get install valgrind)");
    assert!(
        vg.status.success(),
        "valgrind: {}\n{}",
        vg.status,
        String::from_utf8_lossy(&vg.stderr)
    );

    // A model that is not there: a clear message, exit status 1.
    let bad = Command::new(&exe)
        .arg(dir.join("missing.msr"))
        .arg(&xml)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing.msr"));
    std::fs::remove_dir_all(&dir).unwrap();
}
