"""The C ABI (libmsr) through ctypes: the reference the Python package is compared with."""

import ctypes as C
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
F32P = C.POINTER(C.c_float)


class Options(C.Structure):
    _fields_ = [("backend", C.c_int32), ("inner_steps", C.c_size_t),
                ("lr_scale", C.c_float), ("capacity", C.c_size_t)]


class Info(C.Structure):
    _fields_ = [("input_len", C.c_size_t), ("output_len", C.c_size_t), ("loss", C.c_int32),
                ("adapted_len", C.c_size_t), ("inner_steps", C.c_size_t),
                ("layers", C.c_size_t), ("state_len", C.c_size_t)]


def find():
    """libmsr.so: $MSR_LIBMSR, else the release build under $CARGO_TARGET_DIR or target/."""
    if os.environ.get("MSR_LIBMSR"):
        return os.environ["MSR_LIBMSR"]
    for d in (os.environ.get("CARGO_TARGET_DIR"), ROOT / "target"):
        if d and (Path(d) / "release" / "libmsr.so").exists():
            return str(Path(d) / "release" / "libmsr.so")
    return None


class CError(Exception):
    def __init__(self, status, message):
        super().__init__(f"status {status}: {message}")
        self.status = status


class Lib:
    def __init__(self, path):
        self.c = C.CDLL(path)
        self.c.msr_last_error.restype = C.c_char_p

    def check(self, status):
        if status != 0:
            raise CError(status, self.c.msr_last_error().decode())


def ptr(a):
    return a.ctypes.data_as(F32P)


class CModel:
    def __init__(self, lib, data: bytes):
        self.lib, self.p = lib, C.c_void_p()
        buf = C.create_string_buffer(data, len(data))
        lib.check(lib.c.msr_model_load_bytes(buf, C.c_size_t(len(data)), C.byref(self.p)))
        self.info = Info()
        lib.check(lib.c.msr_model_get_info(self.p, C.byref(self.info)))

    def __del__(self):
        self.lib.c.msr_model_free(C.byref(self.p))

    def session(self, **opts):
        return CSession(self, Options(**opts))


class CSession:
    def __init__(self, model, opts):
        self.m, self.lib, self.p = model, model.lib, C.c_void_p()
        self.lib.check(self.lib.c.msr_session_new(model.p, C.byref(opts), C.byref(self.p)))

    def __del__(self):
        self.lib.c.msr_session_free(C.byref(self.p))

    def adapt(self, x, y):
        loss = C.c_float()
        self.lib.check(self.lib.c.msr_session_adapt(
            self.p, ptr(x), C.c_size_t(x.size), ptr(y), C.c_size_t(y.size),
            C.c_size_t(x.shape[0]), C.byref(loss)))
        return loss.value

    def adapt_labels(self, x, labels):
        loss = C.c_float()
        l32 = np.ascontiguousarray(labels, dtype=np.int32)
        self.lib.check(self.lib.c.msr_session_adapt_labels(
            self.p, ptr(x), C.c_size_t(x.size), l32.ctypes.data_as(C.POINTER(C.c_int32)),
            C.c_size_t(len(l32)), C.byref(loss)))
        return loss.value

    def predict(self, x):
        out = np.empty((x.shape[0], self.m.info.output_len), np.float32)
        self.lib.check(self.lib.c.msr_session_predict(
            self.p, ptr(x), C.c_size_t(x.size), C.c_size_t(x.shape[0]), ptr(out),
            C.c_size_t(out.size)))
        return out

    def refine(self, x, y, steps):
        loss = C.c_float()
        self.lib.check(self.lib.c.msr_session_refine(
            self.p, ptr(x), C.c_size_t(x.size), ptr(y), C.c_size_t(y.size),
            C.c_size_t(x.shape[0]), C.c_size_t(steps), C.byref(loss)))
        return loss.value

    def observe(self, x, y):
        self.lib.check(self.lib.c.msr_session_observe(
            self.p, ptr(x), C.c_size_t(x.size), ptr(y), C.c_size_t(y.size),
            C.c_size_t(x.shape[0])))

    def set_inner(self, inner, damping):
        self.lib.check(self.lib.c.msr_session_set_inner(self.p, C.c_int32(inner), C.c_float(damping)))

    def set_forgetting(self, gamma):
        self.lib.check(self.lib.c.msr_session_set_forgetting(self.p, C.c_float(gamma)))

    def save_state(self):
        n = self.m.info.state_len
        buf, written = C.create_string_buffer(n), C.c_size_t()
        self.lib.check(self.lib.c.msr_session_save_state(self.p, buf, C.c_size_t(n), C.byref(written)))
        return buf.raw[: written.value]
