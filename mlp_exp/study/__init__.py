"""The Optuna side of the product: the only package that imports optuna.

A study proposes hidden size, learning rate, regularization, momentum and
decay; each trial trains the net (trainer.train) and is tracked in MLflow
(tracking.Tracker); the best trial is promoted to `@champion`.

    settings     StudySettings: one study invocation's settings, as data
    space        SEARCH_SPACE and config_for_trial: trial -> TrainConfig
    strategy     the sampler and the pruner (StartupThenHyperband)
    storage      open_storage: a patient RDB storage with heartbeats
    recovery     retries, stale trials, runs made to agree with trials
    objective    Objective: one trial, trained and tracked
    workers      run_worker, and the worker processes of --workers N
    trials       counts, progress outcomes, load_study (to read)
    finalize     promote the best trial, score the champion once
    figures      Optuna's plots of a study
    report       the study report: table, summary, figures, logged to the parent run
    session      open_session / run_session: a study wired together and run
    attrs        the trial user-attr keys
    _optuna_private  the private Optuna API used, checked by a test
"""
from .settings import DEFAULT_STORAGE, DEFAULT_STUDY_NAME, StudySettings
from .session import StudySession, make_study, open_session, run_session
from .trials import load_study

__all__ = ["DEFAULT_STORAGE", "DEFAULT_STUDY_NAME", "StudySettings", "StudySession", "make_study",
           "open_session", "run_session", "load_study"]
