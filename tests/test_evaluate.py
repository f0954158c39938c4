"""`python -m mlp_exp.evaluate` as a subprocess, against a real MLflow store and a tiny fake CIFAR-10.

The reference is the test accuracy logged in-process by the same scoring
function the search uses: `--json` must report exactly that number.
"""
from __future__ import annotations

import json

import pytest

from helpers import run_cli
from stores import fake_champion
from mlp_exp import tracking

NUM_TEST = 120
LABELS = [f"class{i}" for i in range(10)]        # what fake_cifar writes into batches.meta


def run_evaluate(*args, cwd, env_uri=None):
    env = {"MLFLOW_TRACKING_URI": env_uri} if env_uri else {}
    return run_cli("mlp_exp.evaluate", *args, cwd=cwd, timeout=300, **env)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A store whose champion was trained on the fake data and scored on its test set, as the search does."""
    made = fake_champion(tmp_path_factory.mktemp("evaluate"), "eval-study", num_test=NUM_TEST)
    tracker, run_id = made["tracker"], made["run_id"]
    score = tracker.score_model(tracking.DEFAULT_MODEL_URI, made["X_test"], made["y_test"], made["label_names"],
                                predictions=True)
    tracker.log_score(tracking.DEFAULT_MODEL_URI, score, made["X_test"], made["y_test"], made["label_names"],
                      source=str(made["folder"]))          # what the end of a study logs on the champion's run
    logged = tracker.get_run(run_id).metrics
    return dict(root=made["root"], uri=made["uri"], run_id=run_id, test_accuracy=logged["test_accuracy"],
                num_test=logged["num_test"], X_test=made["X_test"], y_test=made["y_test"], tracker=tracker)

def test_json_reports_exactly_the_logged_test_accuracy(champion):
    out = run_evaluate("--json", "--data-dir", "data", "--tracking-uri", champion["uri"], cwd=champion["root"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["test_accuracy"] == champion["test_accuracy"]
    assert report["num_test"] == champion["num_test"] == NUM_TEST
    assert report["run_id"] == champion["run_id"]
    assert report["model_uri"] == "models:/mlp-cifar10@champion"
    assert list(report["per_class"]) == LABELS


def test_table_with_env_tracking_uri_and_test_size(champion):
    out = run_evaluate("--data-dir", "data", "--test-size", "50", cwd=champion["root"], env_uri=champion["uri"])
    assert out.returncode == 0, out.stderr
    expected = champion["tracker"].score_model(tracking.DEFAULT_MODEL_URI, champion["X_test"][:50],
                                               champion["y_test"][:50])
    assert f"test accuracy  {expected['test_accuracy']:.4f} on 50 images" in out.stdout
    assert champion["run_id"] in out.stdout
    for name in LABELS:
        value = expected["per_class"][name]
        assert f"  {name}  {'-' if value is None else f'{value:.4f}'}" in out.stdout


@pytest.mark.parametrize("args, message", [
    (("--tracking-uri", "sqlite:///empty/mlflow.db"), "error: no model at models:/mlp-cifar10@champion"),
    (("--model-uri", "models:/mlp-cifar10/99"), "error: cannot load model models:/mlp-cifar10/99"),
    (("--model-uri", "runs:/0123456789abcdef0123456789abcdef/model"), "error: cannot load model runs:/"),
    (("--tracking-uri", "./mlruns"), "error: tracking URI './mlruns' is a folder"),
    (("--test-size", "0"), "error: --test-size must be >= 1"),
    (("--test-size", "1000"), "error: --test-size 1000 exceeds the 120 test images"),
])
def test_user_errors_are_one_line_and_exit_2(champion, args, message):
    defaults = ("--tracking-uri", champion["uri"], "--data-dir", "data")
    out = run_evaluate(*defaults, *args, "--json", cwd=champion["root"])   # later flags win
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(message), lines[0]
    assert "Traceback" not in out.stderr


def test_help_explains_every_flag(tmp_path):
    out = run_evaluate("--help", cwd=tmp_path)
    assert out.returncode == 0
    for flag in ("--model-uri", "--tracking-uri", "--data-dir", "--test-size", "--json"):
        assert flag in out.stdout
    text = " ".join(out.stdout.split())
    assert "models:/mlp-cifar10@champion" in text and "MLFLOW_TRACKING_URI" in text
