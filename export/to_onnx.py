"""Export a scratchvae checkpoint to DIR/encoder.onnx and DIR/decoder.onnx (NHWC float32 at the edges).

    python export/to_onnx.py runs/x/checkpoint.npz --out onnx/ [--opset 17] [--no-fold]

The graphs come from onnx_graphs; this file only loads, checks, and writes atomically.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import onnx

import onnx_graphs
from scratchvae.latent import vectors
from scratchvae.model import VAE
from scratchvae.run.atomic import write_bytes as atomic_write_bytes
from scratchvae.run.checkpoint import CheckpointError


class ExportError(Exception):
    """A user's mistake; the message is the one line printed."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint.npz written by training")
    p.add_argument("--out", required=True, help="folder for encoder.onnx and decoder.onnx (created if missing)")
    p.add_argument("--opset", type=int, default=onnx_graphs.MIN_OPSET, help="ONNX opset, 17 or newer")
    p.add_argument("--no-fold", action="store_true", help="keep decoder BatchNormalization nodes instead of folding")
    return p.parse_args(argv)


def prepare_folder(out):
    """Create the folder and prove it takes a file now, before any work is spent on the graphs."""
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExportError(f"cannot write to output folder {out} ({e.strerror or e}): choose a writable --out")


def build_graphs(checkpoint, opset=onnx_graphs.MIN_OPSET, fold=True, before_build=None):
    """({"encoder": ModelProto, "decoder": ModelProto}, the VAEConfig, the checkpoint identity), checked;
    `before_build()` runs once the checkpoint is known good, before the graphs are built."""
    top = onnx.defs.onnx_opset_version()
    if not onnx_graphs.MIN_OPSET <= opset <= top:
        raise ExportError(f"--opset {opset} is not supported: use {onnx_graphs.MIN_OPSET} to {top}")
    try:
        vae, arrays, meta = VAE.load(checkpoint, with_extras=True)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    tensors = {**vae.params(), **vae.state()}
    # Refuse before touching --out: a diverged run must not leave half an export behind.
    bad = [name for name, a in tensors.items() if not np.all(np.isfinite(a))]
    if bad:
        raise ExportError(f"{checkpoint}: tensor {bad[0]} has non-finite values ({len(bad)} tensor(s) in all): "
                          "refusing to export; use an earlier checkpoint")
    if before_build:
        before_build()
    identity = vectors.checkpoint_identity(arrays)
    models = {}
    for part, build in (("encoder", onnx_graphs.build_encoder), ("decoder", onnx_graphs.build_decoder)):
        try:
            model = build(tensors, vae.config, fold=fold, opset=opset, meta=meta)
        except ValueError as e:
            raise ExportError(f"{checkpoint}: {e}") from None
        # The checkpoint's identity, so export/sample.py can refuse attribute vectors of another model.
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            vectors.ONNX_IDENTITY_KEY: identity})
        onnx.checker.check_model(model, full_check=True)
        models[part] = model
    return models, vae.config, identity


def write_graphs(models, out):
    """Write each graph to out/<part>.onnx atomically; the paths written."""
    written = []
    for part, model in models.items():
        path = os.path.join(out, f"{part}.onnx")
        try:
            atomic_write_bytes(path, model.SerializeToString())
        except OSError as e:
            raise ExportError(f"cannot write {path} ({e.strerror or e})") from None
        written.append(path)
    return written


def export(args):
    models, _, _ = build_graphs(args.checkpoint, args.opset, not args.no_fold, lambda: prepare_folder(args.out))
    return write_graphs(models, args.out)


def main(argv=None):
    args = parse_args(argv)
    try:
        for path in export(args):
            print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    except ExportError as e:
        print(f"to_onnx: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
