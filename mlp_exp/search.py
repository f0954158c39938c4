"""Hyperparameter search for the two-layer net on CIFAR-10: `python -m mlp_exp.search`.

What is optimised: validation accuracy (best epoch) of the NumPy two-layer net,
over hidden size, learning rate, L2 strength, momentum and learning-rate decay
(and whatever else SEARCH_SPACE lists). Each trial trains on the study's data,
reports validation accuracy per epoch to a Hyperband pruner (which lets TPE's
random start-up trials run in full), and is tracked in MLflow. When the study
reaches its target, the best trial is registered as `--model-name` and becomes
`@champion` if it beats the current one; only then is the test set used, once.

    python -m mlp_exp.search --trials 50          # then: mlflow ui / python -m mlp_exp.evaluate

A study outlives its processes: any number of them (`--workers N`, or more on
other machines sharing `--storage` and `--tracking-uri`) run it together, and the
same command resumes it. A trial whose worker dies is failed by the heartbeat
check and retried, Ctrl-C or SIGTERM closes the running trial and queues it
again, and the storage waits out a database restart (README: Scale out).

This is the only module that imports Optuna. `config_for_trial` is the one
place a trial becomes a TrainConfig; below it nothing knows about Optuna.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from . import cli
from .config import TrainConfig, field_names, parse_value
from .errors import UserError, one_line
from .progress import StudyProgress, TrialOutcome
from .trainer import StopTraining, mirror_rows, train

log = logging.getLogger("mlp_exp.search")

DEFAULT_STUDY_NAME = "cifar10-mlp"
DEFAULT_STORAGE = "sqlite:///studies/optuna.db"
DEFAULT_MODEL_NAME = "mlp-cifar10"
DEFAULT_TRIALS = 50
DEFAULT_MAX_EPOCHS = 30

# The search space, as data: name -> (kind, low, high) or ("categorical", choices).
# Ranges are for standardized inputs (unit variance per pixel); measured on the
# replica, hidden 1000, lr 5e-3, reg 1e-3, decay 0.93 for 30 epochs reaches
# val 0.59 / test 0.577, so the ranges are centred there with room each way.
SEARCH_SPACE = {
    "hidden_size": ("int_log", 300, 2000),
    "learning_rate": ("float_log", 1e-3, 3e-2),
    "reg": ("float_log", 1e-5, 1e-2),
    "momentum": ("float", 0.8, 0.95),
    "lr_decay": ("float", 0.85, 0.98),
}

# Settings every searched trial starts from (the search space and --fixed override them).
STUDY_DEFAULTS = dict(
    update="momentum", batch_size=200, init_std=2e-2,
    preprocessing="standardize", flip=True,
)

# Trial 0 replays the spec notebook's best grid configuration, so the study
# starts from the baseline it has to beat. (The notebook passed reg=1.0 to
# every grid run whatever its loop said, so its best used reg 1.0.)
SPEC_BASELINE = dict(
    hidden_size=500, learning_rate=1e-5, reg=1.0, momentum=0.9, lr_decay=0.95,
    update="momentum", batch_size=100, num_epochs=5, init_std=6e-3,
    preprocessing="mean_image", flip=False,
)

# Hyperband: rungs at 1, 3, 9, ... epochs, each keeping the best third of the trials that reach it.
PRUNER_MIN_EPOCHS, PRUNER_REDUCTION_FACTOR = 1, 3
# TPE's random start-up trials; the pruner lets them train in full (see StartupThenHyperband).
SAMPLER_STARTUP_TRIALS = 10


def prunable_epoch(epoch: int, num_epochs: int) -> bool:
    """Whether a pruning decision after `epoch` of `num_epochs` is worth making.

    Optuna's Hyperband has no top rung: with 30 epochs its brackets also cut at
    epoch 27, where pruning saves a tenth of the trial and throws away one that
    is nearly trained (the default study lost hidden-1921 and hidden-473 trials
    there, at val 0.581 and 0.580). Hyperband's own schedule ends its rungs at
    the full budget, so only rungs a reduction factor or more short of it prune.
    """
    return epoch * PRUNER_REDUCTION_FACTOR <= num_epochs


class StartupThenHyperband(optuna.pruners.BasePruner):
    """Hyperband for the trials TPE proposes; the random start-up trials before them always train in full.

    The start-up trials are what TPE learns the space from, and what
    Hyperband's rungs first compare against. Early epochs rank this space
    poorly (high learning rates with high momentum start worst and, decayed,
    end best), so cutting start-up trials at epoch 1 teaches TPE that the
    best region is bad: with seed 2 the default study cut start-up trial 4 at
    epoch 1 (val 0.418); trained in full it reaches 0.610 and won random search.
    A retried trial keeps the place of the trial it retries.
    """

    def __init__(self, startup_trials: int, hyperband: optuna.pruners.HyperbandPruner):
        self.startup_trials, self.hyperband = startup_trials, hyperband

    def prune(self, study, trial) -> bool:
        if trial.system_attrs.get("failed_trial", trial.number) < self.startup_trials:
            return False
        return self.hyperband.prune(study, trial)


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER = f"{socket.gethostname()}:{os.getpid()}"     # which process ran a trial (user attr, run tag)


@dataclass(frozen=True)
class StudySettings:
    """Everything that is the same for every trial of one study invocation."""
    study_name: str = DEFAULT_STUDY_NAME
    trials: int = DEFAULT_TRIALS
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None
    data_dir: str | None = None
    train_size: int = 49000
    val_size: int = 1000
    test_size: int | None = None
    max_epochs: int = DEFAULT_MAX_EPOCHS
    seed: int = 0
    timeout: float | None = None
    model_name: str = DEFAULT_MODEL_NAME
    fixed: dict = field(default_factory=dict)
    workers: int = 1
    heartbeat: int = 30
    quiet: bool = False
    finalize: bool = True
    sampler: str = "tpe"            # tpe | random (a plain random-search baseline)
    pruner: str = "hyperband"       # hyperband | none


# ----------------------------------------------------------------- trial -> config

def _suggest(trial, name, spec):
    kind = spec[0]
    if kind == "int_log":
        return trial.suggest_int(name, spec[1], spec[2], log=True)
    if kind == "int":
        return trial.suggest_int(name, spec[1], spec[2])
    if kind == "float_log":
        return trial.suggest_float(name, spec[1], spec[2], log=True)
    if kind == "float":
        return trial.suggest_float(name, spec[1], spec[2])
    if kind == "categorical":
        return trial.suggest_categorical(name, spec[1])
    raise ValueError(f"unknown search-space kind {kind!r} for {name}")


def config_for_trial(trial, settings: StudySettings) -> TrainConfig:
    """The one mapping from an Optuna trial to a TrainConfig: all suggestions first, then plain values."""
    if trial.user_attrs.get("baseline"):
        values = dict(SPEC_BASELINE)
    else:
        values = {"num_epochs": settings.max_epochs, **STUDY_DEFAULTS}
        values.update({name: _suggest(trial, name, spec)
                       for name, spec in SEARCH_SPACE.items() if name not in settings.fixed})
    values.update(settings.fixed)
    values.update(train_size=settings.train_size, val_size=settings.val_size,
                  seed=settings.seed + trial.number,
                  num_epochs=min(values["num_epochs"], settings.max_epochs))
    return TrainConfig(**values)


def parse_fixed(pairs) -> dict:
    """['hidden_size=500', 'flip=false'] -> {'hidden_size': 500, 'flip': False}, checked against TrainConfig."""
    fixed = {}
    reserved = {"train_size", "val_size", "seed"}   # study-level flags own these
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--fixed takes KEY=VALUE, got {pair!r}")
        if key in reserved:
            raise UserError(f"--fixed {key}=... is set by --{key.replace('_', '-')} instead")
        if key not in field_names():
            raise UserError(f"--fixed: unknown key {key!r}; known keys: "
                            f"{', '.join(k for k in field_names() if k not in reserved)}")
        try:
            fixed[key] = parse_value(key, value)
        except ValueError as err:
            raise UserError(f"--fixed: {err}") from None
    try:   # a pinned value must make a valid config on its own
        TrainConfig(**{**STUDY_DEFAULTS, **fixed})
    except ValueError as err:
        raise UserError(f"--fixed: {err}") from None
    return fixed


# ----------------------------------------------------------------- storage and study

STORAGE_PATIENCE = 120.0   # seconds a worker waits for a lost database before giving up


class StorageLost(UserError):
    """The Optuna storage stayed unreachable for longer than a worker waits for it."""


def _connection_lost(err, sqlite: bool) -> bool:
    """Whether `err` (or what caused it) is a lost connection or a busy lock: worth retrying."""
    from sqlalchemy import exc

    for _ in range(5):
        if err is None:
            return False
        if isinstance(err, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError,
                            exc.TimeoutError)) or getattr(err, "connection_invalidated", False):
            # sqlite's OperationalError also means "no such table" or "not a database": only a lock is passing
            return not sqlite or any(word in str(err).lower() for word in ("locked", "busy"))
        err = err.__cause__ or err.__context__
    return False


class PatientRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage that rides out a database restart, a network blip or a busy SQLite lock.

    Once opened, a call that fails on a lost connection is retried with
    back-off for up to `patience` seconds (the pool re-validates connections,
    so a restarted server is simply reconnected to); past that, StorageLost
    says how to resume. Heartbeats are sent once per interval and a failed one
    is skipped, so the heartbeat thread never blocks the end of a trial. After
    an outage nobody's heartbeat got through: stale trials are not failed until
    one grace period after the storage came back, so live peers can report in.
    A running trial that never sent a heartbeat (its process died right after
    taking it) gets one on its behalf, so it too goes stale and is retried.
    """

    def __init__(self, *args, patience: float = STORAGE_PATIENCE, sleep=time.sleep, **kwargs):
        super().__init__(*args, **kwargs)
        self.patience = patience
        self.sleep = sleep                  # between retries (Interrupts.sleep: Ctrl-C ends the wait)
        self._sqlite = self.url.startswith("sqlite")
        self._local = threading.local()
        self._outage_since = None           # time.monotonic() of the first failure, while it lasts
        self._outage_reported = False
        self._settle_until = 0.0

    def _patiently(self, method, *args, **kwargs):
        local = getattr(self, "_local", None)
        if local is None or getattr(local, "busy", False):   # during __init__, or a nested call
            return method(self, *args, **kwargs)
        local.busy, delay, first_failure = True, 0.25, None
        try:
            while True:
                try:
                    result = method(self, *args, **kwargs)
                except Exception as err:
                    if not _connection_lost(err, self._sqlite):
                        raise
                    self._note_failure(err)
                    first_failure = first_failure or time.monotonic()
                    if time.monotonic() - first_failure > self.patience:
                        raise StorageLost(
                            f"lost the Optuna storage {_safe_url(self.url)} for more than "
                            f"{self.patience:.0f} s ({_first_line(err)}); finished trials are saved "
                            f"there: once it is back, run the same command again to resume") from None
                    self.sleep(delay)
                    delay = min(2 * delay, 1.0)
                    continue
                self._note_success()
                return result
        finally:
            local.busy = False

    # the outage bookkeeping below is shared by the trial's thread and its heartbeat thread:
    # each reads self._outage_since once, so a reset by the other thread does no harm
    def _note_failure(self, err) -> None:
        now, since = time.monotonic(), self._outage_since
        if since is None:
            self._outage_since, self._outage_reported = now, False
        elif not self._outage_reported and now - since > 2:      # not a passing lock
            self._outage_reported = True
            log.warning("Optuna storage unreachable (%s); waiting up to %.0f s for it",
                        _first_line(err), self.patience)

    def _note_success(self) -> None:
        since = self._outage_since
        if since is not None:
            now, self._outage_since = time.monotonic(), None
            if now - since >= (self.heartbeat_interval or 0):     # long enough to have missed heartbeats
                self._settle_until = now + (self.grace_period or 0)
            if self._outage_reported:
                log.warning("Optuna storage reachable again")

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as err:
            if not _connection_lost(err, self._sqlite):
                raise
            self._note_failure(err)         # skipped: the thread tries again next interval
        else:
            self._note_success()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if time.monotonic() < self._settle_until:
            return []
        self._patiently(PatientRDBStorage._give_silent_trials_a_heartbeat, study_id)
        return self._patiently(optuna.storages.RDBStorage._get_stale_trial_ids, study_id)

    def _give_silent_trials_a_heartbeat(self, study_id: int) -> None:
        from optuna.storages._rdb import models

        session = self.scoped_session()
        try:
            silent = [row[0] for row in session.query(models.TrialModel.trial_id).filter(
                models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING,
                ~models.TrialModel.heartbeats.any())]
            session.commit()
        finally:
            session.close()
        for trial_id in silent:
            optuna.storages.RDBStorage.record_heartbeat(self, trial_id)


def _make_patient(name):
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def patient(self, *args, **kwargs):
        return self._patiently(method, *args, **kwargs)
    return patient


# every call that opens a database session (what _CachedStorage and Study call)
for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
              "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
              "get_trial_system_attrs", "get_all_studies", "create_new_trial", "_create_new_trial",
              "set_trial_param", "_set_trial_param", "get_trial_param", "set_trial_state_values",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
              "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial",
              "get_all_trials", "_get_trials", "get_n_trials", "get_best_trial", "_get_best_trial_id"):
    if hasattr(optuna.storages.RDBStorage, _name):
        setattr(PatientRDBStorage, _name, _make_patient(_name))


def _first_line(err) -> str:
    err = getattr(err, "orig", None) or err.__cause__ or err
    return " ".join(str(err).strip().splitlines()[:1]) or type(err).__name__


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _postgresql_driver(url: str) -> str:
    """postgresql://... names no driver and SQLAlchemy 2.1 then wants psycopg 3: use psycopg2
    (what the project installs) unless psycopg 3 is there."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util
    if importlib.util.find_spec("psycopg") is not None:
        return url
    return "postgresql+psycopg2://" + url[len("postgresql://"):]


def open_storage(url: str, heartbeat: int, on_stale=None, patience: float = STORAGE_PATIENCE,
                 sleep=time.sleep):
    """An RDB storage with heartbeats, so a trial whose process died is failed and retried.

    Opening checks the URL and that the database answers (a UserError if not);
    afterwards the storage waits out outages of up to `patience` seconds, in `sleep`s.
    """
    from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) not in ("", ":memory:"):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"cannot create the folder of Optuna storage {url!r}: "
                                f"{_first_line(err)}; pass --storage sqlite:///<writable folder>/optuna.db") from None
        # Several workers share one SQLite file: wait for the lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs = {"pool_pre_ping": True}       # a restarted server is reconnected to
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(6):
        try:
            storage = PatientRDBStorage(
                _postgresql_driver(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat, heartbeat_stale_trial_callback=on_stale, patience=patience,
                sleep=sleep)
            if url.startswith("sqlite:///"):
                with storage.engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA journal_mode=WAL")
            return storage
        except (ArgumentError, OperationalError, SQLAlchemyError, ValueError, ImportError,
                optuna.exceptions.StorageInternalError) as err:
            # workers opening a new database at once race to create its tables (or hold its lock)
            if attempt < 5 and (_schema_race(err) or _connection_lost(err, sqlite=True)):
                time.sleep(0.2 + random.random())
                continue
            hint = " (the scheme is postgresql://, not postgres://)" if url.startswith("postgres://") else ""
            raise UserError(f"cannot open Optuna storage {_safe_url(url)!r}: {_first_line(err)}{hint}; check "
                            "the --storage URL (sqlite:///path.db or postgresql://user:pass@host:port/db) "
                            "and that the database server is running") from None


def _schema_race(err) -> bool:
    """Whether `err` comes from another process creating the same tables first."""
    from sqlalchemy.exc import IntegrityError

    for _ in range(5):
        if err is None:
            return False
        text = str(err).lower()
        if isinstance(err, IntegrityError) or "already exists" in text or "duplicate key" in text:
            return True
        err = err.__cause__ or err.__context__
    return False

def counts(study) -> dict:
    by_state = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        by_state[trial.state] += 1
    return {"finished": by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED],
            "complete": by_state[TrialState.COMPLETE], "running": by_state[TrialState.RUNNING],
            "waiting": by_state[TrialState.WAITING], "failed": by_state[TrialState.FAIL]}


def progress_outcomes(study) -> list:
    """The study's finished trials as progress.TrialOutcome (plain values; progress knows no Optuna)."""
    outcomes = []
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        epochs = max(t.intermediate_values, default=0)          # the last epoch reported
        value = t.value if t.value is not None else t.intermediate_values.get(epochs)
        state = t.state.name.lower()
        if "diverged_at_epoch" in t.user_attrs:
            state, epochs = "diverged", t.user_attrs["diverged_at_epoch"]
        outcomes.append(TrialOutcome(t.number, state, value, epochs))
    return outcomes


def load_study(study_name: str, storage: str = DEFAULT_STORAGE):
    """An existing study, to read (reports); a missing storage file or study is a UserError."""
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise UserError(f"no Optuna storage at {storage!r}; pass the --storage the search used")
    rdb = open_storage(storage, heartbeat=StudySettings.heartbeat)
    try:
        return optuna.load_study(study_name=study_name, storage=rdb)
    except KeyError:
        names = optuna.get_all_study_names(rdb)
        raise UserError(f"no study {study_name!r} in {storage}; studies there: "
                        f"{', '.join(names) or 'none'}") from None


def searched_view(study, names):
    """For the report's parameter plots: (view, importances). `view` is an in-memory copy of `study`
    holding only the trials that sampled every one of `names` (the baseline samples none);
    `importances` their normalised fANOVA importances, {} before two of them complete."""
    view = optuna.create_study(study_name=study.study_name, directions=study.directions)
    view.add_trials([t for t in study.get_trials(deepcopy=False) if set(names) <= set(t.params)])
    importances = {}
    if names and len(view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = dict(optuna.importance.get_param_importances(view, params=list(names)))
        except (ValueError, RuntimeError):      # nothing varied
            pass
    return view, importances


class Surplus(Exception):
    """A worker started a trial although the target was already covered (a race between workers)."""


# ----------------------------------------------------------------- the objective

class Objective:
    """Trains one trial: config from the trial, tracking and pruning as callbacks.

    The trial's MLflow run reaches its final status before Optuna hears the
    outcome, so a worker killed at any moment leaves either a finished trial
    with a closed run or a running trial that the heartbeat check fails and
    retries (closing its run FAILED). `current` is (trial number, run id or
    None) of the trial in hand, for run_worker to settle a trial a peer failed.
    `interrupts` (an Interrupts) decides where Ctrl-C may stop a trial: in its
    epochs, not in the middle of writing to a store.
    """

    def __init__(self, settings: StudySettings, data, tracker, extra_callbacks=(), interrupts=None):
        self.settings, self.data, self.tracker = settings, data, tracker
        self.extra_callbacks = list(extra_callbacks)
        self.interrupts = interrupts or Interrupts()
        self.current = None
        self._mirrored_train = None         # mirror_rows(data.X_train), built by the first flipping trial

    def mirrored_train(self):
        """The training images mirrored left-right, one copy for every trial of this worker."""
        if self._mirrored_train is None:
            self._mirrored_train = mirror_rows(self.data.X_train)
        return self._mirrored_train

    def __call__(self, trial):
        self.current = (trial.number, None)
        try:
            return self._run(trial)
        except (optuna.TrialPruned, Surplus, StorageLost, optuna.exceptions.UpdateFinishedTrialError):
            raise                           # expected, or reported where they end the worker
        except Exception as err:            # Optuna records it as FAIL and the study goes on
            log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, one_line(err),
                        exc_info=not isinstance(err, UserError))
            raise

    def _run(self, trial):
        study, settings = trial.study, self.settings
        ahead = sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED + (
            TrialState.RUNNING, TrialState.WAITING)) if t.number < trial.number)
        if ahead >= settings.trials:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number} not needed: {ahead} trials cover the target")

        config = config_for_trial(trial, settings)
        run = self.tracker.start_trial(trial.number, config, tags={"mlp_exp.worker": WORKER})
        self.current = (trial.number, run.run_id)
        try:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            trial.set_user_attr("worker", WORKER)
            trial.set_user_attr("config", config.asdict())
            return self._train(trial, config, run)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            try:
                _close(run, "KILLED", {"stop_reason": "interrupted"})
                retry(study, trial, "interrupted")
            except Exception as err:        # must not turn the interrupt into a failed trial
                log.warning("trial %d: cleanup after the interrupt failed: %s", trial.number, one_line(err))
            raise
        except Exception as err:
            _close(run, "FAILED", {"error": one_line(f"{type(err).__name__}: {err}")})
            raise

    def _train(self, trial, config: TrainConfig, run):
        study = trial.study

        def prune(stats):
            trial.report(stats.val_accuracy, stats.epoch)
            if prunable_epoch(stats.epoch, config.num_epochs) and trial.should_prune():
                raise StopTraining(f"pruned at epoch {stats.epoch}: validation accuracy "
                                   f"{stats.val_accuracy:.4f} below the pruner's cut")

        def after_epoch(stats):
            for callback in (run.log_epoch, prune, *self.extra_callbacks):
                callback(stats)

        with self.interrupts.interruptible():
            result = train(self.data.X_train, self.data.y_train, self.data.X_val, self.data.y_val,
                           config, callbacks=[self.interrupts.deferring(after_epoch)],
                           preprocessor=self.data.preprocessors[config.preprocessing],
                           X_train_mirrored=self.mirrored_train() if config.flip else None)
        run.log_result(result)
        if result.diverged:
            epoch = result.epochs[-1].epoch
            trial.set_user_attr("diverged_at_epoch", epoch)
            _close(run, "KILLED", {"stop_reason": "diverged", "diverged": "true", "pruned_at_epoch": str(epoch)})
            raise optuna.TrialPruned(f"diverged (non-finite loss) in epoch {epoch}")
        if result.stop_reason:
            epoch = result.epochs[-1].epoch
            _close(run, "KILLED", {"stop_reason": result.stop_reason, "pruned_at_epoch": str(epoch)})
            raise optuna.TrialPruned(result.stop_reason)
        best_so_far = max((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                           if t.value is not None), default=-math.inf)
        if result.best_val_accuracy > best_so_far:
            # only trials that improve the study's best get a model: the best trial always has one
            run.log_model(result.best_params, self.data.preprocessors[config.preprocessing],
                          config, self.data.label_names)
            trial.set_user_attr("has_model", True)
        _close(run, "FINISHED")
        return result.best_val_accuracy


def _close(run, status: str, tags: dict | None = None) -> None:
    """End a TrialRun with `status` and wait until MLflow has it, even if it was ended before."""
    if not run.ended:
        run.end(status, tags, wait=True)
    else:                               # ended, then something failed: the last word is `status`
        run.wait()
        run.tracker.end_run(run.run_id, status, tags)


RETRIED_ATTRS = ("baseline",)           # user attrs a retry keeps; the rest belong to the failed attempt
MAX_RETRY = 3


def retry(study, trial, reason: str, max_retry: int = MAX_RETRY) -> None:
    """Queue a failed or interrupted trial's configuration as a new waiting trial.

    The retry gets a new trial number (and its own MLflow run); system attrs
    `failed_trial` and `retry_history` (as optuna.storages.RetryHeartbeatStaleTrialCallback
    writes them) lead back to the original. After `max_retry` retries the
    configuration is dropped and the sampler proposes a new one.
    """
    if not isinstance(trial, optuna.trial.FrozenTrial):     # a live Trial: its stored state
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > max_retry:
        log.warning("trial %d %s; its configuration already ran %d times, not retrying it",
                    trial.number, reason, len(history))
        return
    attrs = {k: v for k, v in trial.user_attrs.items() if k in RETRIED_ATTRS}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={**attrs, "retry_of": trial.number, "retry_reason": reason},
        system_attrs={"failed_trial": history[0], "retry_history": history}))


def stale_trial_handler(tracker):
    """The storage's callback for a trial whose heartbeat stopped (kill -9, lost machine, cut network):
    Optuna has failed it; close its MLflow run FAILED and queue its configuration again."""
    def on_stale(study, failed_trial):
        try:
            run_ids = {failed_trial.user_attrs.get("mlflow_run_id")} - {None}
            if tracker.study_name is not None:   # also a run created just before the worker died
                run_ids |= {r.run_id for r in tracker.find_trial_runs(failed_trial.number, ("RUNNING",))}
            for run_id in run_ids:
                tracker.end_run(run_id, "FAILED", {"error": "its worker stopped sending heartbeats "
                                                            "(killed or cut off); the trial was retried"})
        except Exception as err:            # never let MLflow trouble stop the retry; reconcile closes it later
            log.warning("could not close the MLflow run of stale trial %d: %s", failed_trial.number,
                        one_line(err))
        retry(study, failed_trial, "stopped sending heartbeats")
        log.warning("trial %d: its worker stopped sending heartbeats; failed it and queued its "
                    "configuration again", failed_trial.number)
    return on_stale


# ----------------------------------------------------------------- running a study

def make_study(settings: StudySettings, tracker, storage=None):
    """Create the study, or load it when it exists; only its creator queues the baseline trial."""
    if storage is None:
        storage = open_storage(settings.storage, settings.heartbeat, stale_trial_handler(tracker))
    if settings.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=settings.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=SAMPLER_STARTUP_TRIALS,
                                             multivariate=True, constant_liar=True)
    if settings.pruner == "none":
        pruner = optuna.pruners.NopPruner()
    else:
        pruner = StartupThenHyperband(SAMPLER_STARTUP_TRIALS, optuna.pruners.HyperbandPruner(
            min_resource=PRUNER_MIN_EPOCHS, max_resource=settings.max_epochs,
            reduction_factor=PRUNER_REDUCTION_FACTOR))
    try:
        study = optuna.create_study(study_name=settings.study_name, storage=storage, sampler=sampler,
                                    pruner=pruner, direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:      # resuming, or a peer created it first
        study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler,
                                  pruner=pruner)
        created = not study.get_trials(deepcopy=False)     # its creator died before queuing
    if created:
        study.enqueue_trial({}, user_attrs={"baseline": "spec notebook's best grid configuration"},
                            skip_if_exists=True)
    return study


def run_worker(study, objective, settings: StudySettings, poll_seconds=2.0, progress=None):
    """Run trials until the study has `settings.trials` finished (complete or pruned) trials.

    Near the end, a worker whose peers hold the last trials waits instead of
    starting surplus ones: should a peer die, its trial is failed by the
    heartbeat check and comes back as a waiting retry, which this worker runs.
    `progress` (a progress.StudyProgress) is shown every finished trial, any worker's.
    An interrupt is raised before each step and while waiting (objective.interrupts).
    On the way out, MLflow runs left RUNNING by trials that have finished are closed.
    """
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    while True:
        objective.interrupts.check()
        if progress is not None:
            progress.update(progress_outcomes(study))
        if deadline is not None and time.monotonic() >= deadline:
            outcome = "timeout"
            break
        c = counts(study)
        if c["finished"] >= settings.trials:
            outcome = "done"
            break
        if c["finished"] + c["running"] >= settings.trials and not c["waiting"]:
            objective.interrupts.sleep(poll_seconds)
            optuna.storages.fail_stale_trials(study)
            continue
        objective.current = None
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            if not settle_lost_trial(study, objective):
                raise
    try:
        reconcile_runs(study, objective.tracker)
    except Exception as err:                # MLflow unreachable: the next worker to finish does it
        log.warning("could not check for MLflow runs left RUNNING: %s", one_line(err))
    return outcome


def settle_lost_trial(study, objective) -> bool:
    """After Optuna could not record a trial's outcome: True if the trial was already finished by
    someone else (a peer failed it when its heartbeats did not get through), with its run made to agree."""
    if objective.current is None:
        return False
    number, run_id = objective.current
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or not trial.state.is_finished():
        return False
    if trial.state == TrialState.FAIL and run_id is not None:
        try:
            objective.tracker.end_run(run_id, "FAILED", {"error": "failed by a peer: its heartbeats did "
                                                                  "not reach the storage; the trial was retried"})
        except Exception as err:            # reconcile_runs closes it later
            log.warning("could not close the MLflow run of trial %d: %s", number, one_line(err))
        log.warning("trial %d was failed by a peer (its heartbeats did not reach the storage); "
                    "its configuration runs again", number)
    return True


def reconcile_runs(study, tracker) -> int:
    """Close MLflow trial runs still RUNNING although their Optuna trial has finished (e.g. their
    worker died while MLflow was unreachable); returns how many were closed."""
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    closed = 0
    for run in tracker.find_trial_runs(statuses=("RUNNING",)):
        state = states.get(run.trial_number)
        if state is None or not state.is_finished():
            continue
        status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(state, "FAILED")
        tracker.end_run(run.run_id, status, {"mlp_exp.reconciled": f"closed after trial {state.name}"})
        closed += 1
    return closed


def finalize(study, settings: StudySettings, tracker, data, out=print):
    """Promote the best trial; if it became champion, score it on the test set once."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and t.user_attrs.get("has_model")]
    if not complete:
        out(f"no completed trial with a model in study {settings.study_name!r}: nothing to promote")
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    run_id = best.user_attrs["mlflow_run_id"]
    promotion = tracker.promote(settings.model_name, run_id, best.value)
    summary = {"study": settings.study_name, "best_trial": best.number, "run_id": run_id,
               "val_accuracy": best.value, "config": best.user_attrs.get("config", best.params),
               "model_version": promotion.version, "champion": promotion.became_champion}
    if promotion.became_champion:
        scored = tracker.score_model(f"models:/{settings.model_name}@champion",
                                     data.X_test, data.y_test)
        tracker.log_test_accuracy(run_id, scored["test_accuracy"], scored["num_test"])
        summary["test_accuracy"] = scored["test_accuracy"]
    out(format_summary(summary, promotion, settings, tracker))
    return summary


def format_summary(summary, promotion, settings, tracker) -> str:
    config = summary["config"]
    lines = [f"study {summary['study']!r}: best trial {summary['best_trial']} "
             f"(val accuracy {summary['val_accuracy']:.4f}, run {summary['run_id']})"]
    lines.append("  params: " + ", ".join(f"{k}={_fmt(config[k])}" for k in (
        "hidden_size", "learning_rate", "reg", "momentum", "lr_decay", "num_epochs",
        "batch_size", "preprocessing", "flip") if k in config))
    if summary["champion"]:
        lines.append(f"  promoted: {settings.model_name} version {promotion.version} is now @champion; "
                     f"test accuracy {summary['test_accuracy']:.4f} (spec notebook: 0.525)")
    else:
        lines.append(f"  champion unchanged: version {promotion.champion.version} of "
                     f"{settings.model_name} has val accuracy {promotion.champion.val_accuracy:.4f} "
                     f">= {summary['val_accuracy']:.4f}")
    lines.append(f"  look: mlflow ui --backend-store-uri {tracker.tracking_uri}  |  "
                 f"python -m mlp_exp.evaluate --model-uri models:/{settings.model_name}@champion")
    return "\n".join(lines)


def _fmt(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------- command line

def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser():
    p = cli.ArgumentParser(
        prog="python -m mlp_exp.search",
        description="Search hyperparameters of the NumPy two-layer net on CIFAR-10 with Optuna, "
                    "track every trial in MLflow, and promote the best model to @champion.")
    p.add_argument("--trials", type=positive_int, default=DEFAULT_TRIALS,
                   help="target number of finished (complete or pruned) trials; re-running resumes "
                        "an interrupted study up to this number (default %(default)s)")
    p.add_argument("--study-name", default=DEFAULT_STUDY_NAME,
                   help="Optuna study name, also the MLflow experiment name (default %(default)s)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="Optuna storage URL: sqlite:///file.db or postgresql://user:pass@host/db "
                        "(default %(default)s)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlruns/mlflow.db with artifacts under mlruns/")
    p.add_argument("--data-dir", default=None,
                   help="folder holding cifar-10-batches-py/ (default $MLP_EXP_DATA_DIR, else ./data; "
                        "downloaded there when absent)")
    p.add_argument("--train-size", type=positive_int, default=49000,
                   help="training images: the first N of the training set (default %(default)s)")
    p.add_argument("--val-size", type=positive_int, default=1000,
                   help="validation images: the next N after the training ones (default %(default)s)")
    p.add_argument("--test-size", type=positive_int, default=None,
                   help="test images used once to score the champion (default: all 10000)")
    p.add_argument("--max-epochs", type=positive_int, default=DEFAULT_MAX_EPOCHS,
                   help="epochs of a trial that is never pruned (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the sampler; trial n trains with seed SEED+n (default %(default)s)")
    p.add_argument("--timeout", type=positive_float, default=None,
                   help="stop starting new trials after this many seconds; the running one finishes")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                   help="registered model name in the MLflow Model Registry (default %(default)s)")
    p.add_argument("--fixed", action="append", metavar="KEY=VALUE", default=[],
                   help="pin a setting out of the search space, e.g. --fixed hidden_size=500; "
                        "repeatable; keys are TrainConfig fields")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes on this machine sharing the study (default %(default)s)")
    p.add_argument("--heartbeat", type=positive_int, default=30,
                   help="seconds between a running trial's heartbeats; a trial silent for twice "
                        "this long is failed and retried (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    p.add_argument("--no-finalize", dest="finalize", action="store_false",
                   help="only run trials; leave promotion and test scoring to another process")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                   help="tpe (default) or random: plain random search, as a baseline")
    p.add_argument("--pruner", choices=("hyperband", "none"), default="hyperband",
                   help="hyperband (default) stops poor trials early; none trains every trial fully")
    p.add_argument("--blas-threads", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)   # spawned workers
    return p


def settings_from_args(args) -> StudySettings:
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    return StudySettings(
        study_name=args.study_name, trials=args.trials, storage=args.storage,
        tracking_uri=args.tracking_uri, data_dir=args.data_dir, train_size=args.train_size,
        val_size=args.val_size, test_size=args.test_size, max_epochs=args.max_epochs,
        seed=args.seed, timeout=args.timeout, model_name=args.model_name,
        fixed=parse_fixed(args.fixed), workers=args.workers, heartbeat=args.heartbeat,
        quiet=args.quiet, finalize=args.finalize, sampler=args.sampler, pruner=args.pruner)


def spawn_workers(argv, count, blas_threads):
    """Start `count` more processes of this command on the same study, trials only.

    They get their own session, so a Ctrl-C at the terminal reaches only this
    process, which passes it on once; and they stop if this process dies.
    """
    import subprocess

    return [subprocess.Popen([sys.executable, "-m", "mlp_exp.search", *argv, "--workers", "1",
                              "--no-finalize", "--quiet", "--blas-threads", str(blas_threads),
                              "--parent-pid", str(os.getpid())], start_new_session=True)
            for _ in range(count)]


class Interrupts:
    """SIGINT and SIGTERM as KeyboardInterrupt and cli.Terminated, raised only where that is safe.

    A worker's main thread either computes (trains, sleeps between polls) or
    writes to the stores. An exception raised inside a database write can leave
    its connection in the middle of a transaction, holding SQLite's write lock
    for as long as the exception's frames live; the cleanup that follows (closing
    the trial's run, which the logging thread must finish writing first) then
    waits on a lock its own process holds. CI hung on exactly that. So a signal
    is raised at once only inside `interruptible()` blocks and `sleep`, and
    otherwise at the next `check()`: on entering `interruptible()`, after each
    `deferring(fn)` call (an epoch's callbacks) and between trials. Once caught,
    it is raised again at every check, so nothing can swallow it.

    Python drops an exception raised inside a weakref callback or __del__ (and
    prints it as "Exception ignored in ..."), so a Ctrl-C that lands during
    garbage collection would otherwise be lost and the search would carry on;
    here it is raised again, quietly. Use as a context manager in the main
    thread; outside it (and in other threads) the methods only compute and sleep.
    """

    def __init__(self):
        self.pending = None
        self._raise_now = False             # the main thread is in an interruptible block
        self._previous = {}
        self._previous_hook = None

    def _handle(self, signum, frame):
        if self.pending is None:            # the first one decides how the command ends
            self.pending = cli.Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if self._raise_now:
            raise self.pending()

    def check(self, *_) -> None:
        """Raise the interrupt that arrived, if any; takes (and ignores) a trainer callback's EpochStats."""
        if self.pending is not None:
            raise self.pending()

    @contextlib.contextmanager
    def _raising(self, now: bool):
        if threading.current_thread() is not threading.main_thread():
            yield                           # signals are handled in the main thread only
            return
        previous, self._raise_now = self._raise_now, now
        try:
            yield
        finally:
            self._raise_now = previous

    @contextlib.contextmanager
    def interruptible(self):
        """A block of pure computation (no store is written inside): an interrupt stops it at once."""
        self.check()
        with self._raising(True):
            yield

    def deferring(self, fn):
        """`fn`, with interrupts held back while it runs and raised after it (for I/O inside
        an interruptible block, such as an epoch's callbacks)."""
        def deferred(*args):
            with self._raising(False):
                fn(*args)
            self.check()
        return deferred

    def sleep(self, seconds: float) -> None:
        """time.sleep that a new interrupt ends at once (an interrupt already caught does not:
        cleanup after one may sleep, waiting for a store)."""
        with self._raising(True):
            time.sleep(seconds)

    def _unraisable(self, unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and self.pending is not None):
            self._previous_hook(unraisable)

    def __enter__(self) -> "Interrupts":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = self._previous_hook


def wait_for_workers(workers, patience: float = 30.0) -> None:
    """Wait for the spawned workers to close their trials and exit; say so if it takes long."""
    import subprocess

    for worker in workers:
        try:
            worker.wait(patience)
        except subprocess.TimeoutExpired:
            print(f"waiting for worker {worker.pid} to close its trial (Ctrl-C again to stop "
                  "without waiting: the worker then stops on its own)", file=sys.stderr, flush=True)
            worker.wait()


def stop_with_parent(parent_pid: int, poll_seconds=1.0) -> None:
    """In a spawned worker: send ourselves SIGTERM (close the trial, exit 143) once the parent is gone."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    spawned = args.parent_pid is not None
    if spawned:
        stop_with_parent(args.parent_pid)
    if settings.quiet:
        logging.getLogger("mlp_exp").setLevel(logging.WARNING)
    # Optuna would log every failed trial with a traceback; the objective logs them in one line.
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    from . import data as data_module
    from . import tracking

    # Everything that can fail on user input fails here, before any trial starts, and before
    # anything is written to a store that already exists.
    tracker = tracking.Tracker(settings.tracking_uri, experiment_name=settings.study_name)
    interrupts = Interrupts()
    storage = open_storage(settings.storage, settings.heartbeat, stale_trial_handler(tracker),
                           sleep=interrupts.sleep)
    split = data_module.load_raw_split(settings.data_dir, train_size=settings.train_size,
                                       val_size=settings.val_size, test_size=settings.test_size,
                                       progress=not settings.quiet)
    study = make_study(settings, tracker, storage)
    c = counts(study)
    if c["finished"] >= settings.trials and not spawned:
        print(f"study {settings.study_name!r} already has {c['finished']} finished trials "
              f"(target {settings.trials}); run with --trials {c['finished'] + 10} (or more) to extend it")
    tracker.study_run(settings.study_name, study_params(settings))

    workers = []
    blas_threads = args.blas_threads or max(1, (os.cpu_count() or 1) // settings.workers)
    if settings.workers > 1:
        stripped = strip_flag(argv, "--workers", takes_value=True)
        workers = spawn_workers(stripped, settings.workers - 1, blas_threads)
    if args.blas_threads or settings.workers > 1:
        # N workers share the cores: each gets its share of BLAS threads, none oversubscribes
        from threadpoolctl import threadpool_limits
        threadpool_limits(blas_threads)
    display = StudyProgress(settings.trials, quiet=settings.quiet)
    objective = Objective(settings, split, tracker, extra_callbacks=[display.on_epoch], interrupts=interrupts)
    try:
        with interrupts, display:
            outcome = run_worker(study, objective, settings, progress=display)
    except KeyboardInterrupt as interrupt:
        # the objective has closed the trial's run KILLED and queued its configuration again
        terminated = isinstance(interrupt, cli.Terminated)
        for worker in workers:
            worker.send_signal(signal.SIGTERM if terminated else signal.SIGINT)
        wait_for_workers(workers)
        if not spawned:
            try:
                tracker.end_study("KILLED")
            except Exception as err:        # the interrupt, not this, decides how the command ends
                log.warning("could not close the study's MLflow run: %s", one_line(err))
            c = counts(study)
            print(f"{'terminated' if terminated else 'interrupted'}: study {settings.study_name!r} "
                  f"saved with {c['finished']} of {settings.trials} trials finished; run the same "
                  f"command again to resume", file=sys.stderr)
        raise
    for worker in workers:
        worker.wait()
    if outcome == "timeout":
        log.info("timeout reached after %s s: stopping with %d finished trials",
                 settings.timeout, counts(study)["finished"])
    if settings.finalize:
        finalize(study, settings, tracker, split)
        from . import report
        report.log_study_report(study, tracker, quiet=settings.quiet)
    tracker.end_study()
    return 0


def study_params(settings: StudySettings) -> dict:
    return {"trials": settings.trials, "max_epochs": settings.max_epochs, "seed": settings.seed,
            "train_size": settings.train_size, "val_size": settings.val_size,
            "test_size": settings.test_size or "all", "model_name": settings.model_name,
            "fixed": ",".join(f"{k}={v}" for k, v in sorted(settings.fixed.items())) or "none",
            "search_space": ";".join(f"{k}={v}" for k, v in SEARCH_SPACE.items()),
            "sampler": ("Random" if settings.sampler == "random"
                        else f"TPE(multivariate, constant_liar, n_startup_trials={SAMPLER_STARTUP_TRIALS})"),
            "pruner": ("none" if settings.pruner == "none" else
                       f"Hyperband(min_resource={PRUNER_MIN_EPOCHS}, max_resource={settings.max_epochs}, "
                       f"reduction_factor={PRUNER_REDUCTION_FACTOR}), no cuts after epoch "
                       f"{settings.max_epochs // PRUNER_REDUCTION_FACTOR}, none in the first "
                       f"{SAMPLER_STARTUP_TRIALS} trials")}


def strip_flag(argv, flag, takes_value):
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == flag:
            skip = takes_value
            continue
        if item.startswith(flag + "="):
            continue
        out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
