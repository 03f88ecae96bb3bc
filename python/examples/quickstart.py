"""The five lines of docs/python.md: load a model, adapt it to a task's support set, predict.

The tasks are the paper's rank-1 family: each task is a 1-D convolution
y[p] = sum_q f[q] x[p + q] with its own 3-tap filter f, 70 inputs, 68 outputs. The model is
an MSR layer whose U holds that symmetry exactly (W = reshape(U v) is the convolution by v),
written here with msr.export; examples/jax_meta_train.py meta-learns such a U from tasks.
"""

import numpy as np

import msr

def task(rng, n, f):
    x = rng.normal(size=(n, 70)).astype(np.float32)
    y = np.stack([np.convolve(xi, f[::-1], mode="valid") for xi in x]).astype(np.float32)
    return x, y


def conv_symmetry(path):
    """An MSR layer with U [68 * 70, 3]: W[p, p + q] = v[q], adapted by Gauss-Newton."""
    U = np.zeros((68, 70, 3), np.float32)
    for p in range(68):
        for q in range(3):
            U[p, p + q, q] = 1.0
    msr.export(path, [{"U": U.reshape(68 * 70, 3), "v": np.zeros(3), "outputs": 68, "lr": 1.0}],
               dampings=[1e-3], name="rank1-symmetry", task_family="rank1")


rng = np.random.default_rng(0)
f = rng.normal(size=3)
x_support, y_support = task(rng, 10, f)
x_query, y_query = task(rng, 100, f)

# --- the five lines ---
conv_symmetry("rank1-symmetry.msr")
model = msr.Model.load("rank1-symmetry.msr")
with model.session() as s:
    before = float(np.mean((s.predict(x_query) - y_query) ** 2))
    s.adapt(x_support, y_support)
    y_pred = s.predict(x_query)
# ----------------------

after = float(np.mean((y_pred - y_query) ** 2))
print(model)
print(f"query MSE before adapting {before:.4f}, after adapting to 10 examples {after:.2e}")
assert after < 1e-3 * before, "adaptation did not help"
