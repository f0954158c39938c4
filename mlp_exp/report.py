"""The study report: Optuna's plots, every trial's validation curve, and a trials table joined with MLflow.

    python -m mlp_exp.report --study-name cifar10-mlp [--storage URL] [--tracking-uri URI] [--out DIR]

What it holds (PNG figures, trials.csv, summary.txt):
- optimization_history: each trial's validation accuracy and the best so far
- param_importances: fANOVA importance of the searched parameters (complete trials)
- parallel_coordinate: every complete trial across the searched parameters
- slice: validation accuracy against each of the (up to) three most important parameters
- contour: validation accuracy over the two most important parameters
- intermediate_values: every trial's validation accuracy per epoch; pruned trials in grey,
  ending in an x, diverged ones in red, the best in orange
- trials.csv: one row per Optuna trial with its parameters, its MLflow run id, run status
  and curve diagnosis; summary.txt: counts, best trial, warnings and the top ten

`search.main` logs it to the study's parent run (artifacts under `report/`) when the
study ends; this command writes it again to --out, and logs it again unless --no-log.
At the end it warns when a best parameter lies at the edge of its range
(diagnosis.edge_findings against search.SEARCH_SPACE) and tags the parent run with it.

Besides search.py, this is the one module importing Optuna, and only
`optuna.visualization.matplotlib`, for the plots: the study comes from
`search.load_study`, the parameter importances from `search.searched_view`, and
MLflow is reached only through tracking.Tracker. Figures
are returned, and saved by `write_report`; the command line uses the Agg backend.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cli, diagnosis

log = logging.getLogger("mlp_exp.report")

ARTIFACT_DIR = "report"                 # where the parent run keeps it
TABLE_FILE, SUMMARY_FILE = "trials.csv", "summary.txt"
TOP = 10
FIGURE_DPI = 100
SLICE_PARAMS, CONTOUR_PARAMS = 3, 2
STATE_STYLE = {                         # intermediate-values lines: colour, alpha, width
    "COMPLETE": ("tab:blue", 0.8, 1.2),
    "PRUNED": ("0.55", 0.6, 1.0),
    "DIVERGED": ("tab:red", 0.8, 1.0),
    "BEST": ("tab:orange", 1.0, 2.5),
}


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
        config = t.user_attrs.get("config", {})
        notes = []
        if t.user_attrs.get("baseline"):
            notes.append("baseline")
        if "diverged_at_epoch" in t.user_attrs:
            notes.append(f"diverged in epoch {t.user_attrs['diverged_at_epoch']}")
        if "retry_of" in t.user_attrs:
            notes.append(f"retry of {t.user_attrs['retry_of']}")
        if t.user_attrs.get("surplus"):
            notes.append("surplus")
        rows.append({
            "trial": t.number, "state": t.state.name, "val_accuracy": t.value,
            "epochs": max(t.intermediate_values, default=0),
            "duration_s": t.duration.total_seconds() if t.duration else np.nan,
            "note": ", ".join(notes),
            **{name: config.get(name, t.params.get(name)) for name in param_names},
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id")})
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


# ------------------------------------------------------------- figures

def _figure_of(axes):
    first = axes.flat[0] if isinstance(axes, np.ndarray) else axes
    return first.figure


def study_figures(study, view, param_names, importances: dict | None = None) -> tuple[dict, dict]:
    """The report's figures: ({name: matplotlib Figure}, {name: why it was skipped}).

    History and intermediate values show every trial of `study`; the parameter
    plots show `view`, the trials that sampled all of `param_names`
    (search.searched_view), slices and contour over the most important of them.
    A figure the study cannot support yet (e.g. importances before two complete
    trials) is skipped with its reason rather than failing the rest. The caller
    saves and closes the figures (write_report does).
    """
    import matplotlib
    from optuna.visualization import matplotlib as oplt

    ranked = sorted(importances, key=importances.get, reverse=True) if importances else list(param_names)
    plots = {
        "optimization_history": lambda: oplt.plot_optimization_history(study, target_name="val accuracy"),
        "param_importances": lambda: oplt.plot_param_importances(view, params=list(param_names),
                                                                 target_name="val accuracy"),
        "parallel_coordinate": lambda: oplt.plot_parallel_coordinate(view, params=list(param_names),
                                                                     target_name="val accuracy"),
        "slice": lambda: oplt.plot_slice(view, params=ranked[:SLICE_PARAMS], target_name="val accuracy"),
        "contour": lambda: oplt.plot_contour(view, params=ranked[:CONTOUR_PARAMS],
                                             target_name="val accuracy"),
        "intermediate_values": lambda: _restyle_intermediate(oplt.plot_intermediate_values(study), study),
    }
    complete = [t for t in view.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    needs = {"param_importances": (len(complete) >= 2 and param_names, "at least 2 complete trials "
                                   "that sampled every searched parameter"),
             "parallel_coordinate": (complete and param_names, "a complete trial with sampled parameters"),
             "slice": (complete and param_names, "a complete trial with sampled parameters"),
             "contour": (len(complete) >= 2 and len(ranked) >= 2, "2 searched parameters and 2 complete trials"),
             "intermediate_values": (any(t.intermediate_values for t in study.get_trials(deepcopy=False)),
                                     "a trial that reported a validation accuracy"),
             "optimization_history": (study.get_trials(deepcopy=False), "a trial")}
    figures, skipped = {}, {}
    with matplotlib.rc_context(), warnings.catch_warnings():   # optuna switches the style to ggplot
        warnings.simplefilter("ignore")                         # ExperimentalWarning, few-trial notes
        for name, plot in plots.items():
            ok, need = needs[name]
            if not ok:
                skipped[name] = f"needs {need}"
                continue
            try:
                figure = _figure_of(plot())
            except Exception as err:         # a plot the data cannot support must not sink the report
                skipped[name] = f"{type(err).__name__}: {err}"
                continue
            if name == "parallel_coordinate":
                figure.set_size_inches(10, 5)   # room for each axis's tick labels
            if len(figure.axes) == 1:      # tight_layout would push a colour bar over its plots
                figure.tight_layout()
            figures[name] = figure
    return figures, skipped


def _restyle_intermediate(ax, study):
    """Optuna's intermediate-values axes, coloured by trial state instead of one legend entry per trial."""
    from matplotlib.lines import Line2D

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    best = study.best_trial.number if any(t.state.name == "COMPLETE" for t in trials.values()) else None
    counts = dict.fromkeys(STATE_STYLE, 0)
    for line in ax.get_lines():
        label = line.get_label()
        if not label.startswith("Trial"):
            continue
        trial = trials[int(label[len("Trial"):])]
        kind = ("BEST" if trial.number == best else "DIVERGED" if "diverged_at_epoch" in trial.user_attrs
                else trial.state.name if trial.state.name in STATE_STYLE else "PRUNED")
        counts[kind] += 1
        colour, alpha, width = STATE_STYLE[kind]
        line.set(color=colour, alpha=alpha, linewidth=width, zorder=3 if kind == "BEST" else 2,
                 marker="." if kind != "BEST" else "o", markersize=3 if kind != "BEST" else 4)
        if kind in ("PRUNED", "DIVERGED"):
            x, y = line.get_data()
            ax.plot(x[-1:], y[-1:], "x", color=colour, alpha=alpha, markersize=6)
    legend = ax.get_legend()
    if legend is not None:
        legend.remove()
    names = {"COMPLETE": "complete", "PRUNED": "pruned (x: last epoch)", "DIVERGED": "diverged",
             "BEST": f"best (trial {best})"}
    handles = [Line2D([], [], color=STATE_STYLE[k][0], linewidth=STATE_STYLE[k][2],
                      label=f"{names[k]}: {counts[k]}" if k != "BEST" else names[k])
               for k in STATE_STYLE if counts[k]]
    ax.legend(handles=handles, loc="lower right", fontsize="small")
    ax.set_title("Validation accuracy per epoch, every trial")
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Validation accuracy")
    return ax


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
    """diagnosis.edge_findings for the best complete trial's sampled parameters."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    if not complete:
        return []
    best = max(complete, key=lambda t: (t.value, -t.number))
    return diagnosis.edge_findings(best.params, search_space)


def build_report(study, runs=(), search_space: dict | None = None) -> Report:
    """Everything of the report in memory: table, figures, importances, warnings."""
    from . import search

    space = search.SEARCH_SPACE if search_space is None else search_space
    names = searched_params(study, space)
    view, importances = search.searched_view(study, names)
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


# ------------------------------------------------------------- command line

def build_parser():
    from . import search

    p = cli.ArgumentParser(
        prog="python -m mlp_exp.report",
        description="Write a study's report (Optuna plots, validation curves, trials table joined "
                    "with MLflow runs) to --out, and log it to the study's parent run.")
    p.add_argument("--study-name", default=search.DEFAULT_STUDY_NAME, help="Optuna study (default %(default)s)")
    p.add_argument("--storage", default=search.DEFAULT_STORAGE, help="Optuna storage URL (default %(default)s)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    p.add_argument("--out", default=None, help="folder for the report (default reports/<study name>)")
    p.add_argument("--no-log", dest="log", action="store_false",
                   help="only write --out; do not log the report to the study's parent run")
    return p


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from . import search, tracking

    args = build_parser().parse_args(argv)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    study = search.load_study(args.study_name, args.storage)
    tracker = tracking.Tracker(args.tracking_uri, experiment_name=args.study_name)
    parent = tracker.find_study_run(args.study_name)
    runs = tracker.find_trial_runs(study_name=args.study_name) if parent is not None else []
    if parent is None:
        log.warning("no MLflow runs of study %r in %s: the table has no run ids", args.study_name,
                    tracker.tracking_uri)
    report = build_report(study, runs)
    out = Path(args.out or Path("reports") / args.study_name)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:      # log exactly this report, not whatever --out holds
        paths = [Path(shutil.copy(path, out)) for path in write_report(report, tmp)]
        if args.log and parent is not None:
            log_report(report, tracker, parent.run_id, tmp)
    print(report.summary())
    print(f"wrote {len(paths)} files to {out}"
          + (f"; logged to run {parent.run_id} under {ARTIFACT_DIR}/" if args.log and parent else ""))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
