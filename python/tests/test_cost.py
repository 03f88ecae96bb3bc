"""Session.cost: the bound of each call (as msr_session_cost), and sessions past it refused."""

import numpy as np
import pytest

import msr


def test_costs_grow_with_the_work(rank1):
    s = rank1.session()
    assert 0 < s.cost("predict", 1) < s.cost("predict", 10) < s.cost("adapt", 10)
    assert s.cost("state") > 0
    with pytest.raises(msr.InvalidArgumentError, match="Gauss-Newton"):
        s.cost("observe")
    with pytest.raises(msr.InvalidArgumentError, match="unknown call"):
        s.cost("train", 1)
    s.set_inner("gauss-newton")
    assert s.cost("observe", 1) > s.cost("predict", 1)


def test_a_session_whose_calls_exceed_the_limit_is_refused():
    # Two 2048-wide dense layers: 1000 SGD steps are ~25 G multiply-adds per example.
    w = np.full((2048, 2048), 1e-3, dtype=np.float32)
    layers = [{"W": w, "bias": np.zeros(2048), "lr": 0.01} for _ in range(2)]
    model = msr.Model.from_bytes(msr.export_bytes(layers, activation="tanh"))
    with pytest.raises(msr.InvalidArgumentError, match="work of adapt"):
        model.session(inner_steps=1000)
    assert model.session(inner_steps=2).cost("adapt", 1) < 2**34
