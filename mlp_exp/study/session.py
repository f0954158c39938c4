"""Wiring a study together and running it: settings in, a finished (or resumable) study out.

`open_session` builds everything a worker needs, failing on bad input before
any trial starts: the tracker, the storage, the data, the study and its
parent run. `run_session` runs this process's trials (and spawns the others
of `--workers`), then promotes the champion and logs the report
(finalize_session). The search command is these two calls; the tests use the
same ones. The study's user attrs name its MLflow experiment and parent run
(record_tracking); every trial run gets the training and validation sets as
dataset inputs, their digests computed once per process.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from .. import data as data_module
from .. import tracking
from ..errors import UserError, one_line
from ..interrupts import Interrupts, Terminated
from ..progress import StudyProgress
from ..urls import safe_url
from . import attrs
from .finalize import finalize
from .objective import Objective
from .recovery import stale_trial_handler
from .report import log_study_report
from .settings import (StudySettings, as_flags, check_storage_persists, data_fingerprint, defining_settings,
                       differences, logged_params)
from .space import SEARCH_SPACE, baseline_params
from .storage import check_storage, open_storage, sqlite_file
from .strategy import make_pruner, make_sampler
from .trials import counts
from .workers import TrialsKeepFailing, run_worker, spawn_workers, strip_flag, wait_for_workers

log = logging.getLogger("mlp_exp.study")

BASELINE_REASON = "spec notebook's best grid configuration"


def make_study(settings: StudySettings, tracker, storage=None, *, data_id: str | None = None,
               worker_index: int = 0):
    """(study, description): create the study, or load it when it exists; only its creator queues
    the baseline trial. `description` says which sampler and pruner it runs with, for the parent run.

    A new study records its defining settings (settings.defining_settings, with `data_id`, the
    data's fingerprint); an existing one must match them (refuse_incompatible). The sampler is
    seeded for this process (strategy.sampler_seed: the trials already there, `worker_index`).
    """
    if storage is None:
        storage = open_storage(settings.storage, settings.heartbeat, stale_trial_handler(tracker))
    pruner, pruner_description = make_pruner(settings)
    changed = {}
    try:
        study = optuna.create_study(study_name=settings.study_name, storage=storage, pruner=pruner,
                                    direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:      # resuming, or a peer created it first
        study = optuna.load_study(study_name=settings.study_name, storage=storage, pruner=pruner)
        changed = refuse_incompatible(study, settings, data_id)
        created = not study.get_trials(deepcopy=False)     # its creator died before queuing
    trials_before = len(study.get_trials(deepcopy=False))
    study.sampler, sampler_description = make_sampler(settings, trials_before, worker_index)
    record_settings(study, settings, data_id, changed if worker_index == 0 else {})   # spawned: the parent did
    if created:
        study.enqueue_trial(baseline_params(), skip_if_exists=True, user_attrs={
            attrs.BASELINE: BASELINE_REASON, attrs.BASELINE_SUGGESTS: sorted(baseline_params())})
    description = {"sampler": sampler_description, "pruner": pruner_description,
                   "search_space": ";".join(f"{k}={v}" for k, v in SEARCH_SPACE.items())}
    return study, description


def existing_study(settings: StudySettings, storage):
    """The study named settings.study_name in `storage`, or None; reads only."""
    try:
        return optuna.load_study(study_name=settings.study_name, storage=storage)
    except KeyError:
        return None


def refuse_incompatible(study, settings: StudySettings, data_id: str | None = None) -> dict:
    """Check an existing study against this run before it adds a trial: a UserError if the study does
    not maximize one value, or (unless --allow-changed-settings) if it was created with other
    defining settings. Returns the differences allowed, {name: (recorded, current)}."""
    if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MAXIMIZE:
        what = (f"has {len(study.directions)} objectives" if len(study.directions) > 1
                else "minimizes its objective")
        raise UserError(f"study {settings.study_name!r} in {safe_url(settings.storage)} {what}; this search "
                        "maximizes one value, validation accuracy: pass --study-name NEW for a new study")
    recorded = study.user_attrs.get(attrs.DEFINING_SETTINGS)
    changed = differences(recorded or {}, defining_settings(settings, data_id))
    if changed and not settings.allow_changed_settings:
        was, now = (" and ".join(as_flags(name, pair[i]) for name, pair in changed.items()) for i in (0, 1))
        if "data" in changed:
            now += " (data: a fingerprint of the training and validation images in --data-dir)"
        raise UserError(f"study {settings.study_name!r} was created with {was}, this run has {now}: its trials "
                        "would not be comparable with the study's; pass --study-name NEW to start a new study, "
                        "or --allow-changed-settings to continue this one on purpose")
    return changed


def refuse_other_tracking_store(study, settings: StudySettings) -> None:
    """A UserError if an existing study's runs live in another MLflow store than this run's (unless
    --allow-changed-settings): resumed without the MLFLOW_TRACKING_URI it was started with, a search
    would open a second parent run in the default store, and fail at promotion, after every trial,
    as its best trial's run and model are in the first."""
    recorded = study.user_attrs.get(attrs.MLFLOW_TRACKING_URI)
    if recorded is None or settings.allow_changed_settings or tracking.same_store(recorded, settings.tracking_uri):
        return
    current = safe_url(tracking.resolve_tracking_uri(settings.tracking_uri, create=False))
    raise UserError(f"study {settings.study_name!r} logs to the MLflow store {recorded}, this run would log to "
                    f"{current}: pass --tracking-uri {recorded} (or set MLFLOW_TRACKING_URI as before), or "
                    "--study-name NEW to start a new study")


def refuse_orphaned_runs(settings: StudySettings, storage=None) -> None:
    """A UserError if this run would create its study while the MLflow store already holds a parent
    run of a study of that name: one whose Optuna study is gone, or lives in another storage. The new
    study would reopen that parent run and restart its trial numbers among the old trials' runs.

    Reads only (a read-only Tracker). `storage`: the opened storage, to look for the study again; None
    before it is opened, when its sqlite file is not there (so opening it would make one)."""
    reader = tracking.Tracker(settings.tracking_uri, experiment_name=settings.study_name, create=False)
    parent = reader.find_study_run(settings.study_name)
    if parent is None:
        return
    # a worker starting with this one may just have made both: look again, it is then no orphan
    if storage is None and sqlite_file(settings.storage).exists():
        return                              # made meanwhile: checked again once the storage is open
    if storage is not None and existing_study(settings, storage) is not None:
        return
    raise UserError(f"the MLflow store {reader.display_uri} already holds a parent run of a study "
                    f"{settings.study_name!r} (run {parent.run_id}) that --storage {safe_url(settings.storage)} "
                    "does not have; resume it with the --storage it used, or pass --study-name NEW (or another "
                    "--tracking-uri) to start a new one")


def record_settings(study, settings: StudySettings, data_id: str | None, changed: dict) -> None:
    """Record the study's defining settings if it has none (new, or created before they were
    recorded), or the data if they lack it; and a change --allow-changed-settings let through."""
    recorded = study.user_attrs.get(attrs.DEFINING_SETTINGS)
    current = defining_settings(settings, data_id)
    if recorded is None or ("data" in current and "data" not in recorded):
        study.set_user_attr(attrs.DEFINING_SETTINGS, {**current, **(recorded or {})})
    if changed:
        log.warning("continuing study %r with %s, not %s as it was created (--allow-changed-settings)",
                    settings.study_name, " and ".join(as_flags(k, new) for k, (_, new) in changed.items()),
                    " and ".join(as_flags(k, old) for k, (old, _) in changed.items()))
        change = {name: [old, new] for name, (old, new) in changed.items()}
        history = study.user_attrs.get(attrs.SETTINGS_CHANGES, [])
        study.set_user_attr(attrs.SETTINGS_CHANGES, [*history, {**change, "at_trial": len(study.get_trials())}])


@dataclass
class StudySession:
    """What one process of a study holds: built by open_session, run by run_session."""
    settings: StudySettings
    tracker: tracking.Tracker
    storage: object                 # storage.PatientRDBStorage
    split: data_module.RawSplit
    study: optuna.Study
    interrupts: Interrupts
    data_folder: Path | None = None     # the CIFAR-10 folder the split came from: its datasets' source


def open_session(settings: StudySettings, *, parent_run: bool = True, worker_index: int = 0) -> StudySession:
    """Open the stores, load the data and the study, and reopen (or create) the parent run.

    Everything that can fail on user input fails here, before any trial starts,
    and before anything is written to a store that already exists: an existing
    study is checked against this run's settings and data (refuse_incompatible)
    before the Tracker opens the MLflow store (which may create the experiment).
    `worker_index`: 0, or which spawned worker of --workers this is.
    """
    # every name and both stores first: nothing is made in either store until all are known good
    tracking.check_names(settings.study_name, settings.model_name)
    check_storage(settings.storage)
    tracking.check_store(settings.tracking_uri)
    check_storage_persists(settings.storage)
    # Optuna would log every failed trial with a traceback; the objective logs them in one line.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    new_file = sqlite_file(settings.storage)
    if new_file is not None and not new_file.exists():
        refuse_orphaned_runs(settings)      # before opening the storage makes its file
    interrupts = Interrupts()
    on_stale = stale_trial_handler()        # the tracker is set below: no trial can go stale before
    storage = open_storage(settings.storage, settings.heartbeat, on_stale, sleep=interrupts.sleep)
    split = data_module.load_raw_split(settings.data_dir, train_size=settings.train_size,
                                       val_size=settings.val_size, test_size=settings.test_size,
                                       progress=not settings.quiet)
    data_id = data_fingerprint(split)
    found = existing_study(settings, storage)
    if found is not None:
        refuse_incompatible(found, settings, data_id)
        refuse_other_tracking_store(found, settings)
    else:
        refuse_orphaned_runs(settings, storage)
    tracker = on_stale.tracker = tracking.Tracker(settings.tracking_uri, experiment_name=settings.study_name)
    study, description = make_study(settings, tracker, storage, data_id=data_id, worker_index=worker_index)
    if parent_run:
        tracker.study_run(settings.study_name, logged_params(settings, description))
    if worker_index == 0:
        record_tracking(study, tracker)
    folder = (data_module.resolve_data_dir(settings.data_dir) / data_module.BATCHES_FOLDER).resolve()
    tracker.set_trial_datasets(split.X_train, split.y_train, split.X_val, split.y_val, folder)
    return StudySession(settings, tracker, storage, split, study, interrupts, folder)


def record_tracking(study, tracker) -> None:
    """Link the study to its MLflow side (user attrs: the tracking URI without its password, the
    experiment and parent run ids) and name its objective, which Optuna's plots and optuna-dashboard
    otherwise call "Objective 0". Writes only what differs, so resuming writes nothing."""
    for key, value in ((attrs.MLFLOW_TRACKING_URI, safe_url(tracker.tracking_uri)),
                       (attrs.MLFLOW_EXPERIMENT_ID, tracker.experiment_id),
                       (attrs.MLFLOW_PARENT_RUN_ID, tracker.parent_run_id)):
        if value is not None and study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    if study.metric_names != [attrs.METRIC_NAME]:
        with warnings.catch_warnings():     # experimental since Optuna 3.2, and says so on stderr
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([attrs.METRIC_NAME])


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
    configuration queued again), stops the spawned workers (SIGTERM),
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
    except TrialsKeepFailing:
        # the trials' runs are closed FAILED; stop the spawned workers (theirs fail alike) and the study's run
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        wait_for_workers(workers)
        if not spawned:
            close_study_run(tracker, "FAILED")
        raise
    except KeyboardInterrupt as interrupt:
        # the objective has closed the trial's run KILLED and queued its configuration again
        terminated = isinstance(interrupt, Terminated)
        # SIGTERM, even for a Ctrl-C: a worker still starting up (importing, before cli.run handles
        # signals) dies of it quietly, where a SIGINT would print a KeyboardInterrupt traceback;
        # once running it closes its trial just the same, and this process says how the search ended
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        wait_for_workers(workers)
        if not spawned:
            close_study_run(tracker, "KILLED")
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
        finalize_session(session)
    tracker.end_study()
    return outcome


def finalize_session(session: StudySession) -> None:
    """Promote, score and report (finalize, log_study_report), with Ctrl-C and SIGTERM held back to
    the points between store writes (Interrupts.check): there the parent run is closed KILLED, one
    line says how to finish, and the interrupt goes on. Re-running the command finishes the step:
    promotion reuses the registered version and an unscored champion of this study is scored then.
    Any other failure closes the parent run FAILED."""
    settings, study, tracker, interrupts = session.settings, session.study, session.tracker, session.interrupts
    try:
        with interrupts:
            finalize(study, settings, tracker, session.split, source=session.data_folder, check=interrupts.check)
            interrupts.check()
            log_study_report(study, tracker, quiet=settings.quiet)
            interrupts.check()
    except KeyboardInterrupt as interrupt:
        close_study_run(tracker, "KILLED")
        c = counts(study)
        print(f"{'terminated' if isinstance(interrupt, Terminated) else 'interrupted'}: study "
              f"{settings.study_name!r} saved with {c['finished']} of {settings.trials} trials finished, "
              f"stopped while promoting its best trial and logging the report; run the same command again "
              f"to finish them", file=sys.stderr)
        raise
    except Exception:
        close_study_run(tracker, "FAILED")
        raise


def close_study_run(tracker, status: str) -> None:
    """Close the study's parent run `status` on the way out of a stopped search."""
    try:
        tracker.end_study(status)
    except Exception as err:        # what stopped the search, not this, decides how the command ends
        log.warning("could not close the study's MLflow run: %s", one_line(err))
