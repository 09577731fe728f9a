"""Numba CPU backend: the operations of kernels/ops.py on host NumPy arrays, parallel where it pays.

One module per operation family, each kernel beside its launcher; schedule.py splits the fused
inference work across cores, jit.py holds the compile flags. Small or NumPy-bound operations reuse
the reference code. Outputs first, then inputs, then scalars (cast to the array dtype).
"""

from scratchvae.kernels.cpu.arrays import (add, copy, empty, fill, from_host, is_device_array,  # noqa: F401
                                           may_share_memory, to_host, zeros)
from scratchvae.kernels.cpu.batchnorm import (bn_act_backward, bn_act_backward_frozen, bn_act_dx,  # noqa: F401
                                              bn_act_forward, bn_act_grad_sums, bn_forward, bn_invstd,
                                              moving_update)
from scratchvae.kernels.cpu.convolution import (col2im, conv_gemms, gather_taps, upsample_nearest,  # noqa: F401
                                                upsample_nearest_backward)
from scratchvae.kernels.cpu.elementwise import (add_bias, leaky_backward, leaky_forward,  # noqa: F401
                                                relu_backward, relu_forward, sigmoid_backward, sigmoid_forward)
from scratchvae.kernels.cpu.fused import (col2im_act, conv_act, conv_transpose_act, dense_act,  # noqa: F401
                                         fold_adjoint_weights)
from scratchvae.kernels.cpu.losses import kl_sum, latent_grads, mse_and_grad, reparameterize  # noqa: F401
from scratchvae.kernels.cpu.matmul import gemm  # noqa: F401
from scratchvae.kernels.cpu.optimizer import adam_update, sum_squares  # noqa: F401
from scratchvae.kernels.cpu.reductions import bn_stats, centered_sq_sums, sum_rows  # noqa: F401

name = "cpu"
