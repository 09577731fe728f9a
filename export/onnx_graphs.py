"""The VAE's encoder and decoder as ONNX graphs, built node by node from checkpoint tensors.

The graphs walk the same layer specs as the model (scratchvae/architecture.py), and fold each
inference BatchNorm into the layer before it with the model's own formulas (scratchvae/folding.py).
Inputs and outputs are NHWC like the model; inside, the graph runs NCHW (ONNX's layout) with one
Transpose at each edge and weights permuted at export. TF 'same' padding becomes explicit `pads`.
Only onnx, numpy and the plain-data modules are imported here, so the builders work without Numba.
"""

import json
from importlib import metadata

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scratchvae import architecture
from scratchvae.architecture import VAEConfig
from scratchvae.folding import batchnorm_affine, fold_affine
from scratchvae.geometry import same_pads, transpose_geometry

__all__ = ["build_encoder", "build_decoder", "same_pads", "transpose_geometry", "MIN_OPSET"]

PRODUCER = "scratchvae"
MIN_OPSET = 17
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
BN_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")


def normalize_config(config):
    """A VAEConfig from a VAEConfig or its dict (as stored in checkpoint metadata)."""
    if isinstance(config, VAEConfig):
        return config
    try:
        return VAEConfig.from_dict(dict(config))
    except (TypeError, ValueError) as e:
        raise ValueError(f"not a scratchvae VAEConfig: {e}") from None


def dotted_tensors(arrays):
    """Checkpoint arrays ('param/<dotted>', 'state/<dotted>') or plain dotted names -> {dotted: array}."""
    out = {}
    for name, a in arrays.items():
        for prefix in ("param/", "state/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = a
    return out


class _Builder:
    """Collects nodes and float32 initializers; every tensor is checked finite on the way in."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.nodes, self.inits = [], []
        self.folded = 0  # BatchNorms folded into the layer before them

    def get(self, name, shape):
        if name not in self.tensors:
            raise ValueError(f"tensor {name} is missing")
        a = np.asarray(self.tensors[name], dtype=np.float64)
        if a.shape != tuple(shape):
            raise ValueError(f"tensor {name} has shape {a.shape}, expected {tuple(shape)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"tensor {name} has non-finite values (NaN or Inf): refusing to export")
        if name.endswith("moving_variance") and np.any(a < 0):
            raise ValueError(f"tensor {name} has negative variances: refusing to export")
        return a

    def const(self, name, a, dtype=np.float32):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(a, dtype=dtype), name))
        return name

    def node(self, op, inputs, name, output=None, **attrs):
        output = output or name
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def bn_stats(self, prefix, n):
        """(gamma, beta, moving_mean, moving_variance) as float64 for folding or as initializers."""
        return [self.get(f"{prefix}.{k}", (n,)) for k in ("gamma", "beta", "moving_mean", "moving_variance")]

    def batchnorm(self, x, prefix, n, eps):
        stats = self.bn_stats(prefix, n)
        names = [self.const(f"{prefix}.{k}", a)
                 for k, a in zip(("gamma", "beta", "moving_mean", "moving_variance"), stats)]
        return self.node("BatchNormalization", [x] + names, prefix, epsilon=float(eps))


def _finish(b, name, inputs, outputs, cfg, meta, opset, folded, doc):
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset {opset} is not supported: use {MIN_OPSET} to {onnx.defs.onnx_opset_version()}")
    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.inits, doc_string=doc)
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops, producer_name=PRODUCER,
                              ir_version=helper.find_min_ir_version_for(ops), doc_string=doc)
    from_meta = meta or {}
    props = {"config": json.dumps(cfg.to_dict(), sort_keys=True), "part": name,
             "epoch": str(int(from_meta.get("epoch", 0))), "step": str(int(from_meta.get("step", 0))),
             "layout": "NHWC", "bn_folded": str(bool(folded)).lower()}
    helper.set_model_props(model, props)
    model.producer_version = _version()
    return model


def _version():
    try:
        return metadata.version("scratchvae")
    except metadata.PackageNotFoundError:  # run from a bare checkout: the graph is the same, the label vaguer
        return "unknown"


def build_encoder(arrays, config, fold=True, opset=MIN_OPSET, meta=None):
    """Encoder: `image` (N, H, W, C) in [0, 1] -> `z_mean`, `z_log_var` (N, z_dim).

    Conv -> ReLU -> BN -> LeakyReLU per block. The ReLU sits between Conv and BN, so BN cannot fold
    into the Conv exactly and stays a BatchNormalization node (it folds only when there is no ReLU).
    """
    cfg = normalize_config(config)
    b = _Builder(dotted_tensors(arrays))
    (_, _, specs), _ = architecture.parts(cfg)
    trunk = [(spec, shape) for spec, shape in specs if spec.name not in ("z_mean", "z_log_var")]
    heads = [(spec, shape) for spec, shape in specs if spec.name in ("z_mean", "z_log_var")]
    x = b.node("Transpose", ["image"], "encoder.to_nchw", perm=TO_NCHW)
    x = _walk(b, "encoder", trunk, x, cfg, fold)
    for spec, shape in heads:
        _walk(b, "encoder", [(spec, shape)], x, cfg, fold, output=spec.name)
    n, z = cfg.image_size, cfg.z_dim
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", n, n, cfg.channels])]
    outputs = [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["N", z]) for h in ("z_mean", "z_log_var")]
    return _finish(b, "encoder", inputs, outputs, cfg, meta, opset, b.folded > 0,
                   "scratchvae encoder: image NHWC float32 in [0, 1] -> z_mean, z_log_var")


def build_decoder(arrays, config, fold=True, opset=MIN_OPSET, meta=None):
    """Decoder: `z` (N, z_dim) -> `image` (N, H, W, C) in [0, 1].

    With `fold`, each inference BatchNorm merges into the Dense or ConvTranspose before it (nothing
    non-linear sits between them); without it, BatchNormalization nodes remain.
    """
    cfg = normalize_config(config)
    b = _Builder(dotted_tensors(arrays))
    _, (_, _, specs) = architecture.parts(cfg)
    x = _walk(b, "decoder", specs, "z", cfg, fold)
    b.node("Transpose", [x], "decoder.to_nhwc", output="image", perm=TO_NHWC)
    n = cfg.image_size
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", cfg.z_dim])]
    outputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", n, n, cfg.channels])]
    return _finish(b, "decoder", inputs, outputs, cfg, meta, opset, fold,
                   "scratchvae decoder: z float32 -> image NHWC float32 in [0, 1]")


def _walk(b, part, specs, x, cfg, fold, output=None):
    """Nodes for a list of (spec, per-sample input shape) from tensor `x`; returns the last output.
    4-D tensors run NCHW inside the graph; Flatten and Reshape cross back to Keras' NHWC order."""
    i, last = 0, None
    while i < len(specs):
        spec, shape = specs[i]
        following = specs[i + 1][0] if i + 1 < len(specs) else None
        name, a = f"{part}.{spec.name}", spec.args
        out = output if i == len(specs) - 1 else None
        if spec.kind in ("Conv2D", "Conv2DTranspose", "Dense"):
            w, bias, axis = _weights(b, name, spec)
            if fold and following is not None and following.kind == "BatchNormalization" \
                    and a.get("activation") is None:
                stats = b.bn_stats(f"{part}.{following.name}", following.args["features"])
                w, bias = fold_affine(w, bias, *batchnorm_affine(*stats, following.args["epsilon"]), axis=axis)
                name = f"{name}+{following.name}"
                b.folded += 1
                i += 1
                out = output if i == len(specs) - 1 else None
            inputs = [x, b.const(f"{name}.kernel", w), b.const(f"{name}.bias", bias)]
            if spec.kind == "Dense":
                x = b.node("Gemm", inputs, name, output=out)
            else:
                x = _conv_node(b, spec, shape, inputs, name, out)
            if a.get("activation") == "relu":
                x = b.node("Relu", [x], f"{part}.{spec.name.replace('conv', 'relu')}")
        elif spec.kind == "BatchNormalization":
            x = b.batchnorm(x, name, a["features"], a["epsilon"])
        elif spec.kind == "LeakyReLU":
            x = b.node("LeakyRelu", [x], name, alpha=float(a["alpha"]))
        elif spec.kind == "Sigmoid":
            x = b.node("Sigmoid", [x], name)
        elif spec.kind == "UpSampling2D":
            # Keras' nearest upsampling: output pixel (i, j) reads input (floor(i / 2), floor(j / 2)).
            scales = b.const(f"{name}.scales", [1.0, 1.0, a["size"], a["size"]])
            x = b.node("Resize", [x, "", scales], name, mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        elif spec.kind == "Flatten":
            # Keras flattens NHWC as (H, W, C): back to NHWC first so the Dense rows line up.
            x = b.node("Transpose", [x], f"{part}.to_nhwc", perm=TO_NHWC)
            x = b.node("Flatten", [x], name, axis=1)
        elif spec.kind == "Reshape":
            # The features are Keras-ordered (H, W, C): reshape to NHWC, then transpose to NCHW.
            target = b.const(f"{name}.shape", [-1, *a["target_shape"]], dtype=np.int64)
            x = b.node("Reshape", [x, target], name)
            x = b.node("Transpose", [x], f"{part}.to_nchw", perm=TO_NCHW)
        else:
            raise ValueError(f"{name}: no ONNX mapping for layer kind {spec.kind!r}")
        i += 1
        last = x
    return last


def _weights(b, name, spec):
    """(kernel in ONNX layout, bias, the kernel's output axis) of a Conv, ConvTranspose or Dense."""
    shapes = architecture.param_shapes(spec)
    w, bias = b.get(f"{name}.kernel", shapes["kernel"]), b.get(f"{name}.bias", shapes["bias"])
    if spec.kind == "Conv2D":
        return w.transpose(3, 2, 0, 1), bias, 0  # Keras (KH,KW,C,O) -> ONNX (O,C,KH,KW)
    if spec.kind == "Conv2DTranspose":
        return w.transpose(3, 2, 0, 1), bias, 1  # Keras (KH,KW,O,C) -> ONNX (C,O,KH,KW)
    return w, bias, 1


def _conv_node(b, spec, shape, inputs, name, output):
    """A Conv or ConvTranspose node with TF 'same' geometry made explicit."""
    k, stride, size = spec.args["kernel_size"], spec.args["strides"], shape[0]
    attrs = {"kernel_shape": [k, k], "strides": [stride, stride]}
    if spec.kind == "Conv2D":
        _, before, after = same_pads(size, k, stride)
        return b.node("Conv", inputs, name, output, pads=[before, before, after, after], **attrs)
    before, after, extra = transpose_geometry(size, k, stride)
    if extra:
        attrs["output_padding"] = [extra, extra]
    return b.node("ConvTranspose", inputs, name, output, pads=[before, before, after, after], **attrs)
