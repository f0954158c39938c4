import os
import signal
from pathlib import Path

import pytest

from helpers import REPO

# Tests send Ctrl-C to the commands they start. Run from a shell without job control (a CI
# script's `pytest &`), this process, and so every child, would start with SIGINT ignored, and a
# command keeps an inherited ignored SIGINT ignored (interrupts._SignalScope): give the children
# Python's own handler to inherit, which exec resets to the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def find_cifar10():
    """The CIFAR-10 folder for real-data tests: $MLP_EXP_DATA_DIR, else <repo>/data."""
    for base in (os.environ.get("MLP_EXP_DATA_DIR"), REPO / "data"):
        if base and (Path(base) / "cifar-10-batches-py" / "data_batch_1").is_file():
            return Path(base)
    return None


@pytest.fixture(scope="session")
def cifar10_dir():
    found = find_cifar10()
    if found is None:
        pytest.skip("CIFAR-10 not found: set MLP_EXP_DATA_DIR or build the replica with "
                    "`python ../shared/data/make_cifar10.py data/` (.ci/run does this)")
    return found


def _blas_backends():
    from mlp_exp import kernels
    path = kernels.numpy_openblas_path()
    return [pytest.param(lambda: kernels.NumpyOpenBLAS(path), id="numpy-openblas",
                         marks=pytest.mark.skipif(path is None, reason="this NumPy build bundles no OpenBLAS "
                                                  "(conda/MKL or distro NumPy); the scipy backend is used instead")),
            pytest.param(kernels.SciPyBLAS, id="scipy")]


@pytest.fixture(params=_blas_backends())
def blas_backend(request, monkeypatch):
    """Each BLAS backend of mlp_exp.kernels in turn, installed as the one every kernel call uses."""
    from mlp_exp import kernels
    backend = request.param()
    monkeypatch.setattr(kernels, "blas", backend)
    return backend
