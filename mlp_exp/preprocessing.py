"""Per-pixel preprocessing, fitted on training images only: pure NumPy, float32 out.

- "mean_image": x - mean, the spec notebook's preprocessing
- "standardize": (x - mean) / std per pixel, statistics made mirror-symmetric
  so that flipping before or after preprocessing gives the same numbers

Conversion works in chunks of rows, so a uint8 input never becomes a float64 copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import IMAGE_SHAPE, PREPROCESSINGS
from .errors import UserError

_CHUNK_ROWS = 4096                          # rows converted to float at a time


def as_rows(X: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) or (N, D) -> (N, D) without copying: row-major, as the spec's X.reshape(N, -1)."""
    X = np.asarray(X)
    return X.reshape(X.shape[0], -1)


@dataclass(frozen=True, eq=False)
class Preprocessor:
    """x -> (x - mean) / scale per pixel, fitted on training images only.

    - mean: float32 (D,)
    - scale: float32 (D,), all ones for "mean_image"
    Both are read-only; save them with `to_arrays` (e.g. beside model weights).
    """
    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self):
        mean = np.array(self.mean, dtype=np.float32).reshape(-1)
        scale = np.array(self.scale, dtype=np.float32).reshape(-1)
        if mean.shape != scale.shape:
            raise ValueError(f"mean and scale must have the same size, got {mean.size} and {scale.size}")
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            raise ValueError("scale must be finite and > 0 everywhere")
        mean.setflags(write=False)
        scale.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scale", scale)

    def apply(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """X: (N, 32, 32, 3) or (N, D), any numeric dtype -> float32 (N, D).

        Works `_CHUNK_ROWS` rows at a time, so a uint8 input never becomes a
        full float64 (or even a second float32) array. `out`, a float32 (N, D)
        buffer, lets the trainer preprocess each minibatch without allocating.
        """
        rows = as_rows(X)
        if rows.shape[1] != self.mean.size:
            raise ValueError(f"X has {rows.shape[1]} values per image, the preprocessor expects {self.mean.size}")
        if out is None:
            out = np.empty(rows.shape, dtype=np.float32)
        for start in range(0, rows.shape[0], _CHUNK_ROWS):
            block = out[start:start + _CHUNK_ROWS]
            # cast first, then float32-only ufuncs: the same numbers as subtract(..., dtype=float32),
            # which casts its inputs the same way, but without the mixed-dtype ufunc's buffered
            # casting loop, which takes most of the time in the trainer's per-batch preprocessing
            block[...] = rows[start:start + _CHUNK_ROWS]
            np.subtract(block, self.mean, out=block)
            np.divide(block, self.scale, out=block)
        return out

    def to_arrays(self) -> dict:
        return {"mean": self.mean, "scale": self.scale}

    @classmethod
    def from_arrays(cls, arrays) -> "Preprocessor":
        return cls(mean=arrays["mean"], scale=arrays["scale"])


def _pixel_mean(rows: np.ndarray) -> np.ndarray:
    """rows (N, D) -> float64 (D,), summed chunk by chunk so no float64 copy of `rows` exists."""
    total = np.zeros(rows.shape[1])
    for start in range(0, rows.shape[0], _CHUNK_ROWS):
        total += rows[start:start + _CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    return total / rows.shape[0]


def _pixel_var(rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """rows (N, D), mean (D,) -> float64 (D,); centred second pass, which is exact where E[x^2] - m^2 is not."""
    squares = np.zeros(rows.shape[1])
    for start in range(0, rows.shape[0], _CHUNK_ROWS):
        centred = rows[start:start + _CHUNK_ROWS].astype(np.float64) - mean
        squares += np.einsum("nd,nd->d", centred, centred)
    return squares / rows.shape[0]


def fit_preprocessor(X_train: np.ndarray, mode: str = "mean_image") -> Preprocessor:
    """Fit per-pixel statistics on training images.

    Inputs:
    - X_train: (N, 32, 32, 3) images (or (N, 3072) rows of such images), any numeric dtype
    - mode: "mean_image" (the spec: subtract the mean image, scale 1) or
      "standardize" (subtract the mean, divide by the std, both mirror-symmetric)
    Returns a Preprocessor with mean and scale of shape (D,).
    """
    if mode not in PREPROCESSINGS:
        raise UserError(f"preprocessing must be one of {', '.join(PREPROCESSINGS)}, got {mode!r}")
    rows = as_rows(X_train)
    if rows.shape[0] == 0:
        raise ValueError("cannot fit a preprocessor on zero images")
    mean = _pixel_mean(rows)
    if mode == "mean_image":
        return Preprocessor(mean=mean, scale=np.ones_like(mean))
    var = _pixel_var(rows, mean)
    if rows.shape[1] != int(np.prod(IMAGE_SHAPE)):
        raise ValueError(f"standardize needs {IMAGE_SHAPE} images to mirror them, got {rows.shape[1]} values")
    # Training may flip images left-right, so the net sees the training set and
    # its mirror image equally often. Use the statistics of that union: a
    # flipped and an unflipped image are then normalised the same way, and the
    # union's pixels are exactly zero-mean/unit-variance. Pooled over a pixel
    # and its mirror, mean = (m + m') / 2 and var = (v + v') / 2 + ((m - m') / 2)^2.
    m, v = mean.reshape(IMAGE_SHAPE), var.reshape(IMAGE_SHAPE)
    m_mirror, v_mirror = m[:, ::-1, :], v[:, ::-1, :]
    sym_mean = (m + m_mirror) / 2
    sym_var = (v + v_mirror) / 2 + ((m - m_mirror) / 2) ** 2
    std = np.sqrt(sym_var).reshape(-1)
    # a pixel that is (nearly) constant in training would otherwise divide by ~0
    floor = max(1e-3 * float(std.mean()), 1e-6)
    return Preprocessor(mean=sym_mean.reshape(-1), scale=np.maximum(std, floor))
