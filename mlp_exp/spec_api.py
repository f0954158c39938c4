"""The spec notebook's API, as thin layers over the package's own modules.

The notebook's cells run unchanged but for their imports:

    from mlp_exp import two_layer_net, init_two_layer_model, ClassifierTrainer
    from mlp_exp import eval_numerical_gradient, load_CIFAR10, visualize_grid

`ClassifierTrainer` keeps the notebook's exact loop (batches sampled with
replacement, accuracy at iteration 0 and after every epoch, float64, any loss
function) because its printed numbers are targets. Two of its habits are
changed: randomness comes from a seeded generator (`seed=`), and it prints only
when `verbose=True`. Product code trains with `trainer.train` instead.
"""
from __future__ import annotations

import numpy as np

from .net import init_params, two_layer_loss
from .optim import UPDATE_RULES

# The spec's printed first cost, 8.13 at reg 1.0, implies initial weights with
# a standard deviation near 6e-3 (0.5 * 1.0 * 308,200 weights * std^2 + ln 10).
SPEC_INIT_STD = 6e-3


def two_layer_net(X, model, y=None, reg=0.0, verbose=False):
    """Scores (N, C) if y is None, else (loss, grads); see net.two_layer_loss."""
    if verbose:
        H, C = model["W1"].shape[1], model["W2"].shape[1]
        print(f"Layer 1 result shape: {(X.shape[0], H)}")
        print(f"Layer 2 result shape: {(X.shape[0], C)}")
    return two_layer_loss(model, X, y, reg)


def init_two_layer_model(input_size, hidden_size, output_size, std=SPEC_INIT_STD, seed=0):
    """Gaussian weights (std `std`) and zero biases, from np.random.default_rng(seed)."""
    return init_params(input_size, hidden_size, output_size, np.random.default_rng(seed), std)


class ClassifierTrainer:
    """The notebook's trainer: `train(...) -> (best_model, loss_history, train_acc, val_acc)`."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def train(self, X, y, X_val, y_val, model, loss_function, reg=0.0,
              learning_rate=1e-2, momentum=0, learning_rate_decay=0.95,
              update="momentum", sample_batches=True, num_epochs=30,
              batch_size=100, acc_frequency=None, verbose=False):
        if update not in UPDATE_RULES:
            raise ValueError(f"update must be one of {', '.join(UPDATE_RULES)}, got {update!r}")
        N = X.shape[0]
        iterations_per_epoch = max(N // batch_size, 1) if sample_batches else 1
        num_iters = num_epochs * iterations_per_epoch
        rule = UPDATE_RULES[update]
        states = {p: {"learning_rate": learning_rate, "momentum": momentum} for p in model}
        epoch, best_val_acc, best_model = 0, 0.0, {}
        loss_history, train_acc_history, val_acc_history = [], [], []
        for it in range(num_iters):
            if verbose and it % 500 == 0:
                print("starting iteration ", it)
            if sample_batches:
                batch = self.rng.choice(N, batch_size)   # with replacement, as the spec
                X_batch, y_batch = X[batch], y[batch]
            else:
                X_batch, y_batch = X, y
            cost, grads = loss_function(X_batch, model, y_batch, reg)
            loss_history.append(cost)
            for p in model:
                states[p]["learning_rate"] = learning_rate
                model[p], states[p] = rule(model[p], grads[p], states[p])

            first_it = it == 0
            epoch_end = (it + 1) % iterations_per_epoch == 0
            acc_check = acc_frequency is not None and it % acc_frequency == 0
            if first_it or epoch_end or acc_check:
                if it > 0 and epoch_end:
                    learning_rate *= learning_rate_decay
                    epoch += 1
                if N > 1000:
                    sample = self.rng.choice(N, 1000)
                    X_sample, y_sample = X[sample], y[sample]
                else:
                    X_sample, y_sample = X, y
                train_acc = np.mean(np.argmax(loss_function(X_sample, model), axis=1) == y_sample)
                val_acc = np.mean(np.argmax(loss_function(X_val, model), axis=1) == y_val)
                train_acc_history.append(train_acc)
                val_acc_history.append(val_acc)
                if val_acc > best_val_acc:
                    best_val_acc = val_acc
                    best_model = {p: model[p].copy() for p in model}
                if verbose:
                    print("Finished epoch %d / %d: cost %f, train: %f, val %f, lr %e"
                          % (epoch, num_epochs, cost, train_acc, val_acc, learning_rate))
        if verbose:
            print("finished optimization. best validation accuracy: %f" % (best_val_acc,))
        return best_model, loss_history, train_acc_history, val_acc_history
