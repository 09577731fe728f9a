"""numba.cuda kernels against the Numba CPU kernels, in float32, under the CUDA simulator (no GPU).

The simulator must be on before numba.cuda is imported, and other test files import numba first,
so the one test a normal run collects starts a child pytest on this file with NUMBA_ENABLE_CUDASIM=1.
The child makes simulated device arrays as limited as real ones (no NumPy arithmetic, no silent
copies, no host arrays passed to kernels). The simulator runs one Python thread per GPU thread:
shapes stay tiny, but every reduction and GEMM spans more than one block.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# NumPy only (no Numba): safe to import before the simulator is switched on in the child.
from scratchvae.kernels.reference import (bn_act_backward_frozen, bn_invstd, kl_sum, latent_grads,
                                          moving_update, mse_and_grad, reparameterize, sum_squares)
from tests.hang import HANG_S

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# SCRATCHVAE_CUDA_TESTS=gpu runs the same kernel checks on a real GPU (no CI machine has one):
#     SCRATCHVAE_CUDA_TESTS=gpu python -m pytest tests/test_cuda.py
ON_DEVICE = SIMULATED or os.environ.get("SCRATCHVAE_CUDA_TESTS") == "gpu"
ROOT = Path(__file__).resolve().parents[1]
F32 = np.float32
RTOL, ATOL = 1e-5, 1e-6          # elementwise maps and gathers: the same float32 operations
SUM_RTOL, SUM_ATOL = 1e-4, 1e-5  # reductions and GEMM: another summation order


def test_cuda_kernels_under_simulator():
    """Run the checks below in a child pytest with the CUDA simulator switched on."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; assert cuda.is_available()"],
                           env=env, capture_output=True, text=True, check=False)
    # The simulator ships with Numba (and numba-cuda): failing to load it is a failure, not a skip.
    assert probe.returncode == 0, "numba.cuda's simulator cannot load: " + probe.stderr[-2000:]
    child = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"],
                           env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    assert child.returncode == 0, child.stdout[-8000:] + child.stderr[-2000:]


def test_device_choice():
    """scratchvae.run.device answers without raising, in the parent (no simulator) and in the child."""
    from scratchvae.run import device
    from scratchvae.run.errors import UserError

    assert device.check("cpu")[0]
    ok, reason = device.check("tpu")
    assert not ok and "cpu, cuda" in reason
    with pytest.raises(UserError, match="--device tpu"):
        device.use("tpu")
    ok, reason = device.check("cuda")
    assert isinstance(ok, bool) and reason
    if SIMULATED:
        assert ok and "simulator" in reason
    if not ok:
        with pytest.raises(UserError, match="--device cuda: "):
            device.use("cuda")


def test_train_on_cuda_fails_cleanly_or_trains(tmp_path):
    """`python -m scratchvae.train --device cuda`: one line and exit 2 where no GPU can run it."""
    from scratchvae.run import device
    # One step of 4 images, 4 held out, no BatchNorm re-measurement: under the simulator (one Python
    # thread per GPU thread) this is what keeps the child within minutes; the step's numbers are
    # checked against the CPU in test_whole_training_step_on_device_matches_cpu.
    tiny = ["--image-size", "8", "--filters", "4", "--blocks", "2", "--z-dim", "2", "--batch-size", "4",
            "--limit", "8", "--epochs", "1", "--bn-batches", "0", "--quiet", "--cache-dir", str(tmp_path / "c")]
    done = subprocess.run([sys.executable, "-m", "scratchvae.train", *tiny, "--device", "cuda",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=HANG_S)
    if device.check("cuda")[0]:  # a real GPU (or the simulator) is here: then it must train
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "o" / "checkpoint.npz").is_file()
    else:
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --device cuda: ")
        assert not (tmp_path / "o" / "checkpoint.npz").exists()


# ---------------------------------------------------------------- child only: the simulator is on

def strict_simulator():
    """Make the simulator fail wherever a real GPU would: device arrays get only the real API."""
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    forward = FakeCUDAArray.__getattr__
    real_attributes = {"ndim", "size", "dtype", "strides", "flags", "nbytes"}

    def getattr_strict(self, name):
        if name not in real_attributes:  # e.g. itemsize, astype, __array_interface__: NumPy's, not CUDA's
            raise AttributeError(f"a device array has no attribute {name!r}")
        return forward(self, name)

    def no_arithmetic(self, *args):
        raise TypeError("NumPy arithmetic on a device array works only in the simulator")

    def no_host_copy(self, *args, **kwargs):
        raise TypeError("implicit device-to-host copy of a device array (use kernels.to_host)")

    reshape = FakeCUDAArray.reshape

    def reshape_strict(self, *args, **kwargs):
        if not self.is_c_contiguous():
            raise NotImplementedError("a non-contiguous device array cannot be reshaped")
        return reshape(self, *args, **kwargs)

    FakeCUDAArray.__getattr__ = getattr_strict
    FakeCUDAArray.__array__ = no_host_copy
    FakeCUDAArray.reshape = reshape_strict
    for op in ("__add__", "__sub__", "__mul__", "__truediv__", "__floordiv__", "__mod__", "__pow__"):
        setattr(FakeCUDAArray, op, no_arithmetic)

    launch = sim_kernel.FakeCUDAKernel.__call__

    def launch_strict(self, *args):
        if not self._device and sim_kernel._kernel_context is None:
            for a in args:
                if isinstance(a, np.ndarray) and a.ndim > 0:
                    raise TypeError(f"{self.fn.__name__}: host array passed to a kernel (a hidden copy on a GPU)")
        return launch(self, *args)

    sim_kernel.FakeCUDAKernel.__call__ = launch_strict


if ON_DEVICE:
    from numba import cuda

    from scratchvae import kernels, losses
    from scratchvae.kernels import cpu
    from scratchvae.kernels import cuda as gpu
    from scratchvae.kernels.cuda import launch, matmul
    from scratchvae.kernels.workspace import Workspace
    from scratchvae.layers import (BatchNorm, BatchNormLeakyReLU, Conv2D, Dense, Flatten, LeakyReLU, Sigmoid,
                                   same_padding)

    if SIMULATED:
        strict_simulator()


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def both(fn, outs, *args, cpu_fn=None):
    """Run kernel `fn` on host copies with the CPU kernel (or `cpu_fn`) and on device copies with
    the CUDA kernel; return (cpu outputs, cuda outputs brought back)."""
    ref = [o.copy() for o in outs]
    (cpu_fn or getattr(cpu, fn))(*ref, *args)
    d_outs = [dev(o) for o in outs]
    getattr(gpu, fn)(*d_outs, *[dev(a) if isinstance(a, np.ndarray) else a for a in args])
    return ref, [d.copy_to_host() for d in d_outs]


def assert_close(ref, got, rtol=RTOL, atol=ATOL):
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def small_grids(monkeypatch):
    """Cap 1-D grids at two blocks (each simulated thread costs ~0.3 ms): launches stay multi-block,
    and arrays over 512 elements also run the grid-stride loops."""
    if SIMULATED:
        monkeypatch.setattr(launch, "MAX_BLOCKS", 2)


@pytest.fixture
def tiny_grid(monkeypatch):
    """Cap 1-D grids at one block: every thread then walks its grid-stride loop several times."""
    monkeypatch.setattr(launch, "MAX_BLOCKS", 1)


def test_available_and_dispatch(rng):
    ok, reason = gpu.available()
    assert ok and ("simulator" in reason) == SIMULATED
    a, b = rng.standard_normal((3, 4)).astype(F32), rng.standard_normal((4, 2)).astype(F32)
    with kernels.using("cuda") as active:
        assert active is gpu and kernels.backend() is gpu
        out = kernels.zeros((3, 2), F32)
        assert gpu.is_device_array(out)
        kernels.gemm(out, kernels.from_host(a), kernels.from_host(b))  # through the dispatch point
        np.testing.assert_allclose(kernels.to_host(out), a @ b, rtol=SUM_RTOL, atol=SUM_ATOL)


def test_memory_helpers(rng):
    x = rng.standard_normal((3, 4)).astype(F32)
    d = gpu.from_host(x)
    assert gpu.is_device_array(d) and not gpu.is_device_array(x) and gpu.from_host(d) is d
    np.testing.assert_array_equal(gpu.to_host(d), x)
    z = gpu.zeros((5, 7), F32)
    assert gpu.to_host(z).dtype == F32 and not gpu.to_host(z).any()
    gpu.fill(z, 2.5)
    gpu.add(z, gpu.from_host(np.ones((5, 7), F32)))
    np.testing.assert_array_equal(gpu.to_host(z), np.full((5, 7), 3.5, F32))
    c = gpu.empty((3, 4), F32)
    gpu.copy(c, d)
    np.testing.assert_array_equal(gpu.to_host(c), x)
    buf = gpu.empty((64,), F32)
    assert gpu.may_share_memory(buf[:40], buf[30:]) and not gpu.may_share_memory(buf[:30], buf[30:])
    assert not gpu.may_share_memory(buf, gpu.empty((64,), F32))


@pytest.mark.parametrize("ta,tb,acc", [(False, False, False), (True, False, False), (False, True, True),
                                      (True, True, False)])
@pytest.mark.parametrize("m,n,k", [(70, 67, 19), (130, 5, 8)])
def test_gemm_multi_tile(rng, ta, tb, acc, m, n, k):
    # 1 x 2 tiles of 128 x 64 and 3 k steps (the last ragged); 2 x 1 tiles and one whole k step
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(F32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(F32)
    out = rng.standard_normal((m, n)).astype(F32)
    assert_close(*both("gemm", [out], a, b, ta, tb, acc), SUM_RTOL, SUM_ATOL)


@pytest.mark.parametrize("ta,tb,acc", [(False, False, True), (True, False, False), (False, True, False)])
def test_gemm_split_k(rng, monkeypatch, ta, tb, acc):
    """Few output tiles and a long k: k is cut into slices summed afterwards, with a ragged last slice."""
    monkeypatch.setattr(matmul, "SPLIT_MIN_K", 16)
    m, n, k = 70, 5, 53  # 1 output tile; k in 3 slices (24, 24, 5), each whole shared-memory steps
    assert matmul._k_slice(1, k) == 24
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(F32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(F32)
    out = rng.standard_normal((m, n)).astype(F32)
    assert_close(*both("gemm", [out], a, b, ta, tb, acc), SUM_RTOL, SUM_ATOL)


def test_gemm_small_and_degenerate(rng):
    a, b = rng.standard_normal((3, 1)).astype(F32), rng.standard_normal((1, 2)).astype(F32)
    assert_close(*both("gemm", [np.zeros((3, 2), F32)], a, b), SUM_RTOL, SUM_ATOL)
    out = np.ones((3, 2), F32)
    assert_close(*both("gemm", [out], np.zeros((3, 0), F32), np.zeros((0, 2), F32)))  # k = 0: zeros
    with pytest.raises(ValueError, match="does not fit"):
        gpu.gemm(dev(out), dev(a), dev(b), trans_a=True)


@pytest.mark.parametrize("shape", [(37, 11), (2, 3, 3, 4)])
def test_elementwise(rng, shape):
    x = (rng.standard_normal(shape) * 4).astype(F32)
    x.reshape(-1)[0], x.reshape(-1)[-1] = 90.0, -90.0  # sigmoid must not overflow at either end
    dy = rng.standard_normal(shape).astype(F32)
    out = lambda: np.full(shape, np.nan, F32)
    assert_close(*both("leaky_forward", [out()], x, 0.3))
    assert_close(*both("leaky_backward", [out()], dy, x, 0.3))
    assert_close(*both("relu_forward", [out()], x))
    assert_close(*both("relu_backward", [out()], dy, x))
    ref, got = both("sigmoid_forward", [out()], x)
    assert_close(ref, got)
    assert np.all(np.isfinite(got[0])) and got[0].reshape(-1)[0] == 1.0
    assert_close(*both("sigmoid_backward", [out()], dy, ref[0]))


def test_elementwise_grid_stride(rng, tiny_grid):
    x = rng.standard_normal((700,)).astype(F32)  # > 2 x THREADS elements for a single block
    dy = rng.standard_normal((700,)).astype(F32)
    assert_close(*both("leaky_backward", [np.zeros(700, F32)], dy, x, 0.3))
    p, m, v = x.copy(), dy * F32(0.1), np.abs(dy)
    assert_close(*both("adam_update", [p, m, v], dy, 1e-3, 0.9, 0.999, 1e-7, 0.5))


def test_in_place_and_bias(rng):
    y = rng.standard_normal((20, 13)).astype(F32)
    b = rng.standard_normal(13).astype(F32)
    assert_close(*both("add_bias", [y], b))
    dy = rng.standard_normal((20, 13)).astype(F32)
    ref = dy.copy()
    cpu.relu_backward(ref, ref, y)
    d = dev(dy)
    gpu.relu_backward(d, d, dev(y))  # dx aliases dy, as Conv2D calls it
    np.testing.assert_array_equal(d.copy_to_host(), ref)


def test_adam(rng):
    p, g = rng.standard_normal(300).astype(F32), rng.standard_normal(300).astype(F32)
    m, v = g * F32(0.3), np.abs(g) * F32(0.2)
    assert_close(*both("adam_update", [p, m, v], g, 1e-3, 0.9, 0.999, 1e-7, 0.7))


@pytest.mark.parametrize("m,c", [(1, 1), (600, 5), (9, 40)])  # 3 row chunks; 2 column blocks
def test_column_reductions(rng, m, c):
    x = (rng.standard_normal((m, c)) * 3 + 1).astype(F32)
    assert_close(*both("sum_rows", [np.full(c, np.nan, F32)], x), SUM_RTOL, SUM_ATOL)
    assert_close(*both("bn_stats", [np.full(c, np.nan, F32), np.full(c, np.nan, F32)], x), SUM_RTOL, SUM_ATOL)


@pytest.mark.parametrize("m,c", [(2, 3), (300, 3)])  # 300 rows: two row chunks
def test_batchnorm_kernels(rng, m, c):
    x = (rng.standard_normal((m, c)) * 3 + 1).astype(F32)
    dy = rng.standard_normal((m, c)).astype(F32)
    mean, invstd, gamma, beta = (rng.uniform(0.5, 1.5, c).astype(F32) for _ in range(4))
    out = lambda: np.full((m, c), np.nan, F32)
    vec = lambda: np.full(c, np.nan, F32)
    assert_close(*both("bn_forward", [out()], x, mean, invstd, gamma, beta))
    for alpha in (1.0, 0.3):
        assert_close(*both("bn_act_forward", [out()], x, mean, invstd, gamma, beta, alpha))
        assert_close(*both("bn_act_backward", [out(), vec(), vec()], dy, x, mean, invstd, gamma, beta, alpha),
                     SUM_RTOL, SUM_ATOL)
        assert_close(*both("bn_act_backward_frozen", [out(), vec(), vec()], dy, x, mean, invstd, gamma, beta,
                           alpha, cpu_fn=bn_act_backward_frozen), SUM_RTOL, SUM_ATOL)
    if hasattr(cpu, "bn_act_dx"):  # the data-parallel split of bn_act_backward
        s1, s2 = (rng.standard_normal(c).astype(F32) for _ in range(2))
        assert_close(*both("bn_act_grad_sums", [vec(), vec()], dy, x, mean, invstd, gamma, beta, 0.3),
                     SUM_RTOL, SUM_ATOL)
        assert_close(*both("bn_act_dx", [out()], dy, x, mean, invstd, gamma, beta, 0.3, s1, s2, 2 * m))
        assert_close(*both("centered_sq_sums", [vec()], x, mean), SUM_RTOL, SUM_ATOL)


def test_reductions_are_deterministic(rng):
    x, dy = rng.standard_normal((300, 3)).astype(F32), rng.standard_normal((300, 3)).astype(F32)
    vecs = [dev(rng.uniform(0.5, 1.5, 3).astype(F32)) for _ in range(4)]
    runs = []
    for _ in range(2):
        dx, dg, db, s = gpu.empty((300, 3), F32), gpu.empty(3, F32), gpu.empty(3, F32), gpu.empty(1, F32)
        gpu.bn_act_backward(dx, dg, db, dev(dy), dev(x), *vecs, 0.3)
        gpu.sum_squares(s, dev(x))
        runs.append([a.copy_to_host() for a in (dx, dg, db, s)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


GEOMS = [(1, 5, 5, 1, 3, 1), (2, 6, 6, 3, 3, 2), (1, 7, 5, 2, 3, 2)]  # (n, h, w, c, kernel, stride)


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS)
def test_gather_taps_and_col2im(rng, n, h, w, c, k, s):
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    cols = np.full((n * ho * wo, k * k * c), np.nan, F32)
    assert_close(*both("gather_taps", [cols], x, ho, wo, s, list(np.arange(k) - pt), list(np.arange(k) - pl)))
    offs_h, offs_w = [1, -1, 0], [-2, 2]  # a phase gather: uneven offsets off both edges
    cols = np.full((n * h * w, 3 * 2 * c), np.nan, F32)
    assert_close(*both("gather_taps", [cols], x, h, w, 1, offs_h, offs_w))
    cols = rng.standard_normal((n * ho * wo, k * k * c)).astype(F32)
    assert_close(*both("col2im", [np.full((n, h, w, c), np.nan, F32)], cols, k, k, s, pt, pl),
                 SUM_RTOL, SUM_ATOL)


@pytest.mark.parametrize("n,h,w,c", [(2, 3, 5, 3), (1, 4, 4, 70)])
def test_upsample_nearest_and_its_adjoint(rng, n, h, w, c):
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    ref, got = both("upsample_nearest", [np.full((n, 2 * h, 2 * w, c), np.nan, F32)], x)
    np.testing.assert_array_equal(got[0], ref[0])
    dy = rng.standard_normal((n, 2 * h, 2 * w, c)).astype(F32)
    assert_close(*both("upsample_nearest_backward", [np.full((n, h, w, c), np.nan, F32)], dy))


def test_proposed_batchnorm_kernels(rng):
    var = rng.uniform(0.0, 2.0, 7).astype(F32)
    assert_close(*both("bn_invstd", [np.zeros(7, F32)], var, 1e-3, cpu_fn=bn_invstd))
    moving = rng.uniform(0.0, 2.0, 7).astype(F32)
    assert_close(*both("moving_update", [moving], var, 0.99, cpu_fn=moving_update))


def test_proposed_optimizer_norm(rng):
    g = rng.standard_normal(601).astype(F32)  # three blocks of partials
    ref, got = both("sum_squares", [np.zeros(1, F32)], g, cpu_fn=sum_squares)
    assert_close(ref, got, SUM_RTOL, 0)


def test_proposed_loss_kernels_match_losses(rng):
    """The device loss kernels give the numbers and gradients of scratchvae.losses."""
    n, d = 4, 9
    lo, hi = losses.LOGVAR_RANGE
    z_mean, eps, dz = (rng.standard_normal((n, d)).astype(F32) for _ in range(3))
    z_log_var = rng.standard_normal((n, d)).astype(F32)
    z_log_var[0, :2] = (-40.0, 25.0)  # outside the clamp: no gradient flows there
    z, sigma = losses.reparameterize(z_mean, z_log_var, eps)
    _, got = both("reparameterize", [np.zeros_like(z), np.zeros_like(z)], z_mean, z_log_var, eps, lo, hi,
                  cpu_fn=reparameterize)
    assert_close([z, sigma], got)
    kl = np.zeros(1, F32)
    _, (kl,) = both("kl_sum", [kl], z_mean, z_log_var, lo, hi, cpu_fn=kl_sum)
    np.testing.assert_allclose(kl[0] / n, losses.kl_divergence(z_mean, z_log_var), rtol=SUM_RTOL)
    d_mean, d_logvar = losses.latent_grads(dz, z_mean, z_log_var, eps, sigma)
    _, got = both("latent_grads", [np.zeros_like(z), np.zeros_like(z)], dz, z_mean, z_log_var, eps, sigma, lo, hi,
                  cpu_fn=latent_grads)
    assert_close([d_mean, d_logvar], got)
    d_mean, d_logvar = losses.latent_grads(dz, z_mean, z_log_var, eps, sigma, 0.25)  # a KL warm-up weight
    _, got = both("latent_grads", [np.zeros_like(z), np.zeros_like(z)], dz, z_mean, z_log_var, eps, sigma, lo, hi,
                  0.25, cpu_fn=latent_grads)
    assert_close([d_mean, d_logvar], got)
    x, x_hat = rng.uniform(0, 1, (2, 11, 11, 3)).astype(F32), rng.uniform(0, 1, (2, 11, 11, 3)).astype(F32)
    beta = 2000.0
    _, (sq, dx_hat) = both("mse_and_grad", [np.zeros(1, F32), np.zeros_like(x)], x_hat, x, 2 * beta / x.size,
                           cpu_fn=mse_and_grad)
    np.testing.assert_allclose(sq[0] / x.size, losses.mse(x, x_hat), rtol=SUM_RTOL)
    assert_close([losses.reconstruction_grad(x, x_hat, beta)], [dx_hat])


def test_proposed_batchnorm_step_matches_layer(rng):
    """BatchNorm(+LeakyReLU) training forward/backward built only from device kernels, as norm.py would."""
    x = (rng.standard_normal((6, 3, 3, 4)) * 2 + 1).astype(F32)
    dy = rng.standard_normal(x.shape).astype(F32)
    with kernels.using("cpu"):
        layer = BatchNormLeakyReLU(4, 0.3)
        y = layer.forward(x, True).copy()
        dx = layer.backward(dy.copy()).copy()
    x2d, c = dev(x.reshape(-1, 4)), 4
    mean, var, invstd = gpu.empty(c, F32), gpu.empty(c, F32), gpu.empty(c, F32)
    moving_mean, moving_var = gpu.zeros(c, F32), dev(np.ones(c, F32))
    gamma, beta = dev(np.ones(c, F32)), gpu.zeros(c, F32)
    gpu.bn_stats(mean, var, x2d)
    gpu.moving_update(moving_mean, mean, 0.99)
    gpu.moving_update(moving_var, var, 0.99)
    gpu.bn_invstd(invstd, var, 1e-3)
    y_dev = gpu.empty(x2d.shape, F32)
    gpu.bn_act_forward(y_dev, x2d, mean, invstd, gamma, beta, 0.3)
    dx_dev, dgamma, dbeta = dev(dy.reshape(-1, 4)), gpu.empty(c, F32), gpu.empty(c, F32)
    gpu.bn_act_backward(dx_dev, dgamma, dbeta, dx_dev, x2d, mean, invstd, gamma, beta, 0.3)
    got = [a.copy_to_host() for a in (y_dev, dx_dev, dgamma, dbeta, moving_mean, moving_var)]
    want = [y.reshape(-1, 4), dx.reshape(-1, 4), layer.grads["gamma"], layer.grads["beta"],
            layer.state["moving_mean"], layer.state["moving_variance"]]
    assert_close(want, got, SUM_RTOL, SUM_ATOL)


# ---------------------------------------------------------------- fused inference

@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS)
@pytest.mark.parametrize("activation", [None, "leaky", "sigmoid"])
def test_col2im_act(rng, n, h, w, c, k, s, activation):
    """col2im plus bias and activation; the padding columns past KH*KW*C (NaN here) are ignored."""
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    cols = (rng.standard_normal((n * ho * wo, k * k * c + 3)) * 3).astype(F32)
    cols[:, k * k * c:] = np.nan
    bias = rng.standard_normal(c).astype(F32)
    out = np.full((n, h, w, c), np.nan, F32)
    assert_close(*both("col2im_act", [out], cols, k, k, s, pt, pl, bias, activation, 0.3), SUM_RTOL, SUM_ATOL)
    with pytest.raises(ValueError, match="does not fit"):
        gpu.col2im_act(dev(out), dev(cols[:-1]), k, k, s, pt, pl, dev(bias))
    with pytest.raises(ValueError, match="unknown activation"):
        gpu.col2im_act(dev(out), dev(cols), k, k, s, pt, pl, dev(bias), "tanh")


@pytest.mark.parametrize("n,h,w,c,k,s", [(2, 3, 3, 5, 3, 2), (1, 4, 3, 2, 3, 1), (3, 2, 2, 3, 1, 2)])
def test_conv_transpose_act(rng, n, h, w, c, k, s):
    """The fused transposed convolution: one GEMM into cols, then col2im_act; cols from the caller's ws."""
    o = 4
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    w2 = rng.standard_normal((c, k * k * o + 3)).astype(F32)
    bias = rng.standard_normal(o).astype(F32)
    pt = same_padding(h * s, k, s)[1]
    pl = same_padding(w * s, k, s)[1]
    y = np.full((n, h * s, w * s, o), np.nan, F32)
    ref, got = both("conv_transpose_act", [y], x, w2, bias, k, k, s, pt, pl, "leaky", 0.3)
    assert_close(ref, got, SUM_RTOL, SUM_ATOL)
    made = []
    ws = Workspace(lambda shape, dtype: made.append(shape) or gpu.empty(shape, dtype))
    d = dev(y)
    gpu.conv_transpose_act(d, dev(x), dev(w2), dev(bias), k, k, s, pt, pl, "leaky", 0.3, ws=ws)
    assert made == [(n * h * w * w2.shape[1],)]  # the cols buffer came from ws
    np.testing.assert_array_equal(d.copy_to_host(), got[0])


@pytest.mark.parametrize("n,h,w,c,k,s", [(2, 5, 4, 3, 3, 2), (1, 4, 3, 2, 3, 1)])
@pytest.mark.parametrize("relu,activation", [(True, "leaky"), (False, "sigmoid")])
def test_conv_act(rng, n, h, w, c, k, s, relu, activation):
    """The fused inference convolution: patches into cols (from the caller's ws), GEMM into y, one pass."""
    o = 4
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    wk = rng.standard_normal((k * k * c, o)).astype(F32)
    bias, scale, shift = (rng.standard_normal(o).astype(F32) for _ in range(3))
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    y = np.full((n, ho, wo, o), np.nan, F32)
    ref, got = both("conv_act", [y], x, wk, bias, scale, shift, k, k, s, pt, pl, relu, activation, 0.3)
    assert_close(ref, got, SUM_RTOL, SUM_ATOL)
    made = []
    ws = Workspace(lambda shape, dtype: made.append(shape) or gpu.empty(shape, dtype))
    d = dev(y)
    gpu.conv_act(d, dev(x), dev(wk), dev(bias), dev(scale), dev(shift), k, k, s, pt, pl, relu, activation, 0.3, ws=ws)
    assert made == [(n * ho * wo * k * k * c,)]  # the patches came from ws
    np.testing.assert_array_equal(d.copy_to_host(), got[0])


@pytest.mark.parametrize("outputs", ["both", "dw", "y"])
def test_conv_gemms(rng, monkeypatch, outputs):
    """The GEMMs of a convolution's patches, chunk by chunk (two chunks here), dw accumulated."""
    from scratchvae.kernels.cuda import convolution
    monkeypatch.setattr(convolution, "COLS_BYTES", 1)  # one image a chunk
    n, h, w, c, k, s, o = 3, 5, 4, 3, 3, 2, 4
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    wk = rng.standard_normal((k * k * c, o)).astype(F32)
    t = rng.standard_normal((n, ho, wo, o)).astype(F32)
    y = None if outputs == "dw" else np.full((n, ho, wo, o), np.nan, F32)
    dw = None if outputs == "y" else np.full((k * k * c, o), np.nan, F32)
    want = [a.copy() for a in (y, dw) if a is not None]
    it = iter(want)
    cpu.conv_gemms(None if y is None else next(it), None if dw is None else next(it), x, wk, t, k, k, s, pt, pl)
    dy, ddw = (None if a is None else dev(a) for a in (y, dw))
    gpu.conv_gemms(dy, ddw, dev(x), dev(wk), dev(t), k, k, s, pt, pl)
    got = [a.copy_to_host() for a in (dy, ddw) if a is not None]
    assert_close(want, got, SUM_RTOL, SUM_ATOL)


def batchnorm_rows(rng, c):
    """A BatchNorm's mean, invstd, gamma and beta per channel: the kernels' `pre` (4, C)."""
    return np.stack([rng.standard_normal(c) * 0.3, rng.uniform(0.5, 2, c), rng.uniform(0.5, 1.5, c),
                     rng.standard_normal(c) * 0.5]).astype(F32)


@pytest.mark.parametrize("n,h,w,c,k,s", [(2, 3, 3, 5, 3, 2), (1, 4, 3, 2, 3, 1)])
def test_conv_transpose_act_reads_its_input_through_a_batchnorm(rng, n, h, w, c, k, s):
    """pre: x normalised (BatchNorm + LeakyReLU) into a buffer first, then the same transposed
    convolution and statistics as the CPU's, which normalises as it reads."""
    o = 4
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    w2 = rng.standard_normal((c, k * k * o + 3)).astype(F32)
    bias = rng.standard_normal(o).astype(F32)
    pt, pl = same_padding(h * s, k, s)[1], same_padding(w * s, k, s)[1]
    y, stats = np.full((n, h * s, w * s, o), np.nan, F32), np.full((2, o), np.nan, F32)
    ref, got = both("conv_transpose_act", [y], x, w2, bias, k, k, s, pt, pl, "leaky", 0.3, None, None,
                    batchnorm_rows(rng, c), 0.3)
    assert_close(ref, got, SUM_RTOL, SUM_ATOL)
    pre = batchnorm_rows(rng, c)
    d_y, d_stats = dev(y), dev(stats)
    gpu.conv_transpose_act(d_y, dev(x), dev(w2), dev(bias), k, k, s, pt, pl, None, 1.0, None, d_stats, dev(pre), 0.3)
    cpu.conv_transpose_act(y, x, w2, bias, k, k, s, pt, pl, None, 1.0, None, stats, pre, 0.3)
    assert_close([y, stats], [d_y.copy_to_host(), d_stats.copy_to_host()], SUM_RTOL, SUM_ATOL)


@pytest.mark.parametrize("outputs", ["both", "dw", "y"])
def test_conv_gemms_read_t_through_a_batchnorm_and_sum_its_gradient(rng, monkeypatch, outputs):
    """pre: t normalised before the dw GEMMs; pre_sums (with y): the BatchNorm's backward sums of y
    against t, after the GEMMs; the CPU's results, chunk by chunk."""
    from scratchvae.kernels.cuda import convolution
    monkeypatch.setattr(convolution, "COLS_BYTES", 1)  # one image a chunk
    n, h, w, c, k, s, o = 3, 5, 4, 3, 3, 1, 4
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    wk = rng.standard_normal((k * k * c, o)).astype(F32)
    t = rng.standard_normal((n, ho, wo, o)).astype(F32)
    pre = batchnorm_rows(rng, o)
    y = None if outputs == "dw" else np.full((n, ho, wo, o), np.nan, F32)
    dw = None if outputs == "y" else np.full((k * k * c, o), np.nan, F32)
    sums = None if y is None else np.full((2, o), np.nan, F32)
    outs = [a for a in (y, dw, sums) if a is not None]
    want = [a.copy() for a in outs]
    it = iter(want)
    cpu.conv_gemms(None if y is None else next(it), None if dw is None else next(it), x, wk, t, k, k, s, pt, pl,
                   None, pre, 0.3, None if sums is None else next(it))
    d = [None if a is None else dev(a) for a in (y, dw, sums)]
    gpu.conv_gemms(d[0], d[1], dev(x), dev(wk), dev(t), k, k, s, pt, pl, None, dev(pre), 0.3, d[2])
    assert_close(want, [a.copy_to_host() for a in d if a is not None], SUM_RTOL, SUM_ATOL)


@pytest.mark.parametrize("n,i,o", [(3, 5, 70), (130, 9, 3)])  # 2 x 1 and 1 x 2 GEMM tiles
@pytest.mark.parametrize("activation", [None, "leaky", "sigmoid"])
def test_dense_act(rng, n, i, o, activation):
    x = rng.standard_normal((n, i)).astype(F32)
    w = rng.standard_normal((i, o)).astype(F32)
    bias, scale, shift = (rng.standard_normal(o).astype(F32) for _ in range(3))
    out = np.full((n, o), np.nan, F32)
    assert_close(*both("dense_act", [out], x, w, bias, scale, shift, activation, 0.3), SUM_RTOL, SUM_ATOL)


def test_fold_adjoint_weights(rng):
    """BatchNorm's per-channel affine folded into a transposed convolution's GEMM weights and bias."""
    kernel = rng.standard_normal((3, 2, 4, 5)).astype(F32)  # (kh, kw, out, in)
    bias, shift = rng.standard_normal(4).astype(F32), rng.standard_normal(4).astype(F32)
    scale = rng.uniform(0.5, 2, 4).astype(F32)
    w2, b2 = np.full((5, 3 * 2 * 4 + 2), np.nan, F32), np.full(4, np.nan, F32)
    ref, got = both("fold_adjoint_weights", [w2, b2], kernel, bias, scale, shift)
    assert_close(ref, got)
    assert not np.isnan(got[0]).any() and not got[0][:, 24:].any()  # padding columns are zeros
    with pytest.raises(ValueError, match="does not fit"):
        gpu.fold_adjoint_weights(dev(w2[:, :20]), dev(b2), dev(kernel), dev(bias), dev(scale), dev(shift))


# ---------------------------------------------------------------- whole layers through the dispatch point

def on_device(layer):
    for store in (layer.params, layer.grads, layer.state):
        for key in store:
            store[key] = gpu.from_host(store[key])
    return layer


def run_chain(backend, x, dy):
    """Conv2D(relu) -> LeakyReLU -> Flatten -> Dense -> Sigmoid, forward and backward on `backend`."""
    with kernels.using(backend):
        layers = [Conv2D(3, 4, 3, 2, activation="relu", rng=np.random.default_rng(0)), LeakyReLU(0.3),
                  Flatten(), Dense(36, 5, rng=np.random.default_rng(1)), Sigmoid()]
        move = on_device if backend == "cuda" else (lambda layer: layer)
        h = kernels.from_host(x)
        for layer in layers:
            h = move(layer).forward(h, True)
        y = kernels.to_host(h)
        g = kernels.from_host(dy.copy())  # the CPU backend would not copy, and backward works in place
        for layer in reversed(layers):
            g = layer.backward(g)
        grads = [kernels.to_host(v) for layer in layers for v in layer.grads.values()]
    return [y, *grads]


def test_layers_on_device_match_cpu(rng):
    x = rng.uniform(0, 1, (2, 6, 6, 3)).astype(F32)
    dy = rng.standard_normal((2, 5)).astype(F32)
    assert_close(run_chain("cpu", x, dy), run_chain("cuda", x, dy), SUM_RTOL, SUM_ATOL)


@pytest.mark.parametrize("which", ["conv_dx", "batchnorm"])
def test_conv_input_gradient_and_batchnorm_on_device_match_cpu(rng, which):
    x = rng.standard_normal((2, 4, 4, 3)).astype(F32)
    out = {}
    for backend in ("cpu", "cuda"):
        with kernels.using(backend):
            layer = Conv2D(3, 4, 3, 2, rng=np.random.default_rng(0)) if which == "conv_dx" else BatchNorm(3)
            if backend == "cuda":
                on_device(layer)
            y = layer.forward(kernels.from_host(x), True)
            y_host = kernels.to_host(y)
            dx = layer.backward(kernels.from_host(np.ascontiguousarray(y_host[::-1])))
            out[backend] = [y_host, kernels.to_host(dx), *(kernels.to_host(g) for g in layer.grads.values())]
    assert_close(out["cpu"], out["cuda"], SUM_RTOL, SUM_ATOL)


def adam_first_step(p, g, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adam's first step from zero moments, in float64 (scratchvae.optim's formula at t = 1)."""
    g = g.astype(np.float64)
    alpha = lr * np.sqrt(1 - beta_2) / (1 - beta_1)
    return p - alpha * (g * (1 - beta_1)) / (np.sqrt(g * g * (1 - beta_2)) + epsilon)


def test_whole_training_step_on_device_matches_cpu(rng):
    """forward_backward, Adam and a held-out evaluation of a tiny VAE: device against CPU to 1e-5.
    17 filters and a 3-channel last layer; biases that feed a BatchNorm have a zero gradient up to
    round-off, so gradients are compared against the largest gradient."""
    from scratchvae.model import VAE, VAEConfig
    from scratchvae.optim import Adam
    cfg = VAEConfig(image_size=8, channels=3, filters=17, blocks=2, z_dim=3)
    x = rng.uniform(0, 1, (2, 8, 8, 3)).astype(F32)
    eps = rng.standard_normal((2, 3)).astype(F32)
    runs = {}
    for backend in ("cpu", "cuda"):
        with kernels.using(backend):
            vae = VAE(cfg, seed=0)
            start = {k: kernels.to_host(v).copy() for k, v in vae.params().items()}
            terms = vae.forward_backward(x, eps)
            grads = {k: kernels.to_host(v) for k, v in vae.grads().items()}
            held_out = vae.evaluate(x, eps)  # inference mode, before Adam moves the round-off biases
            norm = Adam(1e-3).step(vae.params(), vae.grads())
            params = {k: kernels.to_host(v) for k, v in vae.params().items()}
            state = {k: kernels.to_host(v) for k, v in vae.state().items()}
            runs[backend] = start, terms, grads, norm, params, state, held_out
    (w0, t0, g0, n0, p0, s0, e0), (w1, t1, g1, n1, p1, s1, e1) = runs["cpu"], runs["cuda"]
    scale = max(float(np.max(np.abs(g))) for g in g0.values())
    for k in g0:
        np.testing.assert_array_equal(w1[k], w0[k], err_msg=k)
        np.testing.assert_allclose(g1[k], g0[k], rtol=0, atol=1e-5 * scale, err_msg=k)
        # Adam's first step is about lr * sign(g): where a gradient is round-off (a bias feeding a
        # BatchNorm), the two backends may step lr apart. So no room for that: each backend's step
        # must be Adam's step of its own gradients (float64 here), up to float32 rounding of p.
        for p, g in ((p0, g0), (p1, g1)):
            np.testing.assert_allclose(p[k], adam_first_step(w0[k], g[k]), rtol=2.0 ** -22, atol=1e-9, err_msg=k)
    for k in s0:
        np.testing.assert_allclose(s1[k], s0[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for k in t0:
        assert abs(t0[k] - t1[k]) <= 1e-5 * max(1.0, abs(t0[k])), (k, t0[k], t1[k])
        assert abs(e0[k] - e1[k]) <= 1e-5 * max(1.0, abs(e0[k])), (k, e0[k], e1[k])
    assert abs(n0 - n1) <= 1e-5 * n0


def test_resize_decoder_sigma_loss_and_kl_weight_on_device_match_cpu_in_float64(rng):
    """The resize decoder (UpSampling2D + Conv2D), the sigma-VAE loss (two mse_and_grad passes)
    and a KL weight on the device: float64, so the device and CPU agree to round-off (1e-12); in
    float32 a 4-filter net's BatchNorms amplify the summation order's rounding past 1e-5."""
    from scratchvae.model import VAE, VAEConfig
    cfg = VAEConfig(image_size=8, channels=3, filters=4, blocks=2, z_dim=3, decoder="resize", recon="sigma")
    x, eps = rng.uniform(0, 1, (2, 8, 8, 3)), rng.standard_normal((2, 3))
    runs = {}
    for backend in ("cpu", "cuda"):
        with kernels.using(backend):
            vae = VAE(cfg, seed=0, dtype=np.float64)
            terms = vae.forward_backward(x, eps, 0.5)
            runs[backend] = terms, {k: kernels.to_host(v) for k, v in vae.grads().items()}, vae.evaluate(x, eps)
    (t0, g0, e0), (t1, g1, e1) = runs["cpu"], runs["cuda"]
    scale = max(float(np.max(np.abs(g))) for g in g0.values())
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=0, atol=1e-12 * scale, err_msg=k)
    assert t0["reconstruction"] == pytest.approx(96 * (np.log(2 * np.pi * t0["mse"]) + 1), rel=1e-12)
    for k in t0:
        assert t1[k] == pytest.approx(t0[k], rel=1e-12, abs=1e-12) and e1[k] == pytest.approx(e0[k], rel=1e-12)


# The parent collects the test that starts the child (and the device choice); the child the rest.
for _name, _obj in list(globals().items()):
    if _name.startswith("test_") and _name != "test_device_choice" and \
            _name != "test_train_on_cuda_fails_cleanly_or_trains" and \
            (_name == "test_cuda_kernels_under_simulator") == ON_DEVICE:
        _obj.__test__ = False
