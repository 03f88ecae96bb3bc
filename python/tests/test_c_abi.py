"""The package computes what the C ABI computes: same model, same data, same numbers."""

import numpy as np
import pytest

import msr
from conftest import PANDA, RANK1, data
import libmsr

RTOL = 1e-6


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)


def pair(lib, path_or_bytes, **opts):
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    model = msr.Model.from_bytes(raw)
    py = model.session(**{k: v for k, v in opts.items()})
    c = libmsr.CModel(lib, raw).session(**opts)
    return model, py, c


@pytest.mark.parametrize("path", [RANK1, PANDA], ids=["rank1", "panda"])
def test_info_equals_c(lib, path):
    model = msr.Model.load(path)
    info = libmsr.CModel(lib, open(path, "rb").read()).info
    assert (model.inputs, model.outputs, model.adapted_len, model.inner_steps, model.layers,
            model.state_len) == (info.input_len, info.output_len, info.adapted_len,
                                 info.inner_steps, info.layers, info.state_len)


@pytest.mark.parametrize("path,n", [(RANK1, 10), (RANK1, 100), (PANDA, 20)], ids=["rank1-10", "rank1-100", "panda-20"])
def test_adapt_predict_equal_c(lib, path, n):
    model, py, c = pair(lib, path)
    x, y = data(model, n, seed=1)
    q, _ = data(model, 50, seed=2)
    close(py.predict(q), c.predict(q))  # before adapting
    lp, lc = py.adapt(x, y), c.adapt(x, y)
    assert lp == pytest.approx(lc, rel=RTOL)
    out = py.predict(q)
    close(out, c.predict(q))
    assert not np.allclose(out, model.session().predict(q)), "adapting changed nothing"
    assert py.save_state() == c.save_state()


def test_options_equal_c(lib):
    model, py, c = pair(lib, RANK1, inner_steps=5, lr_scale=0.5, capacity=7)
    x, y = data(model, 20, seed=3)
    assert py.adapt(x, y) == pytest.approx(c.adapt(x, y), rel=RTOL)
    close(py.predict(x), c.predict(x))


def test_gauss_newton_refine_observe_equal_c(lib):
    model, py, c = pair(lib, RANK1)
    x, y = data(model, 30, seed=4)
    py.set_inner("gauss-newton", damping=0.5)
    c.set_inner(1, 0.5)
    assert py.inner == "gauss-newton"
    assert py.adapt(x, y) == pytest.approx(c.adapt(x, y), rel=RTOL)
    assert py.refine(x[:10], y[:10], steps=2) == pytest.approx(c.refine(x[:10], y[:10], 2), rel=RTOL)
    close(py.predict(x), c.predict(x))
    py.set_forgetting(0.9)
    c.set_forgetting(0.9)
    py.reset()
    c.lib.check(c.lib.c.msr_session_reset(c.p))
    for i in range(0, 30, 3):
        py.observe(x[i:i + 3], y[i:i + 3])
        c.observe(x[i:i + 3], y[i:i + 3])
    close(py.predict(x), c.predict(x))
    assert py.save_state() == c.save_state()


def test_sgd_then_gauss_newton_equal_c(lib):
    model, py, c = pair(lib, RANK1)
    py.set_inner("sgd+gauss-newton", 2.0)
    c.set_inner(2, 2.0)
    x, y = data(model, 15, seed=5)
    assert py.adapt(x, y) == pytest.approx(c.adapt(x, y), rel=RTOL)
    close(py.predict(x), c.predict(x))


def test_panda_gauss_newton_default_equal_c(lib, panda):
    assert panda.adapts_by == "gauss-newton"
    model, py, c = pair(lib, PANDA)
    assert py.inner == "gauss-newton"
    x, y = data(model, 40, seed=6)
    assert py.adapt(x, y) == pytest.approx(c.adapt(x, y), rel=RTOL)
    close(py.predict(x), c.predict(x))


def test_labels_equal_c(lib, classifier_bytes):
    model, py, c = pair(lib, classifier_bytes)
    assert model.kind == "classification"
    rng = np.random.default_rng(7)
    x = rng.normal(size=(25, model.inputs)).astype(np.float32)
    labels = rng.integers(0, model.outputs, 25)
    assert py.adapt_labels(x, labels) == pytest.approx(c.adapt_labels(x, labels), rel=RTOL)
    close(py.predict(x), c.predict(x))


def test_save_load_state_round_trip(rank1):
    x, y = data(rank1, 10, seed=8)
    a, b = rank1.session(), rank1.session()
    a.adapt(x, y)
    state = a.save_state()
    assert isinstance(state, bytes) and len(state) == rank1.state_len
    b.load_state(state)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    b.reset()
    np.testing.assert_array_equal(b.predict(x), rank1.session().predict(x))
