"""An ONNX network as a feature extractor for the Fréchet distance and KID (onnxruntime only).

The layout and size come from the network's first input: a dimension of 3 at position 1 is NCHW,
at the end NHWC; fixed H and W mean the images are resized to them with Pillow's bicubic filter,
symbolic ones keep the images' size. Images go in as float in [0, 1]; the first output, flattened
per image, is the feature vector.
"""

import os

import numpy as np
from PIL import Image

from scratchvae.run.errors import UserError

FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _fixed(d):
    """A dimension as an int when the model fixes it, else None (a name such as 'batch', or None)."""
    return d if isinstance(d, int) and d > 0 else None


def read_layout(shape):
    """('NCHW' or 'NHWC', (H, W) or None, fixed batch or None) from an ONNX input shape; ValueError
    naming the problem when the shape is not a batch of RGB images."""
    if shape is None or len(shape) != 4:
        raise ValueError(f"its input has shape {shape}, not a 4-D batch of images (N, 3, H, W) or (N, H, W, 3)")
    dims = [_fixed(d) for d in shape]
    first, last = dims[1] == 3, dims[3] == 3
    if first == last:
        raise ValueError(f"its input shape {list(shape)} has no single channel dimension of 3 "
                         f"(at position 1 for NCHW or last for NHWC)")
    layout = "NCHW" if first else "NHWC"
    h, w = (dims[2], dims[3]) if first else (dims[1], dims[2])
    if (h is None) != (w is None):
        raise ValueError(f"its input shape {list(shape)} fixes only one of height and width")
    return layout, (None if h is None else (h, w)), dims[0]


def resize_bicubic(x, size):
    """(N, H, W, C) float images resized to size = (h, w) with Pillow's BICUBIC, channel by channel
    in float ('F' mode, no rounding to 8 bits), clipped back to [0, 1]."""
    h, w = size
    out = np.empty((len(x), h, w, x.shape[3]), np.float32)
    for i in range(len(x)):
        for c in range(x.shape[3]):
            plane = Image.fromarray(np.ascontiguousarray(x[i, :, :, c], dtype=np.float32))
            out[i, :, :, c] = np.asarray(plane.resize((w, h), Image.BICUBIC))
    return np.clip(out, 0.0, 1.0, out=out)


class FeatureModel:
    """features(images (N, H, W, 3) float in [0, 1]) -> (N, D) float64."""

    def __init__(self, path, threads=None):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise UserError(f"--features {self.path}: no such file; give an ONNX network that maps images to "
                            f"feature vectors (see docs/EVALUATE.md)")
        try:
            import onnxruntime as ort
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
            options.log_severity_level = 3  # our one-line error says what is wrong; no runtime log spam
            self.runner = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds for every damage
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"--features {self.path} does not load as an ONNX model ({first[:200]}); "
                            f"give a valid .onnx file") from None
        inputs = self.runner.get_inputs()
        if len(inputs) != 1:
            raise UserError(f"--features {self.path} has {len(inputs)} inputs; a feature network takes one "
                            f"batch of images")
        self.input = inputs[0]
        if self.input.type not in FLOAT_TYPES:
            raise UserError(f"--features {self.path}: its input is {self.input.type}, not a float tensor of images")
        try:
            self.layout, self.size, self.batch = read_layout(self.input.shape)
        except ValueError as e:
            raise UserError(f"--features {self.path}: {e}; it has no usable image input") from None
        self.dtype = FLOAT_TYPES[self.input.type]
        self.output = self.runner.get_outputs()[0].name

    def describe(self):
        size = "any size" if self.size is None else f"{self.size[0]}x{self.size[1]} (bicubic resize)"
        return f"{os.path.basename(self.path)}: {self.layout}, {size}"

    def __call__(self, x):
        x = np.asarray(x, np.float32)
        if self.size is not None and tuple(x.shape[1:3]) != tuple(self.size):
            x = resize_bicubic(x, self.size)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x, dtype=self.dtype)
        step = self.batch or len(x)
        parts = []
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            n = len(chunk)
            if self.batch and n < self.batch:  # a fixed batch: pad with copies of the last image
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - n, axis=0)])
            try:
                y = self.runner.run([self.output], {self.input.name: chunk})[0]
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"--features {self.path} fails on images of shape {chunk.shape} "
                                f"({first[:200]})") from None
            y = np.asarray(y, np.float64)
            if y.ndim == 0 or y.shape[0] != len(chunk):
                raise UserError(f"--features {self.path}: its first output has shape {y.shape}, not one "
                                f"feature vector per image of the {len(chunk)} given")
            y = y.reshape(len(chunk), -1)[:n]
            parts.append(y)
        f = np.concatenate(parts)
        if not np.isfinite(f).all():
            raise UserError(f"--features {self.path} gives non-finite features; check the network")
        return f
