"""Where the MLflow store is and whether it can be used: URIs, artifact roots, reachability.

A sqlite store keeps its artifacts beside the database (mlruns/mlflow.db and
mlruns/artifacts/); a tracking server decides for itself. `mlflow` is imported
on first use (`import_mlflow`), never at package import.

`check_store` says in one line why a store cannot be used, before MLflow
touches it: a file of Optuna's, a folder, a store that is not writable, one
half made by an interrupted first run, a server or database that does not
answer. `prepare_store` also makes a new sqlite store, all at once: MLflow
builds its schema in some 170 steps that SQLite commits one by one, so a
signal in between would leave a store no later run can open; it is built in a
temporary file beside the target and moved into place when whole.
"""
from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse, urlsplit, urlunsplit

from ..errors import UserError, first_line, one_line
from ..local_db import check_sqlite_store, sqlite_tables
from ..urls import postgresql_driver, safe_url
from .names import DEFAULT_TRACKING_URI, TRACKING_URI_ENV

DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
CONNECT_TIMEOUT = 10            # seconds to reach a database server before saying it does not answer


def import_mlflow():
    """Import mlflow on first use, quietly: no telemetry, no progress bars, no INFO chatter."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    for name in ("mlflow", "alembic"):
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


# ---------------------------------------------------------------- the store

def sqlite_path(uri: str) -> Path:
    """sqlite:///relative/x.db or sqlite:////absolute/x.db -> the db file's path."""
    prefix = "sqlite:///"
    path = uri[len(prefix):].split("?", 1)[0] if uri.startswith(prefix) else ""
    if not path or path == ":memory:":
        raise UserError(f"tracking URI {uri!r} names no database file; use e.g. {DEFAULT_TRACKING_URI}")
    return Path(path)


def resolve_tracking_uri(uri=None, *, create=True) -> str:
    """The tracking URI to use: `uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db.

    For a sqlite URI the database's folder is created, unless create=False (to
    read: reading must not make a store). A plain folder (MLflow's retired file
    store) or an unknown scheme raises UserError.
    """
    uri = str(uri or os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI).strip()
    scheme = urlparse(uri).scheme
    if scheme == "sqlite" and not create:
        sqlite_path(uri)
    elif scheme == "sqlite":
        folder = sqlite_path(uri).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the tracking folder {folder}: {one_line(err)}; "
                            f"pass --tracking-uri sqlite:///<writable folder>/mlflow.db") from err
    elif scheme in ("", "file") or len(scheme) == 1:    # len 1: a Windows drive letter
        raise UserError(f"tracking URI {uri!r} is a folder, and MLflow 3 no longer accepts file stores; "
                        f"use a database inside it, e.g. sqlite:///{uri.removeprefix('file:').rstrip('/')}/mlflow.db")
    elif scheme.split("+")[0] not in ("http", "https", *DATABASE_SCHEMES, "databricks"):
        raise UserError(f"tracking URI {safe_url(uri)!r} has an unknown scheme {scheme!r}; "
                        f"use sqlite:///path/mlflow.db or http(s)://host:port")
    return postgresql_driver(uri)


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a sqlite db (mlruns/artifacts); a tracking server decides for itself."""
    if urlparse(uri).scheme != "sqlite":
        return None
    return (sqlite_path(uri).resolve().parent / "artifacts").as_uri()


def artifact_root(uri=None) -> str | None:
    """Where the experiments of store `uri` (see resolve_tracking_uri) keep their artifacts:
    file:///.../mlruns/artifacts beside a sqlite db; None for a server, which decides."""
    return artifact_location(resolve_tracking_uri(uri))


def check_server(uri: str, timeout=5.0) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer.

    MLflow's own client retries for minutes; any HTTP answer, even an error
    status, proves the server is there.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    # any answer will do, so no credentials: urllib would take user:password@ for part of the host name
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    try:
        urllib.request.urlopen(bare.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"cannot reach the MLflow tracking server at {safe_url(uri)} ({one_line(reason)}); "
                        f"start it, or pass --tracking-uri / unset {TRACKING_URI_ENV} to use "
                        f"{DEFAULT_TRACKING_URI}") from None


def check_database(uri: str, timeout=CONNECT_TIMEOUT) -> None:
    """Fail fast, in one line, when a database tracking URI's server does not answer (MLflow
    retries for minutes), or its driver is missing."""
    if urlparse(uri).scheme.split("+")[0] not in DATABASE_SCHEMES:
        return
    import sqlalchemy

    connect_args = {"connect_timeout": int(timeout)} if uri.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
        try:
            engine.connect().close()
        finally:
            engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
        raise UserError(f"cannot use the MLflow store at {safe_url(uri)}: {safe_url(first_line(err))}; check "
                        f"--tracking-uri and that the database server is running") from None


# ---------------------------------------------------------------- a local store: checked, and made at once

def store_lock_path(uri: str) -> Path | None:
    """The lock file that serialises find-or-create across processes sharing a local sqlite store."""
    return sqlite_path(uri).parent / ".mlp_exp.lock" if urlparse(uri).scheme == "sqlite" else None


@contextlib.contextmanager
def store_lock(lock_path: Path | None):
    """Hold the store's lock file (no lock for a remote store, or where there is no fcntl)."""
    try:
        import fcntl
    except ImportError:         # not POSIX: rely on oldest-wins alone
        fcntl = None
    if lock_path is None or fcntl is None:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_store(uri=None, *, write: bool = True) -> str:
    """The resolved tracking URI, once the store it names can be used (a one-line UserError if not):
    a sqlite file that is MLflow's (or still to be made: write=True), whole, and writable (write=True),
    a server that answers. Creates nothing."""
    uri = resolve_tracking_uri(uri, create=False)
    if urlparse(uri).scheme == "sqlite":
        path = sqlite_path(uri)
        if check_sqlite_store(path, uri, "MLflow", flag="--tracking-uri", example=DEFAULT_TRACKING_URI,
                              write=write):
            _check_schema(path, uri)
    else:
        check_server(uri)
        check_database(uri)
    return uri


def sqlite_store_missing(uri: str) -> bool:
    """Whether `uri` is a local sqlite store whose file or tables are not there yet (opening it with
    MLflow would make them)."""
    if urlparse(uri).scheme != "sqlite":
        return False
    path = sqlite_path(uri)
    return not (path.is_file() and sqlite_tables(path))


def prepare_store(uri: str) -> None:
    """check_store(uri), then make a new sqlite store at once (see the module docstring).
    Call it holding store_lock(store_lock_path(uri)): the check and the move must not interleave."""
    check_store(uri)
    if sqlite_store_missing(uri):
        _create_sqlite_store(sqlite_path(uri))


def _create_sqlite_store(path: Path) -> None:
    mlflow = import_mlflow()
    for stale in path.parent.glob(f".{path.name}.new-*"):     # left by a process killed while making one
        stale.unlink(missing_ok=True)
    temporary = path.with_name(f".{path.name}.new-{os.getpid()}")
    uri = f"sqlite:///{temporary.resolve()}"
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)     # MLflow builds its schema on first use
        _forget_engine(uri)
        os.replace(temporary, path)
    finally:
        _forget_engine(uri)
        for leftover in (temporary, *(temporary.with_name(temporary.name + s) for s in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)


def _forget_engine(uri: str) -> None:
    """Close and forget the connections MLflow keeps to `uri` (it caches one engine per URI)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
    if engine is not None:
        engine.dispose()


def _schema_head() -> str | None:
    """The schema revision this MLflow makes and expects, or None if it cannot be told."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision
        return _get_latest_schema_revision()
    except Exception:           # private API: without it MLflow's own check is left to speak
        return None


def _check_schema(path: Path, uri: str) -> None:
    """A one-line UserError for a store a run interrupted while MLflow made or migrated its schema
    (before stores were made at once): MLflow can neither open nor finish it."""
    import sqlite3

    head = _schema_head()
    tables = sqlite_tables(path)
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        revision = (connection.execute("SELECT version_num FROM alembic_version").fetchone() or [None])[0] \
            if "alembic_version" in tables else None
        if head is None or (revision == head and not leftovers):
            return
        held = sum(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                   for table in ("runs", "registered_models") if table in tables)
        if "experiments" in tables:
            held += connection.execute("SELECT COUNT(*) FROM experiments WHERE experiment_id != 0").fetchone()[0]
    except sqlite3.DatabaseError:
        return                  # MLflow will say what is wrong
    finally:
        connection.close()
    if not held:
        raise UserError(f"the MLflow store {path} was left half made (a first run was interrupted while MLflow "
                        f"built its tables) and holds no runs: delete it (rm {path}) and run again")
    if leftovers:
        raise UserError(f"the MLflow store {path} was left half migrated (table {leftovers[0]} remains from an "
                        f"interrupted schema upgrade): back it up, then run `mlflow db upgrade {uri}`")


@contextlib.contextmanager
def store_errors(uri: str):
    """Turn a store that cannot be opened or queried into a one-line UserError."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        mlflow = import_mlflow()
        if not isinstance(err, (mlflow.exceptions.MlflowException, OSError, ImportError)) \
                and type(err).__module__.split(".")[0] != "sqlalchemy":
            raise
        raise UserError(f"cannot use the MLflow store at {safe_url(uri)}: {safe_url(one_line(err, 300))}") from err


def same_store(recorded: str, uri=None) -> bool:
    """Whether `uri` (resolved as resolve_tracking_uri does, creating nothing) is the store a study
    recorded, as safe_url(tracker.tracking_uri): sqlite files compared as paths from here, so the
    relative default and its absolute spelling are one store; other URIs as written, password hidden."""
    current = resolve_tracking_uri(uri, create=False)
    if recorded.startswith("sqlite:///") and current.startswith("sqlite:///"):
        return sqlite_path(recorded).resolve() == sqlite_path(current).resolve()
    return safe_url(current) == recorded


def filter_literal(value: str) -> str:
    """A search-filter string literal."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UserError(f"name {value!r} holds both kinds of quote; MLflow cannot search for it, rename it")

