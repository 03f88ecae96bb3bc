"""msr: meta-learned symmetries by reparameterisation, in Python.

Load a ``.msr`` model, adapt it to a task's few examples, predict::

    import msr
    model = msr.Model.load("model.msr")
    with model.session() as s:
        s.adapt(x_support, y_support)      # float32 [n, inputs], [n, outputs]
        y = s.predict(x_query)             # float32 [m, outputs]

The engine is libmsr's (msr-core, the allocation-free CPU engine): the same numbers as the
C ABI. ``msr.export`` writes a ``.msr`` file from numpy arrays (a model meta-trained in JAX
or PyTorch). See docs/python.md.
"""

from ._msr import Model, Session, _core_version
from ._errors import (
    Error, ClosedError, InvalidArgumentError, ShapeError, DTypeError, NonFiniteError,
    FormatError, VersionError, IoError, DivergedError, BackendError, UnsupportedError,
    BusyError, OutOfMemoryError, InternalError,
)
from ._export import export, export_bytes

__version__ = _core_version()

__all__ = [
    "Model", "Session", "export", "export_bytes",
    "Error", "ClosedError", "InvalidArgumentError", "ShapeError", "DTypeError",
    "NonFiniteError", "FormatError", "VersionError", "IoError", "DivergedError",
    "BackendError", "UnsupportedError", "BusyError", "OutOfMemoryError", "InternalError",
]
