"""Evaluation that is logged: a model's test-set scores, confusion matrix and provenance, in the store.

    source_tags           the mlflow.user / mlflow.source.* tags the fluent API puts on a run
    dataset_digest        a content digest of (images, labels)
    dataset_input         a data set as an MLflow input: name, digest, shape, source, context
    log_dataset           ... logged on a run
    log_evaluation        test accuracy, per-class precision and recall, the confusion matrix and
                          the test set on the model's run; a description on its registered version
    log_score             log_evaluation of a score_model result: what evaluate and a study's end record
    evaluate_on_test_set  what `python -m mlp_exp.evaluate` does: load, score, log_score

Why not `mlflow.models.evaluate(model_type="classifier")`: it runs on the model
only when loaded with model_config={"output": "label"} (its classifier evaluator
needs one prediction column; ours is a table), and even then it needs a fluent
active run (which it leaves FINISHED), logs per-class scores only as a CSV,
records its own DataFrame of 3072 pixel columns as the dataset, with MLflow's
digest of its first 10,000 values, and labels the confusion matrix with class
indices. The few numbers it would give are computed here from the confusion
matrix instead.
"""
from __future__ import annotations

import hashlib
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import IMAGE_SHAPE
from ..errors import UserError, one_line
from .names import STUDY_TAG, TRIAL_TAG, VAL_ACCURACY_TAG
from .scoring import load_model, score_model
from .store import check_store, import_mlflow, resolve_tracking_uri

TEST_DATASET = "cifar10-test"          # the dataset name the champion's evaluation logs
TEST_CONTEXT = "test"                  # mlflow.data.context of that input
CONFUSION_FIGURE = "evaluation/confusion_matrix.png"
CONFUSION_TABLE = "evaluation/confusion_matrix.json"
VERSION_TAGS = ("test_accuracy", "num_test", "test_dataset_digest")   # set on the registered version
_DATASET_CONTEXT_TAG = "mlflow.data.context"                        # mlflow.utils.mlflow_tags


# ------------------------------------------------------------------ provenance

def source_tags() -> dict:
    """mlflow.user, mlflow.source.name, .type and (in a git checkout) .git.commit, as the fluent
    mlflow.start_run sets them; MlflowClient.create_run sets none of them.

    They come from MLflow's run-context providers (mlflow.tracking.context.registry,
    the same ones start_run uses, plugins included); if that module moves, the
    user and the entry point are computed here, without git.
    """
    import_mlflow()
    try:
        from mlflow.tracking.context.registry import resolve_tags
        return dict(resolve_tags())
    except ImportError:
        import getpass
        import sys
        return {"mlflow.user": getpass.getuser(), "mlflow.source.name": sys.argv[0] or "<console>",
                "mlflow.source.type": "LOCAL"}


def as_images(X) -> np.ndarray:
    """Rows (N, 3072) = images.reshape(N, -1) -> images (N, 32, 32, 3), a view; other arrays as they are.

    Datasets are recorded as images, so the same test set has one digest whichever form
    it was scored in (a study keeps rows, evaluate reads images).
    """
    X = np.asarray(X)
    return X.reshape(len(X), *IMAGE_SHAPE) if X.ndim == 2 and X.shape[1] == np.prod(IMAGE_SHAPE) else X


def dataset_digest(X, y=None) -> str:
    """sha256 (first 16 hex digits) of as_images(X) and y: dtype, shape and every byte.

    MLflow's own numpy digest hashes only the first 10,000 values (three CIFAR images).
    """
    h = hashlib.sha256()
    for array in (as_images(X), y):
        if array is not None:
            array = np.ascontiguousarray(array)
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(memoryview(array).cast("B"))
    return h.hexdigest()[:16]


def dataset_input(name: str, X, y, source, context: str, digest: str | None = None):
    """(X, y) as an MLflow DatasetInput: name, digest, shape, source and context; no data is copied.

    Inputs:
    - X: images (N, 32, 32, 3) or rows (N, 3072), recorded as images; y: labels (N,)
    - source: where the data came from (a path or URI), kept as the dataset's source
    - context: "training", "validation", "test" ... (tag mlflow.data.context)
    - digest: dataset_digest(X, y), if the caller already has it

    Build it once and log it on many runs (a study's trials): the digest of the
    150 MB training set is computed here, not per run.
    """
    mlflow = import_mlflow()
    from mlflow.entities import Dataset, DatasetInput, InputTag

    X, y = as_images(X), np.asarray(y)
    if y.shape != (len(X),):
        raise ValueError(f"y must have shape ({len(X)},), got {y.shape}")
    digest = digest or dataset_digest(X, y)
    source = str(source) if ":/" in str(source) else str(Path(source).resolve())    # a URI, or a local path
    with warnings.catch_warnings():     # MLflow registers its local-file source class twice, and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(X, source=source, targets=y, name=name, digest=digest)
    return DatasetInput(Dataset(**dataset.to_dict()), tags=[InputTag(_DATASET_CONTEXT_TAG, context)])


def log_dataset(client, run_id: str, name: str, X, y, source, context: str, digest: str | None = None) -> str:
    """Record (X, y) as an input of run `run_id` (the run page's Datasets); returns the digest.

    `client` is an MlflowClient or a Tracker (its .client); the rest as for dataset_input.
    The dataset's schema and profile hold dtype and shape. An experiment keeps one
    dataset per (name, digest): logging the same content again, on this run or another,
    links that dataset (with its first source) once more.
    """
    entry = dataset_input(name, X, y, source, context, digest)
    getattr(client, "client", client).log_inputs(run_id, datasets=[entry])
    return entry.dataset.digest


# ------------------------------------------------------------------ scores

def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """int64 (C, C): entry [t, p] counts images of class t predicted as p."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, -1)


def precision_recall(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision (C,) and recall (C,) from a confusion matrix; nan where undefined
    (a class never predicted, or absent from the labels)."""
    hits = np.diag(counts).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts.sum(axis=0), hits / counts.sum(axis=1)


def metric_key(name: str) -> str:
    """A class name as part of a metric name (MLflow allows letters, digits and _ - . / space)."""
    return re.sub(r"[^\w\-. /]", "_", str(name))


def confusion_figure(counts: np.ndarray, label_names: Sequence[str], title: str):
    """A matplotlib Figure of the confusion matrix: counts, shaded by the share of each true class."""
    from matplotlib.figure import Figure

    C = len(counts)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(7.5, 6.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for t in range(C):
        for p in range(C):
            ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                    color="white" if share[t, p] > 0.5 else "black")
    ax.set_xticks(range(C), labels=list(label_names), rotation=45, ha="right")
    ax.set_yticks(range(C), labels=list(label_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the true class")
    return fig


@dataclass(frozen=True)
class Evaluation:
    """What log_evaluation recorded."""
    metrics: dict                   # metric name -> value, as logged on the run
    digest: str                     # the test set's dataset_digest
    model_id: str | None            # the logged model the metrics are linked to
    description: str | None         # the registered version's new description, if one was given


def log_evaluation(client, run_id: str, X, y_true, y_pred, label_names: Sequence[str], *, source,
                   model_name: str | None = None, version: str | None = None, model_id: str | None = None,
                   dataset_name: str = TEST_DATASET, digest: str | None = None) -> Evaluation:
    """Record a model's scores on a test set where its users will look for them.

    Inputs:
    - client: an MlflowClient, or a Tracker (its .client)
    - run_id: the run that logged the model (the champion's trial run)
    - X: the test images (N, 32, 32, 3) or rows (N, 3072), for the dataset's digest and shape
    - y_true, y_pred: (N,) class indices; label_names: the C class names
    - source: where X came from (the CIFAR-10 folder), kept as the dataset's source
    - model_name, version: the registered version to describe (optional)
    - model_id: the logged model (default: the version's, if given)

    On the run: metrics test_accuracy, num_test, test_precision_<class>,
    test_recall_<class> (undefined ones left out), linked to the logged model and
    the dataset; artifacts evaluation/confusion_matrix.png and .json; the test set
    as an input (context "test"). On the version: tags test_accuracy, num_test,
    test_dataset_digest, and a description naming study, trial, run, val and test
    accuracy, replacing the one before.
    """
    from mlflow.entities import Metric

    client = getattr(client, "client", client)
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    names = [str(n) for n in label_names]
    if len(y_true) == 0 or y_true.shape != y_pred.shape or len(X) != len(y_true):
        raise ValueError(f"X, y_true and y_pred must hold the same N >= 1 images, got {len(X)}, "
                         f"{y_true.shape} and {y_pred.shape}")
    if min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= len(names):
        raise ValueError(f"labels must be class indices 0..{len(names) - 1}")
    counts = confusion_matrix(y_true, y_pred, len(names))
    precision, recall = precision_recall(counts)
    accuracy = float(np.trace(counts) / counts.sum())
    metrics = {"test_accuracy": accuracy, "num_test": float(len(y_true))}
    for name, p, r in zip(names, precision, recall):
        metrics.update({f"test_precision_{metric_key(name)}": float(p), f"test_recall_{metric_key(name)}": float(r)})
    metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}

    version_info = client.get_model_version(model_name, str(version)) if model_name and version else None
    if model_id is None and version_info is not None:
        model_id = version_info.model_id or _model_id_of(version_info.source)
    digest = log_dataset(client, run_id, dataset_name, X, y_true, source, TEST_CONTEXT, digest)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0, model_id=model_id, dataset_name=dataset_name,
                                             dataset_digest=digest) for k, v in metrics.items()],
                     synchronous=True)
    client.log_dict(run_id, {"labels": names, "rows": "true class", "columns": "predicted class",
                             "counts": counts.tolist()}, CONFUSION_TABLE)
    figure = confusion_figure(counts, names, f"test accuracy {accuracy:.4f} on {len(y_true)} images")
    client.log_figure(run_id, figure, CONFUSION_FIGURE)

    description = None
    if version_info is not None:
        run = client.get_run(run_id)
        study, trial = run.data.tags.get(STUDY_TAG), run.data.tags.get(TRIAL_TAG)
        val = version_info.tags.get(VAL_ACCURACY_TAG)
        origin = (f"Trial {trial} of study {study!r}" if study is not None and trial is not None
                  else "The model")
        description = (f"{origin} (run {run_id}{f', val accuracy {float(val):.4f}' if val else ''}). "
                       f"Test accuracy {accuracy:.4f} on {len(y_true)} images of {dataset_name} "
                       f"(digest {digest}, from {source}), evaluated "
                       f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(now / 1000))}.")
        client.update_model_version(model_name, str(version), description=description)
        for key, value in zip(VERSION_TAGS, (repr(accuracy), str(len(y_true)), digest)):
            client.set_model_version_tag(model_name, str(version), key, value)
    return Evaluation(metrics, digest, model_id, description)


def _model_id_of(model_uri: str | None) -> str | None:
    """models:/m-<id> -> m-<id>; anything else -> None."""
    rest = (model_uri or "").removeprefix("models:/")
    return rest if rest != model_uri and rest.startswith("m-") and "/" not in rest else None


def registered_version(client, model_uri: str) -> tuple[str, str] | None:
    """(name, version) of models:/<name>@<alias> or models:/<name>/<version>; None for other URIs."""
    rest = model_uri.removeprefix("models:/")
    if rest == model_uri or _model_id_of(model_uri):
        return None
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = rest.rpartition("/")
    return (name, version) if name and version.isdigit() else None


# ------------------------------------------------------------------ scored, then logged

def log_score(client, model_uri: str, score: dict, X, y_true, label_names: Sequence[str], *, source,
              hint: str = "", scored_version: str | None = None) -> str | None:
    """log_evaluation of a score_model result made with predictions=True, on the model's run and,
    for a models:/<name>@<alias> or /<version> URI, on that registered version.

    What `evaluate` and the end of a study both record. Returns "<name>/<version>"
    or None. A store that refuses the writes is a UserError naming the score (it
    was computed) and ending with `hint` (how to do without the logging). `scored_version`: the
    version a models:/<name>@<alias> URI named when its model was loaded; if the alias names
    another one now, nothing is logged (a UserError).
    """
    mlflow = import_mlflow()
    client = getattr(client, "client", client)
    try:
        registered = registered_version(client, model_uri)      # an alias is read again, after scoring
        if scored_version is not None and registered and registered[1] != scored_version:
            # a promotion in between would put this score on a version it was not measured on
            raise UserError(f"scored {model_uri} (version {scored_version}, test accuracy "
                            f"{score['test_accuracy']:.4f}), but meanwhile it moved to version {registered[1]}: "
                            f"nothing was logged; evaluate again, or pass models:/{registered[0]}/<version>")
        log_evaluation(client, score["run_id"], X, y_true, score["predictions"], label_names, source=source,
                       model_name=registered and registered[0], version=registered and registered[1],
                       model_id=_model_id_of(model_uri))
    except Exception as err:            # the store refused the writes: say so, and how to skip them
        if not isinstance(err, (mlflow.exceptions.MlflowException, OSError)) \
                and type(err).__module__.split(".")[0] != "sqlalchemy":
            raise
        raise UserError(f"scored {model_uri} (test accuracy {score['test_accuracy']:.4f}) but could "
                        f"not log the evaluation: {one_line(err, 200)}{hint}") from err
    return registered and "/".join(registered)


def evaluate_on_test_set(model_uri: str, tracking_uri=None, data_dir=None, test_size=None, *,
                         log: bool = True, predictions: bool = False, interrupts=None) -> dict:
    """Load the model, then the CIFAR-10 test set (its first `test_size` images), score it and,
    with `log`, record the evaluation (log_score) on the model's run and registered version.

    Returns score_model's dict, plus model_version ("<name>/<version>" or None) and
    logged (bool); with `predictions`, also predictions and labels: the predicted and the
    true label of every image (lists of N ints). `interrupts` (an Interrupts, entered):
    Ctrl-C stops loading and scoring at once, but never the logging, which is all or nothing.
    """
    from .. import data
    from ..hold import hold_step
    from ..interrupts import Interrupts

    interrupts = interrupts or Interrupts()
    if test_size is not None and test_size < 1:
        raise UserError(f"--test-size must be >= 1, got {test_size}")
    if log:     # a store that cannot take the evaluation says so before any work, not after
        try:
            check_store(tracking_uri, write=True)
        except UserError as err:
            raise UserError(f"{err}; or pass --no-log to only print the score") from None
    with interrupts.interruptible():    # reads and computation only
        model = load_model(model_uri, tracking_uri)     # fail fast, before reading data
        client = import_mlflow().MlflowClient(resolve_tracking_uri(tracking_uri, create=False)) if log else None
        scored_version = None
        if log and model_uri.startswith("models:/") and "@" in model_uri:
            # the version the alias names, read as soon as it is loaded (a promotion within those
            # milliseconds goes unseen); logging checks the alias still names it
            scored_version = (registered_version(client, model_uri) or (None, None))[1]
        folder = data.ensure_cifar10(data_dir)
        _, _, X_test, y_test = data.load_cifar10_uint8(folder)
        if test_size is not None:
            if test_size > len(X_test):
                raise UserError(f"--test-size {test_size} exceeds the {len(X_test)} test images in {folder}")
            X_test, y_test = X_test[:test_size], y_test[:test_size]
        label_names = data.load_label_names(folder)
        score = score_model(model, X_test, y_test, label_names=label_names, predictions=True)
    score.update(model_version=None, logged=False)
    if log and model.run_id is not None:
        hold_step("evaluate", interrupts.check)        # tests only: see hold.py
        interrupts.check()                             # stopped before logging: nothing is logged
        version = log_score(client, model_uri, score, X_test, y_test, label_names, source=folder,
                            hint="; pass --no-log to only print the score", scored_version=scored_version)
        score.update(model_version=version, logged=True)
    if predictions:
        score["labels"] = y_test.tolist()
    else:
        score.pop("predictions")
    return score
