"""The two-layer fully connected net as pure NumPy functions.

    scores = relu(X @ W1 + b1) @ W2 + b2
    loss   = softmax cross-entropy(scores, y) + 0.5 * reg * (|W1|^2 + |W2|^2)

`params` is a plain dict with W1 (D, H), b1 (H,), W2 (H, C), b2 (C,).
Layers come as forward/backward pairs; the composite `two_layer_loss` is built
from them. Nothing here does I/O, keeps state or touches a global generator.
This is the float64 reference: `kernels.py` holds the fused float32 training
step, which the tests check against these functions.
"""
from __future__ import annotations

import numpy as np

PARAM_NAMES = ("W1", "b1", "W2", "b2")    # the keys of every params dict


def affine_forward(x, w, b):
    """x (N, D), w (D, M), b (M,) -> out (N, M), cache."""
    return x @ w + b, (x, w)


def affine_backward(dout, cache):
    """dout (N, M) -> dx (N, D), dw (D, M), db (M,)."""
    x, w = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def relu_forward(x):
    """x (N, M) -> out (N, M), cache."""
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    """dout (N, M) -> dx (N, M)."""
    return dout * (cache > 0)


def softmax_loss(scores, y):
    """scores (N, C), integer labels y (N,) -> mean cross-entropy loss, dscores (N, C)."""
    shifted = scores - scores.max(axis=1, keepdims=True)      # exp() cannot overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = scores.shape[0]
    loss = -log_probs[np.arange(n), y].mean()
    dscores = np.exp(log_probs)
    dscores[np.arange(n), y] -= 1
    return loss, dscores / n


def two_layer_loss(params, X, y=None, reg=0.0):
    """Scores, or loss and gradients, of the two-layer net.

    Inputs:
    - params: dict W1 (D, H), b1 (H,), W2 (H, C), b2 (C,)
    - X: (N, D) inputs
    - y: (N,) integer labels in [0, C), or None
    - reg: L2 strength; the penalty is 0.5 * reg * (sum W1^2 + sum W2^2)

    Returns scores (N, C) when y is None, else (loss, grads) with grads keyed as params.
    """
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    hidden_pre, affine1_cache = affine_forward(X, W1, b1)      # (N, H)
    hidden, relu_cache = relu_forward(hidden_pre)              # (N, H)
    scores, affine2_cache = affine_forward(hidden, W2, b2)     # (N, C)
    if y is None:
        return scores

    data_loss, dscores = softmax_loss(scores, y)
    loss = data_loss + 0.5 * reg * (np.sum(W1 * W1) + np.sum(W2 * W2))
    dhidden, dW2, db2 = affine_backward(dscores, affine2_cache)
    dhidden_pre = relu_backward(dhidden, relu_cache)
    _, dW1, db1 = affine_backward(dhidden_pre, affine1_cache)
    grads = {"W1": dW1 + reg * W1, "b1": db1, "W2": dW2 + reg * W2, "b2": db2}
    return loss, grads


def init_params(input_size, hidden_size, num_classes, rng, std, dtype=np.float64):
    """Gaussian weights with standard deviation `std`, zero biases, drawn from `rng`."""
    return {
        "W1": (std * rng.standard_normal((input_size, hidden_size))).astype(dtype),
        "b1": np.zeros(hidden_size, dtype=dtype),
        "W2": (std * rng.standard_normal((hidden_size, num_classes))).astype(dtype),
        "b2": np.zeros(num_classes, dtype=dtype),
    }


def predict(params, X, batch_size=10_000):
    """Predicted labels (N,) for inputs X (N, D), in chunks so memory stays flat."""
    return np.concatenate([
        two_layer_loss(params, X[start:start + batch_size]).argmax(axis=1)
        for start in range(0, len(X), batch_size)
    ]) if len(X) else np.zeros(0, dtype=np.intp)


def accuracy(params, X, y) -> float:
    return float(np.mean(predict(params, X) == y))
