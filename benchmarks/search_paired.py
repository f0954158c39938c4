"""Paired seeds: the default study against plain random search at the same wall time, as anytime curves.

For each seed S, on the same data and machine, one after the other:

- study:  `python -m mlp_exp.search --trials T --seed S` (the default study);
          its wall time W is the budget of
- random: `python -m mlp_exp.search --sampler random --pruner none --seed S
          --timeout W` (same space, same trainer, no pruning).

Each search's anytime curve is its best-so-far champion against wall time:
at every trial that raised the best validation accuracy (each such trial
logged a model), that model is scored on the whole test set here, so both
curves are in test accuracy and comparable. Per seed and on the mean the
table gives: each champion's test accuracy at W (equal time); Q, random
search's quality at W; the time each method took to reach Q; the speedup
(random's time over the study's). Issue 14's goal: the study reaches Q in at
most W / 2, and leads at W by at least 0.5 points on the mean, winning in at
least 4 of 5 seeds. The curves go to one PNG (--png).

    python benchmarks/search_paired.py --seeds 0 1 2                   # full scale: ~1.5-2 h a seed
    python benchmarks/search_paired.py --seeds 0 1 2 3 4 --scale small # 10,000 images, 10 epochs, 30 trials

--scale small explores at reduced scale (--train-size 10000 --max-epochs 10
--trials 30); its figures are not the full-scale goal. --scale smoke (a
minute) only checks that the protocol runs. Rows are saved one
by one to --out (JSON lines), so an interrupted run resumes with the next
search; --report-only prints the table and draws the PNG from what is there.
--retrain-seeds N then retrains each study champion's configuration with N new
seeds and tables its search-time test accuracy against theirs (goal 3);
--methods study runs only the studies (random search's pair can come later).
Each row names the machine it was measured on: random search refuses a budget
W measured on another machine (another CPU or BLAS kernel makes W unfair).
Hosts of one label can still differ in speed, so the table also gives the pace
of the trial both searches share (trial 0) and warns where it differs by >25%.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from search_quality import config_key, logged_model_test_accuracy, run_search, run_spread   # noqa: E402
from mlp_exp.study import attrs                                      # noqa: E402

SCALES = {"full": [], "small": ["--train-size", "10000", "--max-epochs", "10"],
          "smoke": ["--train-size", "2000", "--val-size", "500", "--max-epochs", "2", "--fixed", "hidden_size=50"]}
TRIALS = {"full": 50, "small": 30, "smoke": 4}


def anytime_curve(study_name, storage, tracking_uri, data_dir) -> list[tuple[float, float, float]]:
    """[(seconds since the first trial started, best val so far, its model's test accuracy)] at each
    trial that raised the best validation accuracy, in completion order."""
    import mlflow
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start)
    complete = sorted((t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get(attrs.HAS_MODEL)),
                      key=lambda t: t.datetime_complete)
    client = mlflow.MlflowClient(tracking_uri)
    curve, best = [], float("-inf")
    for t in complete:
        if t.value > best:
            best = t.value
            test = logged_model_test_accuracy(client, t.user_attrs[attrs.MLFLOW_RUN_ID], tracking_uri, data_dir)
            curve.append(((t.datetime_complete - start).total_seconds(), t.value, test))
    return curve


def machine_id() -> str:
    """What a row's wall time depends on: the CPU, the BLAS kernel NumPy's OpenBLAS picked, the cores.
    A study's budget W is only a fair budget for random search on the machine that measured it."""
    from threadpoolctl import threadpool_info
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        cpu = platform.processor() or platform.machine()
    kernels = sorted({pool.get("architecture") or "?" for pool in threadpool_info() if pool["user_api"] == "blas"})
    return f"{cpu} ({'/'.join(kernels) or 'no BLAS pool'} kernels, {os.cpu_count()} cores)"


def value_at(curve, seconds) -> float | None:
    """The curve's champion test accuracy at `seconds` (None before its first champion)."""
    reached = [test for t, _, test in curve if t <= seconds]
    return reached[-1] if reached else None


def time_to(curve, quality) -> float | None:
    """When the curve's champion first reached test accuracy `quality` (None: never)."""
    return next((t for t, _, test in curve if test >= quality - 1e-12), None)


def compare(study, random) -> dict:
    """The paired figures of one seed from its two rows (each with wall_s and curve)."""
    budget = study["wall_s"]
    quality = value_at(random["curve"], budget)
    t_study, t_random = time_to(study["curve"], quality), time_to(random["curve"], quality)
    return {"seed": study["seed"], "budget_s": budget, "study_test": value_at(study["curve"], budget),
            "random_test": quality, "t_study_s": t_study, "t_random_s": t_random,
            "speedup": (t_random / t_study) if t_study and t_random else None,
            "study_trials": study["trials"], "random_trials": random["trials"],
            # both searches start with the same trial (the spec's baseline, trial 0): its time is a pace
            # probe, since a machine label ("AMD EPYC, 2 cores") can hide hosts of different speed
            "pace": random["curve"][0][0] / study["curve"][0][0]}


def print_table(pairs, scale):
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)
    print(f"\n| seed | budget W | study test at W | random test at W (Q) | lead | study reaches Q | "
          f"random reaches Q | speedup | trials study / random | trial 0 time random / study |   ({scale} scale)")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in pairs:
        lead = None if p["study_test"] is None else 100 * (p["study_test"] - p["random_test"])
        print(f"| {p['seed']} | {p['budget_s'] / 60:.1f} min | {fmt(p['study_test'], '.4f')} | "
              f"{fmt(p['random_test'], '.4f')} | {fmt(lead, '+.2f')} pt | "
              f"{fmt(p['t_study_s'] and p['t_study_s'] / 60, '.1f')} min | "
              f"{fmt(p['t_random_s'] and p['t_random_s'] / 60, '.1f')} min | {fmt(p['speedup'], '.2f')}x | "
              f"{p['study_trials']} / {p['random_trials']} | {p['pace']:.2f} |")
    if len(pairs) > 1:
        leads = [100 * (p["study_test"] - p["random_test"]) for p in pairs if p["study_test"] is not None]
        fractions = [p["t_study_s"] / p["budget_s"] for p in pairs if p["t_study_s"] is not None]
        print(f"| mean | {statistics.mean(p['budget_s'] for p in pairs) / 60:.1f} min | "
              f"{statistics.mean(p['study_test'] for p in pairs):.4f} | "
              f"{statistics.mean(p['random_test'] for p in pairs):.4f} | {statistics.mean(leads):+.2f} pt "
              f"(study ahead in {sum(v > 0 for v in leads)} of {len(pairs)}) | "
              f"Q reached at {statistics.mean(fractions):.2f} W on the mean "
              f"({len(fractions)} of {len(pairs)} reached it) | | | | |")
    unfair = [p["seed"] for p in pairs if not 0.8 <= p["pace"] <= 1.25]
    if unfair:
        print(f"warning: seed(s) {unfair}: the shared trial 0 took more than 25% longer or shorter in one "
              f"search than in the other, so W was no equal budget there (another host, or load)")


def print_retrained(rows, seeds):
    """Issue 14 goal 3: each study champion's search-time test accuracy against the same configuration
    retrained with new seeds; the goal is a mean drop (over study seeds) of at most 0.5 points."""
    runs = rows.get("spread", {}).get("runs", {})
    found = [(s, rows[f"study-s{s}"], runs.get(config_key(rows[f"study-s{s}"]["config"]), {}))
             for s in seeds if f"study-s{s}" in rows]
    found = [(s, row, retrained) for s, row, retrained in found if retrained]
    if not found:
        return
    print("\n| study seed | champion (hidden, lr, reg, momentum, decay) | search val | search test | "
          "retrained seeds | retrained val | retrained test | retrained - search |")
    print("|---|---|---|---|---|---|---|---|")
    drops = []
    for seed, row, retrained in found:
        c = row["config"]
        val = statistics.mean(r["best_val"] for r in retrained.values())
        test = statistics.mean(r["test"] for r in retrained.values())
        search_test = row["curve"][-1][2]
        drops.append(100 * (test - search_test))
        print(f"| {seed} | {c['hidden_size']}, {c['learning_rate']:.3g}, {c['reg']:.2g}, {c['momentum']:.3f}, "
              f"{c['lr_decay']:.3f} | {row['best_val']:.4f} | {search_test:.4f} | {', '.join(sorted(retrained))} | "
              f"{val:.4f} | {test:.4f} ({', '.join(format(r['test'], '.4f') for r in retrained.values())}) | "
              f"{drops[-1]:+.2f} pt |")
    if len(drops) > 1:
        print(f"| mean | | | | | | | {statistics.mean(drops):+.2f} pt |")


def draw(rows, pairs, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(pairs):
        colour = colours[i % len(colours)]
        for method, style in (("study", "-"), ("random", "--")):
            curve = rows[f"{method}-s{p['seed']}"]["curve"]
            end = rows[f"{method}-s{p['seed']}"]["wall_s"]
            xs = [t / 60 for t, _, _ in curve] + [end / 60]
            ys = [test for _, _, test in curve] + [curve[-1][2]]
            ax.step(xs, ys, where="post", linestyle=style, color=colour,
                    label=f"seed {p['seed']}: {'default study' if method == 'study' else 'random search'}")
        ax.axvline(p["budget_s"] / 60, color=colour, alpha=0.2)
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("champion test accuracy (best val so far)")
    ax.set_title("Anytime curves: default study (solid) vs random search (dashed)")
    ax.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    print(f"curves: {png}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--trials", type=int, default=None, help="study trials (default: 50, 30 small, 4 smoke)")
    parser.add_argument("--data-dir", default=os.environ.get("MLP_EXP_DATA_DIR", str(REPO / "data")))
    parser.add_argument("--out", default=None, help="rows (default benchmarks/search_paired-<scale>.jsonl)")
    parser.add_argument("--png", default=None, help="curves (default docs/search_paired_<scale>.png)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--methods", nargs="+", choices=["study", "random"], default=["study", "random"],
                        help="which searches to run (default both); '--methods study --retrain-seeds 2' "
                             "runs the studies and retrains their champions, leaving random search for later")
    parser.add_argument("--retrain-seeds", type=int, default=0,
                        help="issue 14 goal 3: retrain each study champion with this many new training "
                             "seeds (1000, 1001, ...) after the searches; ~2 min a run at full scale")
    args = parser.parse_args()
    trials = args.trials or TRIALS[args.scale]
    out = Path(args.out or REPO / "benchmarks" / f"search_paired-{args.scale}.jsonl")
    png = Path(args.png or REPO / "docs" / f"search_paired_{args.scale}.png")
    rows = {r["key"]: r for r in map(json.loads, out.read_text().splitlines())} if out.exists() else {}

    def save():
        out.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))

    workdir = Path(tempfile.mkdtemp(prefix="search-paired-"))
    machine = machine_id()
    for seed in [] if args.report_only else args.seeds:
        common = [*SCALES[args.scale], "--seed", str(seed)]
        for method in args.methods:
            key = f"{method}-s{seed}"
            if key in rows:
                continue
            if method == "study":
                extra = ["--trials", str(trials), *common]
            else:
                study = rows.get(f"study-s{seed}")
                if study is None:
                    sys.exit(f"error: no study-s{seed} row in {out} to take random search's budget from; "
                             "run with --methods study random")
                if study.get("machine", machine) != machine:
                    sys.exit(f"error: study-s{seed} was measured on {study['machine']}, this is {machine}: its "
                             f"wall time is no budget here; run the pair on one machine (remove study-s{seed} "
                             f"from {out} to measure both here)")
                extra = ["--sampler", "random", "--pruner", "none", "--trials", "100000",
                         "--timeout", str(study["wall_s"]), *common]
            part = f"{method}{seed}"
            row = run_search(f"{method}, seed {seed}", part, extra, workdir, args.data_dir)
            row.update(key=key, seed=seed, scale=args.scale, machine=machine,
                       curve=anytime_curve(part, f"sqlite:///{workdir}/{part}.db",
                                           f"sqlite:///{workdir}/{part}-mlruns/mlflow.db", args.data_dir))
            rows[key] = row
            save()
            print(f"  {key}: {row['trials']} trials in {row['wall_s'] / 60:.1f} min, "
                  f"champion test {row['curve'][-1][2]:.4f}", flush=True)
    if args.retrain_seeds and not args.report_only:
        studies = {k: r for k, r in rows.items() if k.startswith("study-s")}
        studies["spread"] = rows.setdefault("spread", {"key": "spread", "part": "spread", "runs": {}})
        run_spread(studies, args.retrain_seeds, args.data_dir, save)
    print_retrained(rows, args.seeds)
    pairs = [compare(rows[f"study-s{s}"], rows[f"random-s{s}"]) for s in args.seeds
             if f"study-s{s}" in rows and f"random-s{s}" in rows]
    if pairs:
        print_table(pairs, args.scale)
        draw(rows, pairs, png)
    print(f"\nmachine: {machine}; command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
