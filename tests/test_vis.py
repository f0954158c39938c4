"""Weight grids and curve figures: arrays and PNG bytes, nothing drawn on screen or saved."""
import io

import numpy as np
from PIL import Image

import mlp_exp
from mlp_exp.vis import first_layer_grid, render_training_curves, render_weight_grid_png, visualize_grid


def test_spec_api_is_importable_from_the_package():
    """The spec's import lines give the implementations, not look-alikes (load_CIFAR10 is loaded lazily)."""
    from mlp_exp import data, gradient_check, spec_api, vis
    homes = {"two_layer_net": spec_api, "init_two_layer_model": spec_api, "ClassifierTrainer": spec_api,
             "eval_numerical_gradient": gradient_check, "rel_error": gradient_check, "load_CIFAR10": data,
             "visualize_grid": vis}
    assert sorted(mlp_exp.__all__) == sorted(homes)
    for name, module in homes.items():
        assert getattr(mlp_exp, name) is getattr(module, name), name


def test_init_two_layer_model_is_seeded_and_spec_scaled():
    a = mlp_exp.init_two_layer_model(3072, 100, 10)
    b = mlp_exp.init_two_layer_model(3072, 100, 10)
    c = mlp_exp.init_two_layer_model(3072, 100, 10, seed=1)
    assert a["W1"].shape == (3072, 100) and a["b2"].shape == (10,)
    assert np.array_equal(a["W1"], b["W1"]) and not np.array_equal(a["W1"], c["W1"])
    assert abs(a["W1"].std() - 6e-3) < 2e-4 and not a["b1"].any()


def test_visualize_grid_tiles_and_scales_each_image():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 4, 4, 3))
    grid = visualize_grid(images, ubound=255.0, padding=1)
    assert grid.shape == (3 * 4 + 2, 3 * 4 + 2, 3)       # ceil(sqrt(5)) = 3 tiles a side
    first = grid[0:4, 0:4]
    assert first.min() == 0.0 and first.max() == 255.0
    expected = 255 * (images[0] - images[0].min()) / (images[0].max() - images[0].min())
    np.testing.assert_allclose(first, expected)
    assert not grid[4].any() and not grid[:, 4].any()    # padding rows and columns stay 0
    assert not grid[10:, 10:].any()                       # empty slots stay 0


def test_first_layer_grid_reads_columns_as_hwc_images():
    W1 = np.zeros((3072, 2))
    W1[:, 1] = np.arange(3072)                            # pixel (0, 0, 0) dark, last bright
    grid = first_layer_grid(W1, padding=1)
    assert grid.dtype == np.uint8 and grid.shape == (65, 65, 3)
    tile = grid[0:32, 33:65]
    assert tile[0, 0, 0] == 0 and tile[31, 31, 2] == 255
    assert first_layer_grid(np.ones((3072, 50)), max_units=4).shape == (65, 65, 3)


def test_weight_grid_png_and_curves_render():
    png = render_weight_grid_png(np.random.default_rng(1).normal(size=(3072, 9)))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and min(image.size) > 100
    figure = render_training_curves(np.linspace(3, 1, 40), [0.2, 0.3, 0.4, 0.5], [0.2, 0.25, 0.3, 0.33])
    loss_axes, accuracy_axes = figure.axes[:2]
    assert len(loss_axes.lines) == 2 and len(accuracy_axes.lines) == 2
    assert list(accuracy_axes.lines[1].get_ydata()) == [0.2, 0.25, 0.3, 0.33]
