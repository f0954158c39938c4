"""Tests for mlp_exp.report: the trials table's join, the figures, the warnings, and the report of a real study.

References: in-memory Optuna studies whose trials are written out by hand (so
every row, colour and warning is known), and a small real study whose Optuna
trials and MLflow runs are read back independently of the report.
"""
import csv

import matplotlib
import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from fake_cifar import write_fake_cifar10
from helpers import run_cli
from mlp_exp.study import figures as report_figures
from mlp_exp.study import report
from mlp_exp.tracking import TrackedRun
from mlp_exp.study import attrs

matplotlib.use("Agg")
optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"hidden_size": ("int_log", 100, 1500), "learning_rate": ("float_log", 3e-4, 3e-2),
         "momentum": ("float", 0.8, 0.95)}
DISTRIBUTIONS = {"hidden_size": IntDistribution(100, 1500, log=True),
                 "learning_rate": FloatDistribution(3e-4, 3e-2, log=True),
                 "momentum": FloatDistribution(0.8, 0.95)}


def trial(state, params=None, value=None, curve=(), **attrs):
    params = params or {}
    return create_trial(state=state, value=value, params=params,
                        distributions={k: DISTRIBUTIONS[k] for k in params},
                        intermediate_values={epoch + 1: v for epoch, v in enumerate(curve)}, user_attrs=attrs)


def tracked(run_id, number, status, diagnosis):
    return TrackedRun(run_id, f"trial-{number:03d}", status, 0, 1, number,
                      tags={"diagnosis": diagnosis}, params={}, metrics={})


@pytest.fixture
def small_study():
    """0 baseline (complete, nothing sampled), 1 complete, 2 pruned, 3 diverged, 4 surplus (failed, no run)."""
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial(TrialState.COMPLETE, value=0.40, curve=[0.3, 0.4], mlflow_run_id="r0",
                          baseline="spec", config={"hidden_size": 500, "learning_rate": 1e-5, "momentum": 0.9}))
    study.add_trial(trial(TrialState.COMPLETE, {"hidden_size": 800, "learning_rate": 1e-2, "momentum": 0.9},
                          0.48, [0.35, 0.45, 0.48], mlflow_run_id="r1"))
    study.add_trial(trial(TrialState.PRUNED, {"hidden_size": 120, "learning_rate": 4e-4, "momentum": 0.85},
                          None, [0.2], mlflow_run_id="r2"))
    study.add_trial(trial(TrialState.PRUNED, {"hidden_size": 300, "learning_rate": 2.9e-2, "momentum": 0.81},
                          None, [0.25], mlflow_run_id="r3", diverged_at_epoch=2))
    study.add_trial(trial(TrialState.FAIL, surplus=True))
    runs = [tracked("r0", 0, "FINISHED", "ok"), tracked("r1", 1, "FINISHED", "overfitting"),
            tracked("r2", 2, "KILLED", "lr_too_low,underfitting"), tracked("r3", 3, "KILLED", "diverged"),
            tracked("other", 9, "FINISHED", "ok")]            # a run of no trial of this study
    return study, runs


# ------------------------------------------------------------- the table

def test_trials_table_joins_each_trial_with_its_run(small_study):
    study, runs = small_study
    table = report.trials_table(study, runs, list(SPACE))
    assert list(table["trial"]) == [0, 1, 2, 3, 4]                       # one row per trial, none for "other"
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED", "FAIL"]
    assert list(table["mlflow_run_id"][:4]) == ["r0", "r1", "r2", "r3"]
    assert list(table["run_status"][:4]) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]
    assert list(table["diagnosis"][:4]) == ["ok", "overfitting", "lr_too_low,underfitting", "diverged"]
    assert table["mlflow_run_id"].isna()[4] and table["run_status"].isna()[4]
    assert list(table["epochs"]) == [2, 3, 1, 1, 0]
    assert table.loc[0, "hidden_size"] == 500 and table.loc[0, "learning_rate"] == 1e-5   # the baseline's config
    assert table.loc[1, "learning_rate"] == 1e-2
    assert list(table["note"]) == ["baseline", "", "", "diverged in epoch 2", "surplus"]


def test_top_trials_are_complete_and_best_first(small_study):
    study, runs = small_study
    study.add_trial(trial(TrialState.COMPLETE, {"hidden_size": 200, "learning_rate": 1e-3, "momentum": 0.9},
                          0.48, [0.48]))                                 # ties trial 1: the earlier wins
    top = report.top_trials(report.trials_table(study, runs, list(SPACE)))
    assert list(top["trial"]) == [1, 5, 0]


def test_diagnosis_counts(small_study):
    study, runs = small_study
    counts = report.diagnosis_counts(report.trials_table(study, runs, list(SPACE)))
    assert counts == {"diverged": 1, "lr_too_low": 1, "overfitting": 1, "underfitting": 1}


# ------------------------------------------------------------- figures and warnings

@pytest.fixture
def searched_study():
    """12 complete trials over 3 parameters (value peaks at learning_rate 1e-2), 3 pruned, 1 diverged."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    for _ in range(12):
        params = {"hidden_size": int(rng.integers(100, 1500)), "learning_rate": float(10 ** rng.uniform(-3.5, -1.5)),
                  "momentum": float(rng.uniform(0.8, 0.95))}
        value = 0.5 - 0.1 * abs(np.log10(params["learning_rate"]) + 2) + 0.01 * rng.random()
        study.add_trial(trial(TrialState.COMPLETE, params, value, np.linspace(0.3, value, 4)))
    for epochs in (1, 1, 3):
        study.add_trial(trial(TrialState.PRUNED, {"hidden_size": 200, "learning_rate": 5e-4, "momentum": 0.9},
                              None, [0.2] * epochs))
    study.add_trial(trial(TrialState.PRUNED, {"hidden_size": 300, "learning_rate": 2.5e-2, "momentum": 0.9},
                          None, [0.15, 0.1], diverged_at_epoch=3))
    return study


def test_all_figures_and_the_validation_curves_by_state(searched_study, monkeypatch):
    view, importances = report_figures.searched_view(searched_study, list(SPACE))
    assert max(importances, key=importances.get) == "learning_rate"
    monkeypatch.setattr(report_figures, "SLICE_PARAMS", 2)      # fewer slices than parameters: ranking shows
    figures, skipped = report_figures.study_figures(searched_study, view, list(SPACE), importances)
    assert skipped == {}
    assert set(figures) == {"optimization_history", "param_importances", "parallel_coordinate", "slice",
                            "contour", "intermediate_values"}
    ax = figures["intermediate_values"].axes[0]
    curves = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    colours = [matplotlib.colors.to_hex(line.get_color()) for line in curves]
    hexes = {k: matplotlib.colors.to_hex(v[0]) for k, v in report_figures.STATE_STYLE.items()}
    assert len(curves) == 16                                            # every trial, pruned ones included
    assert colours.count(hexes["PRUNED"]) == 3 and colours.count(hexes["DIVERGED"]) == 1
    assert colours.count(hexes["BEST"]) == 1 and colours.count(hexes["COMPLETE"]) == 11
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 4                                            # where each pruned curve stops
    best = searched_study.best_trial
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "complete: 11", "pruned (x: last epoch): 3", "diverged: 1", f"best (trial {best.number})"]
    ranked = sorted(importances, key=importances.get, reverse=True)
    slice_titles = [a.get_xlabel() for a in figures["slice"].axes if a.get_xlabel()]
    assert sorted(slice_titles) == sorted(ranked[:2])                   # the two most important, not the third
    contour_axes = [a for a in figures["contour"].axes if a.get_xlabel()]
    assert sorted([contour_axes[0].get_xlabel(), contour_axes[0].get_ylabel()]) == sorted(ranked[:2])
    for figure in figures.values():
        matplotlib.pyplot.close(figure)


def test_figures_the_study_cannot_support_yet_are_skipped_with_a_reason(small_study):
    study, _ = small_study
    view, importances = report_figures.searched_view(study, list(SPACE))
    assert importances == {}                                             # one complete searched trial
    figures, skipped = report_figures.study_figures(study, view, list(SPACE), importances)
    assert {"optimization_history", "intermediate_values"} <= set(figures)
    assert "at least 2 complete trials" in skipped["param_importances"]
    assert "contour" in skipped


def test_best_parameters_at_range_edges_are_warned_about(small_study):
    study, _ = small_study
    assert report.best_param_warnings(study, SPACE) == []               # trial 1: 1e-2, 800, 0.9: inside
    study.add_trial(trial(TrialState.COMPLETE, {"hidden_size": 1450, "learning_rate": 1e-2, "momentum": 0.945},
                          0.55, [0.55]))
    warned = report.best_param_warnings(study, SPACE)
    assert [w.tag for w in warned] == ["hidden_size_at_high_edge", "momentum_at_high_edge"]


def test_written_report(searched_study, tmp_path):
    built = report.build_report(searched_study, runs=(), search_space=SPACE)
    paths = report.write_report(built, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        [f"{name}.png" for name in built.figures] + ["trials.csv", "summary.txt"])
    for path in paths:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 300_000
    with open(tmp_path / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == 16
    summary = (tmp_path / "summary.txt").read_text()
    assert "16 trials (12 complete, 4 pruned)" in summary and "top 10 complete trials:" in summary
    assert summary.count("COMPLETE") == 10


# ------------------------------------------------------------- a real study

@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_fake_cifar10(root / "data", per_batch=60, num_test=40)
    result = run_cli("mlp_exp.search", "--trials", "4", "--train-size", "200", "--val-size", "60",
                     "--test-size", "40", "--max-epochs", "3", "--data-dir", "data", "--fixed", "hidden_size=16",
                     cwd=root)
    assert result.returncode == 0, result.stderr
    return root, result


def client_for(root):
    import mlflow
    return mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")


def test_study_end_logs_the_report_to_the_parent_run(real_study, tmp_path):
    root, result = real_study
    client = client_for(root)
    experiment = client.get_experiment_by_name("cifar10-mlp")
    parent = client.search_runs([experiment.experiment_id], "tags.`mlp_exp.role` = 'study'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/optimization_history.png", "report/intermediate_values.png", "report/trials.csv",
            "report/summary.txt"} <= logged
    assert "diagnosis" in parent.data.tags                               # the range-edge check ran
    # the logged table joins every Optuna trial with the MLflow run of the same trial number
    study = optuna.load_study(study_name="cifar10-mlp", storage=f"sqlite:///{root}/studies/optuna.db")
    local = client.download_artifacts(parent.info.run_id, "report/trials.csv", str(tmp_path))
    rows = list(csv.DictReader(open(local)))
    assert [int(r["trial"]) for r in rows] == [t.number for t in study.trials]
    trial_runs = client.search_runs([experiment.experiment_id], "tags.`mlp_exp.role` = 'trial'")
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in trial_runs}
    for row in rows:
        run = by_number[int(row["trial"])]
        assert row["mlflow_run_id"] == run.info.run_id and row["run_status"] == run.info.status
        assert row["diagnosis"] == run.data.tags["diagnosis"]          # every trial run got a diagnosis
    assert "report: " in result.stdout and "top 10:" in result.stdout


def test_report_command_regenerates_it(real_study, tmp_path):
    root, _ = real_study
    out = tmp_path / "out"
    result = run_cli("mlp_exp.report", "--study-name", "cifar10-mlp", "--storage",
                     f"sqlite:///{root}/studies/optuna.db", "--tracking-uri", f"sqlite:///{root}/mlruns/mlflow.db",
                     "--out", str(out), "--no-log", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "trials.csv").is_file() and (out / "optimization_history.png").is_file()
    study = optuna.load_study(study_name="cifar10-mlp", storage=f"sqlite:///{root}/studies/optuna.db")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert f"{len(study.trials)} trials" in result.stdout
    for t in complete:                                                  # the top ten, printed
        assert t.user_attrs[attrs.MLFLOW_RUN_ID] in result.stdout
    assert f"wrote {len(list(out.iterdir()))} files to {out}" in result.stdout


def test_report_command_names_a_missing_study(real_study, tmp_path):
    root, _ = real_study
    result = run_cli("mlp_exp.report", "--study-name", "nope", "--storage", f"sqlite:///{root}/studies/optuna.db",
                     "--tracking-uri", f"sqlite:///{root}/mlruns/mlflow.db", "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: no study 'nope' in sqlite:///{root}/studies/optuna.db; "
                                     "studies there: cifar10-mlp")
    missing = run_cli("mlp_exp.report", "--storage", f"sqlite:///{tmp_path}/none.db", cwd=tmp_path)
    assert missing.returncode == 2 and "no Optuna storage" in missing.stderr
    assert not (tmp_path / "none.db").exists()


def test_report_no_log_writes_to_no_store(real_study, tmp_path):
    """--no-log only reads: the stores are unchanged, and a tracking store that is not there is
    reported as having no runs, not created."""
    from stores import snapshot

    root, _ = real_study
    before = snapshot(root)
    result = run_cli("mlp_exp.report", "--storage", f"sqlite:///{root}/studies/optuna.db",
                     "--tracking-uri", f"sqlite:///{root}/mlruns/mlflow.db", "--out", str(tmp_path / "a"),
                     "--no-log", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert snapshot(root) == before
    absent = tmp_path / "elsewhere"
    result = run_cli("mlp_exp.report", "--storage", f"sqlite:///{root}/studies/optuna.db",
                     "--tracking-uri", f"sqlite:///{absent}/mlflow.db", "--out", str(tmp_path / "b"),
                     "--no-log", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"no MLflow runs of study 'cifar10-mlp' in sqlite:///{absent}/mlflow.db" in result.stderr
    assert (tmp_path / "b" / "trials.csv").is_file() and not absent.exists()
    assert snapshot(root) == before
