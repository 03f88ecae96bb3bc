"""Bad input raises the exception of its C status, and changes nothing."""

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import msr
from msr._errors import BY_STATUS
from conftest import RANK1, data

HEADER = Path(__file__).resolve().parents[2] / "include" / "msr.h"


def test_every_c_status_has_its_class():
    statuses = {int(v) for v in re.findall(r"MSR_ERR_\w+ = (-\d+)", HEADER.read_text())}
    assert statuses and statuses == set(BY_STATUS)
    for status, cls in BY_STATUS.items():
        assert issubclass(cls, msr.Error) and cls.status == status
        assert f"MSR_ERR_{cls.kind} = {status}" in HEADER.read_text()
    assert len({c.kind for c in BY_STATUS.values()}) == len(BY_STATUS)


@pytest.fixture
def adapted(rank1):
    """An adapted session, its support set and its state (to check nothing changed)."""
    s = rank1.session()
    x, y = data(rank1, 10, seed=11)
    s.adapt(x, y)
    return s, x, y, s.save_state(), s.predict(x)


def unchanged(s, x, state, before):
    assert s.save_state() == state
    np.testing.assert_array_equal(s.predict(x), before)


def nan(a):
    a = a.copy()
    a[1, 2] = np.nan
    return a


BAD = [
    ("x-columns", lambda s, x, y: s.adapt(x[:, :5], y), msr.ShapeError),
    ("y-columns", lambda s, x, y: s.adapt(x, y[:, :5]), msr.ShapeError),
    ("rows-differ", lambda s, x, y: s.adapt(x, y[:4]), msr.ShapeError),
    ("x-1d", lambda s, x, y: s.predict(x[0]), msr.ShapeError),
    ("x-3d", lambda s, x, y: s.predict(x[None]), msr.ShapeError),
    ("x-complex", lambda s, x, y: s.adapt(x.astype(np.complex64), y), msr.DTypeError),
    ("x-strings", lambda s, x, y: s.predict(x.astype(str)), msr.DTypeError),
    ("x-object", lambda s, x, y: s.predict(x.astype(object)), msr.DTypeError),
    ("x-nan", lambda s, x, y: s.adapt(nan(x), y), msr.NonFiniteError),
    ("y-inf", lambda s, x, y: s.adapt(x, nan(y) * np.inf), msr.NonFiniteError),
    ("predict-nan", lambda s, x, y: s.predict(nan(x)), msr.NonFiniteError),
    ("empty", lambda s, x, y: s.adapt(x[:0], y[:0]), msr.InvalidArgumentError),
    ("labels-on-regression", lambda s, x, y: s.adapt_labels(x, np.zeros(10, int)), msr.UnsupportedError),
    ("unknown-inner", lambda s, x, y: s.set_inner("adam"), msr.InvalidArgumentError),
    ("bad-damping", lambda s, x, y: s.set_inner("gauss-newton", -1.0), msr.InvalidArgumentError),
    ("observe-without-gn", lambda s, x, y: s.observe(x, y), msr.InvalidArgumentError),
    ("forgetting-0", lambda s, x, y: s.set_forgetting(0.0), msr.InvalidArgumentError),
    ("refine-steps", lambda s, x, y: s.refine(x, y, steps=100000), msr.InvalidArgumentError),
    ("refine-negative", lambda s, x, y: s.refine(x, y, steps=-1), msr.InvalidArgumentError),
    ("state-garbage", lambda s, x, y: s.load_state(b"\0" * 40), msr.FormatError),
    ("state-truncated", lambda s, x, y: s.load_state(s.save_state()[:-1]), msr.FormatError),
    ("out-shape", lambda s, x, y: s.predict(x, out=np.empty((3, 3), np.float32)), msr.ShapeError),
]


@pytest.mark.parametrize("name,call,error", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_and_changes_nothing(adapted, name, call, error):
    s, x, y, state, before = adapted
    with pytest.raises(error) as e:
        call(s, x, y)
    assert e.value.status == error.status and str(e.value)
    unchanged(s, x, state, before)


def test_builtin_bases(adapted):
    s, x, y, _, _ = adapted
    with pytest.raises(ValueError):
        s.predict(x[:, :3])
    with pytest.raises(TypeError):
        s.predict(x.astype(np.complex64))


def test_label_out_of_range(classifier):
    s = classifier.session()
    x = np.zeros((3, classifier.inputs), np.float32)
    state = s.save_state()
    for labels in ([0, 1, classifier.outputs], [0, -1, 1], [0, 1, 2**40]):
        with pytest.raises(msr.InvalidArgumentError, match="outside"):
            s.adapt_labels(x, np.array(labels))
    with pytest.raises(msr.DTypeError):
        s.adapt_labels(x, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(msr.UnsupportedError):
        s.adapt(x, np.zeros((3, classifier.outputs), np.float32))
    with pytest.raises(msr.UnsupportedError):
        s.observe(x, np.zeros((3, classifier.outputs), np.float32))
    assert s.save_state() == state


def test_closed_session(rank1):
    x, y = data(rank1, 4)
    with rank1.session() as s:
        s.adapt(x, y)
    assert s.closed
    for call in (lambda: s.adapt(x, y), lambda: s.predict(x), s.reset, s.save_state,
                 lambda: s.set_inner("sgd")):
        with pytest.raises(msr.ClosedError) as e:
            call()
        assert e.value.status == -1
    s.close()  # twice is fine


def test_session_options_refused(rank1):
    with pytest.raises(msr.InvalidArgumentError, match="capacity"):
        rank1.session(capacity=1 << 20)
    with pytest.raises(msr.InvalidArgumentError, match="inner_steps"):
        rank1.session(inner_steps=1001)
    with pytest.raises(msr.InvalidArgumentError, match="lr_scale"):
        rank1.session(lr_scale=float("nan"))
    with pytest.raises(msr.InvalidArgumentError, match="backend"):
        rank1.session(backend="tpu")
    with pytest.raises(msr.BackendError):
        rank1.session(backend="gpu")


def test_corrupted_files(tmp_path):
    raw = bytearray(RANK1.read_bytes())
    flipped = raw.copy()
    flipped[len(raw) // 2] ^= 0x40
    with pytest.raises(msr.FormatError, match="checksum"):
        msr.Model.from_bytes(bytes(flipped))
    with pytest.raises(msr.FormatError, match="truncated"):
        msr.Model.from_bytes(bytes(raw[:-3]))
    with pytest.raises(msr.FormatError, match="magic"):
        msr.Model.from_bytes(b"not a model at all")
    newer = raw.copy()
    newer[4:6] = (99).to_bytes(2, "little")
    with pytest.raises(msr.VersionError):
        msr.Model.from_bytes(bytes(newer))
    path = tmp_path / "bad.msr"
    path.write_bytes(bytes(flipped))
    with pytest.raises(msr.FormatError):
        msr.Model.load(path)
    with pytest.raises(msr.IoError) as e:
        msr.Model.load(tmp_path / "missing.msr")
    assert isinstance(e.value, OSError)


def test_state_of_another_model(rank1, panda):
    s = rank1.session()
    with pytest.raises(msr.FormatError):
        s.load_state(panda.session().save_state())


def test_diverged_rolls_back(rank1):
    s = rank1.session(lr_scale=1e6, inner_steps=20)
    x, y = data(rank1, 10, seed=12)
    state, before = s.save_state(), s.predict(x)
    with pytest.raises(msr.DivergedError) as e:
        s.adapt(x * 100, y * 100)
    assert isinstance(e.value, ArithmeticError)
    unchanged(s, x, state, before)


def test_busy_from_two_threads(rank1):
    """While one thread adapts (the GIL released), another thread's call on the same session
    raises BusyError at once and changes nothing; the adapting thread finishes normally."""
    s = rank1.session(capacity=1024, inner_steps=200)
    x, y = data(rank1, 4096, seed=13)
    q = x[:8]
    before = s.predict(q)
    results, busy, started = [], [], threading.Event()

    def adapt():
        started.set()
        results.append(s.adapt(x, y))

    t = threading.Thread(target=adapt)
    t.start()
    started.wait()
    deadline = time.monotonic() + 10
    while t.is_alive() and time.monotonic() < deadline:
        try:
            s.predict(q)
        except msr.BusyError as e:
            busy.append(e)
            assert e.status == -10
    t.join()
    assert busy, "the second thread never saw the session busy (GIL held during adapt?)"
    assert len(results) == 1 and np.isfinite(results[0])
    assert not np.array_equal(s.predict(q), before)


def test_out_of_memory_in_a_small_address_space(tmp_path):
    """A session that cannot be allocated is OutOfMemoryError (a MemoryError), not an abort."""
    code = f"""
import resource, msr
m = msr.Model.load({str(RANK1)!r})
need = m.session_bytes(65536)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + need // 4, hard))
try:
    m.session(capacity=65536)
except msr.OutOfMemoryError as e:
    assert isinstance(e, MemoryError) and e.status == -11
    print('OOM-OK', e)
"""
    # Run outside the source tree, so that `import msr` is the installed package.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert "OOM-OK" in out.stdout, out.stdout + out.stderr


def test_out_aliasing_or_read_only_is_refused(rank1):
    s = rank1.session()
    x, _ = data(rank1, 3)
    ro = np.zeros((3, rank1.outputs), np.float32)
    ro.flags.writeable = False
    with pytest.raises(msr.InvalidArgumentError, match="out cannot be written"):
        s.predict(x, out=ro)
    assert not ro.any()
