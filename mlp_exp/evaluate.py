"""Score a logged model on the CIFAR-10 test set, and record it: `python -m mlp_exp.evaluate`.

    python -m mlp_exp.evaluate                       # the registered champion
    python -m mlp_exp.evaluate --model-uri models:/mlp-cifar10/3 --json
    python -m mlp_exp.evaluate --no-log --predictions predictions.csv

Loads the model through MLflow and scores it with the same function the
search uses for its final test accuracy (tracking.score_model), so on the same
test images `--json` reports exactly the `test_accuracy` the search logged.
Unless --no-log, the evaluation is recorded on the model's run and registered
version (tracking.evaluation.log_evaluation): test accuracy, per-class
precision and recall, the confusion matrix, the test set, a version description.
This module only parses arguments and prints.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from . import cli
from .errors import UserError, one_line
from .interrupts import Interrupts, Terminated

# Nothing here imports NumPy or the tracking package at module level: they load inside cli.run,
# where a Ctrl-C in the first second is one line, not a traceback out of an import.


def build_parser() -> cli.ArgumentParser:
    from .tracking.names import DEFAULT_MODEL_URI, DEFAULT_TRACKING_URI, TRACKING_URI_ENV

    parser = cli.ArgumentParser(
        prog="python -m mlp_exp.evaluate",
        description="Report a logged model's accuracy, overall and per class, on the CIFAR-10 test set.")
    parser.add_argument("--model-uri", default=DEFAULT_MODEL_URI,
                        help=f"the model to score: models:/<name>@<alias>, models:/<name>/<version>, "
                             f"runs:/<run id>/model or models:/<model id> (default: {DEFAULT_MODEL_URI}, "
                             f"the best model a search has registered)")
    parser.add_argument("--tracking-uri", default=None,
                        help=f"MLflow store holding the model (default: ${TRACKING_URI_ENV}, "
                             f"else {DEFAULT_TRACKING_URI})")
    parser.add_argument("--data-dir", default=None,
                        help="folder containing cifar-10-batches-py/ (default: $MLP_EXP_DATA_DIR, else ./data; "
                             "downloaded there if missing)")
    parser.add_argument("--test-size", type=int, default=None, metavar="N",
                        help="score only the first N test images (default: all 10000); use the search's "
                             "test size to reproduce its logged test_accuracy")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (model_uri, run_id, test_accuracy, num_test, per_class, "
                             "model_version, logged) instead of a table")
    parser.add_argument("--no-log", action="store_true",
                        help="only print the score; by default the evaluation (test accuracy, per-class "
                             "precision and recall, confusion matrix, the test set) is recorded on the "
                             "model's run and, for models:/<name>@<alias> or /<version>, on that version")
    parser.add_argument("--predictions", metavar="FILE", default=None,
                        help="also write every test image's prediction to FILE, as CSV: index, true_label, "
                             "label, class_name")
    return parser


def format_report(score: dict) -> str:
    from .tracking.evaluation import CONFUSION_FIGURE

    width = max(len(name) for name in score["per_class"])
    lines = [f"model          {score['model_uri']} (run {score['run_id']})",
             f"test accuracy  {score['test_accuracy']:.4f} on {score['num_test']} images",
             "per class:"]
    for name, accuracy in score["per_class"].items():
        lines.append(f"  {name:<{width}}  {'-' if accuracy is None else f'{accuracy:.4f}'}")
    if score.get("logged"):
        name, _, number = (score.get("model_version") or "").rpartition("/")
        version = f" and {name} version {number}" if name else ""
        lines.append(f"logged on run {score['run_id']}{version}: metrics, {CONFUSION_FIGURE}, the test set")
    return "\n".join(lines)


def check_predictions_path(path) -> None:
    """A UserError now, before the model is scored and the score logged, if --predictions could not
    be written later (the file itself is only written at the end: an existing one is kept until then)."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        reason = "it is a folder"
    elif not folder.is_dir():
        reason = f"there is no folder {folder}"
    elif not os.access(target if target.exists() else folder, os.W_OK):
        reason = f"{'it' if target.exists() else f'the folder {folder}'} is not writable"
    else:
        return
    raise UserError(f"cannot write --predictions {path}: {reason}; nothing was evaluated or logged")


def write_predictions(path, predictions, y_true, label_names) -> None:
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["index", "true_label", "label", "class_name"])
            out.writerows([i, t, p, label_names[p]] for i, (t, p) in enumerate(zip(y_true, predictions)))
    except OSError as err:
        raise UserError(f"cannot write --predictions {path}: {one_line(err)}") from err


def main(argv=None) -> int:
    interrupts, model_uri = Interrupts(), "the model"
    try:
        args = build_parser().parse_args(argv)
        model_uri = args.model_uri
        if args.predictions is not None:
            check_predictions_path(args.predictions)
        from .tracking.evaluation import evaluate_on_test_set
        with interrupts:        # Ctrl-C stops loading and scoring at once, never the logging
            score = evaluate_on_test_set(args.model_uri, args.tracking_uri, args.data_dir, args.test_size,
                                         log=not args.no_log, predictions=args.predictions is not None,
                                         interrupts=interrupts)
    except KeyboardInterrupt as interrupt:
        print(f"{'terminated' if isinstance(interrupt, Terminated) else 'interrupted'}: {model_uri} "
              f"was not evaluated; nothing was logged", file=sys.stderr)
        raise
    if args.predictions is not None:
        predictions, y_true = score.pop("predictions"), score.pop("labels")
        write_predictions(args.predictions, predictions, y_true, list(score["per_class"]))
    print(json.dumps(score) if args.json else format_report(score))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
