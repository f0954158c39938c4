"""Many machines, simulated: separate `python -m mlp_exp.search` processes sharing one study through
a throwaway PostgreSQL and one `mlflow server`, both on 127.0.0.1, with faults injected.

The figures that must hold afterwards are stores.account's: exactly --trials finished trials,
every MLflow trial run mapped 1:1 to an Optuna trial, nothing left RUNNING; and one champion.
"""
import os
import signal
import time

import pytest

from fake_cifar import write_fake_cifar10
from pg import PostgresCluster
from stores import TINY, MlflowServer, account, held_trials, load_study, release_held_trials, run_search, \
    start_search, stderr_of, trial_runs, wait_for
from mlp_exp.study import attrs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_out")
    server = MlflowServer(root)            # starts slowly: meanwhile, PostgreSQL
    try:
        with PostgresCluster() as pg:
            server.wait_ready()
            yield pg, server
    finally:
        server.stop()


@pytest.fixture
def workdir(tmp_path):
    write_fake_cifar10(tmp_path / "data", per_batch=80, num_test=50)
    return tmp_path


def study_args(pg, server, name, trials, *extra):
    return ("--trials", str(trials), "--study-name", name, "--model-name", name,
            "--storage", pg.url, "--tracking-uri", server.url, *TINY, *extra)


def start_workers(args, cwd, count=3, **env):
    return [start_search(*args, cwd=cwd, log_name=f"worker{i}", **env) for i in range(count)]


def check_one_champion(server, name, storage):
    """The alias points at the best complete trial's run, registered once however many workers finalized."""
    import mlflow
    client = mlflow.MlflowClient(server.url)
    champion = client.get_model_version_by_alias(name, "champion")
    best = load_study(storage, name).best_trial
    assert champion.run_id == best.user_attrs[attrs.MLFLOW_RUN_ID]
    versions = client.search_model_versions(f"name = '{name}' AND run_id = '{champion.run_id}'")
    assert len(versions) == 1, [v.version for v in versions]


def test_three_workers_share_one_study(servers, workdir):
    pg, server = servers
    name, trials = "three-workers", 15
    workers = start_workers(study_args(pg, server, name, trials, "--heartbeat", "2"), workdir)
    codes = [w.wait(600) for w in workers]
    assert codes == [0, 0, 0], [stderr_of(workdir, f"worker{i}") for i in range(3)]
    for i in range(3):
        assert "Traceback" not in stderr_of(workdir, f"worker{i}")
    figures = account(pg.url, server.url, trials, study=name)
    assert figures["runs"] == figures["trials"] - figures["surplus"]
    ran = {t.user_attrs[attrs.WORKER] for t in load_study(pg.url, name).get_trials() if attrs.WORKER in t.user_attrs}
    assert len(ran) >= 2, ran                   # the work was shared
    check_one_champion(server, name, pg.url)


def test_kill_9_of_a_worker_and_a_database_restart_lose_nothing(servers, workdir):
    pg, server = servers
    name, trials = "faults", 24
    # trials of several epochs, each worker's held at its first (mlp_exp.hold); heartbeat 1 s: stale after 2 s
    args = study_args(pg, server, name, trials, "--max-epochs", "6", "--heartbeat", "1")
    hold_dir = workdir / "hold"
    hold_dir.mkdir()
    workers = start_workers(args, workdir, MLP_EXP_HOLD_DIR=str(hold_dir))
    try:
        held = wait_for(lambda: len(held_trials(hold_dir)) == len(workers) and held_trials(hold_dir), 180,
                        "every worker to hold a trial", poll=0.05)
        victim = next(t for t in load_study(pg.url, name).get_trials() if t.number == min(held))
        pid = held[victim.number]
        assert pid in [w.pid for w in workers]
        os.kill(pid, signal.SIGKILL)

        pg.stop("fast")                      # the database goes away under running trials ...
        time.sleep(4)                        # longer than the heartbeat grace period
        pg.start()                           # ... and comes back on the same port
        release_held_trials(hold_dir)
        for w in workers:
            w.wait(600)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    survivors = [i for i, w in enumerate(workers) if w.pid != pid]
    assert workers[[w.pid for w in workers].index(pid)].returncode == -signal.SIGKILL
    for i in survivors:
        err = stderr_of(workdir, f"worker{i}")
        if workers[i].returncode != 0:       # allowed: one clear line, and a re-run completes the study
            lines = err.strip().splitlines()
            assert workers[i].returncode == 2 and lines[-1].startswith("error: ") and "Traceback" not in err, err
    if not all(workers[i].returncode == 0 for i in survivors):
        again = run_search(*args, cwd=workdir)
        assert again.returncode == 0, again.stderr

    figures = account(pg.url, server.url, trials, study=name)
    trials_by_number = {t.number: t for t in load_study(pg.url, name).get_trials()}
    assert trials_by_number[victim.number].state.name == "FAIL"
    runs = {r.info.run_id: r for r in trial_runs(server.url, name)}
    assert runs[victim.user_attrs[attrs.MLFLOW_RUN_ID]].info.status == "FAILED"
    assert [t for t in trials_by_number.values() if t.user_attrs.get(attrs.RETRY_OF) == victim.number]
    assert figures["failed"] >= 1
    check_one_champion(server, name, pg.url)


def test_the_storage_waits_out_a_restart_and_gives_up_in_one_line_after_its_patience(servers):
    import threading

    import optuna
    from mlp_exp.study.storage import StorageLost, open_storage

    pg, _ = servers
    storage = open_storage(pg.url, heartbeat=1, patience=30)
    study = optuna.create_study(study_name="patience", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 1.0})
    pg.stop("fast")
    try:
        restart = threading.Timer(3, pg.start)
        restart.start()
        started = time.monotonic()
        assert len(study.get_trials()) == 1             # blocks until the database is back
        assert time.monotonic() - started >= 2.5
        restart.join()

        storage.patience = 2
        pg.stop("fast")
        with pytest.raises(StorageLost) as lost:
            study.get_trials()
        message = str(lost.value)
        assert "lost the Optuna storage" in message and "run the same command again to resume" in message
        assert "\n" not in message
    finally:
        if not pg.running():
            pg.start()
        pg.wait_ready()
