"""Does the bf16 path train as well as fp32? One configuration, the same seeds, both precisions.

Issue 17's goal 3 asks for champion test accuracy within 0.3 points of fp32 on the
same configuration and seeds, over 3 seeds. For each seed this trains the
configuration twice, fp32 and bf16 (alternating, so machine drift hits both), as a
study trial trains it (the study's data split and preprocessing: ZCA rows whitened
once, flips and shifts), scores each run's best-validation weights on the whole
test set, and prints per seed and on the mean: best val, test, the bf16 - fp32
test difference and the seconds per epoch of training steps of each.

The default configuration is the default study's champion from the README
(hidden 873, lr 0.15, reg 0.00126, momentum 0.892, decay 0.884, 30 epochs, the
study's defaults otherwise); `--set KEY=VALUE` changes any TrainConfig field.

    python benchmarks/bf16_accuracy.py                        # seeds 0 1 2, ~12 min on 2 cores
    python benchmarks/bf16_accuracy.py --seeds 0 --set num_epochs=5

Needs `pip install mkl` (the bf16 GEMM); prints why and exits 0 without it.
Nothing here asserts on the figures.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _timing import blas_lines, bf16_line                              # noqa: E402
from mlp_exp.config import TrainConfig, parse_value                   # noqa: E402
from mlp_exp.data import load_raw_split                               # noqa: E402
from mlp_exp.errors import UserError                                  # noqa: E402
from mlp_exp.kernels import predict_float32                           # noqa: E402
from mlp_exp.study.space import STUDY_DEFAULTS                        # noqa: E402
from mlp_exp.trainer import mirror_rows, train                        # noqa: E402

CHAMPION = dict(hidden_size=873, learning_rate=0.15, reg=0.00126, momentum=0.892, lr_decay=0.884,
                num_epochs=30)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir", default=os.environ.get("MLP_EXP_DATA_DIR", str(ROOT / "data")))
    args = parser.parse_args(argv)
    print("command: " + " ".join([sys.executable, *sys.argv]))
    print("\n".join(blas_lines()))
    try:
        print(bf16_line())
    except UserError as err:
        print(f"skipped: {err}")
        return
    values = {**STUDY_DEFAULTS, **CHAMPION}
    for pair in args.set:
        key, _, value = pair.partition("=")
        values[key] = parse_value(key, value)
    base = TrainConfig(**values)
    print(f"config: {base}")
    split = load_raw_split(args.data_dir, train_size=base.train_size, val_size=base.val_size,
                           preprocessings=(base.preprocessing,), progress=False)
    X_train, X_val, preprocessor = split.training_rows(base.preprocessing)
    mirrored = mirror_rows(X_train) if base.flip and preprocessor is not None else None
    X_test = split.preprocessors[base.preprocessing].apply(split.X_test)

    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        for precision in ("fp32", "bf16"):
            config = TrainConfig(**{**base.asdict(), "seed": seed, "precision": precision})
            started = time.perf_counter()
            result = train(X_train, split.y_train, X_val, split.y_val, config, preprocessor=preprocessor,
                           X_train_mirrored=mirrored)
            test = float(np.mean(predict_float32(result.best_params, X_test) == split.y_test))
            epoch_s = statistics.median(e.seconds for e in result.epochs)
            row[precision] = {"val": result.best_val_accuracy, "test": test, "epoch_s": epoch_s}
            print(f"  seed {seed} {precision}: best val {result.best_val_accuracy:.4f} (epoch "
                  f"{result.best_epoch}), test {test:.4f}, {epoch_s:.2f} s/epoch of steps, "
                  f"{time.perf_counter() - started:.0f} s in all", flush=True)
        rows.append(row)

    print("\n| seed | fp32 val | bf16 val | fp32 test | bf16 test | bf16 - fp32 test | s/epoch fp32 | s/epoch bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["fp32"], r["bf16"]
        print(f"| {r['seed']} | {a['val']:.4f} | {b['val']:.4f} | {a['test']:.4f} | {b['test']:.4f} | "
              f"{100 * (b['test'] - a['test']):+.2f} pt | {a['epoch_s']:.2f} | {b['epoch_s']:.2f} |")
    if len(rows) > 1:
        mean = lambda p, k: statistics.mean(r[p][k] for r in rows)   # noqa: E731
        print(f"| mean | {mean('fp32', 'val'):.4f} | {mean('bf16', 'val'):.4f} | {mean('fp32', 'test'):.4f} | "
              f"{mean('bf16', 'test'):.4f} | {100 * (mean('bf16', 'test') - mean('fp32', 'test')):+.2f} pt | "
              f"{mean('fp32', 'epoch_s'):.2f} | {mean('bf16', 'epoch_s'):.2f} |")


if __name__ == "__main__":
    main()
