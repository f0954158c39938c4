"""ZCA whitening ("zca"), random translations and the fold of W into the first layer, on fake data."""
import json

import numpy as np
import pytest

from fake_cifar import write_fake_cifar10
from helpers import run_cli
from mlp_exp import data, net, preprocessing, tracking
from mlp_exp.config import IMAGE_SHAPE, TrainConfig
from mlp_exp.preprocessing import (ZCA_EPS, Preprocessor, fit_preprocessor, fit_whitening, fold_into_first_layer,
                                   mirror_columns)
from mlp_exp.trainer import padded_images, translate_rows, train

D = int(np.prod(IMAGE_SHAPE))
NOISE = 8
MIRROR = mirror_columns()


def smooth_images(n, seed=0):
    """uint8 rows (n, 3072) with pixel correlations, as photographs have: blurred noise and a colour cast."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 1, (n, 8, 8, 3)).repeat(4, axis=1).repeat(4, axis=2)
    pixels = 128 + 40 * coarse + 15 * rng.normal(0, 1, (n, 32, 32, 3)) + rng.normal(0, 20, (n, 1, 1, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8).reshape(n, D)


@pytest.fixture(scope="module")
def fitted():
    X = smooth_images(300)
    return X, fit_preprocessor(X, "zca")


def standardized_union(X, pre):
    """The standardized training rows and their mirror images, float64 (2N, D): what flips show the net."""
    Xs = (X.astype(np.float64) - pre.mean) / pre.scale
    return np.concatenate([Xs, Xs[:, MIRROR]])


def test_zca_keeps_the_standardize_statistics(fitted):
    X, pre = fitted
    plain = fit_preprocessor(X, "standardize")
    np.testing.assert_array_equal(pre.mean, plain.mean)
    np.testing.assert_array_equal(pre.scale, plain.scale)
    assert pre.whitening.shape == (D, D) and pre.whitening.dtype == np.float32


def test_whitened_covariance_is_lambda_over_lambda_plus_eps_on_each_eigendirection(fitted):
    # Whitened training rows and mirrors, Z = [Xs; Xs P] W, must have covariance U diag(l / (l + eps)) U^T,
    # with S = U diag(l) U^T their covariance before whitening: unit variance (up to eps) where the data
    # varies a lot, none off the data's span. The eigenvectors come from the small Gram matrix.
    X, pre = fitted
    Z = np.concatenate([pre.apply(X), pre.apply(X[:, MIRROR])]).astype(np.float64)
    C = Z.T @ Z / len(Z)
    A = standardized_union(X, pre)
    lam, V = np.linalg.eigh(A @ A.T / len(A))
    top = lam > 100 * ZCA_EPS
    assert top.sum() >= 20                                  # enough of a spectrum to test
    U = A.T @ V[:, top] / np.sqrt(lam[top] * len(A))        # unit eigenvectors of S
    np.testing.assert_allclose(np.linalg.norm(U, axis=0), 1, rtol=1e-6)
    along = np.einsum("dk,de,ek->k", U, C, U)
    np.testing.assert_allclose(along, lam[top] / (lam[top] + ZCA_EPS), atol=2e-4)
    assert along.min() > 0.99                               # the retained spectrum comes out white
    # and the whole matrix, without eigenvectors: C = S (S + eps I)^-1, i.e. C (S + eps I) = S
    S = A.T @ A / len(A)
    np.testing.assert_allclose(C @ (S + ZCA_EPS * np.eye(D)), S, atol=2e-4 * np.abs(S).max())
    np.testing.assert_allclose(np.trace(C), np.sum(lam / (lam + ZCA_EPS)), rtol=1e-4)


@pytest.mark.parametrize("n", [10, 24, 100], ids=["gram", "gram-square", "covariance"])
def test_both_routes_give_the_eigendecomposition_formula(n):
    # fewer rows (with mirrors) than pixels go through the Gram matrix, more through the covariance;
    # small 4 x 4 images let the test do the eigendecomposition of S itself
    shape, d = (4, 4, 3), 48
    rng = np.random.default_rng(n)
    X = rng.normal(100, 30, (n, d))
    X[:, 3:] += X[:, :-3]                                   # correlated neighbours
    standardizer = Preprocessor(X.mean(axis=0), X.std(axis=0) + 1)
    W = fit_whitening(X, standardizer, image_shape=shape).whitening.astype(np.float64)
    mirror = mirror_columns(shape)
    Xs = (X - standardizer.mean) / standardizer.scale
    S = np.concatenate([Xs, Xs[:, mirror]]).T @ np.concatenate([Xs, Xs[:, mirror]]) / (2 * n)
    lam, U = np.linalg.eigh(S)
    expected = (U / np.sqrt(np.maximum(lam, 0) + ZCA_EPS)) @ U.T
    np.testing.assert_allclose(W, expected, atol=1e-5 * np.abs(expected).max())


def test_whitening_commutes_with_flips(fitted):
    X, pre = fitted
    W = pre.whitening
    np.testing.assert_array_equal(W[np.ix_(MIRROR, MIRROR)], W)         # P W P = W, exactly
    whitened = pre.apply(X[:20])
    np.testing.assert_allclose(pre.apply(X[:20, MIRROR]), whitened[:, MIRROR], atol=1e-4)
    assert not np.allclose(whitened[:, MIRROR], whitened, atol=1e-2)     # flips do change the rows


def test_apply_is_standardize_then_matrix_product_in_chunks(fitted, monkeypatch):
    X, pre = fitted
    expected = ((X.astype(np.float64) - pre.mean) / pre.scale) @ pre.whitening.astype(np.float64)
    monkeypatch.setattr(preprocessing, "_CHUNK_ROWS", 64)               # 300 rows: 5 chunks, the last short
    out = np.full((len(X), D), np.nan, np.float32)
    assert pre.apply(X, out=out) is out
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_saved_arrays_round_trip(fitted, tmp_path):
    _, pre = fitted
    np.savez(tmp_path / "pre.npz", **pre.to_arrays())
    with np.load(tmp_path / "pre.npz") as arrays:
        again = Preprocessor.from_arrays(arrays)
    for name in ("mean", "scale", "whitening"):
        np.testing.assert_array_equal(getattr(again, name), getattr(pre, name))
    plain = Preprocessor(pre.mean, pre.scale)
    assert set(plain.to_arrays()) == {"mean", "scale"}                  # the other modes' format is unchanged
    assert Preprocessor.from_arrays(plain.to_arrays()).whitening is None


def test_fold_gives_the_same_scores_on_raw_pixels(fitted):
    X, pre = fitted
    rng = np.random.default_rng(1)
    params = net.init_params(D, 16, 10, rng, 0.044, dtype=np.float32)
    params["b1"] += 0.1
    before = {k: v.copy() for k, v in params.items()}
    folded_pre, folded = fold_into_first_layer(pre, params)
    assert folded_pre.whitening is None and set(folded_pre.to_arrays()) == {"mean", "scale"}
    assert folded["W1"].dtype == np.float32 and folded["W1"].shape == params["W1"].shape
    for name in params:                                                 # pure: the inputs are untouched
        np.testing.assert_array_equal(params[name], before[name])
    trained = net.two_layer_loss(params, pre.apply(X))                  # what the net saw in training
    saved = net.two_layer_loss(folded, folded_pre.apply(X))             # what the saved model computes
    np.testing.assert_allclose(saved, trained, atol=1e-4)
    again_pre, again = fold_into_first_layer(folded_pre, folded)       # no whitening: unchanged
    assert again_pre is folded_pre and again is folded


# ------------------------------------------------------------ translations

def test_translation_by_a_known_shift_is_the_zero_filled_shift():
    image = np.arange(D, dtype=np.float32).reshape(IMAGE_SHAPE) + 1            # no pixel is 0
    shifts = np.array([(1, -2), (0, 0), (-3, 3), (2, 0)])
    out = translate_rows(np.tile(image.reshape(1, -1), (len(shifts), 1)), shifts)
    for (dy, dx), row in zip(shifts, out):
        expected = np.zeros(IMAGE_SHAPE, np.float32)
        for y in range(32):
            for x in range(32):
                if 0 <= y - dy < 32 and 0 <= x - dx < 32:
                    expected[y, x] = image[y - dy, x - dx]
        np.testing.assert_array_equal(row.reshape(IMAGE_SHAPE), expected)
    assert (out[0].reshape(IMAGE_SHAPE)[0] == 0).all() and (out[0].reshape(IMAGE_SHAPE)[:, -2:] == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_picking_flipping_and_shifting_in_one_copy_is_the_three_steps_in_turn(dtype):
    """What train does for whitened rows (gather, flip and shift in one copy per image) gives exactly
    the gathered, mirrored, then shifted images, for float32 rows and uint8 pixels alike."""
    rng = np.random.default_rng(4)
    X = rng.integers(1, 255, size=(30, D)).astype(dtype)
    rows, flips = rng.integers(0, 30, size=12), rng.random(12) < 0.5
    shifts = rng.integers(-3, 4, size=(12, 2))
    gathered = X[rows]
    gathered[flips] = gathered[flips][:, MIRROR]
    expected = translate_rows(gathered, shifts)
    out = np.full((12, D), 7, dtype)                               # a reused buffer: stale values must go
    np.testing.assert_array_equal(translate_rows(X, shifts, out=out, rows=rows, flips=flips), expected)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(translate_rows(X, shifts[:1].repeat(30, 0), rows=None),
                                  translate_rows(X[np.arange(30)], shifts[:1].repeat(30, 0)))


def _shifted_one_by_one(X, rows, flips, shifts, image_shape):
    """The definition, one image at a time: pick, mirror, zero-filled shift."""
    height, width, _ = image_shape
    out = np.zeros((len(rows), X.shape[1]), X.dtype)
    for i, (row, flip, (dy, dx)) in enumerate(zip(rows, flips, shifts)):
        image = X[row].reshape(image_shape)[:, ::-1] if flip else X[row].reshape(image_shape)
        target = out[i].reshape(image_shape)
        for y in range(height):
            for x in range(width):
                if 0 <= y - dy < height and 0 <= x - dx < width:
                    target[y, x] = image[y - dy, x - dx]
    return out


@pytest.mark.parametrize("image_shape", [(32, 32, 3), (5, 7, 2), (6, 6, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_translate_rows_is_its_definition_with_a_reused_padded_buffer(image_shape, dtype):
    """The padded-window gather (what train runs) against the definition, image by image, with one
    padded buffer reused across batches of every size up to its own, shifts up to and below its reach,
    and images shifted wholly out of view."""
    rng = np.random.default_rng(8)
    size = int(np.prod(image_shape))
    X = rng.integers(1, 255, size=(25, size)).astype(dtype)                  # no pixel is 0
    for reach in range(0, min(image_shape[:2]) + 1):
        padded = padded_images(12, reach, dtype, image_shape)
        for count in (12, 5, 0, 12):
            rows, flips = rng.integers(0, 25, size=count), rng.random(count) < 0.5
            shifts = rng.integers(-reach, reach + 1, size=(count, 2)) if count != 5 else \
                np.full((count, 2), max(reach - 1, 0))
            out = np.full((count, size), 7, dtype)
            translate_rows(X, shifts, out=out, image_shape=image_shape, rows=rows, flips=flips, padded=padded)
            np.testing.assert_array_equal(out, _shifted_one_by_one(X, rows, flips, shifts, image_shape))


def test_translate_rows_refuses_a_shift_beyond_its_padded_buffer():
    X = np.ones((3, D), np.float32)
    with pytest.raises(ValueError, match="reach of 1"):
        translate_rows(X, np.array([(0, 2), (0, 0), (1, 1)]), padded=padded_images(3, 1, np.float32))
    with pytest.raises(ValueError, match="padded must be"):
        translate_rows(X, np.zeros((3, 2), int), padded=padded_images(2, 1, np.float32))


class RecordingStep:
    """Stands in for kernels.FusedStep: records each minibatch, updates nothing."""
    batches = []
    blas = None            # evaluation then uses kernels' default BLAS

    def __init__(self, params, *args, **kwargs):
        self.params = params

    def step(self, X, y, learning_rate):
        RecordingStep.batches.append(np.array(X))
        return 1.0


def recorded_batches(monkeypatch, config, X):
    from mlp_exp import trainer
    RecordingStep.batches = []
    monkeypatch.setattr(trainer, "FusedStep", RecordingStep)
    y = np.arange(len(X)) % 10
    train(X, y, X[:4], y[:4], config)
    return RecordingStep.batches


def test_without_flip_and_translate_batches_are_training_rows(monkeypatch):
    X = np.random.default_rng(2).normal(0, 1, (20, D)).astype(np.float32)
    rows = {row.tobytes() for row in X}
    batches = recorded_batches(monkeypatch, TrainConfig(hidden_size=4, batch_size=10, num_epochs=2,
                                                        flip=False, translate=0), X)
    assert len(batches) == 4
    assert all(row.tobytes() in rows for batch in batches for row in batch)


def test_flip_and_translate_give_each_image_its_own_shift_in_range(monkeypatch):
    t = 2
    X = np.random.default_rng(3).normal(0, 1, (20, D)).astype(np.float32) + 5    # no pixel is 0
    candidates = {}
    for index, row in enumerate(X):                 # every allowed result, each mapped to (row, flip, shift)
        for flip in (False, True):
            source = row[MIRROR] if flip else row
            for dy in range(-t, t + 1):
                for dx in range(-t, t + 1):
                    shifted = translate_rows(source[None], np.array([(dy, dx)]))[0]
                    candidates[shifted.tobytes()] = (index, flip, dy, dx)
    batches = recorded_batches(monkeypatch, TrainConfig(hidden_size=4, batch_size=10, num_epochs=3,
                                                        flip=True, translate=t), X)
    found = [candidates.get(row.tobytes()) for batch in batches for row in batch]
    assert None not in found                                    # every image is a flip and shift in range
    assert len({(dy, dx) for _, _, dy, dx in found}) >= 15      # drawn afresh: most of the 25 shifts occur
    assert {flip for _, flip, _, _ in found} == {False, True}
    assert sum(1 for _, _, dy, dx in found if (dy, dx) == (0, 0)) < len(found) / 5


def test_translate_is_validated_and_off_by_default():
    assert TrainConfig().asdict() == dict(
        hidden_size=100, learning_rate=1e-5, reg=1.0, momentum=0.9, lr_decay=0.95, update="momentum",
        batch_size=100, num_epochs=5, init_std=6e-3, preprocessing="mean_image", flip=False, translate=0,
        train_size=49000, val_size=1000, seed=0, precision="fp32")
    assert TrainConfig(translate=15).translate == 15
    for bad in (-1, 16, 1.5, True, "2"):
        with pytest.raises(ValueError, match="translate"):
            TrainConfig(translate=bad)
    assert TrainConfig.from_dict({"translate": "3"}).translate == 3


# ------------------------------------------------------------ in a study

def test_split_fits_zca_only_when_asked_and_whitens_once(tmp_path):
    write_fake_cifar10(tmp_path, per_batch=40, num_test=20)
    split = data.load_raw_split(tmp_path, train_size=150, val_size=30, test_size=20, progress=False)
    assert set(split.preprocessors) == {"mean_image", "standardize", "zca"}
    assert split.preprocessors._fitted == {}                            # nothing fitted before a trial asks
    X_train, X_val, pre = split.training_rows("standardize")
    assert X_train is split.X_train and pre is split.preprocessors["standardize"]
    assert "zca" not in split.preprocessors._fitted
    X_train, X_val, pre = split.training_rows("zca")
    assert pre is None and X_train.dtype == np.float32 and X_train.shape == (150, D)
    np.testing.assert_array_equal(X_train, split.preprocessors["zca"].apply(split.X_train))
    np.testing.assert_array_equal(X_val, split.preprocessors["zca"].apply(split.X_val))
    assert split.training_rows("zca")[0] is X_train                     # once per process


def test_logged_model_predicts_what_the_trained_net_did(tmp_path, monkeypatch):
    import mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_fake_cifar10(tmp_path / "data", per_batch=40, num_test=30)
    split = data.load_raw_split(tmp_path / "data", train_size=150, val_size=30, test_size=30, progress=False)
    config = TrainConfig(hidden_size=12, num_epochs=2, learning_rate=0.05, reg=1e-3, batch_size=50, init_std=0.044,
                         preprocessing="zca", flip=True, translate=2, train_size=150, val_size=30)
    X_train, X_val, _ = split.training_rows("zca")
    result = train(X_train, split.y_train, X_val, split.y_val, config)
    tracker = tracking.Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "zca")
    tracker.study_run("zca", params={"trials": 1})
    run = tracker.start_trial(0, config)
    model_uri = run.log_model(result.best_params, split.preprocessors["zca"], config, split.label_names)
    run.end("FINISHED", wait=True)
    from pathlib import Path
    saved_dir = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "m")))
    [weights] = saved_dir.rglob("weights.npz")
    with np.load(weights) as saved:
        assert sorted(saved.files) == ["W1", "W2", "b1", "b2", "mean", "scale"]     # the format of every model
    model = mlflow.pyfunc.load_model(model_uri)
    probs = model.predict(split.X_test)[[f"prob_{name}" for name in split.label_names]].to_numpy()
    scores = net.two_layer_loss(result.best_params, split.preprocessors["zca"].apply(split.X_test))
    expected = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(axis=1, keepdims=True), atol=1e-4)
    tracker.end_study()


def write_patterned_cifar10(root, per_batch=80, num_test=60, seed=0):
    """A CIFAR-10 folder like fake_cifar's, but each class a smooth spatial pattern under faint noise.

    fake_cifar's classes differ only in their mean colour under strong pixel noise, which whitening
    raises to the signal's variance (a short study then learns nothing from them); photographs, like
    these, vary mostly in smooth structure, which whitening keeps. Whitened, the patterns span only
    ~20 of the 3072 directions, so their inputs are short and learning takes ~200 small steps.
    """
    from fake_cifar import _dump
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    patterns = rng.normal(0, 1, (10, 3, 8, 8)).repeat(4, axis=2).repeat(4, axis=3)

    def images(n):
        labels = rng.integers(0, 10, n)
        pixels = 128 + 50 * patterns[labels] + rng.normal(0, NOISE, (n, 3, 32, 32))
        return np.clip(pixels, 0, 255).astype(np.uint8).reshape(n, D), labels     # rows channel-first, as CIFAR's

    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", *images(per_batch))
    _dump(folder / "test_batch", *images(num_test))


def test_zca_study_end_to_end_through_the_cli(tmp_path):
    import mlflow
    import optuna
    from mlp_exp.study import attrs
    write_patterned_cifar10(tmp_path / "data")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    result = run_cli("mlp_exp.search", "--trials", "2", "--train-size", "300", "--val-size", "100",
                     "--test-size", "60", "--max-epochs", "20", "--data-dir", "data", "--fixed", "hidden_size=16",
                     "--fixed", "batch_size=25", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="cifar10-mlp", storage=f"sqlite:///{tmp_path}/studies/optuna.db")
    trial = study.trials[1]
    config = TrainConfig.from_dict(trial.user_attrs[attrs.CONFIG])
    assert (config.preprocessing, config.flip, config.translate) == ("zca", True, 2)     # the study default
    assert study.trials[0].user_attrs[attrs.CONFIG]["preprocessing"] == "mean_image"   # the spec baseline
    assert trial.state.name == "COMPLETE" and trial.user_attrs.get(attrs.HAS_MODEL), \
        "the zca trial must beat the baseline to log a model; pick other fake data if it does not"
    # the trial retrained here, from its logged config, is the net the study trained
    split = data.load_raw_split(tmp_path / "data", train_size=300, val_size=100, test_size=60, progress=False)
    X_train, X_val, _ = split.training_rows("zca")
    trained = train(X_train, split.y_train, X_val, split.y_val, config)
    assert trained.best_val_accuracy == trial.value
    client = mlflow.MlflowClient(uri)
    champion = client.get_model_version_by_alias("mlp-cifar10", "champion")
    assert champion.run_id == trial.user_attrs[attrs.MLFLOW_RUN_ID]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/mlp-cifar10@champion")
    probs = model.predict(split.X_test)[[f"prob_{name}" for name in split.label_names]].to_numpy()
    scores = net.two_layer_loss(trained.best_params, split.preprocessors["zca"].apply(split.X_test))
    expected = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(axis=1, keepdims=True), atol=1e-4)
    evaluated = run_cli("mlp_exp.evaluate", "--data-dir", "data", "--test-size", "60", "--tracking-uri", uri,
                        "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["test_accuracy"] == client.get_run(champion.run_id).data.metrics["test_accuracy"]
    assert report["test_accuracy"] == float(np.mean(probs.argmax(axis=1) == split.y_test))
