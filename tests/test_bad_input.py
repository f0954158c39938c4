"""Every bad input gets one clear line, exit code 2, no traceback, and leaves the stores as they were.

A small study (run with --no-finalize, so no champion exists yet) sits in a folder; each case runs
the real CLI against it and compares a snapshot of everything stored before and after: the Optuna
trials, the MLflow experiments, runs, registered models, and the files in the folder.
"""
import numpy as np
import pytest

from fake_cifar import write_fake_cifar10
from helpers import free_port, run_cli
from stores import TINY, assert_one_line_error, load_study, run_search, snapshot
from mlp_exp.study import attrs

TRACKING = "sqlite:///mlruns/mlflow.db"
SEARCH = ("--trials", "3", *TINY)      # one more trial than the study has: a run that got through would add it


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    write_fake_cifar10(root / "data", per_batch=80, num_test=50)
    write_fake_cifar10(root / "incomplete", per_batch=10, num_test=10)
    (root / "incomplete" / "cifar-10-batches-py" / "test_batch").unlink()
    write_fake_cifar10(root / "corrupt", per_batch=10, num_test=10)
    batch = root / "corrupt" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    (root / "afile").write_text("not a folder")
    result = run_search("--trials", "2", *TINY, "--no-finalize", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


CLOSED_PORT = free_port()       # nothing listens there

SEARCH_CASES = {
    "data folder incomplete": (("--data-dir", "incomplete"), "is incomplete (missing test_batch)"),
    "data batch corrupt": (("--data-dir", "corrupt"), "data_batch_3 is truncated or unreadable"),
    "data dir is a file": (("--data-dir", "afile"), "cannot create data dir afile"),
    "storage unreachable": (("--storage", f"postgresql://mlp:secret@127.0.0.1:{CLOSED_PORT}/optuna"),
                            "cannot open Optuna storage", "Connection refused", "mlp:***@"),
    "storage sqlite with two slashes": (("--storage", "sqlite://studies/optuna.db"),
                                        "cannot open Optuna storage 'sqlite://studies/optuna.db'"),
    "storage scheme postgres": (("--storage", "postgres://mlp@127.0.0.1/optuna"), "not postgres://"),
    "storage not a URL": (("--storage", "studies/optuna.db"), "cannot open Optuna storage"),
    "tracking server unreachable": (("--tracking-uri", f"http://127.0.0.1:{CLOSED_PORT}"),
                                    "cannot reach the MLflow tracking server"),
    "fixed unknown key": (("--fixed", "hiden_size=8"), "unknown key 'hiden_size'"),
    "fixed ill-typed value": (("--fixed", "hidden_size=big"), "hidden_size takes a value of type int, got 'big'"),
    "fixed bad value": (("--fixed", "learning_rate=-1"), "learning_rate must be"),
    "fixed without =": (("--fixed", "hidden_size"), "--fixed takes KEY=VALUE"),
    "fixed unknown precision": (("--fixed", "precision=fp16"), "precision must be one of fp32, bf16, got 'fp16'"),
    "fixed study-level key": (("--fixed", "seed=3"), "set by --seed"),
    "zero trials": (("--trials", "0"), "--trials: must be >= 1, got 0"),
    "seed too large for the samplers": (("--seed", str(2**32)), f"--seed must be between 0 and {2**32 - 1}"),
    "negative seed": (("--seed", "-1"), "--seed must be between 0 and"),
    "sizes larger than the data": (("--train-size", "400", "--val-size", "50"),
                                   "400 + 50 = 450 exceeds the 400 CIFAR-10 training images"),
}


@pytest.mark.parametrize("case", list(SEARCH_CASES))
def test_search_rejects_bad_input_and_stores_nothing(study_dir, case):
    args, *expected = SEARCH_CASES[case]
    before = snapshot(study_dir)
    line = assert_one_line_error(run_cli("mlp_exp.search", *SEARCH, *args, cwd=study_dir), *expected)
    assert "secret" not in line                     # a password never reaches the terminal
    assert snapshot(study_dir) == before


EVALUATE_CASES = {
    "no champion yet": ((), "error: no model at models:/mlp-cifar10@champion in sqlite:///mlruns/mlflow.db"),
    "no store at all": (("--tracking-uri", "sqlite:///nowhere/mlflow.db"),
                        "error: no model at models:/mlp-cifar10@champion: there is no MLflow store"),
    "unknown version": (("--model-uri", "models:/mlp-cifar10/7"), "error: cannot load model models:/mlp-cifar10/7"),
    "unknown model name": (("--model-uri", "models:/never-registered@champion"),
                           "error: no model at models:/never-registered@champion"),
    "unknown run": (("--model-uri", "runs:/0123456789abcdef0123456789abcdef/model"),
                    "error: cannot load model runs:/0123456789abcdef0123456789abcdef/model"),
    # checked before the model is even looked up (so before anything could be scored and logged)
    "predictions into a missing folder": (("--predictions", "nowhere/p.csv"),
                                          "error: cannot write --predictions nowhere/p.csv: there is no folder nowhere"),
    "predictions onto a folder": (("--predictions", "data"), "error: cannot write --predictions data: it is a folder"),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_rejects_missing_models_and_stores_nothing(study_dir, case):
    args, expected = EVALUATE_CASES[case]
    before = snapshot(study_dir)
    result = run_cli("mlp_exp.evaluate", "--data-dir", "data", "--tracking-uri", TRACKING, *args,
                        cwd=study_dir)
    assert assert_one_line_error(result).startswith(expected)
    assert snapshot(study_dir) == before
    assert not (study_dir / "nowhere").exists()     # reading made no store


def test_input_of_the_wrong_width_is_one_clear_error(study_dir):
    from mlp_exp import tracking
    from mlp_exp.errors import UserError

    with_model = [t for t in load_study(f"sqlite:///{study_dir}/studies/optuna.db").get_trials()
                  if t.user_attrs.get(attrs.HAS_MODEL)]
    uri = f"runs:/{with_model[0].user_attrs[attrs.MLFLOW_RUN_ID]}/model"
    model = tracking.load_model(uri, f"sqlite:///{study_dir}/mlruns/mlflow.db")
    before = snapshot(study_dir)
    with pytest.raises(UserError, match=r"^input has 100 values per image, model runs:/\w+/model expects 3072"):
        tracking.score_model(model, np.zeros((4, 100), np.uint8), np.zeros(4, np.int64))
    assert snapshot(study_dir) == before
