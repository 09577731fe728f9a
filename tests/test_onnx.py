"""ONNX export and sampling: onnxruntime and the reference evaluator against our own inference.

One test per export pitfall (TF 'same' pads, LeakyReLU alpha / BN epsilon, Keras flatten order,
BN folding), the CLI's one-line errors, and sample.py's PNGs without Numba or scratchvae.
"""

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from PIL import Image

from scratchvae import latent
from scratchvae.layers import Conv2DTranspose
from scratchvae.model import VAE, VAEConfig
from scratchvae.optim import Adam

EXPORT = Path(__file__).resolve().parents[1] / "export"
if str(EXPORT) not in sys.path:
    sys.path.insert(0, str(EXPORT))
import onnx_graphs  # noqa: E402
import pictures  # noqa: E402
import sample  # noqa: E402
import to_onnx  # noqa: E402
from tests.hang import HANG_S

SMALL = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4)
RESIZE = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4, decoder="resize", recon="sigma")
TOL = 1e-4


def trained_vae(cfg, batch, steps, seed=0):
    vae = VAE(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    opt = Adam()
    for _ in range(steps):
        x = rng.uniform(0, 1, (batch, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
        vae.forward_backward(x, rng.standard_normal((batch, cfg.z_dim)).astype(np.float32))
        opt.step(vae.params(), vae.grads())
    # A few steps at momentum 0.99 move the BN statistics only ~1% off init: spread them further so
    # a wrong mean, variance, epsilon or folding axis cannot hide under the tolerance.
    for name, a in {**vae.params(), **vae.state()}.items():
        if name.endswith("moving_mean") or name.endswith("beta"):
            a += rng.normal(0, 0.3, a.shape).astype(a.dtype)
        elif name.endswith("moving_variance") or name.endswith("gamma"):
            a *= rng.uniform(0.5, 2.0, a.shape).astype(a.dtype)
    return vae


def export_both(vae, tmp, meta=None):
    ckpt = tmp / "checkpoint.npz"
    vae.save(ckpt, meta=meta)
    for flag, sub in (([], "folded"), (["--no-fold"], "unfolded")):
        assert to_onnx.main([str(ckpt), "--out", str(tmp / sub)] + flag) == 0
    return types.SimpleNamespace(vae=vae, ckpt=ckpt, folded=tmp / "folded", unfolded=tmp / "unfolded")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return export_both(trained_vae(SMALL, 4, 3), tmp_path_factory.mktemp("small"), {"epoch": 3, "step": 42})


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    return export_both(trained_vae(VAEConfig(), 4, 2), tmp_path_factory.mktemp("default"))


def runner(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def inputs(cfg, n, seed=7):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
    return x, rng.standard_normal((n, cfg.z_dim)).astype(np.float32)


def max_err(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


def assert_parity(run_encoder, run_decoder, vae, n):
    x, z = inputs(vae.config, n)
    z_mean, z_log_var = run_encoder(x)
    ours_mean, ours_log_var = vae.encode(x, training=False)
    assert max_err(z_mean, ours_mean) < TOL
    assert max_err(z_log_var, ours_log_var) < TOL
    assert max_err(run_decoder(z), vae.decode(z, training=False)) < TOL


def ort_runners(folder):
    enc, dec = runner(folder / "encoder.onnx"), runner(folder / "decoder.onnx")
    return (lambda x: enc.run(["z_mean", "z_log_var"], {"image": x}),
            lambda z: dec.run(["image"], {"z": z})[0])


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("variant", ["folded", "unfolded"])
def test_small_parity_onnxruntime(small, variant, n):
    assert_parity(*ort_runners(getattr(small, variant)), small.vae, n)


def test_default_parity_onnxruntime(default):
    runners = {v: ort_runners(getattr(default, v)) for v in ("folded", "unfolded")}
    for n in (1, 3):
        for enc, dec in runners.values():
            assert_parity(enc, dec, default.vae, n)
        _, z = inputs(default.vae.config, n, seed=11)
        assert max_err(runners["folded"][1](z), runners["unfolded"][1](z)) < TOL


@pytest.mark.parametrize("variant", ["folded", "unfolded"])
def test_small_parity_reference_evaluator(small, variant):
    folder = getattr(small, variant)
    enc = ReferenceEvaluator(onnx.load(folder / "encoder.onnx"))
    dec = ReferenceEvaluator(onnx.load(folder / "decoder.onnx"))
    assert_parity(lambda x: enc.run(None, {"image": x}), lambda z: dec.run(None, {"z": z})[0], small.vae, 3)


@pytest.fixture(scope="module")
def resize(tmp_path_factory):
    return export_both(trained_vae(RESIZE, 4, 3), tmp_path_factory.mktemp("resize"))


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("variant", ["folded", "unfolded"])
def test_resize_decoder_parity_onnxruntime(resize, variant, n):
    """decoder="resize": each UpSampling2D is a Resize (nearest, asymmetric, floor) and the Conv2D
    after it a Conv with its BatchNorm folded in (or a BatchNormalization node, unfolded)."""
    assert_parity(*ort_runners(getattr(resize, variant)), resize.vae, n)
    graph = onnx.load(getattr(resize, variant) / "decoder.onnx").graph
    resizes = [node for node in graph.node if node.op_type == "Resize"]
    assert len(resizes) == RESIZE.blocks and "ConvTranspose" in [node.op_type for node in graph.node]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resizes[0].attribute}
    assert attrs == {"mode": b"nearest", "coordinate_transformation_mode": b"asymmetric", "nearest_mode": b"floor"}
    folded = sum(node.op_type == "BatchNormalization" for node in graph.node) == 0
    assert folded == (variant == "folded")


def test_resize_decoder_parity_reference_evaluator(resize):
    dec = ReferenceEvaluator(onnx.load(resize.folded / "decoder.onnx"))
    _, z = inputs(RESIZE, 3)
    assert max_err(dec.run(None, {"z": z})[0], resize.vae.decode(z, training=False)) < TOL


def ops(path):
    return [node.op_type for node in onnx.load(path).graph.node]


def test_folding_removes_decoder_batchnorms_only_and_agrees(small):
    blocks = SMALL.blocks
    assert ops(small.folded / "decoder.onnx").count("BatchNormalization") == 0
    assert ops(small.unfolded / "decoder.onnx").count("BatchNormalization") == blocks + 1
    # The encoder's ReLU sits between Conv and BN, so its BNs must survive folding.
    assert ops(small.folded / "encoder.onnx").count("BatchNormalization") == blocks
    x, z = inputs(SMALL, 4)
    (fe, fd), (ue, ud) = ort_runners(small.folded), ort_runners(small.unfolded)
    assert max_err(fd(z), ud(z)) < 1e-5
    for a, b in zip(fe(x), ue(x)):
        assert max_err(a, b) < 1e-6


def test_encoder_without_relu_folds_exactly():
    cfg = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4, encoder_activation=None)
    vae = trained_vae(cfg, 4, 1)
    tensors = {**vae.params(), **vae.state()}
    model = onnx_graphs.build_encoder(tensors, cfg, fold=True)
    assert "BatchNormalization" not in [n.op_type for n in model.graph.node]
    enc = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(onnx_graphs.build_decoder(tensors, cfg).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    assert_parity(lambda x: enc.run(None, {"image": x}), lambda z: dec.run(None, {"z": z})[0], vae, 2)


def test_tf_same_pads_are_explicit(default):
    paths = [d / f"{part}.onnx" for d in (default.folded, default.unfolded) for part in ("encoder", "decoder")]
    for path in paths:
        for node in onnx.load(path).graph.node:
            if node.op_type not in ("Conv", "ConvTranspose"):
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert "auto_pad" not in attrs, node.name
            assert "output_padding" not in attrs, node.name
            if attrs["strides"] == [2, 2]:  # even sizes: 0 before, 1 after, as TF puts it
                assert attrs["pads"] == [0, 0, 1, 1], node.name
            else:
                assert node.name == "decoder.conv_t_out" and attrs["pads"] == [1, 1, 1, 1]


def one_conv_transpose(kernel, stride, size):
    """A one-node ONNX ConvTranspose from a Keras (KH, KW, O, C) kernel, geometry from the exporter."""
    k, _, o, c = kernel.shape
    before, after, extra = onnx_graphs.transpose_geometry(size, k, stride)
    attrs = {"kernel_shape": [k, k], "strides": [stride] * 2, "pads": [before, before, after, after]}
    if extra:
        attrs["output_padding"] = [extra, extra]
    w = numpy_helper.from_array(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), "w")
    graph = helper.make_graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    return ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                  ir_version=8).SerializeToString(),
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("size,k,stride", [(4, 3, 2), (5, 3, 2), (5, 3, 1), (4, 5, 2), (3, 1, 2)])
def test_conv_transpose_geometry_matches_our_layer(size, k, stride):
    # Odd sizes, bigger kernels and k < stride (TF clamps the padding at 0: output_padding makes it up).
    rng = np.random.default_rng(size * 10 + k)
    layer = Conv2DTranspose(3, 2, k, stride, rng=rng)
    x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    ours = layer.forward(x, training=False)
    onnx_y = one_conv_transpose(layer.params["kernel"], stride, size).run(None, {"x": x.transpose(0, 3, 1, 2)})[0]
    assert max_err(onnx_y.transpose(0, 2, 3, 1), ours) < 1e-5


def node_attrs(path, op, name):
    return [helper.get_attribute_value(a) for n in onnx.load(path).graph.node if n.op_type == op
            for a in n.attribute if a.name == name]


@pytest.mark.parametrize("alpha,eps", [(0.3, 1e-3), (0.1, 1e-2)])
def test_leaky_alpha_and_bn_epsilon_come_from_config(tmp_path, alpha, eps):
    cfg = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4, leaky_alpha=alpha, bn_epsilon=eps)
    vae = trained_vae(cfg, 2, 0)
    out = export_both(vae, tmp_path)
    for part, leakies, bns in (("encoder", 2, 2), ("decoder", 3, 3)):
        path = out.unfolded / f"{part}.onnx"
        assert node_attrs(path, "LeakyRelu", "alpha") == pytest.approx([alpha] * leakies, rel=1e-7)
        assert node_attrs(path, "BatchNormalization", "epsilon") == pytest.approx([eps] * bns, rel=1e-7)
    assert_parity(*ort_runners(out.unfolded), vae, 2)
    assert_parity(*ort_runners(out.folded), vae, 2)


def test_encoder_flattens_in_keras_order():
    vae = trained_vae(SMALL, 4, 0, seed=5)
    s, f = SMALL.bottleneck, SMALL.filters
    h, w, c = 1, 0, 5
    kernel = vae.params()["encoder.z_mean.kernel"]
    kernel[...] = 0
    kernel[np.ravel_multi_index((h, w, c), (s, s, f)), 0] = 1
    vae.params()["encoder.z_mean.bias"][...] = 0
    enc = ort.InferenceSession(onnx_graphs.build_encoder({**vae.params(), **vae.state()}, SMALL).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    x, _ = inputs(SMALL, 3)
    z_mean = enc.run(["z_mean"], {"image": x})[0]
    fmap = vae.trunk.forward(x, training=False).reshape(3, s, s, f)  # our Flatten is the Keras reference
    assert max_err(z_mean[:, 0], fmap[:, h, w, c]) < 1e-5
    assert np.all(z_mean[:, 1:] == 0)
    nchw_pick = fmap.transpose(0, 3, 1, 2).reshape(3, -1)[:, np.ravel_multi_index((h, w, c), (s, s, f))]
    assert max_err(nchw_pick, fmap[:, h, w, c]) > 1e-2  # the test can tell the two orders apart


def test_decoder_reshapes_in_keras_order():
    vae = trained_vae(SMALL, 4, 0, seed=6)
    s, f, eps = SMALL.bottleneck, SMALL.filters, SMALL.bn_epsilon
    p, st = vae.params(), vae.state()
    p["decoder.dense.kernel"][...] = 0
    p["decoder.bn_0.gamma"][...], p["decoder.bn_0.beta"][...] = 1, 0
    st["decoder.bn_0.moving_mean"][...], st["decoder.bn_0.moving_variance"][...] = 0, 1 - eps

    def one_hot_decode(index):
        p["decoder.dense.bias"][...] = 0
        p["decoder.dense.bias"][index] = 3.0  # the feature map is 3 at one (h, w, c), 0 elsewhere
        dec = ort.InferenceSession(onnx_graphs.build_decoder({**p, **st}, SMALL).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
        z = np.zeros((1, SMALL.z_dim), np.float32)
        return dec.run(None, {"z": z})[0], vae.decode(z, training=False)

    keras = np.ravel_multi_index((1, 0, 5), (s, s, f))
    onnx_y, ours = one_hot_decode(keras)
    assert max_err(onnx_y, ours) < 1e-5
    # Reading the same index as (c, h, w) lands elsewhere and gives a visibly different image.
    _, wrong = one_hot_decode(np.ravel_multi_index(np.unravel_index(keras, (f, s, s))[1:] +
                                                   np.unravel_index(keras, (f, s, s))[:1], (s, s, f)))
    assert max_err(wrong, ours) > 1e-3


def test_checker_metadata_and_symbolic_batch(small, default):
    for folder, epoch, step in ((small.folded, "3", "42"), (small.unfolded, "3", "42"), (default.folded, "0", "0")):
        for part in ("encoder", "decoder"):
            model = onnx.load(folder / f"{part}.onnx")
            onnx.checker.check_model(model, full_check=True)
            assert model.producer_name == "scratchvae" and model.producer_version
            assert model.opset_import[0].version == 17
            props = {p.key: p.value for p in model.metadata_props}
            assert (props["epoch"], props["step"], props["part"]) == (epoch, step, part)
            cfg = json.loads(props["config"])
            assert VAEConfig.from_dict(cfg) == (SMALL if folder.parent == small.folded.parent else VAEConfig())
            for value in list(model.graph.input) + list(model.graph.output):
                assert value.type.tensor_type.shape.dim[0].dim_param == "N"


def test_opset_option(small, tmp_path):
    assert to_onnx.main([str(small.ckpt), "--out", str(tmp_path), "--opset", "18"]) == 0
    model = onnx.load(tmp_path / "decoder.onnx")
    assert model.opset_import[0].version == 18
    onnx.checker.check_model(model, full_check=True)


def one_line_error(capsys, prefix):
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", ["missing", "corrupt", "nan", "unwritable", "opset"])
def test_export_errors_are_one_line(small, tmp_path, capsys, case):
    ckpt, out, extra = small.ckpt, tmp_path / "out", []
    if case == "missing":
        ckpt = tmp_path / "nope.npz"
    elif case == "corrupt":
        ckpt = tmp_path / "bad.npz"
        ckpt.write_bytes(small.ckpt.read_bytes()[:300])
    elif case == "nan":
        vae = trained_vae(SMALL, 2, 0)
        vae.params()["decoder.conv_t_1.kernel"][0, 0, 0, 0] = np.nan
        ckpt = tmp_path / "nan.npz"
        vae.save(ckpt)
    elif case == "unwritable":
        (tmp_path / "file").write_text("a file, not a folder")
        out = tmp_path / "file" / "out"
    else:
        extra = ["--opset", "11"]
    assert to_onnx.main([str(ckpt), "--out", str(out)] + extra) == 2
    err = one_line_error(capsys, "to_onnx: error:")
    assert {"missing": "no checkpoint", "corrupt": "corrupt", "nan": "decoder.conv_t_1.kernel has non-finite",
            "unwritable": "cannot write", "opset": "--opset 11"}[case] in err
    assert not out.exists() or not any(out.iterdir())


def test_export_cli_exit_code_in_a_real_process(tmp_path):
    run = subprocess.run([sys.executable, str(EXPORT / "to_onnx.py"), str(tmp_path / "x.npz"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=HANG_S)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "no checkpoint" in run.stderr


def grid_size(rows, cols, s, pad=2):
    return cols * (s + pad) + pad, rows * (s + pad) + pad


SAMPLE_SCRIPT = """
import json, sys
sys.path.insert(0, {export!r})
import sample
rcs = [sample.main(a) for a in {runs!r}]
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite", "scratchvae", "onnx"))
print(json.dumps({{"rcs": rcs, "bad": bad}}))
"""


def test_sample_writes_pngs_without_numba_or_scratchvae(small, tmp_path):
    rng = np.random.default_rng(3)
    images = []
    for i, (hgt, wid) in enumerate([(30, 40), (50, 20), (16, 16)]):
        images.append(str(tmp_path / f"face{i}.png"))
        Image.fromarray(rng.integers(0, 256, (hgt, wid, 3), dtype=np.uint8)).save(images[-1])
    dec, enc = str(small.folded / "decoder.onnx"), str(small.folded / "encoder.onnx")
    out = {k: str(tmp_path / f"{k}.png") for k in ("samples", "recon", "interp", "random")}
    runs = [["--decoder", dec, "-n", "10", "--seed", "4", "--out", out["samples"]],
            ["--decoder", dec, "--encoder", enc, "--reconstruct"] + images + ["--out", out["recon"]],
            ["--decoder", dec, "--encoder", enc, "--interpolate"] + images[:2] + ["--steps", "4"]
            + ["--out", out["interp"]],
            ["--decoder", dec, "--interpolate", "--steps", "5", "--out", out["random"]]]
    script = SAMPLE_SCRIPT.format(export=str(EXPORT), runs=runs)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rcs": [0, 0, 0, 0], "bad": []}
    s = SMALL.image_size
    sizes = {k: Image.open(v).size for k, v in out.items()}

    def labelled(rows, cols, **words):  # the size of the labelled layout (rows of cols tiles)
        laid = pictures.labelled_rows([np.zeros((cols, s, s, 3), np.float32)] * rows, **words)
        return laid.shape[1], laid.shape[0]

    t = {"columns": ["input", "0", "0.33", "0.67", "1", "input"], "axis": "t"}
    assert sizes == {"samples": grid_size(3, 4, s), "recon": labelled(2, 3, labels=["input", "reconstructed"]),
                     "interp": labelled(1, 6, labels=["linear"], **t),
                     "random": labelled(1, 5, labels=["linear"], columns=["0", "0.25", "0.5", "0.75", "1"], axis="t")}
    assert sizes["interp"][1] > grid_size(1, 6, s)[1]  # a line of captions under the walk
    # The grid's first face is our own decoder's output for the same seeded draw.
    z = latent.draw_z(4, 10, SMALL.z_dim)
    face = np.asarray(Image.open(out["samples"]))[2:2 + s, 2:2 + s].astype(np.float32)
    assert np.max(np.abs(face - small.vae.decode(z)[0] * 255)) <= 1.0


@pytest.mark.parametrize("case", ["missing", "garbage", "not_a_decoder", "no_encoder"])
def test_sample_errors_are_one_line(small, tmp_path, capsys, case):
    decoder = {"missing": tmp_path / "none.onnx", "garbage": tmp_path / "garbage.onnx",
               "not_a_decoder": small.folded / "encoder.onnx", "no_encoder": small.folded / "decoder.onnx"}[case]
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07not a protobuf at all")
    extra = ["--reconstruct", str(tmp_path / "x.png")] if case == "no_encoder" else []
    assert sample.main(["--decoder", str(decoder), "--out", str(tmp_path / "s.png")] + extra) == 2
    one_line_error(capsys, "sample: error:")
    assert not (tmp_path / "s.png").exists()
