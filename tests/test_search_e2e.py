"""A real small study end to end: Optuna storage, MLflow store and registry, evaluate --json."""
import json

import pytest

from fake_cifar import write_fake_cifar10
from helpers import run_cli
from mlp_exp.study import attrs


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_fake_cifar10(root / "data", per_batch=80, num_test=120)
    return root


@pytest.fixture(scope="module")
def finished_study(study_dir):
    result = run_cli("mlp_exp.search", "--trials", "5", "--train-size", "300", "--val-size", "100",
                     "--test-size", "120", "--max-epochs", "3", "--data-dir", "data",
                     "--fixed", "hidden_size=24", "--seed", "1", "--quiet", cwd=study_dir)
    assert result.returncode == 0, result.stderr
    return study_dir, result


def client_for(root):
    import mlflow
    return mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")


def test_study_lands_in_optuna_storage(finished_study):
    import optuna
    root, _ = finished_study
    assert (root / "studies" / "optuna.db").is_file()
    study = optuna.load_study(study_name="cifar10-mlp", storage=f"sqlite:///{root}/studies/optuna.db")
    trials = study.get_trials()
    finished = [t for t in trials if t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5
    assert trials[0].user_attrs.get(attrs.BASELINE)            # trial 0 replays the spec's grid best
    assert trials[0].user_attrs[attrs.CONFIG]["hidden_size"] == 24   # --fixed wins even there
    assert all(attrs.MLFLOW_RUN_ID in t.user_attrs for t in finished)


def test_parent_and_nested_trial_runs(finished_study):
    root, _ = finished_study
    client = client_for(root)
    experiment = client.get_experiment_by_name("cifar10-mlp")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(trials) == 5
    parent = parents[0]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    assert sorted(r.info.run_name for r in trials) == [f"trial-{n:03d}" for n in range(5)]
    for run in trials:
        params = run.data.params
        for key in ("hidden_size", "learning_rate", "reg", "momentum", "lr_decay", "batch_size",
                    "num_epochs", "seed", "train_size", "val_size", "preprocessing", "flip"):
            assert key in params, key
        assert params["hidden_size"] == "24" and params["train_size"] == "300"
        assert run.info.status in ("FINISHED", "KILLED")
        if run.info.status == "KILLED":
            assert "pruned_at_epoch" in run.data.tags and "stop_reason" in run.data.tags


def test_per_epoch_metrics_and_images(finished_study):
    root, _ = finished_study
    client = client_for(root)
    experiment = client.get_experiment_by_name("cifar10-mlp")
    finished = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED' "
                                  "AND tags.`mlp_exp.role` = 'trial'")
    assert finished
    for run in finished:
        epochs = int(run.data.params["num_epochs"])
        for key in ("loss", "train_accuracy", "val_accuracy"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, epochs + 1))
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert len([p for p in images if p.endswith(".png") and "first_layer_weights" in p]) == epochs
        assert any(a.path == "training_curves.png" for a in client.list_artifacts(run.info.run_id))


def test_champion_alias_and_test_accuracy(finished_study):
    root, result = finished_study
    client = client_for(root)
    version = client.get_model_version_by_alias("mlp-cifar10", "champion")
    champion_run = client.get_run(version.run_id)
    test_accuracy = champion_run.data.metrics["test_accuracy"]
    parent_id = champion_run.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent_id).data.metrics["test_accuracy"] == test_accuracy
    # the champion is the best completed trial by validation accuracy
    import optuna
    study = optuna.load_study(study_name="cifar10-mlp", storage=f"sqlite:///{root}/studies/optuna.db")
    assert study.best_trial.user_attrs[attrs.MLFLOW_RUN_ID] == version.run_id
    assert f"test accuracy {test_accuracy:.4f}" in result.stdout
    # the summary names every setting that shapes the champion, the study's fixed ones included
    best = study.best_trial.user_attrs[attrs.CONFIG]
    params_line = next(line for line in result.stdout.splitlines() if line.startswith("  params: "))
    for key in ("hidden_size", "learning_rate", "init_std", "preprocessing", "flip", "translate"):
        assert f"{key}=" in params_line, key
    assert f"translate={best['translate']}" in params_line and "precision" not in params_line

    evaluated = run_cli("mlp_exp.evaluate", "--data-dir", "data", "--test-size", "120",
                        "--tracking-uri", f"sqlite:///{root}/mlruns/mlflow.db", "--json", cwd=root)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["test_accuracy"] == test_accuracy
    assert report["run_id"] == version.run_id and report["num_test"] == 120


def test_rerun_of_finished_study_says_so_and_keeps_champion(finished_study):
    root, _ = finished_study
    client = client_for(root)
    before = client.get_model_version_by_alias("mlp-cifar10", "champion").version
    again = run_cli("mlp_exp.search", "--trials", "5", "--train-size", "300", "--val-size", "100",
                    "--test-size", "120", "--max-epochs", "3", "--data-dir", "data",
                    "--fixed", "hidden_size=24", "--seed", "1", "--quiet", cwd=root)
    assert again.returncode == 0, again.stderr
    assert "already has 5 finished trials" in again.stdout and "--trials" in again.stdout
    assert client.get_model_version_by_alias("mlp-cifar10", "champion").version == before
    runs = client.search_runs([client.get_experiment_by_name("cifar10-mlp").experiment_id])
    assert len(runs) == 6                    # no new trial runs, no second parent
