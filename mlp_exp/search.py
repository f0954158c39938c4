"""Hyperparameter search for the two-layer net on CIFAR-10: `python -m mlp_exp.search`.

What is optimised: validation accuracy (best epoch) of the NumPy two-layer net,
over hidden size, learning rate, L2 strength, momentum and learning-rate decay
(study.space.SEARCH_SPACE). Each trial trains on the study's data, reports
validation accuracy per epoch to a Hyperband pruner (which lets TPE's random
start-up trials run in full), and is tracked in MLflow. When the study reaches
its target, the best trial is registered as `--model-name` and becomes
`@champion` if it beats the current one; only then is the test set used, once.

    python -m mlp_exp.search --trials 50          # then: mlflow ui / python -m mlp_exp.evaluate

A study outlives its processes: any number of them (`--workers N`, or more on
other machines sharing `--storage` and `--tracking-uri`) run it together, and the
same command resumes it. A trial whose worker dies is failed by the heartbeat
check and retried, Ctrl-C or SIGTERM closes the running trial and queues it
again, and the storage waits out a database restart (README: Scale out).

This module only parses arguments; mlp_exp.study does the work.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from . import cli
from .errors import UserError
from .study import open_session, run_session
from .study.settings import DEFAULT_STORAGE, DEFAULT_STUDY_NAME, ENVIRONMENT, PRUNERS, SAMPLERS, StudySettings, \
    default
from .study.space import parse_fixed
from .study.workers import stop_with_parent


def build_parser():
    p = cli.ArgumentParser(
        prog="python -m mlp_exp.search",
        description="Search hyperparameters of the NumPy two-layer net on CIFAR-10 with Optuna, "
                    "track every trial in MLflow, and promote the best model to @champion.")
    p.add_argument("--trials", type=cli.positive_int, default=default("trials"),
                   help="target number of finished (complete or pruned) trials; re-running resumes "
                        "an interrupted study up to this number (default %(default)s)")
    p.add_argument("--study-name", default=default("study_name"),
                   help=f"Optuna study name, also the MLflow experiment name (default ${ENVIRONMENT['study_name']}, "
                        f"else {DEFAULT_STUDY_NAME})")
    p.add_argument("--storage", default=default("storage"),
                   help="Optuna storage URL: sqlite:///file.db or postgresql://user:pass@host/db "
                        f"(default ${ENVIRONMENT['storage']}, else {DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", default=default("tracking_uri"),
                   help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlruns/mlflow.db with artifacts under mlruns/")
    p.add_argument("--data-dir", default=default("data_dir"),
                   help="folder holding cifar-10-batches-py/ (default $MLP_EXP_DATA_DIR, else ./data; "
                        "downloaded there when absent)")
    p.add_argument("--train-size", type=cli.positive_int, default=default("train_size"),
                   help="training images: the first N of the training set (default %(default)s)")
    p.add_argument("--val-size", type=cli.positive_int, default=default("val_size"),
                   help="validation images: the next N after the training ones (default %(default)s)")
    p.add_argument("--test-size", type=cli.positive_int, default=default("test_size"),
                   help="test images used once to score the champion (default: all 10000)")
    p.add_argument("--max-epochs", type=cli.positive_int, default=default("max_epochs"),
                   help="epochs of a trial that is never pruned (default %(default)s)")
    p.add_argument("--seed", type=int, default=default("seed"),
                   help="seeds the sampler (a resumed study, or a further worker, derives its own seed "
                        "from it); trial n trains with seed SEED+n (default %(default)s)")
    p.add_argument("--timeout", type=cli.positive_float, default=default("timeout"),
                   help="stop starting new trials after this many seconds; the running one finishes")
    p.add_argument("--model-name", default=default("model_name"),
                   help="registered model name in the MLflow Model Registry (default %(default)s)")
    p.add_argument("--fixed", action="append", metavar="KEY=VALUE", default=[],
                   help="pin a setting out of the search space, e.g. --fixed hidden_size=500; "
                        "repeatable; keys are TrainConfig fields")
    p.add_argument("--workers", type=cli.positive_int, default=default("workers"),
                   help="worker processes on this machine sharing the study (default %(default)s)")
    p.add_argument("--heartbeat", type=cli.positive_int, default=default("heartbeat"),
                   help="seconds between a running trial's heartbeats; a trial silent for twice "
                        "this long is failed and retried (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    p.add_argument("--no-finalize", dest="finalize", action="store_false",
                   help="only run trials; leave promotion and test scoring to another process")
    p.add_argument("--sampler", choices=SAMPLERS, default=default("sampler"),
                   help="tpe (default) or random: plain random search, as a baseline")
    p.add_argument("--pruner", choices=PRUNERS, default=default("pruner"),
                   help="hyperband (default) stops poor trials early; none trains every trial fully")
    p.add_argument("--allow-changed-settings", action="store_true",
                   help="continue an existing study although --train-size, --val-size, --max-epochs, "
                        "--fixed, --seed or the data differ from the ones it was created with (its trials "
                        "then measure different things), or its MLflow store (--tracking-uri) does (a store "
                        "moved on purpose); without it such a run is refused")
    p.add_argument("--blas-threads", type=cli.positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)   # spawned workers
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)    # ... and which one
    return p


def settings_from_args(args) -> StudySettings:
    if not 0 <= args.seed < 2**32:          # what Optuna's samplers (NumPy's RandomState) accept
        raise UserError(f"--seed must be between 0 and {2**32 - 1}, got {args.seed}")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(StudySettings)}
    return StudySettings(**{**values, "fixed": parse_fixed(args.fixed)})


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    spawned = args.parent_pid is not None
    if spawned:
        stop_with_parent(args.parent_pid)
    if settings.quiet:
        logging.getLogger("mlp_exp").setLevel(logging.WARNING)
    session = open_session(settings, worker_index=args.worker_index)
    run_session(session, worker_argv=argv, spawned=spawned, blas_threads=args.blas_threads)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
