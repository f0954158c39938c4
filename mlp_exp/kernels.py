"""The fused float32 training step the trainer runs on real data.

Same math as `net.two_layer_loss` followed by an `optim` rule, rearranged so
that almost all the time goes to the three large GEMMs an iteration cannot
avoid (B = batch, D = 3072 inputs, H = hidden, C = classes):

    X @ W1            (B, D) x (D, H)     forward
    dh.T @ X          (H, B) x (B, D)     backward, fused with the W1 update
    h @ W2, h.T @ ds, ds @ W2.T           the small second layer

What makes it fast:
- every intermediate lives in a buffer allocated once per batch size;
- the W1 gradient is never materialised: BLAS sgemm's `C = alpha A B + beta C`
  applies it straight into the velocity (momentum: alpha = -lr, beta = mu) or
  into the weights (SGD: beta = 1 - lr * reg, which also applies the L2 decay);
- arrays are C-contiguous, so their transposes are Fortran-ordered and go to
  BLAS as transposed operands, without copies;
- every BLAS call goes to one library: the OpenBLAS bundled in NumPy's wheel,
  called through ctypes (see "BLAS backends" below). Two OpenBLAS copies in
  one process (NumPy's and SciPy's each bundle one, each with its own thread
  pool) make the pools' spinning threads fight for the two cores when calls
  alternate between them (README: Performance);
- the rest of the update is three passes over the big arrays, all BLAS
  (threaded like the GEMMs): one sdot for the L2 penalty of [W1, W2], one
  saxpy for their decay, one saxpy adding the velocity to every parameter.
  Parameters, velocity and small gradients share one flat [W1, W2, b1, b2]
  layout to make that possible. (srotm could do decay and step in one pass
  but is unvectorised in OpenBLAS: slower than two saxpys.)
- the softmax works on the (B, C) scores with flat indices, few NumPy calls:
  at small hidden sizes a step is short, so every call's overhead counts.

`FusedStep` keeps only parameters and optimiser state; it never allocates per
step beyond tiny (B,)-sized temporaries, prints nothing and draws no random
numbers.
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

from .net import PARAM_NAMES
from .optim import UPDATE_RULES


# ------------------------------------------------------------ BLAS backends
#
# Three BLAS-1/3 calls are all the step needs: sgemm (with alpha and beta), saxpy and sdot.
# NumPy's wheel bundles an OpenBLAS that NumPy itself uses (for matmul in net.py, say) but
# does not expose to Python; SciPy's wheel bundles another, older one that scipy.linalg.blas
# does expose. Calling NumPy's copy through ctypes keeps the whole process on one BLAS
# thread pool, and its sgemm is the newer one (README: Performance). Where NumPy does not
# bundle it (conda/MKL, distro builds), SciPy's BLAS does the same calls.

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_FLOAT_P = ctypes.POINTER(ctypes.c_float)


class NumpyOpenBLAS:
    """cblas calls into the OpenBLAS bundled with NumPy's wheel (ILP64: 64-bit ints, `scipy_` symbols)."""

    name = "numpy-bundled OpenBLAS (ctypes)"

    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)                  # already loaded by numpy: the same handle
        i64, f32, p = ctypes.c_int64, ctypes.c_float, _FLOAT_P
        self._sgemm = lib.scipy_cblas_sgemm64_
        self._sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64,
                                f32, p, i64, p, i64, f32, p, i64]
        self._sgemm.restype = None
        self._saxpy = lib.scipy_cblas_saxpy64_
        self._saxpy.argtypes = [i64, f32, p, i64, p, i64]
        self._saxpy.restype = None
        self._sdot = lib.scipy_cblas_sdot64_
        self._sdot.argtypes = [i64, p, i64, p, i64]
        self._sdot.restype = f32

    @staticmethod
    def _row_major(m):
        """2-D m -> (pointer, trans flag, leading dimension) with op(buffer) == m; no copy for
        float32 C- or F-ordered m. The pointer keeps the array it points into alive."""
        if m.dtype != np.float32:                # as SciPy's sgemm would: a float32 copy (slow path)
            m = np.asarray(m, dtype=np.float32)
        if m.flags.c_contiguous:
            return m.ctypes.data_as(_FLOAT_P), _NO_TRANS, max(m.shape[1], 1)
        if m.flags.f_contiguous:                 # m.T is C-ordered: m = op(m.T) with op = transpose
            return m.ctypes.data_as(_FLOAT_P), _TRANS, max(m.shape[0], 1)
        return NumpyOpenBLAS._row_major(np.ascontiguousarray(m))

    def sgemm(self, a, b, out, alpha, beta):
        if out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
            raise RuntimeError("sgemm cannot write in place; out must be C-contiguous, writeable float32")
        (M, K), N = a.shape, b.shape[1]
        if b.shape[0] != K or out.shape != (M, N):
            raise ValueError(f"gemm shapes do not match: {a.shape} x {b.shape} -> {out.shape}")
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


def _choose_blas():
    path = numpy_openblas_path()
    return NumpyOpenBLAS(path) if path else SciPyBLAS()


blas = _choose_blas()          # the backend every call below goes through (tests swap it)


def gemm(a, b, out, alpha=1.0, beta=0.0):
    """out <- alpha a @ b + beta out, in place. out (M, N) C-contiguous float32; a, b float32,
    C- or F-ordered (so transposed views of contiguous arrays cost no copy)."""
    blas.sgemm(a, b, out, alpha, beta)
    return out


def _axpy(x, y, a):
    """y <- a x + y, in place, for 1-D float32 contiguous x, y of equal size (threaded when large)."""
    blas.saxpy(x, y, a)


class FusedStep:
    """One minibatch step of loss + gradient + update, in place on float32 params.

    Inputs:
    - params: dict W1 (D, H), b1 (H,), W2 (H, C), b2 (C,); copied to float32.
    - update: "sgd", "momentum" or "rmsprop" (see optim.py for the reference rules)
    - reg, momentum: as in optim.py; the learning rate is passed per step so the
      trainer can decay it.

    All parameters live in one flat buffer laid out [W1, W2, b1, b2], and the
    optimiser state and small gradients in buffers of the same layout, so that
    an update touches each big array once per BLAS call instead of once per
    NumPy expression per parameter: the L2 decay of W1 and W2 is one saxpy over
    the leading [W1, W2] range, the momentum step one saxpy over everything,
    and the penalty one sdot over [W1, W2]. `params` and `state` are dicts of
    views into these buffers.
    """

    def __init__(self, params, update, reg, momentum=0.0, rmsprop_decay=0.99, rmsprop_eps=1e-8):
        if update not in UPDATE_RULES:
            raise ValueError(f"update must be one of {', '.join(UPDATE_RULES)}, got {update!r}")
        D, H = np.shape(params["W1"])
        C = np.shape(params["W2"])[1]
        shapes = {"W1": (D, H), "W2": (H, C), "b1": (H,), "b2": (C,)}
        self._W1_size = D * H
        self._reg_size = D * H + H * C                       # [W1, W2]: the regularised range
        size = self._reg_size + H + C
        self._flat = np.empty(size, np.float32)              # [W1, W2, b1, b2]
        self.params = self._views(self._flat, shapes)
        for k in PARAM_NAMES:
            if np.shape(params[k]) != shapes[k]:
                raise ValueError(f"params[{k!r}] must have shape {shapes[k]} to match W1 {(D, H)} "
                                 f"and W2 {(H, C)}, got {np.shape(params[k])}")
            self.params[k][...] = params[k]
        self.update, self.reg, self.momentum = update, float(reg), float(momentum)
        self.rmsprop_decay, self.rmsprop_eps = rmsprop_decay, rmsprop_eps
        # momentum: velocity; rmsprop: running mean of squared gradients
        self._state_flat = np.zeros(size, np.float32) if update != "sgd" else None
        self.state = self._views(self._state_flat, shapes) if update != "sgd" else {}
        # gradients: only [W2, b1, b2] (W1's goes straight into an update GEMM), except for rmsprop
        self._grad_flat = np.empty(size if update == "rmsprop" else size - self._W1_size, np.float32)
        grad_small = self._grad_flat[self._W1_size:] if update == "rmsprop" else self._grad_flat
        self._grads = self._views(grad_small, {k: shapes[k] for k in ("W2", "b1", "b2")})
        self._grad_small = grad_small
        self._batch_size = None

    @staticmethod
    def _views(flat, shapes):
        """Dict of C-contiguous views of consecutive pieces of flat, laid out W1, W2, b1, b2 (absent names skipped)."""
        views, offset = {}, 0
        for name in ("W1", "W2", "b1", "b2"):
            if name in shapes:
                n = int(np.prod(shapes[name]))
                views[name] = flat[offset:offset + n].reshape(shapes[name])
                offset += n
        return views

    def _buffers(self, batch_size):
        if self._batch_size != batch_size:
            H, C = self.params["W2"].shape
            self._hidden = np.empty((batch_size, H), np.float32)       # (B, H) relu output
            self._active = np.empty((batch_size, H), np.bool_)         # (B, H) relu mask
            self._dhidden = np.empty((batch_size, H), np.float32)      # (B, H)
            self._scores = np.empty((batch_size, C), np.float32)       # (B, C)
            self._row_starts = np.arange(batch_size) * C               # (B,) flat index of each row of scores
            self._batch_size = batch_size

    def step(self, X, y, learning_rate) -> float:
        """X (B, D) float32 C-contiguous, y (B,) int -> loss before the update (float)."""
        p = self.params
        W1, b1, W2, b2 = p["W1"], p["b1"], p["W2"], p["b2"]
        B = X.shape[0]
        self._buffers(B)
        hidden, active, dhidden, scores = self._hidden, self._active, self._dhidden, self._scores
        grads = self._grads
        reg, lr = self.reg, float(learning_rate)

        # penalty of the weights before the update: one sdot over [W1, W2]
        weights = self._flat[:self._reg_size]
        reg_loss = 0.5 * reg * blas.sdot(weights, weights) if reg else 0.0

        # forward
        gemm(X, W1, hidden)                                # (B, H)
        hidden += b1
        np.greater(hidden, 0, out=active)
        np.maximum(hidden, 0, out=hidden)
        gemm(hidden, W2, scores)                           # (B, C)
        scores += b2

        # softmax loss, with dscores = (softmax - onehot) / B written over scores
        scores -= scores.max(axis=1, keepdims=True)
        flat_scores = scores.reshape(-1)
        true_class = self._row_starts + y                  # (B,) flat index of each row's true class
        correct = float(flat_scores[true_class].sum())     # sum of the true classes' shifted scores
        np.exp(scores, out=scores)
        sums = scores.sum(axis=1)                          # (B,)
        data_loss = (float(np.log(sums).sum()) - correct) / B
        np.divide(1.0 / B, sums, out=sums)
        scores *= sums[:, None]
        flat_scores[true_class] -= 1.0 / B
        dscores = scores                                   # (B, C)

        # second layer gradients (W2's without the L2 term: the update adds it), then back through the relu
        gemm(hidden.T, dscores, grads["W2"])               # (H, C)
        np.sum(dscores, axis=0, out=grads["b2"])
        gemm(dscores, W2.T, dhidden)                       # (B, H)
        np.multiply(dhidden, active, out=dhidden)
        np.sum(dhidden, axis=0, out=grads["b1"])

        if self.update == "momentum":
            self._momentum_update(X, dhidden, lr)
        elif self.update == "sgd":
            self._sgd_update(X, dhidden, lr)
        else:
            self._rmsprop_update(X, dhidden, lr)
        return data_loss + reg_loss

    def _momentum_update(self, X, dhidden, lr):
        # v <- mu v - lr (dW + reg W); W <- W + v, for all four parameters
        flat, velocity, n1, nreg = self._flat, self._state_flat, self._W1_size, self._reg_size
        # W1: v <- mu v - lr X.T dh inside the GEMM (X.T, dhidden.T are F-ordered views: no copies)
        gemm(X.T, dhidden, self.state["W1"], alpha=-lr, beta=self.momentum)
        small_velocity = velocity[n1:]                     # [W2, b1, b2], tiny
        small_velocity *= self.momentum
        _axpy(self._grad_small, small_velocity, -lr)
        if self.reg:
            _axpy(flat[:nreg], velocity[:nreg], -lr * self.reg)   # L2 term of W1 and W2 at once
        _axpy(velocity, flat, 1.0)

    def _sgd_update(self, X, dhidden, lr):
        W2 = self.params["W2"]
        if self.reg:
            _axpy(W2.reshape(-1), self._grads["W2"].reshape(-1), self.reg)
        # W1 <- (1 - lr reg) W1 - lr X.T dh : gradient, decay and step in one GEMM
        gemm(X.T, dhidden, self.params["W1"], alpha=-lr, beta=1.0 - lr * self.reg)
        _axpy(self._grad_small, self._flat[self._W1_size:], -lr)

    def _rmsprop_update(self, X, dhidden, lr):
        W1, W2 = self.params["W1"], self.params["W2"]
        grad, cache = self._grad_flat, self._state_flat      # full [W1, W2, b1, b2] layout
        grad_W1 = grad[:self._W1_size].reshape(W1.shape)
        np.copyto(grad_W1, W1)
        gemm(X.T, dhidden, grad_W1, beta=self.reg)         # dW1 <- X.T dh + reg W1
        if self.reg:
            _axpy(W2.reshape(-1), self._grads["W2"].reshape(-1), self.reg)
        decay = self.rmsprop_decay
        cache *= decay
        cache += (1 - decay) * grad * grad
        grad /= np.sqrt(cache + self.rmsprop_eps)
        _axpy(grad, self._flat, -lr)


def predict_float32(params, X, batch_size=4096):
    """Predicted labels (N,) for X (N, D), in float32 chunks so memory stays flat."""
    W1, b1, W2, b2 = (np.ascontiguousarray(params[k], dtype=np.float32) for k in PARAM_NAMES)
    labels = np.empty(len(X), dtype=np.int64)
    for start in range(0, len(X), batch_size):
        chunk = np.ascontiguousarray(X[start:start + batch_size], dtype=np.float32)
        hidden = gemm(chunk, W1, np.empty((len(chunk), W1.shape[1]), np.float32))
        hidden += b1
        np.maximum(hidden, 0, out=hidden)
        scores = gemm(hidden, W2, np.empty((len(chunk), W2.shape[1]), np.float32))
        scores += b2
        labels[start:start + batch_size] = scores.argmax(axis=1)
    return labels
