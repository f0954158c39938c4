"""The two-layer net as an MLflow pyfunc model, logged as code (no pickle): images in, labels out.

MLflow runs this file to load a model that `Tracker.log_model` logged. It
imports only numpy, pandas and mlflow (a copy of it travels with each model, so
it must not depend on the package): the weights and the preprocessing
statistics come from the `weights` artifact (.npz), the config and class names
from `config` (.json).

Input: raw pixel values 0..255 (the model standardizes them itself), uint8 or
any real dtype, as either
- images (N, 32, 32, 3), channel-last (height, width, RGB), or
- rows (N, 3072) = images.reshape(N, -1): pixel (0, 0) R G B, pixel (0, 1) R G B, ...
  (HWC order). CIFAR-10's own pickled rows are channel-first (1024 R, then G, then B):
  pass them as rows.reshape(N, 3, 32, 32).transpose(0, 2, 3, 1); rows of the same
  width cannot be told apart, so that one mistake is not caught here.
Nested lists of either (the `{"inputs": ...}` JSON of `mlflow models serve`), a
pandas DataFrame with one column per pixel (`dataframe_split`) or with one
column holding an image per row are converted the same way.

Output: a pandas DataFrame, one row per image (JSON: one record per image):
- label: int64 class index
- class_name: str, from the model's label names (airplane ... truck)
- prob_<class name>: float32 probability of each class, in class-index order
Loaded with model_config={"output": "label"}, the label column alone (a Series):
the one prediction column mlflow.models.evaluate's classifier evaluator takes.

Inputs that are surely wrong raise a one-line InputError (a ValueError) instead of a
chance-level answer: 0..1 scaled pixels, standardized (negative) values,
channel-first images, a missing batch axis, any other shape.
"""
import json
import math

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

CHUNK_ROWS = 4096      # rows per forward pass, so memory stays flat
PARAM_NAMES = ("W1", "b1", "W2", "b2")     # net.PARAM_NAMES, repeated: this file imports no mlp_exp
LABEL_COLUMN, NAME_COLUMN, PROB_PREFIX = "label", "class_name", "prob_"


class InputError(MlflowException, ValueError):
    """Input the model can tell is wrong, in one line. A ValueError; and an MlflowException,
    which `mlflow models serve` answers with 400 and this message (any other error becomes
    a 400 "unexpected error" that names no cause)."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def output_columns(label_names) -> list:
    """The output DataFrame's columns, in order."""
    return [LABEL_COLUMN, NAME_COLUMN] + [PROB_PREFIX + str(name) for name in label_names]


def image_shape(width: int):
    """(H, W, 3) of square RGB images with `width` values, or None if there is none."""
    side = math.isqrt(width // 3)
    return (side, side, 3) if side * side * 3 == width else None


def as_pixel_rows(model_input, width: int) -> np.ndarray:
    """Any accepted input (module docstring) -> raw pixel rows (N, width), or a one-line InputError."""
    shape = image_shape(width)
    expected = (f"images (N, {', '.join(map(str, shape))}) or rows (N, {width}) = images.reshape(N, -1)"
                if shape else f"rows (N, {width})")
    X = model_input
    if isinstance(X, dict) and len(X) == 1:               # {"inputs": {"<any name>": ...}}
        X = next(iter(X.values()))
    if isinstance(X, pd.Series):
        X = X.to_frame()
    if isinstance(X, pd.DataFrame):
        if X.shape[1] == 1 and X.dtypes.iloc[0] == object:    # one column, an image (nested lists) per row
            X = list(X.iloc[:, 0])
        else:                                                  # one column per pixel
            X = X.to_numpy()
    try:
        X = np.asarray(X)
    except ValueError as err:                              # ragged nested lists
        raise InputError(f"input is not a regular array ({err}); pass {expected}") from None
    if X.dtype.kind not in "iuf":
        raise InputError(f"input must be numbers (raw pixel values 0..255), got dtype {X.dtype}; pass {expected}")
    if shape and X.ndim == 4 and X.shape[1:] == (shape[2], *shape[:2]):
        raise InputError(f"input of shape {X.shape} is channel-first; the model takes channel-last "
                         f"images (N, {', '.join(map(str, shape))}): pass images.transpose(0, 2, 3, 1)")
    if X.shape == shape or X.shape == (width,):
        raise InputError(f"input of shape {X.shape} is one image without a batch axis; pass images[None] "
                         f"(a batch of one), i.e. {expected}")
    if not ((shape and X.ndim == 4 and X.shape[1:] == shape) or (X.ndim == 2 and X.shape[1] == width)):
        raise InputError(f"input of shape {X.shape} has the wrong shape; pass {expected}")
    rows = X.reshape(len(X), width)
    if rows.size and X.dtype != np.uint8:
        low, high = float(rows.min()), float(rows.max())
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > 255:
            raise InputError(f"input values lie in [{low:g}, {high:g}]; the model takes raw pixel values "
                             f"0..255 (it standardizes them itself): pass the images as loaded, not preprocessed")
        if 0 < high <= 1:
            raise InputError(f"input values lie in [{low:g}, {high:g}]: pixels scaled to 0..1; the model takes "
                             f"raw pixel values 0..255: scale to 0-255 (images * 255)")
    return rows


class TwoLayerNetModel(PythonModel):
    def load_context(self, context):
        with np.load(context.artifacts["weights"], allow_pickle=False) as arrays:
            self.params = {k: arrays[k].astype(np.float32) for k in PARAM_NAMES}
            self.mean = arrays["mean"].astype(np.float32)      # (D,)
            self.scale = arrays["scale"].astype(np.float32)    # (D,)
        with open(context.artifacts["config"], encoding="utf-8") as f:
            meta = json.load(f)
        self.config, self.label_names = meta["config"], meta["label_names"]
        self.input_width = self.mean.size
        # model_config (logged as {"output": "table"}; overridden at load time) picks the output
        self.output = (getattr(context, "model_config", None) or {}).get("output", "table")
        if self.output not in ("table", "label"):
            raise ValueError(f"model_config output must be 'table' or 'label', got {self.output!r}")

    def predict_proba(self, X) -> np.ndarray:
        """Raw pixel rows (N, D), any real dtype -> float32 (N, C) class probabilities."""
        W1, b1, W2, b2 = (self.params[k] for k in PARAM_NAMES)
        probs = np.empty((X.shape[0], W2.shape[1]), dtype=np.float32)
        for start in range(0, X.shape[0], CHUNK_ROWS):
            # same float32 steps as preprocessing.Preprocessor.apply, then the net's forward pass
            x = X[start:start + CHUNK_ROWS].astype(np.float32)                          # (B, D)
            x -= self.mean
            x /= self.scale
            hidden = x @ W1                                                              # (B, H)
            hidden += b1
            np.maximum(hidden, 0, out=hidden)
            scores = hidden @ W2 + b2                                                    # (B, C)
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
            probs[start:start + CHUNK_ROWS] = scores
        return probs

    # np.ndarray: a hint MLflow accepts without inferring a schema (nor warning that there is no
    # hint); any input form above arrives here and as_pixel_rows checks and converts it
    # (registry.log_model says why the signature declares no input schema).
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        probs = self.predict_proba(as_pixel_rows(model_input, self.mean.size))
        labels = probs.argmax(axis=1)
        names = np.asarray([str(n) for n in self.label_names], dtype=object)
        columns = output_columns(self.label_names)
        table = pd.DataFrame({columns[0]: labels.astype(np.int64), columns[1]: names[labels]})
        if self.output == "label":
            return table[LABEL_COLUMN]
        for c, column in enumerate(columns[2:]):
            table[column] = probs[:, c]
        return table


mlflow.models.set_model(TwoLayerNetModel())
