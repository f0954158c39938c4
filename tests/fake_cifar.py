"""A tiny CIFAR-10 folder in the official python format, for tests that must not need the real one."""
import pickle
from pathlib import Path

import numpy as np


def write_fake_cifar10(root, per_batch=80, num_test=100, seed=0):
    """root/cifar-10-batches-py with 5 training batches of `per_batch` images and a test batch.

    Images are class-dependent colour blobs plus noise, so a net can learn something.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, (10, 3))

    def images(n):
        labels = rng.integers(0, 10, n)
        pixels = rng.normal(palette[labels][:, :, None, None], 40, (n, 3, 32, 32))
        return np.clip(pixels, 0, 255).astype(np.uint8).reshape(n, 3072), labels

    for i in range(1, 6):
        data, labels = images(per_batch)
        _dump(folder / f"data_batch_{i}", data, labels)
    data, labels = images(num_test)
    _dump(folder / "test_batch", data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    return Path(root)


def _dump(path, data, labels):
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": [int(v) for v in labels],
                     b"batch_label": b"fake", b"filenames": [b"x"] * len(labels)}, f)
