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

    python benchmarks/search_quality.py                       # all three, ~50 min on a quiet 2-core machine
    python benchmarks/search_quality.py --parts grid          # one part
    python benchmarks/search_quality.py --parts study --study-storage sqlite:///studies/optuna.db \\
        --study-tracking-uri sqlite:///mlruns/mlflow.db       # report a study that already ran

Each part writes its row to --out (JSON lines) so parts can run separately
and the table is printed from all rows found there.
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
from mlp_exp.trainer import train                     # noqa: E402

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


def study_row(label, study_name, storage, tracking_uri, model_name):
    import mlflow
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    client = mlflow.MlflowClient(tracking_uri)
    champion = client.get_model_version_by_alias(model_name, "champion")
    run = client.get_run(champion.run_id)
    return {"part": study_name, "method": label, "best_val": study.best_value,
            "test": run.data.metrics.get("test_accuracy"),
            "wall_s": (max(ends) - min(starts)).total_seconds(), "trials": len(trials)}


def print_table(rows):
    print("\n| method | best val | champion test | wall time | trials | trials/hour |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        test = "n/a" if row["test"] is None else f"{row['test']:.4f}"
        print(f"| {row['method']} | {row['best_val']:.4f} | {test} | {row['wall_s'] / 60:.1f} min "
              f"| {row['trials']} | {row['trials'] / (row['wall_s'] / 3600):.0f} |")
    print("\nspec notebook on official CIFAR-10: best val 0.532, test 0.525")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["grid", "study", "random"],
                        choices=["grid", "study", "random"])
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
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "search_quality.jsonl"))
    args = parser.parse_args()

    rows = {}
    if Path(args.out).exists():
        rows = {r["part"]: r for r in map(json.loads, Path(args.out).read_text().splitlines()) if r}
    workdir = Path(tempfile.mkdtemp(prefix="search-quality-"))
    study_key = "study" if args.study_seed == 0 else f"study-seed{args.study_seed}"
    random_key = "random" if args.random_seed == 0 else f"random-seed{args.random_seed}"
    for part in args.parts:
        print(f"== {part}", flush=True)
        if part == "grid":
            row = run_grid(args.data_dir)
        elif part == "study" and args.study_storage:
            row = study_row(f"default study, --trials {args.trials} (existing)", args.study_name,
                            args.study_storage, args.study_tracking_uri, args.study_model_name)
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
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    order = ["grid", *sorted(k for k in rows if k.startswith("random")), *sorted(k for k in rows if k.startswith("study"))]
    print_table([rows[k] for k in order if k in rows])
    print(f"\nmachine: {os.cpu_count()} cores; command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
