"""The MLflow UI in a real browser: `python -m mlp_exp.ui` over a small finished study, driven by headless Chromium.

It opens the study's experiment, a trial's val_accuracy chart and a first-layer
weight grid among the trial's artifacts, checks what the browser got against
what the search logged (run names, the PNG's size in pixels, the artifact's
bytes), saves screenshots, and stops the UI with Ctrl-C (SIGINT).

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium
chromium-driver`) and the `selenium` package (the `test` extra); skipped without them.
"""
import json
import select
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fake_cifar import write_fake_cifar10
from helpers import cli_env, free_port

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install -y chromium chromium-driver",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[test]'")
from selenium.webdriver.chrome.service import Service          # noqa: E402
from selenium.webdriver.common.by import By                     # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait         # noqa: E402

STUDY = "cifar10-mlp"
WAIT = 90            # seconds a page may take to show something; a bound, not an assertion
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900")


env = cli_env


def processes_with(text: str) -> list[int]:
    """Pids whose command line contains `text` (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished 3-trial study on fake data; its trial runs, read back through the MLflow client.

    Trial 0 (the spec's baseline, first, so never pruned) trains all 3 epochs: the pages look at it."""
    import mlflow

    root = tmp_path_factory.mktemp("ui")
    write_fake_cifar10(root / "data", per_batch=60, num_test=40)
    result = subprocess.run(
        [sys.executable, "-m", "mlp_exp.search", "--trials", "3", "--train-size", "200", "--val-size", "60",
         "--test-size", "40", "--max-epochs", "3", "--data-dir", "data", "--fixed", "hidden_size=16",
         "--quiet"],
        cwd=root, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY)
    trials = client.search_runs([experiment.experiment_id], "tags.`mlp_exp.role` = 'trial'",
                                order_by=["tags.`optuna.trial_number` ASC"])
    return {"root": root, "uri": uri, "experiment": experiment, "trials": trials, "client": client}


@pytest.fixture(scope="module")
def ui(study):
    """`python -m mlp_exp.ui` on the study's store; yields (process, base URL); stopped with SIGINT by a test."""
    port = free_port()
    # SIGINT at its default: a test run in the background of a shell inherits it ignored, and then
    # the Ctrl-C test below would wait for nothing
    process = subprocess.Popen([sys.executable, "-m", "mlp_exp.ui", "--tracking-uri", study["uri"],
                                "--port", str(port)], cwd=study["root"], env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ready, _, _ = select.select([process.stdout], [], [], 180)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("MLflow UI: "):
        process.kill()
        pytest.fail(f"no address from mlp_exp.ui: {line!r} {process.stderr.read() if process.poll() is not None else ''}")
    url = line.split()[2]
    yield process, url, port
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(60)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def wait_for(driver, condition, what):
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.5).until(lambda d: condition(d))
    except Exception as err:
        body = driver.find_element(By.TAG_NAME, "body").text[:1500]
        raise AssertionError(f"the page never showed {what}; it shows:\n{body}") from err


def visible(driver, xpath) -> list:
    return [element for element in driver.find_elements(By.XPATH, xpath) if element.is_displayed()]


def body_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def close_assistant(driver):
    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if button.is_displayed():
            button.click()


def test_address_and_the_same_store(ui, study):
    process, url, port = ui
    assert url == f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{url}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name={STUDY}",
                                timeout=30) as response:
        experiment = json.load(response)["experiment"]
    assert experiment["experiment_id"] == study["experiment"].experiment_id


def test_artifacts_under_a_local_path_are_served(ui, study):
    _, url, _ = ui
    run = study["trials"][0]
    assert run.info.artifact_uri.startswith("file:///")                    # the case in question
    on_disk = Path(run.info.artifact_uri[len("file://"):]) / "training_curves.png"
    with urllib.request.urlopen(f"{url}/get-artifact?path=training_curves.png&run_uuid={run.info.run_id}",
                                timeout=30) as response:
        assert response.read() == on_disk.read_bytes()


def test_experiment_page_lists_the_study(ui, study, browser, tmp_path):
    _, url, _ = ui
    experiment_id = study["experiment"].experiment_id
    browser.get(f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    wait_for(browser, lambda d: "matching runs" in body_text(d) and STUDY in body_text(d), "the study's runs")
    close_assistant(browser)
    # the trials are nested under the study's parent run: expand it
    expander = wait_for(browser, lambda d: d.find_elements(
        By.XPATH, "//*[contains(@class,'ag-row')]//button[contains(@data-component-id,'runnamecellrenderer')]"),
        "the parent run's expander")
    expander[0].click()
    names = [run.info.run_name for run in study["trials"]]
    wait_for(browser, lambda d: all(name in body_text(d) for name in names), f"the trial runs {names}")
    assert browser.save_screenshot(str(tmp_path / "experiment.png"))
    assert (tmp_path / "experiment.png").stat().st_size > 10_000


def test_trial_metric_chart(ui, study, browser, tmp_path):
    _, url, _ = ui
    run = study["trials"][0]
    browser.get(f"{url}/#/experiments/{study['experiment'].experiment_id}/runs/{run.info.run_id}/model-metrics")
    search = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[placeholder*='Search metric']"),
                      "the metric search box")[0]
    search.send_keys("val_accuracy")
    wait_for(browser, lambda d: "val_accuracy" in body_text(d) and "train_accuracy" not in body_text(d)
             and d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"), "the val_accuracy chart alone")
    assert run.info.run_name in body_text(browser)
    # the chart's x axis runs over the logged epochs (steps 1..3)
    steps = [m.step for m in study["client"].get_metric_history(run.info.run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2, 3]
    # waited for, not read once: the page can draw a chart before the metric's history arrives and redraw
    # it after (one CI run read x ticks 0 to 0.05 at the first draw, the scale of a bar of the latest value)
    seen = []

    def x_ticks(driver) -> set:
        seen[:] = driver.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot .xtick text')).map(t => t.textContent)")
        return set(seen)

    try:
        WebDriverWait(browser, WAIT, poll_frequency=0.5).until(lambda d: x_ticks(d) >= {"1", "2", "3"})
    except Exception as err:
        raise AssertionError(f"the chart's x axis never showed steps 1, 2, 3; its last ticks: {seen}") from err
    assert browser.save_screenshot(str(tmp_path / "metric.png"))


def test_weight_grid_image(ui, study, browser, tmp_path):
    from PIL import Image

    _, url, _ = ui
    run = study["trials"][0]
    images = [a.path for a in study["client"].list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    logged = sorted(images)[0]
    local = Path(run.info.artifact_uri[len("file://"):]) / logged
    width, height = Image.open(local).size
    browser.get(f"{url}/#/experiments/{study['experiment'].experiment_id}/runs/{run.info.run_id}/artifacts")
    wait_for(browser, lambda d: visible(d, "//*[text()='images']"), "the images folder")[0].click()
    name = logged.split("/", 1)[1]
    wait_for(browser, lambda d: visible(d, f"//*[text()='{name}']"), f"the file {name}")[0].click()
    # the preview is the logged PNG, fully loaded: same pixel size as the file on disk (the wait asserts it)
    wait_for(browser, lambda d: [size for size in d.execute_script(
        "return Array.from(document.images).filter(i => i.complete && i.src.startsWith('blob:'))"
        ".map(i => [i.naturalWidth, i.naturalHeight])") if size == [width, height]], f"a {width}x{height} image")
    assert browser.save_screenshot(str(tmp_path / "weights.png"))


def keep_screenshot(browser, tmp_path, name: str) -> Path:
    """Save a screenshot in tmp_path, and also as docs/<name> when MLP_EXP_SCREENSHOTS=docs
    (how the README's pictures are refreshed: MLP_EXP_SCREENSHOTS=docs pytest tests/test_ui_browser.py)."""
    import os
    import shutil

    path = tmp_path / name
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
    if os.environ.get("MLP_EXP_SCREENSHOTS") == "docs":
        shutil.copy(path, Path(__file__).resolve().parents[1] / "docs" / name)
    return path


def test_the_champion_version_page_shows_its_evaluation(ui, study, browser, tmp_path):
    _, url, _ = ui
    client = study["client"]
    champion = client.get_model_version_by_alias("mlp-cifar10", "champion")
    accuracy = float(client.get_run(champion.run_id).data.metrics["test_accuracy"])
    assert f"Test accuracy {accuracy:.4f}" in champion.description         # what the page must show
    browser.get(f"{url}/#/models/mlp-cifar10/versions/{champion.version}")
    wait_for(browser, lambda d: f"Test accuracy {accuracy:.4f}" in body_text(d), "the version's evaluation")
    close_assistant(browser)
    assert "champion" in body_text(browser)
    keep_screenshot(browser, tmp_path, "ui_model_version.png")


def test_the_champion_run_shows_its_datasets_and_confusion_matrix(ui, study, browser, tmp_path):
    _, url, _ = ui
    client = study["client"]
    champion = client.get_model_version_by_alias("mlp-cifar10", "champion")
    run = client.get_run(champion.run_id)
    names = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {"cifar10-train", "cifar10-val", "cifar10-test"} <= names, names
    browser.get(f"{url}/#/experiments/{study['experiment'].experiment_id}/runs/{champion.run_id}")
    wait_for(browser, lambda d: all(name in body_text(d) for name in ("cifar10-train", "cifar10-test")),
             "the run's datasets")
    close_assistant(browser)
    keep_screenshot(browser, tmp_path, "ui_run_datasets.png")


def test_ctrl_c_stops_the_ui_and_its_server(ui, study):
    process, url, port = ui
    server = f"--host 127.0.0.1 --port {port}"              # in the server's and its worker's command lines
    assert processes_with(server)
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    assert "MLflow UI stopped" in process.stderr.read()
    assert processes_with(server) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
