"""How a study proposes and cuts trials: the sampler and the pruner, built from settings.

`make_sampler` and `make_pruner` each return the Optuna object and a
description generated from the same arguments, so what the parent run logs
is what the study really used.
"""
from __future__ import annotations

import numpy as np
import optuna

from . import attrs
from .settings import StudySettings

# TPE's random start-up trials; the pruner lets them train in full (see StartupThenHyperband).
SAMPLER_STARTUP_TRIALS = 10
# group=True: multivariate TPE models the parameters jointly only over the search space every
# finished trial shares; one trial that samples nothing (the spec baseline, in studies made before
# it carried params) empties that space, and TPE quietly samples each parameter on its own
# (checked: Optuna's infer_relative_search_space returns {}). Grouping by the trials that do share
# them keeps the joint model, which found better points on tests/test_study_integrity.py's synthetic
# objective over 20 paired seeds (README: What the default study searches, with the figures).
TPE_OPTIONS = dict(n_startup_trials=SAMPLER_STARTUP_TRIALS, multivariate=True, group=True,
                   constant_liar=True)      # constant_liar: parallel workers do not propose the same point
# Hyperband: rungs at 1, 3, 9, ... epochs, each keeping the best third of the trials that reach it.
PRUNER_MIN_EPOCHS, PRUNER_REDUCTION_FACTOR = 1, 3


def _describe(kind, options: dict) -> str:
    return f"{kind.__name__}({', '.join(f'{k}={v}' for k, v in options.items())})"


def sampler_seed(seed: int, trials_before: int = 0, worker_index: int = 0) -> int:
    """The seed of one process's sampler: `seed` itself for the process that starts a study alone
    (an uninterrupted study with --seed S proposes what it always did), else one derived from
    (seed, trials already in the study, worker index).

    Every process used to seed with --seed alone, so a resumed study, or a second worker, drew the
    random start-up points (TPE's and RandomSampler's come from that seed) of the first trials again.
    The trial count differs per resume and the worker index per spawned worker, so no two processes of
    a study draw the same sequence; the sampler still learns from every trial in the storage, so a
    resumed study knows what an uninterrupted one would. Processes started by hand on several
    machines at the very same moment may see the same count: give them different --seed values.
    """
    if trials_before == 0 and worker_index == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(trials_before, worker_index)).generate_state(1)[0])


def make_sampler(settings: StudySettings, trials_before: int = 0,
                 worker_index: int = 0) -> tuple[optuna.samplers.BaseSampler, str]:
    """(sampler, description): TPE, or plain random search as a baseline; seeded by sampler_seed."""
    seed = sampler_seed(settings.seed, trials_before, worker_index)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed), _describe(optuna.samplers.RandomSampler, {})
    return (optuna.samplers.TPESampler(seed=seed, **TPE_OPTIONS),
            _describe(optuna.samplers.TPESampler, TPE_OPTIONS))


def prunable_epoch(epoch: int, num_epochs: int) -> bool:
    """Whether a pruning decision after `epoch` of `num_epochs` is worth making.

    Optuna's Hyperband has no top rung: with 30 epochs its brackets also cut at
    epoch 27, where pruning saves a tenth of the trial and throws away one that
    is nearly trained. Hyperband's own schedule ends its rungs at the full
    budget, so only rungs a reduction factor or more short of it prune.
    """
    return epoch * PRUNER_REDUCTION_FACTOR <= num_epochs


class StartupThenHyperband(optuna.pruners.BasePruner):
    """Hyperband for the trials TPE proposes; the random start-up trials before them always train in full.

    The start-up trials are what TPE learns the space from, and what
    Hyperband's rungs first compare against. Early epochs rank this space
    poorly (high learning rates with high momentum start worst and, decayed,
    end best), so cutting start-up trials early teaches TPE that the best
    region is bad (README: How it compares). A retried trial keeps the place
    of the trial it retries. Wrapping Hyperband, rather than passing it to the
    study, also means TPE sees every trial, not only its bracket's.
    """

    def __init__(self, startup_trials: int, **hyperband_options):
        self.startup_trials, self.hyperband_options = startup_trials, hyperband_options
        self.hyperband = optuna.pruners.HyperbandPruner(**hyperband_options)

    def prune(self, study, trial) -> bool:
        if trial.system_attrs.get(attrs.FAILED_TRIAL, trial.number) < self.startup_trials:
            return False
        return self.hyperband.prune(study, trial)

    def __str__(self) -> str:
        return (f"{_describe(optuna.pruners.HyperbandPruner, self.hyperband_options)}, pruning only at epochs "
                f"a reduction factor short of the last, none in the first {self.startup_trials} trials")


def make_pruner(settings: StudySettings) -> tuple[optuna.pruners.BasePruner, str]:
    """(pruner, description): Hyperband after TPE's start-up trials, or none."""
    if settings.pruner == "none":
        return optuna.pruners.NopPruner(), "none"
    pruner = StartupThenHyperband(SAMPLER_STARTUP_TRIALS, min_resource=PRUNER_MIN_EPOCHS,
                                  max_resource=settings.max_epochs, reduction_factor=PRUNER_REDUCTION_FACTOR)
    return pruner, str(pruner)
