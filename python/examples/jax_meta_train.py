"""Meta-train a small MSR net in JAX, export it with msr.export, adapt it through msr.

The outer step is the reference one (../shared/reference/meta-step/maml_jax.py, vmap form:
the inner SGD step unrolled, jax.grad through it, Adam), for one MSR dense layer on the
paper's rank-1 family: each task is a 1-D valid convolution y[p] = sum_q f[q] x[p + q] of
70 inputs with its own 3-tap filter. Meta-learned: U [68 * 70, k], v0 [k], the inner
learning rate. From random U, meta-training discovers the convolution's weight sharing,
and the exported model adapts to a new filter from one example.

    pip install ./python "jax[cpu]"
    python python/examples/jax_meta_train.py --out rank1-jax.msr
    # ... and the same file through libmsr's C example (examples/c/adapt.c), built here:
    python python/examples/jax_meta_train.py --out rank1-jax.msr --libmsr target/release/libmsr.so
"""

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import jax
import jax.numpy as jnp

import msr

IN, OUT, TAPS = 70, 68, 3


def tasks(rng, t, n):
    """t tasks of n examples: x [t, n, 70], y [t, n, 68]."""
    f = rng.normal(size=(t, TAPS))
    x = rng.normal(size=(t, n, IN))
    idx = np.arange(OUT)[:, None] + np.arange(TAPS)[None, :]  # [68, 3]
    y = np.einsum("tnpq,tq->tnp", x[:, :, idx], f)
    return x.astype(np.float32), y.astype(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="rank1-jax.msr")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=16, help="tasks per outer step")
    p.add_argument("--support", type=int, default=1)
    p.add_argument("--query", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--libmsr", default=None,
                   help="libmsr.so: also build examples/c/adapt.c against it and run it on the file")
    a = p.parse_args()

    rng = np.random.default_rng(a.seed)
    # The trainer's initialisation of msr-mlp (common.py): U ~ N(0, 1/(fan_in k)), v0 ~ N(0, 1).
    meta = {
        "U": jnp.asarray(rng.normal(0, np.sqrt(1.0 / (IN * a.k)), (OUT * IN, a.k)), jnp.float32),
        "v0": jnp.asarray(rng.normal(0, 1.0, a.k), jnp.float32),
        "lr": jnp.asarray(0.1, jnp.float32),
    }

    def fwd(U, v, x):
        return x @ (U @ v).reshape(OUT, IN).T

    def support_loss(v, U, x, y):
        return jnp.mean((fwd(U, v, x) - y) ** 2)

    def task_loss(meta, xs, ys, xq, yq):
        v = meta["v0"] - meta["lr"] * jax.grad(support_loss)(meta["v0"], meta["U"], xs, ys)
        return jnp.mean((fwd(meta["U"], v, xq) - yq) ** 2)

    def outer(meta, xs, ys, xq, yq):
        return jnp.sum(jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(meta, xs, ys, xq, yq))

    @jax.jit
    def step(meta, m, v, t, xs, ys, xq, yq):  # Adam, lr 1e-2, bias-corrected
        loss, g = jax.value_and_grad(outer)(meta, xs, ys, xq, yq)
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        meta = jax.tree.map(
            lambda p, m, v: p - 1e-2 * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8),
            meta, m, v)
        return meta, m, v, loss

    zeros = jax.tree.map(jnp.zeros_like, meta)
    m, v = zeros, zeros
    t0 = time.perf_counter()
    for t in range(1, a.steps + 1):
        x, y = tasks(rng, a.tasks, a.support + a.query)
        meta, m, v, loss = step(meta, m, v, float(t), x[:, :a.support], y[:, :a.support],
                                x[:, a.support:], y[:, a.support:])
        if t % (a.steps // 5) == 0 or t == 1:
            print(f"step {t:5d}: query MSE after adapting {float(loss) / a.tasks:.4f}")
    print(f"meta-trained in {time.perf_counter() - t0:.1f} s")

    # Export the JAX arrays: one MSR dense layer, no bias, one inner SGD step.
    model = msr.export(a.out, [{"U": np.asarray(meta["U"]), "v": np.asarray(meta["v0"]),
                                "outputs": OUT, "lr": float(meta["lr"])}],
                       inner_steps=1, name="rank1-jax", task_family="rank1",
                       trainer_version=f"jax {jax.__version__}")
    print(f"wrote {a.out}: {model}")

    # Adapt through msr on held-out tasks, and check it is JAX's own adaptation.
    x, y = tasks(np.random.default_rng(a.seed + 1), 100, a.support + 50)
    before, after, gap = [], [], 0.0
    for i in range(len(x)):
        xs, ys, xq, yq = x[i, :a.support], y[i, :a.support], x[i, a.support:], y[i, a.support:]
        with model.session() as s:
            before.append(np.mean((s.predict(xq) - yq) ** 2))
            s.adapt(xs, ys)
            pred = s.predict(xq)
        after.append(np.mean((pred - yq) ** 2))
        vj = meta["v0"] - meta["lr"] * jax.grad(support_loss)(meta["v0"], meta["U"], xs, ys)
        ref = np.asarray(fwd(meta["U"], vj, xq))
        gap = max(gap, float(np.max(np.abs(pred - ref)) / np.max(np.abs(ref))))
    print(f"100 held-out tasks, {a.support} support example(s): query MSE {np.mean(before):.4f} "
          f"before adapting, {np.mean(after):.4f} after (msr); largest difference from JAX's "
          f"own adaptation {gap:.1e} (relative)")
    assert gap < 1e-3, "msr does not adapt as JAX meta-trained"

    if a.libmsr:
        root = Path(__file__).resolve().parents[2]
        libdir = str(Path(a.libmsr).resolve().parent)
        with tempfile.TemporaryDirectory() as tmp:
            exe = str(Path(tmp) / "adapt")
            subprocess.run(["cc", "-O2", "-I", str(root / "include"), str(root / "examples/c/adapt.c"),
                            "-L", libdir, "-lmsr", f"-Wl,-rpath,{libdir}", "-lm", "-o", exe], check=True)
            print(f"--- examples/c/adapt.c on {a.out}, through libmsr:")
            subprocess.run([exe, a.out], check=True)


if __name__ == "__main__":
    main()
