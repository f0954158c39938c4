"""mlp_exp: hyperparameter search with experiment tracking for a NumPy two-layer net on CIFAR-10.

The spec notebook's API is importable from here, so its cells run with only
their import lines changed. Importing the package loads NumPy and nothing
heavier: Optuna is imported only by mlp_exp.study, MLflow only by mlp_exp.tracking
(and there on first use).
"""
from importlib import metadata as _metadata

from .gradient_check import eval_numerical_gradient, rel_error
from .spec_api import ClassifierTrainer, init_two_layer_model, two_layer_net
from .vis import visualize_grid

try:
    __version__ = _metadata.version("mlp_exp")
except _metadata.PackageNotFoundError:     # run from a checkout that was never pip-installed
    __version__ = "0+unknown"


def __getattr__(name):
    # data.py pulls in tarfile/urllib; load it only when the spec's loader is asked for
    if name == "load_CIFAR10":
        from .data import load_CIFAR10
        return load_CIFAR10
    raise AttributeError(f"module 'mlp_exp' has no attribute {name!r}")


__all__ = ["__version__", "ClassifierTrainer", "eval_numerical_gradient", "init_two_layer_model",
           "load_CIFAR10", "rel_error", "two_layer_net", "visualize_grid"]
