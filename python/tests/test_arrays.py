"""C-contiguous float32 input is read in place; other input is converted (or refused)."""

import tracemalloc

import numpy as np

import msr
from conftest import data


def peak_bytes(call):
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_no_copy_for_c_contiguous_float32(rank1):
    s = rank1.session(capacity=256)
    x, y = data(rank1, 20000, seed=21)  # 5.6 MB each
    out = np.empty((len(x), rank1.outputs), np.float32)
    s.predict(x, out=out)  # warm up
    # predict into `out`, adapt: neither copies x or y (numpy's buffers are traced).
    assert peak_bytes(lambda: s.predict(x, out=out)) < 64 << 10
    assert peak_bytes(lambda: s.adapt(x, y)) < 64 << 10
    # The same calls on float64 or Fortran-ordered input convert it: a copy the size of x.
    assert peak_bytes(lambda: s.predict(x.astype(np.float64), out=out)) > x.nbytes
    xf = np.asfortranarray(x)
    assert peak_bytes(lambda: s.predict(xf, out=out)) >= x.nbytes


def test_conversions_give_the_same_numbers(rank1):
    s = rank1.session()
    x, y = data(rank1, 12, seed=22)
    x = np.round(x * 4) / 4  # exactly representable in float16 and float32
    ref = s.predict(x)
    for other in (x.astype(np.float64), x.astype(np.float16), np.asfortranarray(x),
                  x.tolist(), x[::1, :][:, ::1].copy(order="F")):
        np.testing.assert_array_equal(s.predict(other), ref)
    ints = np.arange(12 * rank1.inputs).reshape(12, rank1.inputs) % 3
    np.testing.assert_array_equal(s.predict(ints), s.predict(ints.astype(np.float32)))
    strided = np.repeat(x, 2, axis=0)[::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(s.predict(strided), ref)


def test_predict_returns_a_fresh_float32_array(rank1):
    s = rank1.session()
    x, _ = data(rank1, 3)
    a, b = s.predict(x), s.predict(x)
    assert a.dtype == np.float32 and a.shape == (3, rank1.outputs) and a.flags.c_contiguous
    assert a is not b and not np.shares_memory(a, b)
    out = np.zeros((3, rank1.outputs), np.float32)
    assert s.predict(x, out=out) is out
    np.testing.assert_array_equal(out, a)
