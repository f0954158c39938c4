"""The report's figures: Optuna's own plots of a study, and every trial's validation curve.

Figures are returned, never saved or shown: report.write_report saves them.
"""
from __future__ import annotations

import warnings

import numpy as np
import optuna
from optuna.trial import TrialState

from . import attrs

FIGURE_DPI = 100
SLICE_PARAMS, CONTOUR_PARAMS = 3, 2
STATE_STYLE = {                         # intermediate-values lines: colour, alpha, width
    "COMPLETE": ("tab:blue", 0.8, 1.2),
    "PRUNED": ("0.55", 0.6, 1.0),
    "DIVERGED": ("tab:red", 0.8, 1.0),
    "BEST": ("tab:orange", 1.0, 2.5),
}


def searched_view(study, names):
    """For the report's parameter plots: (view, importances). `view` is an in-memory copy of `study`
    holding only the trials the sampler drew every one of `names` for: not the spec baseline, whose
    lr and reg lie far outside the space (it would squash every axis; Optuna's add_trial refuses
    it, too); `importances` their normalised importances by Optuna's default evaluator (PED-ANOVA
    in Optuna 5: how much each parameter tells the top quantile of trials from the rest), {} before
    two of them complete."""
    view = optuna.create_study(study_name=study.study_name, directions=study.directions)
    view.add_trials([t for t in study.get_trials(deepcopy=False)
                     if set(names) <= set(t.params) and not t.user_attrs.get(attrs.BASELINE)])
    importances = {}
    if names and len(view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = dict(optuna.importance.get_param_importances(view, params=list(names)))
        except (ValueError, RuntimeError):      # nothing varied
            pass
    return view, importances


def _figure_of(axes):
    first = axes.flat[0] if isinstance(axes, np.ndarray) else axes
    return first.figure


def study_figures(study, view, param_names, importances: dict | None = None) -> tuple[dict, dict]:
    """The report's figures: ({name: matplotlib Figure}, {name: why it was skipped}).

    History and intermediate values show every trial of `study`; the parameter
    plots show `view`, the trials that sampled all of `param_names`
    (searched_view), slices and contour over the most important of them.
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
        kind = ("BEST" if trial.number == best else "DIVERGED" if attrs.DIVERGED_AT_EPOCH in trial.user_attrs
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
