"""The logged model's contract (images in, labels out) and its logged evaluation, on a real MLflow store.

References: kernels.predict_float32 on the preprocessed images (the net's own
labels), scikit-learn's confusion_matrix and precision/recall (the evaluation's
numbers), `git rev-parse HEAD` (the source tags), and a model logged with the
mlflow_model.py of commit OLD_MODEL_COMMIT, the contract before issue 15
(float32 rows in, probabilities out), which must keep scoring.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import REPO, cli_env, run_cli
from stores import CHAMPION_CONFIG, fake_champion
from mlp_exp import kernels, tracking
from mlp_exp.config import TrainConfig
from mlp_exp.errors import UserError
from mlp_exp.tracking import evaluation

OLD_MODEL_COMMIT = "ab6c30ff258f75f9ac3065093c962b21e43b73c8"     # the last one with the old contract
CONFIG = TrainConfig(**{**CHAMPION_CONFIG, "seed": 3})
NUM_TEST = 120
LABELS = [f"class{i}" for i in range(10)]        # what fake_cifar writes into batches.meta
PROBS = [f"prob_{name}" for name in LABELS]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A champion trained on fake CIFAR-10, promoted as `m`, and the net's own test-set labels."""
    import mlflow

    made = fake_champion(tmp_path_factory.mktemp("contract"), "contract-study", model_name="m", num_test=NUM_TEST,
                         seed=CONFIG.seed)
    assert made["label_names"] == LABELS
    mlflow.set_tracking_uri(made["uri"])
    params, pre = made["result"].best_params, made["pre"]
    return dict(root=made["root"], uri=made["uri"], tracker=made["tracker"], run_id=made["run_id"],
                model_uri=made["model_uri"], version=made["promotion"].version, params=params, pre=pre,
                folder=made["folder"], X_test=made["X_test"], y_test=made["y_test"],
                pyfunc=mlflow.pyfunc.load_model("models:/m@champion"),
                expected=kernels.predict_float32(params, pre.apply(made["X_test"])))

# ------------------------------------------------------------ what goes in and what comes out

def test_signature_and_input_example_describe_the_contract(store, tmp_path):
    import mlflow

    model = store["pyfunc"]
    assert model.metadata.get_input_schema() is None          # the model checks its input itself
    outputs = model.metadata.get_output_schema()
    assert outputs.input_names() == ["label", "class_name", *PROBS]
    assert [t.name for t in outputs.input_types()] == ["long", "string"] + ["float"] * 10
    local = Path(mlflow.artifacts.download_artifacts(store["model_uri"], dst_path=str(tmp_path)))
    example = np.array(json.loads((local / "serving_input_example.json").read_text())["inputs"])
    assert example.shape == (1, 32, 32, 3) and example.min() >= 0 and example.max() <= 255
    assert example.dtype.kind == "i"                         # the mean image as raw uint8 pixels
    table = model.predict(example)
    assert list(table.columns) == outputs.input_names()
    assert table["label"].dtype == np.int64 and table[PROBS].dtypes.eq(np.float32).all()
    assert "pandas==" in (local / "requirements.txt").read_text()


def test_output_names_each_image_s_class_and_its_probabilities(store):
    table = store["pyfunc"].predict(store["X_test"])
    np.testing.assert_array_equal(table["label"], store["expected"])
    assert list(table["class_name"]) == [LABELS[k] for k in store["expected"]]
    probs = table[PROBS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=1), table["label"])
    records = json.loads(table.head(2).to_json(orient="records"))       # what `mlflow models serve` returns
    assert set(records[0]) == {"label", "class_name", *PROBS}


@pytest.mark.parametrize("form", ["uint8 images", "float32 images", "uint8 rows", "float64 rows",
                                  "nested lists", "pixel columns", "image column", "named input"])
def test_every_input_form_gives_the_nets_labels(store, form):
    images = store["X_test"]
    rows = images.reshape(len(images), -1)               # HWC order: pixel (0, 0) R G B, pixel (0, 1) ...
    model_input = {
        "uint8 images": images, "float32 images": images.astype(np.float32), "uint8 rows": rows,
        "float64 rows": rows.astype(np.float64), "nested lists": images.tolist(),
        "pixel columns": pd.DataFrame(rows), "image column": pd.DataFrame({"image": list(images.tolist())}),
        "named input": {"images": images},
    }[form]
    table = store["pyfunc"].predict(model_input)
    np.testing.assert_array_equal(table["label"], store["expected"])
    reference = store["pyfunc"].predict(images)
    pd.testing.assert_frame_equal(table, reference)


@pytest.mark.parametrize("case, message", [
    ("scaled 0..1", r"pixels scaled to 0\.\.1; .* scale to 0-255"),
    ("standardized", r"lie in \[-.*raw pixel values 0\.\.255"),
    ("channel-first", r"\(120, 3, 32, 32\) is channel-first.*transpose\(0, 2, 3, 1\)"),
    ("one image", r"one image without a batch axis; pass images\[None\]"),
    ("wrong width", r"\(120, 100\) has the wrong shape; pass images \(N, 32, 32, 3\) or rows \(N, 3072\)"),
    ("strings", r"must be numbers"),
    ("ragged", r"not a regular array"),
    ("not finite", r"lie in \[.*nan"),
])
def test_inputs_it_can_tell_are_wrong_are_one_line_errors(store, case, message):
    images = store["X_test"]
    bad = {"scaled 0..1": images / 255.0, "standardized": store["pre"].apply(images),
           "channel-first": images.transpose(0, 3, 1, 2), "one image": images[0],
           "wrong width": np.zeros((len(images), 100)), "strings": np.full((2, 3072), "x"),
           "ragged": [[0] * 3072, [0] * 10],
           "not finite": np.where(np.arange(3072) == 5, np.nan, 100.0)[None, :]}[case]
    with pytest.raises(ValueError, match=message) as err:
        store["pyfunc"].predict(bad)
    assert "\n" not in str(err.value)


def test_mlflow_models_evaluate_runs_on_the_label_output(store):
    import mlflow

    frame = pd.DataFrame(store["X_test"].reshape(NUM_TEST, -1))
    frame["target"] = store["y_test"]
    with mlflow.start_run(experiment_id=store["tracker"].experiment_id):
        result = mlflow.models.evaluate("models:/m@champion", frame, targets="target", model_type="classifier",
                                        model_config={"output": "label"},
                                        evaluator_config={"label_list": list(range(10))})
    assert result.metrics["accuracy_score"] == pytest.approx(np.mean(store["expected"] == store["y_test"]))


# ------------------------------------------------------------ models logged before this contract

def log_old_style_model(tracker, run_id, params, pre, tmp_path) -> str:
    """Log as registry.log_model did at OLD_MODEL_COMMIT, with that commit's model file."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_MODEL_COMMIT}:mlp_exp/tracking/mlflow_model.py"],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"commit {OLD_MODEL_COMMIT[:7]} is not in this checkout: {shown.stderr.strip()}")
    code = tmp_path / "mlflow_model.py"
    code.write_text(shown.stdout)
    assert "Output: float32 (N, C) class probabilities" in shown.stdout
    arrays = {k: np.asarray(v, np.float32) for k, v in {**params, **pre.to_arrays()}.items()}
    np.savez(tmp_path / "weights.npz", **arrays)
    (tmp_path / "config.json").write_text(json.dumps({"config": CONFIG.asdict(), "label_names": LABELS}))
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3072))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=tracking.MODEL_NAME_IN_RUN, python_model=str(code),
            artifacts={"weights": str(tmp_path / "weights.npz"), "config": str(tmp_path / "config.json")},
            signature=signature, input_example=np.clip(np.rint(arrays["mean"]), 0, 255)[None, :])
    return info.model_uri


def test_models_logged_before_this_contract_still_score_and_evaluate(store, tmp_path):
    import mlflow

    tracker = store["tracker"]
    run = tracker.start_trial(1, CONFIG)
    log_old_style_model(tracker, run.run_id, store["params"], store["pre"], tmp_path)
    run.end("FINISHED", wait=True)
    tracker.promote("old", run.run_id, 0.5)
    old = mlflow.pyfunc.load_model("models:/old@champion")
    assert np.asarray(old.predict(store["X_test"].reshape(NUM_TEST, -1).astype(np.float32))).shape == (NUM_TEST, 10)

    score = tracker.score_model("models:/old@champion", store["X_test"], store["y_test"])
    assert score["test_accuracy"] == float(np.mean(store["expected"] == store["y_test"]))
    with pytest.raises(UserError, match="input has 100 values per image, model models:/old@champion expects 3072"):
        tracker.score_model("models:/old@champion", np.zeros((2, 100), np.uint8), np.zeros(2, int))
    out = run_cli("mlp_exp.evaluate", "--json", "--data-dir", "data", "--tracking-uri", store["uri"],
                  "--model-uri", "models:/old@champion", cwd=store["root"], timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["test_accuracy"] == score["test_accuracy"] and report["logged"] is True
    assert report["model_version"] == "old/1"
    logged = tracker.get_run(run.run_id)
    assert logged.metrics["test_accuracy"] == score["test_accuracy"]
    assert "Trial 1 of study 'contract-study'" in tracker.client.get_model_version("old", "1").description


# ------------------------------------------------------------ the logged evaluation

def test_evaluation_is_logged_on_the_champion_s_run_and_version(store):
    from PIL import Image
    from sklearn.metrics import confusion_matrix, precision_score, recall_score

    client, run_id = store["tracker"].client, store["run_id"]
    for _ in range(2):                  # evaluating twice records the test set once
        score = evaluation.evaluate_on_test_set("models:/m@champion", store["uri"], store["root"] / "data")
    assert score["logged"] is True and score["model_version"] == f"m/{store['version']}"
    y, predicted = store["y_test"], store["expected"]
    assert score["test_accuracy"] == float(np.mean(predicted == y))

    metrics = client.get_run(run_id).data.metrics
    assert metrics["test_accuracy"] == score["test_accuracy"] and metrics["num_test"] == NUM_TEST
    precision = precision_score(y, predicted, labels=range(10), average=None, zero_division=np.nan)
    recall = recall_score(y, predicted, labels=range(10), average=None, zero_division=np.nan)
    for c, name in enumerate(LABELS):
        for key, expected in ((f"test_precision_{name}", precision[c]), (f"test_recall_{name}", recall[c])):
            if np.isnan(expected):
                assert key not in metrics
            else:
                assert metrics[key] == pytest.approx(expected, abs=1e-12)

    local = Path(client.download_artifacts(run_id, "evaluation", str(store["root"] / "evaluation-artifacts")))
    table = json.loads((local / "confusion_matrix.json").read_text())
    assert table["labels"] == LABELS
    np.testing.assert_array_equal(table["counts"], confusion_matrix(y, predicted, labels=range(10)))
    with Image.open(local / "confusion_matrix.png") as image:
        assert image.width >= 600 and image.height >= 500

    inputs = [i for i in client.get_run(run_id).inputs.dataset_inputs if i.dataset.name == evaluation.TEST_DATASET]
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.digest == evaluation.dataset_digest(store["X_test"], y)
    assert json.loads(dataset.profile)["features_shape"] == [NUM_TEST, 32, 32, 3]
    assert json.loads(dataset.source)["uri"] == str(store["folder"])
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "test"

    version = client.get_model_version("m", store["version"])
    assert version.description.startswith(f"Trial 0 of study 'contract-study' (run {run_id}, val accuracy ")
    assert f"Test accuracy {score['test_accuracy']:.4f} on {NUM_TEST} images of cifar10-test" in version.description
    assert version.tags["test_accuracy"] == repr(score["test_accuracy"])
    assert version.tags["test_dataset_digest"] == dataset.digest
    model_id = store["model_uri"].removeprefix("models:/")
    linked = {m.key: m for m in client.get_logged_model(model_id).metrics}
    assert linked["test_accuracy"].value == score["test_accuracy"]
    assert linked["test_accuracy"].dataset_digest == dataset.digest


def test_the_study_s_call_records_the_same_evaluation(store):
    """What finalize does after promotion: score the rows it keeps, then log_evaluation."""
    tracker, run_id = store["tracker"], store["run_id"]
    rows = store["X_test"].reshape(NUM_TEST, -1)
    scored = tracking.score_model("models:/m@champion", rows, store["y_test"], tracking_uri=store["uri"],
                                  predictions=True)
    assert scored["predictions"] == store["expected"].tolist()
    logged = evaluation.log_evaluation(tracker, run_id, rows, store["y_test"], scored["predictions"], LABELS,
                                       source=store["folder"], model_name="m", version=store["version"])
    assert logged.metrics["test_accuracy"] == scored["test_accuracy"]
    assert logged.model_id == store["model_uri"].removeprefix("models:/")
    inputs = [i for i in tracker.client.get_run(run_id).inputs.dataset_inputs
              if i.dataset.name == evaluation.TEST_DATASET]
    assert [i.dataset.digest for i in inputs] == [evaluation.dataset_digest(store["X_test"], store["y_test"])]
    assert tracker.client.get_model_version("m", store["version"]).description == logged.description


def test_evaluate_without_logging_changes_nothing(store):
    client = store["tracker"].client
    before = client.get_run(store["run_id"]).data.metrics, client.get_model_version("m", store["version"])
    score = evaluation.evaluate_on_test_set("models:/m@champion", store["uri"], store["root"] / "data",
                                            test_size=50, log=False, predictions=True)
    assert score["logged"] is False and score["predictions"] == store["expected"][:50].tolist()
    assert score["labels"] == store["y_test"][:50].tolist()
    after = client.get_run(store["run_id"]).data.metrics, client.get_model_version("m", store["version"])
    assert after[0] == before[0] and after[1].description == before[1].description


def test_log_dataset_records_a_trial_s_training_set_by_content(store):
    tracker, X, y = store["tracker"], store["X_test"], store["y_test"]
    run = tracker.start_trial(2, CONFIG)
    digest = evaluation.log_dataset(tracker, run.run_id, "cifar10-train", X, y, store["folder"], "training")
    run.end("FINISHED", wait=True)
    (logged,) = tracker.client.get_run(run.run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("cifar10-train", digest)
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "training"
    changed = X.copy()
    changed[100, 5, 5, 0] ^= 1                  # one value, past what MLflow's own digest reads
    assert evaluation.dataset_digest(changed, y) != digest
    assert evaluation.dataset_digest(X.copy(), y.copy()) == digest
    assert evaluation.dataset_digest(X.reshape(len(X), -1), y) == digest     # rows, as a study keeps them


def test_source_tags_name_the_entry_point_user_and_commit():
    script = REPO / "mlp_exp" / "search.py"
    code = (f"import json, sys; sys.argv[0] = {str(script)!r}; "
            "from mlp_exp.tracking.evaluation import source_tags; print(json.dumps(source_tags()))")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tags = json.loads(out.stdout.strip().splitlines()[-1])
    assert tags["mlflow.source.name"] == str(script) and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout: no commit to compare")
    assert tags["mlflow.source.git.commit"] == head.stdout.strip()
