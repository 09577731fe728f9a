"""PyTorch twin of scratchvae.model.VAE: the same layers, loss and Adam, for cross-checks and timing
(and, for timing only, the plain variant a PyTorch user would write: TorchVAE(plain=True)).

Torch is a bench-only dependency. The model runs NCHW (optionally channels_last in memory); the
two places where order matters, Flatten and Reshape, go through NHWC so Dense weights copy as-is.

    python benches/torch_reference.py --check
    python benches/torch_reference.py --data FOLDER --image-size 64 --epochs 3 --batch-size 32 --lr 5e-4
"""

import argparse
import gc
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchvae import architecture, losses
from scratchvae.geometry import same_padding
from scratchvae.model import VAE, VAEConfig, dead_biases


class KerasBatchNorm(nn.Module):
    """BatchNorm over dim 1 with Keras semantics: moving variance tracks the *biased* batch variance.

    torch's running_var uses the unbiased variance; instead of a second reduction we undo that
    after the fact: with n values per channel, keras_new = torch_new - (torch_new - (1-m) old) / n.
    """

    def __init__(self, features, momentum=0.99, epsilon=1e-3):
        super().__init__()
        self.momentum, self.epsilon = momentum, epsilon
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("moving_mean", torch.zeros(features))
        self.register_buffer("moving_variance", torch.ones(features))

    def forward(self, x):
        if not self.training:
            return F.batch_norm(x, self.moving_mean, self.moving_variance, self.gamma, self.beta,
                                False, 0.0, self.epsilon)
        n = x.numel() // x.shape[1]
        var = self.moving_variance.clone()  # autograd keeps this one; the buffer is updated below
        y = F.batch_norm(x, self.moving_mean, var, self.gamma, self.beta, True, 1.0 - self.momentum, self.epsilon)
        with torch.no_grad():
            self.moving_variance.copy_(var - (var - self.momentum * self.moving_variance) / n)
        return y


class SameConv2d(nn.Module):
    """Conv2D with TensorFlow 'same' padding: explicit F.pad (extra row/column after), then padding 0."""

    def __init__(self, in_channels, out_channels, kernel, stride, image_size):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=0)
        out, before = same_padding(image_size, kernel, stride)
        total = max((out - 1) * stride + kernel - image_size, 0)
        self.pad = (before, total - before, before, total - before)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad) if any(self.pad) else x)


class SameConvTranspose2d(nn.Module):
    """Conv2DTranspose 'same' as the adjoint of SameConv2d on the output size.

    TF puts the padding *before* at total//2 (0 for k=3, stride 2), so torch's padding=1,
    output_padding=1 would shift the output by one pixel; we use padding=before and crop the end.
    """

    def __init__(self, in_channels, out_channels, kernel, stride, in_size):
        super().__init__()
        self.out_size = in_size * stride
        before = same_padding(self.out_size, kernel, stride)[1]
        extra = self.out_size - ((in_size - 1) * stride - 2 * before + kernel)
        self.crop = extra < 0
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride, padding=before,
                                       output_padding=max(extra, 0))

    def forward(self, x):
        y = self.conv(x)
        if not self.crop:
            return y
        # A cropped view makes torch's CPU batch_norm take a slow strided path: copy it compactly.
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        return y[:, :, :self.out_size, :self.out_size].contiguous(memory_format=fmt)


class TorchVAE(nn.Module):
    """The same network as scratchvae.model.VAE(config), parameter for parameter: built by walking
    the same layer specs (scratchvae.architecture), NCHW inside, Keras order at Flatten/Reshape.

    plain=True builds what a PyTorch user would write for the same specs instead (same channels
    and FLOPs, for timing only): nn.Conv2d(padding=k//2), nn.ConvTranspose2d(padding=k//2,
    output_padding=stride-1), nn.BatchNorm1d/2d, NCHW flatten and reshape. Its outputs differ from
    ours (torch pads both sides at stride 2; TF 'same' pads only the end), its FLOPs do not."""

    def __init__(self, config=None, plain=False):
        super().__init__()
        cfg = self.config = config or VAEConfig()
        self.plain = plain
        self.parts = {part: specs for part, _, specs in architecture.parts(cfg)}
        self.layers = nn.ModuleDict()
        for part, specs in self.parts.items():
            for spec, shape in specs:
                module = (_plain_module if plain else _module)(spec, shape)
                if module is not None:
                    self.layers[_key(part, spec)] = module

    def _run(self, part, specs, x):
        for spec, _ in specs:
            a = spec.args
            if _key(part, spec) in self.layers:
                x = self.layers[_key(part, spec)](x)
                if a.get("activation") == "relu":
                    x = F.relu(x)
            elif spec.kind == "LeakyReLU":
                x = F.leaky_relu(x, a["alpha"])
            elif spec.kind == "Sigmoid":
                x = torch.sigmoid(x)
            elif spec.kind == "UpSampling2D":
                x = F.interpolate(x, scale_factor=a["size"], mode="nearest")  # Keras' nearest: floor(i / 2)
            elif spec.kind == "Flatten" and self.plain:
                x = x.flatten(1)
            elif spec.kind == "Flatten":
                x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # Keras Flatten order (H, W, C)
            elif spec.kind == "Reshape" and self.plain:
                h, w, c = a["target_shape"]
                x = x.reshape(-1, c, h, w)
            elif spec.kind == "Reshape":
                x = x.reshape(-1, *a["target_shape"]).permute(0, 3, 1, 2)  # Keras Reshape is NHWC
            else:
                raise ValueError(f"{part}.{spec.name}: no PyTorch mapping for {spec.kind}")
        return x

    def encode(self, x):
        """x NCHW in [0, 1] -> (z_mean, z_log_var)."""
        specs = self.parts["encoder"]
        heads = [(spec, shape) for spec, shape in specs if spec.name in ("z_mean", "z_log_var")]
        h = self._run("encoder", [p for p in specs if p not in heads], x)
        return tuple(self._run("encoder", [head], h) for head in heads)

    def decode(self, z):
        return self._run("decoder", self.parts["decoder"], z)

    def loss_terms(self, x, eps):
        """(total, mse, kl) tensors for a batch, z = mu + exp(lv/2) eps with lv clamped as in losses;
        total = beta * MSE + KL, or with recon "sigma" the sigma-VAE's D/2 log(2 pi s2) + D MSE / (2 s2) + KL,
        s2 = max(MSE, floor) (autograd differentiates through s2 too: the check that dL/ds2 = 0)."""
        z_mean, z_log_var = self.encode(x)
        lv = torch.clamp(z_log_var, *losses.LOGVAR_RANGE)
        z = z_mean + torch.exp(0.5 * lv) * eps
        x_hat = self.decode(z)
        mse = torch.mean((x_hat - x) ** 2)
        kl = torch.mean(-0.5 * torch.sum(1.0 + lv - z_mean ** 2 - torch.exp(lv), dim=1))
        if self.config.recon == "sigma":
            d, s2 = self.config.pixels, torch.clamp(mse, min=losses.MIN_SIGMA_SQ)
            return 0.5 * d * (torch.log(2 * np.pi * s2) + mse / s2) + kl, mse, kl
        return self.config.beta * mse + kl, mse, kl

    # ------------------------------------------------------------ weights from / to scratchvae
    def tensor_map(self):
        """{scratchvae dotted name: (torch tensor, permutation from our layout to torch's)}."""
        conv = (3, 2, 0, 1)  # (kh,kw,in,out)->(out,in,kh,kw); (kh,kw,out,in)->(in,out,kh,kw): no flips
        m = {}
        for part, specs in self.parts.items():
            for spec, _ in specs:
                prefix = f"{part}.{spec.name}"
                module = self.layers[_key(part, spec)] if _key(part, spec) in self.layers else None
                if spec.kind in ("Conv2D", "Conv2DTranspose"):
                    module = getattr(module, "conv", module)  # the twin wraps it with its padding
                    m[f"{prefix}.kernel"] = (module.weight, conv)
                    m[f"{prefix}.bias"] = (module.bias, None)
                elif spec.kind == "Dense":
                    m[f"{prefix}.kernel"] = (module.weight, (1, 0))
                    m[f"{prefix}.bias"] = (module.bias, None)
                elif spec.kind == "BatchNormalization":
                    m.update(_bn_map(prefix, module))
        return m

    @torch.no_grad()
    def load_from_scratchvae(self, vae):
        """Copy parameters and BN moving statistics of a scratchvae VAE (same config) into this model."""
        ours = {**vae.params(), **vae.state()}
        tmap = self.tensor_map()
        if set(ours) != set(tmap):
            raise ValueError(f"tensor names differ: {sorted(set(ours) ^ set(tmap))}")
        for name, (t, perm) in tmap.items():
            a = ours[name] if perm is None else ours[name].transpose(perm)
            t.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(t.dtype))
        return self

    def to_scratchvae_layout(self, attr="data"):
        """{dotted name: numpy array in our layout} of each tensor's .data or .grad."""
        out = {}
        for name, (t, perm) in self.tensor_map().items():
            v = getattr(t, attr)
            if v is None:
                continue
            a = v.detach().cpu().numpy()
            out[name] = a if perm is None else a.transpose(np.argsort(perm))
        return out


def _key(part, spec):
    return f"{part}__{spec.name}"  # ModuleDict keys cannot hold dots


def _module(spec, shape):
    """The torch module of a spec with parameters (None for the parameter-free ones)."""
    a = spec.args
    if spec.kind == "Conv2D":
        return SameConv2d(a["in_channels"], a["filters"], a["kernel_size"], a["strides"], shape[0])
    if spec.kind == "Conv2DTranspose":
        return SameConvTranspose2d(a["in_channels"], a["filters"], a["kernel_size"], a["strides"], shape[0])
    if spec.kind == "Dense":
        return nn.Linear(a["in_features"], a["units"])
    if spec.kind == "BatchNormalization":
        return KerasBatchNorm(a["features"], a["momentum"], a["epsilon"])
    return None


def _plain_module(spec, shape):
    """The module a PyTorch user would write for a spec (TorchVAE(plain=True)); None without parameters."""
    a = spec.args
    if spec.kind == "Conv2D":
        k = a["kernel_size"]
        return nn.Conv2d(a["in_channels"], a["filters"], k, a["strides"], padding=k // 2)
    if spec.kind == "Conv2DTranspose":
        k, s = a["kernel_size"], a["strides"]
        return nn.ConvTranspose2d(a["in_channels"], a["filters"], k, s, padding=k // 2, output_padding=s - 1)
    if spec.kind == "BatchNormalization":
        norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return norm(a["features"], eps=a["epsilon"], momentum=1.0 - a["momentum"])
    return _module(spec, shape)  # Dense


def _bn_map(prefix, bn):
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):  # the plain variant's torch BatchNorm
        names = ("weight", "bias", "running_mean", "running_var")
    else:
        names = ("gamma", "beta", "moving_mean", "moving_variance")
    return {f"{prefix}.{ours}": (getattr(bn, theirs), None)
            for ours, theirs in zip(("gamma", "beta", "moving_mean", "moving_variance"), names)}


def to_torch_images(x_nhwc, dtype=torch.float32):
    """NHWC numpy -> NCHW tensor viewing the same memory (channels_last strides)."""
    return torch.from_numpy(np.ascontiguousarray(x_nhwc)).to(dtype).permute(0, 3, 1, 2)


class KerasAdam(torch.optim.Adam):
    """torch Adam with Keras' epsilon placement (scratchvae.optim): p -= a_t m / (sqrt(v) + eps).

    torch divides by sqrt(v / (1 - b2^t)) + eps instead, i.e. a step-t epsilon of eps / sqrt(1 - b2^t)
    in Keras terms (31x larger at step 1, the same after a few thousand steps). Passing
    eps / sqrt(1 - b2^t) to torch at step t gives Keras' update exactly.
    """

    def __init__(self, params, lr, epsilon=1e-7):
        super().__init__(params, lr=lr, betas=(0.9, 0.999), eps=epsilon)
        self.keras_epsilon, self.t = epsilon, 0

    @torch.no_grad()
    def step(self, closure=None):
        self.t += 1
        for group in self.param_groups:
            group["eps"] = self.keras_epsilon / np.sqrt(1 - group["betas"][1] ** self.t)
        return super().step(closure)


def make_optimizer(model, lr, keras_epsilon=True):
    """Adam(lr, eps=1e-7); with keras_epsilon (default) the update is exactly scratchvae's/Keras'."""
    if keras_epsilon:
        return KerasAdam(model.parameters(), lr)
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-7)


# ------------------------------------------------------------------ cross-check
def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)) + np.max(np.abs(b)), 1e-30) * 2)


def check_conv_transpose_padding(seed=0):
    """Max abs difference of our stride-2 Conv2DTranspose vs torch for two paddings (ours, brief's)."""
    from scratchvae.layers import Conv2DTranspose
    rng = np.random.default_rng(seed)
    layer = Conv2DTranspose(4, 5, 3, 2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 6, 6, 4))
    ours = layer.forward(x, True).transpose(0, 3, 1, 2)
    w = torch.from_numpy(layer.params["kernel"].transpose(3, 2, 0, 1).copy())
    xt = to_torch_images(x, torch.float64)
    crop = F.conv_transpose2d(xt, w, stride=2, padding=0)[:, :, :12, :12].numpy()
    p1 = F.conv_transpose2d(xt, w, stride=2, padding=1, output_padding=1).numpy()
    return {"padding=0 + crop end": float(np.abs(crop - ours).max()),
            "padding=1, output_padding=1": float(np.abs(p1 - ours).max())}


def compare_step(config, batch, seed, dtype=np.float64, lr=1e-3):
    """One forward_backward (+ one Adam step in float64) on both models from identical weights, batch, eps.

    Returns symmetric max relative differences 2 max|a-b| / (max|a| + max|b|) per quantity.
    """
    from scratchvae.optim import Adam
    torch_dtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    rng = np.random.default_rng(seed)
    vae = VAE(config, seed=seed, dtype=dtype)
    # Non-trivial BN parameters and moving statistics, so the copies are checked too.
    for name, a in {**vae.params(), **vae.state()}.items():
        if name.endswith(("gamma", "beta", "bias", "moving_mean")):
            a[...] = rng.uniform(-0.5, 0.5, a.shape) + (1.0 if name.endswith("gamma") else 0.0)
        elif name.endswith("moving_variance"):
            a[...] = rng.uniform(0.5, 1.5, a.shape)
    model = TorchVAE(config).to(torch_dtype).load_from_scratchvae(vae)
    x = rng.uniform(0, 1, (batch, config.image_size, config.image_size, config.channels)).astype(dtype)
    eps = rng.standard_normal((batch, config.z_dim)).astype(dtype)

    held = vae.evaluate(x, eps, training=False)  # inference-mode BN (moving statistics)
    model.eval()
    with torch.no_grad():
        _, e_mse, e_kl = model.loss_terms(to_torch_images(x, torch_dtype), torch.from_numpy(eps))
    terms = vae.forward_backward(x, eps)
    model.train()
    total, mse, kl = model.loss_terms(to_torch_images(x, torch_dtype), torch.from_numpy(eps))
    total.backward()
    ours_g, theirs_g = vae.grads(), model.to_scratchvae_layout("grad")
    out = {"loss.total": _rel(terms["total"], total.item()), "loss.mse": _rel(terms["mse"], mse.item()),
           "loss.kl": _rel(terms["kl"], kl.item()), "inference-mode mse": _rel(held["mse"], e_mse.item()),
           "inference-mode kl": _rel(held["kl"], e_kl.item())}
    # A bias straight before a training-mode BN has an exactly zero gradient: both sides hold
    # round-off only, so those are reported as absolute sizes, not compared.
    zero = {f"{part}.{name}.bias" for part, _, specs in architecture.parts(config)
            for name in dead_biases([spec for spec, _ in specs])}
    live = [n for n in ours_g if n not in zero]
    names = [n for n in live if n.startswith(("encoder.conv_1.", "encoder.bn_2.", "encoder.z_log_var.",
                                              "decoder.dense.", "decoder.bn_0.", "decoder.conv_t_1.kernel",
                                              "decoder.conv_1.kernel",
                                              "decoder.conv_t_out."))]
    out.update({f"grad {n}": _rel(ours_g[n], theirs_g[n]) for n in names})
    out["grad (all other tensors, worst)"] = max(_rel(ours_g[n], theirs_g[n]) for n in live)
    out["|grad| of pre-BN biases (ours, max)"] = max(float(np.abs(ours_g[n]).max()) for n in zero)
    out["|grad| of pre-BN biases (torch, max)"] = max(float(np.abs(theirs_g[n]).max()) for n in zero)
    theirs_s = model.to_scratchvae_layout("data")
    out["moving stats (all, worst)"] = max(_rel(a, theirs_s[n]) for n, a in vae.state().items())

    # One optimizer step from the same gradients: compare the parameter *updates*.
    if np.dtype(dtype) != np.float64:
        return out  # float32 round-off flips the sign of near-zero gradients, and Adam's step is ~lr*sign(g)
    # Plain torch Adam differs from Keras' epsilon placement where |g| ~ eps / sqrt(1 - b2): see KerasAdam.
    before = {n: a.copy() for n, a in vae.params().items()}
    Adam(lr=lr).step(vae.params(), vae.grads())
    start = {n: t.detach().clone() for n, (t, _) in model.tensor_map().items()}
    for keras_epsilon in (True, False):
        with torch.no_grad():
            for n, (t, _) in model.tensor_map().items():
                t.copy_(start[n])
        make_optimizer(model, lr, keras_epsilon).step()
        after = model.to_scratchvae_layout("data")
        label = "KerasAdam" if keras_epsilon else "torch.optim.Adam"
        out[f"{label} update (worst; pre-BN biases excluded)"] = max(
            _rel(vae.params()[n] - before[n], after[n] - before[n]) for n in live)
    return out


# ------------------------------------------------------------------ training and throughput
def _batches(images_uint8, batch_size, order):
    for start in range(0, len(order) - batch_size + 1, batch_size):
        yield images_uint8[np.sort(order[start:start + batch_size])]


def _as_input(batch_uint8, channels_last):
    x = torch.from_numpy(batch_uint8).float().div_(255.0).permute(0, 3, 1, 2)  # NCHW view
    return x if channels_last else x.contiguous()


@torch.no_grad()
def evaluate(model, images_uint8, batch_size, seed, channels_last=False):
    """Held-out mean MSE and KL (nats/image): inference-mode BN, z sampled with seeded eps."""
    model.eval()
    rng = np.random.default_rng(seed)
    sums, count = np.zeros(2), 0
    for start in range(0, len(images_uint8), batch_size):
        xb = images_uint8[start:start + batch_size]
        eps = torch.from_numpy(rng.standard_normal((len(xb), model.config.z_dim), dtype=np.float32))
        _, mse, kl = model.loss_terms(_as_input(xb, channels_last), eps)
        sums += np.array([mse.item(), kl.item()]) * len(xb)
        count += len(xb)
    model.train()
    return sums / count


def train_torch(images_uint8_train, images_uint8_val, config, epochs, batch_size, lr, seed,
                channels_last=False, log=None):
    """Train the torch twin from scratchvae's initial weights (VAE(config, seed)).

    Per epoch: shuffled full batches (the last partial batch is dropped), eps from one seeded
    generator; then held-out MSE and KL. Returns a list of per-epoch dicts.
    """
    torch.manual_seed(seed)
    model = TorchVAE(config).load_from_scratchvae(VAE(config, seed=seed))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = make_optimizer(model, lr)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(images_uint8_train))
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for xb in _batches(images_uint8_train, batch_size, order):
            eps = torch.from_numpy(rng.standard_normal((len(xb), config.z_dim), dtype=np.float32))
            total, mse, kl = model.loss_terms(_as_input(xb, channels_last), eps)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            seen += len(xb)
            loss_sum += total.item() * len(xb)
        seconds = time.perf_counter() - t0
        val_mse, val_kl = evaluate(model, images_uint8_val, batch_size, seed + 1, channels_last)
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_mse": float(val_mse),
               "val_kl": float(val_kl), "images_per_s": seen / seconds, "seconds": seconds}
        history.append(row)
        if log:
            log(row)
    return history


def torch_train_times(config, x_nhwc, eps, warmup, channels_last=False, plain=False, compiled=False, seed=0):
    """Seconds of training steps of the torch twin (plain=True: the plain variant) from scratchvae's
    weights VAE(config, seed): one step per array in `eps`, all on the float32 NHWC batch `x_nhwc`,
    which is put in the model's layout before any timing. With `compiled`, the loss runs through
    torch.compile (default mode), which compiles during the first step; the optimizer stays eager.
    Returns (seconds of the first step, [seconds of each step after `warmup`])."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = TorchVAE(config, plain).load_from_scratchvae(VAE(config, seed=seed)).to(memory_format=fmt)
    gc.collect()  # our VAE (a reference cycle) is garbage now: keep it out of torch's peak RSS
    model.train()
    opt = make_optimizer(model, 1e-4, keras_epsilon=not plain)
    x = torch.from_numpy(np.asarray(x_nhwc, np.float32)).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    eps = [torch.from_numpy(np.asarray(e, np.float32)) for e in eps]

    def loss(xb, eb):
        return model.loss_terms(xb, eb)[0]

    if compiled:
        loss = torch.compile(loss)
    times = []
    for e in eps:
        t0 = time.perf_counter()
        total = loss(x, e)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[0], times[warmup:]


# ------------------------------------------------------------------ data (scratchvae.data if present)
def load_split(folder, image_size, val_fraction, batch_size, seed, limit=None):
    """(train uint8 NHWC, val uint8 NHWC, note): scratchvae.data when it exists, else a local loader."""
    try:
        from scratchvae import data
    except ImportError:
        data = None
    if data is not None:
        found = data.load_images(folder, image_size, crop="center", limit=limit, progress=False)
        images = np.asarray(found.images)
        train_idx, val_idx = data.split_indices(len(images), val_fraction, batch_size, seed, found.partition)
        return images[train_idx], images[val_idx], "scratchvae.data"
    images = _load_folder(folder, image_size, limit)
    perm = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, int(round(val_fraction * len(images))))
    return images[np.sort(perm[n_val:])], images[np.sort(perm[:n_val])], "local Pillow loader"


def _load_folder(folder, image_size, limit=None):
    """Center-crop each image square, LANCZOS-resize to image_size, uint8 NHWC, sorted by file name."""
    from PIL import Image
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))[:limit]
    out = np.empty((len(names), image_size, image_size, 3), np.uint8)
    for i, name in enumerate(names):
        with Image.open(os.path.join(folder, name)) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            out[i] = np.asarray(im.resize((image_size, image_size), Image.LANCZOS, box=box))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="cross-check one step against scratchvae and exit")
    p.add_argument("--data", help="folder of face images")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.check:
        print("Conv2DTranspose stride 2 'same' vs torch, max abs diff:")
        for k, v in check_conv_transpose_padding().items():
            print(f"  {k:<32}{v:.3e}")
        seed_cfg = VAEConfig(image_size=16, channels=3, filters=8, blocks=2, z_dim=6)
        for cfg in (seed_cfg, VAEConfig(**{**seed_cfg.to_dict(), "decoder": "resize", "recon": "sigma"})):
            for dtype in (np.float64, np.float32):
                print(f"compare_step({cfg}, batch=4, seed=0) {np.dtype(dtype).name}: relative differences")
                for k, v in compare_step(cfg, 4, 0, dtype).items():
                    print(f"  {k:<52}{v:.2e}")
        return 0
    if not args.data:
        p.error("give --data FOLDER or --check")
    if not os.path.isdir(args.data):
        print(f"error: {args.data} is not a folder of images", file=sys.stderr)
        return 2
    cfg = VAEConfig(image_size=args.image_size)
    t0 = time.perf_counter()
    try:
        train, val, how = load_split(args.data, args.image_size, args.val_fraction, args.batch_size, args.seed,
                                     args.limit)
    except Exception as e:  # scratchvae.data.DataError: one line, exit 2
        if type(e).__name__ != "DataError":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"loaded {len(train)} train + {len(val)} held-out images at {args.image_size}px via {how} "
          f"in {time.perf_counter() - t0:.1f}s; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"epochs {args.epochs}, batch {args.batch_size}, lr {args.lr}, seed {args.seed}, "
          f"channels_last {args.channels_last}")

    def log(r):
        print(f"epoch {r['epoch']}: train loss {r['train_loss']:.2f}  held-out MSE {r['val_mse']:.5f}  "
              f"KL {r['val_kl']:.2f}  {r['images_per_s']:.1f} img/s ({r['seconds']:.0f}s)", flush=True)

    train_torch(train, val, cfg, args.epochs, args.batch_size, args.lr, args.seed, args.channels_last, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
