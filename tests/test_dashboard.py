"""optuna-dashboard (the optional extra `pip install '.[dashboard]'`) on a real study's storage:
its HTTP API lists the study, names its objective val_accuracy, and sees the searched parameters
in every trial, the spec baseline (trial 0) included."""
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fake_cifar import write_fake_cifar10
from helpers import cli_env, free_port
from stores import STUDY, TINY, run_search
from mlp_exp.study.space import SEARCH_SPACE

DASHBOARD = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
pytestmark = pytest.mark.skipif(not Path(DASHBOARD).is_file(),
                                reason="optuna-dashboard is not installed (pip install '.[dashboard]')")


def get_json(url: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.slow
def test_optuna_dashboard_lists_the_study_with_its_metric_name_and_search_space(tmp_path):
    write_fake_cifar10(tmp_path / "data", per_batch=80, num_test=50)
    result = run_search("--trials", "3", *TINY, "--no-finalize", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    port = free_port()
    with open(tmp_path / "dashboard.log", "w") as log:
        server = subprocess.Popen([DASHBOARD, f"sqlite:///{tmp_path}/studies/optuna.db", "--port", str(port),
                                   "--host", "127.0.0.1", "--quiet"], env=cli_env(), stdout=log, stderr=log)
    try:
        studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        summary = next((s for s in studies if s["study_name"] == STUDY), None)
        assert summary is not None, studies
        study = get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
    finally:
        server.terminate()
        server.wait(30)
    assert study["objective_names"] == ["val_accuracy"]
    assert len(study["trials"]) == 3 and study["trials"][0]["number"] == 0
    # over every trial, trial 0 (the spec baseline) included: it carries its params too
    assert {p["name"] for p in study["intersection_search_space"]} == set(SEARCH_SPACE) - {"hidden_size"}  # TINY pins it
