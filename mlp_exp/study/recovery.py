"""Keeping the two stores in agreement when trials fail, workers die or peers step in.

Whatever stopped a trial (an exception, Ctrl-C, kill -9, a lost network),
its configuration is queued again (`RetryTrial`), and its MLflow run ends in
the status that matches its Optuna state: FINISHED for COMPLETE, KILLED for
PRUNED, FAILED or KILLED for FAIL.
"""
from __future__ import annotations

import copy
import logging
import warnings

import optuna
from optuna.trial import TrialState

from ..errors import one_line
from ..tracking.names import ERROR_TAG, RECONCILED_TAG
from . import _optuna_private, attrs

log = logging.getLogger("mlp_exp.study")

# user attrs a retry keeps; the rest belong to the failed attempt
RETRIED_ATTRS = (attrs.BASELINE, attrs.BASELINE_SUGGESTS)
MAX_RETRY = 3


class RetryTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry callback, carrying over only what belongs to the configuration.

    The retry gets a new trial number (and its own MLflow run); system attrs
    `failed_trial` and `retry_history` lead back to the original, as Optuna
    writes them. The failed attempt's other attrs (its run id, the pruner's
    completed rungs, ...) stay with it; the retry says what it retries and why
    (user attrs retry_of, retry_reason). After `max_retry` retries the
    configuration is dropped and the sampler proposes a new one.
    """

    def __init__(self, reason: str, max_retry: int = MAX_RETRY):
        with warnings.catch_warnings():     # "experimental" since Optuna 2.8; its behaviour is what we rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)
        self.reason, self.max_retry = reason, max_retry

    def __call__(self, study, trial) -> None:
        if not isinstance(trial, optuna.trial.FrozenTrial):     # a live Trial: its stored state
            trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        history = [*trial.system_attrs.get(attrs.RETRY_HISTORY, []), trial.number]
        if len(history) > self.max_retry:
            log.warning("trial %d %s; its configuration already ran %d times, not retrying it",
                        trial.number, self.reason, len(history))
            return
        kept = copy.copy(trial)
        kept.user_attrs = {**{k: v for k, v in trial.user_attrs.items() if k in RETRIED_ATTRS},
                           attrs.RETRY_OF: trial.number, attrs.RETRY_REASON: self.reason}
        kept.system_attrs = {k: copy.copy(v) for k, v in trial.system_attrs.items()
                             if k in (attrs.FAILED_TRIAL, attrs.RETRY_HISTORY)}
        if trial.user_attrs.get(attrs.BASELINE):
            # The spec baseline's lr and reg lie outside the space's ranges, so Optuna refuses them as
            # a new trial's params (create_trial validates them); queue them as enqueue_trial does,
            # to be suggested back when the retry runs (space.config_for_trial).
            queued = trial.system_attrs.get(_optuna_private.ENQUEUED_PARAMS, {})
            kept.params, kept.distributions = {}, {}
            kept.system_attrs[_optuna_private.ENQUEUED_PARAMS] = {**queued, **trial.params}
        super().__call__(study, kept)


def retry(study, trial, reason: str, max_retry: int = MAX_RETRY) -> None:
    """Queue a failed or interrupted trial's configuration as a new waiting trial (see RetryTrial)."""
    RetryTrial(reason, max_retry)(study, trial)


def close_run(run, status: str, tags: dict | None = None) -> None:
    """End a TrialRun with `status` and wait until MLflow has it, even if it was ended before."""
    if not run.ended:
        run.end(status, tags, wait=True)
    else:                               # ended, then something failed: the last word is `status`
        run.wait()
        run.tracker.end_run(run.run_id, status, tags)


def stale_trial_handler(tracker=None):
    """The storage's callback for a trial whose heartbeat stopped (kill -9, lost machine, cut network):
    Optuna has failed it; close its MLflow run FAILED and queue its configuration again.

    `on_stale.tracker` may be set later: open_session opens the storage (to check the study) before it
    opens the MLflow store, and no trial can go stale before a trial runs.
    """
    def on_stale(study, failed_trial):
        tracker = on_stale.tracker
        try:
            run_ids = {failed_trial.user_attrs.get(attrs.MLFLOW_RUN_ID)} - {None}
            if tracker.study_name is not None:   # also a run created just before the worker died
                run_ids |= {r.run_id for r in tracker.find_trial_runs(failed_trial.number, ("RUNNING",))}
            for run_id in run_ids:
                tracker.end_run(run_id, "FAILED", {ERROR_TAG: "its worker stopped sending heartbeats "
                                                              "(killed or cut off); the trial was retried"})
        except Exception as err:            # never let MLflow trouble stop the retry; reconcile closes it later
            log.warning("could not close the MLflow run of stale trial %d: %s", failed_trial.number,
                        one_line(err))
        retry(study, failed_trial, "stopped sending heartbeats")
        log.warning("trial %d: its worker stopped sending heartbeats; failed it and queued its "
                    "configuration again", failed_trial.number)
    on_stale.tracker = tracker
    return on_stale


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
            objective.tracker.end_run(run_id, "FAILED", {ERROR_TAG: "failed by a peer: its heartbeats did "
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
        tracker.end_run(run.run_id, status, {RECONCILED_TAG: f"closed after trial {state.name}"})
        closed += 1
    return closed
