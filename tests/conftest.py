import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
