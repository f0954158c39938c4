"""Hyperparameter search for the two-layer net on CIFAR-10: `python -m mlp_exp.search`.

What is optimised: validation accuracy (best epoch) of the NumPy two-layer net,
over hidden size, learning rate, L2 strength, momentum and learning-rate decay
(and whatever else SEARCH_SPACE lists). Each trial trains on the study's data,
reports validation accuracy per epoch to a Hyperband pruner, and is tracked in
MLflow. When the study reaches its target, the best trial is registered as
`--model-name` and becomes `@champion` if it beats the current one; only then
is the test set used, once.

    python -m mlp_exp.search --trials 50          # then: mlflow ui / python -m mlp_exp.evaluate

This is the only module that imports Optuna. `config_for_trial` is the one
place a trial becomes a TrainConfig; below it nothing knows about Optuna.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from . import cli
from .config import TrainConfig, field_names, parse_value
from .errors import UserError
from .trainer import StopTraining, train

log = logging.getLogger("mlp_exp.search")

DEFAULT_STUDY_NAME = "cifar10-mlp"
DEFAULT_STORAGE = "sqlite:///studies/optuna.db"
DEFAULT_MODEL_NAME = "mlp-cifar10"
DEFAULT_TRIALS = 50
DEFAULT_MAX_EPOCHS = 30

# The search space, as data: name -> (kind, low, high) or ("categorical", choices).
# Ranges are for standardized inputs (unit variance per pixel).
SEARCH_SPACE = {
    "hidden_size": ("int_log", 100, 1500),
    "learning_rate": ("float_log", 3e-4, 3e-2),
    "reg": ("float_log", 1e-5, 3e-2),
    "momentum": ("float", 0.8, 0.95),
    "lr_decay": ("float", 0.85, 1.0),
}

# Settings every searched trial starts from (the search space and --fixed override them).
STUDY_DEFAULTS = dict(
    update="momentum", batch_size=200, init_std=2e-2,
    preprocessing="standardize", flip=True,
)

# Trial 0 replays the spec notebook's best grid configuration, so the study
# starts from the baseline it has to beat. (The notebook passed reg=1.0 to
# every grid run whatever its loop said, so its best used reg 1.0.)
SPEC_BASELINE = dict(
    hidden_size=500, learning_rate=1e-5, reg=1.0, momentum=0.9, lr_decay=0.95,
    update="momentum", batch_size=100, num_epochs=5, init_std=6e-3,
    preprocessing="mean_image", flip=False,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class StudySettings:
    """Everything that is the same for every trial of one study invocation."""
    study_name: str = DEFAULT_STUDY_NAME
    trials: int = DEFAULT_TRIALS
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None
    data_dir: str | None = None
    train_size: int = 49000
    val_size: int = 1000
    test_size: int | None = None
    max_epochs: int = DEFAULT_MAX_EPOCHS
    seed: int = 0
    timeout: float | None = None
    model_name: str = DEFAULT_MODEL_NAME
    fixed: dict = field(default_factory=dict)
    workers: int = 1
    heartbeat: int = 30
    quiet: bool = False
    finalize: bool = True


# ----------------------------------------------------------------- trial -> config

def _suggest(trial, name, spec):
    kind = spec[0]
    if kind == "int_log":
        return trial.suggest_int(name, spec[1], spec[2], log=True)
    if kind == "int":
        return trial.suggest_int(name, spec[1], spec[2])
    if kind == "float_log":
        return trial.suggest_float(name, spec[1], spec[2], log=True)
    if kind == "float":
        return trial.suggest_float(name, spec[1], spec[2])
    if kind == "categorical":
        return trial.suggest_categorical(name, spec[1])
    raise ValueError(f"unknown search-space kind {kind!r} for {name}")


def config_for_trial(trial, settings: StudySettings) -> TrainConfig:
    """The one mapping from an Optuna trial to a TrainConfig: all suggestions first, then plain values."""
    if trial.user_attrs.get("baseline"):
        values = dict(SPEC_BASELINE)
    else:
        values = {"num_epochs": settings.max_epochs, **STUDY_DEFAULTS}
        values.update({name: _suggest(trial, name, spec)
                       for name, spec in SEARCH_SPACE.items() if name not in settings.fixed})
    values.update(settings.fixed)
    values.update(train_size=settings.train_size, val_size=settings.val_size,
                  seed=settings.seed + trial.number,
                  num_epochs=min(values["num_epochs"], settings.max_epochs))
    return TrainConfig(**values)


def parse_fixed(pairs) -> dict:
    """['hidden_size=500', 'flip=false'] -> {'hidden_size': 500, 'flip': False}, checked against TrainConfig."""
    fixed = {}
    reserved = {"train_size", "val_size", "seed"}   # study-level flags own these
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--fixed takes KEY=VALUE, got {pair!r}")
        if key in reserved:
            raise UserError(f"--fixed {key}=... is set by --{key.replace('_', '-')} instead")
        if key not in field_names():
            raise UserError(f"--fixed: unknown key {key!r}; known keys: "
                            f"{', '.join(k for k in field_names() if k not in reserved)}")
        try:
            fixed[key] = parse_value(key, value)
        except ValueError as err:
            raise UserError(f"--fixed: {err}") from None
    try:   # a pinned value must make a valid config on its own
        TrainConfig(**{**STUDY_DEFAULTS, **fixed})
    except ValueError as err:
        raise UserError(f"--fixed: {err}") from None
    return fixed


# ----------------------------------------------------------------- storage and study

def open_storage(url: str, heartbeat: int, on_stale=None):
    """An RDB storage with heartbeats, so a trial whose process died is failed and retried."""
    from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        # Several workers share one SQLite file: wait for the lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs = {"pool_pre_ping": True}
    try:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat, heartbeat_stale_trial_callback=on_stale)
        if url.startswith("sqlite:///"):
            with storage.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    except (ArgumentError, OperationalError, SQLAlchemyError, ValueError, ModuleNotFoundError) as err:
        detail = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise UserError(f"cannot open Optuna storage {url!r}: {detail}; check the --storage URL "
                        "(sqlite:///path.db or postgresql://user:pass@host:port/db) and that the "
                        "database server is running") from None
    return storage


def counts(study) -> dict:
    by_state = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        by_state[trial.state] += 1
    return {"finished": by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED],
            "complete": by_state[TrialState.COMPLETE], "running": by_state[TrialState.RUNNING],
            "waiting": by_state[TrialState.WAITING], "failed": by_state[TrialState.FAIL]}


class Surplus(Exception):
    """A worker started a trial although the target was already covered (a race between workers)."""


# ----------------------------------------------------------------- the objective

class Objective:
    """Trains one trial: config from the trial, tracking and pruning as callbacks."""

    def __init__(self, settings: StudySettings, data, tracker, extra_callbacks=()):
        self.settings, self.data, self.tracker = settings, data, tracker
        self.extra_callbacks = list(extra_callbacks)

    def __call__(self, trial):
        study, settings = trial.study, self.settings
        ahead = sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED + (
            TrialState.RUNNING, TrialState.WAITING)) if t.number < trial.number)
        if ahead >= settings.trials:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number} not needed: {ahead} trials cover the target")

        config = config_for_trial(trial, settings)
        run = self.tracker.start_trial(trial.number, config)
        trial.set_user_attr("mlflow_run_id", run.run_id)
        trial.set_user_attr("config", config.asdict())

        def prune(stats):
            trial.report(stats.val_accuracy, stats.epoch)
            if trial.should_prune():
                raise StopTraining(f"pruned at epoch {stats.epoch}: validation accuracy "
                                   f"{stats.val_accuracy:.4f} below the pruner's cut")

        try:
            result = train(self.data.X_train, self.data.y_train, self.data.X_val, self.data.y_val,
                           config, callbacks=[run.log_epoch, prune, *self.extra_callbacks],
                           preprocessor=self.data.preprocessors[config.preprocessing])
        except KeyboardInterrupt:
            run.end("KILLED", {"stop_reason": "interrupted"})
            retry_later(study, trial)
            raise
        except Exception as err:
            run.end("FAILED", {"error": f"{type(err).__name__}: {err}"})
            raise
        run.log_result(result)
        if result.diverged:
            epoch = result.epochs[-1].epoch
            run.end("KILLED", {"stop_reason": "diverged", "diverged": "true",
                               "pruned_at_epoch": str(epoch)})
            trial.set_user_attr("diverged_at_epoch", epoch)
            raise optuna.TrialPruned(f"diverged (non-finite loss) in epoch {epoch}")
        if result.stop_reason:
            epoch = result.epochs[-1].epoch
            run.end("KILLED", {"stop_reason": result.stop_reason, "pruned_at_epoch": str(epoch)})
            raise optuna.TrialPruned(result.stop_reason)
        best_so_far = max((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                           if t.value is not None), default=-math.inf)
        if result.best_val_accuracy > best_so_far:
            # only trials that improve the study's best get a model: the best trial always has one
            run.log_model(result.best_params, self.data.preprocessors[config.preprocessing],
                          config, self.data.label_names)
            trial.set_user_attr("has_model", True)
        run.end("FINISHED")
        return result.best_val_accuracy


def retry_later(study, trial):
    """Queue the interrupted trial's configuration so the resumed study runs it again."""
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("mlflow_run_id", "config")}
    study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number})


# ----------------------------------------------------------------- running a study

def make_study(settings: StudySettings, tracker):
    def on_stale(study, failed_trial):
        # Its process died (kill -9, lost machine): close its MLflow run and retry its configuration.
        run_id = failed_trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracker.end_run(run_id, "FAILED", {"error": "worker died (no heartbeat); trial retried"})
        optuna.storages.RetryFailedTrialCallback(max_retry=3)(study, failed_trial)

    storage = open_storage(settings.storage, settings.heartbeat, on_stale)
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=10,
                                         multivariate=True, constant_liar=True)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=settings.max_epochs,
                                            reduction_factor=3)
    study = optuna.create_study(study_name=settings.study_name, storage=storage, sampler=sampler,
                                pruner=pruner, direction="maximize", load_if_exists=True)
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial({}, user_attrs={"baseline": "spec notebook's best grid configuration"},
                            skip_if_exists=True)
    return study


def run_worker(study, objective, settings: StudySettings, poll_seconds=2.0):
    """Run trials until the study has `settings.trials` finished (complete or pruned) trials.

    Near the end, a worker whose peers hold the last trials waits instead of
    starting surplus ones: should a peer die, its trial is failed by the
    heartbeat check and comes back as a waiting retry, which this worker runs.
    """
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"
        c = counts(study)
        if c["finished"] >= settings.trials:
            return "done"
        if c["finished"] + c["running"] >= settings.trials and not c["waiting"]:
            time.sleep(poll_seconds)
            optuna.storages.fail_stale_trials(study)
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)


def finalize(study, settings: StudySettings, tracker, data, out=print):
    """Promote the best trial; if it became champion, score it on the test set once."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and t.user_attrs.get("has_model")]
    if not complete:
        out(f"no completed trial with a model in study {settings.study_name!r}: nothing to promote")
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    run_id = best.user_attrs["mlflow_run_id"]
    promotion = tracker.promote(settings.model_name, run_id, best.value)
    summary = {"study": settings.study_name, "best_trial": best.number, "run_id": run_id,
               "val_accuracy": best.value, "config": best.user_attrs.get("config", best.params),
               "model_version": promotion.version, "champion": promotion.became_champion}
    if promotion.became_champion:
        scored = tracker.score_model(f"models:/{settings.model_name}@champion",
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


# ----------------------------------------------------------------- command line

def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser():
    p = cli.ArgumentParser(
        prog="python -m mlp_exp.search",
        description="Search hyperparameters of the NumPy two-layer net on CIFAR-10 with Optuna, "
                    "track every trial in MLflow, and promote the best model to @champion.")
    p.add_argument("--trials", type=positive_int, default=DEFAULT_TRIALS,
                   help="target number of finished (complete or pruned) trials; re-running resumes "
                        "an interrupted study up to this number (default %(default)s)")
    p.add_argument("--study-name", default=DEFAULT_STUDY_NAME,
                   help="Optuna study name, also the MLflow experiment name (default %(default)s)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="Optuna storage URL: sqlite:///file.db or postgresql://user:pass@host/db "
                        "(default %(default)s)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlruns/mlflow.db with artifacts under mlruns/")
    p.add_argument("--data-dir", default=None,
                   help="folder holding cifar-10-batches-py/ (default $MLP_EXP_DATA_DIR, else ./data; "
                        "downloaded there when absent)")
    p.add_argument("--train-size", type=positive_int, default=49000,
                   help="training images: the first N of the training set (default %(default)s)")
    p.add_argument("--val-size", type=positive_int, default=1000,
                   help="validation images: the next N after the training ones (default %(default)s)")
    p.add_argument("--test-size", type=positive_int, default=None,
                   help="test images used once to score the champion (default: all 10000)")
    p.add_argument("--max-epochs", type=positive_int, default=DEFAULT_MAX_EPOCHS,
                   help="epochs of a trial that is never pruned (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the sampler; trial n trains with seed SEED+n (default %(default)s)")
    p.add_argument("--timeout", type=positive_float, default=None,
                   help="stop starting new trials after this many seconds; the running one finishes")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                   help="registered model name in the MLflow Model Registry (default %(default)s)")
    p.add_argument("--fixed", action="append", metavar="KEY=VALUE", default=[],
                   help="pin a setting out of the search space, e.g. --fixed hidden_size=500; "
                        "repeatable; keys are TrainConfig fields")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes on this machine sharing the study (default %(default)s)")
    p.add_argument("--heartbeat", type=positive_int, default=30,
                   help="seconds between a running trial's heartbeats; a trial silent for twice "
                        "this long is failed and retried (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    p.add_argument("--no-finalize", dest="finalize", action="store_false",
                   help="only run trials; leave promotion and test scoring to another process")
    p.add_argument("--blas-threads", type=positive_int, default=None, help=argparse.SUPPRESS)
    return p


def settings_from_args(args) -> StudySettings:
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    return StudySettings(
        study_name=args.study_name, trials=args.trials, storage=args.storage,
        tracking_uri=args.tracking_uri, data_dir=args.data_dir, train_size=args.train_size,
        val_size=args.val_size, test_size=args.test_size, max_epochs=args.max_epochs,
        seed=args.seed, timeout=args.timeout, model_name=args.model_name,
        fixed=parse_fixed(args.fixed), workers=args.workers, heartbeat=args.heartbeat,
        quiet=args.quiet, finalize=args.finalize)


def spawn_workers(argv, count, blas_threads):
    """Start `count` more processes of this command on the same study, trials only."""
    import subprocess

    return [subprocess.Popen([sys.executable, "-m", "mlp_exp.search", *argv, "--workers", "1",
                              "--no-finalize", "--quiet", "--blas-threads", str(blas_threads)])
            for _ in range(count)]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    if settings.quiet:
        logging.getLogger("mlp_exp").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from . import data as data_module
    from . import tracking

    # Everything that can fail on user input fails here, before any trial starts.
    tracker = tracking.Tracker(settings.tracking_uri, experiment_name=settings.study_name)
    study = make_study(settings, tracker)
    c = counts(study)
    if c["finished"] >= settings.trials:
        print(f"study {settings.study_name!r} already has {c['finished']} finished trials "
              f"(target {settings.trials}); run with --trials {c['finished'] + 10} (or more) to extend it")
    split = data_module.load_raw_split(settings.data_dir, train_size=settings.train_size,
                                       val_size=settings.val_size, test_size=settings.test_size,
                                       progress=not settings.quiet)
    tracker.study_run(settings.study_name, study_params(settings))

    workers = []
    blas_threads = args.blas_threads or max(1, (os.cpu_count() or 1) // settings.workers)
    if settings.workers > 1:
        stripped = strip_flag(argv, "--workers", takes_value=True)
        workers = spawn_workers(stripped, settings.workers - 1, blas_threads)
    if args.blas_threads or settings.workers > 1:
        # N workers share the cores: each gets its share of BLAS threads, none oversubscribes
        from threadpoolctl import threadpool_limits
        threadpool_limits(blas_threads)
    objective = Objective(settings, split, tracker)
    try:
        outcome = run_worker(study, objective, settings)
    except KeyboardInterrupt as interrupt:
        for worker in workers:
            worker.send_signal(signal.SIGINT)
        for worker in workers:
            worker.wait()
        c = counts(study)
        print(f"{'terminated' if isinstance(interrupt, cli.Terminated) else 'interrupted'}: study "
              f"{settings.study_name!r} saved with {c['finished']} of {settings.trials} trials "
              f"finished; run the same command again to resume", file=sys.stderr)
        raise
    for worker in workers:
        worker.wait()
    if outcome == "timeout":
        log.info("timeout reached after %s s: stopping with %d finished trials",
                 settings.timeout, counts(study)["finished"])
    if settings.finalize:
        finalize(study, settings, tracker, split)
    tracker.end_study()
    return 0


def study_params(settings: StudySettings) -> dict:
    return {"trials": settings.trials, "max_epochs": settings.max_epochs, "seed": settings.seed,
            "train_size": settings.train_size, "val_size": settings.val_size,
            "test_size": settings.test_size or "all", "model_name": settings.model_name,
            "fixed": ",".join(f"{k}={v}" for k, v in sorted(settings.fixed.items())) or "none",
            "search_space": ";".join(f"{k}={v}" for k, v in SEARCH_SPACE.items()),
            "sampler": "TPE(multivariate, constant_liar, n_startup_trials=10)",
            "pruner": f"Hyperband(min_resource=1, max_resource={settings.max_epochs}, reduction_factor=3)"}


def strip_flag(argv, flag, takes_value):
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == flag:
            skip = takes_value
            continue
        if item.startswith(flag + "="):
            continue
        out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
