"""Reading a study's trials: counts by state, progress outcomes, and opening a study to read it."""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..errors import UserError
from ..progress import TrialOutcome
from . import attrs
from .settings import DEFAULT_STORAGE, default
from .storage import open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)     # what counts toward --trials


def counts(study) -> dict:
    """{finished, complete, running, waiting, failed}: the study's trials by state."""
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
        if attrs.DIVERGED_AT_EPOCH in t.user_attrs:
            state, epochs = "diverged", t.user_attrs[attrs.DIVERGED_AT_EPOCH]
        outcomes.append(TrialOutcome(t.number, state, value, epochs))
    return outcomes


def load_study(study_name: str, storage: str = DEFAULT_STORAGE):
    """An existing study, to read (reports); a missing storage file or study is a UserError."""
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise UserError(f"no Optuna storage at {storage!r}; pass the --storage the search used")
    rdb = open_storage(storage, heartbeat=default("heartbeat"), write=False)
    try:
        return optuna.load_study(study_name=study_name, storage=rdb)
    except KeyError:
        names = optuna.get_all_study_names(rdb)
        raise UserError(f"no study {study_name!r} in {storage}; studies there: "
                        f"{', '.join(names) or 'none'}") from None
