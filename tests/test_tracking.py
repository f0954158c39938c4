"""Tests for mlp_exp.tracking against a real MLflow sqlite store under tmp_path (no mocks).

References: the config's own asdict (params), the trainer's EpochStats (metric
histories), vis.first_layer_grid (logged images, pixel for pixel) and
kernels.predict_float32 (the logged pyfunc model's predictions).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import REPO, cli_env, free_port
from mlp_exp import data, kernels, preprocessing, tracking, vis
from mlp_exp.config import TrainConfig
from mlp_exp.errors import UserError
from mlp_exp.trainer import StopTraining, train

CONFIG = TrainConfig(hidden_size=8, num_epochs=3, learning_rate=1e-3, batch_size=20, train_size=60,
                     val_size=20, init_std=1e-2, seed=3)


def sqlite_uri(root: Path) -> str:
    return f"sqlite:///{root}/mlruns/mlflow.db"


@pytest.fixture
def uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return sqlite_uri(tmp_path)


@pytest.fixture
def tracker(uri):
    t = tracking.Tracker(uri, "study-x")
    t.study_run("study-x", params={"trials": 3})
    return t


@pytest.fixture(scope="module")
def tiny():
    """Raw uint8 images (train 60, val 20, test 30), their preprocessor and float32 rows."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (110, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 110)
    pre = preprocessing.fit_preprocessor(X[:60], "standardize")
    return dict(X_train=X[:60], y_train=y[:60], X_val=X[60:80], y_val=y[60:80], X_test=X[80:], y_test=y[80:],
                pre=pre, rows_train=pre.apply(X[:60]), rows_val=pre.apply(X[60:80]))


def train_tiny(tiny, config=CONFIG, callbacks=()):
    return train(tiny["rows_train"], tiny["y_train"], tiny["rows_val"], tiny["y_val"], config, callbacks=callbacks)


closed_port = free_port      # nothing listens there: connection refused


def parent_runs(tracker, study_name) -> list:
    """Every parent run of the study, read with MLflow's own search (duplicates included)."""
    return tracker.client.search_runs([tracker.experiment_id], f"tags.`{tracking.STUDY_TAG}` = '{study_name}' "
                                      f"AND tags.`{tracking.ROLE_TAG}` = 'study'")


# ------------------------------------------------------------ the store

def test_tracking_uri_flag_then_env_then_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env/mlflow.db")
    assert tracking.resolve_tracking_uri("sqlite:///flag/mlflow.db") == "sqlite:///flag/mlflow.db"
    assert tracking.resolve_tracking_uri() == "sqlite:///from-env/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.resolve_tracking_uri() == tracking.DEFAULT_TRACKING_URI == "sqlite:///mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir() and (tmp_path / "flag").is_dir()


@pytest.mark.parametrize("bad", ["./mlruns", "file:./mlruns", "ftp://host/x", "sqlite://", "sqlite:///:memory:"])
def test_malformed_tracking_uri_is_a_one_line_user_error(bad):
    with pytest.raises(UserError) as err:
        tracking.resolve_tracking_uri(bad)
    assert "\n" not in str(err.value) and "sqlite:///" in str(err.value)


def test_unreachable_server_is_a_one_line_user_error():
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(UserError) as err:
        tracking.Tracker(uri, "x")
    assert "cannot reach" in str(err.value) and uri in str(err.value) and "\n" not in str(err.value)


def test_experiment_artifacts_live_beside_the_sqlite_db(tmp_path, tracker):
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.name == "study-x"
    assert experiment.artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri()


def test_importing_the_package_does_not_import_mlflow():
    code = "import sys, mlp_exp, mlp_exp.tracking, mlp_exp.evaluate; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------ parent runs

def test_study_run_is_reused_and_reopened(uri):
    tracker = tracking.Tracker(uri, "study-x")
    first = tracker.study_run("study-x", params={"trials": 3}, tags={"note": "a"})
    tracker.end_study()
    assert tracker.client.get_run(first).info.status == "FINISHED"

    again = tracking.Tracker(uri, "study-x")
    second = again.study_run("study-x", params={"trials": 5, "seed": 1}, tags={"note": "b"})
    run = again.client.get_run(second)
    assert second == first
    assert run.info.status == "RUNNING"
    assert run.data.params == {"trials": "3", "seed": "1"}      # params are write-once
    assert run.data.tags[tracking.STUDY_TAG] == "study-x" and run.data.tags["note"] == "b"
    assert len(parent_runs(again, "study-x")) == 1


def test_a_peer_logging_the_study_params_first_is_not_an_error(uri):
    """Two workers on a server store both read the parent run before either logs its params;
    the server then refuses the slower one's insert (seen in CI: "UNIQUE constraint failed:
    params.key"). Staged here: the peer logs between our read and our write, which fails so."""
    import mlflow

    first = tracking.Tracker(uri, "study-x")
    parent = first.study_run("study-x")
    stale = first.client.get_run(parent)                  # what the second worker read: no params yet
    for key, value in {"trials": 3, "seed": 0}.items():                         # the peer wins the race
        first.client.log_param(parent, key, value)
    second = tracking.Tracker(uri, "study-x")
    second._study_runs = lambda name: [stale]
    log_batch = second._log_batch

    def server_refuses_params(run_id, metrics=None, params=None, tags=None, **kwargs):
        if params:
            raise mlflow.exceptions.MlflowException("UNIQUE constraint failed: params.key, params.run_uuid")
        return log_batch(run_id, metrics, params, tags, **kwargs)

    second._log_batch = server_refuses_params
    assert second.study_run("study-x", params={"trials": 3, "seed": 0}, tags={"note": "b"}) == parent
    run = second.client.get_run(parent)
    assert run.data.params == {"trials": "3", "seed": "0"} and run.data.tags["note"] == "b"
    with pytest.raises(mlflow.exceptions.MlflowException, match="UNIQUE"):      # a key no peer logged
        second.study_run("study-x", params={"trials": 3, "workers": 2})


def test_oldest_parent_wins_when_duplicates_exist(tracker):
    # e.g. left by two workers racing on a remote server without a lock
    tags = {tracking.STUDY_TAG: "dup", tracking.ROLE_TAG: "study"}
    older = tracker.client.create_run(tracker.experiment_id, start_time=1_000, tags=tags)
    tracker.client.create_run(tracker.experiment_id, start_time=2_000, tags=tags)
    assert tracker.study_run("dup") == older.info.run_id


def test_two_processes_starting_a_study_at_once_share_one_parent(uri, tmp_path):
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, time
        from mlp_exp import tracking
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        tracker = tracking.Tracker({uri!r}, "race")
        print(tracker.study_run("race"))
    """)
    env = cli_env()
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    go.touch()
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    ids = {out.strip() for out, _ in outs}
    tracker = tracking.Tracker(uri, "race")
    parents = parent_runs(tracker, "race")
    assert len(ids) == 1 and [r.info.run_id for r in parents] == list(ids)


# ------------------------------------------------------------ trial runs

def test_trial_run_logs_config_epochs_images_and_result(tracker, tiny, tmp_path):
    seen = {}

    def keep_w1(stats):
        seen[stats.epoch] = stats.params["W1"].copy()

    run = tracker.start_trial(7, CONFIG, params={"sampler": "tpe"})
    result = train_tiny(tiny, callbacks=[run.log_epoch, keep_w1])
    run.log_result(result)
    run.end("FINISHED", wait=True)

    client = tracker.client
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.info.run_name == "trial-007"
    assert logged.data.tags[tracking.PARENT_TAG] == tracker.parent_run_id
    assert logged.data.tags[tracking.TRIAL_TAG] == "7"
    assert logged.data.tags[tracking.STUDY_TAG] == "study-x"
    # every config field, so the trial can be rebuilt from its run page alone
    assert logged.data.params == {**{k: str(v) for k, v in CONFIG.asdict().items()}, "sampler": "tpe"}
    rebuilt = TrainConfig.from_dict({k: v for k, v in logged.data.params.items() if k != "sampler"})
    assert rebuilt == CONFIG

    for name in tracking.EPOCH_METRICS:
        history = sorted(client.get_metric_history(run.run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3]
        assert [m.value for m in history] == pytest.approx([getattr(e, name) for e in result.epochs])
    assert logged.data.metrics["best_val_accuracy"] == pytest.approx(result.best_val_accuracy)
    assert logged.data.metrics["best_epoch"] == result.best_epoch

    images = [a.path for a in client.list_artifacts(run.run_id, "images")]
    for epoch in (1, 2, 3):
        pngs = [p for p in images if p.startswith(f"images/{tracking.GRID_KEY}+step+{epoch}+")
                and p.endswith(".png")]
        assert len(pngs) == 1, images
        local = client.download_artifacts(run.run_id, pngs[0], str(tmp_path))
        pixels = np.asarray(Image.open(local).convert("RGB"))
        np.testing.assert_array_equal(pixels, vis.first_layer_grid(seen[epoch][:, :tracker.grid_units]))
    assert logged.data.tags.get("mlflow.loggedImages") == "True"
    assert "training_curves.png" in [a.path for a in client.list_artifacts(run.run_id)]


def test_log_result_records_the_tags_it_is_given_and_computes_none_itself(tracker, tiny):
    """Analysis (the curves' diagnosis) belongs to the study layer; tracking logs what it is handed."""
    plain, tagged = tracker.start_trial(1, CONFIG), tracker.start_trial(2, CONFIG)
    result = train_tiny(tiny)
    plain.log_result(result)
    tagged.log_result(result, {"diagnosis": "overfitting", "diagnosis.overfitting": "a reason"})
    for run in (plain, tagged):
        run.end("FINISHED", wait=True)
    assert not any(k.startswith("diagnosis") for k in tracker.get_run(plain.run_id).tags)
    tags = tracker.get_run(tagged.run_id).tags
    assert tags["diagnosis"] == "overfitting" and tags["diagnosis.overfitting"] == "a reason"
    assert tracker.get_run(tagged.run_id).metrics["best_val_accuracy"] == pytest.approx(result.best_val_accuracy)


def test_pruned_trial_ends_killed_with_its_tags(tracker, tiny):
    def prune_at_2(stats):
        if stats.epoch == 2:
            raise StopTraining("pruned")

    run = tracker.start_trial(1, CONFIG)
    result = train_tiny(tiny, callbacks=[run.log_epoch, prune_at_2])
    run.log_result(result)
    run.end("KILLED", {"stop_reason": result.stop_reason, "pruned_at_epoch": result.epochs[-1].epoch})
    found = tracker.find_trial_runs(trial_number=1)           # waits for the queued end
    assert len(found) == 1 and found[0].run_id == run.run_id
    assert found[0].status == "KILLED"
    assert found[0].tags["stop_reason"] == "pruned" and found[0].tags["pruned_at_epoch"] == "2"
    steps = [m.step for m in tracker.client.get_metric_history(run.run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2]


def test_a_trial_that_raises_ends_failed_with_the_message(tracker, tiny):
    with pytest.raises(RuntimeError):
        with tracker.start_trial(2, CONFIG) as run:
            train_tiny(tiny, callbacks=[run.log_epoch])
            raise RuntimeError("boom: out of memory")
    (found,) = tracker.find_trial_runs(trial_number=2)
    assert found.status == "FAILED"
    assert found.tags["error"] == "RuntimeError: boom: out of memory"


def test_another_process_can_close_a_stale_running_trial(uri, tracker):
    stale = tracker.start_trial(4, CONFIG)            # its worker "dies": never ended
    other = tracking.Tracker(uri, "study-x")
    other.study_run("study-x")
    assert [r.run_id for r in other.find_trial_runs(statuses=("RUNNING",))] == [stale.run_id]
    other.end_run(stale.run_id, "FAILED", {"error": "worker died"})
    (found,) = other.find_trial_runs(trial_number=4)
    assert found.status == "FAILED" and found.tags["error"] == "worker died"
    assert other.find_trial_runs(statuses=("RUNNING",)) == []
    with pytest.raises(ValueError):
        other.end_run(stale.run_id, "DONE")


def test_find_trial_runs_shows_duplicates_in_trial_order(tracker):
    for number in (5, 3, 3):
        tracker.start_trial(number, CONFIG).end("FINISHED")
    runs = tracker.find_trial_runs()
    assert [r.trial_number for r in runs] == [3, 3, 5]
    assert len(tracker.find_trial_runs(trial_number=3)) == 2


# ------------------------------------------------------------ models

@pytest.fixture
def logged_model(tracker, tiny):
    run = tracker.start_trial(0, CONFIG)
    result = train_tiny(tiny, callbacks=[run.log_epoch])
    run.log_result(result)
    model_uri = run.log_model(result.best_params, tiny["pre"], CONFIG, data.DEFAULT_LABEL_NAMES)
    run.end("FINISHED", wait=True)
    return run.run_id, model_uri, result


def test_logged_model_reloads_and_predicts_like_the_float32_kernel(tracker, tiny, logged_model):
    import mlflow
    run_id, model_uri, result = logged_model
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    model = mlflow.pyfunc.load_model(model_uri)
    raw = tiny["X_test"].reshape(len(tiny["X_test"]), -1).astype(np.float32)
    table = model.predict(raw)                 # the full contract: tests/test_model_contract.py
    probs = table[[f"prob_{name}" for name in data.DEFAULT_LABEL_NAMES]].to_numpy()
    assert probs.dtype == np.float32 and probs.shape == (len(raw), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    expected = kernels.predict_float32(result.best_params, tiny["pre"].apply(tiny["X_test"]))
    np.testing.assert_array_equal(table["label"], expected)
    np.testing.assert_array_equal(probs.argmax(axis=1), expected)

    assert model.metadata.get_input_schema() is None       # the model checks its input itself
    assert model.metadata.run_id == run_id
    assert model.unwrap_python_model().config == CONFIG.asdict()


def test_model_directory_holds_no_pickle(logged_model, tmp_path):
    import mlflow
    _, model_uri, _ = logged_model
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "model")))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert any(p.name == "weights.npz" for p in files) and any(p.name == "mlflow_model.py" for p in files)
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    assert not [p for p in files if p.read_bytes()[:1] == b"\x80"]     # every pickle protocol >= 2 starts so
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"   # the model is code, not a pickle
    assert "python_model" not in flavor
    with np.load(next(p for p in files if p.name == "weights.npz"), allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["W1", "W2", "b1", "b2", "mean", "scale"]
        assert all(arrays[k].dtype == np.float32 for k in arrays.files)


def test_wrong_input_width_is_a_clear_error(tracker, logged_model):
    import mlflow
    _, model_uri, _ = logged_model
    model = mlflow.pyfunc.load_model(model_uri)
    with pytest.raises(ValueError, match=r"\(2, 100\) has the wrong shape.*\(N, 3072\)"):
        model.predict(np.zeros((2, 100), np.float32))
    with pytest.raises(UserError) as err:
        tracker.score_model(model_uri, np.zeros((2, 100), np.uint8), np.zeros(2, int))
    assert "100 values per image" in str(err.value) and "3072" in str(err.value)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------ registry and scoring

def test_promote_moves_champion_only_on_improvement(tracker, tiny):
    runs = []
    for number in range(3):
        run = tracker.start_trial(number, CONFIG)
        result = train_tiny(tiny, callbacks=[run.log_epoch])
        run.log_model(result.best_params, tiny["pre"], CONFIG, data.DEFAULT_LABEL_NAMES)
        run.end("FINISHED")
        runs.append(run.run_id)

    assert tracker.champion("m") is None
    first = tracker.promote("m", runs[0], 0.40)
    assert (first.version, first.became_champion) == ("1", True)
    worse = tracker.promote("m", runs[1], 0.35)
    assert (worse.version, worse.became_champion) == ("2", False)
    assert worse.champion.version == "1" and worse.champion.val_accuracy == 0.40
    tie = tracker.promote("m", runs[1], 0.40)
    assert tie.became_champion is False
    assert tie.version == "2"                 # the same run again reuses its version
    better = tracker.promote("m", runs[2], 0.45)
    assert (better.version, better.became_champion) == ("3", True)
    again = tracker.promote("m", runs[2], 0.45)     # e.g. a finished study re-run
    assert (again.version, again.became_champion) == ("3", False) and again.champion.version == "3"

    alias = tracker.client.get_model_version_by_alias("m", tracking.CHAMPION_ALIAS)
    assert str(alias.version) == "3" and alias.run_id == runs[2]
    assert alias.tags[tracking.VAL_ACCURACY_TAG] == "0.45"
    assert tracker.client.get_model_version("m", "2").tags[tracking.VAL_ACCURACY_TAG] == "0.35"
    assert tracker.champion("m") == tracking.Champion("3", runs[2], 0.45, "models:/m/3")


def test_score_model_and_test_accuracy_on_champion_and_parent(tracker, tiny, logged_model):
    run_id, _, result = logged_model
    tracker.promote("m", run_id, result.best_val_accuracy)
    score = tracker.score_model("models:/m@champion", tiny["X_test"], tiny["y_test"], predictions=True)
    predicted = kernels.predict_float32(result.best_params, tiny["pre"].apply(tiny["X_test"]))
    assert score["test_accuracy"] == float(np.mean(predicted == tiny["y_test"]))
    assert score["num_test"] == 30 and score["run_id"] == run_id and score["model_uri"] == "models:/m@champion"
    assert list(score["per_class"]) == list(data.DEFAULT_LABEL_NAMES)
    for c, name in enumerate(data.DEFAULT_LABEL_NAMES):
        mask = tiny["y_test"] == c
        expected = float(np.mean(predicted[mask] == c)) if mask.any() else None
        assert score["per_class"][name] == expected

    # What the end of a study logs: the evaluation on the champion's run, the outcome on the parent run.
    tracker.log_score("models:/m@champion", score, tiny["X_test"], tiny["y_test"], data.DEFAULT_LABEL_NAMES,
                      source="tiny")
    tracker.log_study_outcome(0, run_id, result.best_val_accuracy, "1", "1",
                              test_accuracy=score["test_accuracy"], num_test=score["num_test"])
    for target in (run_id, tracker.parent_run_id):
        metrics = tracker.get_run(target).metrics
        assert metrics["test_accuracy"] == score["test_accuracy"] and metrics["num_test"] == 30


def test_scoring_without_a_champion_or_with_a_bad_uri_is_a_user_error(tracker, tiny):
    for model_uri, words in (("models:/m@champion", "no model at models:/m@champion"),
                             ("models:/m/9", "cannot load model models:/m/9"),
                             ("runs:/0123456789abcdef/model", "cannot load model runs:/")):
        with pytest.raises(UserError) as err:
            tracking.score_model(model_uri, tiny["X_test"], tiny["y_test"], tracking_uri=tracker.tracking_uri)
        assert words in str(err.value) and "\n" not in str(err.value)
