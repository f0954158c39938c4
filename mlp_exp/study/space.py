"""The search space as data, and the one mapping from an Optuna trial to a TrainConfig.

`config_for_trial` takes every suggestion first, then builds the config from
plain values (optuna-examples' good pattern); below it nothing knows Optuna.
"""
from __future__ import annotations

import math
import os
import warnings

from ..config import IMAGE_SHAPE, TrainConfig, field_names, parse_value
from ..data import DEFAULT_LABEL_NAMES
from ..errors import UserError
from . import attrs
from .settings import StudySettings

# The search space, as data: name -> (kind, low, high) or ("categorical", choices).
# Ranges are for ZCA-whitened inputs (STUDY_DEFAULTS), centred on the region the
# README's measurements found best, with room each way. Whitening leaves about a
# fifth of standardize's total input variance, so the learning rates that work are
# several times higher; whitened inputs let the net memorise, so reg sits higher
# than a standardized net needs: that is what turned whitening from a loss into
# the gain of "What the net sees" (README, with the figures).
SEARCH_SPACE = {
    "hidden_size": ("int_log", 300, 2000),
    "learning_rate": ("float_log", 1e-2, 3e-1),
    "reg": ("float_log", 1e-4, 1e-2),
    "momentum": ("float", 0.8, 0.95),
    "lr_decay": ("float", 0.85, 0.98),
}

# Settings every searched trial starts from (the search space and --fixed override them).
# ZCA whitening with +-2 px translations (and flips) beat standardized inputs with flips by
# about six points of test accuracy over two seeds, and either change alone gained much
# less (README: What the net sees). init_std 0.044 is the std those runs started from.
STUDY_DEFAULTS = dict(
    update="momentum", batch_size=200, init_std=0.044,
    preprocessing="zca", flip=True, translate=2,
)

# Trial 0 replays the spec notebook's best grid configuration, so the study
# starts from the baseline it has to beat. (The notebook passed reg=1.0 to
# every grid run whatever its loop said, so its best used reg 1.0.)
SPEC_BASELINE = dict(
    hidden_size=500, learning_rate=1e-5, reg=1.0, momentum=0.9, lr_decay=0.95,
    update="momentum", batch_size=100, num_epochs=5, init_std=6e-3,
    preprocessing="mean_image", flip=False, translate=0,
)



def _suggest(trial, name, spec):
    kind = spec[0]
    if kind == "int_log":
        return trial.suggest_int(name, spec[1], spec[2], log=True)
    if kind == "int":
        return trial.suggest_int(name, spec[1], spec[2])
    if kind == "float_log":
        return trial.suggest_float(name, spec[1], spec[2], log=True)
    if kind == "float":
        return trial.suggest_float(name, spec[1], spec[2])
    if kind == "categorical":
        return trial.suggest_categorical(name, spec[1])
    raise ValueError(f"unknown search-space kind {kind!r} for {name}")


def baseline_params() -> dict:
    """The spec baseline's values of the searched settings: trial 0's params when it is queued."""
    return {name: SPEC_BASELINE[name] for name in SEARCH_SPACE}


def config_for_trial(trial, settings: StudySettings) -> TrainConfig:
    """The one mapping from an Optuna trial to a TrainConfig: all suggestions first, then plain values."""
    if trial.user_attrs.get(attrs.BASELINE):
        values = dict(SPEC_BASELINE)
        # Queued with its searched values as params (baseline_params), the baseline "suggests" them
        # back, so they are stored as real params under the space's distributions: the study's
        # search space, Optuna's plots and optuna-dashboard then include trial 0. Its lr and reg lie
        # outside the ranges (the spec trained on raw pixels); Optuna keeps such a queued value, with
        # a warning that is expected here. Studies from before queued it with no params: none asked.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
            for name in trial.user_attrs.get(attrs.BASELINE_SUGGESTS, ()):
                if name not in settings.fixed:
                    values[name] = _suggest(trial, name, SEARCH_SPACE[name])
    else:
        values = {"num_epochs": settings.max_epochs, **STUDY_DEFAULTS}
        values.update({name: _suggest(trial, name, spec)
                       for name, spec in SEARCH_SPACE.items() if name not in settings.fixed})
    values.update(settings.fixed)
    values.update(train_size=settings.train_size, val_size=settings.val_size,
                  seed=settings.seed + trial.number,
                  num_epochs=min(values["num_epochs"], settings.max_epochs))
    return TrainConfig(**values)


def parse_fixed(pairs) -> dict:
    """['hidden_size=500', 'flip=false'] -> {'hidden_size': 500, 'flip': False}, checked against TrainConfig."""
    fixed = {}
    reserved = {"train_size", "val_size", "seed"}   # study-level flags own these
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--fixed takes KEY=VALUE, got {pair!r}")
        if key in reserved:
            raise UserError(f"--fixed {key}=... is set by --{key.replace('_', '-')} instead")
        if key not in field_names():
            raise UserError(f"--fixed: unknown key {key!r}; known keys: "
                            f"{', '.join(k for k in field_names() if k not in reserved)}")
        try:
            fixed[key] = parse_value(key, value)
        except ValueError as err:
            raise UserError(f"--fixed: {err}") from None
    try:   # a pinned value must make a valid config on its own
        TrainConfig(**{**STUDY_DEFAULTS, **fixed})
    except ValueError as err:
        raise UserError(f"--fixed: {err}") from None
    if "hidden_size" in fixed:
        check_weights_fit(fixed["hidden_size"])
    if fixed.get("precision") == "bf16":
        from ..blas import bf16_backend
        bf16_backend()         # refuse now, in one line, rather than fail every trial
    return fixed


def check_weights_fit(hidden_size: int, memory_bytes: int | None = None) -> None:
    """A UserError for a hidden size whose float32 weights alone exceed the machine's memory (default:
    physical memory): every trial would fail with MemoryError. Training needs several times this
    (gradients, momentum, the best weights), so passing is no promise; failing is certain."""
    memory_bytes = memory_bytes or physical_memory()
    inputs, classes = math.prod(IMAGE_SHAPE), len(DEFAULT_LABEL_NAMES)
    needed = 4 * (inputs * hidden_size + hidden_size + hidden_size * classes + classes)   # W1 b1 W2 b2
    if memory_bytes and needed > memory_bytes:
        raise UserError(f"--fixed hidden_size={hidden_size}: the weights alone need {needed / 2**30:.1f} GiB "
                        f"(float32), more than this machine's {memory_bytes / 2**30:.1f} GiB of memory; "
                        "choose a smaller hidden_size (the search space tops out at "
                        f"{SEARCH_SPACE['hidden_size'][2]})")


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the OS does not say (then nothing is checked)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
