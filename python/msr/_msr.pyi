"""Type hints of the extension module msr._msr (the engine: msr-core, as in libmsr)."""

from os import PathLike
from typing import Any, Literal, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
F32 = npt.NDArray[np.float32]
Inner = Literal["sgd", "gauss-newton", "sgd+gauss-newton"]

class Model:
    """A model loaded from a .msr file. Immutable; share it freely across threads."""

    @staticmethod
    def load(path: Union[str, PathLike[str]]) -> Model:
        """Loads and checks a .msr file (magic, version, CRC, shapes, limits).

        Raises IoError (unreadable), FormatError (corrupted, truncated, inconsistent),
        VersionError (a newer format), OutOfMemoryError."""
    @staticmethod
    def from_bytes(data: bytes) -> Model:
        """Loads a model from the bytes of a .msr file (copied)."""
    def to_bytes(self) -> bytes:
        """The model as a .msr file, re-encoded in the current format version."""
    @property
    def inputs(self) -> int:
        """Floats per input example."""
    @property
    def outputs(self) -> int:
        """Floats per output example (classes, for a classifier)."""
    @property
    def kind(self) -> Literal["regression", "classification"]:
        """"regression" (adapt with Session.adapt) or "classification" (adapt_labels)."""
    @property
    def loss(self) -> Literal["mse", "cross-entropy"]:
        """The loss adaptation minimises."""
    @property
    def adapted_len(self) -> int:
        """Adapted parameters per task: every layer's v and biases."""
    @property
    def inner_steps(self) -> int:
        """Inner SGD steps the model was meta-trained with (the sessions' default)."""
    @property
    def layers(self) -> int:
        """Number of layers."""
    @property
    def state_len(self) -> int:
        """Bytes of a saved session state."""
    @property
    def adapts_by(self) -> Inner:
        """How its sessions adapt by default: "sgd", "gauss-newton" (the file has a solver
        record) or "sgd+gauss-newton" (a refine record)."""
    @property
    def refine(self) -> Optional[Tuple[int, float]]:
        """(Gauss-Newton steps after SGD, their damping) of a refine record, or None."""
    @property
    def normalization(self) -> Optional[dict[str, Optional[Tuple[F32, F32]]]]:
        """None, or {"input": (mean, scale) or None, "output": (mean, scale) or None}: the
        network sees (x - mean) / scale; callers pass and receive raw units."""
    @property
    def fingerprint(self) -> int:
        """The file's CRC-32: ties saved states to this model."""
    @property
    def name(self) -> str: ...
    @property
    def task_family(self) -> str: ...
    def session_bytes(self, capacity: Optional[int] = None) -> int:
        """Bytes a session with this chunk capacity allocates (None: 32)."""
    def session(
        self,
        capacity: Optional[int] = None,
        inner: Optional[Inner] = None,
        damping: float = 1.0,
        inner_steps: Optional[int] = None,
        lr_scale: Optional[float] = None,
        backend: Literal["cpu", "gpu", "cpu-burn"] = "cpu",
    ) -> Session:
        """A session at the meta-learned initialisation; all its memory is allocated here.

        capacity: examples per chunk (the workspace; any n is accepted), None = 32, at most
        65536. inner: the adaptation algorithm (None: the model's, see adapts_by); damping
        multiplies the model's per-layer Gauss-Newton dampings. inner_steps: None = the
        model's, at most 1000. lr_scale: multiplies every layer's learning rate. backend:
        only "cpu" in this package (the others raise BackendError).
        Raises InvalidArgumentError for an option out of range."""
    def describe(self) -> dict[str, Any]:
        """Everything the file holds, as the keyword arguments of msr.export:
        ``msr.export(path, **model.describe())`` writes the same model."""

class Session:
    """One task's adapted state. One thread at a time: a call while another thread is in a
    call on the same session raises BusyError and does nothing. A context manager (closes).

    Arrays: x [n, inputs], y [n, outputs], 2-D. C-contiguous float32 is read in place (no
    copy); other float and integer arrays (and array-likes) are converted; other dtypes
    raise DTypeError, wrong shapes ShapeError. The GIL is released while computing. A
    failed call leaves the session as it was."""

    def adapt(self, x: ArrayLike, y: ArrayLike) -> float:
        """Adapts the meta-learned initialisation to a regression support set (with the
        session's algorithm); returns the support loss after adapting. Raises
        NonFiniteError (NaN or inf in the data), DivergedError (rolled back),
        UnsupportedError (a classifier), ShapeError, InvalidArgumentError (n = 0)."""
    def adapt_labels(self, x: ArrayLike, labels: ArrayLike) -> float:
        """Adapts a classifier: labels [n] integers in [0, outputs). Returns the loss."""
    def predict(self, x: ArrayLike, out: Optional[F32] = None) -> F32:
        """[n, outputs] float32 (logits for a classifier) with the current parameters;
        into ``out`` (C-contiguous float32 [n, outputs]) when given."""
    def observe(self, x: ArrayLike, y: ArrayLike) -> None:
        """Folds examples into the adaptation (recursive least squares of the Gauss-Newton
        system). Needs Gauss-Newton on (set_inner) and at most 2048 adapted parameters."""
    def refine(self, x: ArrayLike, y: ArrayLike, steps: int = 1) -> float:
        """Adapts from the current parameters with ``steps`` steps; returns the loss."""
    def set_inner(self, inner: Inner, damping: float = 1.0) -> None:
        """Chooses how the session adapts; allocates the Gauss-Newton buffers (set-up time)."""
    def set_forgetting(self, gamma: float) -> None:
        """Forgetting factor of observe, in (0, 1] (1: nothing forgotten)."""
    def reset(self) -> None:
        """Back to the meta-learned initialisation."""
    def save_state(self) -> bytes:
        """The adapted parameters (model.state_len bytes)."""
    def load_state(self, data: bytes) -> None:
        """Restores a state saved from a session of the same model; another model's, a
        corrupted or a truncated one raises FormatError and changes nothing."""
    @property
    def inner(self) -> Inner:
        """How the session adapts now."""
    @property
    def inner_steps(self) -> int: ...
    def cost(self, call: str, n: int = 1) -> int:
        """The most work (multiply-adds) `call` ("predict", "adapt", "observe", "state") on
        `n` examples does with the session's options: the bound every call is checked
        against."""
    @property
    def model(self) -> Model: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None:
        """Frees the buffers; later calls raise ClosedError. Closing twice is fine."""
    def __enter__(self) -> Session: ...
    def __exit__(self, *exc: object) -> bool: ...

def _encode(description: dict[str, Any]) -> bytes: ...
def _core_version() -> str: ...
