"""Tests for mlp_exp.diagnosis: curves of known shape get the known tags, and so do real training runs.

References: synthetic curves built to have one shape each (linear, exponential,
flat, exploding, gapped, low), and the trainer itself at learning rates that are
too low, right, and far too high on data it can learn.
"""
import numpy as np
import pytest

from fake_cifar import write_fake_cifar10
from mlp_exp import data, diagnosis
from mlp_exp.config import TrainConfig
from mlp_exp.trainer import train

ITERATIONS = 1000
RISING_TRAIN = [0.30, 0.40, 0.46, 0.50, 0.53, 0.55]
RISING_VAL = [0.29, 0.38, 0.43, 0.46, 0.48, 0.49]


def noisy(curve, scale, seed=0):
    return np.asarray(curve) + np.random.default_rng(seed).normal(0, scale, len(curve))


def exponential_loss(seed=0):
    """A healthy loss: fast fall, then flattening out (2.3 -> ~1.4)."""
    it = np.arange(ITERATIONS)
    return noisy(1.4 + 0.9 * np.exp(-it / 150), 0.05, seed)


def tags(findings):
    return [f.tag for f in findings]


# ------------------------------------------------------------- loss shapes

def test_healthy_curves_have_no_findings():
    assert diagnosis.diagnose(exponential_loss(), RISING_TRAIN, RISING_VAL) == []
    assert diagnosis.as_tags([]) == {"diagnosis": "ok"}


def test_loss_falling_in_a_straight_line_means_learning_rate_too_low():
    loss = noisy(2.30 - 0.25 * np.arange(ITERATIONS) / ITERATIONS, 0.02)
    findings = diagnosis.diagnose_loss(loss)
    assert tags(findings) == ["lr_too_low"]
    assert "straight line" in findings[0].reason and "raise the learning rate" in findings[0].reason


def test_the_same_drop_front_loaded_is_not_too_low():
    # same start and end as the straight line, but most of the fall happens early
    it = np.arange(ITERATIONS)
    loss = noisy(2.05 + 0.25 * np.exp(-it / 120), 0.02)
    assert diagnosis.diagnose_loss(loss) == []


def test_flat_loss_means_learning_rate_too_low():
    findings = diagnosis.diagnose_loss(noisy(np.full(ITERATIONS, 2.3026), 0.003))
    assert tags(findings) == ["lr_too_low"] and "barely moved" in findings[0].reason


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss_is_divergence(bad):
    loss = exponential_loss()[:300].copy()
    loss[-1] = bad
    findings = diagnosis.diagnose(loss, [0.3], [0.3])
    assert tags(findings) == ["diverged"]
    assert "iteration 300 of 300" in findings[0].reason


def test_exploding_finite_loss_is_divergence():
    loss = 2.3 * np.exp(np.linspace(0, 5, ITERATIONS))      # 2.3 -> 340, still finite
    assert tags(diagnosis.diagnose_loss(loss)) == ["diverged"]


def test_loss_ending_above_its_start_means_learning_rate_too_high():
    it = np.arange(ITERATIONS)
    loss = noisy(2.3 - 0.3 * np.sin(np.pi * it / ITERATIONS) + 0.4 * it / ITERATIONS, 0.05)   # dips, ends at 2.7
    findings = diagnosis.diagnose_loss(loss)
    assert tags(findings) == ["lr_too_high"] and "no lower than its start" in findings[0].reason


def test_too_few_iterations_say_nothing_about_the_loss():
    assert diagnosis.diagnose_loss([2.3, 2.3, 2.3]) == []


# ------------------------------------------------------------- accuracy shapes

def test_train_val_gap_is_overfitting():
    findings = diagnosis.diagnose_accuracy([0.40, 0.60, 0.75, 0.85], [0.38, 0.45, 0.47, 0.47])
    assert tags(findings) == ["overfitting"]
    assert "0.850" in findings[0].reason and "0.470" in findings[0].reason and "gap 0.380" in findings[0].reason


def test_validation_falling_while_training_rises_is_overfitting():
    # gap below the threshold, but val peaked in epoch 2 and fell 0.04 while train kept rising
    findings = diagnosis.diagnose_accuracy([0.40, 0.45, 0.50, 0.54], [0.40, 0.46, 0.44, 0.42])
    assert tags(findings) == ["overfitting"] and "peaked at 0.460 in epoch 2" in findings[0].reason


def test_low_close_accuracies_are_underfitting():
    findings = diagnosis.diagnose_accuracy([0.20, 0.25, 0.27, 0.28], [0.20, 0.24, 0.27, 0.27])
    assert tags(findings) == ["underfitting"]
    # validation above training is no excuse
    assert tags(diagnosis.diagnose_accuracy([0.20, 0.22, 0.25], [0.24, 0.28, 0.31])) == ["underfitting"]


def test_young_or_good_runs_are_not_underfitting():
    assert diagnosis.diagnose_accuracy([0.20, 0.25], [0.20, 0.24]) == []       # pruned after 2 epochs
    assert diagnosis.diagnose_accuracy(RISING_TRAIN, RISING_VAL) == []
    assert diagnosis.diagnose_accuracy([0.30, 0.35, 0.38], [0.20, 0.22, 0.25]) == []   # gap 0.13: neither


def test_thresholds_are_parameters():
    strict = diagnosis.Thresholds(overfit_gap=0.05)
    assert tags(diagnosis.diagnose_accuracy(RISING_TRAIN, RISING_VAL, strict)) == ["overfitting"]


def test_mismatched_accuracy_lists_are_an_error():
    with pytest.raises(ValueError, match="one value per epoch"):
        diagnosis.diagnose_accuracy([0.3, 0.4], [0.3])


def test_findings_become_run_tags():
    loss = noisy(np.full(ITERATIONS, 2.3026), 0.003)
    findings = diagnosis.diagnose(loss, [0.10, 0.11, 0.10], [0.10, 0.10, 0.11])
    found = diagnosis.as_tags(findings)
    assert found["diagnosis"] == "lr_too_low,underfitting"
    assert set(found) == {"diagnosis", "diagnosis.lr_too_low", "diagnosis.underfitting"}
    assert found["diagnosis.underfitting"] == findings[1].reason


# ------------------------------------------------------------- the real trainer

@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    write_fake_cifar10(root, per_batch=160, num_test=10)
    return data.load_raw_split(root, train_size=600, val_size=200, test_size=10, progress=False)


@pytest.mark.parametrize("learning_rate, expected", [
    (1e-5, ["lr_too_low"]),     # loss barely moves in 10 epochs
    (1e-4, ["lr_too_low"]),     # falls, but in a straight line
    (1e-2, []),                 # falls fast, flattens, fits the data
    (10.0, ["diverged"]),       # non-finite within the first epoch
])
def test_real_training_runs_get_the_expected_loss_diagnosis(learnable, learning_rate, expected):
    config = TrainConfig(hidden_size=32, learning_rate=learning_rate, reg=1e-4, momentum=0.9, lr_decay=0.95,
                         num_epochs=10, batch_size=50, train_size=600, val_size=200, init_std=1e-2, seed=0,
                         preprocessing="standardize", flip=False)
    result = train(learnable.X_train, learnable.y_train, learnable.X_val, learnable.y_val, config,
                   preprocessor=learnable.preprocessors["standardize"])
    epochs = [e for e in result.epochs if np.isfinite(e.val_accuracy)]
    findings = diagnosis.diagnose(result.loss_history, [e.train_accuracy for e in epochs],
                                  [e.val_accuracy for e in epochs])
    assert tags(diagnosis.diagnose_loss(result.loss_history)) == expected
    if learning_rate == 1e-2:
        assert findings == [] and result.best_val_accuracy > 0.9


# ------------------------------------------------------------- a study's ranges

SPACE = {
    "hidden_size": ("int_log", 100, 1500),
    "learning_rate": ("float_log", 3e-4, 3e-2),
    "momentum": ("float", 0.8, 0.95),
    "update": ("categorical", ["sgd", "momentum"]),
}


def test_range_position_is_log_for_log_ranges():
    assert diagnosis.range_position(3e-3, SPACE["learning_rate"]) == pytest.approx(0.5)
    assert diagnosis.range_position(0.875, SPACE["momentum"]) == pytest.approx(0.5)
    assert diagnosis.range_position("sgd", SPACE["update"]) is None


def test_best_values_at_range_edges_are_flagged():
    best = {"hidden_size": 1480, "learning_rate": 3.3e-4, "momentum": 0.87, "update": "sgd"}
    findings = diagnosis.edge_findings(best, SPACE)
    assert tags(findings) == ["hidden_size_at_high_edge", "learning_rate_at_low_edge"]
    assert "widen SEARCH_SPACE['hidden_size'] upwards" in findings[0].reason
    assert "(log scale)" in findings[1].reason and "downwards" in findings[1].reason


def test_middle_values_and_unsampled_params_are_not_flagged():
    # 1e-3 is near the low end on a linear scale, but a third of the way up on the log scale
    assert diagnosis.edge_findings({"learning_rate": 1e-3, "momentum": 0.9}, SPACE) == []
    assert diagnosis.edge_findings({}, SPACE) == []          # baseline trial / --fixed: nothing sampled
