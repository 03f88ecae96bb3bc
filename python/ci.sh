#!/usr/bin/env bash
# CI for the Python package (python/): a fresh venv, the wheel built by maturin and
# installed with pip, the tests (against libmsr through ctypes), fmt and clippy of the
# extension crate. Works on a fresh Debian machine with Rust and python3; run from anywhere:
#   bash python/ci.sh
# Environment: CARGO_TARGET_DIR (default: the workspace's target/), MSR_PY_VENV (default:
# a new temporary directory, removed at the end).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
step() { echo "--- python: $1 (${SECONDS}s)"; }

step "a fresh venv"
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
venv=${MSR_PY_VENV:-$(mktemp -d)/venv}
[ -n "${MSR_PY_VENV:-}" ] || trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
py=$venv/bin/python
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q 'maturin>=1.5,<2' numpy pytest
export PYO3_PYTHON=$py PATH=$venv/bin:$PATH

step "fmt and clippy of the extension crate"
cargo fmt --manifest-path python/Cargo.toml -- --check
cargo clippy --release --locked --manifest-path python/Cargo.toml --all-targets -- -D warnings

step "one abi3 wheel (maturin build)"
wheels=$(mktemp -d)
(cd python && "$venv/bin/maturin" build --release --locked --out "$wheels" -q)
ls "$wheels"
ls "$wheels"/msr-*-cp39-abi3-*.whl >/dev/null || { echo "no abi3 wheel"; exit 1; }

step "pip install ./python (the README's command) into the venv"
"$py" -m pip install -q --no-build-isolation ./python
# The installed package, imported from outside the source tree.
(cd "$wheels" && "$py" -c 'import msr; print("msr", msr.__version__, msr.Model)')

step "libmsr (the C ABI the tests compare with)"
cargo build --release -p msr-ffi
export MSR_LIBMSR=$CARGO_TARGET_DIR/release/libmsr.so MSR_REQUIRE_LIBMSR=1

step "pytest"
"$venv/bin/pytest" -q python/tests

step "the docs' example (docs/python.md)"
(cd "$wheels" && "$py" "$root/python/examples/quickstart.py")
rm -rf "$wheels"
step "done"
