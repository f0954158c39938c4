"""Where a study's champion came from, as MLflow and Optuna show it (issue 15, items 3 to 5).

One tiny study through the real CLI on fake data, then read back from both stores: the
champion's run carries its test evaluation and the test set, every run the datasets it saw
and the source tags, the registered version links to its logged model, the parent run names
the best trial and the champion, and the study names its MLflow side and its metric.
References: the fake data's own arrays (digests), `git rev-parse HEAD`, Optuna's best trial.
"""
from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from fake_cifar import write_fake_cifar10
from helpers import REPO
from stores import TINY, load_study, run_search, tiny_settings
from mlp_exp import data
from mlp_exp.study import attrs

TRIALS = 3
STUDY = "cifar10-mlp"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("provenance")
    write_fake_cifar10(root / "data", per_batch=80, num_test=50)
    result = run_search("--trials", str(TRIALS), *TINY, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    champion = client.get_model_version_by_alias("mlp-cifar10", "champion")
    Xtr, ytr, Xte, yte = data.load_cifar10_uint8(root / "data" / "cifar-10-batches-py")
    return SimpleNamespace(
        root=root, client=client, experiment=experiment, champion=champion,
        parent=next(r for r in runs if r.data.tags["mlp_exp.role"] == "study"),
        trials=[r for r in runs if r.data.tags["mlp_exp.role"] == "trial"],
        optuna=load_study(f"sqlite:///{root}/studies/optuna.db"),
        train=(Xtr[:200], ytr[:200]), val=(Xtr[200:250], ytr[200:250]), test=(Xte[:50], yte[:50]))


def inputs_of(run) -> dict:
    """{dataset name: (digest, context, source)} of a run's dataset inputs."""
    return {i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags}.get("mlflow.data.context"),
                             i.dataset.source) for i in run.inputs.dataset_inputs}


def test_the_champion_s_run_has_its_test_evaluation_and_the_test_set(study):
    from mlp_exp.tracking.evaluation import dataset_digest

    run = study.client.get_run(study.champion.run_id)
    artifacts = {a.path for a in study.client.list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {"evaluation/confusion_matrix.png", "evaluation/confusion_matrix.json"}
    table = json.loads(open(study.client.download_artifacts(run.info.run_id, "evaluation/confusion_matrix.json",
                                                            str(study.root))).read())
    counts = np.array(table["counts"])
    assert counts.sum() == 50 and counts.shape == (10, 10)
    assert run.data.metrics["test_accuracy"] == pytest.approx(np.trace(counts) / 50)
    assert any(k.startswith("test_recall_class") for k in run.data.metrics)
    assert any(k.startswith("test_precision_class") for k in run.data.metrics)
    digest, context, source = inputs_of(run)["cifar10-test"]
    assert (digest, context) == (dataset_digest(*study.test), "test")
    assert json.loads(source)["uri"] == str(study.root / "data" / "cifar-10-batches-py")
    version = study.client.get_model_version("mlp-cifar10", study.champion.version)
    assert version.tags["test_dataset_digest"] == digest and version.tags["num_test"] == "50"
    assert f"of study '{STUDY}'" in version.description and "Test accuracy" in version.description


def test_every_trial_run_has_the_train_and_val_datasets_and_every_run_the_source_tags(study):
    from mlp_exp.tracking.evaluation import dataset_digest

    assert len(study.trials) == TRIALS
    expected = {"cifar10-train": (dataset_digest(*study.train), "training"),
                "cifar10-val": (dataset_digest(*study.val), "validation")}
    for run in study.trials:
        seen = {name: found[:2] for name, found in inputs_of(run).items() if name != "cifar10-test"}
        assert seen == expected, run.info.run_name
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    for run in [study.parent, *study.trials]:
        tags = run.data.tags
        assert tags["mlflow.source.name"] == str(REPO / "mlp_exp" / "search.py"), run.info.run_name
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
        if head.returncode == 0:
            assert tags["mlflow.source.git.commit"] == head.stdout.strip()


def test_the_registered_version_links_to_its_logged_model(study):
    version = study.champion
    model_id = version.source.removeprefix("models:/")
    assert model_id.startswith("m-")
    model = study.client.get_logged_model(model_id)
    assert model.source_run_id == version.run_id
    linked = json.loads(model.tags["mlflow.modelVersions"])
    assert linked == [{"name": "mlp-cifar10", "version": str(version.version)}]


def test_the_parent_run_names_the_best_trial_its_val_accuracy_and_the_champion(study):
    best = study.optuna.best_trial
    tags, metrics = study.parent.data.tags, study.parent.data.metrics
    assert study.parent.info.status == "FINISHED"
    assert tags["mlp_exp.best_trial"] == str(best.number)
    assert tags["mlp_exp.best_run_id"] == best.user_attrs[attrs.MLFLOW_RUN_ID] == study.champion.run_id
    assert metrics["best_val_accuracy"] == pytest.approx(best.value)
    assert tags["mlp_exp.champion_version"] == tags["mlp_exp.model_version"] == str(study.champion.version)
    assert metrics["test_accuracy"] == study.client.get_run(study.champion.run_id).data.metrics["test_accuracy"]


def test_the_study_names_its_mlflow_experiment_parent_run_and_metric(study):
    user_attrs = study.optuna.user_attrs
    assert user_attrs[attrs.MLFLOW_TRACKING_URI] == "sqlite:///mlruns/mlflow.db"      # as the search was given it
    assert user_attrs[attrs.MLFLOW_EXPERIMENT_ID] == study.experiment.experiment_id
    assert user_attrs[attrs.MLFLOW_PARENT_RUN_ID] == study.parent.info.run_id
    assert study.optuna.metric_names == ["val_accuracy"]


def test_the_study_s_tracking_uri_is_recorded_without_its_password(tmp_path):
    import optuna
    from mlp_exp.study.session import record_tracking

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize")
    tracker = SimpleNamespace(tracking_uri="http://alice:s3cret@mlflow.example:5000", experiment_id="7",
                              parent_run_id="abc")
    record_tracking(study, tracker)
    assert study.user_attrs[attrs.MLFLOW_TRACKING_URI] == "http://alice:***@mlflow.example:5000"
    assert "s3cret" not in json.dumps(study.user_attrs)


def test_dataset_digests_are_computed_once_per_process_not_per_trial(tmp_path, monkeypatch):
    """The training set is 150 MB: hashing it for every trial would cost each trial a second."""
    from mlp_exp.study import open_session, run_session
    from mlp_exp.tracking import evaluation

    write_fake_cifar10(tmp_path / "data", per_batch=80, num_test=50)
    hashed = []
    real = evaluation.dataset_digest
    monkeypatch.setattr(evaluation, "dataset_digest", lambda X, y=None: hashed.append(len(X)) or real(X, y))
    session = open_session(tiny_settings(tmp_path, trials=3, max_epochs=1, finalize=False))
    run_session(session)
    assert sorted(hashed) == [50, 200]          # validation and training, once each
    runs = [r for r in session.tracker.find_trial_runs()]
    assert len(runs) == 3
    for run in runs:
        assert {i.dataset.name for i in session.tracker.client.get_run(run.run_id).inputs.dataset_inputs} \
            == {"cifar10-train", "cifar10-val"}
