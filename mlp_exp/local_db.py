"""What a local SQLite file is, read without letting either tool open it: whose tables it holds,
and whether this process could write it.

MLflow and Optuna each add their tables to any database they are pointed at,
so an Optuna storage given as the tracking URI (or the reverse) would become
both. `check_sqlite_store` reads the file's table names with a read-only
sqlite3 connection first, and refuses a file of the other tool, of neither,
or no database at all, and a file or folder this process cannot write, each in
one line. Uses no framework.
"""
from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from .errors import UserError

SQLITE_HEADER = b"SQLite format 3\x00"
# tables only that tool makes (Optuna keeps an alembic_version table too)
SIGNATURES = {"MLflow": {"experiments", "runs", "metrics"}, "Optuna": {"studies", "version_info", "trials"}}
NOUNS = {"MLflow": "an MLflow store", "Optuna": "an Optuna storage"}


def sqlite_tables(path: Path) -> set[str]:
    """The table names of SQLite file `path`, read-only; a UserError if it is no SQLite database.

    A WAL database in a read-only folder cannot be opened read-only without its
    -shm file: it is then read as immutable (only the schema is read)."""
    path = Path(path)
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if not header:
        return set()                        # an empty file: a database with no tables yet
    if header != SQLITE_HEADER:
        raise UserError(f"{path} is not an SQLite database")
    for options in ("mode=ro", "mode=ro&immutable=1"):
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?{options}", uri=True)
            try:
                return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                connection.close()
        except sqlite3.DatabaseError as err:
            failure = err
    raise UserError(f"cannot read the SQLite database {path}: {failure}")


def owner(tables: set[str]) -> str | None:
    """"MLflow" or "Optuna" when `tables` hold that tool's, "both" or "neither" otherwise; None for no tables."""
    if not tables:
        return None
    found = [tool for tool, signature in SIGNATURES.items() if tables & signature]
    return found[0] if len(found) == 1 else ("both" if found else "neither")


def _writable(folder: Path) -> OSError | None:
    """None if a file can be created in `folder` (nothing is left there), else the error."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err
    return None


def check_sqlite_store(path, uri: str, tool: str, *, flag: str, example: str, write: bool = True) -> bool:
    """Whether `path` (the file of store `uri`) already is `tool`'s store (True) or is still to be
    made (False: no file, or an empty one); a one-line UserError when it is a folder, no SQLite
    database, another tool's (or neither's), or (write=True) cannot be written or created.

    `flag` and `example` (the option that names the store, a store to suggest) go into messages."""
    path = Path(path)
    noun = NOUNS[tool]
    if path.is_dir():
        raise UserError(f"{flag} {uri} is a folder; {flag} takes a database file, e.g. "
                        f"sqlite:///{path.as_posix().rstrip('/')}/{Path(example).name}")
    exists = path.is_file()
    if exists:
        try:
            tables = sqlite_tables(path)
        except UserError as err:
            raise UserError(f"{flag} {uri}: {err}; pass {noun}, e.g. {example}") from None
        found = owner(tables)
        if found not in (None, tool):
            what = {"both": "both MLflow's and Optuna's tables",
                    "neither": f"tables of neither MLflow nor Optuna ({', '.join(sorted(tables)[:3])}...)"}
            held = what.get(found, f"{found}'s tables")
            belongs = f"belongs to {found}" if found in SIGNATURES else "is not " + noun
            raise UserError(f"{flag} {uri} {belongs} (it holds {held}), not {tool}; pass {noun} there, "
                            f"e.g. {example}; {tool} would add its tables to that file")
    if write:
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent          # the folder is made on first use: check where it would be made
        problem, where = _writable(folder), f"the folder {folder}"
        if problem is None and exists:
            try:
                open(path, "r+b").close()       # opened for writing, nothing written
            except OSError as err:
                problem, where = err, f"its file {path}"
        if problem is not None:
            raise UserError(f"{flag} {uri}: {where} is not writable ({problem.strerror or problem}); "
                            f"make it writable, or pass {flag} a store in a writable folder")
    return exists and bool(tables)
