"""Hand-written layers with manual backprop (NHWC, Keras names and semantics)."""

from scratchvae.geometry import same_padding
from scratchvae.layers.activations import LeakyReLU, ReLU, Sigmoid
from scratchvae.layers.base import Layer
from scratchvae.layers.conv import Conv2D, Conv2DTranspose
from scratchvae.layers.dense import Dense
from scratchvae.layers.norm import BatchNorm, BatchNormLeakyReLU, DeferredNorm
from scratchvae.layers.resample import UpSampling2D
from scratchvae.layers.shape import Flatten, Reshape

__all__ = ["Layer", "Conv2D", "Conv2DTranspose", "BatchNorm", "BatchNormLeakyReLU", "DeferredNorm", "LeakyReLU", "ReLU",
           "Sigmoid", "Dense", "Flatten", "Reshape", "UpSampling2D", "same_padding"]
