"""Running trials in a worker, and the worker processes of `--workers N`.

A study outlives its processes: any number of workers (this machine's, or
others' sharing the storage and tracking URI) run it together until it has
its target of finished trials.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import optuna

from ..errors import UserError, one_line
from .recovery import reconcile_runs, settle_lost_trial
from .settings import StudySettings
from .trials import counts, progress_outcomes

log = logging.getLogger("mlp_exp.study")

SEARCH_COMMAND = ("-m", "mlp_exp.search")   # what a spawned worker runs (a process, not an import)
# A worker stops after this many trials in a row failed (raised; pruned, interrupted, surplus and
# peer-failed trials do not count). Failed trials count toward no target, so a cause every trial
# shares (no memory for a --fixed hidden size, a full disk, an unwritable artifact store) used to fail
# trials until the search was killed: 133 in 40 s. Three different configurations failing one after
# another point at such a cause; one or two can be a configuration's own (its memory, a numerical
# error), which the study should survive. Stopping loses nothing: finished trials stay, and the same
# command resumes once the cause is fixed.
MAX_FAILURES_IN_A_ROW = 3


class TrialsKeepFailing(UserError):
    """This worker's last MAX_FAILURES_IN_A_ROW trials all failed: the search stops (exit 2)."""


def run_worker(study, objective, settings: StudySettings, poll_seconds=2.0, progress=None):
    """Run trials until the study has `settings.trials` finished (complete or pruned) trials.

    Near the end, a worker whose peers hold the last trials waits instead of
    starting surplus ones: should a peer die, its trial is failed by the
    heartbeat check and comes back as a waiting retry, which this worker runs.
    `progress` (a progress.StudyProgress) is shown every finished trial, any worker's.
    An interrupt is raised before each step and while waiting (objective.interrupts).
    On the way out, MLflow runs left RUNNING by trials that have finished are closed.
    Returns "done" or "timeout"; raises TrialsKeepFailing after MAX_FAILURES_IN_A_ROW failed trials.
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
        if objective.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise TrialsKeepFailing(
                f"stopped study {settings.study_name!r}: {objective.failures_in_a_row} trials in a row failed "
                f"in this worker, so the cause is likely one they share (memory, disk, a store, a --fixed "
                f"value) rather than their configurations; the last, {objective.last_failure}; fix that "
                "and run the same command again to resume (finished trials are kept)")
    try:
        reconcile_runs(study, objective.tracker)
    except Exception as err:                # MLflow unreachable: the next worker to finish does it
        log.warning("could not check for MLflow runs left RUNNING: %s", one_line(err))
    return outcome


def spawn_workers(argv, count: int, blas_threads: int) -> list[subprocess.Popen]:
    """Start `count` more processes of the search command on the same study, trials only.

    `argv` is the parent's command line without --workers. The workers get
    their own session, so a Ctrl-C at the terminal reaches only the parent,
    which passes it on once; and they stop if the parent dies. Each gets its
    index (1, 2, ...; the parent is 0), so each seeds its sampler differently.
    """
    return [subprocess.Popen([sys.executable, *SEARCH_COMMAND, *argv, "--workers", "1",
                              "--no-finalize", "--quiet", "--blas-threads", str(blas_threads),
                              "--parent-pid", str(os.getpid()), "--worker-index", str(index)],
                             start_new_session=True)
            for index in range(1, count + 1)]


def wait_for_workers(workers, patience: float = 30.0) -> None:
    """Wait for the spawned workers to close their trials and exit; say so if it takes long."""
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


def strip_flag(argv, flag: str, takes_value: bool) -> list[str]:
    """argv without `flag` (and its value, or `flag=value`)."""
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
