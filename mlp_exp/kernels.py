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
- arrays are C-contiguous, so their transposes are Fortran-ordered and SciPy
  hands them to BLAS without copies;
- every GEMM of the step goes through SciPy's BLAS, none through NumPy's.
  NumPy and SciPy wheels each bundle their own OpenBLAS with its own thread
  pool; alternating between the two makes the pools' spinning threads fight
  for the two cores (measured: 13x slower at hidden 100).

`FusedStep` keeps only parameters and optimiser state; it never allocates per
step beyond tiny (B,)-sized temporaries, prints nothing and draws no random
numbers.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import blas

PARAM_NAMES = ("W1", "b1", "W2", "b2")


def _as_fortran_operand(m):
    """m (2-D) -> (F-ordered array, trans flag) with op(array) == m.T, copy-free for C or F input."""
    if m.flags.c_contiguous:
        return m.T, 0
    if m.flags.f_contiguous:
        return m, 1
    m = np.ascontiguousarray(m)
    return m.T, 0


def gemm(a, b, out, alpha=1.0, beta=0.0):
    """out <- alpha a @ b + beta out, in place, through SciPy's sgemm. out (M, N) C-contiguous float32.

    Row-major out is column-major out.T = b.T @ a.T, so BLAS gets b.T and a.T,
    which are Fortran-ordered views when a and b are C-contiguous (or transposes of such).
    """
    b_op, trans_b = _as_fortran_operand(b)
    a_op, trans_a = _as_fortran_operand(a)
    result = blas.sgemm(alpha, b_op, a_op, beta=beta, c=out.T, trans_a=trans_b, trans_b=trans_a,
                        overwrite_c=1)
    if result.ctypes.data != out.ctypes.data:      # f2py copied: the in-place contract broke
        raise RuntimeError("sgemm did not write in place; out must be C-contiguous float32")
    return out


class FusedStep:
    """One minibatch step of loss + gradient + update, in place on float32 params.

    Inputs:
    - params: dict W1 (D, H), b1 (H,), W2 (H, C), b2 (C,); copied to float32.
    - update: "sgd", "momentum" or "rmsprop" (see optim.py for the reference rules)
    - reg, momentum: as in optim.py; the learning rate is passed per step so the
      trainer can decay it.
    """

    def __init__(self, params, update, reg, momentum=0.0, rmsprop_decay=0.99, rmsprop_eps=1e-8):
        if update not in ("sgd", "momentum", "rmsprop"):
            raise ValueError(f"update must be sgd, momentum or rmsprop, got {update!r}")
        self.params = {k: np.array(params[k], dtype=np.float32, order="C") for k in PARAM_NAMES}
        self.update, self.reg, self.momentum = update, float(reg), float(momentum)
        self.rmsprop_decay, self.rmsprop_eps = rmsprop_decay, rmsprop_eps
        # momentum: velocity; rmsprop: running mean of squared gradients
        self.state = ({k: np.zeros_like(v) for k, v in self.params.items()}
                      if update != "sgd" else {})
        self._batch_size = None

    def _buffers(self, batch_size):
        if self._batch_size != batch_size:
            H = self.params["W1"].shape[1]
            C = self.params["W2"].shape[1]
            self._hidden = np.empty((batch_size, H), np.float32)       # (B, H) relu output
            self._active = np.empty((batch_size, H), np.bool_)         # (B, H) relu mask
            self._dhidden = np.empty((batch_size, H), np.float32)      # (B, H)
            self._scores = np.empty((batch_size, C), np.float32)       # (B, C)
            self._dW2 = np.empty((H, C), np.float32)                   # (H, C)
            self._rows = np.arange(batch_size)
            self._batch_size = batch_size
            # rmsprop needs the explicit W1 gradient
            self._grad_W1 = np.empty_like(self.params["W1"]) if self.update == "rmsprop" else None

    def step(self, X, y, learning_rate) -> float:
        """X (B, D) float32 C-contiguous, y (B,) int -> loss before the update (float)."""
        p = self.params
        W1, b1, W2, b2 = p["W1"], p["b1"], p["W2"], p["b2"]
        B = X.shape[0]
        self._buffers(B)
        hidden, active, dhidden, scores = self._hidden, self._active, self._dhidden, self._scores
        reg, lr = self.reg, float(learning_rate)

        # forward
        gemm(X, W1, hidden)                                # (B, H)
        hidden += b1
        np.maximum(hidden, 0, out=hidden)
        gemm(hidden, W2, scores)                           # (B, C)
        scores += b2

        # softmax loss, with dscores written over scores
        scores -= scores.max(axis=1, keepdims=True)
        correct = scores[self._rows, y]                    # (B,) shifted score of the true class
        np.exp(scores, out=scores)
        sums = scores.sum(axis=1)                          # (B,)
        data_loss = float(np.mean(np.log(sums) - correct))
        flat_W1, flat_W2 = W1.reshape(-1), W2.reshape(-1)
        reg_loss = 0.5 * reg * (float(blas.sdot(flat_W1, flat_W1)) + float(blas.sdot(flat_W2, flat_W2)))
        scores /= sums[:, None]
        scores[self._rows, y] -= 1
        scores *= 1.0 / B
        dscores = scores                                   # (B, C)

        # second layer gradients, then back through the relu
        dW2 = gemm(hidden.T, dscores, self._dW2)           # (H, C)
        dW2 += reg * W2
        db2 = dscores.sum(axis=0)
        gemm(dscores, W2.T, dhidden)                       # (B, H)
        np.greater(hidden, 0, out=active)
        np.multiply(dhidden, active, out=dhidden)
        db1 = dhidden.sum(axis=0)

        self._update_small(dW2, db2, db1, lr)
        self._update_W1(X, dhidden, lr)
        return data_loss + reg_loss

    def _update_small(self, dW2, db2, db1, lr):
        # W2, b1, b2 are tiny: plain NumPy, same formulas as optim.py
        for name, grad in (("W2", dW2), ("b2", db2), ("b1", db1)):
            w = self.params[name]
            if self.update == "sgd":
                w -= lr * grad
            elif self.update == "momentum":
                v = self.state[name]
                v *= self.momentum
                v -= lr * grad
                w += v
            else:
                cache = self.state[name]
                cache *= self.rmsprop_decay
                cache += (1 - self.rmsprop_decay) * grad * grad
                w -= lr * grad / np.sqrt(cache + self.rmsprop_eps)

    def _update_W1(self, X, dhidden, lr):
        W1 = self.params["W1"]
        # W1.T, X.T, dhidden.T are Fortran-ordered views: BLAS works on them in place.
        if self.update == "sgd":
            # W1 <- (1 - lr reg) W1 - lr X.T dh : gradient, decay and step in one GEMM
            gemm(X.T, dhidden, W1, alpha=-lr, beta=1.0 - lr * self.reg)
        elif self.update == "momentum":
            v = self.state["W1"]
            # v <- mu v - lr X.T dh, in the GEMM; then v -= lr reg W1; W1 += v
            gemm(X.T, dhidden, v, alpha=-lr, beta=self.momentum)
            if self.reg:
                blas.saxpy(W1.reshape(-1), v.reshape(-1), a=-lr * self.reg)
            W1 += v
        else:
            grad = self._grad_W1
            np.copyto(grad, W1)
            gemm(X.T, dhidden, grad, beta=self.reg)        # grad <- X.T dh + reg W1
            cache = self.state["W1"]
            cache *= self.rmsprop_decay
            cache += (1 - self.rmsprop_decay) * grad * grad
            grad /= np.sqrt(cache + self.rmsprop_eps)
            grad *= lr
            W1 -= grad


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
