"""Score a logged model on the CIFAR-10 test set.

    python -m mlp_exp.evaluate                       # the registered champion
    python -m mlp_exp.evaluate --model-uri models:/mlp-cifar10/3 --json

Loads the model through MLflow (`tracking.load_model`) and scores it with the
same function the search uses for its final test accuracy
(`tracking.score_model`), so on the same test images `--json` reports exactly
the `test_accuracy` the search logged.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

from .errors import UserError


class _HelpFormatter(argparse.HelpFormatter):
    def _split_lines(self, text, width):
        # keep URIs and folder names such as models:/mlp-cifar10@champion on one line
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    from .tracking import DEFAULT_MODEL_URI, DEFAULT_TRACKING_URI, TRACKING_URI_ENV

    parser = argparse.ArgumentParser(
        prog="python -m mlp_exp.evaluate", formatter_class=_HelpFormatter,
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
                        help="print one JSON object (model_uri, run_id, test_accuracy, num_test, per_class) "
                             "instead of a table")
    return parser


def evaluate(model_uri, tracking_uri=None, data_dir=None, test_size=None) -> dict:
    """Load the model, then the test set, and score it; see tracking.score_model for the result."""
    from . import data, tracking

    if test_size is not None and test_size < 1:
        raise UserError(f"--test-size must be >= 1, got {test_size}")
    model = tracking.load_model(model_uri, tracking_uri)     # fail fast, before reading data
    folder = data.ensure_cifar10(data_dir)
    _, _, X_test, y_test = data.load_cifar10_uint8(folder)
    if test_size is not None:
        if test_size > len(X_test):
            raise UserError(f"--test-size {test_size} exceeds the {len(X_test)} test images in {folder}")
        X_test, y_test = X_test[:test_size], y_test[:test_size]
    return tracking.score_model(model, X_test, y_test, label_names=data.load_label_names(folder))


def format_report(score: dict) -> str:
    width = max(len(name) for name in score["per_class"])
    lines = [f"model          {score['model_uri']} (run {score['run_id']})",
             f"test accuracy  {score['test_accuracy']:.4f} on {score['num_test']} images",
             "per class:"]
    for name, accuracy in score["per_class"].items():
        lines.append(f"  {name:<{width}}  {'-' if accuracy is None else f'{accuracy:.4f}'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        score = evaluate(args.model_uri, args.tracking_uri, args.data_dir, args.test_size)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(score) if args.json else format_report(score))
    return 0


if __name__ == "__main__":
    sys.exit(main())
