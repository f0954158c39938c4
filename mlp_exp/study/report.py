"""The study report: Optuna's plots, every trial's validation curve, and a trials table joined with MLflow.

What it holds (PNG figures, trials.csv, summary.txt):
- optimization_history: each trial's validation accuracy and the best so far
- param_importances: PED-ANOVA importance (Optuna 5's default evaluator) of the searched parameters (complete trials)
- parallel_coordinate: every complete trial across the searched parameters
- slice: validation accuracy against each of the (up to) three most important parameters
- contour: validation accuracy over the two most important parameters
- intermediate_values: every trial's validation accuracy per epoch; pruned trials in grey,
  ending in an x, diverged ones in red, the best in orange
- trials.csv: one row per Optuna trial with its parameters, its MLflow run id, run status
  and curve diagnosis; summary.txt: counts, best trial, warnings and the top ten

A finished search logs it to the study's parent run (artifacts under `report/`);
`python -m mlp_exp.report` writes it again. It warns when a best parameter lies at
the edge of its range (diagnosis.edge_findings against SEARCH_SPACE) and tags the
parent run with it. MLflow is reached only through tracking.Tracker.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import diagnosis
from . import attrs
from .figures import FIGURE_DPI, searched_view, study_figures
from .space import SEARCH_SPACE

log = logging.getLogger("mlp_exp.report")

ARTIFACT_DIR = "report"                 # where the parent run keeps it
TABLE_FILE, SUMMARY_FILE = "trials.csv", "summary.txt"
TOP = 10


# ------------------------------------------------------------- the trials table

def searched_params(study, search_space: dict) -> list[str]:
    """Names of SEARCH_SPACE parameters that some trial actually sampled, in SEARCH_SPACE order."""
    seen = {name for t in study.get_trials(deepcopy=False) for name in t.params}
    return [name for name in search_space if name in seen]


def trials_table(study, runs=(), param_names=()):
    """One row per Optuna trial, joined with its MLflow run: a pandas DataFrame sorted by trial.

    Inputs:
    - study: an Optuna study
    - runs: tracking.TrackedRun of the study's trial runs (Tracker.find_trial_runs)
    - param_names: parameter columns; values come from the trial's logged config (so the
      baseline trial, which samples nothing, shows what it trained with)
    Columns: trial, state, val_accuracy, epochs, duration_s, note, <params>, mlflow_run_id,
    run_status, diagnosis. Trials without a run (e.g. surplus) have NaN run columns.
    """
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        config = t.user_attrs.get(attrs.CONFIG, {})
        notes = []
        if t.user_attrs.get(attrs.BASELINE):
            notes.append("baseline")
        if attrs.DIVERGED_AT_EPOCH in t.user_attrs:
            notes.append(f"diverged in epoch {t.user_attrs[attrs.DIVERGED_AT_EPOCH]}")
        if attrs.RETRY_OF in t.user_attrs:
            notes.append(f"retry of {t.user_attrs[attrs.RETRY_OF]}")
        if t.user_attrs.get(attrs.SURPLUS):
            notes.append("surplus")
        rows.append({
            "trial": t.number, "state": t.state.name, "val_accuracy": t.value,
            "epochs": max(t.intermediate_values, default=0),
            "duration_s": t.duration.total_seconds() if t.duration else np.nan,
            "note": ", ".join(notes),
            **{name: config.get(name, t.params.get(name)) for name in param_names},
            "mlflow_run_id": t.user_attrs.get(attrs.MLFLOW_RUN_ID)})
    trials = pd.DataFrame(rows, columns=["trial", "state", "val_accuracy", "epochs", "duration_s", "note",
                                         *param_names, "mlflow_run_id"])
    run_rows = pd.DataFrame([{"mlflow_run_id": r.run_id, "run_status": r.status,
                              "diagnosis": r.tags.get(diagnosis.TAG_KEY)} for r in runs],
                            columns=["mlflow_run_id", "run_status", "diagnosis"])
    table = trials.merge(run_rows, on="mlflow_run_id", how="left", validate="many_to_one")
    table["val_accuracy"] = table["val_accuracy"].astype(float)
    return table.sort_values("trial").reset_index(drop=True)


def top_trials(table, n: int = TOP):
    """The n best complete trials by validation accuracy (ties: the earlier trial first)."""
    done = table[table["state"] == "COMPLETE"]
    return done.sort_values(["val_accuracy", "trial"], ascending=[False, True]).head(n)


def format_table(table) -> str:
    """The table as aligned text, floats in 4 significant digits."""
    if table.empty:
        return "(no trials)"
    return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}")


# ------------------------------------------------------------- the report

@dataclass
class Report:
    study_name: str
    table: object                                   # pandas DataFrame, see trials_table
    figures: dict                                   # name -> Figure (closed once written)
    skipped: dict                                   # name -> reason
    importances: dict                               # param -> normalised importance
    warnings: list = field(default_factory=list)    # diagnosis.Finding: best params at range edges

    def summary(self) -> str:
        table = self.table
        states = table["state"].value_counts().to_dict() if len(table) else {}
        lines = [f"study {self.study_name!r}: {len(table)} trials ("
                 + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + ")"]
        top = top_trials(table)
        if len(top):
            best = top.iloc[0]
            lines.append(f"best: trial {best['trial']}, val accuracy {best['val_accuracy']:.4f}, "
                         f"run {best['mlflow_run_id']}")
        if self.importances:
            lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in self.importances.items()))
        found = diagnosis_counts(table)
        if found:
            lines.append("diagnosis: " + ", ".join(f"{tag} {n}" for tag, n in found.items()))
        lines += [f"warning: {w.reason}" for w in self.warnings]
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        shown = [c for c in top.columns if c not in ("duration_s",)]
        lines.append(f"top {min(TOP, len(top))} complete trials:")
        lines.append(format_table(top[shown]))
        return "\n".join(lines)


def diagnosis_counts(table) -> dict:
    """{tag: number of trials with it}, most frequent first; 'ok' runs and runs without a diagnosis skipped."""
    counts: dict = {}
    for value in table.get("diagnosis", []):
        if isinstance(value, str) and value != diagnosis.NO_FINDINGS:
            for tag in value.split(","):
                counts[tag] = counts.get(tag, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def best_param_warnings(study, search_space: dict) -> list:
    """diagnosis.edge_findings for the best complete searched trial's parameters (the spec baseline's
    lie outside the space on purpose: they say nothing about its edges)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
                and not t.user_attrs.get(attrs.BASELINE)]
    if not complete:
        return []
    best = max(complete, key=lambda t: (t.value, -t.number))
    return diagnosis.edge_findings(best.params, search_space)


def build_report(study, runs=(), search_space: dict | None = None) -> Report:
    """Everything of the report in memory: table, figures, importances, warnings."""
    space = SEARCH_SPACE if search_space is None else search_space
    names = searched_params(study, space)
    view, importances = searched_view(study, names)
    figures, skipped = study_figures(study, view, names, importances)
    table = trials_table(study, runs, list(space))
    return Report(study.study_name, table, figures, skipped, importances, best_param_warnings(study, space))


def write_report(report: Report, out_dir) -> list[Path]:
    """Save the figures (then close them), trials.csv and summary.txt into out_dir; returns the paths."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in report.figures.items():
        path = out / f"{name}.png"
        figure.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    report.table.to_csv(out / TABLE_FILE, index=False)
    (out / SUMMARY_FILE).write_text(report.summary() + "\n")
    return paths + [out / TABLE_FILE, out / SUMMARY_FILE]


def log_report(report: Report, tracker, run_id: str, folder) -> None:
    """Upload a written report to run `run_id` under report/, and tag the run with the edge warnings."""
    tracker.log_artifacts(run_id, folder, ARTIFACT_DIR)
    tracker.set_tags(run_id, diagnosis.as_tags(report.warnings))


def log_study_report(study, tracker, quiet: bool = False) -> Report | None:
    """At the end of a study: build the report, log it to the parent run, warn about range edges.

    Never raises: a report that fails is a warning, not a failed study.
    """
    import matplotlib

    matplotlib.use("Agg")
    try:
        runs = tracker.find_trial_runs(study_name=study.study_name)
        report = build_report(study, runs)
        for finding in report.warnings:
            log.warning("warning: %s", finding.reason)
        with tempfile.TemporaryDirectory() as tmp:
            write_report(report, tmp)
            log_report(report, tracker, tracker.parent_run_id, tmp)
    except Exception as err:
        log.warning("the study report failed (%s: %s); make it later with: python -m mlp_exp.report "
                    "--study-name %s", type(err).__name__, err, study.study_name, exc_info=True)
        return None
    if not quiet:
        print(f"report: {len(report.figures)} figures, {TABLE_FILE} and {SUMMARY_FILE} on run "
              f"{tracker.parent_run_id} under {ARTIFACT_DIR}/; top {TOP}:")
        print(format_table(top_trials(report.table)[["trial", "val_accuracy", "epochs", "mlflow_run_id",
                                                     "diagnosis"]]))
    return report
