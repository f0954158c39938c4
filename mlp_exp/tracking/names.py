"""Every name the product writes into an MLflow store, defined once, and the rules for the names users choose.

Changing one of these changes the store layout: existing `mlruns/` stores
(and the runs the report and the tests look up by tag) would no longer match.
"""
import posixpath

from ..errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_MODEL_NAME = "mlp-cifar10"
CHAMPION_ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"

STUDY_TAG = "mlp_exp.study"            # on the parent run and every trial run
ROLE_TAG = "mlp_exp.role"              # "study" or "trial"
WORKER_TAG = "mlp_exp.worker"          # host:pid of the process that ran a trial
LOGGING_ERROR_TAG = "mlp_exp.logging_error"
RECONCILED_TAG = "mlp_exp.reconciled"  # a run closed after its trial had finished without it
TRIAL_TAG = "optuna.trial_number"
PARENT_TAG = "mlflow.parentRunId"      # what the MLflow UI nests runs by
ERROR_TAG = "error"                    # a FAILED run's one-line reason
STOP_REASON_TAG = "stop_reason"        # why a KILLED run stopped: interrupted, diverged, pruned at ...
PRUNED_AT_TAG = "pruned_at_epoch"
DIVERGED_TAG = "diverged"               # "true" on a run whose loss became non-finite
VAL_ACCURACY_TAG = "val_accuracy"      # on model versions: what promotion compares
BASIS_TAG = "mlp_exp.basis"            # on model versions: the images that val accuracy was measured on
MODEL_VERSIONS_TAG = "mlflow.modelVersions"   # on a logged model: its registered versions (MLflow's key)

# on the study's parent run, when the study ends (finalize)
BEST_TRIAL_TAG = "mlp_exp.best_trial"            # the best trial's number
BEST_RUN_TAG = "mlp_exp.best_run_id"             # ... and its run
MODEL_VERSION_TAG = "mlp_exp.model_version"      # the version the best trial was registered as
CHAMPION_VERSION_TAG = "mlp_exp.champion_version"  # the version @champion points at after promotion
BEST_VAL_METRIC = "best_val_accuracy"            # metric: the best trial's val accuracy

# the data sets a run saw, as MLflow dataset inputs (evaluation.dataset_input)
TRAIN_DATASET, VAL_DATASET = "cifar10-train", "cifar10-val"

EPOCH_METRICS = ("loss", "train_accuracy", "val_accuracy", "learning_rate")
GRID_KEY = "first_layer_weights"
GRID_UNITS = 64                        # tiles per epoch image: 8x8 tiles, 263x263 px (encoding is the cost)
CURVES_ARTIFACT = "training_curves.png"
CURVES_DPI = 80                        # 800x640 px
MODEL_NAME_IN_RUN = "model"
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

MAX_EXPERIMENT_NAME = 500              # MLflow's limit on an experiment name (the study's name)
MODEL_NAME_FORBIDS = ("/", ":")        # MLflow refuses a registered model name holding either


def check_names(study_name: str, model_name: str) -> None:
    """A one-line UserError for a study or model name MLflow would refuse, or could not search for
    (both kinds of quote), before anything is made: MLflow checks a model name only at promotion."""
    for flag, name in (("--study-name", study_name), ("--model-name", model_name)):
        if not str(name).strip():
            raise UserError(f"{flag} {name!r} is blank; give it a name (or leave the flag out for the default)")
        if "'" in name and '"' in name:
            raise UserError(f"{flag} {name!r} holds both kinds of quote (' and \"); MLflow cannot search for "
                            f"such a name: drop one kind")
        if "\\" in name:                  # before the closing quote it escapes it: the filter breaks
            raise UserError(f"{flag} {name!r} holds a backslash, which MLflow's search filters read as an "
                            f"escape: drop it")
    if len(study_name) > MAX_EXPERIMENT_NAME:
        raise UserError(f"--study-name is {len(study_name)} characters long; it names the MLflow experiment, "
                        f"which takes at most {MAX_EXPERIMENT_NAME}")
    for char in MODEL_NAME_FORBIDS:
        if char in model_name:
            raise UserError(f"--model-name {model_name!r} holds {char!r}; MLflow model names cannot contain "
                            f"{' or '.join(map(repr, MODEL_NAME_FORBIDS))}: choose another, e.g. {DEFAULT_MODEL_NAME}")
    if posixpath.normpath(model_name) != model_name or model_name == "." or model_name.startswith(".."):
        # MLflow's own rule (it may store a model under its name as a path): checked only at promotion
        raise UserError(f"--model-name {model_name!r} reads as a relative path, which MLflow refuses for a "
                        f"model name: choose another, e.g. {DEFAULT_MODEL_NAME}")
