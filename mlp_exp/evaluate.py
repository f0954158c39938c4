"""Score a logged model on the CIFAR-10 test set: `python -m mlp_exp.evaluate`.

    python -m mlp_exp.evaluate                       # the registered champion
    python -m mlp_exp.evaluate --model-uri models:/mlp-cifar10/3 --json

Loads the model through MLflow and scores it with the same function the
search uses for its final test accuracy (tracking.score_model), so on the same
test images `--json` reports exactly the `test_accuracy` the search logged.
This module only parses arguments and prints.
"""
from __future__ import annotations

import json
import sys

from . import cli, tracking
from .tracking.names import DEFAULT_MODEL_URI, DEFAULT_TRACKING_URI, TRACKING_URI_ENV


def build_parser() -> cli.ArgumentParser:
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
                        help="print one JSON object (model_uri, run_id, test_accuracy, num_test, per_class) "
                             "instead of a table")
    return parser


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
    score = tracking.score_on_test_set(args.model_uri, args.tracking_uri, args.data_dir, args.test_size)
    print(json.dumps(score) if args.json else format_report(score))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
