"""Measures of a trained VAE's quality, used by `python -m scratchvae.evaluate`.

pixels: per-image measures on NHWC float images in [0, 1] (SSIM, blur, checkerboard); distances:
Fréchet distance and KID between feature sets; features: an ONNX network as feature extractor;
source: which images a checkpoint is evaluated on; measure: the passes; report: table, JSON, pictures.
"""
