from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union
from os import PathLike

from ._msr import Model as Model, Session as Session
from ._errors import (
    Error as Error, ClosedError as ClosedError, InvalidArgumentError as InvalidArgumentError,
    ShapeError as ShapeError, DTypeError as DTypeError, NonFiniteError as NonFiniteError,
    FormatError as FormatError, VersionError as VersionError, IoError as IoError,
    DivergedError as DivergedError, BackendError as BackendError,
    UnsupportedError as UnsupportedError, BusyError as BusyError,
    OutOfMemoryError as OutOfMemoryError, InternalError as InternalError,
)

__version__: str

def export(path: Union[str, PathLike[str]], layers: Iterable[Mapping[str, Any]], *,
           activation: Union[str, Sequence[str]] = ..., input: Optional[Union[int, Sequence[int]]] = ...,
           loss: str = ..., normalize: Optional[Mapping[str, Any]] = ...,
           dampings: Optional[Any] = ..., log_damping: Optional[Any] = ...,
           refine: Optional[Tuple[int, float]] = ..., inner_steps: int = ..., name: str = ...,
           task_family: str = ..., trainer_version: Optional[str] = ...,
           records: Iterable[Tuple[str, bool, bytes]] = ...) -> Model:
    """Writes a .msr file from numpy arrays (checked by the loader first); returns it loaded."""

def export_bytes(layers: Iterable[Mapping[str, Any]], **kwargs: Any) -> bytes:
    """The bytes msr.export would write."""
