"""The seed's VAE as wiring: encoder and decoder as lists of layers, the summary, save/load.

Default VAEConfig() is the seed's Keras model (128x128x3, 4 stride-2 blocks of 128 filters,
z 200). All arithmetic lives in layers, kernels and losses; names are dotted `encoder.conv_1.kernel`.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from scratchvae import checkpoint, losses
from scratchvae import kernels as K
from scratchvae.layers import BatchNorm, Conv2D, Conv2DTranspose, Dense, Flatten, LeakyReLU, Reshape, Sigmoid


LOAD_EXPANSION = 4  # VAE.load builds at most this many times the numbers a checkpoint holds


@dataclass(frozen=True)
class VAEConfig:
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

    def __post_init__(self):
        step = 2 ** self.blocks
        for field in ("image_size", "channels", "filters", "blocks", "z_dim"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                raise ValueError(f"VAEConfig.{field} must be a positive integer, got {getattr(self, field)!r}")
        if self.image_size % step:
            raise ValueError(f"image size {self.image_size} is not divisible by 2^blocks = {step}: "
                             f"use a multiple of {step} (e.g. {max(step, self.image_size // step * step)})")
        if self.encoder_activation not in (None, "relu"):
            raise ValueError("encoder_activation must be 'relu' or None")

    @property
    def bottleneck(self):
        """Spatial size after the encoder's stride-2 blocks."""
        return self.image_size // 2 ** self.blocks

    def tensor_elements(self):
        """How many numbers the model's parameters and BatchNorm statistics hold, without building it."""
        s, f, c, z = self.bottleneck, self.filters, self.channels, self.z_dim
        conv = 9 * c * f + f + 4 * f + (self.blocks - 1) * (9 * f * f + f + 4 * f)  # kernel, bias, BN x4
        heads = 2 * (s * s * f * z + z)
        decoder = (z * s * s * f + s * s * f + 4 * s * s * f + self.blocks * (9 * f * f + f + 4 * f)
                   + 9 * f * c + c)
        return conv + heads + decoder

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown VAEConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**d)


class Sequential:
    """Layers applied in order; backward runs them in reverse."""

    def __init__(self, layers):
        self.layers = layers

    def forward(self, x, training):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy


def build_encoder(cfg, dtype, rng):
    layers = []
    c = cfg.channels
    for i in range(1, cfg.blocks + 1):
        layers += [Conv2D(c, cfg.filters, 3, 2, activation=cfg.encoder_activation, dtype=dtype, rng=rng,
                          name=f"conv_{i}"),
                   BatchNorm(cfg.filters, cfg.bn_momentum, cfg.bn_epsilon, dtype=dtype, name=f"bn_{i}"),
                   LeakyReLU(cfg.leaky_alpha, dtype=dtype, name=f"leaky_{i}")]
        c = cfg.filters
    layers.append(Flatten(dtype=dtype, name="flatten"))
    flat = cfg.bottleneck ** 2 * cfg.filters
    heads = (Dense(flat, cfg.z_dim, dtype=dtype, rng=rng, name="z_mean"),
             Dense(flat, cfg.z_dim, dtype=dtype, rng=rng, name="z_log_var"))
    return Sequential(layers), heads


def build_decoder(cfg, dtype, rng):
    s, f = cfg.bottleneck, cfg.filters
    layers = [Dense(cfg.z_dim, s * s * f, dtype=dtype, rng=rng, name="dense"),
              BatchNorm(s * s * f, cfg.bn_momentum, cfg.bn_epsilon, dtype=dtype, name="bn_0"),
              LeakyReLU(cfg.leaky_alpha, dtype=dtype, name="leaky_0"),
              Reshape((s, s, f), dtype=dtype, name="reshape")]
    for i in range(1, cfg.blocks + 1):
        layers += [Conv2DTranspose(f, f, 3, 2, dtype=dtype, rng=rng, name=f"conv_t_{i}"),
                   BatchNorm(f, cfg.bn_momentum, cfg.bn_epsilon, dtype=dtype, name=f"bn_{i}"),
                   LeakyReLU(cfg.leaky_alpha, dtype=dtype, name=f"leaky_{i}")]
    layers += [Conv2DTranspose(f, cfg.channels, 3, 1, dtype=dtype, rng=rng, name="conv_t_out"),
               Sigmoid(dtype=dtype, name="sigmoid")]
    return Sequential(layers)


class VAE:
    def __init__(self, config=None, seed=0, dtype=np.float32):
        self.config = config or VAEConfig()
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.trunk, self.heads = build_encoder(self.config, self.dtype, rng)
        self.decoder = build_decoder(self.config, self.dtype, rng)
        self.trunk.layers[0].need_dx = False  # nothing upstream of the images needs their gradient
        for seq in (self.trunk, self.decoder):
            for layer, following in zip(seq.layers, seq.layers[1:]):
                if isinstance(layer, BatchNorm) and isinstance(following, LeakyReLU):
                    layer.fuse(following)  # one pass instead of two; the summary still lists both
            for layer, following in zip(seq.layers, seq.layers[1:]):
                if isinstance(layer, (Dense, Conv2DTranspose)) and isinstance(following, (BatchNorm, Sigmoid)):
                    layer.fuse_inference(following)  # inference: BN folded into the weights, one output pass
            for layer in seq.layers[:-1]:
                layer.internal = True  # heads and the decoder's last layer hand out fresh arrays
            producer = None
            for layer in seq.layers:
                if isinstance(layer, (Conv2D, Conv2DTranspose)) and isinstance(producer, BatchNorm):
                    layer.dx_into_input = True  # saves a full-size gradient map per step
                if not (isinstance(layer, (Reshape, Flatten)) or getattr(layer, "fused_into", None)):
                    producer = layer

    # ------------------------------------------------------------ named tensors
    def named_layers(self):
        """(dotted prefix, layer) for every layer, encoder first."""
        for layer in self.trunk.layers + list(self.heads):
            yield f"encoder.{layer.name}", layer
        for layer in self.decoder.layers:
            yield f"decoder.{layer.name}", layer

    def _collect(self, attr):
        return {f"{prefix}.{k}": v for prefix, layer in self.named_layers() for k, v in getattr(layer, attr).items()}

    def params(self):
        return self._collect("params")

    def grads(self):
        return self._collect("grads")

    def state(self):
        return self._collect("state")

    # ------------------------------------------------------------ passes
    def _check_images(self, x):
        cfg = self.config
        want = (cfg.image_size, cfg.image_size, cfg.channels)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"expected images of shape (N, {want[0]}, {want[1]}, {want[2]}), got {x.shape}")
        return self._on_backend(x)

    def _on_backend(self, a):
        """`a` as the active backend's array (uploaded once when it is a host array and the backend is a device)."""
        return a if K.is_device_array(a) else K.from_host(np.ascontiguousarray(a, dtype=self.dtype))

    def encode(self, x, training=False):
        h = self.trunk.forward(self._check_images(x), training)
        return tuple(head.forward(h, training) for head in self.heads)

    def decode(self, z, training=False):
        return self.decoder.forward(self._on_backend(z), training)

    def evaluate(self, x, eps, training=False):
        """Loss terms of a batch without gradients (held-out: training=False), z sampled with eps."""
        x = self._check_images(x)
        z_mean, z_log_var = self.encode(x, training)
        z, _ = losses.reparameterize(z_mean, z_log_var, self._on_backend(eps))
        x_hat = self.decode(z, training)
        return losses.loss_terms(x, x_hat, z_mean, z_log_var, self.config.beta)

    def forward_backward(self, x, eps):
        """One training-mode pass: loss terms as floats, gradients left in `grads()`."""
        x = self._check_images(x)
        eps = self._on_backend(eps)
        z_mean, z_log_var = self.encode(x, training=True)
        z, sigma = losses.reparameterize(z_mean, z_log_var, eps)
        x_hat = self.decoder.forward(z, True)
        m, dx_hat = losses.mse_and_grad(x, x_hat, self.config.beta)
        terms = losses.terms(m, losses.kl_divergence(z_mean, z_log_var), self.config.beta)
        dz = self.decoder.backward(dx_hat)
        d_mean, d_logvar = losses.latent_grads(dz, z_mean, z_log_var, eps, sigma)
        dh = self.heads[0].backward(d_mean)
        K.add(dh, self.heads[1].backward(d_logvar))
        self.trunk.backward(dh)
        return terms

    # ------------------------------------------------------------ summary
    def summary(self):
        """A Keras-like table: layer, output shape, parameters, with totals per model."""
        cfg = self.config
        lines = []
        for title, prefix, shape, layers in (
                ("encoder", "encoder", (cfg.image_size, cfg.image_size, cfg.channels),
                 self.trunk.layers + list(self.heads)),
                ("decoder", "decoder", (cfg.z_dim,), self.decoder.layers)):
            lines += [f'Model: "{title}"', "-" * 72, f"{'Layer (type)':<36}{'Output Shape':<22}{'Param #':>12}",
                      "=" * 72, f"{'input (InputLayer)':<36}{str((None,) + shape):<22}{0:>12,}"]
            trunk_out = shape
            trainable = fixed = 0
            for layer in layers:
                in_shape = trunk_out if layer in self.heads else shape
                out = layer.output_shape(in_shape)
                if layer not in self.heads:
                    shape = trunk_out = out
                t, nt = layer.count_params()
                trainable, fixed = trainable + t, fixed + nt
                lines.append(f"{layer.name + ' (' + layer.kind + ')':<36}{str((None,) + tuple(out)):<22}{t + nt:>12,}")
            lines += ["=" * 72, f"Total params: {trainable + fixed:,}", f"Trainable params: {trainable:,}",
                      f"Non-trainable params: {fixed:,}", ""]
        return "\n".join(lines)

    def count_params(self, part):
        """(trainable, non-trainable) for 'encoder' or 'decoder'."""
        counts = [layer.count_params() for prefix, layer in self.named_layers() if prefix.startswith(part + ".")]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    # ------------------------------------------------------------ checkpoints
    def save(self, path, extra_arrays=None, meta=None):
        """Write config, parameters and BN statistics (plus any extra arrays) to one .npz."""
        arrays = {f"param/{k}": K.to_host(v) for k, v in self.params().items()}
        arrays.update({f"state/{k}": K.to_host(v) for k, v in self.state().items()})
        arrays.update(extra_arrays or {})
        checkpoint.save(path, arrays, {"config": self.config.to_dict(), "dtype": self.dtype.name, **(meta or {})})

    @classmethod
    def load(cls, path, with_extras=False):
        """A VAE from a checkpoint, validated tensor by tensor; optionally (vae, arrays, meta)."""
        arrays, meta = checkpoint.load(path)
        try:
            config = VAEConfig.from_dict(meta["config"])
            dtype = np.dtype(meta.get("dtype", "float32"))
        except (KeyError, TypeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"checkpoint {path} has an unusable config: {e}") from None
        held = sum(a.size for name, a in arrays.items() if name.startswith(("param/", "state/")))
        if config.tensor_elements() > LOAD_EXPANSION * held + (1 << 20):
            # A config far larger than the arrays beside it (crafted, or from another file) would
            # allocate before the first shape check: refuse it while that costs nothing.
            raise checkpoint.CheckpointError(
                f"checkpoint {path} has a config for {config.tensor_elements():,} numbers but holds "
                f"{held:,}: the config does not belong to these weights")
        vae = cls(config, dtype=dtype)
        for prefix, live in (("param/", vae.params()), ("state/", vae.state())):
            found = checkpoint.expect(arrays, live, prefix, path)
            for name, a in found.items():
                live[name][...] = a
        return (vae, arrays, meta) if with_extras else vae
