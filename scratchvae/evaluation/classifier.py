"""A small attribute classifier built from the project's own layers, to measure attribute edits
and, with a hidden layer, to give the face feature space of scratchvae.face_features.

Three stride-2 ReLU convolutions, optionally a hidden Dense + ReLU (the features), then one Dense
layer giving a logit per attribute, trained with the logistic loss (its gradient written out below)
and Adam. NHWC float images in [0, 1]; labels 0/1. An evaluation tool beside the VAE, not part of it.
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.kernels.workspace import Workspace
from scratchvae.layers import Conv2D, Dense, Flatten, ReLU
from scratchvae.optim import Adam
from scratchvae.run import checkpoint

FORMAT = "scratchvae-attribute-classifier"


def logistic_loss(logits, y):
    """Mean over every element of softplus(l) - y l (the logistic loss of sigmoid(l) against y in {0, 1}),
    and its gradient (sigmoid(l) - y) / size. softplus(l) = max(l, 0) + log(1 + exp(-|l|)) never overflows."""
    logits, y = np.asarray(logits), np.asarray(y, logits.dtype)
    loss = np.mean(np.maximum(logits, 0) + np.log1p(np.exp(-np.abs(logits))) - y * logits)
    return float(loss), ((sigmoid(logits) - y) / logits.size).astype(logits.dtype)


def sigmoid(a):
    """1 / (1 + exp(-a)), written so that neither side overflows."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


class Classifier:
    """Conv2D(3x3, stride 2, ReLU) x len(filters) -> Flatten [-> Dense(hidden) -> ReLU] -> Dense(outputs):
    one logit per attribute. With `hidden`, the ReLU's output is the network's feature vector."""

    def __init__(self, image_size, attributes, filters=(32, 64, 128), channels=3, dtype=np.float32, seed=0,
                 hidden=None):
        self.image_size, self.attributes, self.filters = int(image_size), list(attributes), tuple(filters)
        self.channels, self.dtype = int(channels), np.dtype(dtype)
        self.hidden = None if hidden is None else int(hidden)
        rng, ws = np.random.default_rng(seed), Workspace()
        layers, c, size = [], self.channels, self.image_size
        for i, f in enumerate(self.filters):
            layers.append(Conv2D(c, f, 3, 2, activation="relu", dtype=dtype, rng=rng, name=f"conv_{i + 1}",
                                 need_dx=i > 0, workspace=ws))
            c, size = f, -(-size // 2)
        width = size * size * c
        layers.append(Flatten(dtype=dtype, name="flatten"))
        if self.hidden is not None:
            layers += [Dense(width, self.hidden, dtype=dtype, rng=rng, name="hidden", workspace=ws),
                       ReLU(dtype=dtype, name="hidden_relu", workspace=ws)]
            width = self.hidden
        layers.append(Dense(width, len(self.attributes), dtype=dtype, rng=rng, name="logits", workspace=ws))
        self.layers = layers

    def params(self):
        return {f"{layer.name}.{k}": v for layer in self.layers for k, v in layer.params.items()}

    def grads(self):
        return {f"{layer.name}.{k}": v for layer in self.layers for k, v in layer.grads.items()}

    def _forward(self, x, training, layers):
        h = K.from_host(np.ascontiguousarray(x, dtype=self.dtype))
        for layer in layers:
            h = layer.forward(h, training)
        return np.array(K.to_host(h))

    def logits(self, x, training=False):
        """(N, attributes) logits of images x (N, S, S, C)."""
        return self._forward(x, training, self.layers)

    def features(self, x, batch_size=128):
        """(N, hidden) float32 feature vectors (the hidden ReLU's output), in inference mode and batches."""
        if self.hidden is None:
            raise ValueError("this classifier has no hidden layer, so no feature vector")
        trunk = self.layers[:-1]
        return np.concatenate([self._forward(x[i:i + batch_size], False, trunk) for i in range(0, len(x), batch_size)])

    def loss_and_grads(self, x, y):
        """One training-mode pass: the logistic loss of the batch, gradients left in grads()."""
        loss, dlogits = logistic_loss(self.logits(x, training=True), y)
        d = K.from_host(dlogits)
        for layer in reversed(self.layers):
            d = layer.backward(d)
        return loss

    def probabilities(self, x, batch_size=128):
        """(N, attributes) sigmoid(logits), in inference mode and batches."""
        return np.concatenate([sigmoid(self.logits(x[i:i + batch_size]).astype(np.float64))
                               for i in range(0, len(x), batch_size)])

    def save(self, path, meta=None):
        arrays = {f"param/{k}": K.to_host(v) for k, v in self.params().items()}
        checkpoint.save(path, arrays, {"kind": FORMAT, "image_size": self.image_size, "attributes": self.attributes,
                                       "filters": list(self.filters), "channels": self.channels, "hidden": self.hidden,
                                       **(meta or {})})

    @classmethod
    def load(cls, path):
        arrays, meta = checkpoint.load(path)
        if meta.get("kind") != FORMAT:
            raise checkpoint.CheckpointError(f"{path} is not an attribute classifier")
        clf = cls(meta["image_size"], meta["attributes"], tuple(meta["filters"]), meta["channels"],
                  hidden=meta.get("hidden"))
        found = checkpoint.expect(arrays, clf.params(), "param/", path)
        for name, live in clf.params().items():
            live[...] = found[name]
        return clf, meta


def train(clf, read, idx, y, epochs, batch_size=64, lr=1e-3, seed=0, flip=True, log=None, step=None):
    """Adam on the logistic loss over images read(sorted indices) with labels y[i] (0/1, one row per
    entry of idx), shuffled per epoch from `seed`; flip mirrors a random half of each batch (faces
    keep their attributes when mirrored). lr: a number, or lr(epoch) -> the rate for that epoch (from 0).
    log(epoch, mean loss) after each epoch; step(images) after each batch (a progress bar's update)."""
    rate = lr if callable(lr) else (lambda epoch: lr)
    opt, rng = Adam(lr=rate(0)), np.random.default_rng(seed)
    y = np.asarray(y, clf.dtype)
    for epoch in range(epochs):
        opt.lr = rate(epoch)
        order, total, steps = rng.permutation(len(idx)), 0.0, 0
        for start in range(0, len(order) - batch_size + 1, batch_size):
            pick = np.sort(order[start:start + batch_size])
            x = np.array(read(idx[pick]), dtype=clf.dtype)
            if flip:
                mirror = rng.random(len(x)) < 0.5
                x[mirror] = x[mirror, :, ::-1]
            total += clf.loss_and_grads(x, y[pick])
            opt.step(clf.params(), clf.grads())
            steps += 1
            if step is not None:
                step(len(pick))
        if log is not None:
            log(epoch + 1, total / max(steps, 1))


def load_or_train(path, image_size, names, read, idx, y, epochs=8, batch_size=64, seed=0, log=None):
    """(classifier, how): the classifier saved at `path` when there is one, else one trained on the
    images read(idx) with 0/1 labels y (columns in `names`' order) and, with a path, saved there.
    One UserError when the saved one classifies other names or another image size."""
    from scratchvae.run.errors import UserError
    if path:
        try:
            clf, _ = Classifier.load(path)
        except checkpoint.CheckpointError as e:
            if "no checkpoint at" not in str(e):
                raise UserError(str(e)) from None
        else:
            if clf.attributes != list(names) or clf.image_size != image_size:
                raise UserError(f"{path} classifies {len(clf.attributes)} labels ({', '.join(clf.attributes[:4])}"
                                f"{', ...' if len(clf.attributes) > 4 else ''}) at {clf.image_size} px, not "
                                f"{len(names)} ({', '.join(list(names)[:4])}{', ...' if len(names) > 4 else ''}) "
                                f"at {image_size} px: give another classifier path to train a new one")
            return clf, "loaded"
    clf = Classifier(image_size, names, seed=seed)
    train(clf, read, idx, y, epochs, batch_size, seed=seed, log=log)
    if path:
        clf.save(path, meta={"trained_on": f"{len(idx)} training images", "epochs": epochs})
    return clf, f"trained on {len(idx)} images, {epochs} epochs"


def accuracy(p, y):
    """Per attribute: accuracy at p > 0.5, the share of the commoner class (what always guessing it
    scores), and the rates of positives and negatives found."""
    guess, y = p > 0.5, np.asarray(y) > 0.5
    out = {}
    for a in range(y.shape[1]):
        pos, neg = y[:, a], ~y[:, a]
        out[a] = {"accuracy": float(np.mean(guess[:, a] == pos)), "baseline": float(max(pos.mean(), neg.mean())),
                  "true_positive_rate": float(guess[pos, a].mean()) if pos.any() else None,
                  "true_negative_rate": float((~guess[neg, a]).mean()) if neg.any() else None,
                  "positives": int(pos.sum()), "negatives": int(neg.sum())}
    return out
