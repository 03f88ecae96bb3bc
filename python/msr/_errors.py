"""The exceptions of msr: one class per status of the C ABI (`msr_status`, include/msr.h).

Every exception derives from :class:`msr.Error` and carries ``status`` (the C status code)
and ``kind`` (its name without the prefix); where a built-in exception means the same thing
it is a base too, so ``except ValueError`` catches a wrong shape.
"""


class Error(Exception):
    """Base class of every msr error."""

    #: The C ABI's status code (``MSR_ERR_*``).
    status = -100
    #: The status's name, e.g. "BUSY".
    kind = "INTERNAL"


class ClosedError(Error):
    """The session was closed (the C ABI's freed session, a NULL pointer)."""

    status, kind = -1, "NULL"


class InvalidArgumentError(Error, ValueError):
    """An argument is out of range: n = 0, an unknown option, a label out of range."""

    status, kind = -2, "INVALID_ARGUMENT"


class ShapeError(InvalidArgumentError):
    """Data of the wrong shape (x [n, inputs], y [n, outputs], labels [n])."""


class DTypeError(InvalidArgumentError, TypeError):
    """Data of a dtype msr does not convert (floats and integers are converted to float32)."""


class NonFiniteError(Error, ValueError):
    """The data holds NaN or infinity, or a prediction overflowed."""

    status, kind = -3, "NON_FINITE"


class FormatError(Error, ValueError):
    """The model file (or saved state) is corrupted, truncated or inconsistent."""

    status, kind = -4, "FORMAT"


class VersionError(Error):
    """The model file (or saved state) has a version (or a required record) this build does not read."""

    status, kind = -5, "VERSION"


class IoError(Error, OSError):
    """A file could not be read."""

    status, kind = -6, "IO"


class DivergedError(Error, ArithmeticError):
    """Adaptation diverged; the session was rolled back."""

    status, kind = -7, "DIVERGED"


class BackendError(Error):
    """The backend is not available in this build (the package runs the CPU engine)."""

    status, kind = -8, "BACKEND"


class UnsupportedError(Error):
    """The operation does not apply to this model (labels for a regression model...)."""

    status, kind = -9, "UNSUPPORTED"


class BusyError(Error):
    """Another thread is inside a call on the same session; nothing was done."""

    status, kind = -10, "BUSY"


class OutOfMemoryError(Error, MemoryError):
    """Memory could not be allocated; nothing was changed."""

    status, kind = -11, "OUT_OF_MEMORY"


class InternalError(Error):
    """A bug: an internal panic was caught. Please report it with the message."""

    status, kind = -100, "INTERNAL"


#: Every error class by C status (ShapeError and DTypeError refine INVALID_ARGUMENT).
BY_STATUS = {
    c.status: c
    for c in (
        ClosedError, InvalidArgumentError, NonFiniteError, FormatError, VersionError,
        IoError, DivergedError, BackendError, UnsupportedError, BusyError,
        OutOfMemoryError, InternalError,
    )
}
