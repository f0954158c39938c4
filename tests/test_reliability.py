"""A search survives what an hour-long run meets: kill -9, Ctrl-C, SIGTERM, exploding learning
rates and many workers on one SQLite file, without losing a finished trial or leaving MLflow lying.

Everything runs through the real CLI on tiny fake data; see stores.account for the rule checked.
"""
import os
import signal
import sys
import time

import pytest

from fake_cifar import write_fake_cifar10
from stores import TINY, account, held_trials, load_study, run_search, start_search, \
    stderr_of, tiny_settings, trial_runs, wait_for
from mlp_exp.study import attrs

STORAGE = "sqlite:///studies/optuna.db"
TRACKING = "sqlite:///mlruns/mlflow.db"
# trials of more than one epoch, so a held trial is mid-trial; heartbeat 1 s: stale after 2 s
LONG = (*TINY, "--max-epochs", "4", "--heartbeat", "1")


@pytest.fixture
def study_dir(tmp_path):
    write_fake_cifar10(tmp_path / "data", per_batch=80, num_test=50)
    return tmp_path


def uris(root):
    return f"sqlite:///{root}/studies/optuna.db", f"sqlite:///{root}/mlruns/mlflow.db"


def interrupt_mid_trial(root, sig, *args):
    """Start a search, send `sig` once a trial after the baseline has trained an epoch (mlp_exp.hold
    holds it there, so no timing decides what the signal hits); return (process, trial)."""
    storage, _ = uris(root)
    hold_dir = root / f"hold-{time.monotonic_ns()}"
    hold_dir.mkdir()
    process = start_search(*args, cwd=root, MLP_EXP_HOLD_DIR=str(hold_dir))
    try:
        held = wait_for(lambda: held_trials(hold_dir) if process.poll() is None else "exited", 180,
                        "a trial held at its first epoch", poll=0.05)
        assert held != "exited", stderr_of(root)
        trial = next(t for t in load_study(storage).get_trials() if t.number == min(held))
        os.kill(process.pid, sig)
        process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
    return process, trial


@pytest.mark.slow
def test_kill_9_mid_trial_then_the_same_command_resumes(study_dir):
    args = ("--trials", "4", *LONG)
    process, victim = interrupt_mid_trial(study_dir, signal.SIGKILL, *args)
    assert process.returncode == -signal.SIGKILL
    storage, tracking = uris(study_dir)
    runs = {r.info.run_id: r for r in trial_runs(tracking)}
    assert runs[victim.user_attrs[attrs.MLFLOW_RUN_ID]].info.status == "RUNNING"     # what kill -9 leaves

    resumed = run_search(*args, cwd=study_dir)
    assert resumed.returncode == 0, resumed.stderr
    figures = account(storage, tracking, target=4)
    trials = {t.number: t for t in load_study(storage).get_trials()}
    assert trials[victim.number].state.name == "FAIL"
    run = {r.info.run_id: r for r in trial_runs(tracking)}[victim.user_attrs[attrs.MLFLOW_RUN_ID]]
    assert run.info.status == "FAILED" and "heartbeats" in run.data.tags["error"]
    retries = [t for t in trials.values() if t.user_attrs.get(attrs.RETRY_OF) == victim.number]
    assert len(retries) == 1, figures
    retry = retries[0]
    assert retry.number > victim.number and retry.state.name in ("COMPLETE", "PRUNED")
    assert retry.params == victim.params                  # the same configuration, run again
    assert retry.system_attrs["failed_trial"] == victim.number
    assert attrs.HAS_MODEL not in retry.user_attrs or retry.state.name == "COMPLETE"


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_close_the_trial_and_say_how_to_resume(study_dir, sig, code, word):
    args = ("--trials", "4", *LONG)
    process, victim = interrupt_mid_trial(study_dir, sig, *args)
    assert process.returncode == code
    lines = stderr_of(study_dir).strip().splitlines()
    assert lines == [f"{word}: study 'cifar10-mlp' saved with 1 of 4 trials finished; "
                     "run the same command again to resume"], lines
    storage, tracking = uris(study_dir)
    trials = {t.number: t for t in load_study(storage).get_trials()}
    assert trials[victim.number].state.name == "FAIL"
    runs = trial_runs(tracking)
    run = next(r for r in runs if r.info.run_id == victim.user_attrs[attrs.MLFLOW_RUN_ID])
    assert run.info.status == "KILLED" and run.data.tags["stop_reason"] == "interrupted"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    waiting = [t for t in trials.values() if t.state.name == "WAITING"]
    assert [t.user_attrs[attrs.RETRY_OF] for t in waiting] == [victim.number]     # queued to run again
    assert waiting[0].params == victim.params

    if sig == signal.SIGINT:        # resuming once is enough
        resumed = run_search(*args, cwd=study_dir)
        assert resumed.returncode == 0, resumed.stderr
        account(storage, tracking, target=4)


def test_a_diverging_trial_is_pruned_and_tagged_and_the_study_goes_on(study_dir):
    result = run_search("--trials", "3", *TINY, "--max-epochs", "3", "--fixed", "learning_rate=1e6",
                        cwd=study_dir)
    assert result.returncode == 0, result.stderr
    storage, tracking = uris(study_dir)
    account(storage, tracking, target=3)
    trials = load_study(storage).get_trials()
    diverged = [t for t in trials if attrs.DIVERGED_AT_EPOCH in t.user_attrs]
    assert diverged, [(t.number, t.state.name, t.intermediate_values) for t in trials]
    runs = {r.info.run_id: r for r in trial_runs(tracking)}
    for t in diverged:
        epoch = t.user_attrs[attrs.DIVERGED_AT_EPOCH]
        assert t.state.name == "PRUNED" and epoch < 3         # stopped at once, not at the last epoch
        tags = runs[t.user_attrs[attrs.MLFLOW_RUN_ID]].data.tags
        assert tags["diverged"] == "true" and tags["stop_reason"] == "diverged"
        assert tags["pruned_at_epoch"] == str(epoch)


@pytest.mark.slow
def test_soak_200_trials_over_4_workers_on_one_sqlite_file(study_dir):
    result = run_search("--trials", "200", *TINY, "--workers", "4", "--heartbeat", "2", cwd=study_dir,
                        timeout=900)
    assert result.returncode == 0, result.stderr
    assert "locked" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    storage, tracking = uris(study_dir)
    figures = account(storage, tracking, target=200)
    assert figures["runs"] == figures["trials"] - figures["surplus"]
    workers = {t.user_attrs[attrs.WORKER] for t in load_study(storage).get_trials() if attrs.WORKER in t.user_attrs}
    assert len(workers) == 4, workers
    assert "promoted:" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the spawned worker through /proc")
def test_ctrl_c_reaches_every_worker_and_sigkill_of_the_parent_stops_them(study_dir):
    args = ("--trials", "6", *LONG, "--workers", "2")
    process, _ = interrupt_mid_trial(study_dir, signal.SIGINT, *args)
    assert process.returncode == 130
    lines = stderr_of(study_dir).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), lines     # one line, not one per worker
    storage, tracking = uris(study_dir)
    states = [t.state.name for t in load_study(storage).get_trials()]
    assert "RUNNING" not in states
    assert not [r for r in trial_runs(tracking) if r.info.status == "RUNNING"]

    # the parent killed outright: its spawned worker notices, closes its trial and stops
    process, _ = interrupt_mid_trial(study_dir, signal.SIGKILL, *args)
    wait_for(lambda: not _spawned_workers(study_dir), 60, "the spawned worker to stop")
    assert "RUNNING" not in [t.state.name for t in load_study(storage).get_trials()
                             if attrs.WORKER in t.user_attrs and not t.user_attrs[attrs.WORKER].endswith(
                                 f":{process.pid}")]
    resumed = run_search(*args, cwd=study_dir)
    assert resumed.returncode == 0, resumed.stderr
    account(storage, tracking, target=6)


def _spawned_workers(root):
    """Pids of spawned search workers (flag --parent-pid) running in `root`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            if b"--parent-pid" in cmdline and os.readlink(f"/proc/{entry}/cwd") == str(root):
                found.append(int(entry))
        except (OSError, ValueError):
            pass
    return found


# ---------------------------------------------------------------- in process: the rare races

@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_retried(tmp_path):
    """Killed between taking a trial and its first heartbeat: without a heartbeat Optuna never calls
    the trial stale, and the workers would wait for it for ever."""
    import optuna
    from mlp_exp.study.storage import open_storage

    failed = []
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat=1,
                                  on_stale=lambda study, trial: failed.append(trial.number))
    study = optuna.create_study(storage=storage, direction="maximize")
    orphan = study.ask()                    # RUNNING, and no heartbeat thread ever started
    optuna.storages.fail_stale_trials(study)        # gives it a heartbeat on its behalf ...
    assert failed == [] and study.get_trials()[0].state.name == "RUNNING"
    wait_for(lambda: optuna.storages.fail_stale_trials(study) or failed, 10, "the orphan to go stale")
    assert failed == [orphan.number]        # ... so it goes stale after the grace period
    assert study.get_trials()[0].state.name == "FAIL"


def test_a_live_trial_failed_by_a_peer_ends_failed_in_both_stores_and_the_study_goes_on(study_dir):
    """A worker whose heartbeats did not get through (its database connection was down) keeps
    training while a peer fails its trial, here after its last report: its run, already
    FINISHED, must end FAILED, and the worker must carry on rather than crash on Optuna's
    refusal to record the outcome."""
    from optuna.trial import TrialState
    from mlp_exp.study import open_session
    from mlp_exp.study.objective import Objective
    from mlp_exp.study.workers import run_worker

    session = open_session(tiny_settings(study_dir, trials=3, max_epochs=3, heartbeat=1, pruner="none"))
    settings, study, storage, tracker = session.settings, session.study, session.storage, session.tracker
    victims = []

    def peer_fails_the_trial(stats):        # what fail_stale_trials in another worker does
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not victims and running and running[0].number == 1 and stats.epoch == 3:
            victims.append(running[0].number)
            storage.set_trial_state_values(running[0]._trial_id, TrialState.FAIL)

    objective = Objective(settings, session.split, tracker, extra_callbacks=[peer_fails_the_trial])
    assert run_worker(study, objective, settings) == "done"
    tracker.end_study()
    assert victims == [1]
    figures = account(settings.storage, settings.tracking_uri, target=3)
    assert figures["failed"] == 1
    run = next(r for r in trial_runs(settings.tracking_uri) if r.data.tags["optuna.trial_number"] == "1")
    assert run.info.status == "FAILED" and "failed by a peer" in run.data.tags["error"]


@pytest.mark.parametrize("max_epochs, expected", [(5, ("PRUNED", 1)), (2, ("COMPLETE", 2))])
def test_the_pruner_cuts_only_a_reduction_factor_short_of_the_last_epoch(study_dir, max_epochs, expected):
    """With a pruner that always says prune, a trial of 5 epochs stops after epoch 1 (1 x 3 <= 5);
    one of 2 epochs runs to the end, as cutting within a factor 3 of the end saves too little."""
    import optuna
    from mlp_exp.study import open_session
    from mlp_exp.study.objective import Objective

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    session = open_session(tiny_settings(study_dir, trials=1, max_epochs=max_epochs))
    study = optuna.create_study(storage=session.storage, pruner=AlwaysPrune(), direction="maximize")
    study.optimize(Objective(session.settings, session.split, session.tracker), n_trials=1)
    session.tracker.end_study()
    trial = study.trials[0]
    assert (trial.state.name, max(trial.intermediate_values)) == expected


def test_an_interrupt_is_raised_at_once_in_computation_and_held_back_elsewhere():
    from mlp_exp.interrupts import Interrupts, Terminated

    interrupts = Interrupts()
    with interrupts:
        reached = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts.interruptible():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)                   # the signal ends it at once
                reached.append("after the sleep")
        assert reached == []
    interrupts = Interrupts()
    with interrupts:
        write = interrupts.deferring(lambda: (os.kill(os.getpid(), signal.SIGTERM), reached.append("written")))
        with pytest.raises(Terminated):
            with interrupts.interruptible():
                write()                         # as an epoch's callbacks: finished, then stopped
                reached.append("after the write")
        assert reached == ["written"]
        os.kill(os.getpid(), signal.SIGINT)     # outside interruptible blocks: only noted ...
        reached.append("went on")
        with pytest.raises(Terminated):     # ... and the first interrupt is raised at every check
            interrupts.check()
    assert reached == ["written", "went on"]


def test_a_ctrl_c_ignored_by_the_parent_stays_ignored_and_sigterm_still_stops(study_dir):
    """A shell without job control (a script's `search ... &`) starts its background jobs with SIGINT
    ignored, so that a Ctrl-C meant for the script does not reach them: the search keeps it ignored,
    as Python itself does, and SIGTERM still closes its trial."""
    import subprocess
    from stores import cli_env, search_cmd
    hold_dir = study_dir / "hold"
    hold_dir.mkdir()
    with open(study_dir / "worker.out", "w") as out, open(study_dir / "worker.err", "w") as err:
        process = subprocess.Popen(search_cmd("--trials", "4", *LONG), cwd=study_dir,
                                   env=cli_env(MLP_EXP_HOLD_DIR=str(hold_dir)), stdout=out, stderr=err,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        held = wait_for(lambda: held_trials(hold_dir) if process.poll() is None else "exited", 180,
                        "a trial held at its first epoch", poll=0.05)
        assert held != "exited", stderr_of(study_dir)
        os.kill(process.pid, signal.SIGINT)
        time.sleep(2)
        assert process.poll() is None, "an ignored Ctrl-C stopped the search: " + stderr_of(study_dir)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(120) == 143, stderr_of(study_dir)
    finally:
        if process.poll() is None:
            process.kill()
    assert stderr_of(study_dir).strip().splitlines() == [
        "terminated: study 'cifar10-mlp' saved with 1 of 4 trials finished; run the same command again to resume"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("later_block", [True, False], ids=["then an Interrupts block", "then nothing"])
def test_a_signal_python_drops_in_garbage_collection_still_stops_the_command(capsys, sig, code, later_block):
    """A signal that lands in a __del__ or weakref callback is dropped by Python ("Exception ignored
    in ..."): CI saw a search Ctrl-C'd while MLflow created its store exit 0, and a spawned worker
    train on while its parent waited. The command remembers it (CommandSignals): a later Interrupts
    block raises it at its first check, and the command exits as stopped either way."""
    from mlp_exp import cli
    from mlp_exp.interrupts import Interrupts

    class SignalsWhenCollected:
        def __del__(self):
            os.kill(os.getpid(), sig)
            time.sleep(1)           # the handler runs here, inside __del__, and its exception is dropped

    reached = []

    def main(argv):
        SignalsWhenCollected()      # collected at once
        reached.append("carried on")
        if later_block:
            with Interrupts() as interrupts:
                interrupts.check()
                reached.append("checked")

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.run(main, []) == code
    assert reached == ["carried on"]
    assert "Exception ignored" not in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers   # put back


def test_ctrl_c_while_an_epoch_is_being_recorded_stops_the_trial_after_the_write(study_dir):
    """A Ctrl-C that lands inside a database write (here: the Optuna row of an epoch's validation
    accuracy) is raised after the epoch's callbacks, not inside the transaction. Raised inside one,
    it can leave the process holding the database's write lock while the cleanup after the interrupt
    waits for the logging thread, which needs that lock: CI hung on exactly that."""
    import sqlite3
    import sqlalchemy
    from mlp_exp.study import open_session
    from mlp_exp.study.objective import Objective
    from mlp_exp.study.workers import run_worker

    session = open_session(tiny_settings(study_dir, trials=2, max_epochs=6, pruner="none"))
    settings, study, storage, interrupts = session.settings, session.study, session.storage, session.interrupts
    inserts = []

    def ctrl_c_inside_the_third_epochs_insert(connection, cursor, statement, *_):
        if statement.startswith("INSERT INTO trial_intermediate_values"):
            inserts.append(statement)
            if len(inserts) == 3:
                os.kill(os.getpid(), signal.SIGINT)

    sqlalchemy.event.listen(storage.engine, "after_cursor_execute", ctrl_c_inside_the_third_epochs_insert)
    objective = Objective(settings, session.split, session.tracker, interrupts=interrupts)
    with pytest.raises(KeyboardInterrupt):
        with interrupts:
            run_worker(study, objective, settings)
    sqlalchemy.event.remove(storage.engine, "after_cursor_execute", ctrl_c_inside_the_third_epochs_insert)

    sqlite3.connect(study_dir / "studies" / "optuna.db", timeout=0).execute("BEGIN IMMEDIATE")  # no lock left
    victim, retry = load_study(settings.storage).get_trials()
    assert victim.state.name == "FAIL" and len(victim.intermediate_values) == 3    # written, then stopped
    assert retry.state.name == "WAITING" and retry.user_attrs[attrs.RETRY_OF] == victim.number
    run = next(r for r in trial_runs(settings.tracking_uri) if r.info.run_id == victim.user_attrs[attrs.MLFLOW_RUN_ID])
    assert run.info.status == "KILLED" and run.data.tags["stop_reason"] == "interrupted"


def test_the_parent_says_which_worker_it_waits_for_when_closing_takes_long(capsys):
    import subprocess
    from mlp_exp.study.workers import wait_for_workers

    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    wait_for_workers([slow], patience=0.2)
    assert slow.returncode == 0                             # waited for, to the end
    assert capsys.readouterr().err == (f"waiting for worker {slow.pid} to close its trial (Ctrl-C again to "
                                       "stop without waiting: the worker then stops on its own)\n")


# ---------------------------------------------------------------- signals outside the trial loop

def hold_and_signal(root, sig, command, *args):
    """Run `command` (search or evaluate) with mlp_exp.hold holding its end step (held-finalize or
    held-evaluate: no timer decides what the signal hits), send `sig` there; return the process."""
    import subprocess
    from helpers import cli_env

    hold_dir = root / f"hold-{time.monotonic_ns()}"
    hold_dir.mkdir()
    step = hold_dir / f"held-{'finalize' if command == 'mlp_exp.search' else 'evaluate'}"
    err = open(root / "held.err", "w")
    process = subprocess.Popen([sys.executable, "-m", command, *args], cwd=root, stdout=subprocess.PIPE,
                               stderr=err, text=True, env=cli_env(MLP_EXP_HOLD_DIR=str(hold_dir)))
    try:
        held = wait_for(lambda: step.exists() or (process.poll() is not None and "exited"), 180,
                        f"{command} to reach {step.name}", poll=0.05)
        assert held != "exited", (root / "held.err").read_text()
        os.kill(process.pid, sig)
        process.stdout_text = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
        err.close()
    return process


def test_sigterm_while_promoting_exits_143_in_one_line_and_closes_the_parent_run(study_dir):
    """Held after promotion, before the champion is scored: the parent run ends KILLED (not RUNNING),
    and the same command finishes the step, scoring the champion it had promoted."""
    import mlflow

    storage, tracking = uris(study_dir)
    process = hold_and_signal(study_dir, signal.SIGTERM, "mlp_exp.search", "--trials", "1", *TINY)
    assert process.returncode == 143
    stderr = (study_dir / "held.err").read_text()
    lines = stderr.strip().splitlines()
    assert lines == ["terminated: study 'cifar10-mlp' saved with 1 of 1 trials finished, stopped while "
                     "promoting its best trial and logging the report; run the same command again to finish "
                     "them"], stderr
    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("cifar10-mlp")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags["mlp_exp.role"] == "study")
    assert parent.info.status == "KILLED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    version = client.get_model_version_by_alias("mlp-cifar10", "champion")
    assert "test_accuracy" not in version.tags          # stopped before the test set was used

    again = run_search("--trials", "1", *TINY, cwd=study_dir)
    assert again.returncode == 0, again.stderr
    assert "was already @champion, not yet scored" in again.stdout
    version = client.get_model_version_by_alias("mlp-cifar10", "champion")
    assert "test_accuracy" in version.tags
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["mlp_exp.champion_version"] == str(version.version)


def test_evaluate_logs_nothing_when_the_alias_moves_while_it_scores(study_dir):
    """Held after scoring @champion, the alias is moved to another version: the score is not logged on
    the version it was not measured on; one line, exit 2, and nothing else in the stores changes."""
    import subprocess
    import mlflow
    from helpers import cli_env
    from stores import snapshot

    assert run_search("--trials", "1", *TINY, cwd=study_dir).returncode == 0
    _, tracking = uris(study_dir)
    client = mlflow.MlflowClient(tracking)
    first = client.get_model_version_by_alias("mlp-cifar10", "champion")
    experiment = client.get_experiment_by_name("cifar10-mlp")
    parent = next(r for r in client.search_runs([experiment.experiment_id])
                  if r.data.tags["mlp_exp.role"] == "study")
    hold_dir = study_dir / "hold"
    hold_dir.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "mlp_exp.evaluate", "--data-dir", "data", "--test-size", "50"],
                               cwd=study_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cli_env(MLP_EXP_HOLD_DIR=str(hold_dir)))
    try:
        wait_for(lambda: (hold_dir / "held-evaluate").exists() or process.poll() is not None, 180,
                 "evaluate to reach held-evaluate", poll=0.05)
        assert process.poll() is None, process.stderr.read()
        # another version, of another run, takes the alias while evaluate holds its score of the first
        # (from the logged model's artifacts: a models:/m-... source would be looked up in the default store)
        source = client.get_logged_model(first.source.removeprefix("models:/")).artifact_location
        moved = client.create_model_version("mlp-cifar10", source, run_id=parent.info.run_id)
        client.set_registered_model_alias("mlp-cifar10", "champion", moved.version)
        before = snapshot(study_dir)
        (hold_dir / "release").touch()
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: scored models:/mlp-cifar10@champion (version "
                                                   f"{first.version}, test accuracy "), stderr
    assert f"meanwhile it moved to version {moved.version}: nothing was logged" in lines[0]
    after = snapshot(study_dir)
    strip = lambda shot: {**shot, "files": [f for f in shot["files"] if not f.startswith("hold")]}  # noqa: E731
    assert strip(after) == strip(before)
    assert "test_accuracy" not in client.get_model_version("mlp-cifar10", moved.version).tags


def test_ctrl_c_in_evaluate_exits_130_in_one_line_and_logs_nothing(study_dir):
    """Held after scoring, before logging: Ctrl-C there ends the command in one line, no traceback,
    and neither store changes (the evaluation is all or nothing)."""
    from stores import snapshot

    assert run_search("--trials", "1", *TINY, cwd=study_dir).returncode == 0
    before = snapshot(study_dir)
    process = hold_and_signal(study_dir, signal.SIGINT, "mlp_exp.evaluate", "--data-dir", "data",
                              "--test-size", "50")
    assert process.returncode == 130
    assert process.stdout_text == ""
    stderr = (study_dir / "held.err").read_text()
    assert stderr.strip().splitlines() == ["interrupted: models:/mlp-cifar10@champion was not evaluated; "
                                           "nothing was logged"], stderr
    after = snapshot(study_dir)
    after["files"] = [f for f in after["files"] if not f.startswith(("hold-", "held."))]
    before["files"] = [f for f in before["files"] if not f.startswith(("hold-", "held."))]
    assert after == before
