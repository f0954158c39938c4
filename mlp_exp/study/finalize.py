"""The end of a study: promote its best trial and, if it became champion, score it on the test set once."""
from __future__ import annotations

from optuna.trial import TrialState

from ..tracking.names import CHAMPION_ALIAS
from . import attrs
from .settings import StudySettings


def finalize(study, settings: StudySettings, tracker, data, out=print):
    """Promote the best trial; if it became champion, score it on the test set once."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and t.user_attrs.get(attrs.HAS_MODEL)]
    if not complete:
        out(f"no completed trial with a model in study {settings.study_name!r}: nothing to promote")
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    run_id = best.user_attrs[attrs.MLFLOW_RUN_ID]
    promotion = tracker.promote(settings.model_name, run_id, best.value)
    summary = {"study": settings.study_name, "best_trial": best.number, "run_id": run_id,
               "val_accuracy": best.value, "config": best.user_attrs.get(attrs.CONFIG, best.params),
               "model_version": promotion.version, "champion": promotion.became_champion}
    if promotion.became_champion:
        scored = tracker.score_model(f"models:/{settings.model_name}@{CHAMPION_ALIAS}",
                                     data.X_test, data.y_test)
        tracker.log_test_accuracy(run_id, scored["test_accuracy"], scored["num_test"])
        summary["test_accuracy"] = scored["test_accuracy"]
    out(format_summary(summary, promotion, settings, tracker))
    return summary


def format_summary(summary, promotion, settings, tracker) -> str:
    config = summary["config"]
    lines = [f"study {summary['study']!r}: best trial {summary['best_trial']} "
             f"(val accuracy {summary['val_accuracy']:.4f}, run {summary['run_id']})"]
    lines.append("  params: " + ", ".join(f"{k}={_fmt(config[k])}" for k in (
        "hidden_size", "learning_rate", "reg", "momentum", "lr_decay", "num_epochs",
        "batch_size", "preprocessing", "flip") if k in config))
    if summary["champion"]:
        lines.append(f"  promoted: {settings.model_name} version {promotion.version} is now @champion; "
                     f"test accuracy {summary['test_accuracy']:.4f} (spec notebook: 0.525)")
    else:
        lines.append(f"  champion unchanged: version {promotion.champion.version} of "
                     f"{settings.model_name} has val accuracy {promotion.champion.val_accuracy:.4f} "
                     f">= {summary['val_accuracy']:.4f}")
    lines.append(f"  look: mlflow ui --backend-store-uri {tracker.tracking_uri}  |  "
                 f"python -m mlp_exp.evaluate --model-uri models:/{settings.model_name}@champion")
    return "\n".join(lines)


def _fmt(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)
