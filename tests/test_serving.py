"""The champion served for real: `mlflow models serve` and `mlflow models predict` from the project's venv.

The reference is `python -m mlp_exp.evaluate --predictions`: on the same images,
the served labels must be the ones evaluate reports. The server needs the
venv's bin on PATH: MLflow starts it as `bash -c "exec uvicorn ..."`, by name.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import cli_env, free_port, run_cli
from stores import fake_champion
from mlp_exp import data, tracking

NUM_TEST = 120
MODEL_URI = tracking.DEFAULT_MODEL_URI          # models:/mlp-cifar10@champion
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A store whose champion was trained on fake CIFAR-10 (stores.fake_champion)."""
    made = fake_champion(tmp_path_factory.mktemp("serving"), "serve-study", num_test=NUM_TEST)
    return dict(root=made["root"], uri=made["uri"], X_test=made["X_test"])

def evaluate_predictions(champion, data_dir, test_size) -> list[tuple[int, str]]:
    """(label, class_name) per image, as `python -m mlp_exp.evaluate --predictions` writes them."""
    path = champion["root"] / f"predictions-{test_size}.csv"
    out = run_cli("mlp_exp.evaluate", "--no-log", "--predictions", str(path), "--data-dir", str(data_dir),
                  "--test-size", str(test_size), "--tracking-uri", champion["uri"], cwd=champion["root"], timeout=300)
    assert out.returncode == 0, out.stderr
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(test_size))
    return [(int(r["label"]), r["class_name"]) for r in rows]


@pytest.fixture(scope="module")
def server(champion):
    """`mlflow models serve -m models:/mlp-cifar10@champion --env-manager local` on a free port."""
    port = free_port()
    env = cli_env(MLFLOW_TRACKING_URI=champion["uri"], PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    log = open(champion["root"] / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL_URI,
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=champion["root"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)        # its own group: uvicorn goes with it
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (champion["root"] / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /ping within 180 s"
            time.sleep(0.5)
        yield url
    finally:
        # Stop uvicorn (mlflow's child) first, so that mlflow reaps it and exits: stopped
        # together, mlflow would go first and leave uvicorn a zombie of init.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        if not pids:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def served(records) -> list[tuple[int, str]]:
    return [(r["label"], r["class_name"]) for r in records]


def test_served_labels_are_evaluate_s_labels(champion, server):
    status, answer = post(server, {"inputs": champion["X_test"].tolist()})     # (N, 32, 32, 3) nested lists
    assert status == 200, answer
    records = answer["predictions"]
    assert len(records) == NUM_TEST
    assert served(records) == evaluate_predictions(champion, champion["root"] / "data", NUM_TEST)
    probs = np.array([[r[f"prob_class{c}"] for c in range(10)] for r in records])
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def test_rows_as_dataframe_split_give_the_same_labels(champion, server):
    rows = champion["X_test"][:20].reshape(20, -1)              # HWC rows: images.reshape(N, -1)
    split = {"columns": list(range(rows.shape[1])), "data": rows.tolist()}
    status, answer = post(server, {"dataframe_split": split})
    assert status == 200, answer
    _, images = post(server, {"inputs": champion["X_test"][:20].tolist()})
    assert served(answer["predictions"]) == served(images["predictions"])


@pytest.mark.parametrize("transform, words", [
    (lambda X: (X / 255.0).tolist(), "scale to 0-255"),
    (lambda X: X.transpose(0, 3, 1, 2).tolist(), "channel-first"),
])
def test_inputs_it_can_tell_are_wrong_are_a_400_that_says_why(champion, server, transform, words):
    status, answer = post(server, {"inputs": transform(champion["X_test"][:4])})
    assert status == 400, answer
    assert words in answer["message"] and answer["error_code"] == "INVALID_PARAMETER_VALUE"


@pytest.mark.realdata
def test_real_test_images_served_as_evaluate_scores_them(champion, server, cifar10_dir):
    _, _, X_test, _ = data.load_cifar10_uint8(cifar10_dir)
    status, answer = post(server, {"inputs": X_test[:100].tolist()})
    assert status == 200, answer
    # labels only: the model names its classes as the fake data it was trained on did
    assert [label for label, _ in served(answer["predictions"])] == \
        [label for label, _ in evaluate_predictions(champion, cifar10_dir, 100)]


def test_mlflow_models_predict_gives_the_same_labels(champion):
    source, target = champion["root"] / "input.json", champion["root"] / "output.json"
    source.write_text(json.dumps({"inputs": champion["X_test"][:30].tolist()}))
    out = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m", MODEL_URI, "-i", str(source),
                          "-o", str(target), "-t", "json", "--env-manager", "local"],
                         cwd=champion["root"], env=cli_env(MLFLOW_TRACKING_URI=champion["uri"]),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    records = json.loads(target.read_text())["predictions"]
    assert served(records) == evaluate_predictions(champion, champion["root"] / "data", NUM_TEST)[:30]
