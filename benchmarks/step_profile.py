"""Where a training step's microseconds go: each piece of one minibatch, timed alone, against the whole.

One minibatch of `trainer.train` as a default `standardize` trial runs it (momentum,
batch 200, uint8 rows, flips gathered from the mirrored copy, standardize
preprocessing per batch), at each --hidden size. Every piece runs on the real
step's own buffers and through the same calls (`kernels.gemm`, `kernels.blas`,
the Preprocessor), timed alone in a loop: the batch's gather and flips, its
preprocessing, the five GEMMs, the step's elementwise work (bias and ReLU
forward, softmax loss, ReLU backward with the bias gradient: FusedStep's own
methods), the three passes over the weights (the L2 penalty's sdot, the decay
saxpy, the step saxpy). `FusedStep.step` is then timed whole; "rest of the
step" is the whole minus all those pieces: the few tiny calls left (b2, the
small velocity update) and what the pieces lose to each other when they run in
sequence (each timed alone finds its operands in cache). Each piece is also
timed with BLAS limited to one thread, to show what OpenBLAS's threads do for it.

The "in sequence" column then times every piece where it really runs: whole
minibatches as `trainer.train` runs them (fp32), a clock read between calls,
medians over --sequence-steps minibatches. Its calls are a copy of the
trainer's loop and of `FusedStep.step`, so it first checks that copy against
the real step (the same loss and weights, bit for bit, after 3 minibatches)
and stops if they differ. What alone and in sequence differ by is what the
pieces lose to each other.

    python benchmarks/step_profile.py                  # H = 100 1000
    python benchmarks/step_profile.py --hidden 500 --repeats 9
    python benchmarks/step_profile.py --precision bf16 # the opt-in bf16 path (MKL, or oneDNN on AMD)

With --precision bf16 the pieces are the bf16 step's: its three truncating
copies to bf16 (X, W1, dh), the two big GEMMs in bf16 and every call on MKL.

Medians of --repeats loops of --calls calls; random uint8 rows (the values do
not change the time). Prints figures only; nothing here asserts on timings.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlp_exp import trainer                                            # noqa: E402
from _timing import blas_lines, median_us, bf16_line                           # noqa: E402
from mlp_exp.blas import to_bf16                                       # noqa: E402
from mlp_exp.kernels import FusedStep                                  # noqa: E402
from mlp_exp.net import init_params                                    # noqa: E402
from mlp_exp.preprocessing import fit_preprocessor                     # noqa: E402

NUM_TRAIN, INPUT_SIZE, NUM_CLASSES = 49_000, 3072, 10
LEARNING_RATE, REG, MOMENTUM = 1e-3, 1e-3, 0.9


def pieces(step: FusedStep, X_train, X_mirrored, preprocessor, batch_size, rng) -> dict:
    """name -> (group, zero-argument call) for every piece of one minibatch, on `step`'s own buffers."""
    # the gather reads a new batch each call, as training does (the same rows again would come from cache)
    order = rng.permutation(NUM_TRAIN)[:NUM_TRAIN // batch_size * batch_size].reshape(-1, batch_size)
    batches = itertools.cycle(order)
    batch = order[0]
    flipped = np.flatnonzero(rng.random(batch_size) < 0.5)

    def flip_new_batch():
        rows_of = next(batches)
        raw[flipped] = X_mirrored[rows_of[flipped]]
    raw = np.empty((batch_size, INPUT_SIZE), np.uint8)
    rows = np.empty((batch_size, INPUT_SIZE), np.float32)
    np.take(X_train, batch, axis=0, out=raw)
    X = preprocessor.apply(raw, out=rows)
    y = rng.integers(0, NUM_CLASSES, size=batch_size)
    step.step(X, y, LEARNING_RATE)                     # allocates the step's buffers for this batch size
    W1, W2 = step.params["W1"], step.params["W2"]
    hidden, dhidden, scores = step._hidden, step._dhidden, step._scores
    grads, velocity, weights = step._grads, step._state_flat, step._flat
    regularised = step._reg_size
    lib = step.blas                                    # OpenBLAS for fp32, MKL for bf16: the step's own
    sgemm = lambda a, b, out, alpha=1.0, beta=0.0: lib.sgemm(a, b, out, alpha, beta)   # noqa: E731
    timed = {
        "gather uint8 rows (np.take)": ("batch", lambda: np.take(X_train, next(batches), axis=0, out=raw)),
        "flips from the mirrored copy": ("batch", flip_new_batch),
        "standardize (cast, subtract, divide)": ("batch", lambda: preprocessor.apply(raw, out=rows)),
    }
    if step.precision == "bf16":
        X16, W16, dh16 = step._X_bf16, step._W1_bf16, step._dhidden_bf16
        timed.update({
            "X to bf16 (truncating copy)": ("convert", lambda: to_bf16(X, X16)),
            "W1 to bf16 (truncating copy)": ("convert", lambda: to_bf16(W1, W16)),
            "dh to bf16 (truncating copy)": ("convert", lambda: to_bf16(dhidden, dh16)),
            "GEMM X @ W1 (bf16)": ("gemm", lambda: lib.gemm_bf16(X16, W16, hidden, 1.0, 0.0)),
        })
    else:
        timed["GEMM X @ W1"] = ("gemm", lambda: sgemm(X, W1, hidden))
    timed.update({
        "GEMM h @ W2": ("gemm", lambda: sgemm(hidden, W2, scores)),
        "GEMM h.T @ ds": ("gemm", lambda: sgemm(hidden.T, scores, grads["W2"])),
        "GEMM ds @ W2.T": ("gemm", lambda: sgemm(scores, W2.T, dhidden)),
    })
    if step.precision == "bf16":
        timed["GEMM X.T @ dh into velocity (bf16)"] = ("gemm", lambda: lib.gemm_bf16(
            X16.T, dh16, step.state["W1"], -1e-9, MOMENTUM))
    else:
        timed["GEMM X.T @ dh into velocity"] = ("gemm", lambda: sgemm(X.T, dhidden, step.state["W1"],
                                                                       alpha=-1e-9, beta=MOMENTUM))
    b1, active, grad_b1 = step.params["b1"], step._active, grads["b1"]
    timed.update({
        "bias + ReLU and its mask (B, H)": ("elementwise", lambda: step._relu_forward(hidden, b1, active)),
        "softmax loss and dscores (B, C)": ("elementwise", lambda: step._softmax_loss(scores, y)),
        "ReLU backward + b1 gradient (B, H)": ("elementwise", lambda: step._relu_backward(dhidden, active, grad_b1)),
        "sdot: L2 penalty of [W1, W2]": ("weights", lambda: lib.sdot(weights[:regularised], weights[:regularised])),
        "saxpy: L2 decay into velocity": ("weights", lambda: lib.saxpy(weights[:regularised],
                                                                     velocity[:regularised], -1e-12)),
        "saxpy: weights += velocity": ("weights", lambda: lib.saxpy(velocity, weights, 1e-12)),
        "FusedStep.step, whole": ("step", lambda: step.step(X, y, 1e-9)),   # lr 0 would skip a GEMM
    })
    return timed


def sequence(step: FusedStep, X_train, y_train, X_mirrored, preprocessor, batch_size, rng, learning_rate):
    """A callable running one fp32 momentum minibatch exactly as `trainer.train` and `FusedStep.step` do
    (the same calls, in order, on the step's own buffers), returning (loss, {piece: seconds})."""
    assert step.precision == "fp32" and step.update == "momentum"
    order = itertools.cycle(rng.permutation(NUM_TRAIN)[:NUM_TRAIN // batch_size * batch_size]
                            .reshape(-1, batch_size))
    raw = np.empty((batch_size, INPUT_SIZE), np.uint8)
    rows = np.empty((batch_size, INPUT_SIZE), np.float32)
    lib, clock = step.blas, time.perf_counter

    def minibatch():
        seconds, last = {}, clock()

        def lap(name):
            nonlocal last
            now = clock()
            seconds[name] = seconds.get(name, 0.0) + now - last
            last = now
        # trainer.train's loop
        batch = next(order)
        np.take(X_train, batch, axis=0, out=raw)
        lap("gather uint8 rows (np.take)")
        flipped = np.flatnonzero(rng.random(batch_size) < 0.5)
        lap("trainer loop (flips drawn, labels, loss kept)")
        raw[flipped] = X_mirrored[batch[flipped]]
        lap("flips from the mirrored copy")
        X = preprocessor.apply(raw, out=rows)
        lap("standardize (cast, subtract, divide)")
        y = y_train[batch]
        lap("trainer loop (flips drawn, labels, loss kept)")
        # FusedStep.step, momentum
        p = step.params
        W1, b1, W2, b2 = p["W1"], p["b1"], p["W2"], p["b2"]
        step._buffers(batch_size)
        hidden, active, dhidden, scores = step._hidden, step._active, step._dhidden, step._scores
        grads, reg, lr = step._grads, step.reg, float(learning_rate)
        weights = step._flat[:step._reg_size]
        lap("tiny calls (b2, small velocity, views)")
        reg_loss = 0.5 * reg * lib.sdot(weights, weights) if reg else 0.0
        lap("sdot: L2 penalty of [W1, W2]")
        step._first_layer(X, W1, hidden)
        lap("GEMM X @ W1")
        step._relu_forward(hidden, b1, active)
        lap("bias + ReLU and its mask (B, H)")
        lib.sgemm(hidden, W2, scores, 1.0, 0.0)
        lap("GEMM h @ W2")
        scores += b2
        lap("tiny calls (b2, small velocity, views)")
        data_loss = step._softmax_loss(scores, y)
        lap("softmax loss and dscores (B, C)")
        lib.sgemm(hidden.T, scores, grads["W2"], 1.0, 0.0)
        lap("GEMM h.T @ ds")
        np.sum(scores, axis=0, out=grads["b2"])
        lap("tiny calls (b2, small velocity, views)")
        lib.sgemm(scores, W2.T, dhidden, 1.0, 0.0)
        lap("GEMM ds @ W2.T")
        step._relu_backward(dhidden, active, grads["b1"])
        lap("ReLU backward + b1 gradient (B, H)")
        flat, velocity, n1, nreg = step._flat, step._state_flat, step._W1_size, step._reg_size
        step._first_layer_gradient(X, dhidden, step.state["W1"], alpha=-lr, beta=step.momentum)
        lap("GEMM X.T @ dh into velocity")
        small_velocity = velocity[n1:]
        small_velocity *= step.momentum
        lib.saxpy(step._grad_small, small_velocity, -lr)
        lap("tiny calls (b2, small velocity, views)")
        if reg:
            lib.saxpy(flat[:nreg], velocity[:nreg], -lr * reg)
        lap("saxpy: L2 decay into velocity")
        lib.saxpy(velocity, flat, 1.0)
        lap("saxpy: weights += velocity")
        loss = data_loss + reg_loss
        lap("trainer loop (flips drawn, labels, loss kept)")
        return loss, seconds, (X, y)
    return minibatch


def check_sequence(H, batch_size, X_train, y_train, X_mirrored, preprocessor):
    """The copy in `sequence` against FusedStep.step itself: the same loss and weights after 3 minibatches."""
    params = init_params(INPUT_SIZE, H, NUM_CLASSES, np.random.default_rng(2), 1e-3, dtype=np.float32)
    copied, real = (FusedStep(params, "momentum", REG, MOMENTUM) for _ in range(2))
    minibatch = sequence(copied, X_train, y_train, X_mirrored, preprocessor, batch_size,
                         np.random.default_rng(3), LEARNING_RATE)
    for _ in range(3):
        loss, _, (X, y) = minibatch()
        if real.step(X.copy(), y, LEARNING_RATE) != loss:
            sys.exit("step_profile: its copy of the training step gives another loss than FusedStep.step; "
                     "update sequence() to match kernels.py")
    if not all(np.array_equal(copied.params[k], real.params[k]) for k in real.params):
        sys.exit("step_profile: its copy of the training step gives other weights than FusedStep.step; "
                 "update sequence() to match kernels.py")


def in_sequence(H, batch_size, X_train, y_train, X_mirrored, preprocessor, steps) -> dict:
    """{piece: median microseconds} over `steps` minibatches run in sequence, after 5 to warm up."""
    check_sequence(H, batch_size, X_train, y_train, X_mirrored, preprocessor)
    params = init_params(INPUT_SIZE, H, NUM_CLASSES, np.random.default_rng(1), 1e-3, dtype=np.float32)
    step = FusedStep(params, "momentum", REG, MOMENTUM)
    minibatch = sequence(step, X_train, y_train, X_mirrored, preprocessor, batch_size,
                         np.random.default_rng(4), 1e-9)            # lr ~0: the weights stay put
    laps = [minibatch()[1] for _ in range(steps + 5)][5:]
    medians = {name: 1e6 * float(np.median([lap[name] for lap in laps])) for name in laps[0]}
    medians["one minibatch"] = 1e6 * float(np.median([sum(lap.values()) for lap in laps]))
    return medians


def seq_gemm(seq) -> float:
    return sum(us for name, us in seq.items() if name.startswith("GEMM"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--sequence-steps", type=int, default=300,
                        help="minibatches timed in sequence (fp32; 0: skip that column)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: the opt-in path (MKL, or oneDNN on AMD), every BLAS call on that library")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits
    print("command: " + " ".join([sys.executable, *sys.argv]))
    print("\n".join(blas_lines()))
    if args.precision == "bf16":
        print(bf16_line())
    rng = np.random.default_rng(0)
    X_train = rng.integers(0, 256, size=(NUM_TRAIN, INPUT_SIZE), dtype=np.uint8)
    y_train = rng.integers(0, NUM_CLASSES, size=NUM_TRAIN)
    X_mirrored = trainer.mirror_rows(X_train)
    preprocessor = fit_preprocessor(X_train[:5000], "standardize")
    for H in args.hidden:
        params = init_params(INPUT_SIZE, H, NUM_CLASSES, np.random.default_rng(1), 1e-3, dtype=np.float32)
        step = FusedStep(params, "momentum", REG, MOMENTUM, precision=args.precision)
        timed = pieces(step, X_train, X_mirrored, preprocessor, args.batch_size, rng)
        alone = {name: median_us(fn, args.calls, args.repeats) for name, (_, fn) in timed.items()}
        with threadpool_limits(1):
            one_thread = {name: median_us(fn, args.calls, args.repeats) for name, (_, fn) in timed.items()}
        group = {name: g for name, (g, _) in timed.items()}
        total = {g: sum(alone[n] for n in alone if group[n] == g)
                 for g in ("batch", "convert", "gemm", "elementwise", "weights", "step")}
        minibatch = total["batch"] + total["step"]
        seq = {}
        if args.sequence_steps and args.precision == "fp32":
            seq = in_sequence(H, args.batch_size, X_train, y_train, X_mirrored, preprocessor, args.sequence_steps)
        print(f"\nhidden {H}, batch {args.batch_size}: one minibatch {minibatch:,.0f} us "
              f"(GEMMs alone {total['gemm']:,.0f} us = {total['gemm'] / minibatch:.1%} of it)"
              + (f"; in sequence {seq['one minibatch']:,.0f} us (GEMMs {seq_gemm(seq):,.0f} us = "
                 f"{seq_gemm(seq) / seq['one minibatch']:.1%})" if seq else ""))
        print(f"  {'piece':46s} {'alone us':>9s} {'share':>7s} {'1 thread':>10s} {'in sequence':>12s}")
        for name, us in alone.items():
            in_seq = "" if name not in seq else f"{seq[name]:12.1f}"
            print(f"  {name:46s} {us:9.1f} {us / minibatch:7.1%} {one_thread[name]:10.1f} {in_seq}")
        rest = total["step"] - sum(total[g] for g in ("convert", "gemm", "elementwise", "weights"))
        print(f"  {'rest (tiny calls, pieces in sequence)':46s} {rest:9.1f} {rest / minibatch:7.1%}")
        for name in seq:
            if name not in alone and name != "one minibatch":
                print(f"  {name:46s} {'':9s} {'':7s} {'':10s} {seq[name]:12.1f}")


if __name__ == "__main__":
    main()
