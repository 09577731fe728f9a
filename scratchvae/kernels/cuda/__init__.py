"""numba.cuda backend: the operations of kernels/ops.py on numba.cuda device arrays.

One module per operation family, each kernel beside its launcher; launch.py holds the grid helpers
and size checks. Every array stays on the device; host code only launches. Reductions are
deterministic (per-block partials, then a fixed-order sum). NUMBA_ENABLE_CUDASIM=1: numba's simulator.
"""

import numba
from numba import cuda

from scratchvae.kernels.cuda.arrays import (add, copy, empty, fill, from_host, is_device_array,  # noqa: F401
                                            may_share_memory, to_host, zeros)
from scratchvae.kernels.cuda.batchnorm import (bn_act_backward, bn_act_backward_frozen, bn_act_dx,  # noqa: F401
                                               bn_act_forward, bn_act_grad_sums, bn_forward, bn_invstd,
                                               moving_update)
from scratchvae.kernels.cuda.convolution import (col2im, conv_gemms, gather_taps, upsample_nearest,  # noqa: F401
                                                 upsample_nearest_backward)
from scratchvae.kernels.cuda.elementwise import (add_bias, leaky_backward, leaky_forward,  # noqa: F401
                                                 relu_backward, relu_forward, sigmoid_backward, sigmoid_forward)
from scratchvae.kernels.cuda.fused import (col2im_act, conv_act, conv_transpose_act, dense_act,  # noqa: F401
                                          fold_adjoint_weights)
from scratchvae.kernels.cuda.losses import kl_sum, latent_grads, mse_and_grad, reparameterize  # noqa: F401
from scratchvae.kernels.cuda.matmul import gemm  # noqa: F401
from scratchvae.kernels.cuda.optimizer import adam_update, sum_squares  # noqa: F401
from scratchvae.kernels.cuda.reductions import bn_stats, centered_sq_sums, sum_rows  # noqa: F401

name = "cuda"


def available():
    """(True, what runs) when numba.cuda sees a GPU or the simulator; else (False, why not)."""
    try:
        ok = cuda.is_available()
    except Exception as e:  # noqa: BLE001  (a broken driver or toolkit raises instead of answering)
        return False, f"numba.cuda failed to initialise: {e}"
    if not ok:
        return False, ("numba.cuda found no usable NVIDIA GPU and driver: run on a machine with one "
                       "(pip install 'scratchvae[cuda]' there), or use --device cpu")
    if numba.config.ENABLE_CUDASIM:
        return True, "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    device_name = cuda.get_current_device().name
    return True, device_name.decode() if isinstance(device_name, bytes) else str(device_name)
