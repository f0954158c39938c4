"""kernels.gemm and FusedStep's buffers, against NumPy float64 and the reference update rules,
through each BLAS backend."""
import os

import numpy as np
import pytest

from problems import small_problem
from mlp_exp import kernels
from mlp_exp.kernels import FusedStep, gemm
from mlp_exp.net import two_layer_loss
from mlp_exp.optim import UPDATE_RULES


def _operand(m, layout):
    """m in the requested memory layout: C-ordered, F-ordered, or a transposed view of either."""
    if layout == "C":
        return np.ascontiguousarray(m)
    if layout == "F":
        return np.asfortranarray(m)
    if layout == "C.T":
        return np.ascontiguousarray(m.T).T          # F-ordered view of a C array
    if layout == "strided":                         # neither C- nor F-ordered: every other column
        wide = np.zeros((m.shape[0], 2 * m.shape[1]), m.dtype)
        wide[:, ::2] = m
        return wide[:, ::2]
    return np.asfortranarray(m.T).T                 # "F.T": C-ordered view of an F array


@pytest.mark.parametrize("a_layout", ["C", "F", "C.T", "F.T", "strided"])
@pytest.mark.parametrize("b_layout", ["C", "F", "C.T", "strided"])
def test_gemm_is_alpha_ab_plus_beta_out_in_place(a_layout, b_layout, blas_backend):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5)).astype(np.float32)
    b = rng.standard_normal((5, 3)).astype(np.float32)
    out = rng.standard_normal((7, 3)).astype(np.float32)
    expected = -0.5 * a.astype(np.float64) @ b + 0.25 * out
    result = gemm(_operand(a, a_layout), _operand(b, b_layout), out, alpha=-0.5, beta=0.25)
    assert result is out
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_gemm_refuses_an_output_it_cannot_write_in_place(blas_backend):
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 2), np.float32)
    with pytest.raises(RuntimeError, match="in place"):
        gemm(a, b, np.ones((4, 2), np.float64))


def test_gemm_casts_operands_that_are_not_float32(blas_backend):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 3))       # float64
    out = np.zeros((6, 3), np.float32)
    gemm(a, np.asfortranarray(b), out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-6)


def test_blas_vector_calls_work_in_place(blas_backend):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    expected = 0.5 * x.astype(np.float64) + y
    assert blas_backend.sdot(x, y) == pytest.approx(float(x.astype(np.float64) @ y), rel=1e-4)
    blas_backend.saxpy(x, y, 0.5)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_numpys_bundled_openblas_is_the_default_where_numpy_has_one():
    from threadpoolctl import threadpool_info
    path = kernels.numpy_openblas_path()
    if path is None:
        assert isinstance(kernels.blas, kernels.SciPyBLAS)
        return
    assert isinstance(kernels.blas, kernels.NumpyOpenBLAS)
    # the library kernels call is the one NumPy itself loaded: one BLAS thread pool for both
    numpy_pools = [p["filepath"] for p in threadpool_info() if "numpy" in p["filepath"]]
    assert any(os.path.samefile(path, pool) for pool in numpy_pools)


def _problem():
    return small_problem(n=48, d=40, h=24, c=6)


@pytest.mark.parametrize("update, lr", [("sgd", 0.05), ("momentum", 0.02), ("rmsprop", 1e-3)])
def test_fused_step_without_reg_and_with_changing_batch_size(update, lr, blas_backend):
    # reg = 0 skips the penalty's sdot and the decay's saxpy; batch sizes 16, 8, 16 reallocate buffers
    X, y, params = _problem()
    sizes = [16, 8, 16, 8] * 3
    ref = {k: v.astype(np.float64) for k, v in params.items()}
    states = {k: {"momentum": 0.9, "learning_rate": lr} for k in ref}
    step = FusedStep(params, update, reg=0.0, momentum=0.9)
    start = 0
    for size in sizes:
        Xb, yb = X[start:start + size], y[start:start + size]
        start = (start + size) % len(X)
        expected_loss, grads = two_layer_loss(ref, Xb.astype(np.float64), yb, 0.0)
        for k in ref:
            ref[k], states[k] = UPDATE_RULES[update](ref[k], grads[k], states[k])
        assert step.step(Xb, yb, lr) == pytest.approx(expected_loss, rel=1e-5)
    for k in ref:
        np.testing.assert_allclose(step.params[k], ref[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_fused_step_params_and_state_are_views_of_its_flat_buffers():
    _, _, params = _problem()
    step = FusedStep(params, "momentum", reg=0.1, momentum=0.9)
    for k, v in step.params.items():
        assert v.shape == params[k].shape and v.dtype == np.float32 and v.flags.c_contiguous
        assert np.array_equal(v, params[k])
        assert np.shares_memory(v, step._flat) and np.shares_memory(step.state[k], step._state_flat)


def test_fused_step_names_a_parameter_of_the_wrong_shape():
    _, _, params = _problem()
    params["b1"] = params["b1"][:-1]
    with pytest.raises(ValueError, match="b1"):
        FusedStep(params, "momentum", reg=0.1)


def test_fused_step_rejects_an_unknown_update_rule():
    _, _, params = _problem()
    with pytest.raises(ValueError, match="adam"):
        FusedStep(params, "adam", reg=0.1)
