"""The net, gradient check and update rules against the spec notebook's printed numbers."""
import numpy as np
import pytest

from mlp_exp import ClassifierTrainer, eval_numerical_gradient, two_layer_net
from mlp_exp.gradient_check import rel_error
from mlp_exp.net import init_params, two_layer_loss
from mlp_exp.optim import momentum, rmsprop, sgd

INPUT_SIZE, HIDDEN_SIZE, NUM_CLASSES, NUM_INPUTS = 4, 10, 3, 5


def init_toy_model():
    return {
        "W1": np.linspace(-0.2, 0.6, num=INPUT_SIZE * HIDDEN_SIZE).reshape(INPUT_SIZE, HIDDEN_SIZE),
        "b1": np.linspace(-0.3, 0.7, num=HIDDEN_SIZE),
        "W2": np.linspace(-0.4, 0.1, num=HIDDEN_SIZE * NUM_CLASSES).reshape(HIDDEN_SIZE, NUM_CLASSES),
        "b2": np.linspace(-0.5, 0.9, num=NUM_CLASSES),
    }


def init_toy_data():
    X = np.linspace(-0.2, 0.5, num=NUM_INPUTS * INPUT_SIZE).reshape(NUM_INPUTS, INPUT_SIZE)
    return X, np.array([0, 1, 2, 2, 1])


def test_scores_match_spec():
    X, _ = init_toy_data()
    scores = two_layer_net(X, init_toy_model())
    correct_scores = [[-0.5328368, 0.20031504, 0.93346689],
                      [-0.59412164, 0.15498488, 0.9040914],
                      [-0.67658362, 0.08978957, 0.85616275],
                      [-0.77092643, 0.01339997, 0.79772637],
                      [-0.89110401, -0.08754544, 0.71601312]]
    assert np.sum(np.abs(scores - correct_scores)) < 1e-7


def test_verbose_prints_layer_shapes(capsys):
    X, _ = init_toy_data()
    two_layer_net(X, init_toy_model(), verbose=True)
    assert capsys.readouterr().out.splitlines() == [
        "Layer 1 result shape: (5, 10)", "Layer 2 result shape: (5, 3)"]


def test_loss_matches_spec():
    X, y = init_toy_data()
    loss, _ = two_layer_net(X, init_toy_model(), y, reg=0.1)
    assert abs(loss - 1.38191946092) < 1e-10


@pytest.mark.parametrize("name", ["W1", "b1", "W2", "b2"])
def test_gradients_match_numerical(name):
    X, y = init_toy_data()
    model = init_toy_model()
    _, grads = two_layer_net(X, model, y, 0.1)
    numerical = eval_numerical_gradient(lambda _: two_layer_net(X, model, y, 0.1)[0],
                                        model[name], verbose=False)
    assert rel_error(numerical, grads[name]) < 1e-7


def test_gradients_on_random_net_with_strong_reg():
    # A second, less regular problem: random weights, more classes, reg large enough to matter.
    rng = np.random.default_rng(3)
    params = init_params(7, 6, 4, rng, std=0.5)
    params["b1"] = rng.standard_normal(6)
    X, y = rng.standard_normal((9, 7)), rng.integers(0, 4, 9)
    _, grads = two_layer_loss(params, X, y, reg=0.7)
    for name in params:
        numerical = eval_numerical_gradient(lambda _: two_layer_loss(params, X, y, 0.7)[0],
                                            params[name], verbose=False)
        assert rel_error(numerical, grads[name]) < 1e-6, name


def test_numerical_gradient_of_known_function():
    x = np.array([1.0, -2.0, 3.0])
    grad = eval_numerical_gradient(lambda v: float(np.sum(v ** 3)), x, verbose=False)
    assert np.allclose(grad, 3 * np.array([1.0, 4.0, 9.0]), rtol=1e-8)
    assert np.array_equal(x, [1.0, -2.0, 3.0])   # restored after perturbation


def test_rel_error():
    assert rel_error(np.array([1.0]), np.array([1.0])) == 0.0
    assert rel_error(np.array([1.0]), np.array([3.0])) == pytest.approx(0.5)


@pytest.mark.parametrize("update, mom, expected", [
    ("sgd", 0.0, 0.940686), ("momentum", 0.9, 0.494394), ("rmsprop", 0.9, 0.439368)])
def test_full_batch_training_matches_spec(update, mom, expected):
    X, y = init_toy_data()
    _, loss_history, _, _ = ClassifierTrainer().train(
        X, y, X, y, init_toy_model(), two_layer_net, reg=0.001, learning_rate=1e-1,
        momentum=mom, learning_rate_decay=1, update=update, sample_batches=False, num_epochs=100)
    assert len(loss_history) == 100
    assert round(loss_history[-1], 6) == expected


def test_update_rules_by_hand():
    w, dw = np.array([1.0, -1.0]), np.array([0.5, 2.0])
    assert np.allclose(sgd(w, dw, {"learning_rate": 0.1})[0], [0.95, -1.2])
    w1, cfg = momentum(w, dw, {"learning_rate": 0.1, "momentum": 0.9})
    w2, _ = momentum(w1, dw, cfg)
    assert np.allclose(w2, w - 0.1 * dw - (0.9 * 0.1 * dw + 0.1 * dw))
    w3, cfg = rmsprop(w, dw, {"learning_rate": 0.1})
    assert np.allclose(cfg["cache"], 0.01 * dw ** 2)
    assert np.allclose(w3, w - 0.1 * dw / np.sqrt(0.01 * dw ** 2 + 1e-8))
    assert np.array_equal(w, [1.0, -1.0])   # rules do not modify their input


def test_small_net_overfits_small_sample():
    # A net that cannot drive the loss down on 20 examples is broken, whatever the gradients say.
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 30)), rng.integers(0, 5, 20)
    model = init_params(30, 50, 5, rng, std=0.1)
    best, history, train_acc, val_acc = ClassifierTrainer(seed=1).train(
        X, y, X, y, model, two_layer_net, reg=0.0, learning_rate=0.1, momentum=0.9,
        learning_rate_decay=1, update="momentum", sample_batches=False, num_epochs=200)
    assert history[-1] < 0.05 < history[0]
    assert val_acc[-1] == 1.0
