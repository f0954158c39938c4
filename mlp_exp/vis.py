"""Pictures of a net: first-layer weight grids and training curves.

`visualize_grid` returns an array and draws nothing; the render functions
return matplotlib figures or PNG bytes. Saving them is the caller's job.
"""
from __future__ import annotations

import io
import math

import numpy as np

from .config import IMAGE_SHAPE


def visualize_grid(Xs, ubound=255.0, padding=1):
    """Tile images Xs (N, H, W, C) into one (G*(H+p)-p, G*(W+p)-p, C) grid, G = ceil(sqrt(N)).

    Each image is min-max scaled to [0, ubound] on its own; padding is left at 0.
    """
    N, H, W, C = Xs.shape
    grid_size = int(math.ceil(math.sqrt(N)))
    grid_height = H * grid_size + padding * (grid_size - 1)
    grid_width = W * grid_size + padding * (grid_size - 1)
    grid = np.zeros((grid_height, grid_width, C))
    for i in range(N):
        row, col = divmod(i, grid_size)
        y0, x0 = row * (H + padding), col * (W + padding)
        img = Xs[i]
        low, high = np.min(img), np.max(img)
        grid[y0:y0 + H, x0:x0 + W] = ubound * (img - low) / max(high - low, 1e-12)
    return grid


def first_layer_grid(W1, max_units=None, padding=1):
    """W1 (3072, H) -> uint8 grid image of its first max_units columns as 32x32 RGB tiles."""
    units = W1.shape[1] if max_units is None else min(max_units, W1.shape[1])
    tiles = np.asarray(W1[:, :units], dtype=np.float64).T.reshape((units,) + IMAGE_SHAPE)
    return visualize_grid(tiles, padding=padding).astype(np.uint8)


def render_weight_grid_png(W1, max_units=None, padding=3, dpi=100) -> bytes:
    """The spec's `show_net_weights` as PNG bytes (matplotlib, Agg backend)."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    grid = first_layer_grid(W1, max_units=max_units, padding=padding)
    fig = Figure(figsize=(8, 8), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def render_training_curves(loss_history, train_accuracy, val_accuracy, title=""):
    """The spec's monitoring figure: loss per iteration (with its per-epoch mean) above
    train and validation accuracy per epoch. Returns a matplotlib Figure."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(10, 8))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(2, 1)
    loss_history = np.asarray(loss_history, dtype=float)
    ax_loss.plot(loss_history, lw=0.6, alpha=0.6, label="per iteration")
    epochs = len(train_accuracy)
    if epochs and len(loss_history) >= epochs:
        per_epoch = len(loss_history) // epochs
        means = loss_history[:per_epoch * epochs].reshape(epochs, per_epoch).mean(axis=1)
        ax_loss.plot((np.arange(epochs) + 1) * per_epoch - 1, means, "o-", label="epoch mean")
    ax_loss.set_title("Loss history")
    ax_loss.set_xlabel("Iteration")
    ax_loss.set_ylabel("Loss")
    ax_loss.legend(loc="upper right")
    steps = np.arange(1, epochs + 1)
    ax_acc.plot(steps, train_accuracy, "o-", label="Training accuracy")
    ax_acc.plot(steps, val_accuracy, "o-", label="Validation accuracy")
    ax_acc.legend(loc="lower right")
    ax_acc.set_xlabel("Epoch")
    ax_acc.set_ylabel("Classification accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
