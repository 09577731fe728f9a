"""The stride-2 3x3 convolutions of the seed's 128-channel blocks, one call at a time, with the
25-product path (kernels/cpu/winograd.py) on and off in the same process, rounds alternating:

    python benches/profile_winograd.py [--batch 32] [--sizes 64,32,16,8] [--rounds 7] [--threads N]

For each small-map size s (the block joins s x s and 2s x 2s maps): the transposed convolution's
forward with its batch statistics (conv_transpose_act, as Conv2DTranspose's training forward calls
it), its backward (conv_gemms: the weight and input gradients, the input gradient written over the
input) and the Conv2D's forward with ReLU and statistics (conv_act). Medians and ranges of the
rounds' times, the ratio, and the largest difference between the two paths' outputs relative to
their largest value. "Off" is the patches' path (im2col and col2im), which the smaller blocks take;
sizes the path does not take (fits() says no) print one column. Run it from another tree (or with
PYTHONPATH=TREE) to time that tree's kernels; it drops the launch's OpenBLAS kernel override
unless --keep-blas-override, as the other benches do.
"""

import fair  # noqa: I001

fair.run_without_blas_override()

import scratchvae  # noqa: F401,E402  before NumPy: its process settings apply before NumPy loads OpenBLAS

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from scratchvae.kernels import cpu, threads  # noqa: E402
from scratchvae.kernels.cpu.arrays import empty  # noqa: E402
from scratchvae.kernels.workspace import Workspace  # noqa: E402

try:
    from scratchvae.kernels.cpu import winograd  # noqa: E402
except ImportError:  # a tree without the 25-product path: the patches' path only
    winograd = None


def calls(n, s, c, rng):
    """The three calls for a block between s x s and 2s x 2s maps of c channels, batch n: name ->
    a function returning the outputs it wrote."""
    f = np.float32
    ws = Workspace(empty)
    small = rng.standard_normal((n, s, s, c)).astype(f)
    big = rng.standard_normal((n, 2 * s, 2 * s, c)).astype(f)
    w2 = (rng.standard_normal((c, 9 * c)) * 0.05).astype(f)
    wk = (rng.standard_normal((9 * c, c)) * 0.05).astype(f)
    bias, ones, zeros = rng.standard_normal(c).astype(f), np.ones(c, f), np.zeros(c, f)
    y_big, y_small, dw, stats = np.empty_like(big), np.empty_like(small), np.empty((9 * c, c), f), np.empty((2, c), f)
    grad_in = np.empty_like(small)

    def transposed_forward():
        cpu.conv_transpose_act(y_big, small, w2, bias, 3, 3, 2, 0, 0, None, 1.0, ws=ws, stats=stats)
        return y_big, stats

    def transposed_backward():
        grad_in[...] = small  # the input gradient overwrites the input, as in the layer
        cpu.conv_gemms(grad_in, dw, big, wk, grad_in, 3, 3, 2, 0, 0, ws=ws)
        return grad_in, dw

    def conv_forward():
        cpu.conv_act(y_small, big, wk, bias, ones, zeros, 3, 3, 2, 0, 0, True, None, 1.0, ws=ws, stats=stats)
        return y_small, stats

    return {"transposed forward + statistics": transposed_forward,
            "transposed backward (dw, dx)": transposed_backward,
            "Conv2D forward + ReLU + statistics": conv_forward}


def path(on):
    """Turn the 25-product path on or off (its channel threshold)."""
    if winograd is not None:
        winograd.MIN_CHANNELS = DEFAULT_MIN if on else 10 ** 9


DEFAULT_MIN = None if winograd is None else winograd.MIN_CHANNELS


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sizes", default="64,32,16,8", help="small-map sizes, comma-separated")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    fair.add_profile_options(p)
    args = p.parse_args(argv)
    threads.set_threads(args.threads)
    rng = np.random.default_rng(0)
    n, c = args.batch, args.channels
    print(f"{threads.describe()}; batch {n}, {c} channels; median (range) of {args.rounds} alternating rounds, ms")
    print(f"{'call':36s} {'small map':>9s}  {'patches':>22s}  {'25 products':>22s}  {'ratio':>6s}  max rel diff")
    for s in (int(v) for v in args.sizes.split(",")):
        takes = winograd is not None and winograd.fits((n, s, s), (n, 2 * s, 2 * s), c, c, 3, 3, 2, 0, 0)
        modes = (False, True) if takes else (False,)
        for name, call in calls(n, s, c, rng).items():
            times, outs = {m: [] for m in modes}, {}
            for m in modes:  # warm-up: compile, grow the workspace
                path(m)
                call()
            for _ in range(args.rounds):
                for m in modes:
                    path(m)
                    t = time.perf_counter()
                    out = call()
                    times[m].append((time.perf_counter() - t) * 1000)
                    outs[m] = [a.copy() for a in out]
            path(True)
            cells = [f"{np.median(times[m]):7.2f} ({min(times[m]):.2f}-{max(times[m]):.2f})" for m in modes]
            if takes:
                ratio = np.median(times[False]) / np.median(times[True])
                diff = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(outs[False], outs[True]))
                print(f"{name:36s} {s:>9d}  {cells[0]:>22s}  {cells[1]:>22s}  {ratio:5.2f}x  {diff:.1e}")
            else:
                print(f"{name:36s} {s:>9d}  {cells[0]:>22s}  {'(not taken)':>22s}")


if __name__ == "__main__":
    main()
