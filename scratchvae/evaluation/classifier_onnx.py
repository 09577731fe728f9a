"""The attribute classifier with a hidden layer as an ONNX feature network, for `evaluate --features`.

Input `image` NHWC float32 [N, S, S, 3] in [0, 1] (fixed S, so the loader in features.py resizes
other sizes to it); outputs `features` [N, hidden] (the hidden ReLU, first, so the loader takes it)
and `logits` [N, attributes]. Inside, the graph runs NCHW (ONNX's convolution layout) and crosses
back to NHWC before Flatten so the Dense rows line up with the package's Keras-ordered flatten.
"""

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scratchvae import kernels as K
from scratchvae.geometry import same_pads

OPSET = 17
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
NOTE = ("Not Inception and not FID: a CelebA attribute network trained by scratchvae.face_features. "
        "Distances in its feature space compare only models measured with this same file.")


def build(clf, props=None):
    """An onnx.ModelProto of `clf` (a classifier.Classifier with `hidden`); `props` (str -> str) are
    added to the model's metadata beside its image size, feature width, attributes and NOTE."""
    if clf.hidden is None:
        raise ValueError("only a classifier with a hidden layer has a feature vector to export")
    p = {k: np.asarray(K.to_host(v), np.float32) for k, v in clf.params().items()}
    nodes, inits = [], []

    def const(name, a):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name))
        return name

    def node(op, inputs, name, output=None, **attrs):
        nodes.append(helper.make_node(op, inputs, [output or name], name=name, **attrs))
        return output or name

    x, size = node("Transpose", ["image"], "to_nchw", perm=TO_NCHW), clf.image_size
    for i in range(len(clf.filters)):
        name = f"conv_{i + 1}"
        size, before, after = same_pads(size, 3, 2)
        w = const(f"{name}.kernel", p[f"{name}.kernel"].transpose(3, 2, 0, 1))  # Keras (KH,KW,C,O) -> (O,C,KH,KW)
        x = node("Conv", [x, w, const(f"{name}.bias", p[f"{name}.bias"])], name, kernel_shape=[3, 3],
                 strides=[2, 2], pads=[before, before, after, after])
        x = node("Relu", [x], f"relu_{i + 1}")
    x = node("Transpose", [x], "to_nhwc", perm=TO_NHWC)
    x = node("Flatten", [x], "flatten", axis=1)
    x = node("Gemm", [x, const("hidden.kernel", p["hidden.kernel"]), const("hidden.bias", p["hidden.bias"])], "hidden")
    f = node("Relu", [x], "hidden_relu", output="features")
    node("Gemm", [f, const("logits.kernel", p["logits.kernel"]), const("logits.bias", p["logits.bias"])], "logits")
    s = clf.image_size
    graph = helper.make_graph(
        nodes, "face_features", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", s, s, clf.channels])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", clf.hidden]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(clf.attributes)])],
        initializer=inits, doc_string=NOTE)
    ops = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=ops, producer_name="scratchvae.face_features",
                              ir_version=helper.find_min_ir_version_for(ops), doc_string=NOTE)
    helper.set_model_props(model, {"image_size": str(s), "layout": "NHWC", "features": str(clf.hidden),
                                   "attributes": json.dumps(clf.attributes), "note": NOTE, **(props or {})})
    onnx.checker.check_model(model)
    return model
