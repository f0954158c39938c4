"""Small synthetic classification problems the kernel and trainer tests share."""
import numpy as np

from mlp_exp.net import init_params


def small_problem(seed=0, n=64, d=48, h=32, c=5):
    """X (n, d) float32 standard normal, y (n,) labels in [0, c), float32 params of a (d, h, c) net."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    return X, y, init_params(d, h, c, rng, std=0.1, dtype=np.float32)
