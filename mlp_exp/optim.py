"""First-order update rules, simplest first.

Every rule has one signature, `update(w, dw, config) -> (next_w, config)`:
`config` holds the hyperparameters and the rule's state (velocity, cache) and
is returned so the caller keeps it for the next step. Rules never modify `w`
in place, so they double as the float64 reference for `kernels.py`.
"""
from __future__ import annotations

import numpy as np


def sgd(w, dw, config):
    """w -= learning_rate * dw."""
    return w - config["learning_rate"] * dw, config


def momentum(w, dw, config):
    """v = momentum * v - learning_rate * dw; w += v."""
    v = config.get("velocity")
    v = np.zeros_like(w) if v is None else v
    v = config["momentum"] * v - config["learning_rate"] * dw
    return w + v, {**config, "velocity": v}


def rmsprop(w, dw, config):
    """cache = 0.99 cache + 0.01 dw^2; w -= learning_rate * dw / sqrt(cache + 1e-8).

    The 1e-8 sits inside the square root: the spec notebook's RMSProp numbers
    (final toy loss 0.439368) require exactly that.
    """
    decay_rate = config.get("decay_rate", 0.99)
    eps = config.get("epsilon", 1e-8)
    cache = config.get("cache")
    cache = np.zeros_like(w) if cache is None else cache
    cache = decay_rate * cache + (1 - decay_rate) * dw * dw
    return w - config["learning_rate"] * dw / np.sqrt(cache + eps), {**config, "cache": cache}


UPDATE_RULES = {"sgd": sgd, "momentum": momentum, "rmsprop": rmsprop}
