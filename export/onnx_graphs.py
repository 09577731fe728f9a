"""The VAE's encoder and decoder as ONNX graphs, built node by node from checkpoint tensors.

Inputs and outputs are NHWC like the model; inside, the graph runs NCHW (ONNX's layout) with one
Transpose at each edge and weights permuted at export. TF 'same' padding becomes explicit `pads`.
Only onnx and numpy are imported here, so the builders work without Numba.
"""

import json
from importlib import metadata

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRODUCER = "scratchvae"
MIN_OPSET = 17
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
CONFIG_FIELDS = ("image_size", "channels", "filters", "blocks", "z_dim", "leaky_alpha",
                 "encoder_activation", "bn_epsilon")


def same_pads(size, kernel, stride):
    """TF 'same' for a convolution over `size`: (output size, pad before, pad after); the odd one goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def transpose_geometry(size, kernel, stride):
    """(pad before, pad after, output_padding) making ONNX ConvTranspose the adjoint of Conv 'same' on size*stride.

    ONNX: out = stride*(size-1) + output_padding + kernel - before - after. Taking the forward conv's
    pads puts every tap where the adjoint puts it; output_padding only makes up what TF's clamp at 0 cut off.
    """
    big = size * stride
    _, before, after = same_pads(big, kernel, stride)
    extra = big - (stride * (size - 1) + kernel - before - after)
    assert 0 <= extra < stride, (size, kernel, stride)
    return before, after, extra


def normalize_config(config):
    """The fields the graphs need, from a VAEConfig or its dict (as stored in checkpoint metadata)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    missing = [f for f in CONFIG_FIELDS if f not in d]
    if missing:
        raise ValueError(f"config lacks {', '.join(missing)}: not a scratchvae VAEConfig")
    return d


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


def fold_bn(kernel, bias, stats, eps, axis):
    """Kernel and bias of `layer -> BN(inference)` as one layer: scale the output axis, shift the bias."""
    gamma, beta, mean, var = stats
    scale = gamma / np.sqrt(var + eps)
    shape = [1] * kernel.ndim
    shape[axis] = -1
    return kernel * scale.reshape(shape), (bias - mean) * scale + beta


def _finish(b, name, inputs, outputs, cfg, meta, opset, folded, doc):
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset {opset} is not supported: use {MIN_OPSET} to {onnx.defs.onnx_opset_version()}")
    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.inits, doc_string=doc)
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops, producer_name=PRODUCER,
                              ir_version=helper.find_min_ir_version_for(ops), doc_string=doc)
    from_meta = meta or {}
    props = {"config": json.dumps(cfg, sort_keys=True), "part": name,
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
    size, c, f, k = cfg["image_size"], cfg["channels"], cfg["filters"], 3
    relu = cfg["encoder_activation"] == "relu"
    folds = fold and not relu
    x = b.node("Transpose", ["image"], "encoder.to_nchw", perm=TO_NCHW)
    for i in range(1, cfg["blocks"] + 1):
        conv, bn = f"encoder.conv_{i}", f"encoder.bn_{i}"
        size, before, after = same_pads(size, k, 2)
        w = b.get(f"{conv}.kernel", (k, k, c, f)).transpose(3, 2, 0, 1)  # Keras (KH,KW,C,O) -> ONNX (O,C,KH,KW)
        bias = b.get(f"{conv}.bias", (f,))
        if folds:
            w, bias = fold_bn(w, bias, b.bn_stats(bn, f), cfg["bn_epsilon"], axis=0)
            conv = f"{conv}+bn_{i}"
        x = b.node("Conv", [x, b.const(f"{conv}.kernel", w), b.const(f"{conv}.bias", bias)], conv,
                   kernel_shape=[k, k], strides=[2, 2], pads=[before, before, after, after])
        if relu:
            x = b.node("Relu", [x], f"encoder.relu_{i}")
        if not folds:
            x = b.batchnorm(x, bn, f, cfg["bn_epsilon"])
        x = b.node("LeakyRelu", [x], f"encoder.leaky_{i}", alpha=float(cfg["leaky_alpha"]))
        c = f
    # Keras flattens NHWC as (H, W, C): go back to NHWC before Flatten so the Dense rows line up.
    x = b.node("Transpose", [x], "encoder.to_nhwc", perm=TO_NHWC)
    x = b.node("Flatten", [x], "encoder.flatten", axis=1)
    flat, z = size * size * f, cfg["z_dim"]
    for head in ("z_mean", "z_log_var"):
        p = f"encoder.{head}"
        b.node("Gemm", [x, b.const(f"{p}.kernel", b.get(f"{p}.kernel", (flat, z))),
                        b.const(f"{p}.bias", b.get(f"{p}.bias", (z,)))], p, output=head)
    n = cfg["image_size"]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", n, n, cfg["channels"]])]
    outputs = [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["N", z]) for h in ("z_mean", "z_log_var")]
    return _finish(b, "encoder", inputs, outputs, cfg, meta, opset, folds,
                   "scratchvae encoder: image NHWC float32 in [0, 1] -> z_mean, z_log_var")


def build_decoder(arrays, config, fold=True, opset=MIN_OPSET, meta=None):
    """Decoder: `z` (N, z_dim) -> `image` (N, H, W, C) in [0, 1].

    With `fold`, each inference BatchNorm merges into the Dense or ConvTranspose before it (nothing
    non-linear sits between them); without it, BatchNormalization nodes remain.
    """
    cfg = normalize_config(config)
    b = _Builder(dotted_tensors(arrays))
    s, f, z, k, eps = cfg["image_size"] >> cfg["blocks"], cfg["filters"], cfg["z_dim"], 3, cfg["bn_epsilon"]
    alpha = float(cfg["leaky_alpha"])
    units = s * s * f
    w, bias = b.get("decoder.dense.kernel", (z, units)), b.get("decoder.dense.bias", (units,))
    name = "decoder.dense"
    if fold:
        w, bias = fold_bn(w, bias, b.bn_stats("decoder.bn_0", units), eps, axis=1)
        name = "decoder.dense+bn_0"
    x = b.node("Gemm", ["z", b.const(f"{name}.kernel", w), b.const(f"{name}.bias", bias)], name)
    if not fold:
        x = b.batchnorm(x, "decoder.bn_0", units, eps)  # (N, C) input: BN over features
    x = b.node("LeakyRelu", [x], "decoder.leaky_0", alpha=alpha)
    # The 8192 features are Keras-ordered (H, W, C): reshape to NHWC, then transpose to NCHW.
    shape = b.const("decoder.reshape.shape", [-1, s, s, f], dtype=np.int64)
    x = b.node("Reshape", [x, shape], "decoder.reshape")
    x = b.node("Transpose", [x], "decoder.to_nchw", perm=TO_NCHW)
    layers = [(f"decoder.conv_t_{i}", f"decoder.bn_{i}", f"decoder.leaky_{i}", f, 2)
              for i in range(1, cfg["blocks"] + 1)]
    layers.append(("decoder.conv_t_out", None, None, cfg["channels"], 1))
    c = f
    for conv, bn, leaky, out, stride in layers:
        before, after, extra = transpose_geometry(s, k, stride)
        w = b.get(f"{conv}.kernel", (k, k, out, c)).transpose(3, 2, 0, 1)  # Keras (KH,KW,O,C) -> ONNX (C,O,KH,KW)
        bias = b.get(f"{conv}.bias", (out,))
        if bn and fold:
            w, bias = fold_bn(w, bias, b.bn_stats(bn, out), eps, axis=1)
            conv = conv + "+" + bn.split(".")[-1]
        attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [before, before, after, after]}
        if extra:
            attrs["output_padding"] = [extra, extra]
        x = b.node("ConvTranspose", [x, b.const(f"{conv}.kernel", w), b.const(f"{conv}.bias", bias)], conv, **attrs)
        if bn and not fold:
            x = b.batchnorm(x, bn, out, eps)
        if leaky:
            x = b.node("LeakyRelu", [x], leaky, alpha=alpha)
        s, c = s * stride, out
    x = b.node("Sigmoid", [x], "decoder.sigmoid")
    b.node("Transpose", [x], "decoder.to_nhwc", output="image", perm=TO_NHWC)
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", z])]
    outputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", s, s, cfg["channels"]])]
    return _finish(b, "decoder", inputs, outputs, cfg, meta, opset, fold,
                   "scratchvae decoder: z float32 -> image NHWC float32 in [0, 1]")
