"""Hostile stores, names and signals (issue 16): every case ends in one line and an honest exit code,
changes nothing already stored and leaves nothing RUNNING.

A small study (two trials, --no-finalize: models but no champion) sits in a folder; each case runs
the real CLI against it, or against a copy or a fresh folder beside it, and compares snapshots of
both stores (stores.snapshot) before and after.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_cifar import write_fake_cifar10
from helpers import cli_env, free_port, run_cli
from stores import TINY, assert_one_line_error, load_study, run_search, running, snapshot, sqlite_tables
from mlp_exp.study import attrs

TRACKING = "sqlite:///mlruns/mlflow.db"
SEARCH = ("--trials", "3", *TINY)      # one trial more than the study has: a run that got through would add it
CLOSED_PORT = free_port()


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    write_fake_cifar10(root / "data", per_batch=80, num_test=50)
    (root / "afile").write_text("not a database")
    result = run_search("--trials", "2", *TINY, "--no-finalize", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def fresh_dir(tmp_path, study_dir) -> Path:
    """An empty folder holding only the study's data: a first run starts there."""
    (tmp_path / "data").symlink_to(study_dir / "data")
    return tmp_path


def popen(module, *args, cwd, logs, **env) -> subprocess.Popen:
    """`python -m module args` in the background, SIGINT at its default (a test run in the background
    of a shell inherits SIGINT ignored), its output in files in the folder `logs` (see output)."""
    out, err = open(Path(logs) / "out", "w"), open(Path(logs) / "err", "w")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(**env), stdout=out, stderr=err,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def output(logs) -> tuple[str, str]:
    return (Path(logs) / "out").read_text(), (Path(logs) / "err").read_text()


def poll(predicate, timeout: float, what: str, interval=0.01):
    deadline = time.monotonic() + timeout
    while (value := predicate()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value


def model_of(study_dir) -> str:
    """runs:/<id>/model of a trial of the study that logged a model."""
    trials = load_study(f"sqlite:///{study_dir}/studies/optuna.db").get_trials()
    return next(f"runs:/{t.user_attrs[attrs.MLFLOW_RUN_ID]}/model" for t in trials if t.user_attrs.get(attrs.HAS_MODEL))


# ------------------------------------------------- 5: a signal while the first run creates the store

def store_half_built(folder: Path):
    """A sqlite file in `folder` named like the MLflow store that MLflow is filling with tables, or None."""
    for path in folder.glob("*"):
        if "mlflow.db" in path.name and not path.name.endswith(("-journal", "-wal", "-shm")):
            try:
                tables = sqlite_tables(path) or set()
            except sqlite3.Error:
                continue
            if 15 <= len(tables) < 55:          # a complete store has 65
                return path
    return None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_first_run_creates_the_store_breaks_nothing(tmp_path, study_dir, signum):
    root = fresh_dir(tmp_path, study_dir)
    process = popen("mlp_exp.search", "--trials", "1", *TINY, "--no-finalize", cwd=root, logs=tmp_path)
    try:
        poll(lambda: store_half_built(root / "mlruns") if (root / "mlruns").is_dir() else None, 120,
             "MLflow to create its tables")
        process.send_signal(signum)
        code = process.wait(60)
    finally:
        process.kill()
    out, err = output(tmp_path)
    assert code == (130 if signum == signal.SIGINT else 143), err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    # nothing half-made is left: no store at all, or a whole one; no temporary file beside it
    assert sorted(p.name for p in (root / "mlruns").iterdir() if p.name != ".mlp_exp.lock") in ([], ["mlflow.db"])
    again = run_search("--trials", "1", *TINY, "--no-finalize", cwd=root)
    assert again.returncode == 0, again.stderr
    assert running(snapshot(root)) == []


def test_a_store_left_half_made_by_an_older_version_says_what_to_do(tmp_path, study_dir):
    """A first run interrupted before this fix left a store MLflow cannot open or finish: say so."""
    root = fresh_dir(tmp_path, study_dir)
    (root / "mlruns").mkdir()
    script = ("import mlflow, sys\n"
              "from sqlalchemy import event\nfrom sqlalchemy.engine import Engine\n"
              "@event.listens_for(Engine, 'before_cursor_execute')\n"
              "def stop(connection, cursor, statement, *args):\n"       # in the middle of a migration
              "    if statement.lstrip().startswith('CREATE TABLE _alembic_tmp_'): raise KeyboardInterrupt\n"
              "try:\n    mlflow.MlflowClient('sqlite:///mlruns/mlflow.db').search_experiments()\n"
              "except KeyboardInterrupt:\n    sys.exit(130)\n")
    made = subprocess.run([sys.executable, "-c", script], cwd=root, env=cli_env(), capture_output=True, text=True)
    assert made.returncode == 130, made.stderr
    unread = f"sqlite:///{root}/absent.db"          # MLflow cannot open the store: compare its files and tables
    before = snapshot(root, tracking_uri=unread)
    line = assert_one_line_error(run_search(*SEARCH, cwd=root), "mlruns/mlflow.db", "holds no runs", "delete it")
    assert snapshot(root, tracking_uri=unread) == before, line


def test_optuna_recovers_by_itself_from_a_first_run_interrupted_at_any_statement(tmp_path):
    """Optuna makes its tables with create_all and stamps the version last, so a storage interrupted
    between any two statements of its creation opens and works the next time: no fix needed there."""
    script = ("import optuna, sys\nfrom sqlalchemy import event\nfrom sqlalchemy.engine import Engine\n"
              "optuna.logging.set_verbosity(optuna.logging.ERROR)\n"
              "stop_at, count = int(sys.argv[2]), [0]\n"
              "@event.listens_for(Engine, 'before_cursor_execute')\n"
              "def stop(*args):\n"
              "    count[0] += 1\n"
              "    if count[0] == stop_at: raise KeyboardInterrupt\n"
              "try:\n"
              "    optuna.create_study(study_name='s', storage=optuna.storages.RDBStorage(sys.argv[1]),\n"
              "                        load_if_exists=True)\n"
              "except KeyboardInterrupt:\n    sys.exit(130)\n"
              "print(count[0])\n")
    whole = subprocess.run([sys.executable, "-c", script, f"sqlite:///{tmp_path}/whole.db", "0"],
                           capture_output=True, text=True, env=cli_env())
    statements = int(whole.stdout)
    for stop_at in range(1, statements, 4):
        url = f"sqlite:///{tmp_path}/cut{stop_at}.db"
        cut = subprocess.run([sys.executable, "-c", script, url, str(stop_at)], capture_output=True, text=True,
                             env=cli_env())
        assert cut.returncode == 130, cut.stderr
        reopened = subprocess.run([sys.executable, "-c", script, url, "0"], capture_output=True, text=True,
                                  env=cli_env())
        assert reopened.returncode == 0, (stop_at, reopened.stderr[-500:])


# ------------------------------------------------- 7: names and stores checked before anything

BEFORE_ANYTHING = {
    "model name with a slash": (("--model-name", "team/model"), "--model-name 'team/model'", "'/'"),
    "model name with a colon": (("--model-name", "team:model"), "--model-name 'team:model'", "':'"),
    "model name blank": (("--model-name", " "), "--model-name"),
    "study name with both quotes": (("--study-name", "it's \"mine\""), "--study-name", "both kinds of quote"),
    "study name too long": (("--study-name", "s" * 501), "--study-name", "500"),
    "study name ending in a backslash": (("--study-name", "run\\"), "--study-name", "backslash"),
    "model name with a backslash": (("--model-name", "team\\model"), "--model-name", "backslash"),
    "model name that is a relative path": (("--model-name", "..v2"), "--model-name '..v2'", "relative path"),
    "model name that is a dot": (("--model-name", "."), "--model-name '.'", "relative path"),
    "tracking URI at the Optuna storage": (("--tracking-uri", "sqlite:///studies/optuna.db"),
                                           "studies/optuna.db", "belongs to Optuna", "--tracking-uri"),
    "storage at the MLflow store": (("--storage", "sqlite:///mlruns/mlflow.db"),
                                    "mlruns/mlflow.db", "belongs to MLflow", "--storage"),
    "tracking URI at a file that is no database": (("--tracking-uri", "sqlite:///afile"), "afile",
                                                   "not an SQLite database"),
    "storage at a file that is no database": (("--storage", "sqlite:///afile"), "afile", "not an SQLite database"),
    "tracking URI is a folder": (("--tracking-uri", "sqlite:///mlruns"), "is a folder", "mlruns/mlflow.db"),
}


@pytest.mark.parametrize("case", list(BEFORE_ANYTHING))
def test_bad_names_and_stores_are_refused_before_anything_is_written(study_dir, case):
    args, *expected = BEFORE_ANYTHING[case]
    before = snapshot(study_dir)
    started = time.monotonic()
    assert_one_line_error(run_cli("mlp_exp.search", *SEARCH, *args, cwd=study_dir, timeout=90), *expected)
    assert time.monotonic() - started < 30          # no retrying, no trial trained first
    after = snapshot(study_dir)
    assert after == before and running(after) == []


OTHER_COMMANDS = {
    "evaluate at the Optuna storage": ("mlp_exp.evaluate", "--tracking-uri", "sqlite:///studies/optuna.db"),
    "report at the Optuna storage": ("mlp_exp.report", "--tracking-uri", "sqlite:///studies/optuna.db"),
    "report with the MLflow store as storage": ("mlp_exp.report", "--storage", "sqlite:///mlruns/mlflow.db"),
    "ui at the Optuna storage": ("mlp_exp.ui", "--tracking-uri", "sqlite:///studies/optuna.db",
                                 "--port", str(CLOSED_PORT)),
}


@pytest.mark.parametrize("case", list(OTHER_COMMANDS))
def test_every_command_refuses_the_other_tools_file(study_dir, case):
    module, *args = OTHER_COMMANDS[case]
    before = snapshot(study_dir)
    assert_one_line_error(run_cli(module, *args, cwd=study_dir, timeout=120), "belongs to")
    assert snapshot(study_dir) == before


@pytest.fixture
def optuna_of_another_version(tmp_path, study_dir):
    def make(revision):
        shutil.copy(study_dir / "studies" / "optuna.db", tmp_path / "optuna.db")
        with sqlite3.connect(tmp_path / "optuna.db") as connection:
            connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        return f"sqlite:///{tmp_path}/optuna.db"
    return make


@pytest.mark.parametrize("revision, expected", [("v3.0.0.d", "optuna storage upgrade"),
                                                ("v99.0.0.a", "newer Optuna")])
def test_an_optuna_storage_of_another_version_is_one_line(study_dir, optuna_of_another_version, revision,
                                                          expected):
    storage = optuna_of_another_version(revision)
    before = snapshot(study_dir), snapshot(study_dir, storage=storage)
    assert_one_line_error(run_cli("mlp_exp.search", *SEARCH, "--storage", storage, cwd=study_dir), expected)
    assert (snapshot(study_dir), snapshot(study_dir, storage=storage)) == before


@pytest.fixture
def readonly(tmp_path):
    """A tmpfs folder (made read-only by calling the result); skips where tmpfs cannot be mounted."""
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")

    def seal():
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    yield mount, seal
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_read_only_stores_are_one_line(study_dir, readonly):
    mount, seal = readonly
    for name in ("studies", "mlruns", "data"):
        shutil.copytree(study_dir / name, mount / name)
    seal()
    before = snapshot(mount)
    line = assert_one_line_error(run_cli("mlp_exp.search", *SEARCH, cwd=mount), "not writable")
    assert "optuna.db" in line or "mlflow.db" in line
    assert snapshot(mount) == before
    # scoring a model in a read-only store works, logging the evaluation there is refused up front
    evaluate = ("mlp_exp.evaluate", "--model-uri", model_of(study_dir), "--data-dir", "data")
    assert_one_line_error(run_cli(*evaluate, cwd=mount), "not writable", "--no-log")
    scored = run_cli(*evaluate, "--no-log", cwd=mount)
    assert scored.returncode == 0, scored.stderr
    assert snapshot(mount) == before
    # and so for the report: logging it to the parent run is refused up front, --no-log only reads
    out = mount.parent / "report-out"
    assert_one_line_error(run_cli("mlp_exp.report", "--out", str(out), cwd=mount), "not writable", "--no-log")
    reported = run_cli("mlp_exp.report", "--out", str(out), "--no-log", cwd=mount)
    assert reported.returncode == 0, reported.stderr
    assert (out / "trials.csv").is_file() and "no MLflow runs" not in reported.stderr
    assert snapshot(mount) == before


@pytest.mark.parametrize("flag", ["--tracking-uri", "--storage"])
def test_a_store_in_a_folder_that_is_not_writable_is_one_line(tmp_path, study_dir, readonly, flag):
    mount, seal = readonly
    seal()
    root = fresh_dir(tmp_path, study_dir)
    uri = f"sqlite:///{mount}/{'mlflow' if flag == '--tracking-uri' else 'optuna'}.db"
    assert_one_line_error(run_cli("mlp_exp.search", *SEARCH, flag, uri, cwd=root), str(mount), "not writable")
    assert not (root / "mlruns").exists() and not (root / "studies").exists()


def test_a_truncated_model_file_is_one_line(study_dir):
    model = model_of(study_dir)
    weights = sorted((study_dir / "mlruns" / "artifacts").rglob("weights.npz"))
    saved = {path: path.read_bytes() for path in weights}
    before = snapshot(study_dir)
    try:
        for path, content in saved.items():
            path.write_bytes(content[:len(content) // 2])
        result = run_cli("mlp_exp.evaluate", "--model-uri", model, "--data-dir", "data", cwd=study_dir)
    finally:
        for path, content in saved.items():
            path.write_bytes(content)
    assert_one_line_error(result, model, "damaged")
    assert snapshot(study_dir) == before


def test_report_out_at_a_file_is_one_line(study_dir):
    before = snapshot(study_dir)
    assert_one_line_error(run_cli("mlp_exp.report", "--out", "afile", cwd=study_dir), "--out afile", "not a folder")
    assert snapshot(study_dir) == before


# ------------------------------------------------- 9: no credential printed, logged or on a command line

SECRET = "hunter2secret"


@pytest.mark.parametrize("uri, expected", [
    (f"http://mlp:{SECRET}@127.0.0.1:{CLOSED_PORT}", "cannot reach the MLflow tracking server"),
    (f"https://mlp:{SECRET}@127.0.0.1:{CLOSED_PORT}/mlflow", "cannot reach the MLflow tracking server"),
    (f"postgresql://mlp:{SECRET}@127.0.0.1:{CLOSED_PORT}/mlflow", "Connection refused"),
])
def test_a_password_in_the_tracking_uri_is_never_printed(study_dir, uri, expected):
    before = snapshot(study_dir)
    started = time.monotonic()
    line = assert_one_line_error(run_cli("mlp_exp.search", *SEARCH, "--tracking-uri", uri, cwd=study_dir),
                                 expected, "mlp:***@127.0.0.1")
    assert SECRET not in line and "No module named" not in line
    assert time.monotonic() - started < 60
    assert snapshot(study_dir) == before


@pytest.fixture(scope="module")
def postgres():
    from pg import PostgresCluster
    with PostgresCluster() as cluster:
        yield cluster


def postgres_uri(postgres, database="postgres") -> str:
    """The cluster's URL with a password in it (trust auth ignores it)."""
    return f"postgresql://postgres:{SECRET}@127.0.0.1:{postgres.port}/{database}"


@pytest.fixture(scope="module")
def postgres_search(postgres, tmp_path_factory, study_dir):
    """A search tracked in PostgreSQL through a tracking URI with a password."""
    root = tmp_path_factory.mktemp("pg_search")
    (root / "data").symlink_to(study_dir / "data")
    uri = postgres_uri(postgres)
    result = run_search("--trials", "2", *TINY, "--no-finalize", "--tracking-uri", uri, cwd=root)
    return root, uri, result


def test_a_postgresql_tracking_uri_works_and_its_password_is_stored_nowhere(postgres_search):
    root, uri, result = postgres_search
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stderr
    assert SECRET not in result.stdout
    snap = snapshot(root, tracking_uri=uri.replace("postgresql://", "postgresql+psycopg2://"))
    assert snap["runs"] and SECRET not in repr(snap)
    study = load_study(f"sqlite:///{root}/studies/optuna.db")
    assert SECRET not in repr((study.user_attrs, [(t.user_attrs, t.system_attrs) for t in study.get_trials()]))
    assert running(snap) == []


def test_the_end_of_study_hint_hides_the_password(postgres, tmp_path, study_dir):
    root = fresh_dir(tmp_path, study_dir)
    import psycopg2
    connection = psycopg2.connect(f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres")
    try:
        connection.autocommit = True        # CREATE DATABASE runs outside a transaction only
        connection.cursor().execute("CREATE DATABASE hint")
    finally:
        connection.close()
    result = run_search("--trials", "1", *TINY, "--tracking-uri", postgres_uri(postgres, "hint"), cwd=root)
    assert result.returncode == 0, result.stderr
    assert "mlflow ui --backend-store-uri postgresql+psycopg2://postgres:***@" in result.stdout
    assert SECRET not in result.stdout


def command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        try:
            lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return lines


def test_the_ui_keeps_the_password_off_its_banner_and_every_command_line(postgres, postgres_search):
    root, uri, _ = postgres_search
    port = free_port()
    logs = root / "ui-logs"
    logs.mkdir()
    # the URI comes from the environment, as a careful user passes a secret: then no command line has it
    process = popen("mlp_exp.ui", "--port", str(port), cwd=root, logs=logs, MLFLOW_TRACKING_URI=uri)
    try:
        poll(lambda: True if "MLflow UI:" in output(logs)[0] else None, 120, "the UI's banner", 0.2)
        assert not [line for line in command_lines() if SECRET in line]
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    finally:
        process.kill()
        for pid in server_processes(port):      # a failed assertion above must not leave the server running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    out, err = output(logs)
    assert code == 130 and "Traceback" not in err, err
    assert "postgres:***@" in out and SECRET not in out + err


# ------------------------------------------------- 8 and the small ones

def test_ctrl_c_while_evaluate_loads_exits_130_without_a_traceback(study_dir, tmp_path):
    before = snapshot(study_dir)
    process = popen("mlp_exp.evaluate", "--model-uri", model_of(study_dir), "--data-dir", "data",
                    cwd=study_dir, logs=tmp_path)

    def store_open():
        try:
            return True if any("mlflow.db" in os.readlink(fd) for fd in Path(f"/proc/{process.pid}/fd").iterdir()) \
                else None
        except OSError:
            return None
    try:
        poll(store_open, 120, "evaluate to open the store")
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    finally:
        process.kill()
    out, err = output(tmp_path)
    assert code == 130, (code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    assert snapshot(study_dir) == before


def test_ui_with_a_host_that_does_not_resolve_says_so(study_dir):
    assert_one_line_error(run_cli("mlp_exp.ui", "--host", "no.such.host.invalid", cwd=study_dir, timeout=120),
                          "no.such.host.invalid", "cannot be resolved")


def server_processes(port: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            line = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in line and str(port).encode() in line and entry.name.isdigit():
            found.append(int(entry.name))
    return found


def test_ctrl_c_while_the_ui_starts_stops_its_server(study_dir, tmp_path):
    port = free_port()
    process = popen("mlp_exp.ui", "--port", str(port), cwd=study_dir, logs=tmp_path)
    try:
        poll(lambda: server_processes(port) or None, 60, "the mlflow server to start", 0.05)
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
        out, err = output(tmp_path)
        assert code == 130 and "Traceback" not in err, (code, err)
        left = poll(lambda: [] if not server_processes(port) else None, 30, "the mlflow server to stop", 0.2)
        assert left == []
    finally:
        process.kill()
        for pid in server_processes(port):
            os.killpg(pid, signal.SIGKILL)


def test_a_copied_store_warns_that_its_artifacts_go_to_the_original(tmp_path, study_dir):
    copy = tmp_path / "copy"
    for name in ("studies", "mlruns"):
        shutil.copytree(study_dir / name, copy / name)
    (copy / "data").symlink_to(study_dir / "data")
    result = run_search(*SEARCH, "--no-finalize", cwd=copy)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(study_dir / "mlruns" / "artifacts") in lines[0], result.stderr
    assert "copied" in lines[0]
