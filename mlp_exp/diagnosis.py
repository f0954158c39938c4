"""What a trial's curves say about its hyperparameters, as tags with one-line reasons.

Pure functions of plain numbers: no I/O, no tracking, no Optuna. The tags
follow the usual reading of training curves (cs231n's "babysitting"):

    diverged       the loss became non-finite or blew up           -> learning rate far too high
    lr_too_high    the loss ends no lower than it started          -> steps overshoot
    lr_too_low     the loss barely moves, or falls in a straight
                   line instead of flattening out                  -> raise the rate or train longer
    overfitting    training accuracy far above validation, or
                   validation falling while training rises         -> more reg, smaller net, fewer epochs
    underfitting   both accuracies low and close together          -> bigger net, less reg, higher rate

`diagnose` reads one trial; `edge_findings` reads the best parameters of a
study against their search ranges. `as_tags` turns findings into run tags:
`diagnosis` = "tag,tag" (or "ok") and `diagnosis.<tag>` = reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

TAG_KEY = "diagnosis"
NO_FINDINGS = "ok"


class Finding(NamedTuple):
    tag: str
    reason: str          # one line: what the curve shows, then what to try


@dataclass(frozen=True)
class Thresholds:
    """Cut-offs, chosen for a two-layer net on CIFAR-10 (10 classes, chance 0.10)."""
    windows: int = 10              # the loss is read as the means of this many equal windows
    min_iterations: int = 20       # fewer iterations: no loss-based findings
    flat_drop: float = 0.01        # loss fell by less than this fraction of its start: "barely moves"
    linear_ratio: float = 0.7      # second-half drop >= this x first-half drop ...
    linear_r2: float = 0.95        # ... on a straight-line fit this good: "falls linearly"
    blow_up: float = 3.0           # a window mean above this x the first one: diverged
    overfit_gap: float = 0.15      # train - val accuracy at the last epoch
    overfit_val_drop: float = 0.03  # val fell this far below its peak while train rose
    underfit_accuracy: float = 0.40  # last train accuracy below this ...
    underfit_gap: float = 0.03     # ... and at most this above val: underfitting
    underfit_min_epochs: int = 3   # a trial pruned earlier is too young to call underfit


DEFAULT_THRESHOLDS = Thresholds()


def _window_means(loss: np.ndarray, windows: int) -> np.ndarray:
    """(windows,) means of `loss` cut into equal consecutive windows (the tail remainder dropped)."""
    size = len(loss) // windows
    return loss[:size * windows].reshape(windows, size).mean(axis=1)


def _r2(y: np.ndarray) -> float:
    """Coefficient of determination of a least-squares line through y against 0..n-1."""
    x = np.arange(len(y), dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = np.sum((y - (slope * x + intercept)) ** 2)
    total = np.sum((y - y.mean()) ** 2)
    return 1.0 if total == 0 else float(1.0 - residual / total)


def diagnose_loss(loss_history, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Finding]:
    """Findings from the loss of every iteration (iterations,); at most one of them."""
    loss = np.asarray(loss_history, dtype=float)
    bad = np.flatnonzero(~np.isfinite(loss))
    if len(bad):
        return [Finding("diverged", f"loss became non-finite at iteration {bad[0] + 1} of {len(loss)}: "
                                    "lower the learning rate")]
    if len(loss) < max(t.min_iterations, t.windows):
        return []
    means = _window_means(loss, t.windows)
    start, end, peak = means[0], means[-1], means.max()
    if start > 0 and peak > t.blow_up * start:
        return [Finding("diverged", f"loss blew up from {start:.3g} to {peak:.3g}: lower the learning rate")]
    drop = start - end
    if drop <= 0:
        return [Finding("lr_too_high", f"loss ended at {end:.3f}, no lower than its start {start:.3f}: "
                                       "lower the learning rate")]
    if drop < t.flat_drop * abs(start):
        return [Finding("lr_too_low", f"loss barely moved, {start:.3f} -> {end:.3f} "
                                      f"({-100 * drop / start:.1f}%): raise the learning rate")]
    mid = t.windows // 2
    first, second = means[0] - means[mid - 1], means[mid - 1] - means[-1]
    if first > 0 and second >= t.linear_ratio * first and _r2(means) >= t.linear_r2:
        return [Finding("lr_too_low", f"loss falls in a straight line, {start:.3f} -> {end:.3f}, "
                                      f"as fast at the end as at the start ({second / first:.2f}x): "
                                      "raise the learning rate or train longer")]
    return []


def diagnose_accuracy(train_accuracy, val_accuracy, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Finding]:
    """Findings from per-epoch train and validation accuracy (epochs,) each."""
    train = np.asarray(train_accuracy, dtype=float)
    val = np.asarray(val_accuracy, dtype=float)
    if train.shape != val.shape:
        raise ValueError(f"train_accuracy and val_accuracy need one value per epoch each, "
                         f"got {train.shape} and {val.shape}")
    keep = np.isfinite(train) & np.isfinite(val)
    train, val = train[keep], val[keep]
    epochs = len(train)
    findings = []
    if epochs >= 2:
        gap = train[-1] - val[-1]
        peak = int(np.argmax(val))
        if gap > t.overfit_gap:
            findings.append(Finding("overfitting", f"train accuracy {train[-1]:.3f} vs val {val[-1]:.3f} "
                                                   f"after {epochs} epochs (gap {gap:.3f}): raise reg, "
                                                   "shrink the net or stop earlier"))
        elif val[peak] - val[-1] >= t.overfit_val_drop and train[-1] > train[peak]:
            findings.append(Finding("overfitting", f"val accuracy peaked at {val[peak]:.3f} in epoch "
                                                   f"{peak + 1} and fell to {val[-1]:.3f} while train rose "
                                                   f"to {train[-1]:.3f}: raise reg or stop earlier"))
    if epochs >= t.underfit_min_epochs and train[-1] < t.underfit_accuracy \
            and train[-1] - val[-1] <= t.underfit_gap:
        findings.append(Finding("underfitting", f"train accuracy {train[-1]:.3f} and val {val[-1]:.3f} "
                                                f"are both low after {epochs} epochs: grow the net, "
                                                "lower reg or raise the learning rate"))
    return findings


def diagnose(loss_history, train_accuracy, val_accuracy,
             thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Finding]:
    """All findings of one trial, loss first.

    Inputs:
    - loss_history: (iterations,) loss of every minibatch; may end in nan/inf
    - train_accuracy, val_accuracy: (epochs,) per-epoch accuracies
    Returns a list of Finding(tag, reason); empty when the curves look healthy.
    """
    return diagnose_loss(loss_history, thresholds) + diagnose_accuracy(train_accuracy, val_accuracy,
                                                                       thresholds)


def as_tags(findings: Sequence[Finding]) -> dict:
    """{'diagnosis': 'a,b' (or 'ok'), 'diagnosis.a': reason, ...}: the run tags of a diagnosis."""
    tags = {TAG_KEY: ",".join(f.tag for f in findings) or NO_FINDINGS}
    tags.update({f"{TAG_KEY}.{f.tag}": f.reason for f in findings})
    return tags


# ------------------------------------------------------------- a study's ranges

def range_position(value: float, spec: tuple) -> float | None:
    """Where `value` lies in a search-space range, 0 (low end) .. 1 (high end); log ranges in log space.

    `spec` is a study.space.SEARCH_SPACE entry: (kind, low, high) or ("categorical", choices),
    for which the answer is None.
    """
    kind = spec[0]
    if kind == "categorical":
        return None
    low, high = float(spec[1]), float(spec[2])
    if high <= low:
        return None
    if kind.endswith("_log"):
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (float(value) - low) / (high - low)


def edge_findings(best_params: dict, search_space: dict, margin: float = 0.05) -> list[Finding]:
    """A finding per best parameter within `margin` (a fraction of its range) of either end.

    The optimum may lie beyond that end: the range should grow that way.
    Parameters absent from best_params (pinned with --fixed, or a baseline trial) are skipped.
    """
    findings = []
    for name, spec in search_space.items():
        if name not in best_params:
            continue
        position = range_position(best_params[name], spec)
        if position is None:
            continue
        scale = " (log scale)" if spec[0].endswith("_log") else ""
        if position <= margin:
            side, way = "low", "down"
        elif position >= 1 - margin:
            side, way = "high", "up"
        else:
            continue
        findings.append(Finding(
            f"{name}_at_{side}_edge",
            f"best {name} {best_params[name]:.4g} lies at the {side} edge of its range "
            f"[{spec[1]:.4g}, {spec[2]:.4g}]{scale}: the optimum may be outside; widen "
            f"SEARCH_SPACE[{name!r}] {way}wards"))
    return findings
