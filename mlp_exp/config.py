"""The one configuration object of a training run.

A `TrainConfig` is built once per trial (by the search layer, from an Optuna
trial), handed to the trainer, and logged to MLflow as `asdict(config)`; the
same dict is saved beside the model weights. A run can be reproduced from what
was logged and nothing else.

Its defaults are the spec notebook's first CIFAR-10 run (hidden 100, 5 epochs,
lr 1e-5, reg 1.0, momentum 0.9, decay 0.95, batch 100, mean-image
preprocessing), so `TrainConfig()` means "what the notebook did".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .optim import UPDATE_RULES

PRECISIONS = ("fp32", "bf16")   # kernels.FusedStep's: bf16 GEMM inputs, fp32 weights and accumulation
PREPROCESSINGS = ("mean_image", "standardize", "zca")   # preprocessing.fit_preprocessor's modes
IMAGE_SHAPE = (32, 32, 3)   # HWC: how a flattened CIFAR-10 row is laid out (flips, weight grids)


@dataclass(frozen=True)
class TrainConfig:
    hidden_size: int = 100
    learning_rate: float = 1e-5
    reg: float = 1.0
    momentum: float = 0.9
    lr_decay: float = 0.95          # learning rate is multiplied by this after each epoch
    update: str = "momentum"        # one of optim.UPDATE_RULES
    batch_size: int = 100
    num_epochs: int = 5
    init_std: float = 6e-3          # std of the initial weights; the spec's first cost (8.13) implies ~6e-3
    preprocessing: str = "mean_image"   # one of PREPROCESSINGS; fixed per study (data is prepared once)
    flip: bool = False              # random horizontal flips of training images
    translate: int = 0              # random shifts of training images by up to this many pixels each way
    train_size: int = 49000
    val_size: int = 1000
    seed: int = 0                   # seeds init, shuffling, flips, shifts and the train-accuracy sample
    precision: str = "fp32"         # of the two big GEMMs' inputs: "bf16" needs MKL or oneDNN (PRECISIONS)

    def __post_init__(self):
        for name in ("hidden_size", "batch_size", "num_epochs", "train_size", "val_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        # finite: an infinite rate, strength or spread makes every weight inf or nan in the first step
        for name in ("learning_rate", "init_std"):
            if not _is_finite(getattr(self, name)) or not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if not _is_finite(self.reg) or not self.reg >= 0:
            raise ValueError(f"reg must be a finite number >= 0, got {self.reg!r}")
        if not _is_number(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not _is_number(self.lr_decay) or not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if self.update not in UPDATE_RULES:
            raise ValueError(f"update must be one of {', '.join(UPDATE_RULES)}, got {self.update!r}")
        if self.preprocessing not in PREPROCESSINGS:
            raise ValueError(
                f"preprocessing must be one of {', '.join(PREPROCESSINGS)}, got {self.preprocessing!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be true or false, got {self.flip!r}")
        # a shift of half the image or more would leave at most a sliver of it: no augmentation
        limit = min(IMAGE_SHAPE[:2]) // 2
        if isinstance(self.translate, bool) or not isinstance(self.translate, int) \
                or not 0 <= self.translate < limit:
            raise ValueError(f"translate must be an integer in [0, {limit}), got {self.translate!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    def asdict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Rebuild a config from `asdict` output or from logged string params."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        return cls(**{k: parse_value(k, v) for k, v in values.items()})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return _is_number(value) and math.isfinite(value)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def parse_value(key: str, value):
    """Parse `value` (a string from the command line or an MLflow param) as field `key`'s type.

    Non-strings pass through unchanged, so `from_dict(asdict(c)) == c`.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if key not in fields:
        raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(fields)}")
    if not isinstance(value, str):
        return value
    kind = fields[key].type
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
    except ValueError:
        raise ValueError(f"{key} takes a value of type {kind}, got {value!r}") from None
    return value
