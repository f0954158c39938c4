"""The objective: one trial from its Optuna suggestions to a trained, tracked, finished net.

The trial's MLflow run reaches its final status before Optuna hears the
outcome, so a worker killed at any moment leaves either a finished trial with
a closed run or a running trial that the heartbeat check fails and retries.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import traceback

import optuna
from optuna.trial import TrialState

from .. import diagnosis
from ..config import TrainConfig
from ..errors import UserError, one_line
from ..hold import hold_trial
from ..interrupts import Interrupts
from ..trainer import StopTraining, mirror_rows, train
from ..tracking.names import DIVERGED_TAG, ERROR_TAG, PRUNED_AT_TAG, STOP_REASON_TAG, WORKER_TAG
from . import attrs
from .recovery import close_run, retry
from .settings import StudySettings
from .space import config_for_trial
from .storage import StorageLost
from .strategy import prunable_epoch
from .trials import FINISHED

log = logging.getLogger("mlp_exp.study")

WORKER = f"{socket.gethostname()}:{os.getpid()}"     # which process ran a trial (user attr, run tag)
TRACEBACK_CHARS = 8000      # the end of a failed trial's traceback kept on it: where it was raised


class Surplus(Exception):
    """A worker started a trial although the target was already covered (a race between workers)."""


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
        self.failures_in_a_row = 0          # trials of this worker that raised since the last one that did not
        self.last_failure = None            # "trial N: Type: message" of the last of them
        self._mirrored_train = None         # mirror_rows(data.X_train), built by the first flipping trial

    def mirrored_train(self):
        """The training images mirrored left-right, one copy for every trial of this worker."""
        if self._mirrored_train is None:
            self._mirrored_train = mirror_rows(self.data.X_train)
        return self._mirrored_train

    def __call__(self, trial):
        self.current = (trial.number, None)
        try:
            value = self._run(trial)
        except optuna.TrialPruned:
            self.failures_in_a_row = 0
            raise
        except (Surplus, StorageLost, optuna.exceptions.UpdateFinishedTrialError):
            raise                           # expected, or reported where they end the worker: not failures
        except Exception as err:            # Optuna records it as FAIL; run_worker stops after a few in a row
            self._failed(trial, err)
            raise
        self.failures_in_a_row = 0
        return value

    def _failed(self, trial, err) -> None:
        """Count a failed trial and say so in one line; its traceback goes to the trial (attrs.TRACEBACK),
        not the terminal, where a trial failing every time would print one per trial."""
        self.failures_in_a_row += 1
        self.last_failure = f"trial {trial.number}: {type(err).__name__}: {one_line(err, 300)}"
        log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, one_line(err))
        if not isinstance(err, UserError):
            try:
                trial.set_user_attr(attrs.TRACEBACK, "".join(traceback.format_exception(err))[-TRACEBACK_CHARS:])
            except Exception as store_err:      # the failure, not this, is what the trial records
                log.debug("could not record the traceback of trial %d: %s", trial.number, one_line(store_err))

    def _run(self, trial):
        study, settings = trial.study, self.settings
        ahead = sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED + (
            TrialState.RUNNING, TrialState.WAITING)) if t.number < trial.number)
        if ahead >= settings.trials:
            trial.set_user_attr(attrs.SURPLUS, True)
            raise Surplus(f"trial {trial.number} not needed: {ahead} trials cover the target")

        config = config_for_trial(trial, settings)
        run = self.tracker.start_trial(trial.number, config, tags={WORKER_TAG: WORKER})
        self.current = (trial.number, run.run_id)
        try:
            trial.set_user_attr(attrs.MLFLOW_RUN_ID, run.run_id)
            trial.set_user_attr(attrs.WORKER, WORKER)
            trial.set_user_attr(attrs.CONFIG, config.asdict())
            return self._train(trial, config, run)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            try:
                close_run(run, "KILLED", {STOP_REASON_TAG: "interrupted"})
                retry(study, trial, "interrupted")
            except Exception as err:        # must not turn the interrupt into a failed trial
                log.warning("trial %d: cleanup after the interrupt failed: %s", trial.number, one_line(err))
            raise
        except Exception as err:
            close_run(run, "FAILED", {ERROR_TAG: one_line(f"{type(err).__name__}: {err}")})
            raise

    def _train(self, trial, config: TrainConfig, run):
        study = trial.study

        def prune(stats):
            if prunable_epoch(stats.epoch, config.num_epochs) and trial.should_prune():
                raise StopTraining(f"pruned at epoch {stats.epoch}: validation accuracy "
                                   f"{stats.val_accuracy:.4f} below the pruner's cut")

        def after_epoch(stats):
            run.log_epoch(stats)
            trial.report(stats.val_accuracy, stats.epoch)
            hold_trial(trial.number, stats.epoch, self.interrupts.check)     # tests only: see hold.py
            for callback in (prune, *self.extra_callbacks):
                callback(stats)

        with self.interrupts.interruptible():
            X_train, X_val, preprocessor = self.data.training_rows(config.preprocessing)
            result = train(X_train, self.data.y_train, X_val, self.data.y_val,
                           config, callbacks=[self.interrupts.deferring(after_epoch)], preprocessor=preprocessor,
                           X_train_mirrored=self.mirrored_train() if config.flip and preprocessor is not None else None)
        run.log_result(result, diagnosis.as_tags(diagnosis.diagnose(*result.curves())))
        if result.diverged:
            epoch = result.epochs[-1].epoch
            trial.set_user_attr(attrs.DIVERGED_AT_EPOCH, epoch)
            close_run(run, "KILLED", {STOP_REASON_TAG: "diverged", DIVERGED_TAG: "true", PRUNED_AT_TAG: str(epoch)})
            raise optuna.TrialPruned(f"diverged (non-finite loss) in epoch {epoch}")
        if result.stop_reason:
            epoch = result.epochs[-1].epoch
            close_run(run, "KILLED", {STOP_REASON_TAG: result.stop_reason, PRUNED_AT_TAG: str(epoch)})
            raise optuna.TrialPruned(result.stop_reason)
        best_so_far = max((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                           if t.value is not None), default=-math.inf)
        if result.best_val_accuracy > best_so_far:
            # only trials that improve the study's best get a model: the best trial always has one
            run.log_model(result.best_params, self.data.preprocessors[config.preprocessing],
                          config, self.data.label_names)
            trial.set_user_attr(attrs.HAS_MODEL, True)
        close_run(run, "FINISHED")
        return result.best_val_accuracy
