"""The side-by-side benches' helpers stay fair: clean child environments, the round statistics and
the training table built from made-up results. (The bench scripts themselves are never run by
pytest, as DESIGN.md says; nothing here depends on a timing.)"""

import math
import os
import re
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parents[1] / "benches"
sys.path.insert(0, str(BENCHES))
import fair  # noqa: E402

# ------------------------------------------------------------------ environments
def test_child_env_drops_what_scratchvae_set_and_sets_threads():
    base = {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "7", "GOMP_SPINCOUNT": "0",
            "NUMBA_NUM_THREADS": "1", "PYTHONPATH": "here"}
    env = fair.child_env(2, "unset", base=base)
    assert "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env and "NUMBA_NUM_THREADS" not in env
    assert {k: env[k] for k in fair.THREAD_VARS} == {k: "2" for k in fair.THREAD_VARS}
    assert env["PATH"] == "/bin" and env["PYTHONPATH"] == "here"
    assert base["OMP_WAIT_POLICY"] == "PASSIVE"  # the caller's dict is left alone
    assert fair.child_env(3, "passive", base=base)["OMP_WAIT_POLICY"] == "PASSIVE"
    assert fair.child_env(1, extra={"X": "y"}, base={})["X"] == "y"
    with pytest.raises(ValueError):
        fair.child_env(0, base=base)


def test_child_env_is_clean_after_scratchvae_is_imported():
    import scratchvae  # noqa: F401  (sets OMP_WAIT_POLICY in this process)
    assert os.environ.get("OMP_WAIT_POLICY") is not None
    assert "OMP_WAIT_POLICY" not in fair.child_env(1)
    assert fair.child_env(1)["OMP_NUM_THREADS"] == "1"


def test_child_env_lets_openblas_pick_its_kernels_unless_told_to_keep_the_override(monkeypatch):
    base = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512", "PATH": "/bin"}
    env = fair.child_env(2, base=base)
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env and env["PATH"] == "/bin"
    monkeypatch.setattr(fair, "SNAPSHOT", base)
    line = fair.apply_blas_override_option(type("Args", (), {"keep_blas_override": True})())
    assert fair.child_env(2)["OPENBLAS_CORETYPE"] == "Haswell"
    assert line == "OpenBLAS kernel override as launched: OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512; kept in every child"
    line = fair.apply_blas_override_option(type("Args", (), {"keep_blas_override": False})())
    assert "OPENBLAS_CORETYPE" not in fair.child_env(2) and line.endswith("(--keep-blas-override keeps it)")
    monkeypatch.setattr(fair, "SNAPSHOT", {"PATH": "/bin"})
    assert fair.apply_blas_override_option(type("Args", (), {"keep_blas_override": False})()) == \
        "OpenBLAS kernel override: none in the environment"


def test_blas_core_names_the_kernels_openblas_runs():
    """scratchvae.kernels.threads names NumPy's OpenBLAS kernels (what the benches print): a child launched
    with OPENBLAS_CORETYPE=Haswell reports Haswell."""
    import subprocess
    code = "from scratchvae.kernels import threads; print(threads.blas_core()); print(threads.describe())"
    env = fair.child_env(1, extra={"OPENBLAS_CORETYPE": "Haswell"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "Haswell" and out.splitlines()[1].endswith("OpenBLAS kernels Haswell")


def test_scratchvaes_child_imports_it_before_numpy():
    """Only `--child ours` imports scratchvae from fair.py, and before NumPy: then OpenBLAS starts
    with scratchvae's thread timeout, as under `python -m scratchvae.train`."""
    import subprocess
    code = ("import sys; sys.path.insert(0, {!r}); import fair; print(fair.scratchvae_first(sys.argv)); "
            "import os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), 'numpy' in sys.modules)").format(str(BENCHES))
    for argv, want in ((["--child", "ours"], "True\n16 False"), (["--child", "eager-cl-plain"], "False\nNone False"),
                       ([], "False\nNone False")):
        env = fair.child_env(1)
        out = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want


def test_the_wait_policy_at_launch_is_read_before_scratchvae_sets_its_own(monkeypatch):
    monkeypatch.setattr(fair, "SNAPSHOT", {"PATH": "/bin"})
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # as scratchvae's import sets it in its own child
    assert fair.launched_wait_policy() == "unset" and fair.seen_wait_policy() == "passive"
    monkeypatch.setattr(fair, "SNAPSHOT", {"OMP_WAIT_POLICY": "PASSIVE"})
    assert fair.launched_wait_policy() == "passive"


def test_scratchvae_sets_its_openblas_thread_timeout_unless_the_user_did():
    import subprocess
    code = "import scratchvae, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    for extra, want in (({}, "16"), ({"OPENBLAS_THREAD_TIMEOUT": "30"}, "30")):
        env = fair.child_env(1, extra=extra)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want


# ------------------------------------------------------------------ statistics
def test_spread_median_and_range():
    s = fair.spread([3.0, 1.0, None, 2.0, math.nan, 10.0])
    assert s == fair.Spread(2.5, 1.0, 10.0, 4)  # None and NaN (failed rounds) are left out
    assert fair.spread([5.0]) == fair.Spread(5.0, 5.0, 5.0, 1)
    assert fair.spread([None, math.inf]) is None
    assert fair.show(fair.Spread(2.5, 1.0, 10.0, 4), ".1f") == ("2.5", "1.0–10.0")
    assert fair.show(None) == ("n/a", "")
    assert fair.ratio(fair.spread([4.0, 6.0]), fair.spread([1.0, 2.0, 3.0])) == pytest.approx(2.5)
    assert fair.ratio(None, fair.spread([1.0])) is None


def test_train_report_takes_medians_and_pytorchs_better_wait_policy():
    import bench_train
    from scratchvae.model import VAEConfig
    config = VAEConfig(image_size=32, filters=8, blocks=2, z_dim=8)
    flops = bench_train.step_flops(config)
    limit = 100.0 * 1e9 / flops  # images/s at 100 GFLOP/s

    def run(ips, rss=100.0, policy=None):
        return {"images_per_s": ips, "first_step_s": 1.0, "peak_rss_mb": rss, "wait_policy_after_imports": policy}

    results = {("sgemm", None): [{"gflops": 100.0}, {"gflops": 100.0}, {"gflops": 100.0}],
               ("ours", None): [run(limit * 0.5, 300, "passive"), run(limit * 0.7, 310, "passive"),
                                run(limit * 0.6, 305, "passive")],
               ("eager-cl-plain", "unset"): [run(10.0), run(30.0), run(20.0)],
               ("eager-cl-plain", "passive"): [run(40.0), run(50.0), {"error": "boom"}],
               ("compile-cl-plain", "unset"): [{"error": "CppCompileError: no compiler"}] * 3,
               ("compile-cl-plain", "passive"): [{"error": "CppCompileError: no compiler"}] * 3}
    rows, sgemm, lim = bench_train.summarize(results, flops)
    assert sgemm.median == 100.0 and lim.median == pytest.approx(limit)
    assert rows["ours"]["ips"] == fair.Spread(limit * 0.6, limit * 0.5, limit * 0.7, 3)
    assert rows["ours"]["share"].median == pytest.approx(0.6) and rows["ours"]["rss"] == 310
    plain = rows["eager-cl-plain"]
    assert plain["policy"] == "passive" and plain["ips"] == fair.Spread(45.0, 40.0, 50.0, 2)

    args = type("Args", (), {"threads": 1, "batch": 4, "steps": 2, "warmup": 1, "rounds": 3, "sgemm_size": 64,
                             "markdown": True, "blas_line": "OpenBLAS kernel override: none in the environment"})()
    text = "\n".join(bench_train.report(args, config, results, ["unset", "passive"]))
    ours_row = next(line for line in text.splitlines() if line.startswith("| scratchvae"))
    assert f"{limit * 0.6:.2f}" in ours_row and f"{limit * 0.5:.2f}–{limit * 0.7:.2f}" in ours_row
    plain_row = next(line for line in text.splitlines() if "eager, channels_last, plain" in line and "|" in line)
    assert "| passive | 45.00 | 40.00–50.00 |" in plain_row and f"{limit * 0.6 / 45:.2f}x" in plain_row
    assert "unset: 20.00 (10.00–30.00), passive: 45.00 (40.00–50.00)" in text
    assert "torch.compile, channels_last, plain padding=1 [passive]: CppCompileError: no compiler" in text
    assert "PyTorch eager, channels_last, plain padding=1 [passive]: boom" in text
    assert re.search(r"\| torch.compile, channels_last, plain padding=1 \| \w+ \| n/a \|", text)


def test_the_step_profile_runs_without_the_kernel_override_it_was_launched_with():
    """benches/profile_step.py starts itself again without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (as
    the side-by-side benches' children do) and keeps them with --keep-blas-override; every layer of
    the seed model gets a row."""
    import subprocess
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}
    cmd = [sys.executable, str(BENCHES / "profile_step.py"), "--batch", "2", "--steps", "1", "--threads", "1"]
    cleaned = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    kept = subprocess.run([*cmd, "--keep-blas-override"], env=env, capture_output=True, text=True, check=True).stdout
    own_env = {k: v for k, v in env.items() if k not in fair.BLAS_OVERRIDE_VARS}
    own = subprocess.run([sys.executable, "-c", "from scratchvae.kernels import threads; print(threads.blas_core())"],
                         env=own_env, capture_output=True, text=True, check=True).stdout.strip()
    assert f"OpenBLAS kernels {own};" in cleaned and "OpenBLAS kernels Haswell;" in kept
    assert "decoder.conv_t_4" in cleaned and "encoder.conv_1" in cleaned and "adam" in cleaned


def test_the_call_profile_times_every_call_it_names():
    """benches/profile_calls.py (RESULTS' per-change figures) runs and prints each of its timings."""
    import subprocess
    out = subprocess.run([sys.executable, str(BENCHES / "profile_calls.py"), "--repeats", "1"],
                         capture_output=True, text=True, check=True).stdout
    for line in ("decode, batch 1:", "conv_t_out+sigmoid", "encoder's first step", "last layer",
                 "Sigmoid forward", "backward, batch 32, 64x64x128", "backward, batch 32, 128x128x128",
                 "Dense's weight gradient", "Adam step", "folding a 3x3x128x128 kernel"):
        assert line in out, line
    assert len(re.findall(r"\d+\.\d+ ms", out)) >= 13


def test_the_winograd_profile_times_both_paths_and_says_where_the_fast_one_is_not_taken():
    """benches/profile_winograd.py: each call on both paths where fits() takes it (a 64x64 small map
    at batch 2 is 8192 pixels, 32 channels the least it takes), with a ratio and the paths' largest
    relative difference (float32 rounding, far below 1e-3); one column where it is not (8x8)."""
    import subprocess
    out = subprocess.run([sys.executable, str(BENCHES / "profile_winograd.py"), "--batch", "2", "--sizes", "64,8",
                          "--channels", "32", "--rounds", "1"], capture_output=True, text=True, check=True).stdout
    taken = [line for line in out.splitlines() if re.search(r" 64 .*x .*e-", line)]
    assert len(taken) == 3, out
    for line in taken:
        assert float(line.split()[-1]) < 1e-3
    assert len([line for line in out.splitlines() if "(not taken)" in line]) == 3, out


def test_the_deferred_profile_times_both_ways_and_finds_the_same_gradients():
    """benches/profile_deferred.py: forward and backward with the BatchNorm's output written out and
    deferred, with ratios; the two ways' gradients agree to float32 rounding; the deferred
    BatchNorm holds no output map (the written-out one holds batch x size^2 x channels floats)."""
    import subprocess
    out = subprocess.run([sys.executable, str(BENCHES / "profile_deferred.py"), "--batch", "2", "--size", "64",
                          "--channels", "128", "--rounds", "1"], capture_output=True, text=True, check=True).stdout
    for part in ("forward", "backward", "both"):
        assert re.search(rf"^{part} .* \d+\.\d\dx$", out, re.M), out
    diffs = re.search(r"largest value: (.*)", out).group(1)
    assert [float(v.rsplit(" ", 1)[1]) < 1e-5 for v in diffs.split(", ")] == [True] * 4, out
    assert "written out 4 MB, deferred 0 MB" in out, out


def test_a_bench_imports_the_scratchvae_of_its_own_tree_unless_pythonpath_names_another(tmp_path):
    """fair puts the bench's own tree ahead of an installed scratchvae (this checkout, installed
    editable, would otherwise answer for every tree), and after PYTHONPATH's entries."""
    import shutil
    import subprocess
    tree, other = tmp_path / "tree", tmp_path / "other"
    (tree / "benches").mkdir(parents=True)
    shutil.copy(os.path.join(BENCHES, "fair.py"), tree / "benches" / "fair.py")
    for root, name in ((tree, "tree"), (other, "other")):
        (root / "scratchvae").mkdir(parents=True)
        (root / "scratchvae" / "__init__.py").write_text(f"WHERE = {name!r}\n")
    probe = tree / "benches" / "probe.py"
    probe.write_text("import fair  # noqa: F401\nimport scratchvae\nprint(scratchvae.WHERE)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, str(probe)], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "tree"
    run = subprocess.run([sys.executable, str(probe)], env={**env, "PYTHONPATH": str(other)}, capture_output=True,
                         text=True, check=True)
    assert run.stdout.strip() == "other"
