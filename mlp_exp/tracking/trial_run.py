"""The MLflow side of one trial, logged from a background thread so training barely waits.

Tracking must cost at most a few percent of a trial: per-epoch metrics and
weight images go to a per-run logging thread, so training waits only for a
copy of the first `grid_units` columns of W1, and the curves figure is
rendered only when nothing trains (see TrialRun).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Sequence

import numpy as np

from ..config import TrainConfig
from ..errors import one_line
from ..preprocessing import fold_into_first_layer
from .names import (CURVES_ARTIFACT, CURVES_DPI, EPOCH_METRICS, ERROR_TAG, GRID_KEY, LOGGING_ERROR_TAG,
                    STOP_REASON_TAG, TERMINAL_STATUSES)

_log = logging.getLogger(__name__)


class _Worker:
    """A daemon thread running submitted calls in order, then stopping at `stop`."""

    def __init__(self, name: str):
        self.errors: list[Exception] = []
        self.cpu_seconds = 0.0              # CPU time the thread used, once it has stopped
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> None:
        self._queue.put((fn, args))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except Exception as err:        # logging must never kill training
                self.errors.append(err)
        self.cpu_seconds = time.thread_time()

    def stop(self) -> None:
        self._queue.put(None)

    def join(self) -> None:
        self._thread.join()


class TrialRun:
    """The MLflow side of one trial.

    - `log_epoch` is the trainer callback: metrics at step = epoch and the W1 grid image;
    - `log_result(result)` adds best_val_accuracy, best_epoch and training_curves.png;
    - `log_model(...)` logs the model (before `end`);
    - `end(status, tags)` closes the run: FINISHED, KILLED (e.g. tags stop_reason,
      pruned_at_epoch) or FAILED; `fail(error)` is end FAILED with tag `error`.

    Cost while training: metrics and images go to a background thread, in
    order, and the status is set there last. Rendering the curves is a burst
    of matplotlib that, run beside training, would hold the GIL the training
    loop needs (README: Performance), so it is deferred to `wait()`: called by
    end(wait=True), `Tracker.wait()`/`end_study()`, the Tracker methods that
    read runs, and interpreter exit. A run can thus be FINISHED a little before
    its curves appear. As a context manager, a block that raises ends the run
    FAILED (KILLED for KeyboardInterrupt).
    """

    def __init__(self, tracker, run_id: str, trial_number: int):   # tracker: a tracking.Tracker
        self.tracker, self.run_id, self.trial_number = tracker, run_id, trial_number
        self.ended = False
        self._curves = None                 # (loss_history, train_acc, val_acc) until rendered
        self._warned = False
        self._worker = _Worker(f"mlflow-{run_id[:8]}")

    def log_epoch(self, stats) -> None:
        """Trainer callback (EpochStats): queue loss, accuracies and learning rate, and the W1 grid."""
        timestamp = int(time.time() * 1000)
        metrics = {name: getattr(stats, name) for name in EPOCH_METRICS}
        W1 = stats.params.get("W1")             # valid only during this call: copy the part drawn
        part = None if W1 is None else np.array(W1[:, :self.tracker.grid_units], dtype=np.float32)
        self._worker.submit(self._log_epoch, stats.epoch, metrics, part, timestamp)

    def _log_epoch(self, epoch, metrics, W1_part, timestamp) -> None:
        self.tracker._log_batch(self.run_id, metrics=metrics, step=epoch, timestamp=timestamp)
        if W1_part is not None:
            from .. import vis
            self.tracker.client.log_image(self.run_id, vis.first_layer_grid(W1_part), key=GRID_KEY,
                                          step=epoch, synchronous=True)

    def log_result(self, result, tags: dict | None = None) -> None:
        """From a TrainResult: best_val_accuracy and best_epoch, `tags` (e.g. the curves'
        diagnosis; queued), and training_curves.png (rendered at `wait`)."""
        self._worker.submit(self.tracker._log_batch, self.run_id,
                            {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch},
                            None, tags)
        self._curves = result.curves()

    def log_model(self, params: dict, preprocessor, config: TrainConfig, label_names: Sequence[str]) -> str:
        """Tracker.log_model on this run; call it before `end`. Returns the model URI.

        A whitening preprocessor ("zca") is folded into the first layer first
        (preprocessing.fold_into_first_layer): the logged model holds per-pixel
        statistics and the four weight arrays, the format every model has."""
        if self.ended:
            raise RuntimeError(f"log the model of run {self.run_id} before ending it")
        preprocessor, params = fold_into_first_layer(preprocessor, params)
        return self.tracker.log_model(self.run_id, params, preprocessor, config, label_names)

    def end(self, status: str = "FINISHED", tags: dict | None = None, *, wait: bool = False) -> None:
        """Queue the end of the run (tags, then status) behind what is already queued."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(TERMINAL_STATUSES)}, got {status!r}")
        if self.ended:
            raise RuntimeError(f"trial run {self.run_id} has already ended")
        self.ended = True
        self._worker.submit(self._end, status, dict(tags or {}))
        self._worker.stop()
        self.tracker._ended_trial(self)
        if wait:
            self.wait()

    def _end(self, status, tags) -> None:
        if self._worker.errors:
            first = self._worker.errors[0]
            tags[LOGGING_ERROR_TAG] = one_line(
                f"{len(self._worker.errors)} logging call(s) failed, first: {type(first).__name__}: {first}")
        self.tracker.end_run(self.run_id, status, tags)

    def fail(self, error, *, wait: bool = False) -> None:
        """End FAILED, with tag `error` holding the error's one-line message."""
        message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        self.end("FAILED", {ERROR_TAG: one_line(message, 5000)}, wait=wait)

    def wait(self) -> None:
        """Block until the run is fully logged and closed: the queue, the status, then the curves."""
        if not self.ended:
            raise RuntimeError(f"end trial run {self.run_id} before waiting for it")
        self._worker.join()
        if self._curves is not None:
            curves, self._curves = self._curves, None
            try:
                self._log_curves(*curves)
            except Exception as err:
                self._worker.errors.append(err)
        if self._worker.errors and not self._warned:
            self._warned = True
            first = self._worker.errors[0]
            _log.warning("MLflow run %s: %d logging call(s) failed, first: %s: %s", self.run_id,
                         len(self._worker.errors), type(first).__name__, one_line(first))

    @property
    def background_cpu_seconds(self) -> float:
        """CPU seconds the run's logging thread used beside training (known after `wait`)."""
        return self._worker.cpu_seconds

    def _log_curves(self, loss_history, train_accuracy, val_accuracy) -> None:
        from .. import vis
        figure = vis.render_training_curves(loss_history, train_accuracy, val_accuracy,
                                            title=f"{self.tracker.study_name or ''} trial {self.trial_number}")
        self.tracker.client.log_figure(self.run_id, figure, CURVES_ARTIFACT, save_kwargs={"dpi": CURVES_DPI})

    def __enter__(self) -> "TrialRun":
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.ended:
            return
        if error is None:
            self.end("FINISHED")
        elif isinstance(error, Exception):
            self.fail(error)
        else:                               # KeyboardInterrupt, SystemExit
            self.end("KILLED", {STOP_REASON_TAG: "interrupted"})

