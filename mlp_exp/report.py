"""Write a study's report again: `python -m mlp_exp.report`.

    python -m mlp_exp.report --study-name cifar10-mlp [--storage URL] [--tracking-uri URI] [--out DIR]

The report (study.report: Optuna's plots, every trial's validation curve, a
trials table joined with the MLflow runs) goes to --out and, unless --no-log,
to the study's parent run under report/. A finished search logs it there too.
This module only parses arguments.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from . import cli, tracking
from .errors import UserError, one_line
from .study import load_study
from .study.report import ARTIFACT_DIR, build_report, log_report, write_report
from .study.settings import DEFAULT_STORAGE, DEFAULT_STUDY_NAME, ENVIRONMENT, default

log = logging.getLogger("mlp_exp.report")


def build_parser():
    p = cli.ArgumentParser(
        prog="python -m mlp_exp.report",
        description="Write a study's report (Optuna plots, validation curves, trials table joined "
                    "with MLflow runs) to --out, and log it to the study's parent run.")
    p.add_argument("--study-name", default=default("study_name"),
                   help=f"Optuna study (default ${ENVIRONMENT['study_name']}, else {DEFAULT_STUDY_NAME})")
    p.add_argument("--storage", default=default("storage"),
                   help=f"Optuna storage URL (default ${ENVIRONMENT['storage']}, else {DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    p.add_argument("--out", default=None, help="folder for the report (default reports/<study name>)")
    p.add_argument("--no-log", dest="log", action="store_false",
                   help="only write --out; do not log the report to the study's parent run")
    return p


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    args = build_parser().parse_args(argv)
    out = Path(args.out or Path("reports") / args.study_name)
    if out.exists() and not out.is_dir():       # before anything is read or logged
        raise UserError(f"--out {out} is a file, not a folder; pass a folder for the report's files")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    study = load_study(args.study_name, args.storage)
    # read-only until there is something to log: --no-log (or a study with no parent run) writes to no store
    tracker = tracking.Tracker(args.tracking_uri, experiment_name=args.study_name, create=False)
    parent = tracker.find_study_run(args.study_name)
    if args.log and parent is not None:
        try:
            tracking.check_store(tracker.tracking_uri, write=True)
        except UserError as err:
            raise UserError(f"{err}; or pass --no-log to only write --out") from None
    runs = tracker.find_trial_runs(study_name=args.study_name) if parent is not None else []
    if parent is None:
        log.warning("no MLflow runs of study %r in %s: the table has no run ids", args.study_name,
                    tracker.tracking_uri)
    report = build_report(study, runs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --out {out}: {one_line(err)}; pass a writable folder") from None
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
