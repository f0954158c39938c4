"""Progress of a running study: trials done of the target, best validation accuracy, trials per hour, ETA.

On a terminal it is a tqdm bar on stderr, refreshed after every epoch of this
process's trial, with one line per finished trial printed above it. When
stderr is not a terminal (CI, a log file) there is no bar: each finished trial
is one INFO line on the `mlp_exp.progress` logger, and epochs say nothing.
`quiet=True` turns all of it off.

The search feeds it plain `TrialOutcome`s (search.progress_outcomes); this
module knows nothing of Optuna. Rates count only trials finished since this
process started, by any worker sharing the study, so a resumed study does not
look faster than it is.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Sequence

log = logging.getLogger("mlp_exp.progress")


@dataclass(frozen=True)
class TrialOutcome:
    """A finished trial, as the progress display needs it."""
    number: int
    state: str                  # "complete", "pruned" or "diverged" (a pruned trial whose loss blew up)
    value: float | None         # validation accuracy: the objective, or the last one reported
    epochs: int                 # epochs trained (reported)


def describe(outcome: TrialOutcome) -> str:
    """'pruned at epoch 3 (val 0.4120)', 'complete after 30 epochs (val 0.5120)', ..."""
    how = {"pruned": f"pruned at epoch {outcome.epochs}",
           "diverged": f"diverged in epoch {outcome.epochs}"}.get(
        outcome.state, f"{outcome.state} after {outcome.epochs} epochs")
    return how if outcome.value is None else f"{how} (val {outcome.value:.4f})"


def format_duration(seconds: float | None) -> str:
    """3725 -> '1:02:05'; None -> '?'."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _columns(stream) -> int:
    """The terminal's width, 0 when unknown (a fresh pseudo-terminal reports 0 columns)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class StudyProgress:
    """Progress towards `target` finished trials.

    Call `update(outcomes)` with every finished trial of the study whenever it
    may have changed (cheap when nothing did), pass `on_epoch` to the trainer
    as a callback, and use it as a context manager around the study, so log
    lines and the bar do not overwrite each other and the bar is closed.

    Inputs:
    - target: number of finished trials the study runs to
    - quiet: show nothing
    - stream: where the bar goes (default sys.stderr); a bar only if stream.isatty()
    - clock: seconds, monotonic (a fake one in tests)
    """

    def __init__(self, target: int, *, quiet: bool = False, stream=None, clock=time.monotonic):
        self.target, self.quiet, self.clock = target, quiet, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = not quiet and bool(getattr(self.stream, "isatty", lambda: False)())
        self._seen: set[int] | None = None          # trial numbers already counted
        self._start_count = 0
        self._start_time = None
        self._best: float | None = None
        self._bar = None
        self._redirect = contextlib.ExitStack()

    # ------------------------------------------------------------- numbers

    @property
    def finished(self) -> int:
        return len(self._seen or ())

    @property
    def best(self) -> float | None:
        return self._best

    def rate_per_hour(self) -> float | None:
        """Trials finished per hour since the first update; None before one has finished."""
        if self._start_time is None:
            return None
        done, elapsed = self.finished - self._start_count, self.clock() - self._start_time
        return done * 3600.0 / elapsed if done > 0 and elapsed > 0 else None

    def eta_seconds(self) -> float | None:
        remaining = max(self.target - self.finished, 0)
        if remaining == 0:
            return 0.0
        rate = self.rate_per_hour()
        return None if rate is None else remaining * 3600.0 / rate

    def summary(self) -> str:
        """'8/50 done, best 0.4550, 12.3 trials/h, ETA 3:05:00'"""
        return f"{self.finished}/{self.target} done, {self._numbers()}"

    def _numbers(self) -> str:
        rate = self.rate_per_hour()
        best = "-" if self._best is None else f"{self._best:.4f}"
        per_hour = "?" if rate is None else f"{rate:.1f}"
        return f"best {best}, {per_hour} trials/h, ETA {format_duration(self.eta_seconds())}"

    # ------------------------------------------------------------- feeding it

    def update(self, outcomes: Sequence[TrialOutcome]) -> None:
        """Take the study's finished trials; report those not seen before, in trial order."""
        if self._seen is None:                      # the first call sets the baseline for rates
            self._seen = set()
            self._start_time = self.clock()
            self._absorb(sorted(outcomes, key=lambda o: o.number), report=False)
            self._start_count = self.finished
            self._show()
            return
        new = sorted((o for o in outcomes if o.number not in self._seen), key=lambda o: o.number)
        if new:
            self._absorb(new, report=True)
            self._show()

    def _absorb(self, outcomes, report: bool) -> None:
        for outcome in outcomes:
            self._seen.add(outcome.number)
            if outcome.state == "complete" and outcome.value is not None \
                    and (self._best is None or outcome.value > self._best):
                self._best = outcome.value
            if report and not self.quiet:
                log.info("trial %d %s | %s", outcome.number, describe(outcome), self.summary())

    def on_epoch(self, stats) -> None:
        """Trainer callback: show the running trial's epoch on the bar (a terminal only)."""
        if self._bar is not None:
            self._bar.set_description_str(f"{self._numbers()} | epoch {stats.epoch}, val "
                                          f"{stats.val_accuracy:.3f}", refresh=True)

    def _show(self) -> None:
        if not self.tty:
            return
        if self._bar is None:
            from tqdm import tqdm

            sized = _columns(self.stream) > 0       # tqdm shows nothing on a terminal of size 0x0
            self._bar = tqdm(total=self.target, initial=self.finished, file=self.stream,
                             dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 20,
                             bar_format="trials {n_fmt}/{total_fmt} |{bar}| {desc}")
        self._bar.n = self.finished
        self._bar.set_description_str(self._numbers(), refresh=True)

    # ------------------------------------------------------------- lifetime

    def __enter__(self) -> "StudyProgress":
        if self.tty:        # log lines go above the bar instead of through it
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect.enter_context(logging_redirect_tqdm())
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._redirect.close()
