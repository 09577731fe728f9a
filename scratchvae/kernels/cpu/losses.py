"""The VAE's loss terms on the CPU: squared error with its gradient, KL, reparameterisation.

They touch a batch of latents or one pass over the images, which NumPy does at memory speed:
the reference code is the CPU code, re-exported here so the family has one home in each backend.
"""

from scratchvae.kernels.reference import kl_sum, latent_grads, mse_and_grad, reparameterize  # noqa: F401
