"""The two-layer net as an MLflow pyfunc model, logged as code (no pickle).

MLflow runs this file to load a model that `Tracker.log_model` logged. It
imports only numpy and mlflow (a copy of it travels with each model, so it
must not depend on the package): the weights and the preprocessing statistics come
from the `weights` artifact (.npz), the config and class names from `config`
(.json).

Input: float32 (N, D) raw pixel values 0..255, rows of uint8 HWC images as
`images.reshape(N, -1)` (D = 3072 for CIFAR-10).
Output: float32 (N, C) class probabilities.
"""
import json

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

CHUNK_ROWS = 4096      # rows per forward pass, so memory stays flat
PARAM_NAMES = ("W1", "b1", "W2", "b2")     # net.PARAM_NAMES, repeated: this file imports no mlp_exp


class TwoLayerNetModel(PythonModel):
    def load_context(self, context):
        with np.load(context.artifacts["weights"], allow_pickle=False) as arrays:
            self.params = {k: arrays[k].astype(np.float32) for k in PARAM_NAMES}
            self.mean = arrays["mean"].astype(np.float32)      # (D,)
            self.scale = arrays["scale"].astype(np.float32)    # (D,)
        with open(context.artifacts["config"], encoding="utf-8") as f:
            meta = json.load(f)
        self.config, self.label_names = meta["config"], meta["label_names"]

    # np.ndarray: a hint MLflow accepts without inferring a schema (the logged signature is the schema)
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        X = np.asarray(model_input)
        D = self.mean.size
        if X.ndim != 2 or X.shape[1] != D:
            raise ValueError(f"input must be raw pixels of shape (N, {D}) (images.reshape(N, -1)), "
                             f"got shape {X.shape}")
        W1, b1, W2, b2 = (self.params[k] for k in PARAM_NAMES)
        probs = np.empty((X.shape[0], W2.shape[1]), dtype=np.float32)
        for start in range(0, X.shape[0], CHUNK_ROWS):
            # same float32 steps as data.Preprocessor.apply, then the net's forward pass
            x = np.subtract(X[start:start + CHUNK_ROWS], self.mean, dtype=np.float32)   # (B, D)
            x /= self.scale
            hidden = x @ W1                                                              # (B, H)
            hidden += b1
            np.maximum(hidden, 0, out=hidden)
            scores = hidden @ W2 + b2                                                    # (B, C)
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
            probs[start:start + CHUNK_ROWS] = scores
        return probs


mlflow.models.set_model(TwoLayerNetModel())
