"""The one description of the network: VAEConfig and the encoder/decoder as lists of layer specs.

Plain data, no NumPy arrays and no Numba: the model builds its layers from these specs, and the
parameter counts, the Keras-like summary, the ONNX graphs and the PyTorch reference walk the same
lists. Shapes are per sample (no batch axis), NHWC; layer kinds are Keras class names.
"""

import dataclasses
from dataclasses import dataclass, field

from scratchvae.geometry import same_pads

DECODERS = ("transpose", "resize")  # how the decoder doubles the size: Conv2DTranspose, or UpSampling2D + Conv2D
RECONS = ("mse", "sigma")  # the reconstruction term: beta * MSE, or the sigma-VAE's Gaussian likelihood


@dataclass(frozen=True)
class VAEConfig:
    """The seed's Keras model by default: 128x128x3 images, 4 stride-2 blocks of 128 filters, z 200.

    decoder: "transpose" (the seed's stride-2 Conv2DTranspose blocks) or "resize" (nearest
    UpSampling2D then a stride-1 Conv2D per block, no checkerboard). recon: "mse" (the seed's
    beta * MSE + KL) or "sigma" (the sigma-VAE: D/2 log(2 pi MSE) + D/2 + KL in nats; beta unused).
    Checkpoints written before these fields load with the defaults (from_dict fills them).
    """

    image_size: int = 128
    channels: int = 3
    filters: int = 128
    blocks: int = 4
    z_dim: int = 200
    leaky_alpha: float = 0.3
    encoder_activation: str | None = "relu"
    beta: float = 2000.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    decoder: str = "transpose"
    recon: str = "mse"

    def __post_init__(self):
        step = 2 ** self.blocks if isinstance(self.blocks, int) else 1
        for name in ("image_size", "channels", "filters", "blocks", "z_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive integer, got {value!r}")
        if self.image_size % step:
            raise ValueError(f"image size {self.image_size} is not divisible by 2^blocks = {step}: "
                             f"use a multiple of {step} (e.g. {max(step, self.image_size // step * step)})")
        if self.encoder_activation not in (None, "relu"):
            raise ValueError("encoder_activation must be 'relu' or None")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r} is not one of {', '.join(DECODERS)}")
        if self.recon not in RECONS:
            raise ValueError(f"recon {self.recon!r} is not one of {', '.join(RECONS)}")

    @property
    def pixels(self):
        """D = H * W * C: the numbers of one image (the sigma-VAE's likelihood is over these)."""
        return self.image_size * self.image_size * self.channels

    @property
    def bottleneck(self):
        """Spatial size after the encoder's stride-2 blocks."""
        return self.image_size // 2 ** self.blocks

    def tensor_elements(self):
        """How many numbers the parameters and BatchNorm statistics hold, without building anything."""
        return sum(_size(shape) for shape in tensor_shapes(self).values())

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown VAEConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass(frozen=True)
class LayerSpec:
    """One Keras layer: its class name, its name inside its model, and its hyper-parameters."""

    kind: str
    name: str
    args: dict = field(default_factory=dict)


# ------------------------------------------------------------------ the seed's network

def encoder_trunk(cfg):
    """Conv2D (ReLU) -> BatchNormalization -> LeakyReLU per stride-2 block, then Flatten."""
    specs, c = [], cfg.channels
    for i in range(1, cfg.blocks + 1):
        specs += [LayerSpec("Conv2D", f"conv_{i}", {"in_channels": c, "filters": cfg.filters, "kernel_size": 3,
                                                     "strides": 2, "activation": cfg.encoder_activation}),
                  _batchnorm(cfg, f"bn_{i}", cfg.filters),
                  LayerSpec("LeakyReLU", f"leaky_{i}", {"alpha": cfg.leaky_alpha})]
        c = cfg.filters
    return specs + [LayerSpec("Flatten", "flatten")]


def encoder_heads(cfg):
    """The two Dense heads that read the flattened trunk: z_mean and z_log_var."""
    flat = cfg.bottleneck ** 2 * cfg.filters
    return [LayerSpec("Dense", name, {"in_features": flat, "units": cfg.z_dim}) for name in ("z_mean", "z_log_var")]


def decoder(cfg):
    """Dense -> BN -> LeakyReLU -> Reshape, then Conv2DTranspose -> BN -> LeakyReLU per stride-2
    block, and a stride-1 Conv2DTranspose to the image channels with a Sigmoid. With
    decoder="resize" each stride-2 Conv2DTranspose is UpSampling2D(2) -> Conv2D(3x3, stride 1,
    no activation: its bias feeds BatchNorm, a dead bias like the Conv2DTranspose's)."""
    s, f = cfg.bottleneck, cfg.filters
    specs = [LayerSpec("Dense", "dense", {"in_features": cfg.z_dim, "units": s * s * f}),
             _batchnorm(cfg, "bn_0", s * s * f),
             LayerSpec("LeakyReLU", "leaky_0", {"alpha": cfg.leaky_alpha}),
             LayerSpec("Reshape", "reshape", {"target_shape": (s, s, f)})]
    for i in range(1, cfg.blocks + 1):
        if cfg.decoder == "resize":
            specs += [LayerSpec("UpSampling2D", f"up_{i}", {"size": 2}),
                      LayerSpec("Conv2D", f"conv_{i}", {"in_channels": f, "filters": f, "kernel_size": 3,
                                                        "strides": 1, "activation": None})]
        else:
            specs.append(LayerSpec("Conv2DTranspose", f"conv_t_{i}", {"in_channels": f, "filters": f,
                                                                      "kernel_size": 3, "strides": 2}))
        specs += [_batchnorm(cfg, f"bn_{i}", f),
                  LayerSpec("LeakyReLU", f"leaky_{i}", {"alpha": cfg.leaky_alpha})]
    return specs + [LayerSpec("Conv2DTranspose", "conv_t_out", {"in_channels": f, "filters": cfg.channels,
                                                                "kernel_size": 3, "strides": 1}),
                    LayerSpec("Sigmoid", "sigmoid")]


def _batchnorm(cfg, name, features):
    return LayerSpec("BatchNormalization", name, {"features": features, "momentum": cfg.bn_momentum,
                                                  "epsilon": cfg.bn_epsilon})


def parts(cfg):
    """(part, input shape, [(spec, input shape)]) for the encoder and the decoder: the heads read the
    trunk's output, every other layer the output of the one before it."""
    x = (cfg.image_size, cfg.image_size, cfg.channels)
    encoder = []
    for spec in encoder_trunk(cfg):
        encoder.append((spec, x))
        x = output_shape(spec, x)
    encoder += [(spec, x) for spec in encoder_heads(cfg)]
    z, dec = (cfg.z_dim,), []
    for spec in decoder(cfg):
        dec.append((spec, z))
        z = output_shape(spec, z)
    return [("encoder", (cfg.image_size, cfg.image_size, cfg.channels), encoder), ("decoder", (cfg.z_dim,), dec)]


# ------------------------------------------------------------------ shapes and counts

def output_shape(spec, in_shape):
    """Per-sample output shape of `spec` for a per-sample input shape; a mismatch is a ValueError."""
    a, in_shape = spec.args, tuple(in_shape)
    if spec.kind in ("Conv2D", "Conv2DTranspose"):
        h, w, c = in_shape
        if c != a["in_channels"]:
            raise ValueError(f"{spec.name}: expects {a['in_channels']} channels, got {c}")
        if spec.kind == "Conv2D":
            return (same_pads(h, a["kernel_size"], a["strides"])[0], same_pads(w, a["kernel_size"], a["strides"])[0],
                    a["filters"])
        return (h * a["strides"], w * a["strides"], a["filters"])
    if spec.kind == "Dense":
        if in_shape != (a["in_features"],):
            raise ValueError(f"{spec.name}: expects ({a['in_features']},) inputs, got {in_shape}")
        return (a["units"],)
    if spec.kind == "BatchNormalization" and in_shape[-1] != a["features"]:
        raise ValueError(f"{spec.name}: expects {a['features']} features, got {in_shape[-1]}")
    if spec.kind == "Flatten":
        return (_size(in_shape),)
    if spec.kind == "UpSampling2D":
        h, w, c = in_shape
        return (h * a["size"], w * a["size"], c)
    if spec.kind == "Reshape":
        if _size(in_shape) != _size(a["target_shape"]):
            raise ValueError(f"{spec.name}: cannot reshape {in_shape} to {tuple(a['target_shape'])}")
        return tuple(a["target_shape"])
    return in_shape


def param_shapes(spec):
    """Trainable tensors of `spec`: {Keras name: shape}."""
    a = spec.args
    if spec.kind == "Conv2D":
        return {"kernel": (a["kernel_size"], a["kernel_size"], a["in_channels"], a["filters"]), "bias": (a["filters"],)}
    if spec.kind == "Conv2DTranspose":  # Keras: (kh, kw, out, in)
        return {"kernel": (a["kernel_size"], a["kernel_size"], a["filters"], a["in_channels"]), "bias": (a["filters"],)}
    if spec.kind == "Dense":
        return {"kernel": (a["in_features"], a["units"]), "bias": (a["units"],)}
    if spec.kind == "BatchNormalization":
        return {"gamma": (a["features"],), "beta": (a["features"],)}
    return {}


def state_shapes(spec):
    """Non-trainable tensors of `spec` (BatchNorm's moving statistics)."""
    if spec.kind == "BatchNormalization":
        return {"moving_mean": (spec.args["features"],), "moving_variance": (spec.args["features"],)}
    return {}


def tensor_shapes(cfg):
    """{dotted name: shape} of every parameter and statistic, encoder first."""
    out = {}
    for part, _, specs in parts(cfg):
        for spec, _ in specs:
            for key, shape in {**param_shapes(spec), **state_shapes(spec)}.items():
                out[f"{part}.{spec.name}.{key}"] = shape
    return out


def count_params(cfg, part):
    """(trainable, non-trainable) numbers of 'encoder' or 'decoder'."""
    specs = dict((p, s) for p, _, s in parts(cfg))[part]
    return (sum(_size(sh) for spec, _ in specs for sh in param_shapes(spec).values()),
            sum(_size(sh) for spec, _ in specs for sh in state_shapes(spec).values()))


def summary(cfg):
    """A Keras-like table per model: layer (type), output shape, parameters, then the totals."""
    lines = []
    for part, in_shape, specs in parts(cfg):
        lines += [f'Model: "{part}"', "-" * 72, f"{'Layer (type)':<36}{'Output Shape':<22}{'Param #':>12}",
                  "=" * 72, f"{'input (InputLayer)':<36}{str((None,) + in_shape):<22}{0:>12,}"]
        for spec, x in specs:
            n = sum(_size(sh) for sh in {**param_shapes(spec), **state_shapes(spec)}.values())
            out = (None,) + tuple(output_shape(spec, x))
            lines.append(f"{spec.name + ' (' + spec.kind + ')':<36}{str(out):<22}{n:>12,}")
        trainable, fixed = count_params(cfg, part)
        lines += ["=" * 72, f"Total params: {trainable + fixed:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {fixed:,}", ""]
    return "\n".join(lines)


def _size(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n
