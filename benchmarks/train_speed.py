"""How fast the product trains, against the GEMM-only bound and PyTorch, side by side.

Part 1, training speed. For each hidden size, interleaved in one run so that
machine noise hits every column alike, it measures:

  product   `mlp_exp.trainer.train` as a trial runs it: momentum update,
            49,000 uint8 rows preprocessed per batch by a standardize
            Preprocessor, batch 200; samples/s of one epoch's training steps
  bound     the same five sgemm calls on the same shapes (`kernels.blas`, as
            `FusedStep` issues them, through the same BLAS), nothing else:
            the GEMM-only bound
  torch     PyTorch CPU eager, nn.Linear/ReLU/Linear, CrossEntropyLoss, SGD
            with momentum and weight_decay, 2 threads, on float32 rows
            preprocessed up front, in a separate worker process (its thread
            pool and OpenBLAS's would fight inside one). Skipped, with the
            reason printed, when torch is not importable (`pip install torch`).
  eval      the trainer's per-epoch evaluation (train sample + validation
            accuracy) as a percentage of the epoch's training time
  bf16      the product with precision "bf16" (opt-in, needs `pip install mkl`, or `onednn` on AMD):
            bf16 inputs to the two big GEMMs, fp32 accumulation and weights, every
            BLAS call on the bf16 library (MKL, or oneDNN on a CPU whose bf16 units
            MKL does not use; the header names it); "bf16 / fp32 bound" is issue 17's
            goal 3 ratio
  bf16 bound  its own bound: the same five GEMMs through that library, the two big
            ones on bf16 operands converted once up front. Both bf16 columns are
            skipped, with the reason printed, where it is not installed (--no-bf16
            skips them).

Every figure is the median over --repeats. The data is the CIFAR-10 replica
under --data-dir when present, else random uint8 rows of the same shape (the
header says which).

Part 2, a trial's time split. One trial at the default study's settings
(its trial 1's hyperparameters, standardize + flips, batch 200, --trial-epochs
epochs) runs as a study runs it: an MLflow run in a throwaway SQLite store,
per-epoch metrics and weight grids, the curves, the diagnosis and a logged
model (a study logs models only for trials that beat its best, so this is the
dearest case). Its wall time is split into training steps, evaluation, and
tracking (the rest: MLflow calls in the trial's thread and waiting for the
background logger at the end). Each tracked trial is paired with the same
trial untracked, in alternating order, and the paired overhead, tracked wall /
untracked wall - 1, also counts what the background logging thread costs the
training thread. Medians over --trial-repeats pairs. Pairs move by several
percent with the machine's drift, so a second figure bounds the overhead from
CPU time instead: tracking in the trial's thread plus the CPU seconds of its
logging thread (the most that thread can delay training), over the wall time.

Part 3, peak memory. `python -m mlp_exp.search` runs in a subprocess with
throwaway stores, `--fixed hidden_size=2000` (the largest net of the default
space) and `--max-epochs 2`, once per --memory-trials count; its peak resident
set (from wait4) is printed against the float32 size of the data it loads
(train + val + test). Equal peaks for few and many trials mean no per-trial
copies. Needs the replica.

Run from the repository root:

    python benchmarks/train_speed.py                      # H = 100 500 1000, 5 repeats
    python benchmarks/train_speed.py --hidden 500 --repeats 3 --epochs 2
    python benchmarks/train_speed.py --no-torch --flip
    python benchmarks/train_speed.py --openblas-env-check # + one labelled extra line
    python benchmarks/train_speed.py --parts split memory # parts 2 and 3 only

Flags: --hidden H [H ...] hidden sizes; --repeats N measurements per column
(median reported); --epochs E epochs per product run (each epoch is one
sample); --batch-size B (200); --data-dir DIR (data); --random-data to ignore
the replica; --flip to train the product with random flips; --no-torch;
--wait-quiet S to wait up to S seconds for other processes to go idle first
(default 120, 0 = do not wait); --max-noise C and --retries R: a measurement
during which other processes used more than C cores (default 0.1) is redone,
after waiting for quiet, at most R times (default 3); --openblas-env-check to
re-run part 1 (no torch) in a subprocess with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset and print the result as one extra, clearly labelled
line. The benchmark never sets or unsets an OPENBLAS_* variable in its own
process. --parts speed split memory picks parts; --trial-epochs E (30, the
study's default --max-epochs: a trial that is not pruned) and --trial-repeats N
(3) size part 2; --memory-trials N [N ...] (2 6) part 3.

Prints figures only; nothing here asserts on timings.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlp_exp import diagnosis, trainer                                 # noqa: E402
from mlp_exp.config import TrainConfig                                 # noqa: E402
from mlp_exp.config import IMAGE_SHAPE                                 # noqa: E402
from mlp_exp.data import DEFAULT_LABEL_NAMES, load_cifar10_uint8                     # noqa: E402
from mlp_exp.preprocessing import fit_preprocessor                     # noqa: E402
from _timing import bf16_line                                          # noqa: E402
from mlp_exp import kernels                                            # noqa: E402
from mlp_exp.study.settings import default                             # noqa: E402

NUM_TRAIN, NUM_VAL, NUM_CLASSES = 49_000, 1_000, 10
INPUT_SIZE = int(np.prod(IMAGE_SHAPE))
# one hyperparameter setting for every column; stable (no divergence) on standardized CIFAR-10
LEARNING_RATE, REG, MOMENTUM, INIT_STD = 1e-3, 1e-3, 0.9, 1e-3
TORCH_WARMUP_STEPS = 5
# MKL's OpenMP threads spin 200 ms after a call (KMP_BLOCKTIME's default), OpenBLAS's briefly: a pause
# before each measurement keeps one column's pool from spinning on the cores the next one runs on
POOL_IDLE_S = 0.3


# ------------------------------------------------------------------ data

@dataclass
class Data:
    X_train: np.ndarray     # (N, D) uint8
    y_train: np.ndarray     # (N,) int64
    X_val: np.ndarray       # (M, D) uint8
    y_val: np.ndarray
    source: str

    @functools.cached_property
    def X_train_mirrored(self) -> np.ndarray:
        """What a study's worker builds once for its flipping trials (study.objective.Objective.mirrored_train)."""
        return trainer.mirror_rows(self.X_train)

    def mirrored_for(self, config):
        return self.X_train_mirrored if config.flip else None


def load_data(data_dir, random_data=False) -> Data:
    """The replica's first 49,000 / next 1,000 training images as uint8 rows, else random rows of that shape."""
    folder = Path(data_dir) / "cifar-10-batches-py"
    if not random_data and folder.is_dir():
        X, y, _, _ = load_cifar10_uint8(folder)
        X = X.reshape(len(X), -1)
        return Data(X[:NUM_TRAIN], y[:NUM_TRAIN], X[NUM_TRAIN:NUM_TRAIN + NUM_VAL],
                    y[NUM_TRAIN:NUM_TRAIN + NUM_VAL], f"CIFAR-10 replica at {folder}")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (NUM_TRAIN + NUM_VAL, INPUT_SIZE), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, NUM_TRAIN + NUM_VAL)
    why = "--random-data" if random_data else f"no replica at {folder}"
    return Data(X[:NUM_TRAIN], y[:NUM_TRAIN], X[NUM_TRAIN:], y[NUM_TRAIN:],
                f"random uint8 rows of CIFAR-10 shape ({why})")


# ------------------------------------------------------------ the columns

def product_epochs(data, preprocessor, hidden, batch_size, epochs, seed, flip, precision="fp32"):
    """trainer.train as a trial runs it -> [(samples/s, eval % of epoch)] per epoch."""
    config = TrainConfig(hidden_size=hidden, learning_rate=LEARNING_RATE, reg=REG, momentum=MOMENTUM,
                         lr_decay=0.95, update="momentum", batch_size=batch_size, num_epochs=epochs,
                         init_std=INIT_STD, preprocessing="standardize", flip=flip,
                         train_size=NUM_TRAIN, val_size=NUM_VAL, seed=seed, precision=precision)
    result = trainer.train(data.X_train, data.y_train, data.X_val, data.y_val, config,
                           preprocessor=preprocessor, X_train_mirrored=data.mirrored_for(config))
    if result.stop_reason:
        raise RuntimeError(f"benchmark run stopped early ({result.stop_reason}) at hidden {hidden}")
    samples = (len(data.X_train) // batch_size) * batch_size
    return [(samples / e.seconds, 100.0 * e.eval_seconds / e.seconds) for e in result.epochs]


def gemm_bound_epoch(X_batch, hidden, iterations, seed, precision="fp32"):
    """Samples/s of `iterations` steps made only of FusedStep's five GEMM calls, same shapes, flags and
    BLAS. bf16: the path's own bound, all five through MKL, the two big ones on bf16 operands made once
    up front (the path's per-step conversions are not in it), the three small ones fp32."""
    rng = np.random.default_rng(seed)
    B = len(X_batch)
    W1 = (INIT_STD * rng.standard_normal((INPUT_SIZE, hidden))).astype(np.float32)
    W2 = (INIT_STD * rng.standard_normal((hidden, NUM_CLASSES))).astype(np.float32)
    velocity = np.zeros_like(W1)
    h = np.empty((B, hidden), np.float32)               # (B, H)
    dh = np.empty((B, hidden), np.float32)              # (B, H)
    scores = np.empty((B, NUM_CLASSES), np.float32)     # (B, C)
    dW2 = np.empty((hidden, NUM_CLASSES), np.float32)   # (H, C)
    if precision == "bf16":
        from mlp_exp.blas import BF16, bf16_backend, to_bf16
        lib = bf16_backend()
        big_gemm = lib.gemm_bf16
        X_big, W1_big = to_bf16(X_batch, np.empty(X_batch.shape, BF16)), to_bf16(W1, np.empty(W1.shape, BF16))
        dh_big = np.zeros((B, hidden), BF16)            # the GEMM's time does not depend on dh's values
    else:
        lib = kernels.blas
        big_gemm, X_big, W1_big, dh_big = lib.sgemm, X_batch, W1, dh
    started = time.perf_counter()
    for _ in range(iterations):
        big_gemm(X_big, W1_big, h, 1.0, 0.0)                            # forward, (B, D) x (D, H)
        lib.sgemm(h, W2, scores, 1.0, 0.0)                              # (B, H) x (H, C)
        lib.sgemm(h.T, scores, dW2, 1.0, 0.0)                           # (H, B) x (B, C)
        lib.sgemm(scores, W2.T, dh, 1.0, 0.0)                           # (B, C) x (C, H)
        big_gemm(X_big.T, dh_big, velocity, -LEARNING_RATE, MOMENTUM)   # W1 update, (D, B) x (B, H)
    return iterations * B / (time.perf_counter() - started)


def bf16_note() -> str | None:
    """Why the bf16 columns are skipped, or None (after printing MKL's line) when MKL's bf16 GEMM is here."""
    from mlp_exp.errors import UserError
    try:
        print(bf16_line())
    except UserError as err:
        return f"bf16 columns skipped: {err}"
    return None


class TorchWorker:
    """PyTorch reference in its own process (torch's OpenMP pool must not share cores with OpenBLAS's)."""

    def __init__(self, args):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker",
               "--data-dir", str(args.data_dir), "--batch-size", str(args.batch_size)]
        if args.random_data:
            cmd.append("--random-data")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch worker exited with code {self.proc.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def epoch(self, hidden, seed):
        self.proc.stdin.write(json.dumps({"hidden": hidden, "seed": seed}) + "\n")
        self.proc.stdin.flush()
        return self._read()["samples_per_s"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def torch_worker_main(args):
    """Child side of TorchWorker: float32 data up front, then one timed epoch per request on stdin."""
    try:
        import torch
    except ImportError as err:
        print(json.dumps({"error": f"torch not importable: {err}"}), flush=True)
        return
    torch.set_num_threads(2)
    data = load_data(args.data_dir, args.random_data)
    preprocessor = fit_preprocessor(data.X_train, "standardize")
    X = torch.from_numpy(preprocessor.apply(data.X_train))              # (N, D) float32, preprocessed up front
    y = torch.from_numpy(data.y_train.astype(np.int64))
    del data
    print(json.dumps({"ready": True, "version": torch.__version__, "threads": torch.get_num_threads()}),
          flush=True)
    B = args.batch_size
    iterations = len(X) // B
    for line in sys.stdin:
        request = json.loads(line)
        torch.manual_seed(request["seed"])
        model = torch.nn.Sequential(torch.nn.Linear(INPUT_SIZE, request["hidden"]), torch.nn.ReLU(),
                                    torch.nn.Linear(request["hidden"], NUM_CLASSES))
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM,
                                    weight_decay=REG)
        loss_fn = torch.nn.CrossEntropyLoss()
        order = torch.randperm(len(X))

        def run(steps):
            for start in range(0, steps * B, B):
                batch = order[start:start + B]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(X[batch]), y[batch])
                loss.backward()
                optimizer.step()
                loss.item()            # the product reads every step's loss too

        run(TORCH_WARMUP_STEPS)        # untimed: first-call allocations and kernel selection
        started = time.perf_counter()
        run(iterations)
        print(json.dumps({"samples_per_s": iterations * B / (time.perf_counter() - started)}), flush=True)


# ------------------------------------------------------ machine and noise

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines(torch_info) -> list[str]:
    import scipy
    from threadpoolctl import threadpool_info

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"machine: {cpu_model()}, {cores} usable cores ({os.cpu_count()} online), "
             f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
             f"torch {torch_info}"]
    for pool in threadpool_info():
        lines.append(f"  BLAS: {pool.get('internal_api')} {pool.get('version')} {pool.get('architecture', '')} "
                     f"threads={pool.get('num_threads')} ({Path(pool.get('filepath', '?')).name}, "
                     f"{'numpy' if 'numpy' in pool.get('filepath', '') else 'scipy' if 'scipy' in pool.get('filepath', '') else pool.get('prefix')})")
    lines.append(f"  kernels BLAS: {kernels.blas.name} {getattr(kernels.blas, 'path', '')}".rstrip())
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_"))}
    lines.append("  env: " + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "no OPENBLAS_/OMP_/MKL_ variables"))
    return lines


def _busy_jiffies():
    """(all CPUs' busy jiffies, this process tree's jiffies) from /proc; None where /proc is missing."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        values = [int(v) for v in fields]
        busy = sum(values) - values[3] - values[4]            # minus idle and iowait
        own = 0
        for pid in [os.getpid(), *_child_pids()]:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            own += int(stat[11]) + int(stat[12])              # utime + stime
        return busy, own
    except (OSError, ValueError, IndexError):
        return None


def _child_pids():
    try:
        return [int(p) for p in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()]
    except OSError:
        return []


class OtherLoad:
    """CPU used by other processes (in cores) while the benchmark runs: the noise figure it reports."""

    def __init__(self):
        self.start, self.t0 = _busy_jiffies(), time.monotonic()

    def cores(self):
        end = _busy_jiffies()
        if self.start is None or end is None:
            return float("nan")
        hz = os.sysconf("SC_CLK_TCK")
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(others, 0) / hz / max(time.monotonic() - self.t0, 1e-9)


def wait_quiet(seconds) -> str:
    """Wait (up to `seconds`) until other processes use under 0.1 core for 3 s; say what happened."""
    deadline = time.monotonic() + seconds
    while True:
        probe = OtherLoad()
        time.sleep(3)
        load = probe.cores()
        if not load > 0.1:
            return f"machine quiet (other processes: {load:.2f} cores)"
        if time.monotonic() >= deadline:
            return f"WARNING: machine still busy after {seconds:.0f} s (other processes: {load:.2f} cores)"


# ------------------------------------------------------------------ part 1

def _median(values):
    return float(np.median(values)) if values else float("nan")


def _ratio(value):
    return "-" if value != value else f"{value:.2f}x"


def _k(value):
    return "-" if value != value else f"{value / 1000:.1f}k"


def part_training_speed(args, data):
    """Part 1: product vs GEMM-only bound vs PyTorch eager, and evaluation cost, per hidden size."""
    preprocessor = fit_preprocessor(data.X_train, "standardize")
    X_batch = preprocessor.apply(data.X_train[:args.batch_size])        # (B, D) float32, for the bound
    iterations = len(data.X_train) // args.batch_size

    worker, torch_note = None, None
    if args.no_torch:
        torch_note = "torch column skipped: --no-torch"
    else:
        try:
            import importlib.util
            if importlib.util.find_spec("torch") is None:
                raise RuntimeError("torch is not installed (optional extra: pip install torch)")
            worker = TorchWorker(args)
        except (RuntimeError, OSError, json.JSONDecodeError) as err:
            torch_note = f"torch column skipped: {err}"
    torch_info = (f"{worker.info['version']} ({worker.info['threads']} threads, worker process)"
                  if worker else "not used")

    for line in machine_lines(torch_info):
        print(line)
    print(f"data: {data.source}; {len(data.X_train)} x {data.X_train.shape[1]} uint8 train rows, "
          f"{len(data.X_val)} val rows; batch {args.batch_size}, {iterations} steps/epoch, "
          f"standardize preprocessing per batch, flip={args.flip}")
    if torch_note:
        print(torch_note)
    print(wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else "not waiting for a quiet machine")

    skip_bf16 = "bf16 columns skipped: --no-bf16" if args.no_bf16 else bf16_note()
    if skip_bf16:
        print(skip_bf16)
    results = {h: {"product": [], "bound": [], "torch": [], "eval": [], "bf16": [], "bf16_bound": []}
               for h in args.hidden}
    redone = []

    def measure(what, hidden, run):
        """run() once; again (after waiting for quiet) while other processes used > --max-noise cores."""
        for attempt in range(args.retries + 1):
            time.sleep(POOL_IDLE_S)          # the other BLAS pool's threads stop spinning first
            probe = OtherLoad()
            value = run()
            load = probe.cores()
            if not load > args.max_noise or attempt == args.retries:
                return value
            redone.append(f"{what} H={hidden} ({load:.2f} cores)")
            wait_quiet(args.wait_quiet)

    noise = OtherLoad()
    try:
        for repeat in range(args.repeats):
            for hidden in args.hidden:               # interleaved: every column sees the same noise
                r = results[hidden]
                epochs = measure("product", hidden, lambda: product_epochs(
                    data, preprocessor, hidden, args.batch_size, args.epochs, repeat, args.flip))
                for speed, eval_pct in epochs:
                    r["product"].append(speed)
                    r["eval"].append(eval_pct)
                r["bound"].append(measure("bound", hidden,
                                          lambda: gemm_bound_epoch(X_batch, hidden, iterations, repeat)))
                if not skip_bf16:
                    r["bf16"].append(measure("bf16", hidden, lambda: product_epochs(
                        data, preprocessor, hidden, args.batch_size, 1, repeat, args.flip, "bf16")[0][0]))
                    r["bf16_bound"].append(measure("bf16 bound", hidden, lambda: gemm_bound_epoch(
                        X_batch, hidden, iterations, repeat, "bf16")))
                if worker:
                    r["torch"].append(measure("torch", hidden, lambda: worker.epoch(hidden, repeat)))
            print(f"  repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        other_cores = noise.cores()        # before the worker exits: its CPU time counts as ours
    finally:
        if worker:
            worker.close()

    rows = []
    for hidden in args.hidden:
        r = results[hidden]
        product, bound, torch_speed = _median(r["product"]), _median(r["bound"]), _median(r["torch"])
        bf16, bf16_bound = _median(r["bf16"]), _median(r["bf16_bound"])
        rows.append({"hidden": hidden, "product": product, "bound": bound, "torch": torch_speed,
                     "eval_pct": _median(r["eval"]),
                     "product_over_bound": product / bound, "product_over_torch": product / torch_speed,
                     "bf16": bf16, "bf16_bound": bf16_bound, "bf16_over_bound": bf16 / bound,
                     "bf16_over_bf16_bound": bf16 / bf16_bound})

    print()
    print(f"samples/s, median of {args.repeats} repeat(s) x {args.epochs} epoch(s); other processes used "
          f"{other_cores:.2f} cores on average meanwhile; {len(redone)} measurement(s) redone for noise"
          + (f": {', '.join(redone)}" if redone else ""))
    header = f"{'hidden':>6} | {'product':>9} | {'GEMM bound':>10} | {'torch eager':>11} | " \
             f"{'product/bound':>13} | {'product/torch':>13} | {'eval % of epoch':>15} | " \
             f"{'bf16 product':>12} | {'bf16 bound':>10} | {'bf16/fp32 bound':>15} | {'bf16/own bound':>14}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['hidden']:>6} | {_k(row['product']):>9} | {_k(row['bound']):>10} | {_k(row['torch']):>11} | "
              f"{row['product_over_bound']:>13.1%} | "
              f"{'-' if row['torch'] != row['torch'] else format(row['product_over_torch'], '.2f') + 'x':>13} | "
              f"{row['eval_pct']:>14.2f}% | {_k(row['bf16']):>12} | {_k(row['bf16_bound']):>10} | "
              f"{_ratio(row['bf16_over_bound']):>15} | {_ratio(row['bf16_over_bf16_bound']):>14}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "other_cores": other_cores}, indent=1))
    if args.openblas_env_check:
        print(openblas_env_check_line(args))
    return rows


def openblas_env_check_line(args) -> str:
    """Re-run part 1 without torch in a subprocess whose env lacks OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE."""
    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--parts", "speed", "--no-torch",
               "--wait-quiet", "0", "--repeats", str(args.repeats), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--data-dir", str(args.data_dir), "--json", str(out),
               "--hidden", *map(str, args.hidden)] + (["--random-data"] if args.random_data else []) \
            + (["--flip"] if args.flip else [])
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            return f"EXTRA (not the CI configuration): subprocess with OPENBLAS_* unset failed: " \
                   f"{done.stderr.strip().splitlines()[-1:] or done.returncode}"
        rows = json.loads(out.read_text())["rows"]
    figures = ", ".join(f"H={r['hidden']}: product {_k(r['product'])}, bound {_k(r['bound'])} "
                        f"({r['product_over_bound']:.0%})" for r in rows)
    return f"EXTRA (not the CI configuration; subprocess with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset): {figures}"


# ------------------------------------------------------------------ part 2

# Trial 1 of the default study (one of TPE's start-up draws; it completed all 30
# epochs): a typical trial of the default space, run with the study's fixed settings.
TRIAL_HYPERPARAMETERS = dict(hidden_size=849, learning_rate=0.0114, reg=6.4e-4, momentum=0.88, lr_decay=0.905)


def trial_config(args, seed) -> TrainConfig:
    from mlp_exp.study.space import STUDY_DEFAULTS
    # the study's settings when the README's figures were measured: standardize preprocessed per batch
    # (the `preprocessor` this part passes), no shifts, init_std 0.02; not today's zca default
    settings = {**STUDY_DEFAULTS, "preprocessing": "standardize", "translate": 0, "init_std": 2e-2}
    return TrainConfig(**settings, **TRIAL_HYPERPARAMETERS, num_epochs=args.trial_epochs,
                       train_size=NUM_TRAIN, val_size=NUM_VAL, seed=seed)


def untracked_trial(data, preprocessor, config) -> float:
    """Wall seconds of the trial's training alone."""
    started = time.perf_counter()
    trainer.train(data.X_train, data.y_train, data.X_val, data.y_val, config, preprocessor=preprocessor,
                  X_train_mirrored=data.mirrored_for(config))
    return time.perf_counter() - started


def tracked_trial(data, preprocessor, config, tracker, number) -> dict:
    """The trial as study.objective.Objective runs it, model logged, waited for until MLflow has it all."""
    started = time.perf_counter()
    run = tracker.start_trial(number, config)
    result = trainer.train(data.X_train, data.y_train, data.X_val, data.y_val, config,
                           callbacks=[run.log_epoch], preprocessor=preprocessor,
                           X_train_mirrored=data.mirrored_for(config))
    run.log_result(result, diagnosis.as_tags(diagnosis.diagnose(*result.curves())))
    run.log_model(result.best_params, preprocessor, config, list(DEFAULT_LABEL_NAMES))
    run.end("FINISHED", wait=True)
    wall = time.perf_counter() - started
    training = sum(e.seconds for e in result.epochs)
    evaluation = sum(e.eval_seconds for e in result.epochs)
    return {"wall": wall, "training": training, "evaluation": evaluation,
            "tracking": wall - training - evaluation, "logger_cpu": run.background_cpu_seconds}


def part_trial_split(args, data):
    """Part 2: one trial's wall time split into training, evaluation and tracking; paired overhead."""
    import tempfile

    from mlp_exp.tracking import Tracker

    preprocessor = fit_preprocessor(data.X_train, "standardize")
    config = trial_config(args, 0)
    data.mirrored_for(config)                # untimed: a study builds it once per worker, not per trial
    print()
    print(f"part 2: a trial's time split; {', '.join(f'{k} {v}' for k, v in TRIAL_HYPERPARAMETERS.items())}, "
          f"{config.num_epochs} epochs, batch {config.batch_size}, {config.preprocessing}, flip={config.flip}; "
          f"data: {data.source}")
    print(wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else "not waiting for a quiet machine")
    tracked, untracked = [], []
    noise = OtherLoad()
    with tempfile.TemporaryDirectory(prefix="train-speed-mlruns-") as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlruns/mlflow.db", "train-speed-benchmark")
        tracker.study_run("train-speed-benchmark")
        for repeat in range(args.trial_repeats):
            config = trial_config(args, repeat)
            # alternate which goes first, so drift in machine speed does not favour either side
            if repeat % 2 == 0:
                untracked.append(untracked_trial(data, preprocessor, config))
                tracked.append(tracked_trial(data, preprocessor, config, tracker, repeat))
            else:
                tracked.append(tracked_trial(data, preprocessor, config, tracker, repeat))
                untracked.append(untracked_trial(data, preprocessor, config))
            print(f"  pair {repeat + 1}/{args.trial_repeats}: tracked {tracked[-1]['wall']:.1f} s, "
                  f"untracked {untracked[-1]:.1f} s", file=sys.stderr, flush=True)
        tracker.end_study()
    other_cores = noise.cores()
    wall = _median([t["wall"] for t in tracked])
    print(f"median of {args.trial_repeats} tracked/untracked pair(s); other processes used "
          f"{other_cores:.2f} cores on average meanwhile")
    print(f"{'share of the tracked trial':<44} | {'seconds':>8} | {'% of wall':>9}")
    print("-" * 68)
    for name in ("training", "evaluation", "tracking"):
        seconds = _median([t[name] for t in tracked])
        print(f"{name + (' steps' if name == 'training' else ''):<44} | {seconds:>8.2f} | {seconds / wall:>9.2%}")
    print(f"{'wall':<44} | {wall:>8.2f} | {1:>9.2%}")
    overheads = [t["wall"] / u - 1 for t, u in zip(tracked, untracked)]
    print(f"tracking overhead, paired (tracked wall / untracked wall - 1): median {_median(overheads):.2%} "
          f"(pairs: {', '.join(f'{o:.2%}' for o in overheads)}); untracked wall median {_median(untracked):.2f} s")
    # The background logger can delay training by at most the CPU it uses (taken from a BLAS
    # thread, or holding the GIL the training thread waits for): a bound free of the machine's
    # drift, which moves single pairs by several percent.
    bounds = [(t["tracking"] + t["logger_cpu"]) / t["wall"] for t in tracked]
    print(f"tracking overhead, bound (tracking in the trial's thread + CPU of the logging thread "
          f"{_median([t['logger_cpu'] for t in tracked]):.2f} s, over wall): median {_median(bounds):.2%} "
          f"(trials: {', '.join(f'{b:.2%}' for b in bounds)})")


# ------------------------------------------------------------------ part 3

def peak_rss_of(command, cwd) -> int:
    """Run command to its end; its peak resident set in bytes, from wait4's rusage (Linux: ru_maxrss in KiB)."""
    with open(Path(cwd) / "stderr.log", "w+") as stderr:     # a file, not a pipe: nothing can block on it
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: "
                               f"{stderr.read().strip().splitlines()[-1:]}")
    return usage.ru_maxrss * 1024


def part_memory(args, data):
    """Part 3: a study's peak resident memory against the float32 size of its data."""
    import tempfile

    folder = Path(args.data_dir) / "cifar-10-batches-py"
    print()
    if args.random_data or not folder.is_dir():
        print(f"part 3 skipped: the study loads the replica, and there is none at {folder}")
        return
    X_train, _, X_test, _ = load_cifar10_uint8(folder)
    rows = len(X_train) + len(X_test)                  # train + val + test, all loaded by a study
    float32_bytes = rows * INPUT_SIZE * 4
    print(f"part 3: peak memory of `python -m mlp_exp.search --fixed hidden_size=2000 --max-epochs 2`; "
          f"float32 size of its data ({rows} rows x {INPUT_SIZE}) is {float32_bytes / 2**20:.0f} MiB")
    print(f"{'trials':>6} | {'peak RSS':>10} | {'peak / float32 data':>19}")
    print("-" * 42)
    for trials in args.memory_trials:
        with tempfile.TemporaryDirectory(prefix="train-speed-memory-") as tmp:
            command = [sys.executable, "-m", "mlp_exp.search", "--trials", str(trials), "--max-epochs", "2",
                       "--fixed", "hidden_size=2000", "--study-name", "memory",
                       "--storage", f"sqlite:///{tmp}/optuna.db",
                       "--tracking-uri", f"sqlite:///{tmp}/mlruns/mlflow.db",
                       "--data-dir", str(Path(args.data_dir).resolve()), "--quiet"]
            peak = peak_rss_of(command, cwd=tmp)
        print(f"{trials:>6} | {peak / 2**20:>6.0f} MiB | {peak / float32_bytes:>19.2f}")


# ------------------------------------------------------------------- main

# name -> part(args, data)
PARTS = {"speed": part_training_speed, "split": part_trial_split, "memory": part_memory}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--repeats", type=int, default=5, help="measurements per column; medians are printed")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per product run, each one a sample")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--random-data", action="store_true", help="random uint8 rows even if the replica exists")
    parser.add_argument("--flip", action="store_true", help="train the product with random horizontal flips")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 (MKL) columns")
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="wait up to this many seconds for other processes to go idle (0: don't)")
    parser.add_argument("--max-noise", type=float, default=0.1,
                        help="redo a measurement during which other processes used more CPU cores than this")
    parser.add_argument("--retries", type=int, default=3, help="at most this many redos per measurement")
    parser.add_argument("--openblas-env-check", action="store_true",
                        help="add one labelled line: part 1 re-run in a subprocess with OPENBLAS_* unset")
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    parser.add_argument("--json", help="also write part 1's figures to this file")
    parser.add_argument("--trial-epochs", type=int, default=default("max_epochs"),
                        help="part 2: epochs of the measured trial (default: the study's --max-epochs)")
    parser.add_argument("--trial-repeats", type=int, default=3, help="part 2: tracked/untracked pairs")
    parser.add_argument("--memory-trials", type=int, nargs="+", default=[2, 6],
                        help="part 3: run the study once per trial count")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("repeats", "epochs", "batch_size", "trial_epochs", "trial_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.memory_trials) < 1:
        parser.error(f"--memory-trials counts must be >= 1, got {args.memory_trials}")
    if min(args.hidden) < 1:
        parser.error(f"--hidden sizes must be >= 1, got {args.hidden}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.torch_worker:
        torch_worker_main(args)
        return
    argv = sys.argv[1:] if argv is None else argv
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, sys.argv[0], *argv]))
    data = load_data(args.data_dir, args.random_data)
    for name in args.parts:
        PARTS[name](args, data)


if __name__ == "__main__":
    main()
