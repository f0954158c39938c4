"""Loading a logged model and scoring it on raw images: what `evaluate` and the promotion share.

Both go through mlflow.pyfunc, as any user of the registered model would, so
the test accuracy a search logs is the one `python -m mlp_exp.evaluate`
reproduces on the same images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from ..errors import UserError, one_line
from .names import DEFAULT_MODEL_URI, TRACKING_URI_ENV
from ..urls import safe_url
from .store import check_store, import_mlflow, resolve_tracking_uri, sqlite_path

PREDICT_CHUNK = 2000                   # rows per pyfunc predict call when scoring


@dataclass
class LoadedModel:
    uri: str
    run_id: str | None
    input_width: int | None
    label_names: list | None
    pyfunc: object = field(repr=False)


def load_model(model_uri: str = DEFAULT_MODEL_URI, tracking_uri=None) -> LoadedModel:
    """Load a logged model through mlflow.pyfunc; a missing champion or bad URI, a store that is not
    MLflow's and a model whose files are damaged are each a UserError."""
    import zipfile

    uri = resolve_tracking_uri(tracking_uri, create=False)
    if urlparse(uri).scheme == "sqlite" and not sqlite_path(uri).is_file():
        raise UserError(f"no model at {model_uri}: there is no MLflow store at {uri}; run a search "
                        f"first, or pass --tracking-uri (or set {TRACKING_URI_ENV}) to the store it used")
    check_store(uri, write=False)
    mlflow = import_mlflow()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (zipfile.BadZipFile, EOFError) as err:       # a truncated weights.npz
        raise UserError(f"cannot load model {model_uri} from {safe_url(uri)}: its files are damaged or "
                        f"incomplete ({type(err).__name__}: {one_line(err, 200)}); promote or log another "
                        f"model, or restore the store's artifacts from a backup") from None
    except (mlflow.exceptions.MlflowException, OSError, ValueError) as err:
        if model_uri.startswith("models:/") and "@" in model_uri:
            raise UserError(f"no model at {model_uri} in {safe_url(uri)} ({one_line(err, 200)}); run a search "
                            f"first so a champion is registered, or pass --model-uri") from err
        raise UserError(f"cannot load model {model_uri} from {safe_url(uri)}: {one_line(err, 300)}") from err
    schema = model.metadata.get_input_schema()
    shape = getattr(schema.inputs[0], "shape", None) if schema is not None and schema.inputs else None
    try:
        label_names = list(model.unwrap_python_model().label_names)
    except Exception:                       # not one of ours: fall back to class indices
        label_names = None
    return LoadedModel(model_uri, model.metadata.run_id, shape[-1] if shape else None, label_names, model)


def score_model(model, X, y, label_names: Sequence[str] | None = None, tracking_uri=None, *,
                predictions: bool = False) -> dict:
    """Accuracy of a model (a URI or a LoadedModel) on raw images.

    Inputs:
    - X: uint8 images (N, 32, 32, 3), or rows (N, 3072) = images.reshape(N, -1)
    - y: (N,) integer labels

    Returns a JSON-ready dict: model_uri, run_id, test_accuracy, num_test, per_class
    ({label name: accuracy, or None for a class absent from y}); with `predictions`,
    also predictions, the predicted label of every image (a list of N ints).

    Works on every model logged since the first store: current ones (a table with a
    `label` column, mlflow_model.py) and older ones (float32 rows in, probabilities out).
    Both are fed float32 rows, which both accept.
    """
    if not isinstance(model, LoadedModel):
        model = load_model(model, tracking_uri)
    from .mlflow_model import LABEL_COLUMN     # its names only: the model itself is the logged copy
    rows = np.asarray(X).reshape(len(X), -1)
    y = np.asarray(y)
    if len(rows) == 0:
        raise UserError("no images to score; pass a --test-size of at least 1")
    width = model.input_width
    if width is None:                   # current models have no input schema; they know their width
        try:
            width = model.pyfunc.unwrap_python_model().input_width
        except Exception:
            width = None
    if width is not None and rows.shape[1] != width:
        raise UserError(f"input has {rows.shape[1]} values per image, model {model.uri} expects "
                        f"{width} (32x32x3 raw pixels, images.reshape(N, -1))")
    if y.shape != (len(rows),):
        raise ValueError(f"y must have shape ({len(rows)},), got {y.shape}")
    if rows.dtype != np.uint8 and (rows.min() < 0 or rows.max() > 255 or 0 < rows.max() <= 1):
        raise ValueError("X must be raw pixel values 0..255 (the model preprocesses them itself; "
                         f"scale 0..1 images to 0-255), got values in [{rows.min():g}, {rows.max():g}]")

    def labels_of(chunk):
        try:
            out = model.pyfunc.predict(chunk.astype(np.float32))
        except ValueError as err:       # the model's own input check
            raise UserError(f"model {model.uri} rejected the input: {one_line(err, 300)}") from err
        if hasattr(out, "columns") and LABEL_COLUMN in out.columns:
            return np.asarray(out[LABEL_COLUMN], dtype=np.int64)
        return np.asarray(out).argmax(axis=1)                       # probabilities (N, C)

    predicted = np.concatenate([labels_of(rows[start:start + PREDICT_CHUNK])
                                for start in range(0, len(rows), PREDICT_CHUNK)])
    correct = predicted == y
    names = list(label_names or model.label_names or [])
    num_classes = max(len(names), int(y.max()) + 1)
    names += [str(i) for i in range(len(names), num_classes)]
    per_class = {names[c]: (float(correct[y == c].mean()) if np.any(y == c) else None)
                 for c in range(num_classes)}
    score = {"model_uri": model.uri, "run_id": model.run_id, "test_accuracy": float(correct.mean()),
             "num_test": int(len(rows)), "per_class": per_class}
    if predictions:
        score["predictions"] = predicted.tolist()
    return score

