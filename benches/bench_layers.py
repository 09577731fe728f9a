"""Forward and backward time of each layer of the seed's VAE, per kernel backend, against PyTorch.

Backends: Numba CPU ("cpu"), the NumPy reference ("numpy", slow: fewer repeats, --skip-reference)
and PyTorch (channels_last by default) when torch imports. Shapes are the seed's 128x128x3 model
with 128 filters at --batch (default 32). Median of repeats after one warm-up (JIT compile).

    python benches/bench_layers.py [--batch 32] [--repeats 5] [--skip-reference] [--markdown]
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

from scratchvae import kernels
from scratchvae.layers import BatchNorm, Conv2D, Conv2DTranspose, Dense, LeakyReLU

ALPHA, MOMENTUM, EPSILON = 0.3, 0.99, 1e-3


# ------------------------------------------------------------------ the cases
class Case:
    """One layer at one shape: our layer, its input shape, forward FLOPs (2*MACs) or bytes moved."""

    def __init__(self, name, shape, layer, x_shape, flops=None, elems=None):
        self.name, self.shape, self.layer, self.x_shape = name, shape, layer, x_shape
        self.flops = flops  # forward; backward counted as 2x for conv and dense
        self.elems = elems  # element-wise layers: report GB/s of the minimum traffic instead


def seed_cases(n, rng):
    cases = []
    size, c = 128, 3
    for _ in range(4):
        ho = size // 2
        layer = Conv2D(c, 128, 3, 2, activation="relu", rng=rng, name="conv")
        cases.append(Case("Conv2D s2 +relu", f"{size}x{size}x{c} -> {ho}x{ho}x128", layer,
                          (n, size, size, c), flops=2 * n * ho * ho * 128 * 9 * c))
        size, c = ho, 128
    for _ in range(4):
        ho = size * 2
        layer = Conv2DTranspose(128, 128, 3, 2, rng=rng, name="conv_t")
        cases.append(Case("Conv2DTranspose s2", f"{size}x{size}x128 -> {ho}x{ho}x128", layer,
                          (n, size, size, 128), flops=2 * n * size * size * 128 * 9 * 128))
        size = ho
    layer = Conv2DTranspose(128, 3, 3, 1, rng=rng, name="conv_t_out")
    cases.append(Case("Conv2DTranspose s1", "128x128x128 -> 128x128x3", layer, (n, 128, 128, 128),
                      flops=2 * n * 128 * 128 * 128 * 9 * 3))
    for s in (64, 128):
        cases.append(Case("BatchNorm (training)", f"{s}x{s}x128", BatchNorm(128, MOMENTUM, EPSILON, name="bn"),
                          (n, s, s, 128), elems=n * s * s * 128))
    for s in (64, 128):
        cases.append(Case("LeakyReLU 0.3", f"{s}x{s}x128", LeakyReLU(ALPHA, name="leaky"),
                          (n, s, s, 128), elems=n * s * s * 128))
    for fin, fout in ((8192, 200), (200, 8192)):
        cases.append(Case("Dense", f"{fin} -> {fout}", Dense(fin, fout, rng=rng, name="dense"),
                          (n, fin), flops=2 * n * fin * fout))
    return cases


# ------------------------------------------------------------------ timing
def median_times(fwd, bwd, repeats, warmup):
    """Median forward and backward seconds; fwd() returns what bwd() takes."""
    for _ in range(warmup):
        bwd(fwd())
    tf, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = fwd()
        t1 = time.perf_counter()
        bwd(y)
        t2 = time.perf_counter()
        tf.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(tf), statistics.median(tb)


def time_ours(case, x, dy, backend, repeats, warmup):
    with kernels.using(backend):
        return median_times(lambda: case.layer.forward(x, True), lambda _: case.layer.backward(dy), repeats, warmup)


def torch_fn(case, torch, F, channels_last):
    """(forward closure over torch tensors, input tensor, dy tensor) equivalent to our layer."""
    layer = case.layer
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def param(a, perm=None):
        t = torch.from_numpy(np.ascontiguousarray(a if perm is None else a.transpose(perm)))
        if t.ndim == 4:
            t = t.contiguous(memory_format=fmt)
        return t.requires_grad_()

    def image(a):  # NHWC numpy -> NCHW tensor in the chosen memory format
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(memory_format=fmt)

    if isinstance(layer, Conv2D):
        w, b = param(layer.params["kernel"], (3, 2, 0, 1)), param(layer.params["bias"])
        # TF 'same' at stride 2 on an even size: one extra row/column after, none before.
        fwd = lambda x: F.relu(F.conv2d(F.pad(x, (0, 1, 0, 1)), w, b, stride=2))  # noqa: E731
    elif isinstance(layer, Conv2DTranspose):
        w, b = param(layer.params["kernel"], (3, 2, 0, 1)), param(layer.params["bias"])
        if layer.stride == 2:  # the adjoint of the conv above: padding 0, then drop the last row/column
            fwd = lambda x: F.conv_transpose2d(x, w, b, stride=2)[:, :, :2 * x.shape[2], :2 * x.shape[3]]  # noqa: E731
        else:
            fwd = lambda x: F.conv_transpose2d(x, w, b, stride=1, padding=1)  # noqa: E731
    elif isinstance(layer, BatchNorm):
        g, b = param(layer.params["gamma"]), param(layer.params["beta"])
        rm, rv = torch.zeros(layer.features), torch.ones(layer.features)
        fwd = lambda x: F.batch_norm(x, rm, rv, g, b, True, 1 - MOMENTUM, EPSILON)  # noqa: E731
    elif isinstance(layer, LeakyReLU):
        fwd = lambda x: F.leaky_relu(x, ALPHA)  # noqa: E731
    elif isinstance(layer, Dense):
        w, b = param(layer.params["kernel"], (1, 0)), param(layer.params["bias"])
        fwd = lambda x: F.linear(x, w, b)  # noqa: E731
    else:
        raise TypeError(type(layer))
    return fwd, image if len(case.x_shape) == 4 else torch.from_numpy


def time_torch(case, x, dy, torch, F, channels_last, repeats, warmup):
    fwd, convert = torch_fn(case, torch, F, channels_last)
    xt = convert(x).requires_grad_()
    dyt = convert(dy)

    def forward():
        xt.grad = None
        return fwd(xt)

    def backward(y):
        y.backward(dyt)

    return median_times(forward, backward, repeats, warmup)


# ------------------------------------------------------------------ machine facts
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sgemm_gflops(m, k, n, repeats):
    """Median GFLOP/s of np.matmul (m,k)@(k,n) in float32."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times) / 1e9


# ------------------------------------------------------------------ output
def rate(case, fwd_s, bwd_s):
    """GFLOP/s over forward + backward (backward = 2x forward), or GB/s for element-wise layers."""
    if case.flops:
        return f"{3 * case.flops / (fwd_s + bwd_s) / 1e9:.1f}"
    # Minimum traffic: forward reads x, writes y; backward reads dy and x, writes dx (float32).
    return f"{5 * case.elems * 4 / (fwd_s + bwd_s) / 1e9:.1f} GB/s"


def print_table(header, rows, markdown):
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for r in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats for cpu and torch")
    p.add_argument("--ref-repeats", type=int, default=1, help="timed repeats for the NumPy reference")
    p.add_argument("--skip-reference", action="store_true", help="do not time the slow NumPy reference")
    p.add_argument("--threads", type=int, default=None, help="threads for Numba, BLAS and torch (default: all)")
    p.add_argument("--torch-format", choices=("channels_last", "nchw"), default="channels_last")
    p.add_argument("--only", default=None, help="run only layers whose name contains this text")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be at least 2 (BatchNorm needs batch statistics)")

    import numba
    try:
        from scratchvae.kernels import threads
        if args.threads is not None:
            threads.set_threads(args.threads)
        blas_line = threads.describe()
    except ImportError:
        if args.threads is not None:
            numba.set_num_threads(args.threads)
        blas_line = f"numba threads {numba.get_num_threads()}"
    try:  # after the BLAS thread setting: torch brings libraries of its own
        import torch
        import torch.nn.functional as F
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        torch_line = f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.torch_format}"
    except ImportError:
        torch = F = None
        torch_line = "torch not installed"

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; {blas_line}; {torch_line}")
    print(f"numpy {np.__version__}, numba {numba.__version__}; batch {args.batch}, median of {args.repeats} "
          f"(NumPy reference: {'skipped' if args.skip_reference else args.ref_repeats}) after 1 warm-up")
    sq = sgemm_gflops(2048, 2048, 2048, 5)
    typical = sgemm_gflops(args.batch * 32 * 32, 1152, 128, 5)
    print(f"sgemm np.matmul float32: 2048^3 {sq:.1f} GFLOP/s; "
          f"({args.batch * 32 * 32}x1152)@(1152x128) (conv 64->32 im2col) {typical:.1f} GFLOP/s")
    print()

    rng = np.random.default_rng(0)
    backends = [("cpu", args.repeats, 1)]
    if not args.skip_reference:
        backends.append(("numpy", args.ref_repeats, 0))
    header = ["layer", "shape"]
    for name, _, _ in backends + ([("torch", 0, 0)] if torch else []):
        header += [f"{name} fwd ms", f"{name} bwd ms", f"{name} GFLOP/s"]
    if torch:
        header.append("cpu/torch")
    rows = []
    for case in seed_cases(args.batch, rng):
        if args.only and args.only.lower() not in case.name.lower():
            continue
        x = rng.uniform(-1, 1, case.x_shape).astype(np.float32)
        with kernels.using("cpu"):
            y_shape = case.layer.forward(x, True).shape
            case.layer.backward(np.zeros(y_shape, np.float32))
        dy = rng.standard_normal(y_shape, dtype=np.float32)
        row, totals = [case.name, case.shape], {}
        for name, repeats, warmup in backends:
            f, b = time_ours(case, x, dy, name, repeats, warmup)
            totals[name] = f + b
            row += [f"{f * 1e3:.1f}", f"{b * 1e3:.1f}", rate(case, f, b)]
        if torch:
            f, b = time_torch(case, x, dy, torch, F, args.torch_format == "channels_last", args.repeats, 1)
            totals["torch"] = f + b
            row += [f"{f * 1e3:.1f}", f"{b * 1e3:.1f}", rate(case, f, b), f"{totals['cpu'] / totals['torch']:.2f}"]
        rows.append(row)
        print(f"  timed {case.name} {case.shape}", file=sys.stderr, flush=True)
    print_table(header, rows, args.markdown)
    print()
    print("GFLOP/s counts 2*MACs over forward + backward (backward = 2x forward, including dx of the first "
          "conv); element-wise layers show GB/s of the minimum traffic (fwd: x, y; bwd: dy, x, dx). "
          "cpu/torch: (fwd + bwd) time ratio, above 1 = slower than torch.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
