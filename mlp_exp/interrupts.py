"""Ctrl-C and SIGTERM, raised only where stopping is safe: in computation, never inside a store write.

A worker either computes (trains, sleeps between polls) or writes to the
stores; an exception raised inside a database write can leave its connection
holding SQLite's write lock (see Interrupts). Uses no Optuna and no MLflow.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same cleanup runs (Optuna marks the trial failed, too)."""


def _kind(signum) -> type[KeyboardInterrupt]:
    return Terminated if signum == signal.SIGTERM else KeyboardInterrupt


class _SignalScope:
    """SIGINT and SIGTERM routed to `self._handle` while the block runs, the previous handlers (and
    sys.unraisablehook) put back after it. While it is installed, a KeyboardInterrupt that Python
    drops in a garbage-collection callback or __del__ ("Exception ignored in ...") is not printed
    once `_caught()`: the signal is not lost (each subclass keeps it), so the message would only be noise."""

    def _handle(self, signum, frame) -> None:
        raise NotImplementedError

    def _caught(self) -> bool:
        raise NotImplementedError

    def _unraisable(self, unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and self._caught()):
            self._previous_hook(unraisable)

    def _install(self) -> None:
        # A SIGINT ignored by whoever started us stays ignored, as Python's own Ctrl-C handler
        # leaves it: a shell without job control starts `search ... &` that way, so that a Ctrl-C
        # meant for the script in the foreground does not stop its background jobs. SIGTERM is
        # always handled: the product stops its own workers with it.
        self._previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)
                          if not (signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN)}
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = self._previous_hook


class CommandSignals(_SignalScope):
    """SIGINT and SIGTERM for a whole command, outside any Interrupts block: raised at once, and
    remembered.

    Before a command enters an Interrupts block (opening its stores, loading
    data, starting up a spawned worker) a signal is raised where it lands, as
    Python's own Ctrl-C handler does. Landing in a garbage-collection callback,
    Python drops it ("Exception ignored in ..."), and the command carried on as
    if never stopped: CI saw a search Ctrl-C'd while creating its MLflow store
    exit 0, and a spawned worker keep training while its parent waited for it.
    So the first signal is remembered: an Interrupts entered later raises it at
    its first check, and `received` tells cli.run how the command was stopped.
    Use as a context manager in the main thread (cli.run does).
    """

    def __init__(self):
        self.received: type[KeyboardInterrupt] | None = None

    def _handle(self, signum, frame):
        self.received = self.received or _kind(signum)
        raise _kind(signum)()

    def _caught(self) -> bool:
        return self.received is not None

    def __enter__(self) -> "CommandSignals":
        global _command
        self._install()
        self._outer, _command = _command, self
        return self

    def __exit__(self, *exc) -> None:
        global _command
        self._restore()
        _command = self._outer


_command: CommandSignals | None = None      # the running command's, if it runs under cli.run


class Interrupts(_SignalScope):
    """SIGINT and SIGTERM as KeyboardInterrupt and Terminated, raised only where that is safe.

    A worker's main thread either computes (trains, sleeps between polls) or
    writes to the stores. An exception raised inside a database write can leave
    its connection in the middle of a transaction, holding SQLite's write lock
    for as long as the exception's frames live; the cleanup that follows (closing
    the trial's run, which the logging thread must finish writing first) then
    waits on a lock its own process holds. CI hung on exactly that. So a signal
    is raised at once only inside `interruptible()` blocks and `sleep`, and
    otherwise at the next `check()`: on entering `interruptible()`, after each
    `deferring(fn)` call (an epoch's callbacks) and between trials. Once caught,
    it is raised again at every check, so nothing can swallow it.

    Python drops an exception raised inside a weakref callback or __del__ (and
    prints it as "Exception ignored in ..."), so a Ctrl-C that lands during
    garbage collection would otherwise be lost and the search would carry on;
    here it is raised again, quietly. A signal the command got before this block
    (CommandSignals) is raised at the first check. Use as a context manager in the main
    thread; outside it (and in other threads) the methods only compute and sleep.
    """

    def __init__(self):
        self.pending = None
        self._raise_now = False             # the main thread is in an interruptible block

    def _handle(self, signum, frame):
        if self.pending is None:            # the first one decides how the command ends
            self.pending = _kind(signum)
        if _command is not None:
            _command.received = _command.received or self.pending
        if self._raise_now:
            raise self.pending()

    def check(self, *_) -> None:
        """Raise the interrupt that arrived, if any; takes (and ignores) a trainer callback's EpochStats."""
        if self.pending is not None:
            raise self.pending()

    @contextlib.contextmanager
    def _raising(self, now: bool):
        if threading.current_thread() is not threading.main_thread():
            yield                           # signals are handled in the main thread only
            return
        previous, self._raise_now = self._raise_now, now
        try:
            yield
        finally:
            self._raise_now = previous

    @contextlib.contextmanager
    def interruptible(self):
        """A block of pure computation (no store is written inside): an interrupt stops it at once."""
        self.check()
        with self._raising(True):
            yield

    def deferring(self, fn):
        """`fn`, with interrupts held back while it runs and raised after it (for I/O inside
        an interruptible block, such as an epoch's callbacks)."""
        def deferred(*args):
            with self._raising(False):
                fn(*args)
            self.check()
        return deferred

    def sleep(self, seconds: float) -> None:
        """time.sleep that a new interrupt ends at once (an interrupt already caught does not:
        cleanup after one may sleep, waiting for a store)."""
        with self._raising(True):
            time.sleep(seconds)

    def _caught(self) -> bool:
        return self.pending is not None

    def __enter__(self) -> "Interrupts":
        if self.pending is None and _command is not None:
            self.pending = _command.received    # one that arrived before, and may have been dropped
        self._install()
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
