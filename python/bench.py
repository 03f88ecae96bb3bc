"""Overhead of a Python call over the C ABI: rank1-sized adapt + predict, same process.

Each round times N iterations of `adapt(x, y); predict(q)` through msr (Python) and the same
pair through libmsr in a tight C loop (a helper compiled here with cc, linked against
libmsr.so, called once per round through ctypes), one session each, same model and data.
Reports the median per-iteration time of each and their difference (the overhead).

    python python/bench.py --libmsr target/release/libmsr.so
"""

import argparse
import ctypes as C
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# This file sits beside the package's sources (python/msr, without the compiled extension):
# import the installed package, not them.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import msr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LOOP = r"""
#include <time.h>
#include "msr.h"
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
/* iters iterations of adapt + predict; per-iteration nanoseconds into ns. */
int bench_loop(msr_session *s, const float *x, const float *y, size_t n, size_t in, size_t outl,
               const float *q, size_t m, float *out, size_t iters, double *ns) {
  for (size_t i = 0; i < iters; i++) {
    double t0 = now();
    float loss;
    int st = msr_session_adapt(s, x, n * in, y, n * outl, n, &loss);
    if (st) return st;
    st = msr_session_predict(s, q, m * in, m, out, m * outl);
    if (st) return st;
    ns[i] = now() - t0;
  }
  return 0;
}
"""


def c_helper(libmsr, workdir):
    src = Path(workdir) / "loop.c"
    so = Path(workdir) / "libloop.so"
    src.write_text(LOOP)
    libdir = str(Path(libmsr).resolve().parent)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", str(src), "-I", str(ROOT / "include"),
                    "-L", libdir, "-lmsr", f"-Wl,-rpath,{libdir}", "-o", str(so)], check=True)
    return C.CDLL(str(so)), C.CDLL(str(Path(libmsr).resolve()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--libmsr", default=os.environ.get("MSR_LIBMSR", str(ROOT / "target/release/libmsr.so")))
    p.add_argument("--model", default=str(ROOT / "tests/compat/rank1-v1.msr"))
    p.add_argument("--n", type=int, default=10, help="support examples")
    p.add_argument("--m", type=int, default=1, help="query examples")
    p.add_argument("--iters", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=11)
    a = p.parse_args()

    raw = Path(a.model).read_bytes()
    model = msr.Model.from_bytes(raw)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.n, model.inputs)).astype(np.float32)
    y = rng.normal(size=(a.n, model.outputs)).astype(np.float32)
    q = rng.normal(size=(a.m, model.inputs)).astype(np.float32)
    out = np.empty((a.m, model.outputs), np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        loop, lib = c_helper(a.libmsr, tmp)
        cm, cs = C.c_void_p(), C.c_void_p()
        buf = C.create_string_buffer(raw, len(raw))
        assert lib.msr_model_load_bytes(buf, C.c_size_t(len(raw)), C.byref(cm)) == 0
        assert lib.msr_session_new(cm, None, C.byref(cs)) == 0
        f32 = lambda arr: arr.ctypes.data_as(C.POINTER(C.c_float))  # noqa: E731
        ns = np.empty(a.iters, np.float64)
        s = model.session()

        def python_round():
            t = np.empty(a.iters, np.float64)
            clock = time.perf_counter_ns
            for i in range(a.iters):
                t0 = clock()
                s.adapt(x, y)
                s.predict(q, out=out)
                t[i] = clock() - t0
            return float(np.median(t))

        def python_round_alloc():
            t = np.empty(a.iters, np.float64)
            clock = time.perf_counter_ns
            for i in range(a.iters):
                t0 = clock()
                s.adapt(x, y)
                s.predict(q)
                t[i] = clock() - t0
            return float(np.median(t))

        def c_round():
            st = loop.bench_loop(cs, f32(x), f32(y), C.c_size_t(a.n), C.c_size_t(model.inputs),
                                 C.c_size_t(model.outputs), f32(q), C.c_size_t(a.m), f32(out),
                                 C.c_size_t(a.iters), ns.ctypes.data_as(C.POINTER(C.c_double)))
            assert st == 0, st
            return float(np.median(ns))

        rows = []
        for r in range(a.rounds):  # alternate, so that load on the machine hits both
            rows.append((c_round(), python_round(), python_round_alloc()))
        lib.msr_session_free(C.byref(cs))
        lib.msr_model_free(C.byref(cm))

    c_med = statistics.median(r[0] for r in rows)
    py_med = statistics.median(r[1] for r in rows)
    py_alloc = statistics.median(r[2] for r in rows)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"machine: {cpu}; Python {platform.python_version()}; numpy {np.__version__}")
    print(f"model {Path(a.model).name}: {model.inputs} inputs, {model.outputs} outputs, {model.adapted_len} adapted; "
          f"adapt on {a.n} + predict {a.m}; {a.rounds} rounds x {a.iters} iterations, medians")
    # The overhead: the median over rounds of each round's difference (the machine's load
    # changes between rounds, much less within one).
    over = statistics.median(r[1] - r[0] for r in rows)
    over_alloc = statistics.median(r[2] - r[0] for r in rows)
    print(f"  C ABI (tight C loop)              {c_med / 1e3:8.2f} us")
    print(f"  Python, predict(q, out=out)       {py_med / 1e3:8.2f} us   overhead {over / 1e3:+.2f} us")
    print(f"  Python, predict(q) (new array)    {py_alloc / 1e3:8.2f} us   overhead {over_alloc / 1e3:+.2f} us")
    for i, r in enumerate(rows):
        print(f"  round {i}: C {r[0] / 1e3:.2f}, Python {r[1] / 1e3:.2f}, Python new array {r[2] / 1e3:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
