"""Search quality: the spec's hand grid vs plain random search vs the default study.

Runs, on the same data and machine, and prints one table (best validation
accuracy, champion test accuracy, wall time, trials per hour):

- grid:   the spec notebook's grid, 24 runs (hidden 200/300/500/1000 x lr
          1e-5/5e-5/1e-4 x reg 1/10, where the notebook passed reg=1.0 to every
          run), 5 epochs, batch 100, mean-image preprocessing; the best run by
          final validation accuracy is scored on the test set once.
- random: `python -m mlp_exp.search --sampler random --pruner none` over the
          default space, stopped after the default study's wall time. With
          the study's seed (--random-seed, default 0) its first ten draws are
          the study's ten TPE start-up trials, so the two rows differ only by
          what TPE and Hyperband pruning do after and around them; another
          seed gives an independent draw.
- study:  the default `python -m mlp_exp.search --trials 50` (--study-seed N for
          another sampler seed; its row is kept beside the default's, and a
          random part in the same command gets that study's wall time).
- spread: retrains the champion configuration of every search row found in
          --out with --spread-seeds new training seeds (1000, 1001, ...; the
          searches use seed + trial number, below 1000) and reports each
          champion's validation and test accuracy as mean, sd and range. A
          champion is chosen on 1,000 validation images from a flat top, so
          its one test score is partly luck: this is how much.

    python benchmarks/search_quality.py                       # all three, ~85 min on a quiet 2-core machine
    python benchmarks/search_quality.py --parts grid          # one part
    python benchmarks/search_quality.py --parts spread --spread-seeds 3   # after the searches, ~3 min a run
    python benchmarks/search_quality.py --parts study --study-storage sqlite:///studies/optuna.db \\
        --study-tracking-uri sqlite:///mlruns/mlflow.db       # report a study that already ran
    python benchmarks/search_quality.py --parts study --study-storage sqlite:///tmp/x/study.db --study-name study \\
        --study-tracking-uri sqlite:///tmp/x/mlruns/mlflow.db --study-model-name bench-study \\
        --study-key study-variant --study-label "a variant"    # report it as its own row
    python benchmarks/search_quality.py --parts study --study-storage sqlite:///tmp/y/random.db --study-name random \\
        --study-tracking-uri sqlite:///tmp/y/random-mlruns/mlflow.db --study-model-name bench-random \\
        --read-at 1400 --study-key random-at-1400 --study-label "random search read at 23.3 min"

Each part writes its row to --out (JSON lines) so parts can run separately
and the tables are printed from all rows found there (spread runs are saved
one by one, so an interrupted spread part resumes where it stopped).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlp_exp.config import TrainConfig               # noqa: E402
from mlp_exp.data import load_raw_split              # noqa: E402
from mlp_exp.kernels import predict_float32          # noqa: E402
from mlp_exp.study import attrs                       # noqa: E402
from mlp_exp.trainer import mirror_rows, train        # noqa: E402

SPEC_GRID = [(h, lr, reg) for h in (200, 300, 500, 1000) for lr in (1e-5, 5e-5, 1e-4) for reg in (1.0, 10.0)]


def run_grid(data_dir):
    split = load_raw_split(data_dir, preprocessings=("mean_image",), progress=False)
    prep = split.preprocessors["mean_image"]
    started = time.perf_counter()
    best = (-1.0, None, None)
    for index, (hidden, lr, _reg_as_looped) in enumerate(SPEC_GRID):
        config = TrainConfig(hidden_size=hidden, learning_rate=lr, reg=1.0, momentum=0.9, lr_decay=0.95,
                             batch_size=100, num_epochs=5, init_std=6e-3, seed=index)
        result = train(split.X_train, split.y_train, split.X_val, split.y_val, config, preprocessor=prep)
        final_val = result.epochs[-1].val_accuracy          # the notebook compared val_acc[-1]
        print(f"  grid {index + 1:2d}/24 hidden {hidden:4d} lr {lr:.0e}: val {final_val:.3f}", flush=True)
        if final_val > best[0]:
            best = (final_val, result.best_params, config)
    wall = time.perf_counter() - started
    test = float(np.mean(predict_float32(best[1], prep.apply(split.X_test)) == split.y_test))
    return {"part": "grid", "method": "spec grid (24 runs x 5 epochs)", "best_val": best[0],
            "test": test, "wall_s": wall, "trials": len(SPEC_GRID)}


def run_search(label, part, extra, workdir, data_dir):
    storage = f"sqlite:///{workdir}/{part}.db"
    tracking = f"sqlite:///{workdir}/{part}-mlruns/mlflow.db"
    command = [sys.executable, "-m", "mlp_exp.search", "--study-name", part, "--storage", storage,
               "--tracking-uri", tracking, "--model-name", f"bench-{part}", "--data-dir", str(data_dir),
               "--quiet", *extra]
    print("  $", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - started
    row = study_row(label, part, storage, tracking, f"bench-{part}")
    row["wall_s"] = wall
    return row


def study_row(label, study_name, storage, tracking_uri, model_name, read_at=None, data_dir=None):
    """A row for a finished search: its champion, or with `read_at` (seconds) the search as it stood
    then: the best trial completed by that time, its logged model scored on the test set here."""
    import mlflow
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    client = mlflow.MlflowClient(tracking_uri)
    if read_at is None:
        champion = client.get_model_version_by_alias(model_name, "champion")
        best = next(t for t in trials if t.user_attrs.get(attrs.MLFLOW_RUN_ID) == champion.run_id)
        test = client.get_run(champion.run_id).data.metrics.get("test_accuracy")
        wall = (max(t.datetime_complete for t in trials) - min(starts)).total_seconds()
    else:
        trials = [t for t in trials if (t.datetime_complete - min(starts)).total_seconds() <= read_at]
        best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
        test = logged_model_test_accuracy(client, best.user_attrs[attrs.MLFLOW_RUN_ID], tracking_uri, data_dir)
        wall = read_at
    return {"part": study_name, "method": label, "best_val": best.value, "test": test,
            "wall_s": wall, "trials": len(trials), "config": best.user_attrs[attrs.CONFIG]}


def logged_model_test_accuracy(client, run_id, tracking_uri, data_dir):
    """Test accuracy of the model a trial logged (every trial that beat the best so far logged one)."""
    from mlp_exp import data, tracking

    run = client.get_run(run_id)
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run_id}' AND "
                                                       f"name = '{tracking.MODEL_NAME_IN_RUN}'")
    _, _, X_test, y_test = data.load_cifar10_uint8(data.ensure_cifar10(data_dir, download=False))
    return tracking.score_model(f"models:/{models[0].model_id}", X_test, y_test,
                                tracking_uri=tracking_uri)["test_accuracy"]


SPREAD_SEED0 = 1000


def config_key(config: dict) -> str:
    """One name per distinct champion configuration (its training seed aside)."""
    return json.dumps({k: v for k, v in sorted(config.items()) if k != "seed"})


def run_spread(rows, seeds, data_dir, save):
    """Retrain each search row's champion configuration with `seeds` new seeds; `save` after every run."""
    wanted = {}
    for row in rows.values():
        if row.get("config"):
            wanted.setdefault(config_key(row["config"]), row["config"])
    spread = rows.setdefault("spread", {"part": "spread", "runs": {}})["runs"]
    todo = [(key, config, SPREAD_SEED0 + i) for key, config in wanted.items() for i in range(seeds)
            if str(SPREAD_SEED0 + i) not in spread.get(key, {})]
    if not todo:
        return
    modes = sorted({config["preprocessing"] for _, config, _ in todo})
    sizes = {(config["train_size"], config["val_size"]) for _, config, _ in todo}
    if len(sizes) > 1:
        sys.exit(f"spread: the champions were searched on different splits {sorted(sizes)}; use one --out per split")
    (train_size, val_size), = sizes
    split = load_raw_split(data_dir, train_size=train_size, val_size=val_size, preprocessings=modes, progress=False)
    mirrored = mirror_rows(split.X_train) if any(config["flip"] for _, config, _ in todo) else None
    for index, (key, values, seed) in enumerate(todo):
        config = TrainConfig.from_dict({**values, "seed": seed})
        prep = split.preprocessors[config.preprocessing]
        # the rows a study trial trains on: ZCA-whitened once (preprocessor None), else raw uint8
        X_train, X_val, per_batch = split.training_rows(config.preprocessing)
        started = time.perf_counter()
        result = train(X_train, split.y_train, X_val, split.y_val, config, preprocessor=per_batch,
                       X_train_mirrored=mirrored if config.flip and per_batch is not None else None)
        test = float(np.mean(predict_float32(result.best_params, prep.apply(split.X_test)) == split.y_test))
        spread.setdefault(key, {})[str(seed)] = {"best_val": result.best_val_accuracy, "test": test}
        save()
        print(f"  spread {index + 1}/{len(todo)} hidden {config.hidden_size} seed {seed}: "
              f"val {result.best_val_accuracy:.4f} test {test:.4f} ({time.perf_counter() - started:.0f} s)",
              flush=True)


def print_table(rows):
    print("\n| method | best val | champion test | wall time | trials | trials/hour |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        test = "n/a" if row["test"] is None else f"{row['test']:.4f}"
        print(f"| {row['method']} | {row['best_val']:.4f} | {test} | {row['wall_s'] / 60:.1f} min "
              f"| {row['trials']} | {row['trials'] / (row['wall_s'] / 3600):.0f} |")
    print("\nspec notebook on official CIFAR-10: best val 0.532, test 0.525")


def print_spread(rows, order):
    runs = rows.get("spread", {}).get("runs", {})
    lines = []
    for key in order:
        row = rows[key]
        found = runs.get(config_key(row["config"]), {}) if row.get("config") else {}
        if not found:
            continue
        val = np.array([r["best_val"] for r in found.values()])
        test = np.array([r["test"] for r in found.values()])
        c = row["config"]
        lines.append(f"| {row['method']} | {c['hidden_size']}, {c['learning_rate']:.3g}, {c['reg']:.2g}, "
                     f"{c['momentum']:.3f}, {c['lr_decay']:.3f} | {row['best_val']:.4f} | {row['test']:.4f} "
                     f"| {len(found)} | {val.mean():.4f} ± {val.std(ddof=1) if len(val) > 1 else 0:.4f} "
                     f"({val.min():.3f}–{val.max():.3f}) | {test.mean():.4f} ± "
                     f"{test.std(ddof=1) if len(test) > 1 else 0:.4f} ({test.min():.3f}–{test.max():.3f}) |")
    if lines:
        print("\nchampions retrained with new seeds (mean ± sd, range):\n")
        print("| champion of | hidden, lr, reg, momentum, decay | search val | search test | seeds "
              "| retrained best val | retrained test |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["grid", "study", "random"],
                        choices=["grid", "study", "random", "spread"])
    parser.add_argument("--data-dir", default=os.environ.get("MLP_EXP_DATA_DIR", str(REPO / "data")))
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--study-seed", type=int, default=0,
                        help="sampler seed of the default study (0: its default); the random part's budget "
                             "is this study's wall time")
    parser.add_argument("--random-seed", type=int, default=0,
                        help="sampler seed of the random search (0: the default study's)")
    parser.add_argument("--random-budget", type=float, default=None,
                        help="seconds for random search (default: the study row's wall time)")
    parser.add_argument("--study-storage", help="report this existing study instead of running one")
    parser.add_argument("--study-name", default="cifar10-mlp")
    parser.add_argument("--study-tracking-uri", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--study-model-name", default="mlp-cifar10")
    parser.add_argument("--study-key", help="row key for --study-storage (default: study or study-seedN); "
                                            "keys starting with 'study' are tabled")
    parser.add_argument("--study-label", help="row label for --study-storage")
    parser.add_argument("--read-at", type=float, help="with --study-storage: report that search as it stood "
                        "this many seconds after its first trial started (e.g. a longer random search at "
                        "another study's wall time)")
    parser.add_argument("--spread-seeds", type=int, default=3,
                        help="training seeds per champion configuration for the spread part")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "search_quality.jsonl"))
    args = parser.parse_args()

    rows = {}
    if Path(args.out).exists():
        rows = {r["part"]: r for r in map(json.loads, Path(args.out).read_text().splitlines()) if r}
    workdir = Path(tempfile.mkdtemp(prefix="search-quality-"))
    study_key = args.study_key or ("study" if args.study_seed == 0 else f"study-seed{args.study_seed}")
    random_key = "random" if args.random_seed == 0 else f"random-seed{args.random_seed}"
    def save():
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows.values()))

    for part in args.parts:
        print(f"== {part}", flush=True)
        if part == "spread":
            run_spread(rows, args.spread_seeds, args.data_dir, save)
            continue
        if part == "grid":
            row = run_grid(args.data_dir)
        elif part == "study" and args.study_storage:
            row = study_row(args.study_label or f"default study, --trials {args.trials} (existing)",
                            args.study_name, args.study_storage, args.study_tracking_uri, args.study_model_name,
                            read_at=args.read_at, data_dir=args.data_dir)
        elif part == "study":
            row = run_search(f"default study, --trials {args.trials}, seed {args.study_seed}", "study",
                             ["--trials", str(args.trials), "--seed", str(args.study_seed)], workdir, args.data_dir)
        else:
            budget = args.random_budget or rows.get(study_key, rows.get("cifar10-mlp", {})).get("wall_s")
            if not budget:
                sys.exit("random search needs --random-budget or a study row to match its wall time")
            row = run_search(f"random search, no pruning, {budget / 60:.0f} min budget, seed {args.random_seed}",
                             "random", ["--sampler", "random", "--pruner", "none", "--trials", "1000",
                                        "--timeout", str(budget), "--seed", str(args.random_seed)],
                             workdir, args.data_dir)
        key = {"random": random_key, "study": study_key}.get(part, part)
        row["part"] = key
        rows[key] = row
        save()
    order = ["grid", *sorted(k for k in rows if k.startswith("random")), *sorted(k for k in rows if k.startswith("study"))]
    print_table([rows[k] for k in order if k in rows])
    print_spread(rows, [k for k in order if k in rows])
    print(f"\nmachine: {os.cpu_count()} cores; command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
