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


def bf16_line() -> str:
    """The bf16 benchmarks' header line: the library a bf16 step uses here (MKL or oneDNN), its version
    and threads, the CPU's bf16 units. Loads it; raises mlp_exp's BF16Unavailable (a UserError) where
    it is not installed."""
    from mlp_exp.blas import IntelMKL, _cpuinfo, bf16_backend, bf16_flags, cpu_bf16_units
    lib = bf16_backend()
    if isinstance(lib, IntelMKL):
        units = ", ".join(cpu_bf16_units()) or "no bf16 units that MKL uses: emulated"
        return f"  bf16: {lib.version.split(' for ')[0]}, {lib.num_threads()} threads; CPU: {units}"
    return (f"  bf16: {lib.version} ({lib.path}), its own thread pool; CPU: "
            f"{', '.join(bf16_flags(_cpuinfo()))} (units MKL does not use on this CPU's vendor)")


def blas_lines() -> list[str]:
    """One line per BLAS/OpenMP pool loaded in this process (which kernel OpenBLAS picked), and the
    OPENBLAS_/OMP_/MKL_ variables set, if any."""
    from threadpoolctl import threadpool_info
    lines = [f"  pool: {pool['internal_api']} {pool['version']} {pool.get('architecture', '')} "
             f"threads={pool['num_threads']} ({os.path.basename(pool['filepath'])})" for pool in threadpool_info()]
    env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_")))
    return lines + [f"  env: {env or 'no OPENBLAS_/OMP_/MKL_ variables'}"]
