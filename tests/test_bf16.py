"""precision "bf16": MKL's and oneDNN's bf16 GEMMs, the bf16 copies the step feeds them, and the step
itself on each against the float64 reference to bf16's tolerance; which library a CPU gets; the fp32
path untouched; a clear error without the library."""
import sys

import numpy as np
import pytest

from problems import small_problem
from mlp_exp import blas
from mlp_exp.config import TrainConfig
from mlp_exp.errors import UserError
from mlp_exp.kernels import FusedStep
from mlp_exp.net import two_layer_loss
from mlp_exp.optim import UPDATE_RULES

needs_mkl = pytest.mark.skipif(blas.mkl_path() is None,
                               reason="Intel MKL is not installed (`pip install mkl`, x86_64; CI installs it "
                                      "with the test extra)")


def _onednn_or_none():
    from mlp_exp.onednn import OneDNNUnavailable, onednn_backend
    try:
        return onednn_backend()
    except OneDNNUnavailable:
        return None


@pytest.fixture(params=["mkl", "onednn"])
def bf16_lib(request):
    """Each bf16 library installed here (CI installs both with the test extra)."""
    if request.param == "mkl":
        if blas.mkl_path() is None:
            pytest.skip("Intel MKL is not installed (`pip install mkl`, x86_64)")
        return blas.mkl_backend()
    lib = _onednn_or_none()
    if lib is None:
        pytest.skip("oneDNN is not installed or finds no CPU device (`pip install onednn`, x86_64)")
    return lib


def test_to_bf16_keeps_the_high_half_of_each_float32():
    x = np.array([[1.0, -2.5, 3.14159265], [1e-30, 65504.0, -0.0]], np.float32)
    bits = x.view(np.uint32)
    out = blas.to_bf16(x, np.empty(x.shape, blas.BF16))
    np.testing.assert_array_equal(out, (bits >> 16).astype(np.uint16))
    back = (out.astype(np.uint32) << 16).view(np.float32)
    # rounded toward zero, by less than 2**-7 of each value
    assert np.all(np.abs(back) <= np.abs(x)) and np.all(np.abs(back - x) <= np.abs(x) * 2.0 ** -7)
    assert back[0, 0] == 1.0 and back[0, 1] == -2.5       # exact in bf16: unchanged


@pytest.mark.parametrize("a_layout", ["C", "C.T"])
@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_gemm_bf16_multiplies_the_bf16_values_in_fp32(bf16_lib, a_layout, beta):
    mkl = bf16_lib
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((37, 53), dtype=np.float32), rng.standard_normal((53, 29), dtype=np.float32)
    a16 = blas.to_bf16(a, np.empty(a.shape, blas.BF16))
    if a_layout == "C.T":                       # the weight gradient's X.T: an F-ordered view
        a16 = blas.to_bf16(np.ascontiguousarray(a.T), np.empty(a.T.shape, blas.BF16)).T
    b16 = blas.to_bf16(b, np.empty(b.shape, blas.BF16))
    widen = lambda m: (np.ascontiguousarray(m).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    out = rng.standard_normal((37, 29), dtype=np.float32)
    expected = 0.5 * widen(a16) @ widen(b16) + beta * out
    mkl.gemm_bf16(a16, b16, out, 0.5, beta)
    # the products of bf16 values are exact in fp32; only the fp32 sums round
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="bf16 bit patterns"):
        mkl.gemm_bf16(a, b16, out, 1.0, 0.0)


@pytest.mark.parametrize("update, lr, tolerance", [("sgd", 0.05, 0.1), ("momentum", 0.02, 0.1),
                                                  ("rmsprop", 1e-3, 0.25)])
def test_bf16_step_follows_the_reference_update_to_bf16_tolerance(bf16_lib, monkeypatch, update, lr, tolerance):
    """The stated tolerance: after 12 steps each parameter is off the float64 reference by at most
    a tenth of how far the reference moved (a quarter for rmsprop, which divides every gradient by
    its own running size, so a near-zero gradient's bf16 error is not shrunk by its size)."""
    X, y, params = small_problem(n=48, d=40, h=24, c=6)
    start_params = {k: v.astype(np.float64) for k, v in params.items()}
    ref = dict(start_params)
    states = {k: {"momentum": 0.9, "learning_rate": lr} for k in ref}
    fp32 = FusedStep(params, update, reg=0.01, momentum=0.9)
    monkeypatch.setattr("mlp_exp.kernels.bf16_backend", lambda: bf16_lib)
    bf16 = FusedStep(params, update, reg=0.01, momentum=0.9, precision="bf16")
    assert bf16.blas is bf16_lib
    for start in [0, 16, 32] * 4:
        Xb, yb = X[start:start + 16], y[start:start + 16]
        expected_loss, grads = two_layer_loss(ref, Xb.astype(np.float64), yb, 0.01)
        for k in ref:
            ref[k], states[k] = UPDATE_RULES[update](ref[k], grads[k], states[k])
        loss32, loss16 = fp32.step(Xb, yb, lr), bf16.step(Xb, yb, lr)
        assert loss32 == pytest.approx(expected_loss, rel=1e-5)
        assert loss16 == pytest.approx(expected_loss, rel=2e-2)          # bf16 inputs: 8 significant bits
        assert loss16 != loss32                                          # it did run in bf16
    for k in ref:
        moved = np.abs(ref[k] - start_params[k]).max()
        assert np.abs(fp32.params[k] - ref[k]).max() <= 1e-3 * moved, k
        assert np.abs(bf16.params[k] - ref[k]).max() <= tolerance * moved, k


def test_a_bf16_training_run_learns_what_fp32_learns(bf16_lib, monkeypatch):
    from mlp_exp.trainer import train

    monkeypatch.setattr("mlp_exp.kernels.bf16_backend", lambda: bf16_lib)

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 60)).astype(np.float32)
    labels = rng.integers(0, 4, 600)
    X = (centres[labels] + 0.8 * rng.standard_normal((600, 60))).astype(np.float32)
    common = dict(hidden_size=32, learning_rate=0.05, reg=1e-3, batch_size=50, num_epochs=4,
                  init_std=0.05, train_size=500, val_size=100)
    results = {p: train(X[:500], labels[:500], X[500:], labels[500:], TrainConfig(**common, precision=p))
               for p in ("fp32", "bf16")}
    assert results["fp32"].best_val_accuracy > 0.8
    assert abs(results["bf16"].best_val_accuracy - results["fp32"].best_val_accuracy) <= 0.05
    assert not np.array_equal(results["bf16"].loss_history, results["fp32"].loss_history)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        TrainConfig(precision="fp16")
    _, _, params = small_problem()
    with pytest.raises(ValueError, match="precision must be one of"):
        FusedStep(params, "momentum", reg=0.1, precision="fp16")


def test_without_mkl_bf16_is_one_clear_error_before_any_trial(monkeypatch):
    from mlp_exp.study.space import parse_fixed

    monkeypatch.setattr(blas, "_cpuinfo", lambda: _cpuinfo("GenuineIntel", "fpu avx2 avx512f avx512_bf16"))
    monkeypatch.setattr(blas, "_mkl", None)
    monkeypatch.setattr(blas, "mkl_path", lambda: None)
    with pytest.raises(UserError, match=r"precision bf16 needs Intel MKL.*pip install mkl") as caught:
        parse_fixed(["precision=bf16"])
    assert "\n" not in str(caught.value)
    assert parse_fixed(["precision=fp32"]) == {"precision": "fp32"}
    _, _, params = small_problem()
    with pytest.raises(UserError, match="pip install mkl"):
        FusedStep(params, "momentum", reg=0.1, precision="bf16")


def test_the_fp32_step_never_loads_mkl():
    import subprocess
    code = ("import numpy as np, sys; from mlp_exp.kernels import FusedStep; from problems import small_problem; "
            "X, y, p = small_problem(); FusedStep(p, 'momentum', 0.1).step(X, y, 0.01); "
            "print(any('mkl' in m for m in open('/proc/self/maps').read().split()))")
    from helpers import REPO
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO / "tests",
                         env={"PYTHONPATH": str(REPO)}, check=True).stdout
    assert out.strip() == "False"


def _cpuinfo(vendor, flags):
    cpu = f"processor\t: {{}}\nvendor_id\t: {vendor}\nmodel name\t: a CPU\nflags\t\t: {flags}\n"
    return cpu.format(0) + "\n" + cpu.format(1) + "\n"


@pytest.mark.parametrize("vendor, flags, units", [
    ("GenuineIntel", "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", ["avx512_bf16", "amx_bf16"]),
    ("GenuineIntel", "fpu avx2 avx512f", []),
    ("AuthenticAMD", "fpu avx2 avx512f avx512_bf16", []),      # MKL runs its generic code on AMD
])
def test_the_bf16_units_mkl_uses_are_an_intel_cpus(vendor, flags, units):
    assert blas.bf16_units_mkl_uses(_cpuinfo(vendor, flags)) == units


@needs_mkl
@pytest.mark.parametrize("units, warned", [([], True), (["avx512_bf16"], False), (["amx_bf16"], False)])
def test_bf16_on_a_cpu_without_bf16_units_warns_once_that_it_is_emulated(monkeypatch, caplog, units, warned):
    monkeypatch.setattr(blas, "_mkl", None)          # load afresh; the process's backend comes back after
    monkeypatch.setattr(blas, "cpu_bf16_units", lambda: units)
    with caplog.at_level("WARNING", logger="mlp_exp.blas"):
        blas.mkl_backend()
        blas.mkl_backend()                           # loaded once: said once
    messages = [r.getMessage() for r in caplog.records if r.name == "mlp_exp.blas"]
    if warned:
        assert len(messages) == 1 and "no bf16 units" in messages[0] and "use precision fp32" in messages[0]
        assert "\n" not in messages[0]
    else:
        assert messages == []


@pytest.mark.parametrize("vendor, flags, library", [
    ("GenuineIntel", "fpu avx2 avx512f avx512_bf16 amx_bf16", "mkl"),    # MKL uses its units
    ("GenuineIntel", "fpu avx2", "mkl"),                                 # MKL emulates (and warns)
    ("AuthenticAMD", "fpu avx2 avx512f avx512_bf16", "onednn"),          # units that MKL ignores
    ("AuthenticAMD", "fpu avx2", "mkl"),                                 # none to use: MKL emulates
])
def test_a_cpu_gets_the_bf16_library_that_uses_its_units(vendor, flags, library):
    assert blas.bf16_library(_cpuinfo(vendor, flags)) == library


def test_on_a_cpu_for_onednn_without_either_library_the_error_names_onednn(monkeypatch):
    import mlp_exp.onednn as onednn
    from mlp_exp.study.space import parse_fixed

    monkeypatch.setattr(blas, "_cpuinfo", lambda: _cpuinfo("AuthenticAMD", "fpu avx2 avx512f avx512_bf16"))
    monkeypatch.setattr(onednn, "_onednn", None)
    monkeypatch.setattr(onednn, "onednn_path", lambda: None)
    monkeypatch.setattr(blas, "_mkl", None)
    monkeypatch.setattr(blas, "mkl_path", lambda: None)
    with pytest.raises(UserError, match=r"precision bf16 needs oneDNN's bf16 kernels on this CPU: `pip install "
                                        r"onednn`") as caught:
        parse_fixed(["precision=bf16"])
    assert "\n" not in str(caught.value)


def test_on_a_cpu_for_onednn_the_step_uses_it(monkeypatch):
    lib = _onednn_or_none()
    if lib is None:
        pytest.skip("oneDNN is not installed or finds no CPU device (`pip install onednn`, x86_64)")
    monkeypatch.setattr(blas, "_cpuinfo", lambda: _cpuinfo("AuthenticAMD", "fpu avx2 avx512f avx512_bf16"))
    _, _, params = small_problem()
    assert FusedStep(params, "momentum", reg=0.1, precision="bf16").blas is lib


@pytest.mark.parametrize("a_layout", ["C", "F"])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (-0.3, 0.9)])
def test_onednn_fp32_calls_are_the_blas_calls(a_layout, alpha, beta):
    """The bf16 step sends its fp32 calls (small GEMMs, saxpy, sdot, evaluation) to oneDNN too."""
    lib = _onednn_or_none()
    if lib is None:
        pytest.skip("oneDNN is not installed or finds no CPU device (`pip install onednn`, x86_64)")
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((31, 47), dtype=np.float32), rng.standard_normal((47, 13), dtype=np.float32)
    if a_layout == "F":
        a = np.asfortranarray(a)
    out = rng.standard_normal((31, 13), dtype=np.float32)
    expected = alpha * a.astype(np.float64) @ b + beta * out
    for _ in range(2):                                # the second call runs the cached primitive
        got = out.copy()
        lib.sgemm(a, b, got, alpha, beta)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    x, y = rng.standard_normal(10_001, dtype=np.float32), rng.standard_normal(10_001, dtype=np.float32)
    for a_ in (0.5, -2.0):                            # the scale is a runtime argument: one primitive
        y0 = y.copy()
        lib.saxpy(x, y, a_)
        np.testing.assert_allclose(y, y0 + a_ * x, rtol=1e-6, atol=1e-6)
    assert lib.sdot(x, y) == pytest.approx(float(x.astype(np.float64) @ y), rel=1e-4)
    with pytest.raises(ValueError, match="saxpy sizes differ"):
        lib.saxpy(x, y[:-1], 1.0)
    with pytest.raises(ValueError, match="gemm shapes do not match"):
        lib.sgemm(a, b.T, out, 1.0, 0.0)
