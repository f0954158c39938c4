"""mlp_exp: hyperparameter search with experiment tracking for a NumPy two-layer net on CIFAR-10.

The spec notebook's API is importable from here, so its cells run with only
their import lines changed. Importing the package loads nothing: each name is
imported on first use (below), so a command's first moments, where Ctrl-C
must be a one-line exit, run inside its error handling (cli.run) rather than
in an import. Optuna is imported only by mlp_exp.study, MLflow only by
mlp_exp.tracking (and there on first use).
"""
import importlib
from importlib import metadata as _metadata

# name -> module defining it; data.py pulls in tarfile/urllib, the rest NumPy
_HOMES = {"eval_numerical_gradient": "gradient_check", "rel_error": "gradient_check",
          "ClassifierTrainer": "spec_api", "init_two_layer_model": "spec_api", "two_layer_net": "spec_api",
          "visualize_grid": "vis", "load_CIFAR10": "data"}

try:
    __version__ = _metadata.version("mlp_exp")
except _metadata.PackageNotFoundError:     # run from a checkout that was never pip-installed
    __version__ = "0+unknown"


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'mlp_exp' has no attribute {name!r}")


__all__ = ["ClassifierTrainer", "eval_numerical_gradient", "init_two_layer_model",
           "load_CIFAR10", "rel_error", "two_layer_net", "visualize_grid"]
