"""The keys of what a trial, or a study, records about itself in Optuna's storage (user attrs), defined once.

The report, the benchmarks and the tests read trials by these keys; existing
study databases hold them, so renaming one breaks reading old studies.
"""
MLFLOW_RUN_ID = "mlflow_run_id"        # the trial's MLflow run
WORKER = "worker"                      # host:pid of the process that ran it
CONFIG = "config"                      # asdict(TrainConfig) it trained with
HAS_MODEL = "has_model"                # True when a model was logged on its run (it beat the study's best)
BASELINE = "baseline"                  # set on the spec-baseline trial (its value says why)
BASELINE_SUGGESTS = "baseline_suggests"    # the baseline's searched names, queued as its params (space.py)
DIVERGED_AT_EPOCH = "diverged_at_epoch"  # the epoch whose loss became non-finite
SURPLUS = "surplus"                    # started after the target was covered; trained nothing
RETRY_OF = "retry_of"                  # on a retry: the number of the trial it repeats
RETRY_REASON = "retry_reason"          # on a retry: why the first attempt stopped
TRACEBACK = "traceback"                # on a trial that raised: its traceback (the terminal gets one line)

# The study's own user attrs
DEFINING_SETTINGS = "defining_settings"  # settings.defining_settings() when it was created: what its trials measure
SETTINGS_CHANGES = "settings_changes"    # each run continued with --allow-changed-settings: {setting: [old, new], at_trial}
MLFLOW_TRACKING_URI = "mlflow_tracking_uri"      # the MLflow store of its runs, password hidden (urls.safe_url)
MLFLOW_EXPERIMENT_ID = "mlflow_experiment_id"    # ... its experiment there
MLFLOW_PARENT_RUN_ID = "mlflow_parent_run_id"    # ... and its parent run

METRIC_NAME = "val_accuracy"           # the study's metric name (Study.set_metric_names): what trials return

# Optuna's own system attrs on a retried trial (written by RetryHeartbeatStaleTrialCallback)
FAILED_TRIAL = "failed_trial"          # the first attempt's number
RETRY_HISTORY = "retry_history"        # every earlier attempt's number
