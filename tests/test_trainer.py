"""The fused float32 step and the trainer, against the float64 reference math."""
import numpy as np
import pytest

from problems import small_problem
from mlp_exp.config import TrainConfig
from mlp_exp.kernels import FusedStep, predict_float32
from mlp_exp.net import predict, two_layer_loss
from mlp_exp.optim import UPDATE_RULES
from mlp_exp.trainer import StopTraining, flip_rows, mirror_rows, train


def reference_steps(params, batches, update, reg, mom, learning_rates):
    """float64: net.two_layer_loss + optim rule, one step per batch."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    states = {k: {"momentum": mom} for k in params}
    losses = []
    for (X, y), lr in zip(batches, learning_rates):
        loss, grads = two_layer_loss(params, X.astype(np.float64), y, reg)
        losses.append(loss)
        for k in params:
            states[k]["learning_rate"] = lr
            params[k], states[k] = UPDATE_RULES[update](params[k], grads[k], states[k])
    return params, np.array(losses)


@pytest.mark.parametrize("update, lr", [("sgd", 0.05), ("momentum", 0.02), ("rmsprop", 1e-3)])
def test_fused_step_matches_reference(update, lr, blas_backend):
    X, y, params = small_problem()
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)] * 5
    rates = [lr * 0.9 ** (i // 4) for i in range(len(batches))]
    expected, expected_losses = reference_steps(params, batches, update, 0.05, 0.9, rates)
    step = FusedStep(params, update, reg=0.05, momentum=0.9)
    losses = np.array([step.step(Xb, yb, rate) for (Xb, yb), rate in zip(batches, rates)])
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
    for k in expected:
        np.testing.assert_allclose(step.params[k], expected[k], rtol=1e-3, atol=1e-5, err_msg=k)
    assert losses[-1] < losses[0]


def test_fused_step_leaves_callers_params_alone():
    X, y, params = small_problem()
    before = {k: v.copy() for k, v in params.items()}
    FusedStep(params, "momentum", 0.1, 0.9).step(X[:16], y[:16], 0.1)
    for k in params:
        assert np.array_equal(params[k], before[k])


def test_predict_float32_matches_reference():
    X, _, params = small_problem()
    assert np.array_equal(predict_float32(params, X, batch_size=10),
                          predict({k: v.astype(np.float64) for k, v in params.items()}, X))


def test_trainer_matches_reference_loop():
    # Replays the trainer's own shuffles through the float64 reference.
    X, y, params = small_problem(n=80)
    config = TrainConfig(hidden_size=32, learning_rate=0.02, reg=0.01, momentum=0.9,
                         lr_decay=0.8, batch_size=16, num_epochs=3, seed=7)
    result = train(X, y, X[:20], y[:20], config, params=params)
    rng = np.random.default_rng(config.seed)
    rng.choice(80, size=80, replace=False)            # the train-accuracy sample
    batches, rates = [], []
    for epoch in range(3):
        order = rng.permutation(80)
        for start in range(0, 80, 16):
            batch = order[start:start + 16]
            batches.append((X[batch], y[batch]))
            rates.append(0.02 * 0.8 ** epoch)
    _, expected_losses = reference_steps(params, batches, "momentum", 0.01, 0.9, rates)
    np.testing.assert_allclose(result.loss_history, expected_losses, rtol=1e-4)
    assert [e.epoch for e in result.epochs] == [1, 2, 3]
    assert [e.learning_rate for e in result.epochs] == pytest.approx([0.02, 0.016, 0.0128])
    np.testing.assert_allclose([e.loss for e in result.epochs],
                               expected_losses.reshape(3, 5).mean(axis=1), rtol=1e-4)


def test_trainer_is_reproducible_from_config():
    X, y, _ = small_problem(n=96)
    config = TrainConfig(hidden_size=20, learning_rate=0.05, reg=0.001, batch_size=32,
                         num_epochs=2, init_std=0.05, seed=11)
    a = train(X, y, X[:32], y[:32], config)
    b = train(X, y, X[:32], y[:32], config)
    c = train(X, y, X[:32], y[:32], TrainConfig(**{**config.asdict(), "seed": 12}))
    assert np.array_equal(a.loss_history, b.loss_history)
    assert not np.array_equal(a.loss_history, c.loss_history)


def test_trainer_overfits_small_sample_and_keeps_best():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 40)).astype(np.float32)
    y = rng.integers(0, 4, 100)
    config = TrainConfig(hidden_size=64, learning_rate=0.1, reg=0.0, momentum=0.9, lr_decay=1.0,
                         batch_size=20, num_epochs=40, init_std=0.1, seed=0)
    result = train(X, y, X, y, config)
    assert result.epochs[-1].train_accuracy == 1.0
    assert result.best_val_accuracy == max(e.val_accuracy for e in result.epochs)
    best = result.epochs[result.best_epoch - 1]
    assert best.val_accuracy == result.best_val_accuracy
    assert np.mean(predict_float32(result.best_params, X) == y) == result.best_val_accuracy


def test_callbacks_see_every_epoch_and_can_stop():
    X, y, _ = small_problem(n=64)
    seen = []

    def stop_at_two(stats):
        seen.append((stats.epoch, stats.params["W1"].shape))
        if stats.epoch == 2:
            raise StopTraining("pruned by test")

    config = TrainConfig(hidden_size=8, learning_rate=0.01, batch_size=16, num_epochs=5, init_std=0.1)
    result = train(X, y, X, y, config, callbacks=[stop_at_two])
    assert seen == [(1, (48, 8)), (2, (48, 8))]
    assert result.stop_reason == "pruned by test"
    assert len(result.epochs) == 2 and result.epochs[0].params == {}


def test_divergence_stops_at_once():
    X, y, _ = small_problem(n=64)
    X = X * 1e3
    config = TrainConfig(hidden_size=16, learning_rate=1e6, reg=0.0, batch_size=16,
                         num_epochs=5, init_std=1.0)
    result = train(X, y, X, y, config, callbacks=[lambda s: pytest.fail("diverged epoch reported")])
    assert result.diverged and result.epochs[-1].epoch == 1
    assert not np.isfinite(result.loss_history[-1])
    assert len(result.loss_history) <= 4


def test_flip_rows_mirrors_selected_images():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    X = images.reshape(3, -1).copy()
    flip_rows(X, np.array([True, False, True]))
    out = X.reshape(3, 32, 32, 3)
    assert np.array_equal(out[0], images[0][:, ::-1])
    assert np.array_equal(out[1], images[1])
    assert np.array_equal(out[2], images[2][:, ::-1])


def test_flip_training_changes_batches_but_not_data():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3072)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    X_before = X.copy()
    base = TrainConfig(hidden_size=8, learning_rate=1e-3, batch_size=20, num_epochs=1,
                       init_std=0.01, seed=3)
    plain = train(X, y, X, y, base)
    flipped = train(X, y, X, y, TrainConfig(**{**base.asdict(), "flip": True}))
    assert np.array_equal(X, X_before)
    assert not np.array_equal(plain.loss_history, flipped.loss_history)


def test_preprocessing_per_batch_equals_preprocessing_up_front():
    from mlp_exp.preprocessing import fit_preprocessor
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, (60, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, 60)
    prep = fit_preprocessor(raw[:50], "standardize")
    config = TrainConfig(hidden_size=16, learning_rate=1e-3, reg=1e-3, batch_size=10,
                         num_epochs=2, init_std=1e-2, flip=True, seed=4)
    on_the_fly = train(raw[:50], y[:50], raw[50:], y[50:], config, preprocessor=prep)
    up_front = train(prep.apply(raw[:50]), y[:50], prep.apply(raw[50:]), y[50:], config)
    np.testing.assert_array_equal(on_the_fly.loss_history, up_front.loss_history)
    assert [e.val_accuracy for e in on_the_fly.epochs] == [e.val_accuracy for e in up_front.epochs]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_mirror_rows_mirrors_every_image_across_chunks(dtype):
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (5, 32, 32, 3)).astype(dtype)
    X = images.reshape(5, -1)
    X_before = X.copy()
    mirrored = mirror_rows(X, chunk_rows=2)                  # chunks of 2, 2 and 1 rows
    assert mirrored.dtype == dtype and mirrored.shape == X.shape
    np.testing.assert_array_equal(mirrored.reshape(5, 32, 32, 3), images[:, :, ::-1, :])
    np.testing.assert_array_equal(X, X_before)
    with pytest.raises(ValueError, match="3072"):
        mirror_rows(X[:, :100])


@pytest.mark.parametrize("preprocessing", ["standardize", "mean_image", None])
def test_flips_gathered_from_a_mirrored_copy_train_identically(preprocessing):
    from mlp_exp.preprocessing import fit_preprocessor
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, (60, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, 60)
    prep = fit_preprocessor(raw[:50], preprocessing) if preprocessing else None
    X_train, X_val = (raw[:50], raw[50:]) if prep else (raw[:50] / 255.0, raw[50:] / 255.0)
    config = TrainConfig(hidden_size=16, learning_rate=1e-3, reg=1e-3, batch_size=10,
                         num_epochs=2, init_std=1e-2, flip=True, seed=4)
    in_place = train(X_train, y[:50], X_val, y[50:], config, preprocessor=prep)
    gathered = train(X_train, y[:50], X_val, y[50:], config, preprocessor=prep,
                     X_train_mirrored=mirror_rows(X_train))
    np.testing.assert_array_equal(gathered.loss_history, in_place.loss_history)
    for k in in_place.best_params:
        np.testing.assert_array_equal(gathered.best_params[k], in_place.best_params[k])
    unflipped = train(X_train, y[:50], X_val, y[50:], TrainConfig(**{**config.asdict(), "flip": False}),
                      preprocessor=prep, X_train_mirrored=mirror_rows(X_train))
    assert not np.array_equal(unflipped.loss_history, in_place.loss_history)


def test_a_mirrored_copy_of_other_rows_is_refused():
    rng = np.random.default_rng(8)
    X = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
    config = TrainConfig(hidden_size=4, batch_size=10, num_epochs=1, flip=True)
    with pytest.raises(ValueError, match="mirror_rows"):
        train(X, np.arange(20) % 3, X, np.arange(20) % 3, config, X_train_mirrored=mirror_rows(X[:10]))
