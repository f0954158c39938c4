"""One training epoch of two checkouts of this repository, alternated in one run: did a change make it faster?

Each measurement is a fresh subprocess that imports `mlp_exp` from one
checkout and trains 2 epochs of `trainer.train` on 49,000 random float32 rows
as a default `zca` trial gets them (already whitened: no preprocessor; flips and
±2 px shifts; momentum, batch 200), printing its faster epoch's seconds. The
two checkouts alternate (A B A B ...), so machine drift hits both alike.
Medians and the B / A ratio are printed; nothing here asserts on timings.

    git worktree add /tmp/before HEAD~1
    python benchmarks/checkout_ab.py /tmp/before . --hidden 300 1000 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

EPOCH = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from mlp_exp.config import TrainConfig
from mlp_exp.trainer import train
rng = np.random.default_rng(5)
X = rng.standard_normal((49000, 3072), dtype=np.float32)
y = rng.integers(0, 10, 49000)
config = TrainConfig(hidden_size=int(sys.argv[2]), batch_size=200, num_epochs=2, flip=True, translate=2,
                     learning_rate=1e-3, seed=3)
print(min(epoch.seconds for epoch in train(X, y, X[:1000], y[:1000], config).epochs))
"""


def epoch_seconds(checkout: Path, hidden: int) -> float:
    done = subprocess.run([sys.executable, "-c", EPOCH, str(checkout), str(hidden)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="checkout A (say, before the change)")
    parser.add_argument("b", type=Path, help="checkout B (say, after it)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print("command: " + " ".join([sys.executable, *sys.argv]))
    for hidden in args.hidden:
        times = {"A": [], "B": []}
        for _ in range(args.repeats):
            times["A"].append(epoch_seconds(args.a.resolve(), hidden))
            times["B"].append(epoch_seconds(args.b.resolve(), hidden))
        a, b = statistics.median(times["A"]), statistics.median(times["B"])
        print(f"hidden {hidden}: A {a:.3f} s, B {b:.3f} s per epoch (medians of {args.repeats}: "
              f"A {', '.join(f'{t:.3f}' for t in times['A'])}; B {', '.join(f'{t:.3f}' for t in times['B'])}); "
              f"B / A = {b / a:.3f}")


if __name__ == "__main__":
    main()
