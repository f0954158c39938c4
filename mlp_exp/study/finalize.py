"""The end of a study: promote its best trial and, if it became champion, score it on the test set once
and log that evaluation; the parent run records the outcome."""
from __future__ import annotations

from optuna.trial import TrialState

from ..hold import hold_step
from . import attrs
from .settings import StudySettings, data_fingerprint, promotion_basis


def finalize(study, settings: StudySettings, tracker, data, out=print, *, source=None, check=lambda: None):
    """Promote the best trial; if it became champion, score it on the test set once and log that
    evaluation (metrics, per-class precision and recall, confusion matrix, the test set as a dataset,
    the version's description) on its run and registered version; record the outcome on the parent run.

    Like for like: against a champion validated on the same images (promotion_basis: the same
    train and validation sizes and data), the higher val accuracy wins; against one validated on
    other images the two val accuracies measure different things, so both models are scored on this
    study's test images and the higher test accuracy wins (a tie keeps the champion).

    `source`: the folder the test images came from (the dataset's source; default: the data dir
    setting). `check()` raises a pending Ctrl-C or SIGTERM (Interrupts.check): called between
    store writes, so an interrupted promotion stops where a re-run can finish it. A re-run finds
    this study's version already @champion and, if it was never scored, scores it then.
    """
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and t.user_attrs.get(attrs.HAS_MODEL)]
    if not complete:
        out(f"no completed trial with a model in study {settings.study_name!r}: nothing to promote")
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    run_id = best.user_attrs[attrs.MLFLOW_RUN_ID]
    scores = {}                             # version -> score_model's dict (with predictions)

    def score(model_uri):
        return tracker.score_model(model_uri, data.X_test, data.y_test, data.label_names, predictions=True)

    def verdict(champion, model_uri) -> bool:
        version = model_uri.rsplit("/", 1)[1]
        scores.update({version: score(model_uri), champion.version: score(champion.model_uri)})
        return scores[version]["test_accuracy"] > scores[champion.version]["test_accuracy"]

    promotion = tracker.promote(settings.model_name, run_id, best.value,
                                basis=promotion_basis(settings, data_fingerprint(data)), verdict=verdict)
    tested = {version: s["test_accuracy"] for version, s in scores.items()}
    summary = {"study": settings.study_name, "best_trial": best.number, "run_id": run_id,
               "val_accuracy": best.value, "config": best.user_attrs.get(attrs.CONFIG, best.params),
               "model_version": promotion.version, "champion": promotion.became_champion,
               "test_verdict": tested, "num_test": len(data.y_test)}
    hold_step("finalize", check)            # tests only: see hold.py
    check()
    is_champion = promotion.champion.version == promotion.version
    if promotion.became_champion or (is_champion and not tracker.evaluated(settings.model_name, promotion.version)):
        model_uri = f"models:/{settings.model_name}/{promotion.version}"
        champion_score = scores.get(promotion.version) or score(model_uri)  # scored once: by the verdict, or now
        check()
        tracker.log_score(model_uri, champion_score, data.X_test, data.y_test, data.label_names,
                          source=source or settings.data_dir or ".")
        summary["test_accuracy"] = champion_score["test_accuracy"]
        check()
    tracker.log_study_outcome(best.number, run_id, best.value, promotion.version, promotion.champion.version,
                              summary.get("test_accuracy"), len(data.y_test))
    out(format_summary(summary, promotion, settings, tracker))
    return summary


def format_summary(summary, promotion, settings, tracker) -> str:
    config = summary["config"]
    lines = [f"study {summary['study']!r}: best trial {summary['best_trial']} "
             f"(val accuracy {summary['val_accuracy']:.4f}, run {summary['run_id']})"]
    shown = ("hidden_size", "learning_rate", "reg", "momentum", "lr_decay", "num_epochs", "batch_size",
             "init_std", "preprocessing", "flip", "translate")
    lines.append("  params: " + ", ".join(f"{k}={_fmt(config[k])}" for k in shown if k in config)
                 + (f", precision={config['precision']}" if config.get("precision", "fp32") != "fp32" else ""))
    verdict = summary["test_verdict"]
    if verdict:
        ours, theirs = verdict[promotion.version], next(v for k, v in verdict.items() if k != promotion.version)
        lines.append(f"  the champion was validated on other images, so val accuracies were not compared: on this "
                     f"study's {summary['num_test']} test images version {promotion.version} scored {ours:.4f}, "
                     f"the champion {theirs:.4f}")
    if summary["champion"]:
        lines.append(f"  promoted: {settings.model_name} version {promotion.version} is now @champion; "
                     f"test accuracy {summary['test_accuracy']:.4f} (spec notebook: 0.525)")
    elif "test_accuracy" in summary:        # a re-run finishing an interrupted promotion
        lines.append(f"  {settings.model_name} version {promotion.version} was already @champion, not yet "
                     f"scored: test accuracy {summary['test_accuracy']:.4f} (spec notebook: 0.525)")
    elif verdict:
        lines.append(f"  champion unchanged: version {promotion.champion.version} of {settings.model_name} "
                     "scored as well or better on the test images")
    else:
        lines.append(f"  champion unchanged: version {promotion.champion.version} of "
                     f"{settings.model_name} has val accuracy {promotion.champion.val_accuracy:.4f} "
                     f">= {summary['val_accuracy']:.4f}")
    lines.append(f"  look: mlflow ui --backend-store-uri {tracker.display_uri}  |  "
                 f"python -m mlp_exp.evaluate --model-uri models:/{settings.model_name}@champion")
    return "\n".join(lines)


def _fmt(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)
