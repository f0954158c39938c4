"""MLflow tracking: the only module (besides the model file MLflow executes) that imports mlflow.

It owns run naming, tag and metric names, artifacts, model logging, registry
promotion and model scoring. Layout of what lands in the store:

    experiment <study name>               artifacts beside the sqlite db: mlruns/artifacts
      run <study name>                    the study's parent run, tag mlp_exp.study
        run trial-007                     nested (mlflow.parentRunId), tag optuna.trial_number
          params     asdict(TrainConfig) + extras: enough to re-run the trial
          metrics    loss, train_accuracy, val_accuracy, learning_rate at step = epoch;
                     best_val_accuracy, best_epoch; test_accuracy, num_test on the champion
          images     first_layer_weights at step = epoch (the UI steps through training)
          artifacts  training_curves.png; model/ (pyfunc from code, weights in .npz)
    registered model mlp-cifar10          versions tagged val_accuracy; alias `champion`

Tracking must cost at most a few percent of a trial: per-epoch logging runs on
a background thread, so training waits only for a copy of the first
`grid_units` columns of W1, and the curves figure is rendered only when
nothing trains (see TrialRun). mlflow is imported on first use, never at
package import.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from .config import TrainConfig
from .errors import UserError, one_line

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_MODEL_NAME = "mlp-cifar10"
CHAMPION_ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"

STUDY_TAG = "mlp_exp.study"            # on the parent run and every trial run
ROLE_TAG = "mlp_exp.role"              # "study" or "trial"
TRIAL_TAG = "optuna.trial_number"
PARENT_TAG = "mlflow.parentRunId"      # what the MLflow UI nests runs by
VAL_ACCURACY_TAG = "val_accuracy"      # on model versions: what promotion compares
EPOCH_METRICS = ("loss", "train_accuracy", "val_accuracy", "learning_rate")
GRID_KEY = "first_layer_weights"
GRID_UNITS = 64                        # tiles per epoch image: 8x8 tiles, 263x263 px (encoding is the cost)
CURVES_ARTIFACT = "training_curves.png"
CURVES_DPI = 80                        # 800x640 px
MODEL_NAME_IN_RUN = "model"
PARAM_NAMES = ("W1", "b1", "W2", "b2")
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
PREDICT_CHUNK = 2000                   # rows per pyfunc predict call when scoring

_log = logging.getLogger(__name__)
_TERMINAL = ("FINISHED", "FAILED", "KILLED")


def _mlflow():
    """Import mlflow on first use, quietly: no telemetry, no progress bars, no INFO chatter."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    for name in ("mlflow", "alembic"):
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


# ---------------------------------------------------------------- the store

def _sqlite_path(uri: str) -> Path:
    """sqlite:///relative/x.db or sqlite:////absolute/x.db -> the db file's path."""
    prefix = "sqlite:///"
    path = uri[len(prefix):].split("?", 1)[0] if uri.startswith(prefix) else ""
    if not path or path == ":memory:":
        raise UserError(f"tracking URI {uri!r} names no database file; use e.g. {DEFAULT_TRACKING_URI}")
    return Path(path)


def resolve_tracking_uri(uri=None, *, create=True) -> str:
    """The tracking URI to use: `uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db.

    For a sqlite URI the database's folder is created, unless create=False (to
    read: reading must not make a store). A plain folder (MLflow's retired file
    store) or an unknown scheme raises UserError.
    """
    uri = str(uri or os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI).strip()
    scheme = urlparse(uri).scheme
    if scheme == "sqlite" and not create:
        _sqlite_path(uri)
    elif scheme == "sqlite":
        folder = _sqlite_path(uri).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the tracking folder {folder}: {one_line(err)}; "
                            f"pass --tracking-uri sqlite:///<writable folder>/mlflow.db") from err
    elif scheme in ("", "file") or len(scheme) == 1:    # len 1: a Windows drive letter
        raise UserError(f"tracking URI {uri!r} is a folder, and MLflow 3 no longer accepts file stores; "
                        f"use a database inside it, e.g. sqlite:///{uri.removeprefix('file:').rstrip('/')}/mlflow.db")
    elif scheme not in ("http", "https", "postgresql", "mysql", "mssql", "databricks"):
        raise UserError(f"tracking URI {uri!r} has an unknown scheme {scheme!r}; "
                        f"use sqlite:///path/mlflow.db or http(s)://host:port")
    return uri


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a sqlite db (mlruns/artifacts); a tracking server decides for itself."""
    if urlparse(uri).scheme != "sqlite":
        return None
    return (_sqlite_path(uri).resolve().parent / "artifacts").as_uri()


def artifact_root(uri=None) -> str | None:
    """Where the experiments of store `uri` (see resolve_tracking_uri) keep their artifacts:
    file:///.../mlruns/artifacts beside a sqlite db; None for a server, which decides."""
    return _artifact_location(resolve_tracking_uri(uri))


def _check_server(uri: str, timeout=5.0) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer.

    MLflow's own client retries for minutes; any HTTP answer, even an error
    status, proves the server is there.
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"cannot reach the MLflow tracking server at {uri} ({one_line(reason)}); "
                        f"start it, or pass --tracking-uri / unset {TRACKING_URI_ENV} to use "
                        f"{DEFAULT_TRACKING_URI}") from err


@contextlib.contextmanager
def _store_errors(uri: str):
    """Turn a store that cannot be opened or queried into a one-line UserError."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        mlflow = _mlflow()
        if not isinstance(err, (mlflow.exceptions.MlflowException, OSError, ImportError)) \
                and type(err).__module__.split(".")[0] != "sqlalchemy":
            raise
        raise UserError(f"cannot use the MLflow store at {uri}: {one_line(err, 300)}") from err


@dataclass
class TrackedRun:
    """What the search layer needs to know about a run, without mlflow types."""
    run_id: str
    name: str
    status: str                     # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    start_time: int                 # ms since the epoch
    end_time: int | None
    trial_number: int | None        # None for a parent run
    tags: dict = field(repr=False)
    params: dict = field(repr=False)
    metrics: dict = field(repr=False)

    @classmethod
    def _from_run(cls, run) -> "TrackedRun":
        tags = dict(run.data.tags)
        number = tags.get(TRIAL_TAG)
        return cls(run.info.run_id, run.info.run_name or "", run.info.status, run.info.start_time,
                   run.info.end_time, int(number) if number is not None else None,
                   tags, dict(run.data.params), dict(run.data.metrics))


@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str
    val_accuracy: float | None
    model_uri: str                  # models:/<name>/<version>


def _quote(value: str) -> str:
    """A search-filter string literal."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UserError(f"name {value!r} holds both kinds of quote; MLflow cannot search for it, rename it")


class Tracker:
    """One experiment (named after the Optuna study) in one MLflow store.

    Inputs:
    - tracking_uri: see resolve_tracking_uri (None: $MLFLOW_TRACKING_URI or the local sqlite store)
    - experiment_name: the study's name; None when only scoring or registry calls are needed
    - grid_units: first-layer units drawn in each epoch's weight image

    Call `study_run` once per process, then `start_trial` per trial.
    """

    def __init__(self, tracking_uri=None, experiment_name: str | None = None, *, grid_units=GRID_UNITS):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment_name = experiment_name
        self.grid_units = grid_units
        self.study_name: str | None = None
        self.parent_run_id: str | None = None
        scheme = urlparse(self.tracking_uri).scheme
        self._lock_path = _sqlite_path(self.tracking_uri).parent / ".mlp_exp.lock" if scheme == "sqlite" else None
        _check_server(self.tracking_uri)
        mlflow = _mlflow()
        self.experiment_id = None
        # Opening a new db creates its tables: two processes doing it at once would collide.
        with self._store_lock(), _store_errors(self.tracking_uri):
            self.client = mlflow.MlflowClient(self.tracking_uri)
            if experiment_name is not None:
                self.experiment_id = self._get_or_create_experiment(experiment_name)
            else:
                self.client.search_experiments(max_results=1)

    @contextlib.contextmanager
    def _store_lock(self):
        """Serialise find-or-create across processes sharing a local sqlite store.

        Remote stores get no lock; study_run's oldest-wins rule covers them.
        """
        if self._lock_path is None:
            yield
            return
        try:
            import fcntl
        except ImportError:         # not POSIX: rely on oldest-wins alone
            yield
            return
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _get_or_create_experiment(self, name: str) -> str:
        mlflow = _mlflow()
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=_artifact_location(self.tracking_uri))
            except mlflow.exceptions.MlflowException:     # another process (on a server) was first
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _require_experiment(self) -> str:
        if self.experiment_id is None:
            raise ValueError("this Tracker was made without an experiment_name")
        return self.experiment_id

    def _search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self._require_experiment()], filter_string, max_results=1000,
                                           order_by=["attributes.start_time ASC"], page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _log_batch(self, run_id, metrics: dict | None = None, params: dict | None = None,
                   tags: dict | None = None, step=0, timestamp=None):
        from mlflow.entities import Metric, Param, RunTag

        timestamp = timestamp or int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), timestamp, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
            synchronous=True)

    @staticmethod
    def wait() -> None:
        """Wait until every ended trial run of this process is fully logged and closed."""
        _wait_for_ended_trials()

    # ------------------------------------------------------------- runs

    def _study_runs(self, study_name: str) -> list:
        runs = self._search(f"tags.`{STUDY_TAG}` = {_quote(study_name)} AND tags.`{ROLE_TAG}` = 'study'")
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def study_run(self, study_name: str, params: dict | None = None, tags: dict | None = None) -> str:
        """The study's parent run id, found by tag and reopened (RUNNING), or created once.

        Workers starting together end with one parent: creation happens under a
        file lock (sqlite), and after creating, the oldest parent of the study
        wins; a process that lost deletes its own run. Params already on the run
        keep their first value (MLflow params are write-once). The Tracker
        remembers the study for start_trial, log_test_accuracy and end_study.
        """
        mlflow = _mlflow()
        with self._store_lock():
            existing = self._study_runs(study_name)
            if existing:
                run = existing[0]
                if run.info.status != "RUNNING":
                    self.client.update_run(run.info.run_id, status="RUNNING")
            else:
                run = self.client.create_run(self._require_experiment(), run_name=study_name,
                                             tags={STUDY_TAG: study_name, ROLE_TAG: "study"})
                oldest = self._study_runs(study_name)[0]
                if oldest.info.run_id != run.info.run_id:
                    self.client.delete_run(run.info.run_id)
                    run = oldest
        self.study_name, self.parent_run_id = study_name, run.info.run_id
        new_params = {k: v for k, v in (params or {}).items() if k not in run.data.params}
        try:
            self._log_batch(self.parent_run_id, params=new_params, tags=tags)
        except mlflow.exceptions.MlflowException:
            # Workers starting together on a server store (no shared file lock) can both find the
            # params missing and both log them; the slower one's insert then fails. Fine if a peer
            # has logged every key since: params are write-once and theirs are the study's too.
            logged = self.client.get_run(self.parent_run_id).data.params
            if any(k not in logged for k in new_params):
                raise
            self._log_batch(self.parent_run_id, tags=tags)
        return self.parent_run_id

    def end_study(self, status: str = "FINISHED") -> None:
        """Wait for pending trial logging, then close the parent run."""
        self.wait()
        if self.parent_run_id is not None:
            self.end_run(self.parent_run_id, status)

    def start_trial(self, trial_number: int, config: TrainConfig, params: dict | None = None,
                    tags: dict | None = None) -> "TrialRun":
        """A run `trial-NNN` nested under the study's parent, with every config field as a param.

        `params` adds params beside the config's; `tags` adds tags. Pass the
        result's `log_epoch` to the trainer as a callback; see TrialRun.
        """
        if self.parent_run_id is None:
            raise RuntimeError("call study_run(study_name) before start_trial")
        extra = dict(params or {})
        clash = sorted(set(extra) & set(config.asdict()))
        if clash:
            raise ValueError(f"extra params {', '.join(clash)} would overwrite config fields")
        run = self.client.create_run(
            self._require_experiment(), run_name=f"trial-{trial_number:03d}",
            tags={PARENT_TAG: self.parent_run_id, STUDY_TAG: self.study_name, ROLE_TAG: "trial",
                  TRIAL_TAG: str(trial_number), **(tags or {})})
        self._log_batch(run.info.run_id, params={**config.asdict(), **extra})
        return TrialRun(self, run.info.run_id, trial_number)

    def attach_trial(self, run_id: str) -> "TrialRun":
        """A TrialRun for an existing trial run, set back to RUNNING (e.g. to finish it from another process)."""
        run = self.client.get_run(run_id)
        self.client.update_run(run_id, status="RUNNING")
        number = run.data.tags.get(TRIAL_TAG)
        return TrialRun(self, run_id, int(number) if number is not None else -1)

    def find_trial_runs(self, trial_number: int | None = None, statuses: Sequence[str] = (),
                        study_name: str | None = None) -> list[TrackedRun]:
        """Trial runs of the study (default: this Tracker's), deleted ones excluded,
        sorted by trial number then start time: maps Optuna trials to runs and shows
        orphans (RUNNING without a live trial) and duplicates (two runs, one number)."""
        self.wait()
        study_name = study_name or self.study_name
        if study_name is None:
            raise RuntimeError("pass study_name, or call study_run first")
        query = f"tags.`{STUDY_TAG}` = {_quote(study_name)} AND tags.`{ROLE_TAG}` = 'trial'"
        if trial_number is not None:
            query += f" AND tags.`{TRIAL_TAG}` = '{int(trial_number)}'"
        runs = [TrackedRun._from_run(r) for r in self._search(query)]
        if statuses:
            runs = [r for r in runs if r.status in statuses]
        return sorted(runs, key=lambda r: (r.trial_number, r.start_time, r.run_id))

    def get_run(self, run_id: str) -> TrackedRun:
        self.wait()
        return TrackedRun._from_run(self.client.get_run(run_id))

    def set_tags(self, run_id: str, tags: dict) -> None:
        self._log_batch(run_id, tags=tags)

    def find_study_run(self, study_name: str | None = None) -> TrackedRun | None:
        """The study's parent run (the one study_run reopens), or None; changes nothing."""
        study_name = study_name or self.study_name
        if study_name is None:
            raise RuntimeError("pass study_name, or call study_run first")
        runs = self._study_runs(study_name)
        return TrackedRun._from_run(runs[0]) if runs else None

    def log_artifacts(self, run_id: str, folder, artifact_path: str | None = None) -> None:
        """Copy every file under `folder` into the run's artifacts, under `artifact_path`."""
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED", tags: dict | None = None) -> None:
        """Close any run by id, e.g. mark a stale RUNNING trial FAILED after its worker died."""
        if status not in _TERMINAL:
            raise ValueError(f"status must be one of {', '.join(_TERMINAL)}, got {status!r}")
        if tags:
            self._log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status)

    def log_test_accuracy(self, run_id: str, test_accuracy: float, num_test: int) -> None:
        """Metrics test_accuracy and num_test on the champion's run and on the study's parent run."""
        for target in dict.fromkeys(r for r in (run_id, self.parent_run_id) if r is not None):
            self._log_batch(target, metrics={"test_accuracy": test_accuracy, "num_test": num_test})

    # ------------------------------------------------------------ models

    def log_model(self, run_id: str, params: dict, preprocessor, config: TrainConfig,
                  label_names: Sequence[str]) -> str:
        """Log the net as a pyfunc model (from code) under `run_id`; returns its model URI.

        Inputs:
        - params: W1 (D, H), b1 (H,), W2 (H, C), b2 (C,); saved as float32 in weights.npz
        - preprocessor: data.Preprocessor; its mean and scale (D,) go into the same npz
        - config, label_names: saved as config.json

        The model takes raw pixels, float32 (N, D) = images.reshape(N, -1) of uint8
        HWC images, and returns float32 (N, C) class probabilities.
        """
        mlflow = _mlflow()
        from mlflow.models import ModelSignature

        self.wait()                         # a trial ended without waiting must not reset the status below
        from mlflow.types import Schema, TensorSpec

        arrays = {k: np.ascontiguousarray(params[k], dtype=np.float32) for k in PARAM_NAMES}
        arrays.update({k: np.asarray(v, dtype=np.float32) for k, v in preprocessor.to_arrays().items()})
        D, C = arrays["W1"].shape[0], arrays["W2"].shape[1]
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, D))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, C))]))
        example = np.clip(np.rint(arrays["mean"]), 0, 255)[None, :]      # (1, D) the mean image
        status = self.client.get_run(run_id).info.status
        with tempfile.TemporaryDirectory() as tmp:
            weights, meta = Path(tmp, "weights.npz"), Path(tmp, "config.json")
            np.savez(weights, **arrays)
            meta.write_text(json.dumps({"config": config.asdict(), "label_names": list(label_names)}, indent=1))
            mlflow.set_tracking_uri(self.tracking_uri)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME_IN_RUN, python_model=str(MODEL_CODE),
                    artifacts={"weights": str(weights), "config": str(meta)},
                    code_paths=[str(MODEL_CODE.parent)],
                    signature=signature, input_example=example,
                    pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"])
        if status != "FINISHED":            # leaving start_run marked it FINISHED
            self.client.update_run(run_id, status=status)
        return info.model_uri

    def _logged_model_uri(self, run_id: str) -> str:
        run = self.client.get_run(run_id)
        models = self.client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME_IN_RUN}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=1)
        if not models:
            raise UserError(f"run {run_id} has no logged model; log one with log_model first")
        return f"models:/{models[0].model_id}"

    def champion(self, model_name: str = DEFAULT_MODEL_NAME) -> Champion | None:
        """The version the `champion` alias points at, or None."""
        mlflow = _mlflow()
        try:
            version = self.client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        value = version.tags.get(VAL_ACCURACY_TAG)
        return Champion(str(version.version), version.run_id, float(value) if value is not None else None,
                        f"models:/{model_name}/{version.version}")

    def promote(self, model_name: str, run_id: str, val_accuracy: float,
                model_uri: str | None = None) -> "Promotion":
        """Register the run's model (default: the last one logged under it) and move alias
        `champion` to the new version only if its val accuracy beats the champion's.

        The version is tagged val_accuracy, so later comparisons read it back
        rather than guess.
        """
        mlflow = _mlflow()
        self.wait()
        model_uri = model_uri or self._logged_model_uri(run_id)
        model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
        with self._store_lock():
            try:
                self.client.create_registered_model(model_name)
            except mlflow.exceptions.MlflowException as err:
                if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            # Re-running a finished study, or several workers finishing it, promotes the
            # same run again: reuse its version rather than register a duplicate.
            existing = self.client.search_model_versions(
                f"name = {_quote(model_name)} AND run_id = '{run_id}'")
            if existing:
                version = str(min(int(v.version) for v in existing))
            else:
                # mlflow resolves the source through the global tracking URI: point it at ours
                mlflow.set_tracking_uri(self.tracking_uri)
                version = str(self.client.create_model_version(
                    model_name, source=model_uri, run_id=run_id, model_id=model_id,
                    tags={VAL_ACCURACY_TAG: repr(float(val_accuracy))}).version)
                # Workers on other machines (a server store has no file lock) may have registered
                # the same run at the same moment: the lowest version stays, later ones go.
                lowest = min(int(v.version) for v in self.client.search_model_versions(
                    f"name = {_quote(model_name)} AND run_id = '{run_id}'"))
                if lowest < int(version):
                    self.client.delete_model_version(model_name, version)
                    version = str(lowest)
            current = self.champion(model_name)
            if current is not None and current.version == version:
                return Promotion(version, False, current)
            wins = current is None or current.val_accuracy is None or float(val_accuracy) > current.val_accuracy
            if wins:
                self.client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
                current = Champion(version, run_id, float(val_accuracy), f"models:/{model_name}/{version}")
        return Promotion(version, wins, current)

    def score_model(self, model_uri: str, X, y, label_names: Sequence[str] | None = None) -> dict:
        """`score_model` (below) on a model of this store."""
        return score_model(model_uri, X, y, label_names=label_names, tracking_uri=self.tracking_uri)


@dataclass(frozen=True)
class Promotion:
    version: str                # the version just registered
    became_champion: bool
    champion: Champion          # the champion after promotion: this version, or the one that stayed


# ------------------------------------------------------------- trial runs

class _Worker:
    """A daemon thread running submitted calls in order, then stopping at `stop`."""

    def __init__(self, name: str):
        self.errors: list[Exception] = []
        self.cpu_seconds = 0.0              # CPU time the thread used, once it has stopped
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> None:
        self._queue.put((fn, args))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except Exception as err:        # logging must never kill training
                self.errors.append(err)
        self.cpu_seconds = time.thread_time()

    def stop(self) -> None:
        self._queue.put(None)

    def join(self) -> None:
        self._thread.join()


_ended_trials: list = []                # TrialRuns ended but not yet waited for
_ended_lock = threading.Lock()


def _wait_for_ended_trials() -> None:
    with _ended_lock:
        trials = list(_ended_trials)
        _ended_trials.clear()
    for trial in trials:
        trial.wait()


atexit.register(_wait_for_ended_trials)  # a process that exits normally leaves nothing half-logged


class TrialRun:
    """The MLflow side of one trial.

    - `log_epoch` is the trainer callback: metrics at step = epoch and the W1 grid image;
    - `log_result(result)` adds best_val_accuracy, best_epoch and training_curves.png;
    - `log_model(...)` logs the model (before `end`);
    - `end(status, tags)` closes the run: FINISHED, KILLED (e.g. tags stop_reason,
      pruned_at_epoch) or FAILED; `fail(error)` is end FAILED with tag `error`.

    Cost while training: metrics and images go to a background thread, in
    order, and the status is set there last. Rendering the curves takes
    ~0.2 s of matplotlib, which, run beside training, slows it two- to
    threefold more through the GIL, so it is deferred to `wait()`: called by
    end(wait=True), `Tracker.wait()`/`end_study()`, the Tracker methods that
    read runs, and interpreter exit. A run can thus be FINISHED a little before
    its curves appear. As a context manager, a block that raises ends the run
    FAILED (KILLED for KeyboardInterrupt).
    """

    def __init__(self, tracker: Tracker, run_id: str, trial_number: int):
        self.tracker, self.run_id, self.trial_number = tracker, run_id, trial_number
        self.ended = False
        self._curves = None                 # (loss_history, train_acc, val_acc) until rendered
        self._warned = False
        self._worker = _Worker(f"mlflow-{run_id[:8]}")

    def log_epoch(self, stats) -> None:
        """Trainer callback (EpochStats): queue loss, accuracies and learning rate, and the W1 grid."""
        timestamp = int(time.time() * 1000)
        metrics = {name: getattr(stats, name) for name in EPOCH_METRICS}
        W1 = stats.params.get("W1")             # valid only during this call: copy the part drawn
        part = None if W1 is None else np.array(W1[:, :self.tracker.grid_units], dtype=np.float32)
        self._worker.submit(self._log_epoch, stats.epoch, metrics, part, timestamp)

    def _log_epoch(self, epoch, metrics, W1_part, timestamp) -> None:
        self.tracker._log_batch(self.run_id, metrics=metrics, step=epoch, timestamp=timestamp)
        if W1_part is not None:
            from . import vis
            self.tracker.client.log_image(self.run_id, vis.first_layer_grid(W1_part), key=GRID_KEY,
                                          step=epoch, synchronous=True)

    def log_result(self, result) -> None:
        """best_val_accuracy and best_epoch, the curves' diagnosis as tags `diagnosis` and
        `diagnosis.<finding>` (queued), and training_curves.png (at `wait`), from a TrainResult."""
        from . import diagnosis

        self._worker.submit(self.tracker._log_batch, self.run_id,
                            {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch})
        epochs = [e for e in result.epochs if np.isfinite(e.val_accuracy)]
        self._curves = (np.array(result.loss_history), [e.train_accuracy for e in epochs],
                        [e.val_accuracy for e in epochs])
        self._worker.submit(self.tracker._log_batch, self.run_id, None, None,
                            diagnosis.as_tags(diagnosis.diagnose(*self._curves)))

    def log_model(self, params: dict, preprocessor, config: TrainConfig, label_names: Sequence[str]) -> str:
        """Tracker.log_model on this run; call it before `end`. Returns the model URI."""
        if self.ended:
            raise RuntimeError(f"log the model of run {self.run_id} before ending it")
        return self.tracker.log_model(self.run_id, params, preprocessor, config, label_names)

    def end(self, status: str = "FINISHED", tags: dict | None = None, *, wait: bool = False) -> None:
        """Queue the end of the run (tags, then status) behind what is already queued."""
        if status not in _TERMINAL:
            raise ValueError(f"status must be one of {', '.join(_TERMINAL)}, got {status!r}")
        if self.ended:
            raise RuntimeError(f"trial run {self.run_id} has already ended")
        self.ended = True
        self._worker.submit(self._end, status, dict(tags or {}))
        self._worker.stop()
        with _ended_lock:
            _ended_trials.append(self)
        if wait:
            self.wait()

    def _end(self, status, tags) -> None:
        if self._worker.errors:
            first = self._worker.errors[0]
            tags["mlp_exp.logging_error"] = one_line(
                f"{len(self._worker.errors)} logging call(s) failed, first: {type(first).__name__}: {first}")
        self.tracker.end_run(self.run_id, status, tags)

    def fail(self, error, *, wait: bool = False) -> None:
        """End FAILED, with tag `error` holding the error's one-line message."""
        message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        self.end("FAILED", {"error": one_line(message, 5000)}, wait=wait)

    def wait(self) -> None:
        """Block until the run is fully logged and closed: the queue, the status, then the curves."""
        if not self.ended:
            raise RuntimeError(f"end trial run {self.run_id} before waiting for it")
        self._worker.join()
        if self._curves is not None:
            curves, self._curves = self._curves, None
            try:
                self._log_curves(*curves)
            except Exception as err:
                self._worker.errors.append(err)
        if self._worker.errors and not self._warned:
            self._warned = True
            first = self._worker.errors[0]
            _log.warning("MLflow run %s: %d logging call(s) failed, first: %s: %s", self.run_id,
                         len(self._worker.errors), type(first).__name__, one_line(first))

    @property
    def background_cpu_seconds(self) -> float:
        """CPU seconds the run's logging thread used beside training (known after `wait`)."""
        return self._worker.cpu_seconds

    def _log_curves(self, loss_history, train_accuracy, val_accuracy) -> None:
        from . import vis
        figure = vis.render_training_curves(loss_history, train_accuracy, val_accuracy,
                                            title=f"{self.tracker.study_name or ''} trial {self.trial_number}")
        self.tracker.client.log_figure(self.run_id, figure, CURVES_ARTIFACT, save_kwargs={"dpi": CURVES_DPI})

    def __enter__(self) -> "TrialRun":
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.ended:
            return
        if error is None:
            self.end("FINISHED")
        elif isinstance(error, Exception):
            self.fail(error)
        else:                               # KeyboardInterrupt, SystemExit
            self.end("KILLED", {"stop_reason": "interrupted"})


# ------------------------------------------------------------- scoring

@dataclass
class LoadedModel:
    uri: str
    run_id: str | None
    input_width: int | None
    label_names: list | None
    pyfunc: object = field(repr=False)


def load_model(model_uri: str = DEFAULT_MODEL_URI, tracking_uri=None) -> LoadedModel:
    """Load a logged model through mlflow.pyfunc; a missing champion or bad URI is a UserError."""
    uri = resolve_tracking_uri(tracking_uri, create=False)
    if urlparse(uri).scheme == "sqlite" and not _sqlite_path(uri).is_file():
        raise UserError(f"no model at {model_uri}: there is no MLflow store at {uri}; run a search "
                        f"first, or pass --tracking-uri (or set {TRACKING_URI_ENV}) to the store it used")
    _check_server(uri)
    mlflow = _mlflow()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError, ValueError) as err:
        if model_uri.startswith("models:/") and "@" in model_uri:
            raise UserError(f"no model at {model_uri} in {uri} ({one_line(err, 200)}); run a search "
                            f"first so a champion is registered, or pass --model-uri") from err
        raise UserError(f"cannot load model {model_uri} from {uri}: {one_line(err, 300)}") from err
    schema = model.metadata.get_input_schema()
    shape = getattr(schema.inputs[0], "shape", None) if schema is not None and schema.inputs else None
    try:
        label_names = list(model.unwrap_python_model().label_names)
    except Exception:                       # not one of ours: fall back to class indices
        label_names = None
    return LoadedModel(model_uri, model.metadata.run_id, shape[-1] if shape else None, label_names, model)


def score_model(model, X, y, label_names: Sequence[str] | None = None, tracking_uri=None) -> dict:
    """Accuracy of a model (a URI or a LoadedModel) on raw images.

    Inputs:
    - X: uint8 images (N, 32, 32, 3), or rows (N, 3072) = images.reshape(N, -1)
    - y: (N,) integer labels

    Returns a JSON-ready dict: model_uri, run_id, test_accuracy, num_test, per_class
    ({label name: accuracy, or None for a class absent from y}).
    """
    if not isinstance(model, LoadedModel):
        model = load_model(model, tracking_uri)
    rows = np.asarray(X).reshape(len(X), -1)
    y = np.asarray(y)
    if len(rows) == 0:
        raise UserError("no images to score; pass a --test-size of at least 1")
    if model.input_width is not None and rows.shape[1] != model.input_width:
        raise UserError(f"input has {rows.shape[1]} values per image, model {model.uri} expects "
                        f"{model.input_width} (32x32x3 raw pixels, images.reshape(N, -1))")
    if y.shape != (len(rows),):
        raise ValueError(f"y must have shape ({len(rows)},), got {y.shape}")
    if rows.dtype != np.uint8 and (rows.min() < 0 or rows.max() > 255):
        raise ValueError("X must be raw pixel values 0..255 (the model preprocesses them itself), "
                         f"got values in [{rows.min():g}, {rows.max():g}]")
    predicted = np.concatenate([
        np.asarray(model.pyfunc.predict(rows[start:start + PREDICT_CHUNK].astype(np.float32))).argmax(axis=1)
        for start in range(0, len(rows), PREDICT_CHUNK)])
    correct = predicted == y
    names = list(label_names or model.label_names or [])
    num_classes = max(len(names), int(y.max()) + 1)
    names += [str(i) for i in range(len(names), num_classes)]
    per_class = {names[c]: (float(correct[y == c].mean()) if np.any(y == c) else None)
                 for c in range(num_classes)}
    return {"model_uri": model.uri, "run_id": model.run_id, "test_accuracy": float(correct.mean()),
            "num_test": int(len(rows)), "per_class": per_class}
