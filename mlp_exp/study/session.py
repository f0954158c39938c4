"""Wiring a study together and running it: settings in, a finished (or resumable) study out.

`open_session` builds everything a worker needs, failing on bad input before
any trial starts: the tracker, the storage, the data, the study and its
parent run. `run_session` runs this process's trials (and spawns the others
of `--workers`), then promotes the champion and logs the report. The search
command is these two calls; the tests use the same ones.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass

import optuna

from .. import data as data_module
from .. import tracking
from ..errors import one_line
from ..interrupts import Interrupts, Terminated
from ..progress import StudyProgress
from . import attrs
from .finalize import finalize
from .objective import Objective
from .recovery import stale_trial_handler
from .report import log_study_report
from .settings import StudySettings, logged_params
from .space import SEARCH_SPACE
from .storage import open_storage
from .strategy import make_pruner, make_sampler
from .trials import counts
from .workers import run_worker, spawn_workers, strip_flag, wait_for_workers

log = logging.getLogger("mlp_exp.study")

BASELINE_REASON = "spec notebook's best grid configuration"


def make_study(settings: StudySettings, tracker, storage=None):
    """(study, description): create the study, or load it when it exists; only its creator queues
    the baseline trial. `description` says which sampler and pruner it runs with, for the parent run."""
    if storage is None:
        storage = open_storage(settings.storage, settings.heartbeat, stale_trial_handler(tracker))
    sampler, sampler_description = make_sampler(settings)
    pruner, pruner_description = make_pruner(settings)
    try:
        study = optuna.create_study(study_name=settings.study_name, storage=storage, sampler=sampler,
                                    pruner=pruner, direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:      # resuming, or a peer created it first
        study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler,
                                  pruner=pruner)
        created = not study.get_trials(deepcopy=False)     # its creator died before queuing
    if created:
        study.enqueue_trial({}, user_attrs={attrs.BASELINE: BASELINE_REASON}, skip_if_exists=True)
    description = {"sampler": sampler_description, "pruner": pruner_description,
                   "search_space": ";".join(f"{k}={v}" for k, v in SEARCH_SPACE.items())}
    return study, description


@dataclass
class StudySession:
    """What one process of a study holds: built by open_session, run by run_session."""
    settings: StudySettings
    tracker: tracking.Tracker
    storage: object                 # storage.PatientRDBStorage
    split: data_module.RawSplit
    study: optuna.Study
    interrupts: Interrupts


def open_session(settings: StudySettings, *, parent_run: bool = True) -> StudySession:
    """Open the stores, load the data and the study, and reopen (or create) the parent run.

    Everything that can fail on user input fails here, before any trial starts,
    and before anything is written to a store that already exists.
    """
    # Optuna would log every failed trial with a traceback; the objective logs them in one line.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = tracking.Tracker(settings.tracking_uri, experiment_name=settings.study_name)
    interrupts = Interrupts()
    storage = open_storage(settings.storage, settings.heartbeat, stale_trial_handler(tracker),
                           sleep=interrupts.sleep)
    split = data_module.load_raw_split(settings.data_dir, train_size=settings.train_size,
                                       val_size=settings.val_size, test_size=settings.test_size,
                                       progress=not settings.quiet)
    study, description = make_study(settings, tracker, storage)
    if parent_run:
        tracker.study_run(settings.study_name, logged_params(settings, description))
    return StudySession(settings, tracker, storage, split, study, interrupts)


def run_session(session: StudySession, *, worker_argv=None, spawned: bool = False,
                blas_threads: int | None = None) -> str:
    """Run this process's trials until the study has its target; returns "done" or "timeout".

    - worker_argv: the search command line (without --workers) for the
      `settings.workers - 1` extra worker processes this one spawns.
    - spawned: this process is such a worker: it only runs trials (no
      promotion, no report, no closing message) and leaves the parent run open.
    - blas_threads: BLAS threads of this process (default: all cores, or with
      several workers the cores shared evenly between them).

    Ctrl-C or SIGTERM closes the running trial (its run KILLED, its
    configuration queued again), passes the signal on to the spawned workers,
    waits for them, closes the parent run KILLED, says how to resume and raises.
    """
    settings, study, tracker = session.settings, session.study, session.tracker
    finished = counts(study)["finished"]
    if finished >= settings.trials and not spawned:
        print(f"study {settings.study_name!r} already has {finished} finished trials "
              f"(target {settings.trials}); run with --trials {finished + 10} (or more) to extend it")
    workers = []
    threads = blas_threads or max(1, (os.cpu_count() or 1) // settings.workers)
    if settings.workers > 1:
        workers = spawn_workers(strip_flag(worker_argv or [], "--workers", takes_value=True),
                                settings.workers - 1, threads)
    if blas_threads or settings.workers > 1:
        # N workers share the cores: each gets its share of BLAS threads, none oversubscribes
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    display = StudyProgress(settings.trials, quiet=settings.quiet)
    objective = Objective(settings, session.split, tracker, extra_callbacks=[display.on_epoch],
                          interrupts=session.interrupts)
    try:
        with session.interrupts, display:
            outcome = run_worker(study, objective, settings, progress=display)
    except KeyboardInterrupt as interrupt:
        # the objective has closed the trial's run KILLED and queued its configuration again
        terminated = isinstance(interrupt, Terminated)
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
        finalize(study, settings, tracker, session.split)
        log_study_report(study, tracker, quiet=settings.quiet)
    tracker.end_study()
    return outcome
