"""The fused training step the trainer runs on real data (float32, or bf16 GEMM inputs).

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
  called through ctypes (blas.py). Two OpenBLAS copies in
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

precision "bf16" (opt-in) feeds the two big GEMMs bf16 copies of X, W1 and dh and
accumulates in fp32: on an Intel CPU through MKL's cblas_gemm_bf16bf16f32 (AMX /
AVX512_BF16 units where it has them), on a CPU with bf16 units that MKL does not use
(an AMD EPYC with AVX512_BF16) through oneDNN's matmul (onednn.py). The weights, the
velocity, the small GEMMs and every update stay fp32, and all of the step's BLAS calls
go to that one library's thread pool.

`FusedStep` keeps only parameters and optimiser state; it never allocates per
step beyond tiny (B,)-sized temporaries, prints nothing and draws no random
numbers.
"""
from __future__ import annotations

import numpy as np

from .blas import BF16, NumpyOpenBLAS, SciPyBLAS, bf16_backend, numpy_openblas_path, to_bf16
from .config import PRECISIONS
from .net import PARAM_NAMES
from .optim import UPDATE_RULES


# NumPy's wheel bundles an OpenBLAS that NumPy itself uses (for matmul in net.py, say) but does not
# expose to Python; calling that copy through ctypes keeps the whole process on one BLAS thread pool
# (blas.py; README: Performance). Where NumPy bundles none, SciPy's BLAS does the same calls.

def _choose_blas():
    path = numpy_openblas_path()
    return NumpyOpenBLAS(path) if path else SciPyBLAS()


blas = _choose_blas()          # the backend every call below goes through (tests swap it)


def gemm(a, b, out, alpha=1.0, beta=0.0):
    """out <- alpha a @ b + beta out, in place. out (M, N) C-contiguous float32; a, b float32,
    C- or F-ordered (so transposed views of contiguous arrays cost no copy)."""
    blas.sgemm(a, b, out, alpha, beta)
    return out


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

    def __init__(self, params, update, reg, momentum=0.0, rmsprop_decay=0.99, rmsprop_eps=1e-8,
                 precision="fp32"):
        if update not in UPDATE_RULES:
            raise ValueError(f"update must be one of {', '.join(UPDATE_RULES)}, got {update!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        # bf16: every BLAS call of the step goes to one library, MKL or oneDNN (one thread pool, as
        # with OpenBLAS for fp32)
        self.precision = precision
        self.blas = bf16_backend() if precision == "bf16" else blas
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
        # bf16: the GEMM inputs' copies, W1's made from the fp32 master weights at every step
        self._W1_bf16 = np.empty((D, H), BF16) if precision == "bf16" else None

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
            if self.precision == "bf16":
                self._X_bf16 = np.empty((batch_size, self.params["W1"].shape[0]), BF16)
                self._dhidden_bf16 = np.empty((batch_size, H), BF16)
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
        reg_loss = 0.5 * reg * self.blas.sdot(weights, weights) if reg else 0.0

        # forward
        self._first_layer(X, W1, hidden)                   # (B, H)
        self._relu_forward(hidden, b1, active)
        self.blas.sgemm(hidden, W2, scores, 1.0, 0.0)      # (B, C)
        scores += b2
        data_loss = self._softmax_loss(scores, y)          # scores now hold dscores
        dscores = scores                                   # (B, C)

        # second layer gradients (W2's without the L2 term: the update adds it), then back through the relu
        self.blas.sgemm(hidden.T, dscores, grads["W2"], 1.0, 0.0)   # (H, C)
        np.sum(dscores, axis=0, out=grads["b2"])
        self.blas.sgemm(dscores, W2.T, dhidden, 1.0, 0.0)  # (B, H)
        self._relu_backward(dhidden, active, grads["b1"])

        if self.update == "momentum":
            self._momentum_update(X, dhidden, lr)
        elif self.update == "sgd":
            self._sgd_update(X, dhidden, lr)
        else:
            self._rmsprop_update(X, dhidden, lr)
        return data_loss + reg_loss

    # The step's elementwise work, one method a piece so benchmarks/step_profile.py can time each on
    # the step's own buffers.
    @staticmethod
    def _relu_forward(hidden, b1, active):
        """hidden <- relu(hidden + b1) in place; active <- its mask, for the backward pass."""
        hidden += b1
        np.greater(hidden, 0, out=active)
        np.maximum(hidden, 0, out=hidden)

    def _softmax_loss(self, scores, y) -> float:
        """Mean softmax loss of scores (B, C), overwriting them with dscores = (softmax - onehot) / B."""
        B = scores.shape[0]
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
        return data_loss

    @staticmethod
    def _relu_backward(dhidden, active, grad_b1):
        """dhidden <- dhidden * relu mask in place; grad_b1 <- its column sums."""
        np.multiply(dhidden, active, out=dhidden)
        np.sum(dhidden, axis=0, out=grad_b1)

    def _first_layer(self, X, W1, hidden):
        """hidden <- X @ W1; in bf16, from bf16 copies of both (X's is kept for the W1 gradient)."""
        if self.precision == "bf16":
            X16 = to_bf16(np.ascontiguousarray(X, dtype=np.float32), self._X_bf16)
            self.blas.gemm_bf16(X16, to_bf16(W1, self._W1_bf16), hidden, 1.0, 0.0)
        else:
            self.blas.sgemm(X, W1, hidden, 1.0, 0.0)

    def _first_layer_gradient(self, X, dhidden, out, alpha, beta):
        """out <- alpha X.T @ dhidden + beta out (X.T, dhidden.T are F-ordered views: no copies);
        in bf16 from the step's bf16 X and a bf16 copy of dhidden, accumulated in fp32."""
        if self.precision == "bf16":
            dh16 = to_bf16(dhidden, self._dhidden_bf16)
            self.blas.gemm_bf16(self._X_bf16.T, dh16, out, alpha, beta)
        else:
            self.blas.sgemm(X.T, dhidden, out, alpha, beta)

    def _momentum_update(self, X, dhidden, lr):
        # v <- mu v - lr (dW + reg W); W <- W + v, for all four parameters
        flat, velocity, n1, nreg = self._flat, self._state_flat, self._W1_size, self._reg_size
        # W1: v <- mu v - lr X.T dh inside the GEMM (X.T, dhidden.T are F-ordered views: no copies)
        self._first_layer_gradient(X, dhidden, self.state["W1"], alpha=-lr, beta=self.momentum)
        small_velocity = velocity[n1:]                     # [W2, b1, b2], tiny
        small_velocity *= self.momentum
        self.blas.saxpy(self._grad_small, small_velocity, -lr)
        if self.reg:
            self.blas.saxpy(flat[:nreg], velocity[:nreg], -lr * self.reg)   # L2 term of W1 and W2 at once
        self.blas.saxpy(velocity, flat, 1.0)

    def _sgd_update(self, X, dhidden, lr):
        W2 = self.params["W2"]
        if self.reg:
            self.blas.saxpy(W2.reshape(-1), self._grads["W2"].reshape(-1), self.reg)
        # W1 <- (1 - lr reg) W1 - lr X.T dh : gradient, decay and step in one GEMM
        self._first_layer_gradient(X, dhidden, self.params["W1"], alpha=-lr, beta=1.0 - lr * self.reg)
        self.blas.saxpy(self._grad_small, self._flat[self._W1_size:], -lr)

    def _rmsprop_update(self, X, dhidden, lr):
        W1, W2 = self.params["W1"], self.params["W2"]
        grad, cache = self._grad_flat, self._state_flat      # full [W1, W2, b1, b2] layout
        grad_W1 = grad[:self._W1_size].reshape(W1.shape)
        np.copyto(grad_W1, W1)
        self._first_layer_gradient(X, dhidden, grad_W1, alpha=1.0, beta=self.reg)   # dW1 <- X.T dh + reg W1
        if self.reg:
            self.blas.saxpy(W2.reshape(-1), self._grads["W2"].reshape(-1), self.reg)
        decay = self.rmsprop_decay
        cache *= decay
        cache += (1 - decay) * grad * grad
        grad /= np.sqrt(cache + self.rmsprop_eps)
        self.blas.saxpy(grad, self._flat, -lr)


def predict_float32(params, X, batch_size=4096, backend=None):
    """Predicted labels (N,) for X (N, D), in float32 chunks so memory stays flat. `backend`: the
    BLAS to use (default: the module's); a bf16 trainer passes its step's, so that training and
    its per-epoch evaluation keep to one thread pool."""
    backend = backend or blas
    W1, b1, W2, b2 = (np.ascontiguousarray(params[k], dtype=np.float32) for k in PARAM_NAMES)
    labels = np.empty(len(X), dtype=np.int64)
    for start in range(0, len(X), batch_size):
        chunk = np.ascontiguousarray(X[start:start + batch_size], dtype=np.float32)
        hidden = np.empty((len(chunk), W1.shape[1]), np.float32)
        backend.sgemm(chunk, W1, hidden, 1.0, 0.0)
        hidden += b1
        np.maximum(hidden, 0, out=hidden)
        scores = np.empty((len(chunk), W2.shape[1]), np.float32)
        backend.sgemm(hidden, W2, scores, 1.0, 0.0)
        scores += b2
        labels[start:start + batch_size] = scores.argmax(axis=1)
    return labels
