"""The VAE as wiring: layers built from the spec in scratchvae/architecture.py, named tensors, the
flat gradient buffer, the training step's passes, save/load.

All arithmetic lives in layers, kernels and losses; tensor names are dotted `encoder.conv_1.kernel`.
Data parallelism goes through two construction hooks: a reducer (sums an array over the ranks, used
by BatchNorm for global batch statistics) and a callback told when a layer's gradients are ready.
"""

import numpy as np

from scratchvae import architecture, losses
from scratchvae import kernels as K
from scratchvae.architecture import VAEConfig
from scratchvae.inference import Plan
from scratchvae.kernels.workspace import Workspace
from scratchvae.run import checkpoint
from scratchvae.layers import (BatchNorm, BatchNormLeakyReLU, Conv2D, Conv2DTranspose, Dense, Flatten, LeakyReLU,
                               Reshape, Sigmoid, UpSampling2D)
from scratchvae.layers.norm import BatchStats, DeferredNorm

__all__ = ["VAE", "VAEConfig", "Sequential", "LOAD_EXPANSION"]

LOAD_EXPANSION = 4  # VAE.load builds at most this many times the numbers a checkpoint holds


class Sequential:
    """Layers applied in order; backward runs them in reverse and calls `ready(layer)` after each
    layer that has parameters (its gradients are then final)."""

    def __init__(self, layers, ready=None):
        self.layers = layers
        self.ready = ready

    def forward(self, x, training):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
            if layer.grads and self.ready is not None:
                self.ready(layer)
        return dy


def dead_biases(specs):
    """Layers whose bias gradient is zero in exact arithmetic: a bias with no activation of its own
    whose output goes straight into BatchNorm, which subtracts the batch mean, bias included.
    Computed, these gradients are rounding noise (1e-6 against 1 elsewhere) that Adam would scale up
    to steps of about lr in arbitrary directions, different for one process and for K ranks: the
    model builds these layers with dead_bias=True, so their backward writes zeros instead of summing
    the output gradient, in single-process and data-parallel training alike."""
    return {spec.name for spec, following in zip(specs, specs[1:])
            if following.kind == "BatchNormalization" and "bias" in architecture.param_shapes(spec)
            and spec.args.get("activation") is None}


class VAE:
    """The seed's VAE (VAEConfig() is the seed's Keras model).

    reducer(a):             sums `a` over the ranks of a data-parallel job, in place (None: one process)
    on_grads_ready(name, g): called during backward once layer `name`'s gradients are final; `g` is
                             that layer's slice of the flat gradient buffer (to start summing it early)
    """

    def __init__(self, config=None, seed=0, dtype=np.float32, reducer=None, on_grads_ready=None):
        self.config = config or VAEConfig()
        self.dtype = np.dtype(dtype)
        self.workspace = Workspace()
        self.on_grads_ready = on_grads_ready
        self.reducer = reducer  # also sums the sigma-VAE's squared error over the ranks
        cfg, rng = self.config, np.random.default_rng(seed)
        trunk_specs, head_specs, decoder_specs = (architecture.encoder_trunk(cfg), architecture.encoder_heads(cfg),
                                                  architecture.decoder(cfg))
        # Every gradient is a view of one flat buffer, a layer's tensors side by side, so a
        # data-parallel job can sum a layer's gradients as one slice as soon as they are ready.
        shapes = architecture.tensor_shapes(cfg)
        trainable = [(name, shape) for name, shape in shapes.items() if name.rsplit(".", 1)[1] not in
                     ("moving_mean", "moving_variance")]
        self.flat_grads = K.zeros((sum(int(np.prod(s)) for _, s in trainable),), self.dtype)
        self._grad_views, self._slices, offset = {}, {}, 0
        for name, shape in trainable:
            size = int(np.prod(shape))
            self._grad_views[name] = self.flat_grads[offset:offset + size].reshape(shape)
            layer_name = name.rsplit(".", 1)[0]
            start = self._slices.get(layer_name, (offset, offset))[0]
            self._slices[layer_name] = (start, offset + size)
            offset += size
        build = dict(rng=rng, reducer=reducer)
        self.trunk = Sequential(self._build("encoder", trunk_specs, first=True, last_fresh=False, **build),
                                self._ready)
        self.heads = tuple(self._build("encoder", head_specs, first=False, last_fresh=True, reuse=False, **build))
        self.decoder = Sequential(self._build("decoder", decoder_specs, first=False, last_fresh=True, **build),
                                  self._ready)
        self.layer_names = {id(layer): prefix for prefix, layer in self.named_layers()}
        self.trunk_plan = Plan(self.trunk.layers, self.workspace)
        self.decoder_plan = Plan(self.decoder.layers, self.workspace)
        self.head_plans = tuple(Plan([head], self.workspace) for head in self.heads)

    # ------------------------------------------------------------ building from the spec
    def _build(self, part, specs, first, last_fresh, rng, reducer, reuse=True):
        """Layers for `specs`: BatchNorm then LeakyReLU become one fused layer; the first layer
        of the encoder computes no input gradient; a convolution that reads a BatchNorm's output
        writes its input gradient over it (BatchNorm's backward needs only its own input); a
        convolution right before a BatchNorm measures that BatchNorm's batch statistics as it writes
        its output (BatchStats; single-process training); a BatchNorm read only by a stride-1
        Conv2DTranspose leaves its training output unwritten, the convolution normalising as it reads
        (DeferredNorm); every layer but the last reuses its inference output buffer (only the next
        layer reads it)."""
        layers, producer, i, dead, stats, deferred = [], None, 0, dead_biases(specs), None, None
        while i < len(specs):
            spec, a = specs[i], specs[i].args
            feeds_bn = i + 1 < len(specs) and specs[i + 1].kind == "BatchNormalization"
            fuse = spec.kind == "BatchNormalization" and i + 1 < len(specs) and specs[i + 1].kind == "LeakyReLU"
            last = i + (2 if fuse else 1) == len(specs)
            reader = None if last else specs[i + (2 if fuse else 1)]
            if spec.kind == "BatchNormalization":  # its output read by a stride-1 Conv2DTranspose: deferred
                deferred = DeferredNorm(a["features"], self.dtype) if reader is not None \
                    and reader.kind == "Conv2DTranspose" and reader.args["strides"] == 1 else None
            common = dict(dtype=self.dtype, name=spec.name, workspace=self.workspace,
                          grads={k: self._grad_views[f"{part}.{spec.name}.{k}"]
                                 for k in architecture.param_shapes(spec)},
                          reuse_outputs=reuse and not (last and last_fresh), dead_bias=spec.name in dead)
            if spec.kind in ("Conv2D", "Conv2DTranspose"):  # it measures the next BatchNorm's statistics
                stats = BatchStats(a["filters"], self.dtype) if feeds_bn and reducer is None else None
            conv = dict(need_dx=not (first and not layers), overwrite_input=isinstance(producer, BatchNorm),
                        batch_stats=stats)
            if spec.kind == "Conv2D":
                layer = Conv2D(a["in_channels"], a["filters"], a["kernel_size"], a["strides"],
                               activation=a["activation"], rng=rng, **conv, **common)
            elif spec.kind == "Conv2DTranspose":
                layer = Conv2DTranspose(a["in_channels"], a["filters"], a["kernel_size"], a["strides"], rng=rng,
                                        deferred=deferred, **conv, **common)
            elif spec.kind == "Dense":
                layer = Dense(a["in_features"], a["units"], rng=rng, **common)
            elif fuse:
                layer = BatchNormLeakyReLU(a["features"], specs[i + 1].args["alpha"], a["momentum"], a["epsilon"],
                                           reducer=reducer, batch_stats=stats, deferred=deferred, **common)
            elif spec.kind == "BatchNormalization":
                layer = BatchNorm(a["features"], a["momentum"], a["epsilon"], reducer=reducer, batch_stats=stats,
                                  deferred=deferred, **common)
            elif spec.kind == "LeakyReLU":
                layer = LeakyReLU(a["alpha"], **common)
            elif spec.kind == "Sigmoid":
                layer = Sigmoid(**common)
            elif spec.kind == "Flatten":
                layer = Flatten(**common)
            elif spec.kind == "Reshape":
                layer = Reshape(a["target_shape"], **common)
            elif spec.kind == "UpSampling2D":
                layer = UpSampling2D(a["size"], **common)
            else:
                raise ValueError(f"{part}.{spec.name}: no layer for kind {spec.kind!r}")
            if not isinstance(layer, (Flatten, Reshape)):
                producer = layer
            if isinstance(layer, BatchNorm):
                stats = None
            elif layer.kind.startswith("Conv"):
                deferred = None
            layers.append(layer)
            i += 2 if fuse else 1
        return layers

    def _ready(self, layer):
        """A layer's gradients are final: tell the data-parallel driver."""
        name = self.layer_names[id(layer)]
        if self.on_grads_ready is not None:
            start, stop = self._slices[name]
            self.on_grads_ready(name, self.flat_grads[start:stop])

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

    def batchnorms(self):
        return [layer for _, layer in self.named_layers() if isinstance(layer, BatchNorm)]

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
        x = self._check_images(x)
        h = self.trunk.forward(x, True) if training else self.trunk_plan.run(x)
        if training:
            return tuple(head.forward(h, True) for head in self.heads)
        return tuple(plan.run(h) for plan in self.head_plans)

    def decode(self, z, training=False):
        """Images from latents; inference runs the fused plan (scratchvae/inference.py)."""
        z = self._on_backend(z)
        return self.decoder.forward(z, True) if training else self.decoder_plan.run(z)

    def evaluate(self, x, eps, training=False):
        """Loss terms of a batch without gradients (held-out: training=False), z sampled with eps."""
        x = self._check_images(x)
        z_mean, z_log_var = self.encode(x, training)
        z, _ = losses.reparameterize(z_mean, z_log_var, self._on_backend(eps))
        x_hat = self.decode(z, training)
        return losses.config_terms(losses.mse(x, x_hat), losses.kl_divergence(z_mean, z_log_var), self.config)

    def forward_backward(self, x, eps, kl_weight=1.0):
        """One training-mode pass: loss terms as floats (unweighted: total = reconstruction + KL),
        gradients of reconstruction + kl_weight * KL left in `grads()` (the config's recon decides
        the reconstruction term; kl_weight 1.0 is the plain objective, bit for bit)."""
        x = self._check_images(x)
        eps = self._on_backend(eps)
        z_mean, z_log_var = self.encode(x, training=True)
        z, sigma = losses.reparameterize(z_mean, z_log_var, eps)
        x_hat = self.decoder.forward(z, True)
        if self.config.recon == "sigma":
            m, dx_hat = losses.sigma_recon_and_grad(x, x_hat, self.reducer)
        else:
            m, dx_hat = losses.mse_and_grad(x, x_hat, self.config.beta)
        terms = losses.config_terms(m, losses.kl_divergence(z_mean, z_log_var), self.config)
        dz = self.decoder.backward(dx_hat)
        d_mean, d_logvar = losses.latent_grads(dz, z_mean, z_log_var, eps, sigma, kl_weight)
        dh = self.heads[0].backward(d_mean)
        self._ready(self.heads[0])
        K.add(dh, self.heads[1].backward(d_logvar))
        self._ready(self.heads[1])
        self.trunk.backward(dh)
        return terms

    def measure_batchnorm(self, batches):
        """Precise BatchNorm statistics: run training-mode forwards over `batches` ((x, eps) pairs,
        eps the decoder's noise as in training) and store each BatchNorm's exact mean and biased
        variance over all of them as its moving statistics (summed over the ranks under the reducer).
        Parameters and gradients are untouched; returns the images measured."""
        layers, images = self.batchnorms(), 0
        for layer in layers:
            layer.begin_population()
        try:
            for x, eps in batches:
                images += x.shape[0]
                z_mean, z_log_var = self.encode(x, training=True)
                z, _ = losses.reparameterize(z_mean, z_log_var, self._on_backend(eps))
                self.decoder.forward(z, True)
        except BaseException:
            for layer in layers:
                layer.cancel_population()
            raise
        for layer in layers:
            layer.end_population()
        return images

    # ------------------------------------------------------------ summary
    def summary(self):
        """A Keras-like table: layer, output shape, parameters, with totals per model."""
        return architecture.summary(self.config)

    def count_params(self, part):
        """(trainable, non-trainable) for 'encoder' or 'decoder'."""
        return architecture.count_params(self.config, part)

    # ------------------------------------------------------------ checkpoints
    def save(self, path, extra_arrays=None, meta=None):
        """Write config, parameters and BN statistics (plus any extra arrays) to one .npz."""
        arrays = {f"param/{k}": K.to_host(v) for k, v in self.params().items()}
        arrays.update({f"state/{k}": K.to_host(v) for k, v in self.state().items()})
        arrays.update(extra_arrays or {})
        checkpoint.save(path, arrays, {"config": self.config.to_dict(), "dtype": self.dtype.name, **(meta or {})})

    @classmethod
    def load(cls, path, with_extras=False, **hooks):
        """A VAE from a checkpoint, validated tensor by tensor; optionally (vae, arrays, meta).
        `hooks` (reducer, on_grads_ready) go to the constructor."""
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
        vae = cls(config, dtype=dtype, **hooks)
        for prefix, live in (("param/", vae.params()), ("state/", vae.state())):
            found = checkpoint.expect(arrays, live, prefix, path)
            for name, a in found.items():
                live[name][...] = a
        return (vae, arrays, meta) if with_extras else vae
