"""A study invocation's settings, as data: one frozen dataclass, whose defaults the CLI reads.

`StudySettings` is to a study what `TrainConfig` is to a trial: built once
(by `python -m mlp_exp.search` from its flags, or by hand), passed to
everything that runs the study, and logged to the study's parent run
(`logged_params`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..tracking.names import DEFAULT_MODEL_NAME
from .storage import safe_url

DEFAULT_STUDY_NAME = "cifar10-mlp"
DEFAULT_STORAGE = "sqlite:///studies/optuna.db"
SAMPLERS = ("tpe", "random")        # random: a plain random-search baseline
PRUNERS = ("hyperband", "none")     # none: every trial trains for max_epochs


@dataclass(frozen=True)
class StudySettings:
    """Everything that is the same for every trial of one study invocation."""
    study_name: str = DEFAULT_STUDY_NAME
    trials: int = 50                # target of finished (complete or pruned) trials
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None     # None: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db
    data_dir: str | None = None         # None: $MLP_EXP_DATA_DIR, else ./data
    train_size: int = 49000
    val_size: int = 1000
    test_size: int | None = None        # None: all 10000
    max_epochs: int = 30
    seed: int = 0                   # seeds the sampler; trial n trains with seed + n
    timeout: float | None = None    # seconds after which no new trial starts
    model_name: str = DEFAULT_MODEL_NAME
    fixed: dict = field(default_factory=dict)   # TrainConfig fields pinned out of the search space
    workers: int = 1
    heartbeat: int = 30             # seconds; a trial silent for twice this long is failed and retried
    quiet: bool = False
    finalize: bool = True           # promote the best trial and score it on the test set at the end
    sampler: str = "tpe"            # one of SAMPLERS
    pruner: str = "hyperband"       # one of PRUNERS

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")


def default(name: str):
    """The default of StudySettings field `name` (what argparse shows and uses)."""
    return StudySettings.__dataclass_fields__[name].default


def logged_params(settings: StudySettings, study_description: dict) -> dict:
    """What the study's parent run records as params: every setting (URLs without passwords,
    `fixed` as k=v,...; None as its meaning) and `study_description`, what make_study built."""
    values = dataclasses.asdict(settings)
    values["storage"] = safe_url(settings.storage)
    values["tracking_uri"] = safe_url(settings.tracking_uri) if settings.tracking_uri else "default"
    values["fixed"] = ",".join(f"{k}={v}" for k, v in sorted(settings.fixed.items())) or "none"
    values["test_size"] = settings.test_size or "all"
    values = {k: ("none" if v is None else v) for k, v in values.items()}
    return {**values, **study_description}
