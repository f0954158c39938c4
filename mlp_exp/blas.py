"""The BLAS libraries the training step calls, through ctypes, and bf16 conversion.

Three BLAS-1/3 calls are all the fp32 step needs: sgemm (with alpha and beta), saxpy and sdot.
NumPy's wheel bundles an OpenBLAS that NumPy itself uses but does not expose to Python; SciPy's
wheel bundles another, older one that scipy.linalg.blas does expose. Calling NumPy's copy through
ctypes keeps the whole process on one BLAS thread pool, and its sgemm is the newer one (README:
Performance). Where NumPy does not bundle it (conda/MKL, distro builds), SciPy's BLAS does the
same calls. The bf16 step (precision "bf16") makes all of its calls to Intel MKL instead, the
`mkl` wheel from PyPI, whose `cblas_gemm_bf16bf16f32` multiplies bf16 inputs into fp32.
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys

import numpy as np

from .errors import UserError

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_FLOAT_P = ctypes.POINTER(ctypes.c_float)
log = logging.getLogger("mlp_exp.blas")


class CtypesCBLAS:
    """Row-major cblas calls (sgemm, saxpy, sdot) into a shared library through ctypes.

    `symbols` names the library's three functions and `index` its integer type (64-bit for an
    ILP64 build such as NumPy's OpenBLAS, 32-bit for LP64 MKL)."""

    def __init__(self, lib, symbols: tuple[str, str, str], index=ctypes.c_int64):
        i, f32, p = index, ctypes.c_float, _FLOAT_P
        self._sgemm, self._saxpy, self._sdot = (getattr(lib, name) for name in symbols)
        self._sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i, i, i,
                                f32, p, i, p, i, f32, p, i]
        self._sgemm.restype = None
        self._saxpy.argtypes = [i, f32, p, i, p, i]
        self._saxpy.restype = None
        self._sdot.argtypes = [i, p, i, p, i]
        self._sdot.restype = f32

    @staticmethod
    def _row_major(m, dtype=np.float32, pointer=_FLOAT_P):
        """2-D m -> (pointer, trans flag, leading dimension) with op(buffer) == m; no copy for
        C- or F-ordered m of `dtype`. The pointer keeps the array it points into alive."""
        if m.dtype != dtype:                     # as SciPy's sgemm would: a float32 copy (slow path)
            m = np.asarray(m, dtype=dtype)
        if m.flags.c_contiguous:
            return m.ctypes.data_as(pointer), _NO_TRANS, max(m.shape[1], 1)
        if m.flags.f_contiguous:                 # m.T is C-ordered: m = op(m.T) with op = transpose
            return m.ctypes.data_as(pointer), _TRANS, max(m.shape[0], 1)
        return CtypesCBLAS._row_major(np.ascontiguousarray(m), dtype, pointer)

    @staticmethod
    def _check_gemm(a, b, out):
        if out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
            raise RuntimeError("sgemm cannot write in place; out must be C-contiguous, writeable float32")
        (M, K), N = a.shape, b.shape[1]
        if b.shape[0] != K or out.shape != (M, N):
            raise ValueError(f"gemm shapes do not match: {a.shape} x {b.shape} -> {out.shape}")
        return M, N, K

    def sgemm(self, a, b, out, alpha, beta):
        M, N, K = self._check_gemm(a, b, out)
        a_ptr, trans_a, lda = self._row_major(a)
        b_ptr, trans_b, ldb = self._row_major(b)
        self._sgemm(_ROW_MAJOR, trans_a, trans_b, M, N, K, alpha, a_ptr, lda, b_ptr, ldb,
                    beta, out.ctypes.data_as(_FLOAT_P), max(N, 1))

    @staticmethod
    def _vector(v, writeable=False):
        if v.dtype != np.float32 or v.ndim != 1 or not v.flags.c_contiguous or (writeable and not v.flags.writeable):
            raise RuntimeError("BLAS vectors must be 1-D contiguous float32 (and writeable to write in place)")
        return v.ctypes.data_as(_FLOAT_P)

    def saxpy(self, x, y, a):
        if x.size != y.size:
            raise ValueError(f"saxpy sizes differ: {x.size} and {y.size}")
        self._saxpy(x.size, a, self._vector(x), 1, self._vector(y, writeable=True), 1)

    def sdot(self, x, y):
        if x.size != y.size:
            raise ValueError(f"sdot sizes differ: {x.size} and {y.size}")
        return float(self._sdot(x.size, self._vector(x), 1, self._vector(y), 1))


class NumpyOpenBLAS(CtypesCBLAS):
    """cblas calls into the OpenBLAS bundled with NumPy's wheel (ILP64: 64-bit ints, `scipy_` symbols)."""

    name = "numpy-bundled OpenBLAS (ctypes)"

    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)                  # already loaded by numpy: the same handle
        super().__init__(lib, ("scipy_cblas_sgemm64_", "scipy_cblas_saxpy64_", "scipy_cblas_sdot64_"))


BF16 = np.dtype(np.uint16)   # bf16 values are held as their bit patterns: NumPy has no bfloat16 dtype
_HIGH_HALF = 1 if sys.byteorder == "little" else 0   # which uint16 of a float32 is its bf16 truncation


def to_bf16(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float32 x (C-contiguous) -> bf16 bit patterns in out (uint16, x's shape), rounded toward zero.

    bf16 is float32's sign, exponent and top 7 mantissa bits: its high 16 bits, so truncating is
    one strided copy. Round-to-nearest would take a second pass over x; truncation shrinks each
    value by under 2**-7 of itself (2**-8 on average), which the fp32 master weights never see."""
    np.copyto(out.reshape(-1), x.reshape(-1).view(np.uint16)[_HIGH_HALF::2])
    return out


class IntelMKL(CtypesCBLAS):
    """The same calls into Intel MKL (the `mkl` wheel from PyPI: LP64 `cblas_*`), plus
    `cblas_gemm_bf16bf16f32`: bf16 inputs, fp32 accumulation and output, on the CPU's
    AVX512_BF16 / AMX units where it has them (emulated, slowly, where it has not)."""

    name = "Intel MKL (ctypes)"

    def __init__(self, path: str):
        self.path = path
        lib = self._lib = ctypes.CDLL(path)
        super().__init__(lib, ("cblas_sgemm", "cblas_saxpy", "cblas_sdot"), ctypes.c_int)
        i, f32, void_p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        self._gemm_bf16 = lib.cblas_gemm_bf16bf16f32
        self._gemm_bf16.argtypes = [ctypes.c_int] * 3 + [i] * 3 + [f32, void_p, i, void_p, i, f32, _FLOAT_P, i]
        self._gemm_bf16.restype = None
        version = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(version, 256)
        self.version = version.value.decode()

    def num_threads(self) -> int:
        return int(self._lib.MKL_Get_Max_Threads())

    def set_num_threads(self, count: int):
        self._lib.MKL_Set_Num_Threads(int(count))

    def gemm_bf16(self, a, b, out, alpha, beta):
        """out <- alpha a @ b + beta out, in place: a, b bf16 (uint16 bit patterns, C- or F-ordered),
        out (M, N) C-contiguous float32."""
        if a.dtype != BF16 or b.dtype != BF16:
            raise TypeError(f"gemm_bf16 takes bf16 bit patterns (uint16), got {a.dtype} and {b.dtype}")
        M, N, K = self._check_gemm(a, b, out)
        a_ptr, trans_a, lda = self._row_major(a, BF16, ctypes.c_void_p)
        b_ptr, trans_b, ldb = self._row_major(b, BF16, ctypes.c_void_p)
        self._gemm_bf16(_ROW_MAJOR, trans_a, trans_b, M, N, K, alpha, a_ptr, lda, b_ptr, ldb,
                        beta, out.ctypes.data_as(_FLOAT_P), max(N, 1))


def mkl_path() -> str | None:
    """libmkl_rt from the `mkl` wheel in this environment (or wherever the loader finds it)."""
    import ctypes.util
    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    return found[-1] if found else ctypes.util.find_library("mkl_rt")


_mkl: IntelMKL | None = None


def mkl_backend() -> IntelMKL:
    """The process's one MKL backend, loaded on first use with as many threads as NumPy's OpenBLAS
    has (so `--blas-threads` and threadpoolctl limits set before it loaded still hold).
    Raises BF16Unavailable, saying what to install, where there is no MKL."""
    global _mkl
    if _mkl is None:
        path = mkl_path()
        if path is None:
            if bf16_library(_cpuinfo()) == "onednn":
                raise BF16Unavailable("precision bf16 needs oneDNN's bf16 kernels on this CPU: `pip install "
                                      "onednn` (or install mlp_exp with the [bf16] extra), or use precision fp32")
            raise BF16Unavailable("precision bf16 needs Intel MKL's bf16 GEMM: `pip install mkl` "
                                  "(x86_64; or install mlp_exp with the [bf16] extra), or use precision fp32")
        try:
            backend = IntelMKL(path)
        except (OSError, AttributeError) as error:
            raise BF16Unavailable(f"precision bf16 needs an MKL with cblas_gemm_bf16bf16f32; {path} "
                                  f"has none ({error}): `pip install -U mkl`, or use precision fp32") from None
        from threadpoolctl import threadpool_info
        openblas = [pool["num_threads"] for pool in threadpool_info() if pool["internal_api"] == "openblas"]
        if openblas:
            backend.set_num_threads(min(openblas))
        if not cpu_bf16_units():
            # correct, only slow: MKL converts bf16 to fp32 in software on such CPUs (on an AVX2 EPYC
            # the bf16 step ran slower than fp32; README: Performance), so say so rather than refuse
            log.warning("precision bf16: this CPU has no bf16 units that MKL uses (avx512_bf16 / amx_bf16 "
                        "on an Intel CPU), so MKL emulates bf16 and training is slower than fp32; use "
                        "precision fp32 here%s", "" if bf16_library(_cpuinfo()) == "mkl" else
                        ", or `pip install onednn`, whose bf16 kernels use this CPU's avx512_bf16")
        _mkl = backend
    return _mkl


def _cpuinfo() -> str:
    try:
        return open("/proc/cpuinfo").read()
    except OSError:                                      # not Linux: no bf16 units known
        return ""


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 units that MKL uses (Linux /proc/cpuinfo); [] where it has none, or where /proc
    is missing: MKL then emulates bf16, correctly but slower than fp32."""
    return bf16_units_mkl_uses(_cpuinfo())


def _first_cpu(cpuinfo: str) -> dict[str, str]:
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if not key.strip() and fields:
            break                                        # the first CPU's block ends at a blank line
        fields.setdefault(key.strip(), value.strip())
    return fields


def bf16_flags(cpuinfo: str) -> list[str]:
    """The bf16 flags of the first CPU in a /proc/cpuinfo text, whatever its vendor."""
    flags = _first_cpu(cpuinfo).get("flags", "").split()
    return [f for f in ("avx512_bf16", "amx_bf16") if f in flags]


def bf16_units_mkl_uses(cpuinfo: str) -> list[str]:
    """The bf16 flags of the first CPU in a /proc/cpuinfo text, if it is an Intel CPU: on others MKL
    runs its generic code (an AMD EPYC with avx512_bf16: MKL_VERBOSE names "Intel(R) Architecture
    processors" where an Intel CPU gets AVX-512, and the bf16 GEMM ran at 0.64x the fp32 bound;
    README, Performance)."""
    return bf16_flags(cpuinfo) if _first_cpu(cpuinfo).get("vendor_id") == "GenuineIntel" else []


def bf16_library(cpuinfo: str) -> str:
    """Which library a bf16 step should call on this CPU: "onednn" where the CPU has bf16 units that
    MKL does not use (an AMD EPYC with avx512_bf16: oneDNN dispatches on the instruction set, not the
    vendor), else "mkl" (its bf16 units on an Intel CPU; emulation, with a warning, elsewhere)."""
    return "onednn" if bf16_flags(cpuinfo) and not bf16_units_mkl_uses(cpuinfo) else "mkl"


def bf16_backend():
    """The bf16 step's backend (`bf16_library`): oneDNN where it is the library for this CPU and is
    installed, else MKL (`mkl_backend`: its error or warning says what to install)."""
    if bf16_library(_cpuinfo()) == "onednn":
        from .onednn import OneDNNUnavailable, onednn_backend
        try:
            return onednn_backend()
        except OneDNNUnavailable as error:
            log.info("precision bf16: %s; trying MKL", error)
    return mkl_backend()


class BF16Unavailable(UserError):
    """precision bf16 was asked for where no MKL with a bf16 GEMM is installed."""


class SciPyBLAS:
    """The same calls through scipy.linalg.blas (f2py, Fortran order)."""

    name = "SciPy BLAS"

    def __init__(self):
        from scipy.linalg import blas
        self._blas = blas

    @staticmethod
    def _as_fortran_operand(m):
        """m (2-D) -> (F-ordered array, trans flag) with op(array) == m.T, copy-free for C or F input."""
        if m.flags.c_contiguous:
            return m.T, 0
        if m.flags.f_contiguous:
            return m, 1
        return np.ascontiguousarray(m).T, 0

    def sgemm(self, a, b, out, alpha, beta):
        # row-major out is column-major out.T = b.T @ a.T: BLAS gets b.T and a.T, Fortran-ordered
        # views when a and b are C-contiguous (or transposes of such)
        b_op, trans_b = self._as_fortran_operand(b)
        a_op, trans_a = self._as_fortran_operand(a)
        c = out.T
        result = self._blas.sgemm(alpha, b_op, a_op, beta=beta, c=c, trans_a=trans_b, trans_b=trans_a,
                                  overwrite_c=1)
        if result is not c:        # f2py copied: the in-place contract broke
            raise RuntimeError("sgemm did not write in place; out must be C-contiguous float32")

    def saxpy(self, x, y, a):
        if self._blas.saxpy(x, y, a=a) is not y:
            raise RuntimeError("saxpy did not write in place; y must be contiguous float32")

    def sdot(self, x, y):
        return float(self._blas.sdot(x, y))


def numpy_openblas_path() -> str | None:
    """The OpenBLAS shared library inside NumPy's wheel, if it has one with the cblas symbols we call."""
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*.so*"))):
        try:
            lib = ctypes.CDLL(path)
            lib.scipy_cblas_sgemm64_, lib.scipy_cblas_saxpy64_, lib.scipy_cblas_sdot64_
            return path
        except (OSError, AttributeError):
            continue
    return None
