"""What the reliability tests share: running the search CLI, an MLflow server, and the accounting.

The accounting rule a study must satisfy however it was interrupted:
- exactly `--trials` trials are COMPLETE or PRUNED, and none is left RUNNING or WAITING;
- every MLflow trial run (tag mlp_exp.role=trial) names, by tag optuna.trial_number, a
  trial of the study, no two runs name the same trial, and none is left RUNNING;
- every trial that trained (all but surplus trials and the never-started) has exactly one
  run, which its user attr `mlflow_run_id` names; a finished trial's run agrees with it
  (COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED or KILLED).
"""
from __future__ import annotations

import collections
import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import cli_env, free_port, run_cli
from mlp_exp.study import attrs


def sqlite_tables(path) -> set | None:
    """The table names of sqlite file `path`, read-only (None if there is no such file)."""
    import sqlite3
    if not Path(path).is_file():
        return None
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        connection.close()


def snapshot(root: Path, storage: str | None = None, tracking_uri: str | None = None) -> dict:
    """Everything stored under root, as comparable values: the Optuna trials of every study, the
    MLflow experiments, runs and registered models, the files, and each sqlite file's tables.
    The stores default to root's studies/optuna.db and mlruns/mlflow.db; a store whose sqlite file
    does not exist is None (reading it would create it)."""
    import mlflow
    import optuna
    from mlflow.entities import ViewType

    root = Path(root)
    storage = storage or f"sqlite:///{root}/studies/optuna.db"
    tracking_uri = tracking_uri or f"sqlite:///{root}/mlruns/mlflow.db"
    trials = experiments = runs = models = None
    if not storage.startswith("sqlite:///") or Path(storage[len("sqlite:///"):]).is_file():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            trials = {name: [(t.number, t.state.name, t.params, t.user_attrs, t.values, t.datetime_complete)
                             for t in load_study(storage, name).get_trials()]
                      for name in optuna.get_all_study_names(storage)}
        except RuntimeError as err:         # a schema this Optuna refuses to read: compare the bytes
            if "table schema" not in str(err):
                raise
            trials = hashlib.sha256(Path(storage[len("sqlite:///"):]).read_bytes()).hexdigest()
    if not tracking_uri.startswith("sqlite:///") or Path(tracking_uri[len("sqlite:///"):]).is_file():
        client = mlflow.MlflowClient(tracking_uri)
        found = client.search_experiments(view_type=ViewType.ALL)
        experiments = [(e.experiment_id, e.name, e.lifecycle_stage) for e in found]
        runs = sorted((r.info.run_id, r.info.status, r.info.end_time, sorted(r.data.tags.items()),
                       sorted(r.data.params.items()), sorted(r.data.metrics.items()))
                      for r in client.search_runs([e.experiment_id for e in found], run_view_type=ViewType.ALL,
                                                  max_results=1000))
        models = [(m.name, sorted(m.aliases or {})) for m in client.search_registered_models()]
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                   and not p.name.endswith(("-wal", "-shm", ".lock")))
    tables = {name: sorted(sqlite_tables(root / name)) for name in files if name.endswith(".db")}
    return {"trials": trials, "experiments": experiments, "runs": runs, "models": models, "files": files,
            "tables": tables}


def running(snap: dict) -> list:
    """What a snapshot holds RUNNING: Optuna trials and MLflow runs."""
    left = [(study, t[0]) for study, trials in (snap["trials"] or {}).items() for t in trials if t[1] == "RUNNING"]
    return left + [run[0] for run in snap["runs"] or [] if run[1] == "RUNNING"]


def assert_one_line_error(result, *expected, code=2):
    """The command failed with exit `code` and said why in one line, `error: ...`, holding each of `expected`."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]

STUDY = "cifar10-mlp"
TINY = ("--train-size", "200", "--val-size", "50", "--test-size", "50", "--max-epochs", "2",
        "--fixed", "hidden_size=8", "--data-dir", "data", "--quiet")
RUN_STATUS = {"COMPLETE": {"FINISHED"}, "PRUNED": {"KILLED"}, "FAIL": {"FAILED", "KILLED"}}


def tiny_settings(root, **overrides):
    """StudySettings of a TINY study whose stores and data (write_fake_cifar10) are under `root`."""
    from mlp_exp.study import StudySettings
    values = dict(storage=f"sqlite:///{root}/studies/optuna.db", tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db",
                  data_dir=str(Path(root) / "data"), train_size=200, val_size=50, test_size=50,
                  fixed={"hidden_size": 8}, quiet=True)
    return StudySettings(**{**values, **overrides})


def search_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "mlp_exp.search", *args]


def run_search(*args, cwd, timeout=600) -> subprocess.CompletedProcess:
    return run_cli("mlp_exp.search", *args, cwd=cwd, timeout=timeout)


def start_search(*args, cwd, log_name="worker", **env) -> subprocess.Popen:
    """A search in the background (cli_env plus `env`), its output in files under cwd (no pipe to fill up)."""
    out = open(Path(cwd) / f"{log_name}.out", "w")
    err = open(Path(cwd) / f"{log_name}.err", "w")
    return subprocess.Popen(search_cmd(*args), cwd=cwd, env=cli_env(**env), stdout=out, stderr=err)


def held_trials(hold_dir) -> dict:
    """{trial number: pid} of the trials mlp_exp.hold holds in `hold_dir` (start the search with
    MLP_EXP_HOLD_DIR=hold_dir): each has logged and reported its first epoch and waits there."""
    return {int(p.name.split("-", 1)[1]): int(p.read_text() or 0) for p in Path(hold_dir).glob("held-*")
            if p.name.split("-", 1)[1].isdigit()}         # held-finalize, held-evaluate: steps, not trials


def release_held_trials(hold_dir) -> None:
    (Path(hold_dir) / "release").touch()


def stderr_of(cwd, log_name="worker") -> str:
    return (Path(cwd) / f"{log_name}.err").read_text()


def load_study(storage: str, study: str = STUDY):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from mlp_exp.urls import postgresql_driver
    return optuna.load_study(study_name=study, storage=postgresql_driver(storage))


def trial_runs(tracking_uri: str, study: str = STUDY) -> list:
    import mlflow
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], "tags.`mlp_exp.role` = 'trial'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def wait_for(predicate, timeout: float, what: str, poll=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def account(storage: str, tracking_uri: str, target: int, study: str = STUDY) -> dict:
    """Check the accounting rule (module docstring); return the figures."""
    from optuna.trial import TrialState

    trials = load_study(storage, study).get_trials(deepcopy=False)
    runs = trial_runs(tracking_uri, study)
    states = collections.Counter(t.state.name for t in trials)
    by_number = {t.number: t for t in trials}
    runs_by_trial = collections.defaultdict(list)
    for run in runs:
        runs_by_trial[int(run.data.tags["optuna.trial_number"])].append(run)

    assert states["COMPLETE"] + states["PRUNED"] == target, states
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    orphans = sorted(n for n in runs_by_trial if n not in by_number)
    assert not orphans, f"runs of trials the study does not have: {orphans}"
    duplicates = {n: [r.info.run_id for r in rs] for n, rs in runs_by_trial.items() if len(rs) > 1}
    assert not duplicates, f"trials with more than one run: {duplicates}"
    still_running = [r.data.tags["optuna.trial_number"] for r in runs if r.info.status == "RUNNING"]
    assert not still_running, f"runs left RUNNING: trials {still_running}"
    for t in trials:
        run = runs_by_trial.get(t.number, [None])[0]
        trained = attrs.MLFLOW_RUN_ID in t.user_attrs
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            assert trained and run is not None, f"finished trial {t.number} has no run"
        if trained:
            assert run is not None and run.info.run_id == t.user_attrs[attrs.MLFLOW_RUN_ID], \
                f"trial {t.number}: user attr names run {t.user_attrs[attrs.MLFLOW_RUN_ID]}, found {run}"
        if run is not None:
            assert run.info.status in RUN_STATUS[t.state.name], \
                f"trial {t.number} is {t.state.name} but its run is {run.info.status}"
        if t.user_attrs.get(attrs.SURPLUS):
            assert run is None and t.state == TrialState.FAIL
    retries = [t for t in trials if attrs.RETRY_OF in t.user_attrs]
    return {"trials": len(trials), "states": dict(states), "runs": len(runs),
            "failed": states["FAIL"], "retries": len(retries),
            "surplus": sum(1 for t in trials if t.user_attrs.get(attrs.SURPLUS)),
            "run_statuses": dict(collections.Counter(r.info.status for r in runs))}


class MlflowServer:
    """`mlflow server` on 127.0.0.1 and a free port: sqlite backend and served artifacts in `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.root / "mlflow-server.log", "w")
        mlflow = Path(sys.executable).with_name("mlflow")
        self.process = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.root, env=cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
            stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_ready(self, timeout=120.0) -> "MlflowServer":
        def healthy():
            if self.process.poll() is not None:
                raise AssertionError(f"mlflow server exited: {(self.root / 'mlflow-server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        wait_for(healthy, timeout, "the MLflow server", poll=0.5)
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)     # the server and its uvicorn workers
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


# a small net that learns fake_cifar's classes in 3 epochs: the champion of the model-facing tests
CHAMPION_CONFIG = dict(hidden_size=16, num_epochs=3, learning_rate=1e-3, batch_size=50, train_size=300,
                       val_size=100, preprocessing="standardize", init_std=1e-2)


def fake_champion(root, study: str, model_name: str | None = None, num_test: int = 120, **config) -> dict:
    """A store in `root` whose champion (`model_name`, default the product's) was trained on fake
    CIFAR-10 (300 training rows, the next 100 for validation) and promoted as the search does.
    Returns root, uri, tracker, run_id, model_uri, promotion, result, pre, folder, label_names,
    X_test, y_test."""
    from fake_cifar import write_fake_cifar10
    from mlp_exp import data, preprocessing, tracking
    from mlp_exp.config import TrainConfig
    from mlp_exp.trainer import train

    root = Path(root)
    write_fake_cifar10(root / "data", per_batch=80, num_test=num_test)
    folder = data.ensure_cifar10(root / "data", download=False)
    X_train, y_train, X_test, y_test = data.load_cifar10_uint8(folder)
    config = TrainConfig(**{**CHAMPION_CONFIG, **config})
    pre = preprocessing.fit_preprocessor(X_train[:300], config.preprocessing)
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    tracker = tracking.Tracker(uri, study)
    tracker.study_run(study)
    run = tracker.start_trial(0, config)
    result = train(pre.apply(X_train[:300]), y_train[:300], pre.apply(X_train[300:400]), y_train[300:400],
                   config, callbacks=[run.log_epoch])
    label_names = data.load_label_names(folder)
    model_uri = run.log_model(result.best_params, pre, config, label_names)
    run.end("FINISHED", wait=True)
    promotion = tracker.promote(model_name or tracking.DEFAULT_MODEL_NAME, run.run_id, result.best_val_accuracy)
    assert promotion.became_champion
    return dict(root=root, uri=uri, tracker=tracker, run_id=run.run_id, model_uri=model_uri, promotion=promotion,
                result=result, pre=pre, folder=folder, label_names=label_names, X_test=X_test, y_test=y_test)
