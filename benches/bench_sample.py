"""Inference speed: scratchvae's own decode and encode against onnxruntime on our ONNX export.

Each engine runs in a persistent child process of its own, started from the environment the bench
was launched with plus the same explicit thread count (benches/fair.py; default: all cores, set
for both). The scratchvae child times `vae.decode(z)` and `vae.encode(x)` in inference mode (the
calls `sample`, `evaluate` and `attributes` make); the onnxruntime child, which never imports
scratchvae, runs the folded decoder and the encoder graphs export/to_onnx.py writes. Both load the
same float32 inputs from files. Rounds interleave the engines (ours, onnxruntime, ours, ...), one
timed block of calls (about --images images) per request, with a short pause between requests so
the previous engine's idle threads have stopped spinning. Prints, per workload, the median images/s
over rounds with the range, ours / onnxruntime from the medians, and the outputs' max |diff|.

    python benches/bench_sample.py [--checkpoint ckpt.npz] [--rounds 7] [--threads N] [--markdown]
"""

import fair  # noqa: I001  first: it keeps the environment as launched, before scratchvae is imported
fair.scratchvae_first()  # noqa: E402  in scratchvae's child: its process settings before NumPy loads

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINES = {"ours": "scratchvae", "ort": "onnxruntime"}
GRAPHS = {"decode": "decoder.onnx", "encode": "encoder.onnx"}


# ------------------------------------------------------------------ the children
class Ours:
    def __init__(self, work, threads):
        from scratchvae.kernels import threads as th
        from scratchvae.model import VAE
        th.set_threads(threads)
        self.vae = VAE.load(os.path.join(work, "weights.npz"))
        self.describe = f"scratchvae: {th.describe()}"

    def __call__(self, op, data):
        if op == "decode":
            return [self.vae.decode(data, training=False)]
        return list(self.vae.encode(data, training=False))


class Ort:
    def __init__(self, work, threads):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # the calling thread counts as one of them
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.runners = {op: ort.InferenceSession(os.path.join(work, GRAPHS[op]), options,
                                                 providers=["CPUExecutionProvider"]) for op in ("decode", "encode")}
        self.describe = f"onnxruntime {ort.__version__}: intra_op_num_threads {threads}, inter_op 1"

    def __call__(self, op, data):
        if op == "decode":
            return self.runners[op].run(["image"], {"z": data})
        return self.runners[op].run(["z_mean", "z_log_var"], {"image": data})


def serve(args):
    """The child's loop: warm up every workload, then answer one JSON request per line."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the replies
    engine = (Ours if args.child == "ours" else Ort)(args.work, args.threads)
    data = {key: np.load(os.path.join(args.work, f"{key}.npy")) for key in args.keys.split(",")}
    for key, x in data.items():
        for _ in range(args.warmup):
            engine(key.split("-")[0], x)
    reply.write(json.dumps({"describe": engine.describe}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        key = req.get("key")
        if req["op"] == "time":
            op, x = key.split("-")[0], data[key]
            t0 = time.perf_counter()
            for _ in range(req["calls"]):
                engine(op, x)
            reply.write(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
        elif req["op"] == "save":
            outs = engine(key.split("-")[0], data[key])
            np.savez(req["path"], *[np.asarray(o) for o in outs])
            reply.write(json.dumps({"saved": req["path"]}) + "\n")
        else:
            reply.write(json.dumps({"peak_rss_mb": fair.peak_rss_mb()}) + "\n")
            return


class Child:
    """A persistent engine child: ask(...) sends one request and returns its reply."""

    def __init__(self, engine, args, work, keys):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", engine, "--work", work, "--keys", ",".join(keys),
               "--threads", str(args.threads), "--warmup", str(args.warmup)]
        self.name = ENGINES[engine]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=fair.child_env(args.threads))
        self.describe = self._read()["describe"]

    def ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} child stopped (exit status {self.proc.wait()}): see its stderr above")
        return json.loads(line)

    def close(self):
        rss = self.ask(op="quit")["peak_rss_mb"]
        self.proc.wait()
        return rss


# ------------------------------------------------------------------ the parent
def prepare(args, work):
    """Weights, both ONNX graphs and the inputs into `work`; returns (config, workload keys)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "export"))
    import onnx_graphs
    from scratchvae.model import VAE, VAEConfig
    if args.checkpoint:
        vae = VAE.load(args.checkpoint)
    else:
        vae = VAE(VAEConfig(image_size=args.image_size, filters=args.filters, blocks=args.blocks, z_dim=args.z_dim))
    vae.save(os.path.join(work, "weights.npz"))
    arrays, cfg = {**vae.params(), **vae.state()}, vae.config
    for op, build in (("decode", onnx_graphs.build_decoder), ("encode", onnx_graphs.build_encoder)):
        with open(os.path.join(work, GRAPHS[op]), "wb") as f:
            f.write(build(arrays, cfg, fold=True).SerializeToString())
    rng = np.random.default_rng(0)
    keys = []
    for n in args.batches:
        np.save(os.path.join(work, f"decode-{n}.npy"), rng.standard_normal((n, cfg.z_dim)).astype(np.float32))
        keys.append(f"decode-{n}")
    if args.encode_batch:
        n = args.encode_batch
        x = rng.uniform(0, 1, (n, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
        np.save(os.path.join(work, f"encode-{n}.npy"), x)
        keys.append(f"encode-{n}")
    return cfg, keys


def max_diff(a_path, b_path):
    with np.load(a_path) as a, np.load(b_path) as b:
        return max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)


def measure(args, work, keys, log=print):
    """{key: {engine: [images/s per round]}}, {key: max|diff|}, {engine: describe}, {engine: peak RSS MB}."""
    children = {}
    try:
        for engine in ENGINES:
            children[engine] = Child(engine, args, work, keys)
        diffs = {}
        for key in keys:
            paths = [os.path.join(work, f"out-{engine}-{key}.npz") for engine in ENGINES]
            for engine, path in zip(ENGINES, paths):
                children[engine].ask(op="save", key=key, path=path)
            diffs[key] = max_diff(*paths)
        rates = {key: {engine: [] for engine in ENGINES} for key in keys}
        for r in range(args.rounds):
            for key in keys:
                n = int(key.split("-")[1])
                calls = max(1, round(args.images / n))
                for engine in ENGINES:  # ours, onnxruntime, ours, ...
                    time.sleep(args.settle)
                    rates[key][engine].append(n * calls / children[engine].ask(op="time", key=key, calls=calls)["seconds"])
            log(f"round {r + 1}/{args.rounds}: " + "; ".join(
                f"{key} ours {rates[key]['ours'][-1]:.1f}, ort {rates[key]['ort'][-1]:.1f} images/s" for key in keys))
        describe = {engine: child.describe for engine, child in children.items()}
        rss = {engine: children.pop(engine).close() for engine in list(children)}
        return rates, diffs, describe, rss
    finally:
        for child in children.values():
            child.proc.kill()
            child.proc.wait()


def report(args, cfg, rates, diffs, describe, rss):
    from bench_layers import cpu_model
    lines = [f"machine: {cpu_model()}; {args.threads} threads for each engine ({describe['ours']}; {describe['ort']})",
             args.blas_line,
             f"model {cfg.image_size}x{cfg.image_size}x{cfg.channels}, filters {cfg.filters}, blocks {cfg.blocks}, "
             f"z {cfg.z_dim}; {args.rounds} interleaved rounds (ours, onnxruntime, ...), each a timed block of "
             f"about {args.images} images after {args.warmup} warm-up calls; median and range over rounds", ""]
    head = ["work", "batch", "calls per block", "scratchvae images/s", "range", "onnxruntime images/s", "range",
            "ours / onnxruntime", "max|diff|"]
    rows = []
    for key, by in rates.items():
        op, n = key.split("-")
        ours, theirs = fair.spread(by["ours"]), fair.spread(by["ort"])
        ratio = fair.ratio(ours, theirs)
        rows.append([op, n, max(1, round(args.images / int(n))), *fair.show(ours, ".1f"), *fair.show(theirs, ".1f"),
                     f"{ratio:.2f}x" if ratio else "", f"{diffs[key]:.1e}"])
    lines += fair.table(head, rows, args.markdown)
    lines.append(f"\npeak RSS MB: scratchvae {rss['ours']:.0f}, onnxruntime {rss['ort']:.0f}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="weights to use (default: a fresh VAE(); speed does not depend on values)")
    p.add_argument("--image-size", type=int, default=128, help="without --checkpoint: the model's size")
    p.add_argument("--filters", type=int, default=128)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--z-dim", type=int, default=200)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 1], help="decoder batch sizes")
    p.add_argument("--encode-batch", type=int, default=64, help="encoder batch size (0: no encoder timing)")
    p.add_argument("--rounds", "--repeats", type=int, default=7, help="interleaved rounds (5 or more for a steady median)")
    p.add_argument("--images", type=int, default=64, help="images per timed block (batch 1: that many calls)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per workload when a child starts")
    p.add_argument("--settle", type=float, default=0.25, help="seconds of pause before each timed block")
    p.add_argument("--threads", type=int, default=fair.cores(), help="threads for both engines (default: all cores)")
    p.add_argument("--markdown", action="store_true")
    fair.add_blas_override_option(p)
    p.add_argument("--child", choices=list(ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--keys", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.blas_line = fair.apply_blas_override_option(args)
    if args.child:
        return serve(args)
    if args.threads < 1 or args.rounds < 1 or args.images < 1:
        p.error("--threads, --rounds and --images must be at least 1 (the thread count is always explicit)")
    with tempfile.TemporaryDirectory() as work:
        cfg, keys = prepare(args, work)
        results = measure(args, work, keys, log=lambda line: print(line, file=sys.stderr, flush=True))
    print("\n".join(report(args, cfg, *results)))


if __name__ == "__main__":
    main()
