"""msr.export: numpy arrays to a .msr file, checked by the loader every file goes through."""

import numpy as np
import pytest

import msr
from conftest import PANDA, RANK1, classifier_description, data


@pytest.mark.parametrize("path", [RANK1, PANDA], ids=["rank1-v1", "panda-v2"])
def test_trainer_files_round_trip(tmp_path, path):
    """Exporting a trainer-written file's own arrays gives the file back: byte-identical for
    a current (version 2) file, equal on load (and byte-identical to its re-encoding) for a
    version 1 file, which is written back as version 2."""
    raw = path.read_bytes()
    model = msr.Model.from_bytes(raw)
    out = tmp_path / "again.msr"
    again = msr.export(out, **model.describe())
    assert out.read_bytes() == model.to_bytes()
    if raw[4:6] == (2).to_bytes(2, "little"):
        assert out.read_bytes() == raw
    d1, d2 = model.describe(), again.describe()
    assert d1.keys() == d2.keys()
    for l1, l2 in zip(d1["layers"], d2["layers"]):
        for a, b in zip(l1["shared"] + l1["adapted0"], l2["shared"] + l2["adapted0"]):
            np.testing.assert_array_equal(a, b)
    x, y = data(model, 16, seed=31)
    s1, s2 = model.session(), again.session()
    assert s1.adapt(x, y) == s2.adapt(x, y)
    np.testing.assert_array_equal(s1.predict(x), s2.predict(x))


def test_rank1_from_its_arrays(tmp_path, rank1):
    """The user's path: U, v0, bias and lr as plain arrays (as JAX or PyTorch hold them)."""
    layer = rank1.describe()["layers"][0]
    assert layer["op"] == "share_linear" and layer["shared"][0].ndim == 2
    U = layer["shared"][0].astype(np.float64)  # other dtypes are converted
    (v,) = layer["adapted0"]  # rank1 has no bias: its width is given instead
    assert not layer["bias"]
    model = msr.export(tmp_path / "m.msr", [{"U": U, "v": v, "outputs": 68, "lr": layer["lr"]}],
                       inner_steps=rank1.inner_steps, name=rank1.name, task_family="rank1",
                       trainer_version="0.1.0")
    assert (model.inputs, model.outputs, model.adapted_len) == (rank1.inputs, rank1.outputs, rank1.adapted_len)
    x, y = data(rank1, 10, seed=32)
    s1, s2 = rank1.session(), model.session()
    assert s1.adapt(x, y) == s2.adapt(x, y)
    np.testing.assert_array_equal(s1.predict(x), s2.predict(x))
    assert model.to_bytes() == rank1.to_bytes()  # the same record, field for field


def test_records_and_normalisation(tmp_path):
    rng = np.random.default_rng(33)
    layers = [{"U": rng.normal(0, 0.3, (8 * 3, 4)), "v": rng.normal(size=4), "bias": np.zeros(8), "lr": 0.1},
              {"W": rng.normal(0, 0.3, (2, 8)), "bias": np.zeros(2), "lr": 0.1}]
    norm = {"input": (np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 4.0])),
            "output": (np.array([0.5, -0.5]), np.array([3.0, 3.0]))}
    m = msr.export(tmp_path / "n.msr", layers, normalize=norm, refine=(2, 0.5), inner_steps=2,
                   activation="relu")
    assert m.adapts_by == "sgd+gauss-newton" and m.refine == (2, 0.5)
    mean, scale = m.normalization["output"]
    np.testing.assert_array_equal(scale, [3.0, 3.0])
    assert m.session().inner == "sgd+gauss-newton"
    g = msr.export(tmp_path / "g.msr", layers, dampings=[0.5, 2.0])
    assert g.adapts_by == "gauss-newton"
    np.testing.assert_allclose(np.exp(g.describe()["log_damping"]), [0.5, 2.0], rtol=1e-6)


def test_classifier_export(classifier):
    assert classifier.kind == "classification" and classifier.loss == "cross-entropy"
    assert classifier.inner_steps == 3 and classifier.name == "test-classifier"


BAD = [
    ("u-rows", lambda d: d["layers"][0].update(U=np.zeros((47, 5))), msr.ShapeError),
    ("chain", lambda d: d["layers"][1].update(U=np.zeros((4 * 9, 5))), msr.ShapeError),
    ("nan", lambda d: d["layers"][0]["v"].__setitem__(0, np.nan), msr.FormatError),
    ("activation", lambda d: d.update(activation="swish"), msr.InvalidArgumentError),
    ("loss", lambda d: d.update(loss="hinge"), msr.InvalidArgumentError),
    ("refine-steps", lambda d: d.update(loss="mse", refine=(99, 1.0)), msr.FormatError),
    ("strings", lambda d: d["layers"][0].update(v=np.array(["a"] * 5)), msr.DTypeError),
    ("no-params", lambda d: d["layers"][0].pop("U"), msr.InvalidArgumentError),
]


@pytest.mark.parametrize("name,change,error", BAD, ids=[b[0] for b in BAD])
def test_bad_export_raises_and_writes_nothing(tmp_path, name, change, error):
    d = classifier_description()
    change(d)
    path = tmp_path / "bad.msr"
    with pytest.raises(error):
        msr.export(path, **d)
    assert list(tmp_path.iterdir()) == []
