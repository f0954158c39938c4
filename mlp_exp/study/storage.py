"""Optuna's RDB storage, made patient: it rides out database restarts, network blips and busy locks.

`open_storage` is the one way the product opens a study's storage: it checks
the URL, that a sqlite file is Optuna's (`check_storage`: not MLflow's, not a
folder, writable) and that the database answers (a UserError if not), turns on
heartbeats so a trial whose process died is failed and retried, and returns
a `PatientRDBStorage`. Private Optuna API it needs lives in _optuna_private.
"""
from __future__ import annotations

import functools
import logging
import random
import threading
import time
import warnings
from pathlib import Path

import optuna

from ..errors import UserError, first_line
from ..local_db import check_sqlite_store
from ..urls import postgresql_driver, safe_url
from . import _optuna_private

log = logging.getLogger("mlp_exp.study")

STORAGE_PATIENCE = 120.0   # seconds a worker waits for a lost database before giving up


class StorageLost(UserError):
    """The Optuna storage stayed unreachable for longer than a worker waits for it."""


def connection_lost(err, sqlite: bool) -> bool:
    """Whether `err` (or what caused it) is a lost connection or a busy lock: worth retrying."""
    from sqlalchemy import exc

    for _ in range(5):
        if err is None:
            return False
        if isinstance(err, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError,
                            exc.TimeoutError)) or getattr(err, "connection_invalidated", False):
            # sqlite's OperationalError also means "no such table" or "not a database": only a lock is passing
            return not sqlite or any(word in str(err).lower() for word in ("locked", "busy"))
        err = err.__cause__ or err.__context__
    return False


class PatientRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage that rides out a database restart, a network blip or a busy SQLite lock.

    Once opened, a call that fails on a lost connection is retried with
    back-off for up to `patience` seconds (the pool re-validates connections,
    so a restarted server is simply reconnected to); past that, StorageLost
    says how to resume. Heartbeats are sent once per interval and a failed one
    is skipped, so the heartbeat thread never blocks the end of a trial. After
    an outage nobody's heartbeat got through: stale trials are not failed until
    one grace period after the storage came back, so live peers can report in.
    A running trial that never sent a heartbeat (its process died right after
    taking it) gets one on its behalf, so it too goes stale and is retried.
    """

    def __init__(self, *args, patience: float = STORAGE_PATIENCE, sleep=time.sleep, **kwargs):
        super().__init__(*args, **kwargs)
        self.patience = patience
        self.sleep = sleep                  # between retries (Interrupts.sleep: Ctrl-C ends the wait)
        self._sqlite = self.url.startswith("sqlite")
        self._local = threading.local()
        self._outage_since = None           # time.monotonic() of the first failure, while it lasts
        self._outage_reported = False
        self._settle_until = 0.0

    def _patiently(self, method, *args, **kwargs):
        local = getattr(self, "_local", None)
        if local is None or getattr(local, "busy", False):   # during __init__, or a nested call
            return method(self, *args, **kwargs)
        local.busy, delay, first_failure = True, 0.25, None
        try:
            while True:
                try:
                    result = method(self, *args, **kwargs)
                except Exception as err:
                    if not connection_lost(err, self._sqlite):
                        raise
                    self._note_failure(err)
                    first_failure = first_failure or time.monotonic()
                    if time.monotonic() - first_failure > self.patience:
                        raise StorageLost(
                            f"lost the Optuna storage {safe_url(self.url)} for more than "
                            f"{self.patience:.0f} s ({first_line(err)}); finished trials are saved "
                            f"there: once it is back, run the same command again to resume") from None
                    self.sleep(delay)
                    delay = min(2 * delay, 1.0)
                    continue
                self._note_success()
                return result
        finally:
            local.busy = False

    # the outage bookkeeping below is shared by the trial's thread and its heartbeat thread:
    # each reads self._outage_since once, so a reset by the other thread does no harm
    def _note_failure(self, err) -> None:
        now, since = time.monotonic(), self._outage_since
        if since is None:
            self._outage_since, self._outage_reported = now, False
        elif not self._outage_reported and now - since > 2:      # not a passing lock
            self._outage_reported = True
            log.warning("Optuna storage unreachable (%s); waiting up to %.0f s for it",
                        first_line(err), self.patience)

    def _note_success(self) -> None:
        since = self._outage_since
        if since is not None:
            now, self._outage_since = time.monotonic(), None
            if now - since >= (self.heartbeat_interval or 0):     # long enough to have missed heartbeats
                self._settle_until = now + (self.grace_period or 0)
            if self._outage_reported:
                log.warning("Optuna storage reachable again")

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as err:
            if not connection_lost(err, self._sqlite):
                raise
            self._note_failure(err)         # skipped: the thread tries again next interval
        else:
            self._note_success()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # the hook optuna.storages.fail_stale_trials calls (see _optuna_private)
        if time.monotonic() < self._settle_until:
            return []
        self._patiently(PatientRDBStorage._give_silent_trials_a_heartbeat, study_id)
        return self._patiently(_optuna_private.stale_trial_ids, study_id)

    def _give_silent_trials_a_heartbeat(self, study_id: int) -> None:
        for trial_id in _optuna_private.running_trials_without_heartbeat(self, study_id):
            optuna.storages.RDBStorage.record_heartbeat(self, trial_id)


def _make_patient(name):
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def patient(self, *args, **kwargs):
        return self._patiently(method, *args, **kwargs)
    return patient


def session_methods() -> list[str]:
    """The RDBStorage methods that open a database session: the public storage API it
    implements, and the private ones Study and Optuna's storage cache call directly."""
    public = [name for name, value in vars(optuna.storages.BaseStorage).items()
              if callable(value) and not name.startswith("_") and name != "remove_session"
              and name in vars(optuna.storages.RDBStorage)]
    return public + [name for name in _optuna_private.SESSION_METHODS
                     if hasattr(optuna.storages.RDBStorage, name)]


for _name in session_methods():
    setattr(PatientRDBStorage, _name, _make_patient(_name))


def sqlite_file(url: str) -> Path | None:
    """The file of a sqlite:/// storage URL; None for any other URL (and for in-memory SQLite)."""
    path = url[len("sqlite:///"):].split("?", 1)[0] if url.startswith("sqlite:///") else ""
    return Path(path) if path not in ("", ":memory:") else None


def check_storage(url: str, write: bool = True) -> None:
    """A one-line UserError, before Optuna opens (and adds its tables to) a sqlite file, when the file
    is a folder, no database, MLflow's or neither tool's, or (write=True) cannot be written."""
    path = sqlite_file(url)
    if path is not None:
        check_sqlite_store(path, url, "Optuna", flag="--storage", example="sqlite:///<folder>/optuna.db",
                           write=write)


def schema_message(url: str, err: Exception) -> str:
    """What to do about a storage whose schema this Optuna does not run on (Optuna's RuntimeError)."""
    if "storage upgrade" in str(err):
        return (f"the Optuna storage {safe_url(url)} was made by another Optuna version than this one "
                f"({optuna.__version__}): back it up, then run `optuna storage upgrade --storage {safe_url(url)}`")
    return (f"the Optuna storage {safe_url(url)} was made by a newer Optuna than this one ({optuna.__version__}), "
            f"whose schema this one does not know: run the search with that Optuna version")


def open_storage(url: str, heartbeat: int, on_stale=None, patience: float = STORAGE_PATIENCE,
                 sleep=time.sleep, *, write: bool = True):
    """An RDB storage with heartbeats, so a trial whose process died is failed and retried.

    Opening checks the URL, the file (check_storage) and that the database answers (a UserError
    if not); afterwards the storage waits out outages of up to `patience` seconds, in `sleep`s.
    write=False only reads (reports): a read-only file is fine, and no folder or journal mode is set.
    """
    from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

    check_storage(url, write=write)
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if write and str(path) not in ("", ":memory:"):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"cannot create the folder of Optuna storage {url!r}: "
                                f"{first_line(err)}; pass --storage sqlite:///<writable folder>/optuna.db") from None
        # Several workers share one SQLite file: wait for the lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs = {"pool_pre_ping": True}       # a restarted server is reconnected to
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(6):
        try:
            storage = PatientRDBStorage(
                postgresql_driver(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat, heartbeat_stale_trial_callback=on_stale, patience=patience,
                sleep=sleep)
            if write and url.startswith("sqlite:///"):
                with storage.engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA journal_mode=WAL")
            return storage
        except RuntimeError as err:
            if "table schema" not in str(err):      # Optuna's check_table_schema_compatibility
                raise
            raise UserError(schema_message(url, err)) from None
        except (ArgumentError, OperationalError, SQLAlchemyError, ValueError, ImportError,
                optuna.exceptions.StorageInternalError) as err:
            # workers opening a new database at once race to create its tables (or hold its lock)
            if attempt < 5 and (schema_race(err) or connection_lost(err, sqlite=True)):
                time.sleep(0.2 + random.random())
                continue
            hint = " (the scheme is postgresql://, not postgres://)" if url.startswith("postgres://") else ""
            raise UserError(f"cannot open Optuna storage {safe_url(url)!r}: {safe_url(first_line(err))}{hint}; check "
                            "the --storage URL (sqlite:///path.db or postgresql://user:pass@host:port/db) "
                            "and that the database server is running") from None


def schema_race(err) -> bool:
    """Whether `err` comes from another process creating the same tables first."""
    from sqlalchemy.exc import IntegrityError

    for _ in range(5):
        if err is None:
            return False
        text = str(err).lower()
        if isinstance(err, IntegrityError) or "already exists" in text or "duplicate key" in text:
            return True
        err = err.__cause__ or err.__context__
    return False
