"""Minibatch training of the two-layer net, reporting each epoch to callbacks.

The trainer never prints, logs or saves. Tracking (MLflow), pruning (Optuna)
and progress display hook in as callbacks: each is called with an `EpochStats`
after every epoch and may raise `StopTraining` to end the run early. A loss
that stops being finite ends the run at once with `stop_reason="diverged"`.

All randomness (initial weights, epoch shuffles, flips, shifts, the
train-accuracy sample) comes from one `np.random.default_rng(config.seed)`, so a run is
reproducible from its config alone.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .config import IMAGE_SHAPE, TrainConfig
from .kernels import FusedStep, predict_float32
from .net import init_params
from .preprocessing import mirror_columns

# Train accuracy is measured on a fixed random sample of this many training
# images, as the spec did: the full set would cost a third of an epoch.
TRAIN_ACCURACY_SAMPLE = 1000


class StopTraining(Exception):
    """Raised by a callback to end training after the current epoch; str(self) is the reason."""


@dataclass
class EpochStats:
    epoch: int                 # 1-based
    loss: float                # mean training loss over the epoch's minibatches
    train_accuracy: float
    val_accuracy: float
    learning_rate: float       # the rate used during this epoch
    seconds: float             # wall time of the epoch's training steps
    eval_seconds: float        # wall time of its accuracy evaluation
    params: dict = field(repr=False)   # current weights; valid only during the callback


@dataclass
class TrainResult:
    best_params: dict          # the weights of the best validation epoch
    best_val_accuracy: float
    best_epoch: int            # 0 when no epoch finished
    loss_history: np.ndarray   # (iterations,) loss of every minibatch
    epochs: list               # EpochStats of every finished epoch (params dropped)
    stop_reason: str | None = None   # None, "diverged", or a callback's StopTraining reason

    @property
    def diverged(self) -> bool:
        return self.stop_reason == "diverged"

    def curves(self) -> tuple[np.ndarray, list, list]:
        """(loss per iteration, train accuracy per epoch, val accuracy per epoch), epochs that
        ended in a non-finite loss left out: what diagnosis.diagnose and vis.render_training_curves read."""
        finished = [e for e in self.epochs if np.isfinite(e.val_accuracy)]
        return (np.asarray(self.loss_history), [e.train_accuracy for e in finished],
                [e.val_accuracy for e in finished])


Callback = Callable[[EpochStats], None]


def flip_rows(X, rows, image_shape=IMAGE_SHAPE):
    """Mirror, left-right, the rows of X (B, D) selected by rows (a (B,) mask or indices), in place."""
    images = X.reshape((X.shape[0],) + tuple(image_shape))   # (B, H, W, C) view
    images[rows] = images[rows, :, ::-1]


def padded_images(count, reach, dtype, image_shape=IMAGE_SHAPE):
    """A zeroed (count, H + 2 reach, W + 2 reach, C) buffer for `translate_rows(..., padded=)`: it only
    ever writes the inside, so the border of `reach` pixels stays zero from one batch to the next."""
    height, width, channels = image_shape
    return np.zeros((count, height + 2 * reach, width + 2 * reach, channels), dtype)


def translate_rows(X, shifts, out=None, image_shape=IMAGE_SHAPE, rows=None, flips=None, padded=None):
    """Each image of X (N, D), or of X[rows], mirrored left-right where flips[i], shifted by
    shifts[i] = (dy, dx) pixels, down and right, into out (B, D).

    Output pixel (y, x) is input pixel (y - dy, x - dx) of the (mirrored) image; pixels shifted in
    from outside are 0, which after any of the preprocessings is the training set's mean. `out`,
    not X itself, may be given to reuse a buffer, and `padded` (from `padded_images`, with a reach of
    at least the largest shift) to reuse the working buffer too, as `train` does.

    How, in a handful of NumPy calls whatever the batch size (a slice copy per image took 2.3-2.9x as
    long for a batch of 200: README, Performance): the picked images are copied into the middle of a zero-bordered
    buffer, the mirrored ones turned by 180 degrees on the way (one strided copy per channel, where
    mirroring moves one pixel at a time); every shifted image is then one window of its padded
    image, so a single gather from a strided view of all windows fills `out`, and reading the turned
    images' rows bottom up makes them mirror images.
    """
    X = np.ascontiguousarray(X)
    height, width, channels = image_shape
    picked = np.arange(X.shape[0]) if rows is None else np.asarray(rows, dtype=np.intp).reshape(-1)
    count = len(picked)
    mirrored = np.zeros(count, bool) if flips is None else np.asarray(flips, dtype=bool).reshape(-1)
    shifts = np.asarray(shifts, dtype=np.intp).reshape(count, 2)
    largest = int(np.abs(shifts).max()) if count else 0
    if padded is None:
        padded = padded_images(count, largest, X.dtype, image_shape)
    reach = (padded.shape[1] - height) // 2
    if padded.shape[0] < count or padded.shape[1:] != (height + 2 * reach, width + 2 * reach, channels) \
            or padded.dtype != X.dtype:
        raise ValueError(f"padded must be padded_images({count}, reach, {X.dtype}), got shape "
                         f"{padded.shape} {padded.dtype}")
    if largest > reach:
        raise ValueError(f"a shift of {largest} pixels is beyond the padded buffer's reach of {reach}")
    if out is None:
        out = np.empty((count, X.shape[1]), X.dtype)
    if count == 0:
        return out
    # whole pixels as opaque items, so that a copy moves a row of pixels at a time
    pixel = np.dtype((np.void, channels * X.dtype.itemsize))
    images = X.view(pixel).reshape(X.shape[0], height, width)
    padded = padded[:count]
    middle = (slice(reach, reach + height), slice(reach, reach + width))
    plain, turned = np.flatnonzero(~mirrored), np.flatnonzero(mirrored)
    padded.view(pixel)[(plain, *middle, 0)] = images[picked[plain]]
    turned_images = X[picked[turned]].reshape(-1, height, width, channels)
    for channel in range(channels):
        padded[(turned, *middle, channel)] = turned_images[:, ::-1, ::-1, channel]
    shifted = out.view(pixel).reshape(count, height, width)
    dy, dx = shifts[:, 0], shifts[:, 1]
    for chosen, source in ((plain, padded), (turned, padded[:, ::-1])):
        # windows[i, oy, ox] is the (H, W) window of padded image i starting at row oy, column ox
        pixels = source.view(pixel)[..., 0]                 # (count, H + 2 reach, W + 2 reach)
        s_image, s_row, s_pixel = pixels.strides
        windows = np.lib.stride_tricks.as_strided(
            pixels, (count, 2 * reach + 1, 2 * reach + 1, height, width),
            (s_image, s_row, s_pixel, s_row, s_pixel), writeable=False)
        shifted[chosen] = windows[chosen, reach - dy[chosen], reach - dx[chosen]]
    return out


def mirror_rows(X, image_shape=IMAGE_SHAPE, chunk_rows=1024):
    """A copy of X (N, D) with every image mirrored left-right: what `train` flips from.

    Mirroring a (B, H, W, C) selection in place moves 3-value pixels one
    NumPy inner loop at a time, which costs more than a small net's non-GEMM
    work per step. A study builds this copy once (the size of the uint8
    training set) and every trial gathers its flipped rows from it instead.
    """
    rows = np.asarray(X)
    if rows.ndim != 2 or rows.shape[1] != int(np.prod(image_shape)):
        raise ValueError(f"mirror_rows needs (N, {int(np.prod(image_shape))}) rows of {image_shape} images, "
                         f"got shape {rows.shape}")
    mirror = mirror_columns(image_shape)
    out = np.empty_like(rows)
    for start in range(0, rows.shape[0], chunk_rows):
        np.take(rows[start:start + chunk_rows], mirror, axis=1, out=out[start:start + chunk_rows])
    return out


def train(X_train, y_train, X_val, y_val, config: TrainConfig,
          callbacks: Sequence[Callback] = (), params=None, preprocessor=None,
          X_train_mirrored=None) -> TrainResult:
    """Train with shuffled epochs; returns the best-on-validation weights.

    Inputs:
    - X_train (N, D), y_train (N,) int; X_val (M, D), y_val (M,)
    - config: hyperparameters; config.seed seeds everything random
    - callbacks: called with EpochStats after each epoch
    - params: initial weights; by default drawn with config.init_std
    - preprocessor: if given (a data.Preprocessor), X_train and X_val are raw
      pixels (uint8) and each minibatch is preprocessed as it is drawn. A study
      keeps one uint8 copy of the data (4x smaller than float32) and every
      trial may choose its own preprocessing.
      Without it, X_train and X_val are already preprocessed float32 (for
      "zca", whitened once: data.RawSplit.training_rows).
    - X_train_mirrored: optional `mirror_rows(X_train)`. With config.flip, the
      flipped rows of each minibatch are then gathered from it rather than
      mirrored by a column permutation of the batch: the same numbers, faster.
      Flips happen before preprocessing; the "standardize" and "zca" statistics
      are mirror-symmetric, so for them the order makes no difference, and
      whitened rows can be flipped as they are.
    With config.translate, every image of a minibatch is then shifted by its own
    (dy, dx) drawn from [-translate, translate]^2 (`translate_rows`), after
    preprocessing, so the pixels shifted in are zero: the mean.
    """
    rng = np.random.default_rng(config.seed)
    num_train, input_size = X_train.shape
    num_classes = int(max(y_train.max(), y_val.max())) + 1 if len(y_val) else int(y_train.max()) + 1
    if params is None:
        params = init_params(input_size, config.hidden_size, num_classes, rng, config.init_std,
                             dtype=np.float32)
    if (config.flip or config.translate) and input_size != int(np.prod(IMAGE_SHAPE)):
        raise ValueError(f"{'flip' if config.flip else 'translate'} needs {IMAGE_SHAPE} images "
                         f"({np.prod(IMAGE_SHAPE)} inputs), got {input_size} inputs")
    if X_train_mirrored is not None and (np.shape(X_train_mirrored) != X_train.shape
                                         or X_train_mirrored.dtype != X_train.dtype):
        raise ValueError(f"X_train_mirrored must be mirror_rows(X_train), shape {X_train.shape} "
                         f"{X_train.dtype}; got {np.shape(X_train_mirrored)} {X_train_mirrored.dtype}")
    batch_size = min(config.batch_size, num_train)
    iterations_per_epoch = max(num_train // batch_size, 1)
    sample = rng.choice(num_train, size=min(TRAIN_ACCURACY_SAMPLE, num_train), replace=False)
    X_sample, y_sample = X_train[sample], y_train[sample]
    # each minibatch is gathered into (and, with a preprocessor, converted into) buffers reused all run
    raw_buffer = np.empty((batch_size, input_size), X_train.dtype)
    batch_buffer = shift_buffer = None
    if preprocessor is not None:
        X_sample, X_val = preprocessor.apply(X_sample), preprocessor.apply(X_val)
        batch_buffer = np.empty((batch_size, input_size), np.float32)
    if config.translate:
        shift_dtype = np.float32 if preprocessor else X_train.dtype
        shift_buffer = np.empty((batch_size, input_size), shift_dtype)
        padded_buffer = padded_images(batch_size, config.translate, shift_dtype)
    mirror = mirror_columns()

    step = FusedStep(params, config.update, config.reg, config.momentum, precision=config.precision)
    learning_rate = config.learning_rate
    loss_history = np.zeros(config.num_epochs * iterations_per_epoch)
    best_params = {k: v.copy() for k, v in step.params.items()}
    best_val, best_epoch, epochs, stop_reason = -1.0, 0, [], None
    it = 0
    # A diverging run overflows on its way to NaN: that is reported as stop_reason, not as warnings.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for epoch in range(1, config.num_epochs + 1):
            started = time.perf_counter()
            order = rng.permutation(num_train)
            for start in range(0, iterations_per_epoch * batch_size, batch_size):
                batch = order[start:start + batch_size]
                if config.translate and preprocessor is None and X_train.flags.c_contiguous:
                    # preprocessed rows ("zca"): gathered, flipped and shifted in one copy per image
                    flips = rng.random(batch_size) < 0.5 if config.flip else None
                    shifts = rng.integers(-config.translate, config.translate + 1, size=(batch_size, 2))
                    X_batch = translate_rows(X_train, shifts, out=shift_buffer, rows=batch, flips=flips,
                                             padded=padded_buffer)
                else:
                    X_batch = np.take(X_train, batch, axis=0, out=raw_buffer)   # (B, D) gathered copy, safe to flip
                    if config.flip:
                        flipped = np.flatnonzero(rng.random(batch_size) < 0.5)
                        if X_train_mirrored is None:     # a column permutation: faster than flip_rows
                            X_batch[flipped] = np.take(X_batch[flipped], mirror, axis=1)
                        else:
                            X_batch[flipped] = X_train_mirrored[batch[flipped]]
                    if preprocessor is not None:
                        X_batch = preprocessor.apply(X_batch, out=batch_buffer)
                    if config.translate:
                        shifts = rng.integers(-config.translate, config.translate + 1, size=(batch_size, 2))
                        X_batch = translate_rows(X_batch, shifts, out=shift_buffer, padded=padded_buffer)
                loss = step.step(X_batch, y_train[batch], learning_rate)
                loss_history[it] = loss
                it += 1
                if not math.isfinite(loss):
                    stop_reason = "diverged"
                    break
            trained = time.perf_counter()
            if stop_reason:
                epochs.append(EpochStats(epoch, float("nan"), float("nan"), float("nan"),
                                         learning_rate, trained - started, 0.0, params={}))
                break
            train_acc = float(np.mean(predict_float32(step.params, X_sample, backend=step.blas) == y_sample))
            val_acc = float(np.mean(predict_float32(step.params, X_val, backend=step.blas) == y_val)) if len(y_val) else 0.0
            stats = EpochStats(epoch, float(loss_history[it - iterations_per_epoch:it].mean()),
                               train_acc, val_acc, learning_rate, trained - started,
                               time.perf_counter() - trained, params=step.params)
            if val_acc > best_val:
                best_val, best_epoch = val_acc, epoch
                best_params = {k: v.copy() for k, v in step.params.items()}
            learning_rate *= config.lr_decay
            try:
                for callback in callbacks:
                    callback(stats)
            except StopTraining as stop:
                stop_reason = str(stop) or "stopped"
            stats.params = {}
            epochs.append(stats)
            if stop_reason:
                break
    return TrainResult(best_params, max(best_val, 0.0), best_epoch, loss_history[:it], epochs, stop_reason)
