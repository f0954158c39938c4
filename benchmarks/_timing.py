"""What the micro-benchmarks share: a per-call median timer and the BLAS pools they ran on."""
from __future__ import annotations

import os
import time

import numpy as np


def median_us(fn, calls: int, repeats: int) -> float:
    """Microseconds per call of fn(): the median over `repeats` loops of `calls` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return float(np.median(times))


def mkl_line() -> str:
    """The bf16 benchmarks' header line: MKL's version and threads, the CPU's bf16 units. Loads MKL;
    raises mlp_exp's BF16Unavailable (a UserError) where it is not installed."""
    from mlp_exp.blas import cpu_bf16_units, mkl_backend
    mkl = mkl_backend()
    units = ", ".join(cpu_bf16_units()) or "no bf16 units that MKL uses: emulated"
    return f"  bf16: {mkl.version.split(' for ')[0]}, {mkl.num_threads()} threads; CPU: {units}"


def blas_lines() -> list[str]:
    """One line per BLAS/OpenMP pool loaded in this process (which kernel OpenBLAS picked), and the
    OPENBLAS_/OMP_/MKL_ variables set, if any."""
    from threadpoolctl import threadpool_info
    lines = [f"  pool: {pool['internal_api']} {pool['version']} {pool.get('architecture', '')} "
             f"threads={pool['num_threads']} ({os.path.basename(pool['filepath'])})" for pool in threadpool_info()]
    env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_")))
    return lines + [f"  env: {env or 'no OPENBLAS_/OMP_/MKL_ variables'}"]
