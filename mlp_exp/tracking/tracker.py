"""The runs of one study in one MLflow store: the parent run, nested trial runs, and finding them.

Layout of what lands in the store (names from tracking.names):

    experiment <study name>               artifacts beside the sqlite db: mlruns/artifacts
      run <study name>                    the study's parent run, tag mlp_exp.study; at the end tags
                                          mlp_exp.best_trial, .best_run_id, .model_version,
                                          .champion_version and metric best_val_accuracy
        run trial-007                     nested (mlflow.parentRunId), tag optuna.trial_number
          tags       mlflow.user, mlflow.source.name / .type / .git.commit (as the fluent API sets them)
          datasets   cifar10-train, cifar10-val (contexts training, validation), by content digest
          params     asdict(TrainConfig): enough to re-run the trial
          metrics    loss, train_accuracy, val_accuracy, learning_rate at step = epoch;
                     best_val_accuracy, best_epoch; on the champion the test evaluation
                     (evaluation.log_evaluation: test metrics, confusion matrix, dataset cifar10-test)
          images     first_layer_weights at step = epoch (the UI steps through training)
          artifacts  training_curves.png; model/ (pyfunc from code, weights in .npz)
    registered model mlp-cifar10          versions tagged val_accuracy; alias `champion`
"""
from __future__ import annotations

import atexit
import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlparse

from ..config import TrainConfig
from ..urls import safe_url
from .names import (BEST_RUN_TAG, BEST_TRIAL_TAG, BEST_VAL_METRIC, CHAMPION_VERSION_TAG, GRID_UNITS,
                    MODEL_VERSION_TAG, PARENT_TAG, ROLE_TAG, STUDY_TAG, TERMINAL_STATUSES, TRAIN_DATASET,
                    TRIAL_TAG, VAL_DATASET)
from .registry import ModelRegistry
from .store import (artifact_location, check_store, filter_literal, import_mlflow, prepare_store,
                    resolve_tracking_uri, sqlite_path, sqlite_store_missing, store_errors, store_lock,
                    store_lock_path)
from .trial_run import TrialRun

log = logging.getLogger("mlp_exp.tracking")


@functools.cache
def run_source_tags() -> dict:
    """evaluation.source_tags, passwords hidden, resolved once per process (it may ask git): the
    user, entry point and commit MLflow's fluent start_run would set, for the runs created here
    with MlflowClient.create_run, which sets none."""
    from .evaluation import source_tags
    return {key: safe_url(value) for key, value in source_tags().items()}


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




class Tracker(ModelRegistry):
    """One experiment (named after the Optuna study) in one MLflow store.

    Inputs:
    - tracking_uri: see resolve_tracking_uri (None: $MLFLOW_TRACKING_URI or the local sqlite store)
    - experiment_name: the study's name; None when only scoring or registry calls are needed
    - grid_units: first-layer units drawn in each epoch's weight image
    - create: False to only read (reports with --no-log): the store, its tables and the
      experiment are then never created, and a store or experiment that is not there has no runs

    Call `study_run` once per process, then `start_trial` per trial. Registry
    and model calls (log_model, champion, promote, score_model) come from
    ModelRegistry. The trial runs this Tracker ended are waited for (fully
    logged) by `wait()`, by every method that reads runs, and at exit.
    """

    def __init__(self, tracking_uri=None, experiment_name: str | None = None, *, grid_units=GRID_UNITS,
                 create: bool = True):
        self.tracking_uri = resolve_tracking_uri(tracking_uri, create=create)
        self.experiment_name = experiment_name
        self.grid_units = grid_units
        self._creates = create
        self.study_name: str | None = None
        self.parent_run_id: str | None = None
        self.trial_datasets: list = []      # DatasetInputs logged on every trial run (set_trial_datasets)
        self._ended: list[TrialRun] = []    # ended but not yet waited for
        self._ended_lock = threading.Lock()
        self._lock_path = store_lock_path(self.tracking_uri)
        mlflow = import_mlflow()
        self.experiment_id = None
        self.client = None                  # stays None only for create=False on a store not made yet
        if not create:
            with store_errors(self.tracking_uri):
                check_store(self.tracking_uri, write=False)
                if not sqlite_store_missing(self.tracking_uri):
                    self.client = mlflow.MlflowClient(self.tracking_uri)
                    found = self.client.get_experiment_by_name(experiment_name) if experiment_name else None
                    if found is not None and found.lifecycle_stage != "deleted":
                        self.experiment_id = found.experiment_id
            return
        # Opening a new db creates its tables: two processes doing it at once would collide.
        with self._store_lock(), store_errors(self.tracking_uri):
            prepare_store(self.tracking_uri)
            self.client = mlflow.MlflowClient(self.tracking_uri)
            if experiment_name is not None:
                self.experiment_id = self._get_or_create_experiment(experiment_name)
            else:
                self.client.search_experiments(max_results=1)
        atexit.register(self.wait)          # a process that exits normally leaves nothing half-logged

    @property
    def display_uri(self) -> str:
        """The tracking URI without its password: the one to print."""
        return safe_url(self.tracking_uri)

    def _store_lock(self):
        """Serialise find-or-create across processes sharing a local sqlite store.

        Remote stores get no lock; study_run's oldest-wins rule covers them.
        """
        return store_lock(self._lock_path)

    def _get_or_create_experiment(self, name: str) -> str:
        mlflow = import_mlflow()
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location(self.tracking_uri))
            except mlflow.exceptions.MlflowException:     # another process (on a server) was first
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        self._warn_if_copied(experiment)
        return experiment.experiment_id

    def _warn_if_copied(self, experiment) -> None:
        """One line when the experiment keeps its artifacts outside a sqlite store's folder while the
        folder has its own artifacts/: the store was copied or moved, and MLflow (which stores each
        experiment's and run's artifact location as an absolute path, and cannot change one) will
        write this run's artifacts into the original's folder."""
        here = artifact_location(self.tracking_uri)
        if here is None or experiment.artifact_location in (here, here.rstrip("/")):
            return
        folder = sqlite_path(self.tracking_uri).resolve().parent
        stored = urlparse(experiment.artifact_location)
        if stored.scheme == "file" and (folder / "artifacts").is_dir() \
                and not Path(unquote(stored.path)).is_relative_to(folder):
            log.warning("experiment %r of %s keeps its artifacts in %s, outside this store's folder (the store was "
                        "copied or moved?): new runs write their artifacts there too; to keep copies apart, "
                        "use another --study-name", experiment.name, self.display_uri, unquote(stored.path))

    def _require_experiment(self) -> str:
        if self.experiment_id is None:
            raise ValueError("this Tracker was made without an experiment_name")
        return self.experiment_id

    def _search(self, filter_string: str) -> list:
        if self.client is None or (self.experiment_id is None and not self._creates):
            return []                       # a read-only Tracker on a store or experiment not made yet
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

    def wait(self) -> None:
        """Wait until every trial run this Tracker ended is fully logged and closed."""
        with self._ended_lock:
            ended, self._ended = self._ended, []
        for run in ended:
            run.wait()

    def _ended_trial(self, run: TrialRun) -> None:
        """TrialRun.end: `run` is closing in the background; wait() waits for it."""
        with self._ended_lock:
            self._ended.append(run)

    # ------------------------------------------------------------- runs

    def _study_runs(self, study_name: str) -> list:
        runs = self._search(f"tags.`{STUDY_TAG}` = {filter_literal(study_name)} AND tags.`{ROLE_TAG}` = 'study'")
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def study_run(self, study_name: str, params: dict | None = None, tags: dict | None = None) -> str:
        """The study's parent run id, found by tag and reopened (RUNNING), or created once.

        Workers starting together end with one parent: creation happens under a
        file lock (sqlite), and after creating, the oldest parent of the study
        wins; a process that lost deletes its own run. Params already on the run
        keep their first value (MLflow params are write-once). The Tracker
        remembers the study for start_trial, log_study_outcome and end_study.
        """
        mlflow = import_mlflow()
        with self._store_lock():
            existing = self._study_runs(study_name)
            if existing:
                run = existing[0]
                if run.info.status != "RUNNING":
                    self.client.update_run(run.info.run_id, status="RUNNING")
            else:
                run = self.client.create_run(self._require_experiment(), run_name=study_name,
                                             tags={**run_source_tags(), STUDY_TAG: study_name, ROLE_TAG: "study"})
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
            tags={**run_source_tags(), PARENT_TAG: self.parent_run_id, STUDY_TAG: self.study_name,
                  ROLE_TAG: "trial", TRIAL_TAG: str(trial_number), **(tags or {})})
        self._log_batch(run.info.run_id, params={**config.asdict(), **extra})
        if self.trial_datasets:
            self.client.log_inputs(run.info.run_id, datasets=self.trial_datasets)
        return TrialRun(self, run.info.run_id, trial_number)

    def set_trial_datasets(self, X_train, y_train, X_val, y_val, source) -> None:
        """The training and validation sets every trial run started after this gets as dataset inputs
        (contexts training and validation), their digests computed here, once for the process."""
        from .evaluation import dataset_input
        self.trial_datasets = [dataset_input(TRAIN_DATASET, X_train, y_train, source, "training"),
                               dataset_input(VAL_DATASET, X_val, y_val, source, "validation")]

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
        query = f"tags.`{STUDY_TAG}` = {filter_literal(study_name)} AND tags.`{ROLE_TAG}` = 'trial'"
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
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(TERMINAL_STATUSES)}, got {status!r}")
        if tags:
            self._log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status)

    def log_study_outcome(self, best_trial: int, best_run_id: str, best_val_accuracy: float,
                          model_version: str, champion_version: str, test_accuracy: float | None = None,
                          num_test: int | None = None) -> None:
        """On the study's parent run, at its end: the best trial, its run and val accuracy (metric
        best_val_accuracy), the version it was registered as, the @champion version, and the test
        accuracy when this study's version was scored as champion."""
        metrics = {BEST_VAL_METRIC: best_val_accuracy}
        if test_accuracy is not None:
            metrics.update(test_accuracy=test_accuracy, num_test=num_test)
        self._log_batch(self._require_parent(), metrics=metrics, tags={
            BEST_TRIAL_TAG: best_trial, BEST_RUN_TAG: best_run_id, MODEL_VERSION_TAG: model_version,
            CHAMPION_VERSION_TAG: champion_version})

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("call study_run(study_name) first")
        return self.parent_run_id
