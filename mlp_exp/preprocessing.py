"""Preprocessing, fitted on training images only: pure NumPy, float32 out.

- "mean_image": x - mean, the spec notebook's preprocessing
- "standardize": (x - mean) / std per pixel, statistics made mirror-symmetric
  so that flipping before or after preprocessing gives the same numbers
- "zca": standardize, then ZCA whitening x_s -> x_s W with
  W = U diag(1 / sqrt(lambda + ZCA_EPS)) U^T from the eigendecomposition of the
  standardized pixels' covariance, made mirror-symmetric too, so that flipping
  commutes with whitening (README: What the net sees)

Conversion works in chunks of rows, so a uint8 input never becomes a float64 copy.
`fold_into_first_layer` moves a whitening matrix into the net's first layer, so
a saved model needs only the per-pixel statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import IMAGE_SHAPE, PREPROCESSINGS
from .errors import UserError

_CHUNK_ROWS = 4096                          # rows converted to float at a time

# Added to every eigenvalue of the standardized pixels' covariance (each pixel has variance 1,
# so they sum to 3072) before the inverse square root. Directions with variance well above it
# come out with unit variance; the many below it (fine detail, and the JPEG noise of the
# replica) are damped rather than blown up to unit variance, which the net would memorise.
# 0.1 keeps about a fifth of the total variance, and with +-2 px translations it beat
# standardize clearly (README: What the net sees, with the figures).
ZCA_EPS = 0.1


def as_rows(X: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) or (N, D) -> (N, D) without copying: row-major, as the spec's X.reshape(N, -1)."""
    X = np.asarray(X)
    return X.reshape(X.shape[0], -1)


def mirror_columns(image_shape=IMAGE_SHAPE) -> np.ndarray:
    """The column permutation P of flattened HWC rows that mirrors every image left-right:
    rows[:, P] are the mirror images of rows. P is its own inverse."""
    return np.arange(int(np.prod(image_shape))).reshape(image_shape)[:, ::-1].reshape(-1)


@dataclass(frozen=True, eq=False)
class Preprocessor:
    """x -> ((x - mean) / scale) @ whitening, fitted on training images only.

    - mean: float32 (D,)
    - scale: float32 (D,), all ones for "mean_image"
    - whitening: float32 (D, D) for "zca", else None (no matrix product)
    All are read-only; save them with `to_arrays` (e.g. beside model weights).
    """
    mean: np.ndarray
    scale: np.ndarray
    whitening: np.ndarray | None = None

    def __post_init__(self):
        mean = np.array(self.mean, dtype=np.float32).reshape(-1)
        scale = np.array(self.scale, dtype=np.float32).reshape(-1)
        if mean.shape != scale.shape:
            raise ValueError(f"mean and scale must have the same size, got {mean.size} and {scale.size}")
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            raise ValueError("scale must be finite and > 0 everywhere")
        for array in (mean, scale):
            array.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scale", scale)
        if self.whitening is not None:
            whitening = np.array(self.whitening, dtype=np.float32)
            if whitening.shape != (mean.size, mean.size):
                raise ValueError(f"whitening must be ({mean.size}, {mean.size}), got {whitening.shape}")
            if not np.all(np.isfinite(whitening)):
                raise ValueError("whitening must be finite everywhere")
            whitening.setflags(write=False)
            object.__setattr__(self, "whitening", whitening)

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
        # whitening multiplies each standardized chunk by W, so it needs the chunk apart from `out`
        scratch = None if self.whitening is None else np.empty((min(rows.shape[0], _CHUNK_ROWS), rows.shape[1]),
                                                               dtype=np.float32)
        for start in range(0, rows.shape[0], _CHUNK_ROWS):
            block = out[start:start + _CHUNK_ROWS]
            standardized = block if scratch is None else scratch[:block.shape[0]]
            # cast first, then float32-only ufuncs: the same numbers as subtract(..., dtype=float32),
            # which casts its inputs the same way, but without the mixed-dtype ufunc's buffered
            # casting loop, which takes most of the time in the trainer's per-batch preprocessing
            standardized[...] = rows[start:start + _CHUNK_ROWS]
            np.subtract(standardized, self.mean, out=standardized)
            np.divide(standardized, self.scale, out=standardized)
            if scratch is not None:
                np.matmul(standardized, self.whitening, out=block)
        return out

    def to_arrays(self) -> dict:
        arrays = {"mean": self.mean, "scale": self.scale}
        if self.whitening is not None:
            arrays["whitening"] = self.whitening
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "Preprocessor":
        return cls(mean=arrays["mean"], scale=arrays["scale"],
                   whitening=arrays["whitening"] if "whitening" in arrays else None)


def fold_into_first_layer(preprocessor: Preprocessor, params: dict) -> tuple[Preprocessor, dict]:
    """(preprocessor, params) -> an equivalent pair whose preprocessor has no whitening matrix.

    The first layer computes (x_s @ W) @ W1 + b1 = x_s @ (W @ W1) + b1, so W1' = W @ W1 and
    the per-pixel statistics alone preprocess: a saved model keeps the format (mean, scale,
    W1, b1, W2, b2) that every logged model has. W @ W1 is computed in float64, so the folded
    net's scores differ from the trained one's by float32 rounding only. Without whitening,
    both come back unchanged. Pure: the inputs are not modified.
    """
    if preprocessor.whitening is None:
        return preprocessor, params
    W1 = np.asarray(params["W1"])
    folded = preprocessor.whitening.astype(np.float64) @ W1.astype(np.float64)
    return Preprocessor(preprocessor.mean, preprocessor.scale), {**params, "W1": folded.astype(W1.dtype)}


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
    """Fit preprocessing statistics on training images.

    Inputs:
    - X_train: (N, 32, 32, 3) images (or (N, 3072) rows of such images), any numeric dtype
    - mode: "mean_image" (the spec: subtract the mean image, scale 1),
      "standardize" (subtract the mean, divide by the std, both mirror-symmetric) or
      "zca" (standardize, then the mirror-symmetric ZCA whitening matrix, `fit_whitening`)
    Returns a Preprocessor with mean and scale of shape (D,), and for "zca" whitening (D, D).
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
    standardizer = Preprocessor(mean=sym_mean.reshape(-1), scale=np.maximum(std, floor))
    return fit_whitening(rows, standardizer) if mode == "zca" else standardizer


def fit_whitening(X_train: np.ndarray, standardizer: Preprocessor, eps: float = ZCA_EPS,
                  image_shape=IMAGE_SHAPE) -> Preprocessor:
    """`standardizer` (a "standardize" Preprocessor fitted on X_train) plus its ZCA whitening matrix.

    With Xs the standardized training rows and P the mirror permutation (`mirror_columns`):
    S = Xs^T Xs / N, symmetrised over mirror images, S <- (S + P S P) / 2, is the covariance of
    the training set together with its mirror images (their mean is exactly zero, see
    fit_preprocessor), i.e. of what training with flips shows the net. Then S = U diag(lambda) U^T
    and W = U diag(1 / sqrt(lambda + eps)) U^T, so whitened rows have covariance
    U diag(lambda / (lambda + eps)) U^T. Since P S P = S, W commutes with P: mirroring whitened
    rows (a column permutation) equals whitening mirrored images.
    """
    rows = as_rows(X_train)
    n, d = rows.shape
    if d != int(np.prod(image_shape)) or standardizer.mean.size != d:
        raise ValueError(f"whitening needs {image_shape} images to mirror them, got {d} values")
    if standardizer.whitening is not None:
        raise ValueError("fit_whitening takes a standardize preprocessor, not one that already whitens")
    mirror = mirror_columns(image_shape)
    if 2 * n <= d:
        W = _whitening_from_gram(standardizer.apply(rows), mirror, eps)
    else:
        S = np.zeros((d, d))
        for start in range(0, n, _CHUNK_ROWS):
            chunk = standardizer.apply(rows[start:start + _CHUNK_ROWS])
            # a float32 GEMM per chunk (half the time of float64, ~1e-6 relative error on entries
            # that eps = 0.1 dwarfs), summed across chunks in float64
            S += chunk.T @ chunk
        S /= n
        S = (S + S[np.ix_(mirror, mirror)]) / 2
        lam, U = np.linalg.eigh(S)
        W = (U / np.sqrt(np.maximum(lam, 0.0) + eps)) @ U.T
    # W commutes with P up to rounding already; make it exact, so flips of whitened rows are
    W = (W + W[np.ix_(mirror, mirror)]) / 2
    return Preprocessor(standardizer.mean, standardizer.scale, whitening=W)


def _whitening_from_gram(Xs: np.ndarray, mirror: np.ndarray, eps: float) -> np.ndarray:
    """W of fit_whitening for fewer rows (with their mirrors) than pixels, from the (2N, 2N) Gram
    matrix instead of the (D, D) covariance: the same matrix, for a fraction of the eigen-
    decomposition's time (tests and tiny studies would otherwise pay ~13 s for it).

    With A = [Xs; Xs P] (2N, D), S = A^T A / 2N and G = A A^T / 2N = V diag(lambda) V^T share
    their nonzero eigenvalues, and S's eigenvectors are the rows of B = V^T A, scaled by
    1 / sqrt(2N lambda). S is zero off their span, where W is I / sqrt(eps), so
    W = I / sqrt(eps) - B^T diag(h / 2N) B with h = (1/sqrt(eps) - 1/sqrt(lambda + eps)) / lambda,
    written without the division so that lambda ~ 0 (a rank-deficient G) is harmless.
    """
    A = np.concatenate([Xs, Xs[:, mirror]]).astype(np.float64)
    m, d = A.shape
    lam, V = np.linalg.eigh(A @ A.T / m)
    root, root_eps = np.sqrt(np.maximum(lam, 0.0) + eps), np.sqrt(eps)
    h = 1.0 / (root_eps * root * (root_eps + root))
    B = V.T @ A
    return np.eye(d) / root_eps - (B.T * (h / m)) @ B
