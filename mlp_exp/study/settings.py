"""A study invocation's settings, as data: one frozen dataclass, whose defaults the CLI reads.

`StudySettings` is to a study what `TrainConfig` is to a trial: built once
(by `python -m mlp_exp.search` from its flags, or by hand), passed to
everything that runs the study, and logged to the study's parent run
(`logged_params`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..tracking.names import DEFAULT_MODEL_NAME
from ..urls import safe_url

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
    seed: int = 0                   # seeds the sampler (strategy.sampler_seed); trial n trains with seed + n
    timeout: float | None = None    # seconds after which no new trial starts
    model_name: str = DEFAULT_MODEL_NAME
    fixed: dict = field(default_factory=dict)   # TrainConfig fields pinned out of the search space
    workers: int = 1
    heartbeat: int = 30             # seconds; a trial silent for twice this long is failed and retried
    quiet: bool = False
    finalize: bool = True           # promote the best trial and score it on the test set at the end
    sampler: str = "tpe"            # one of SAMPLERS
    pruner: str = "hyperband"       # one of PRUNERS
    allow_changed_settings: bool = False    # continue an existing study whose DEFINING settings differ

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")


# What a study's trials measure: a trial run with other values of these is not comparable with the
# study's others (other images, epochs, pinned values; the seed: other initial weights and sampler
# draws), so an existing study refuses them. `data` is data_fingerprint() of the images trained and
# validated on. --trials, --workers, --timeout, --quiet and the stores are how a study runs, not what
# it measures; so are --sampler and --pruner, which choose the next trials but not how one is measured.
DEFINING = ("train_size", "val_size", "max_epochs", "fixed", "seed", "data")


def data_fingerprint(split) -> str:
    """16 hex digits identifying a split's training and validation images and labels (not the test set,
    which no trial sees): equal fingerprints, equal validation accuracies for equal weights."""
    digest = hashlib.blake2b(digest_size=8)
    for array in (split.X_train, split.y_train, split.X_val, split.y_val):
        digest.update(repr((array.shape, array.dtype.str)).encode())
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def defining_settings(settings: "StudySettings", data_id: str | None = None) -> dict:
    """What a study records when it is created (attrs.DEFINING_SETTINGS): DEFINING's values, JSON-ready.
    Without `data_id` (a study run by hand on data it was handed) the data is not recorded."""
    values = {name: getattr(settings, name) for name in DEFINING if name != "data"}
    values["fixed"] = dict(sorted(settings.fixed.items()))
    return {**values, "data": data_id} if data_id is not None else values


def differences(recorded: dict, current: dict) -> dict:
    """{name: (recorded, current)} of the DEFINING settings in both that differ."""
    return {name: (recorded[name], current[name]) for name in DEFINING
            if name in recorded and name in current and recorded[name] != current[name]}


def as_flags(name: str, value) -> str:
    """A defining setting as the command line says it: `--train-size 200`, `--fixed hidden_size=8`."""
    if name == "fixed":
        return " ".join(f"--fixed {k}={v}" for k, v in sorted(value.items())) or "no --fixed"
    if name == "data":
        return f"data {value}"      # settings.data_fingerprint
    return f"--{name.replace('_', '-')} {value}"


def promotion_basis(settings: "StudySettings", data_id: str) -> str:
    """What makes two studies' validation accuracies comparable: the same validation images, which the
    split takes right after the training ones. Registered versions are tagged with it (finalize)."""
    return f"train_size={settings.train_size} val_size={settings.val_size} data={data_id}"


def check_storage_persists(url: str) -> None:
    """A UserError for a storage that ends with the process: SQLite in memory."""
    in_memory = url.startswith("sqlite:") and (":memory:" in url or url.split("?")[0] in ("sqlite://", "sqlite:///"))
    if in_memory:
        raise UserError(f"--storage {url} keeps the study in this process's memory: it is lost when the search "
                        "ends, and no worker or resume can reach it; pass a file, e.g. "
                        f"--storage {DEFAULT_STORAGE}")


# Settings a shell (or a cluster's job template) can set once for every command; a flag still wins.
ENVIRONMENT = {"storage": "MLP_EXP_STORAGE", "study_name": "MLP_EXP_STUDY"}


def default(name: str):
    """The default of StudySettings field `name` (what argparse shows and uses): $MLP_EXP_STORAGE or
    $MLP_EXP_STUDY where set (and not empty) for those two, else the dataclass default."""
    if name in ENVIRONMENT and os.environ.get(ENVIRONMENT[name], "").strip():
        return os.environ[ENVIRONMENT[name]].strip()
    return StudySettings.__dataclass_fields__[name].default


def logged_params(settings: StudySettings, study_description: dict) -> dict:
    """What the study's parent run records as params: every setting (URLs without passwords,
    `fixed` as k=v,...; None as its meaning) and `study_description`, what make_study built."""
    values = dataclasses.asdict(settings)
    del values["allow_changed_settings"]    # this invocation's choice; the study records the changes it allowed
    values["storage"] = safe_url(settings.storage)
    values["tracking_uri"] = safe_url(settings.tracking_uri) if settings.tracking_uri else "default"
    values["fixed"] = ",".join(f"{k}={v}" for k, v in sorted(settings.fixed.items())) or "none"
    values["test_size"] = settings.test_size or "all"
    values = {k: ("none" if v is None else v) for k, v in values.items()}
    return {**values, **study_description}
