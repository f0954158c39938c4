"""MLflow tracking: the only package that imports mlflow.

It owns run naming, tag and metric names, artifacts, model logging, registry
promotion, model scoring and the UI server. mlflow is imported on first use
(store.import_mlflow), never at package import.

    names        every name written into a store (tags, metrics, artifacts, the model name); check_names
    store        tracking URIs, artifact roots, whether a store or server can be used, making a store at once,
                 whether a URI is the store a study recorded (same_store)
    tracker      Tracker: one study's experiment, parent run and nested trial runs
    trial_run    TrialRun: one trial's logging, on a background thread
    registry     log_model, promote, champion (a Tracker mixin)
    scoring      load_model, score_model: a logged model on raw images
    evaluation   logged evaluation and provenance: datasets, source tags, test scores
    mlflow_model the model file MLflow executes to load a logged model
    ui_server    UIServer: `mlflow server` over the store, as a child process
"""
from .names import (DEFAULT_TRACKING_URI, TRACKING_URI_ENV, DEFAULT_MODEL_NAME, CHAMPION_ALIAS,
                    DEFAULT_MODEL_URI, STUDY_TAG, ROLE_TAG, WORKER_TAG, LOGGING_ERROR_TAG,
                    RECONCILED_TAG, TRIAL_TAG, PARENT_TAG, ERROR_TAG, STOP_REASON_TAG,
                    PRUNED_AT_TAG, DIVERGED_TAG, VAL_ACCURACY_TAG, EPOCH_METRICS, GRID_KEY,
                    GRID_UNITS, CURVES_ARTIFACT, CURVES_DPI, MODEL_NAME_IN_RUN, TERMINAL_STATUSES,
                    check_names)
from .registry import Champion, Promotion
from .scoring import LoadedModel, load_model, score_model
from .evaluation import evaluate_on_test_set
from .store import artifact_root, check_store, resolve_tracking_uri, same_store
from .tracker import TrackedRun, Tracker
from .trial_run import TrialRun

__all__ = ["DEFAULT_TRACKING_URI", "TRACKING_URI_ENV", "DEFAULT_MODEL_NAME", "CHAMPION_ALIAS",
           "DEFAULT_MODEL_URI", "STUDY_TAG", "ROLE_TAG", "WORKER_TAG", "LOGGING_ERROR_TAG",
           "RECONCILED_TAG", "TRIAL_TAG", "PARENT_TAG", "ERROR_TAG", "STOP_REASON_TAG",
           "PRUNED_AT_TAG", "DIVERGED_TAG", "VAL_ACCURACY_TAG", "EPOCH_METRICS", "GRID_KEY",
           "GRID_UNITS", "CURVES_ARTIFACT", "CURVES_DPI", "MODEL_NAME_IN_RUN", "TERMINAL_STATUSES",
           "Champion", "Promotion", "LoadedModel", "load_model", "score_model", "evaluate_on_test_set",
           "artifact_root", "resolve_tracking_uri", "TrackedRun", "Tracker", "TrialRun", "check_names",
           "check_store", "same_store"]
