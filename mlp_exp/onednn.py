"""oneDNN's matmul through ctypes: the bf16 step's library on CPUs whose bf16 units MKL does not use.

MKL runs its generic code on AMD CPUs, so on an AMD EPYC with AVX512_BF16 its bf16 GEMM emulates
(slower than fp32; README: Performance). oneDNN dispatches on the instruction set instead: there its
`brg_matmul:avx512_core_bf16` kernels multiply bf16 inputs into fp32. This module calls oneDNN's C
API (v3) from the `onednn` wheel on PyPI and offers the bf16 step the four calls it makes:

    gemm_bf16(a, b, out, alpha, beta)    out <- alpha a @ b + beta out, a and b bf16, out fp32
    sgemm(a, b, out, alpha, beta)        the same in fp32 (the step's three small GEMMs, evaluation)
    saxpy(x, y, a)                       y <- y + a x            (a binary add)
    sdot(x, y)                           x . y                   (a (1, n) x (n, 1) matmul)

so that every call the step makes goes to one thread pool, oneDNN's, as the MKL path keeps to MKL's:
NumPy's OpenBLAS workers spin for a while after each call, and two pools spinning on two cores slow
each other down (with the small GEMMs and saxpys left on OpenBLAS the bf16 step was no faster than
fp32 here).

A matmul is a "primitive" that oneDNN compiles for one problem (shapes, strides, data types, the
beta of its sum post-op): each is created once and cached; alpha is a runtime scale, so a decaying
learning rate does not recompile anything. The wheel's CPU runtime is SYCL, which runs on the
OpenCL CPU device of Intel's OpenCL runtime (a dependency of the wheel): loading points the OpenCL
loader at that device unless the environment already chose one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import numpy as np

_P = ctypes.c_void_p
_DIMS = ctypes.c_int64 * 12                   # dnnl_dims_t
_F32, _BF16 = 3, 2                            # dnnl_data_type_t
_BF16_BITS = np.dtype(np.uint16)              # blas.BF16: bf16 values held as their bit patterns
_CPU_ENGINE, _IN_ORDER = 1, 1                 # dnnl_cpu, dnnl_stream_in_order
_ARG_SRC, _ARG_SRC_1, _ARG_WEIGHTS, _ARG_DST, _ARG_ATTR_SCALES = 1, 2, 33, 17, 4096
_BINARY_ADD = 0x1fff0                         # dnnl_binary_add
_SYCL_RUNTIME = 0x200                         # dnnl_version_t.cpu_runtime of the PyPI wheel
# what libdnnl needs loaded before it, in load order; the wheels put them beside it
_RUNTIME_LIBS = ("libintlc.so.5", "libsvml.so", "libimf.so", "libirng.so", "libtbb.so.12", "libsycl.so.9")


class OneDNNUnavailable(OSError):
    """No loadable oneDNN (with a CPU engine) in this environment."""


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _P)]


def onednn_path() -> str | None:
    """libdnnl from the `onednn` wheel in this environment (or wherever the loader finds it)."""
    path = os.path.join(sys.prefix, "lib", "libdnnl.so.3")
    return path if os.path.exists(path) else ctypes.util.find_library("dnnl")


class OneDNN:
    """A oneDNN CPU engine and stream, with the step's four calls (module docstring)."""

    name = "oneDNN (ctypes)"

    def __init__(self, path: str):
        self.path = path
        lib_dir = os.path.dirname(path)
        try:
            for dep in _RUNTIME_LIBS:
                if os.path.exists(os.path.join(lib_dir, dep)):
                    ctypes.CDLL(os.path.join(lib_dir, dep), mode=ctypes.RTLD_GLOBAL)
            lib = self._lib = ctypes.CDLL(path)
        except OSError as error:
            raise OneDNNUnavailable(f"{path} does not load: {error}") from None
        lib.dnnl_version.restype = ctypes.POINTER(_Version)
        v = lib.dnnl_version().contents
        self.version = f"oneDNN {v.major}.{v.minor}.{v.patch}"
        opencl_cpu = os.path.join(lib_dir, "libintelocl.so")
        if v.cpu_runtime == _SYCL_RUNTIME and os.path.exists(opencl_cpu):
            # read by the OpenCL ICD loader and SYCL when the engine is created, below
            os.environ.setdefault("OCL_ICD_FILENAMES", opencl_cpu)
            os.environ.setdefault("ONEAPI_DEVICE_SELECTOR", "opencl:cpu")
        self._engine, self._stream = _P(), _P()
        if lib.dnnl_engine_create(ctypes.byref(self._engine), _CPU_ENGINE, ctypes.c_size_t(0)) != 0:
            raise OneDNNUnavailable(f"{self.version} at {path} found no CPU device to run on")
        self._check(lib.dnnl_stream_create(ctypes.byref(self._stream), self._engine, ctypes.c_uint(_IN_ORDER)),
                    "stream")
        self._primitives = {}
        self._dot_out = np.zeros((1, 1), np.float32)

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise RuntimeError(f"oneDNN {what} failed (dnnl_status_t {status})")

    def _desc(self, shape, strides, data_type):
        desc = _P()
        self._check(self._lib.dnnl_memory_desc_create_with_strides(
            ctypes.byref(desc), len(shape), _DIMS(*shape), data_type, _DIMS(*strides)), "memory descriptor")
        return desc

    def _memory(self, desc):
        memory = _P()
        self._check(self._lib.dnnl_memory_create(ctypes.byref(memory), desc, self._engine, None), "memory")
        return memory

    def _primitive(self, key, make_pd, descs, arg_ids, scale_arg=None):
        """The cached primitive for key: (primitive, memories for descs, exec args, runtime scale)."""
        found = self._primitives.get(key)
        if found is None:
            lib = self._lib
            pd, primitive = make_pd(), _P()
            self._check(lib.dnnl_primitive_create(ctypes.byref(primitive), pd), "primitive")
            memories = [self._memory(d) for d in descs]
            args = [_ExecArg(a, m) for a, m in zip(arg_ids, memories)]
            scale = None
            if scale_arg is not None:
                scale = np.zeros(1, np.float32)
                scale_memory = self._memory(self._desc((1,), (1,), _F32))
                self._check(lib.dnnl_memory_set_data_handle(scale_memory, _P(scale.ctypes.data)), "scale")
                args.append(_ExecArg(_ARG_ATTR_SCALES | scale_arg, scale_memory))
                memories.append(scale_memory)
            found = self._primitives[key] = (primitive, memories, (_ExecArg * len(args))(*args), scale)
        return found

    def _run(self, found, arrays, scale=None):
        primitive, memories, args, scale_buffer = found
        for memory, array in zip(memories, arrays):
            self._lib.dnnl_memory_set_data_handle(memory, _P(array.ctypes.data))
        if scale is not None:
            scale_buffer[0] = scale
        self._check(self._lib.dnnl_primitive_execute(primitive, self._stream, len(args), args), "execute")
        self._check(self._lib.dnnl_stream_wait(self._stream), "stream wait")

    @staticmethod
    def _strides(m):
        return tuple(s // m.itemsize for s in m.strides)

    def _matmul(self, a, b, out, alpha, beta, data_type):
        if out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
            raise RuntimeError("gemm cannot write in place; out must be C-contiguous, writeable float32")
        (M, K), N = a.shape, b.shape[1]
        if b.shape[0] != K or out.shape != (M, N):
            raise ValueError(f"gemm shapes do not match: {a.shape} x {b.shape} -> {out.shape}")
        a_strides, b_strides = self._strides(a), self._strides(b)
        key = ("matmul", data_type, a.shape, a_strides, b.shape, b_strides, out.shape, float(beta))

        def make_pd():
            lib, attr = self._lib, _P()
            self._check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "attr")
            self._check(lib.dnnl_primitive_attr_set_scales_mask(attr, _ARG_SRC, 0), "scales")   # alpha
            if beta:
                post_ops = _P()
                self._check(lib.dnnl_post_ops_create(ctypes.byref(post_ops)), "post-ops")
                self._check(lib.dnnl_post_ops_append_sum(post_ops, ctypes.c_float(beta), ctypes.c_int32(0), 0),
                            "sum post-op")                                                       # + beta out
                self._check(lib.dnnl_primitive_attr_set_post_ops(attr, post_ops), "post-ops")
            pd = _P()
            self._check(lib.dnnl_matmul_primitive_desc_create(ctypes.byref(pd), self._engine, descs[0], descs[1],
                                                              None, descs[2], attr),
                        f"matmul {a.shape} x {b.shape} ({'bf16' if data_type == _BF16 else 'f32'})")
            return pd

        descs = [] if key in self._primitives else [
            self._desc(a.shape, a_strides, data_type), self._desc(b.shape, b_strides, data_type),
            self._desc(out.shape, self._strides(out), _F32)]
        found = self._primitive(key, make_pd, descs, (_ARG_SRC, _ARG_WEIGHTS, _ARG_DST), scale_arg=_ARG_SRC)
        self._run(found, (a, b, out), scale=alpha)

    def gemm_bf16(self, a, b, out, alpha, beta):
        """out <- alpha a @ b + beta out, in place: a, b bf16 bit patterns (uint16, any 2-D strides),
        out (M, N) C-contiguous float32; products exact, sums in fp32."""
        if a.dtype != _BF16_BITS or b.dtype != _BF16_BITS:
            raise TypeError(f"gemm_bf16 takes bf16 bit patterns (uint16), got {a.dtype} and {b.dtype}")
        self._matmul(a, b, out, alpha, beta, _BF16)

    def sgemm(self, a, b, out, alpha, beta):
        a, b = (np.asarray(m, dtype=np.float32) for m in (a, b))
        self._matmul(a, b, out, alpha, beta, _F32)

    @staticmethod
    def _vector(v, writeable=False):
        if v.dtype != np.float32 or v.ndim != 1 or not v.flags.c_contiguous or (writeable and not v.flags.writeable):
            raise RuntimeError("vectors must be 1-D contiguous float32 (and writeable to write in place)")
        return v

    def saxpy(self, x, y, a):
        """y <- y + a x in place: one binary add, y its first source and its destination, a a runtime
        scale of the second (oneDNN's sum primitive ran 10x slower than OpenBLAS's saxpy here)."""
        if x.size != y.size:
            raise ValueError(f"saxpy sizes differ: {x.size} and {y.size}")
        self._vector(x), self._vector(y, writeable=True)
        key = ("saxpy", x.size)

        def make_pd():
            lib, attr, pd = self._lib, _P(), _P()
            self._check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "attr")
            self._check(lib.dnnl_primitive_attr_set_scales_mask(attr, _ARG_SRC_1, 0), "scales")
            self._check(lib.dnnl_binary_primitive_desc_create(ctypes.byref(pd), self._engine, _BINARY_ADD,
                                                              descs[0], descs[1], descs[2], attr), "binary add")
            return pd

        descs = [] if key in self._primitives else [self._desc((x.size,), (1,), _F32)] * 3
        found = self._primitive(key, make_pd, descs, (_ARG_SRC, _ARG_SRC_1, _ARG_DST), scale_arg=_ARG_SRC_1)
        self._run(found, (y, x, y), scale=a)

    def sdot(self, x, y):
        if x.size != y.size:
            raise ValueError(f"sdot sizes differ: {x.size} and {y.size}")
        self._vector(x), self._vector(y)
        self._matmul(x.reshape(1, -1), y.reshape(-1, 1), self._dot_out, 1.0, 0.0, _F32)
        return float(self._dot_out[0, 0])


_onednn: OneDNN | None = None


def onednn_backend() -> OneDNN:
    """The process's one oneDNN engine, loaded on first use. Raises OneDNNUnavailable."""
    global _onednn
    if _onednn is None:
        path = onednn_path()
        if path is None:
            raise OneDNNUnavailable("no oneDNN in this environment (`pip install onednn`)")
        _onednn = OneDNN(path)
    return _onednn
