"""Where the MLflow store is and whether it can be used: URIs, artifact roots, reachability.

A sqlite store keeps its artifacts beside the database (mlruns/mlflow.db and
mlruns/artifacts/); a tracking server decides for itself. `mlflow` is imported
on first use (`import_mlflow`), never at package import.
"""
from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError, one_line
from .names import DEFAULT_TRACKING_URI, TRACKING_URI_ENV


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
    elif scheme not in ("http", "https", "postgresql", "mysql", "mssql", "databricks"):
        raise UserError(f"tracking URI {uri!r} has an unknown scheme {scheme!r}; "
                        f"use sqlite:///path/mlflow.db or http(s)://host:port")
    return uri


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
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"cannot reach the MLflow tracking server at {uri} ({one_line(reason)}); "
                        f"start it, or pass --tracking-uri / unset {TRACKING_URI_ENV} to use "
                        f"{DEFAULT_TRACKING_URI}") from err


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
        raise UserError(f"cannot use the MLflow store at {uri}: {one_line(err, 300)}") from err



def filter_literal(value: str) -> str:
    """A search-filter string literal."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UserError(f"name {value!r} holds both kinds of quote; MLflow cannot search for it, rename it")

