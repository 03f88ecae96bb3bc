"""msr.export: a .msr model file from numpy arrays (a model meta-trained elsewhere)."""

import math
import os

import numpy as np

from ._msr import Model, _encode, _core_version
from ._errors import ShapeError, InvalidArgumentError


def _f32(a, what):
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        from ._errors import DTypeError
        raise DTypeError(f"{what} has dtype {a.dtype}; parameters are float32")
    return np.ascontiguousarray(a, dtype=np.float32)


def _layer(i, spec, inputs, activation):
    """One layer's description (the dict `_encode` takes) and its output width."""
    spec = dict(spec)
    if "op" in spec:  # already a description (Model.describe's form)
        spec.setdefault("activation", activation)
        return spec, None
    lr = float(spec.get("lr", 0.0))
    bias = spec.get("bias")
    if "U" in spec:
        U = _f32(spec["U"], f"layer {i} U")
        v = _f32(spec["v"], f"layer {i} v").ravel()
        if U.ndim != 2 or U.shape[1] != v.size:
            raise ShapeError(f"layer {i}: U must be [outputs * inputs, k] with k = len(v) = {v.size}, got {U.shape}")
        outputs = int(np.asarray(bias).size) if bias is not None else spec.get("outputs")
        if outputs is None:
            raise InvalidArgumentError(f"layer {i}: without a bias, say its width with 'outputs'")
        if U.shape[0] % outputs:
            raise ShapeError(f"layer {i}: U has {U.shape[0]} rows, not a multiple of its {outputs} outputs")
        n_in = U.shape[0] // outputs
        if inputs is not None and n_in != inputs:
            raise ShapeError(f"layer {i}: U implies {n_in} inputs, the layer before gives {inputs}")
        desc = {"op": "share_linear", "inputs": n_in, "outputs": outputs, "k": v.size,
                "bias": bias is not None, "shared": [U], "adapted0": [v]}
    elif "W" in spec:
        W = _f32(spec["W"], f"layer {i} W")
        if W.ndim != 2:
            raise ShapeError(f"layer {i}: W must be [outputs, inputs], got {W.shape}")
        outputs, n_in = W.shape
        if inputs is not None and n_in != inputs:
            raise ShapeError(f"layer {i}: W has {n_in} inputs, the layer before gives {inputs}")
        desc = {"op": "linear", "inputs": n_in, "outputs": outputs, "bias": bias is not None,
                "shared": [], "adapted0": [W.ravel()]}
    else:
        raise InvalidArgumentError(f"layer {i}: give 'U' and 'v' (an MSR layer), 'W' (a plain one) or 'op'")
    if bias is not None:
        b = _f32(bias, f"layer {i} bias").ravel()
        desc["adapted0"].append(b)
    desc["lr"] = lr
    desc["activation"] = spec.get("activation", activation)
    return desc, desc["outputs"]


def _describe(layers, *, activation="tanh", input=None, loss="mse", normalize=None,
              dampings=None, log_damping=None, refine=None, inner_steps=1, name="",
              task_family="", trainer_version=None, records=()):
    layers = list(layers)
    if not layers:
        raise InvalidArgumentError("a model needs at least one layer")
    if isinstance(activation, str):
        acts = [activation] * (len(layers) - 1) + ["identity"]
    else:
        acts = list(activation)
        if len(acts) != len(layers):
            raise InvalidArgumentError(f"{len(acts)} activations for {len(layers)} layers")
    width = None
    if input is not None:
        input = [int(input)] if np.ndim(input) == 0 else [int(d) for d in input]
        width = math.prod(input)
    descs = []
    for i, (spec, act) in enumerate(zip(layers, acts)):
        d, out = _layer(i, spec, width, act)
        if i == 0 and input is None:
            if "inputs" not in d:
                raise InvalidArgumentError("say the input shape with input=...")
            input = [d["inputs"]]
        descs.append(d)
        width = out
    if dampings is not None:
        if log_damping is not None:
            raise InvalidArgumentError("give dampings or log_damping, not both")
        log_damping = np.log(_f32(dampings, "dampings"))
    if refine is not None:
        refine = (int(refine[0]), float(refine[1]))
    return {
        "input": input, "loss": loss, "layers": descs, "name": name,
        "task_family": task_family, "inner_steps": int(inner_steps),
        "trainer_version": trainer_version or f"msr-python {_core_version()}",
        "normalize": normalize, "log_damping": log_damping, "refine": refine,
        "records": list(records),
    }


def export_bytes(layers, **kwargs):
    """The bytes of the .msr file :func:`export` writes (same arguments, no path)."""
    return bytes(_encode(_describe(layers, **kwargs)))


def export(path, layers, **kwargs):
    """Writes a .msr model file from numpy arrays and returns it loaded as a :class:`Model`.

    ``layers``: one dict per layer, in order:

    - an MSR layer: ``{"U": [outputs * inputs, k], "v": [k], "bias": [outputs] or None,
      "lr": inner learning rate}`` (``W = reshape(U v, [outputs, inputs])``, row-major;
      ``"outputs"`` is needed only without a bias);
    - a plain dense layer: ``{"W": [outputs, inputs], "bias": ..., "lr": ...}``;
    - or a layer of :meth:`Model.describe` (``"op"``, ``"shared"``, ``"adapted0"``, ...).

    A layer may carry its own ``"activation"``. Keyword arguments: ``activation`` (after
    every layer but the last, which is "identity"; or a list, one per layer: "tanh",
    "relu", "gelu", "identity"), ``input`` (the input shape, inferred for dense layers),
    ``loss`` ("mse" or "cross-entropy"), ``inner_steps`` (SGD steps at adaptation),
    ``normalize`` ({"input": (mean, scale) or None, "output": (mean, scale) or None}),
    ``dampings`` (one per layer: the model adapts by damped Gauss-Newton, ``lr`` being each
    layer's on/off switch) or ``log_damping``, ``refine`` ((steps, damping): SGD then
    Gauss-Newton), ``name``, ``task_family``, ``trainer_version``, ``records``.

    The file is checked by the loader every file goes through before it is written:
    anything inconsistent raises (``ShapeError``, ``FormatError``, ...) and writes nothing.
    """
    data = export_bytes(layers, **kwargs)
    model = Model.from_bytes(data)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return model
