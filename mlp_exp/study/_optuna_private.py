"""The private Optuna API the product relies on, in one place, each use checked by a test.

Optuna offers no public way to (1) read which running trials have never sent
a heartbeat, (2) hook the stale-trial check that `fail_stale_trials` runs,
(3) wrap the private storage methods that `Study` and Optuna's storage cache
call directly, or (4) queue a retry whose params lie outside their
distributions (the spec baseline's), as `enqueue_trial` queues them. tests/test_optuna_private.py fails (it does not skip) when an
Optuna release renames or removes any of them; pyproject pins the Optuna
releases this was checked against.
"""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

# Called by Study / _CachedStorage directly rather than through the public storage API;
# PatientRDBStorage retries them like the public ones.
SESSION_METHODS = ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id")

# What optuna.storages.fail_stale_trials calls on an RDB storage to find stale trials.
STALE_TRIAL_HOOK = "_get_stale_trial_ids"

# The system attr in which Study.enqueue_trial keeps a queued trial's params until it suggests them
# (Trial._suggest takes them even outside the distribution's range, with a warning).
ENQUEUED_PARAMS = "fixed_params"


def stale_trial_ids(storage: optuna.storages.RDBStorage, study_id: int) -> list[int]:
    """Optuna's own stale-trial query (running trials whose last heartbeat is too old)."""
    return getattr(optuna.storages.RDBStorage, STALE_TRIAL_HOOK)(storage, study_id)


def running_trials_without_heartbeat(storage: optuna.storages.RDBStorage, study_id: int) -> list[int]:
    """Ids of the study's RUNNING trials that have no heartbeat row at all.

    A process that dies between taking a trial and its first heartbeat leaves
    such a trial; Optuna's stale query joins on heartbeats, so it would never
    go stale without one recorded on its behalf.
    """
    from optuna.storages._rdb import models

    session = storage.scoped_session()
    try:
        silent = [row[0] for row in session.query(models.TrialModel.trial_id).filter(
            models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING,
            ~models.TrialModel.heartbeats.any())]
        session.commit()
    finally:
        session.close()
    return silent


def missing() -> list[str]:
    """The private names above that this Optuna release lacks (the test asserts none)."""
    names = [f"RDBStorage.{name}" for name in (*SESSION_METHODS, STALE_TRIAL_HOOK)
             if not hasattr(optuna.storages.RDBStorage, name)]
    try:
        from sqlalchemy.orm import configure_mappers
        from optuna.storages._rdb import models
        configure_mappers()             # backrefs such as TrialModel.heartbeats exist only after it
        if not all(hasattr(models.TrialModel, a) for a in ("trial_id", "study_id", "state", "heartbeats")):
            names.append("optuna.storages._rdb.models.TrialModel columns")
    except ImportError:
        names.append("optuna.storages._rdb.models")
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    if study.get_trials(deepcopy=False)[0].system_attrs.get(ENQUEUED_PARAMS) != {"x": 1.0}:
        names.append(f"the {ENQUEUED_PARAMS!r} system attr of an enqueued trial")
    return names
