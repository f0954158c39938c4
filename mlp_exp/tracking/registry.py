"""The Model Registry side of a Tracker: logging the net as a pyfunc model, promotion, the champion.

A model is logged from code (mlflow_model.py, no pickle): its weights and
preprocessing statistics in weights.npz, its config and class names in
config.json. Promotion registers a run's logged model as a version tagged with
its val accuracy (the logged model names the version back) and moves alias
`champion` to it only if that beats the current champion's; scoring on the test
set happens after, once, in the study layer, and is logged by log_score.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import TrainConfig
from ..errors import UserError
from ..net import PARAM_NAMES
from .names import (BASIS_TAG, CHAMPION_ALIAS, DEFAULT_MODEL_NAME, MODEL_NAME_IN_RUN, MODEL_VERSIONS_TAG,
                    VAL_ACCURACY_TAG)
from .scoring import score_model
from .store import filter_literal, import_mlflow

MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
# The package is copied into every logged model, as since the first store. The model file
# imports only mlflow and numpy, so a model loads the same wherever (and whenever) it was logged.
MODEL_CODE_PATHS = [str(MODEL_CODE.parent.parent)]


@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str
    val_accuracy: float | None
    model_uri: str                  # models:/<name>/<version>
    basis: str | None = None        # what its val accuracy was measured on (tag BASIS_TAG); None: unknown



@dataclass(frozen=True)
class Promotion:
    version: str                # the version just registered
    became_champion: bool
    champion: Champion          # the champion after promotion: this version, or the one that stayed



class ModelRegistry:
    """Model logging and registry calls of a Tracker (which provides client, tracking_uri,
    _store_lock and wait)."""

    def log_model(self, run_id: str, params: dict, preprocessor, config: TrainConfig,
                  label_names: Sequence[str]) -> str:
        """Log the net as a pyfunc model (from code) under `run_id`; returns its model URI.

        Inputs:
        - params: W1 (D, H), b1 (H,), W2 (H, C), b2 (C,); saved as float32 in weights.npz
        - preprocessor: data.Preprocessor; its mean and scale (D,) go into the same npz
        - config, label_names: saved as config.json

        The model takes raw pixels 0..255, uint8 or float, as images (N, 32, 32, 3) or
        rows (N, 3072) = images.reshape(N, -1), and returns a DataFrame of label,
        class_name and prob_<class name> per image (mlflow_model.py has the contract).
        """
        mlflow = import_mlflow()
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        from . import mlflow_model          # its helpers only: MLflow loads a logged copy, not this import

        self.wait()                         # a trial ended without waiting must not reset the status below
        arrays = {k: np.ascontiguousarray(params[k], dtype=np.float32) for k in PARAM_NAMES}
        arrays.update({k: np.asarray(v, dtype=np.float32) for k, v in preprocessor.to_arrays().items()})
        D, C = arrays["W1"].shape[0], arrays["W2"].shape[1]
        if len(label_names) != C:
            raise ValueError(f"label_names must name the net's {C} classes, got {len(label_names)}")
        # No input schema: MLflow 3.17 enforces a TensorSpec's dtype exactly (a float32 spec rejects
        # uint8 images) and its rank (one spec cannot admit both (N, 32, 32, 3) and (N, 3072)), and a
        # column schema would turn an image batch into 3072 columns. The model checks and converts its
        # input itself (mlflow_model.as_pixel_rows); the input example shows the canonical form.
        # The output schema is documentation (MLflow never enforces outputs).
        columns = mlflow_model.output_columns(label_names)
        signature = ModelSignature(outputs=Schema(
            [ColSpec("long", columns[0]), ColSpec("string", columns[1])]
            + [ColSpec("float", name) for name in columns[2:]]))
        example = np.clip(np.rint(arrays["mean"]), 0, 255).astype(np.uint8)      # (D,) the mean image
        shape = mlflow_model.image_shape(D)
        example = example.reshape(1, *shape) if shape else example[None, :]    # (1, 32, 32, 3) uint8
        status = self.client.get_run(run_id).info.status
        with tempfile.TemporaryDirectory() as tmp:
            weights, meta = Path(tmp, "weights.npz"), Path(tmp, "config.json")
            np.savez(weights, **arrays)
            meta.write_text(json.dumps({"config": config.asdict(), "label_names": list(label_names)}, indent=1))
            mlflow.set_tracking_uri(self.tracking_uri)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME_IN_RUN, python_model=str(MODEL_CODE),
                    artifacts={"weights": str(weights), "config": str(meta)},
                    code_paths=MODEL_CODE_PATHS,
                    signature=signature, input_example=example,
                    # the default; loading with model_config={"output": "label"} (e.g. for
                    # mlflow.models.evaluate) may override it only if the model was logged with one
                    model_config={"output": "table"},
                    pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}",
                                      f"pandas=={pd.__version__}"])
        if status != "FINISHED":            # leaving start_run marked it FINISHED
            self.client.update_run(run_id, status=status)
        return info.model_uri

    def _logged_model_uri(self, run_id: str) -> str:
        run = self.client.get_run(run_id)
        models = self.client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME_IN_RUN}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=1)
        if not models:
            raise UserError(f"run {run_id} has no logged model; log one with log_model first")
        return f"models:/{models[0].model_id}"

    def champion(self, model_name: str = DEFAULT_MODEL_NAME) -> Champion | None:
        """The version the `champion` alias points at, or None."""
        mlflow = import_mlflow()
        try:
            version = self.client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        value = version.tags.get(VAL_ACCURACY_TAG)
        return Champion(str(version.version), version.run_id, float(value) if value is not None else None,
                        f"models:/{model_name}/{version.version}", version.tags.get(BASIS_TAG))

    def promote(self, model_name: str, run_id: str, val_accuracy: float,
                model_uri: str | None = None, basis: str | None = None, verdict=None) -> "Promotion":
        """Register the run's model (default: the last one logged under it) and move alias
        `champion` to the new version only if its val accuracy beats the champion's.

        The version is tagged val_accuracy, so later comparisons read it back
        rather than guess. `basis` (tagged too) says what that val accuracy was
        measured on; against a champion of another (or unknown) basis, val
        accuracies are not compared: `verdict(champion, model_uri)` decides
        (True: the new version wins), under the same lock.
        """
        mlflow = import_mlflow()
        self.wait()
        model_uri = model_uri or self._logged_model_uri(run_id)
        model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
        with self._store_lock():
            try:
                self.client.create_registered_model(model_name)
            except mlflow.exceptions.MlflowException as err:
                if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            # Re-running a finished study, or several workers finishing it, promotes the
            # same run again: reuse its version rather than register a duplicate.
            existing = self.client.search_model_versions(
                f"name = {filter_literal(model_name)} AND run_id = '{run_id}'")
            if existing:
                version = str(min(int(v.version) for v in existing))
                self._link_logged_model(model_name, version, model_id)     # a store from before the link
            else:
                # mlflow resolves the source through the global tracking URI: point it at ours
                mlflow.set_tracking_uri(self.tracking_uri)
                version = str(self.client.create_model_version(
                    model_name, source=model_uri, run_id=run_id, model_id=model_id,
                    tags={VAL_ACCURACY_TAG: repr(float(val_accuracy)),
                          **({BASIS_TAG: basis} if basis is not None else {})}).version)
                # Workers on other machines (a server store has no file lock) may have registered
                # the same run at the same moment: the lowest version stays, later ones go.
                lowest = min(int(v.version) for v in self.client.search_model_versions(
                    f"name = {filter_literal(model_name)} AND run_id = '{run_id}'"))
                if lowest < int(version):
                    self.client.delete_model_version(model_name, version)
                    version = str(lowest)
                self._link_logged_model(model_name, version, model_id)
            current = self.champion(model_name)
            if current is not None and current.version == version:
                return Promotion(version, False, current)
            if current is not None and verdict is not None and current.basis != basis:
                wins = bool(verdict(current, f"models:/{model_name}/{version}"))
            else:
                wins = current is None or current.val_accuracy is None or float(val_accuracy) > current.val_accuracy
            if wins:
                self.client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
                current = Champion(version, run_id, float(val_accuracy), f"models:/{model_name}/{version}", basis)
        return Promotion(version, wins, current)

    def _link_logged_model(self, model_name: str, version: str, model_id: str | None) -> None:
        """Name the registered version on its logged model (tag mlflow.modelVersions), so the model's
        page in the UI links to it, as mlflow.register_model does.

        Not mlflow.register_model itself: it prints two lines to stderr, resolves the store through
        the global tracking URI, and appends the entry even when an MLflow server has already added
        it (a server's create_model_version links the model; a local store's does not). Here the
        entry is added once, whichever store this is.
        """
        if model_id is None:        # a version registered from a path, not a logged model
            return
        model = self.client.get_logged_model(model_id)
        linked = json.loads(model.tags.get(MODEL_VERSIONS_TAG) or "[]")
        entry = {"name": model_name, "version": str(version)}
        if entry not in [{"name": e.get("name"), "version": str(e.get("version"))} for e in linked]:
            self.client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps([*linked, entry])})

    def evaluated(self, model_name: str, version: str) -> bool:
        """Whether registered `version` carries a logged test evaluation (evaluation.log_evaluation)."""
        from .evaluation import VERSION_TAGS
        return VERSION_TAGS[0] in self.client.get_model_version(model_name, str(version)).tags

    def score_model(self, model_uri: str, X, y, label_names: Sequence[str] | None = None, *,
                    predictions: bool = False) -> dict:
        """scoring.score_model on a model of this store."""
        return score_model(model_uri, X, y, label_names=label_names, tracking_uri=self.tracking_uri,
                           predictions=predictions)

    def log_score(self, model_uri: str, score: dict, X, y, label_names: Sequence[str], source) -> str | None:
        """evaluation.log_score in this store: the test evaluation on the model's run and version."""
        from .evaluation import log_score
        return log_score(self.client, model_uri, score, X, y, label_names, source=source,
                         hint="; the model is registered: score and log it later with python -m mlp_exp.evaluate")


