"""Query error against the number of support examples K, notebook style (docs/python.md).

For a model of the rank-1 family (jax_meta_train.py writes one), adapts to 200 held-out
tasks for each K through msr, once with the model's own adaptation (its meta-trained
inner SGD step) and once with damped Gauss-Newton in the same adapted parameters
(`Session.set_inner`), and plots the mean query MSE against K.

    python python/examples/jax_meta_train.py --out rank1-jax.msr
    python python/examples/error_vs_k.py --model rank1-jax.msr --plot docs/python-error-vs-k.png
"""

# %% set-up
import argparse

import numpy as np

import msr

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--model", default="rank1-jax.msr")
p.add_argument("--tasks", type=int, default=200)
p.add_argument("--plot", default=None, help="write the figure here (needs matplotlib)")
a = p.parse_args()

model = msr.Model.load(a.model)
ks = [1, 2, 3, 5, 10, 20]
rng = np.random.default_rng(1)
idx = np.arange(68)[:, None] + np.arange(3)[None, :]


def task(n, f):
    x = rng.normal(size=(n, 70)).astype(np.float32)
    return x, np.einsum("npq,q->np", x[:, idx], f).astype(np.float32)


# %% adapt to every task at every K, both ways
errors = {"sgd (meta-trained)": [], "gauss-newton": []}
for k in ks:
    for name, errs in errors.items():
        rng = np.random.default_rng(1)  # the same tasks for both
        mse = []
        for _ in range(a.tasks):
            f = rng.normal(size=3)
            xs, ys = task(k, f)
            xq, yq = task(50, f)
            with model.session(inner=None if name.startswith("sgd") else "gauss-newton",
                               damping=1e-3) as s:
                s.adapt(xs, ys)
                mse.append(np.mean((s.predict(xq) - yq) ** 2))
        errs.append(float(np.mean(mse)))

# %% the table
print(f"{a.model}: mean query MSE over {a.tasks} tasks (50 query examples each)")
print("K    " + "  ".join(f"{n:>20}" for n in errors))
for i, k in enumerate(ks):
    print(f"{k:<4} " + "  ".join(f"{errors[n][i]:>20.4f}" for n in errors))

# %% the plot
if a.plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, errs in errors.items():
        ax.plot(ks, errs, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("support examples K")
    ax.set_ylabel("query MSE")
    ax.set_title(f"{model.name}: adapted through msr")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.plot, dpi=100)
    print(f"wrote {a.plot}")
