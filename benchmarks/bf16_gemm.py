"""Could a bf16 path beat the fp32 GEMM bound here? The training step's two big GEMMs, side by side.

Measures, interleaved and in one process, the pair of GEMMs that dominates
a step (B = batch, D = 3072, H = hidden):

    X @ W1              (B, D) x (D, H)   forward
    X.T @ dh + 0.9 V    (D, B) x (B, H)   weight gradient into the velocity

  openblas fp32   sgemm of NumPy's bundled OpenBLAS, as `mlp_exp.kernels.gemm` calls it
  mkl fp32        cblas_sgemm of Intel MKL (the `mkl` wheel from PyPI)
  mkl bf16        cblas_gemm_bf16bf16f32 of MKL: bf16 inputs, fp32 accumulation and
                  output (AVX512_BF16 / AMX where the CPU has them)
  onednn bf16     oneDNN's matmul on the same bf16 operands (brgemm kernels dispatched on
                  the instruction set, so AVX512_BF16 on an AMD EPYC too); "-" where the
                  `onednn` wheel is not installed
  to bf16         what a bf16 step adds per step: W1 (D, H) float32 -> bf16 by
                  truncation (a strided copy of the high halves; NumPy, one thread)

and the relative error of the bf16 forward product against float32. MKL and
OpenBLAS each keep their own thread pool; the columns alternate, so each pool
idles while the other runs (the figures are per-call medians, not a training
step). Needs `pip install mkl` in the same environment; prints why and exits 0
without it. Nothing here asserts on timings.

    python benchmarks/bf16_gemm.py                    # H = 100 500 1000 2000
    python benchmarks/bf16_gemm.py --hidden 1000 --repeats 9
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _timing import blas_lines, median_us, bf16_line                  # noqa: E402
from mlp_exp.blas import BF16, mkl_backend, to_bf16                   # noqa: E402
from mlp_exp.errors import UserError                                   # noqa: E402
from mlp_exp.kernels import gemm                                       # noqa: E402

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 500, 1000, 2000])
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7, help="medians over this many timings of --calls calls")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    print("command: " + " ".join([sys.executable, *sys.argv]))
    print("\n".join(blas_lines()))
    try:
        print(bf16_line())
    except UserError as err:
        print(f"skipped: {err}")
        return
    mkl = mkl_backend()
    from mlp_exp.onednn import OneDNNUnavailable, onednn_backend
    try:
        dnnl = onednn_backend()
        print(f"  onednn: {dnnl.version} ({dnnl.path})")
    except OneDNNUnavailable as err:
        dnnl = None
        print(f"  onednn column skipped: {err}")

    rng = np.random.default_rng(0)
    B, D = args.batch_size, 3072
    X = rng.standard_normal((B, D), dtype=np.float32)
    X16 = to_bf16(X, np.empty((B, D), BF16))
    print(f"\nper-call medians of {args.repeats} x {args.calls}, microseconds; batch {B}")
    print("hidden | openblas fp32 pair | mkl fp32 pair | mkl bf16 pair | onednn bf16 pair | W1 to bf16 | "
          "mkl bf16 / openblas | onednn bf16 / openblas | rel. error")
    print("-" * 150)
    for H in args.hidden:
        W = rng.standard_normal((D, H), dtype=np.float32) * np.float32(0.01)
        dh = rng.standard_normal((B, H), dtype=np.float32)
        W16, dh16 = to_bf16(W, np.empty((D, H), BF16)), to_bf16(dh, np.empty((B, H), BF16))
        hidden, velocity = np.empty((B, H), np.float32), np.zeros((D, H), np.float32)

        def openblas():
            gemm(X, W, hidden)
            gemm(X.T, dh, velocity, beta=0.9)

        def mkl_pair(gemm_call, x, w, d):
            gemm_call(x, w, hidden, 1.0, 0.0)
            gemm_call(x.T, d, velocity, 1.0, 0.9)

        fp32 = median_us(openblas, args.calls, args.repeats)
        mkl32 = median_us(lambda: mkl_pair(mkl.sgemm, X, W, dh), args.calls, args.repeats)
        mkl16 = median_us(lambda: mkl_pair(mkl.gemm_bf16, X16, W16, dh16), args.calls, args.repeats)
        dnnl16 = median_us(lambda: mkl_pair(dnnl.gemm_bf16, X16, W16, dh16), args.calls, args.repeats) if dnnl else None
        convert = median_us(lambda: to_bf16(W, W16), args.calls, args.repeats)
        mkl.gemm_bf16(X16, W16, hidden, 1.0, 0.0)
        exact = X.astype(np.float64) @ W.astype(np.float64)
        error = float(np.abs(hidden - exact).max() / np.abs(exact).max())
        dnnl_cols = (f"{dnnl16:16.0f} | ", f"{fp32 / dnnl16:22.2f}x") if dnnl else (f"{'-':>16} | ", f"{'-':>23}")
        print(f"{H:6d} | {fp32:18.0f} | {mkl32:13.0f} | {mkl16:13.0f} | {dnnl_cols[0]}{convert:10.0f} | "
              f"{fp32 / mkl16:18.2f}x | {dnnl_cols[1]} | {error:.1e}")


if __name__ == "__main__":
    main()
