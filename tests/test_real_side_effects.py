"""benches/real_side_effects.py: the side effect a faithful edit would show to a judge, measured on real
faces with the other label held at its true value, so that the labels' co-occurrence does not count
and the judge's confusion does; and its command on a tiny labelled run with a tiny ONNX judge."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from scratchvae.evaluation import edit_rates
from scratchvae.latent import vectors
from scratchvae.latent.attributes import load_model
from tests.labelled import labelled_run

BENCH = Path(__file__).resolve().parents[1] / "benches" / "real_side_effects.py"
_spec = importlib.util.spec_from_file_location("real_side_effects", BENCH)
real_side_effects = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_side_effects)


def test_co_occurring_labels_do_not_count_and_a_judges_confusion_does():
    rng = np.random.default_rng(0)
    n = 20000
    a = rng.random(n) < 0.3
    b = np.where(a, rng.random(n) < 0.9, rng.random(n) < 0.2)  # b mostly comes with a
    c = rng.random(n) < 0.5  # independent of a, but the judge calls c on 40% of faces with a that lack it
    truth = np.stack([a, b, c], axis=1)
    called = truth.copy()
    called[:, 2] |= a & (rng.random(n) < 0.4)
    r, used = real_side_effects.reference(called, truth, 0)
    assert np.isnan(r[0]) and used[0] == 0
    assert r[1] == pytest.approx(0.0, abs=1e-12)  # the judge reads b right: co-occurrence alone is no side effect
    assert called[a, 1].mean() - called[~a, 1].mean() > 0.6  # though the plain difference is large
    # c = 0 faces gain 0.4 with a, c = 1 faces are called c anyway; weighted by c's share among faces without a
    w0 = (~c[~a]).mean()
    assert r[2] == pytest.approx(w0 * 0.4, abs=0.02)
    assert used[1] == used[2] == n


def test_the_weights_are_the_strata_shares_among_faces_without_a_and_thin_strata_drop_out():
    # a = column 0, b = column 1; b absent: 2 with a (called b 1 of 2), 4 without (0 of 4);
    # b present: 2 with a (called 2 of 2), 2 without (1 of 2)
    truth = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [0, 0], [0, 0], [1, 1], [1, 1], [0, 1], [0, 1]], bool)
    called = truth.copy()
    called[0, 1] = True
    called[8, 1] = False
    parts = {}
    r, used = real_side_effects.reference(called, truth, 0, min_count=2, strata=parts)
    assert r[1] == pytest.approx(4 / 6 * (0.5 - 0.0) + 2 / 6 * (1.0 - 0.5))
    assert used[1] == 10
    assert parts[1] == [{"true": False, "with": 2, "without": 4, "called_with": 0.5, "called_without": 0.0,
                         "weight": pytest.approx(4 / 6)},
                        {"true": True, "with": 2, "without": 2, "called_with": 1.0, "called_without": 0.5,
                         "weight": pytest.approx(2 / 6)}]
    r, used = real_side_effects.reference(called, truth, 0, min_count=3)  # only the b-absent stratum has 3 a side
    assert np.isnan(r[1]) and used[1] == 0
    truth2 = np.vstack([truth, [[1, 0]]])
    called2 = np.vstack([called, [[1, 1]]])
    r, used = real_side_effects.reference(called2, truth2, 0, min_count=3)
    assert r[1] == pytest.approx(2 / 3 - 0.0) and used[1] == 7  # the thin stratum left out, weights renormalised


NAMES = ["Smiling", "Eyeglasses", "Male", "Bald"]


def judge_network(path, size=16):
    """A fixed random linear judge with one logit per name in NAMES."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((size * size * 3, len(NAMES))) * 0.05).astype(np.float32)
    b = np.zeros(len(NAMES), np.float32)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
             helper.make_node("Identity", ["flat"], ["features"])]
    graph = helper.make_graph(nodes, "judge", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["N", size, size, 3])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", size * size * 3]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(NAMES)])],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    ops = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))
    helper.set_model_props(model, {"attributes": json.dumps(NAMES)})
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real_side_effects")
    _, ckpt = labelled_run(tmp, NAMES)
    return {"ckpt": str(ckpt), "judge": judge_network(tmp / "judge.onnx"), "cache": str(tmp / "cache")}


def test_the_command_measures_each_edit_on_the_reconstructions_and_the_photographs(world, tmp_path, capsys):
    out, table = tmp_path / "r.json", tmp_path / "r.md"
    args = [world["ckpt"], "--features", world["judge"], "--edit", "Smiling,Male", "--min-count", "1",
            "--cache-dir", world["cache"], "--threads", "1", "--quiet", "--json", str(out), "--table", str(table)]
    assert real_side_effects.main(args) == 0
    record = json.loads(out.read_text())
    assert record["split"] == "train" and record["faces"] == 36 and [e["attribute"] for e in record["edits"]] == \
        ["Smiling", "Male"]
    printed = capsys.readouterr().out
    assert table.read_text() == printed and "| Smiling |" in printed
    # the same numbers from the calls made here by hand
    vae, meta, _ = load_model(world["ckpt"])

    class Args:
        data = attributes = None
        cache_dir, quiet = world["cache"], True
    reader, idx, values, attrs, _ = edit_rates.labelled(meta, vae, Args, "train")
    judge = edit_rates.LogitsJudge(world["judge"], attrs)
    judge.select(NAMES)
    truth = edit_rates.columns(values, attrs, NAMES) > 0.5
    z = vectors.encode_all(vae, reader, idx, 64)
    calls = judge.probabilities(edit_rates.decode_all(vae, z, 64)) > 0.5
    for row in record["edits"]:
        a = NAMES.index(row["attribute"])
        assert row["with"] == int(truth[:, a].sum())
        r, _ = real_side_effects.reference(calls, truth, a, min_count=1)
        got = row["reconstructions"]["R"]
        assert got[row["attribute"]] is None
        for j, name in enumerate(NAMES):
            if j != a:
                assert got[name] == (None if np.isnan(r[j]) else pytest.approx(r[j]))


@pytest.mark.parametrize("extra,words", [(["--edit", "Dimples"], "no attribute Dimples"),
                                         (["--min-count", "0"], "at least 1"),
                                         (["--threads", "0"], "--threads")])
def test_bad_input_is_refused_in_one_line(world, capsys, extra, words):
    assert real_side_effects.main([world["ckpt"], "--features", world["judge"], "--cache-dir", world["cache"],
                                   "--quiet", *extra]) == 2
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if not line.startswith("note:"))
    assert err.startswith("error:") and err.count("\n") == 1 and words in err, err
