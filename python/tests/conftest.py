import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import libmsr  # noqa: E402

import msr  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RANK1 = ROOT / "tests" / "compat" / "rank1-v1.msr"  # trainer-written, format version 1
PANDA = ROOT / "robots" / "panda" / "msr-head.msr"  # trainer-written, Gauss-Newton, normalised


@pytest.fixture(scope="session")
def lib():
    """libmsr through ctypes. Skipped where it is not built, unless MSR_REQUIRE_LIBMSR=1 (CI)."""
    path = libmsr.find()
    if path is None:
        if os.environ.get("MSR_REQUIRE_LIBMSR") == "1":
            pytest.fail("libmsr.so not found (set MSR_LIBMSR or build msr-ffi)")
        pytest.skip("libmsr.so not built (cargo build --release -p msr-ffi)")
    return libmsr.Lib(path)


@pytest.fixture(scope="session")
def rank1():
    return msr.Model.load(RANK1)


@pytest.fixture(scope="session")
def panda():
    return msr.Model.load(PANDA)


def classifier_description(seed=0, inputs=6, hidden=8, classes=4, k=5):
    """A small MSR classifier as msr.export takes it (two MSR dense layers)."""
    rng = np.random.default_rng(seed)
    return dict(
        layers=[
            {"U": rng.normal(0, 0.3, (hidden * inputs, k)), "v": rng.normal(size=k),
             "bias": np.zeros(hidden), "lr": 0.5},
            {"U": rng.normal(0, 0.3, (classes * hidden, k)), "v": rng.normal(size=k),
             "bias": np.zeros(classes), "lr": 0.5},
        ],
        activation="tanh", loss="cross-entropy", inner_steps=3, name="test-classifier",
    )


@pytest.fixture(scope="session")
def classifier_bytes():
    return msr.export_bytes(**classifier_description())


@pytest.fixture(scope="session")
def classifier(classifier_bytes):
    return msr.Model.from_bytes(classifier_bytes)


def data(model, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, model.inputs)).astype(np.float32)
    y = rng.normal(size=(n, model.outputs)).astype(np.float32)
    return x, y
