"""The ways to make attribute directions (scratchvae/latent/vectors.py: mean, joint, matched) on codes built
from known independent directions with correlated labels; the file's method; the attributes CLI's
--method and --controls; and the side-effect summaries, ONNX judge and picture rows of edit_rates."""

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from scratchvae import images
from scratchvae import sample as py_sample
from scratchvae.evaluation import edit_rates
from scratchvae.latent import vectors
from scratchvae.model import VAEConfig
from scratchvae.run.errors import UserError
from tests.labelled import labelled_world, make_vectors, one_line

EXPORT = Path(__file__).resolve().parents[1] / "export"
NAMES = ["A", "B", "C", "D"]


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def correlated_codes(n=4000, z_dim=16, noise=0.5, seed=0):
    """z = sum_a y_a d_a / 2 + noise (y_a = +-1, so d_a is the change from -1 to +1), with B following A
    (P(B | A) = 0.85, P(B | not A) = 0.15) and C, D independent: (z, labels, directions)."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((4, z_dim))
    d *= (np.array([3.0, 2.5, 2.0, 1.5]) / np.linalg.norm(d, axis=1))[:, None]
    a = rng.random(n) < 0.3
    b = np.where(a, rng.random(n) < 0.85, rng.random(n) < 0.15)
    y = np.where(np.stack([a, b, rng.random(n) < 0.5, rng.random(n) < 0.2], axis=1), 1, -1)
    z = (y @ d) / 2 + noise * rng.standard_normal((n, z_dim)) + 0.3
    return z.astype(np.float32), y, d


@pytest.fixture(scope="module")
def codes():
    return correlated_codes()


def test_joint_recovers_each_independent_direction_where_mean_leans_towards_b(codes):
    z, y, d = codes
    mean = vectors.directions(z, y, NAMES, "id", method="mean")
    joint = vectors.directions(z, y, NAMES, "id", method="joint")
    assert joint.method == "joint" and joint.names == NAMES and joint.controls == ["all"] * 4
    for a in range(4):
        assert cosine(joint.vectors[a], d[a]) > 0.99
        assert np.linalg.norm(joint.vectors[a]) == pytest.approx(np.linalg.norm(d[a]), rel=0.03)
    # The mean difference of A carries B's direction along: E[y_B | A] - E[y_B | not A] = 1.4, so about 0.7 d_B.
    assert cosine(mean.vectors[0], d[0]) < 0.9
    leak = (mean.vectors[0] - d[0]) @ d[1] / np.linalg.norm(d[1]) ** 2
    assert leak == pytest.approx(0.7, abs=0.08)


def test_matched_removes_most_of_the_leak(codes):
    z, y, d = codes
    mean = vectors.directions(z, y, NAMES, "id", method="mean")
    matched = vectors.directions(z, y, NAMES, "id", method="matched")
    assert matched.controls[0].split(",")[0] == "B" and matched.controls[1].split(",")[0] == "A"
    assert len(matched.controls[0].split(",")) == 2
    unit_b = d[1] / np.linalg.norm(d[1])
    leak_mean = abs((mean.vectors[0] - d[0]) @ unit_b)
    leak_matched = abs((matched.vectors[0] - d[0]) @ unit_b)
    assert leak_matched < 0.1 * leak_mean
    assert cosine(matched.vectors[0], d[0]) > 0.99
    assert matched.n_used[0] == len(z)  # every stratum of B x (C or D) shows A on both sides


def test_joint_is_ridge_least_squares_with_an_unpenalised_intercept(rng):
    z = rng.standard_normal((60, 3))
    y = np.where(rng.random((60, 4)) < 0.4, 1, -1)
    ridge = 2.5
    got = vectors.directions(z, y, NAMES, "id", min_count=1, method="joint", ridge=ridge)
    # The same fit as ordinary least squares on rows augmented with sqrt(ridge) times the identity
    # (the penalty), the intercept column left out of it.
    x = np.hstack([np.ones((60, 1)), y])
    x_aug = np.vstack([x, np.hstack([np.zeros((4, 1)), np.sqrt(ridge) * np.eye(4)])])
    z_aug = np.vstack([z, np.zeros((4, 3))])
    coef = np.linalg.lstsq(x_aug, z_aug, rcond=None)[0]
    np.testing.assert_allclose(got.vectors, 2 * coef[1:], rtol=1e-5, atol=1e-6)
    assert got.ridge == ridge


def test_joint_with_named_controls_fits_each_attribute_on_those_alone(rng):
    z = rng.standard_normal((80, 3))
    y = np.where(rng.random((80, 4)) < 0.5, 1, -1)
    got = vectors.directions(z, y, NAMES, "id", min_count=1, method="joint", ridge=1e-9, controls=["B", "C"])
    assert got.controls == ["B,C", "C", "B", "B,C"]
    for a, held in ((0, [1, 2]), (1, [2]), (3, [1, 2])):
        x = np.hstack([np.ones((80, 1)), y[:, [a] + held]])
        coef = np.linalg.lstsq(x, z, rcond=None)[0]
        np.testing.assert_allclose(got.vectors[a], 2 * coef[1], rtol=1e-5, atol=1e-6)


def test_joint_with_others_holds_every_label_but_the_attributes_facets(rng):
    n = 4000
    a = rng.random(n) < 0.5
    facet = np.where(rng.random(n) < 0.9, a, ~a)  # |phi| about 0.8 with A: part of it
    loose = np.where(rng.random(n) < 0.6, a, ~a)  # |phi| about 0.2 with A: held fixed
    free = rng.random(n) < 0.5
    y = np.where(np.stack([a, facet, loose, free], 1), 1, -1)
    got = vectors.directions(rng.standard_normal((n, 3)), y, NAMES, "id", min_count=1, method="joint",
                             controls="others")
    assert got.controls[0] == "C,D" and got.controls[1] == "C,D"  # A and B are each other's facets
    assert got.controls[3] == "all"  # D correlates with nothing: every other label is held


def test_matched_is_the_weighted_mean_of_the_strata_differences_by_hand():
    # A against the strata of B: B=+1 holds 2 with A and 1 without, B=-1 holds 1 with A and 3 without.
    y = np.array([[1, 1], [1, 1], [-1, 1], [1, -1], [-1, -1], [-1, -1], [-1, -1]])
    z = np.array([[4.0], [6.0], [1.0], [3.0], [0.0], [1.0], [2.0]])
    got = vectors.directions(z, y, ["A", "B"], "id", min_count=1, method="matched", controls=["B"])
    d_b1, w_b1 = (4 + 6) / 2 - 1, 2 * 1 / 3
    d_b0, w_b0 = 3 - 1, 1 * 3 / 4
    assert got.vectors[0, 0] == pytest.approx((w_b1 * d_b1 + w_b0 * d_b0) / (w_b1 + w_b0), rel=1e-6)
    assert got.n_used[0] == 7 and got.controls[0] == "B"


def test_matched_skips_strata_lacking_a_side_and_attributes_with_none_left():
    # C is the same as A: matched on C, no stratum holds A on both sides, so A gets no vector.
    y = np.array([[1, 1, 1], [1, -1, 1], [-1, 1, -1], [-1, -1, -1], [-1, 1, -1]])
    z = np.arange(5, dtype=np.float64)[:, None]
    got = vectors.directions(z, y, ["A", "B", "C"], "id", min_count=1, method="matched", controls=["C"])
    assert "A" not in got.names and "A" in got.skipped
    # B matched on C: stratum C=+1 has B on both sides (rows 0, 1), C=-1 too (2, 4 against 3): all five used.
    assert got.n_used[got.names.index("B")] == 5
    # B matched on A over the first three rows: A=+1 (rows 0, 1) shows B both ways, A=-1 (row 2) only
    # with B, so that stratum is skipped and B's direction is z0 - z1 alone.
    three = vectors.directions(z[:3], y[:3], ["A", "B", "C"], "id", min_count=1, method="matched",
                               controls=["A"])
    b = three.names.index("B")
    assert three.n_used[b] == 2 and three.vectors[b, 0] == pytest.approx(z[0, 0] - z[1, 0])


def test_the_method_and_what_it_held_survive_save_and_load(codes, tmp_path):
    z, y, _ = codes
    for method in vectors.METHODS:
        v = vectors.directions(z, y, NAMES, "x" * 64, method=method)
        vectors.save(tmp_path / f"{method}.npz", v)
        back = vectors.load(str(tmp_path / f"{method}.npz"), identity="x" * 64, z_dim=16)
        assert back.method == method and back.controls == v.controls and back.ridge == v.ridge
        np.testing.assert_array_equal(back.vectors, v.vectors)
        np.testing.assert_array_equal(back.n_used, v.n_used)
        with np.load(tmp_path / f"{method}.npz", allow_pickle=False) as f:
            assert str(f["method"]) == method


@pytest.mark.parametrize("method", vectors.METHODS)
def test_hold_keeps_the_named_labels_readout_fixed_and_the_edit_its_own(codes, method):
    z, y, d = codes
    w, _ = vectors.readouts(z.astype(np.float64), y > 0)
    free = vectors.directions(z, y, NAMES, "id", method=method)
    held = vectors.directions(z, y, NAMES, "id", method=method, hold=["B"])
    assert held.hold == ["B"] and free.hold == []
    # A predicts B, so B's readout sees A's direction: every method's A moves it, until B is held
    assert abs(w[1] @ free.vectors[0]) > 0.2 * abs(w[0] @ free.vectors[0])
    assert abs(w[1] @ held.vectors[0]) < 1e-4 * abs(w[0] @ held.vectors[0])
    assert cosine(held.vectors[0], d[0]) > 0.95  # still A's own direction
    if method == "mean":  # mean's leak towards B is what the hold takes out
        assert cosine(held.vectors[0], d[0]) > cosine(free.vectors[0], d[0]) + 0.05
    np.testing.assert_allclose(held.vectors[1], free.vectors[1], rtol=1e-5, atol=1e-6)  # B is not held against B
    # C is independent of B: holding B barely turns it
    assert cosine(held.vectors[2], free.vectors[2]) > 0.98


def test_hold_is_the_smallest_change_in_the_codes_spread_that_keeps_the_readout(rng):
    z = rng.standard_normal((500, 5)) @ rng.standard_normal((5, 5))
    y = np.where(rng.random((500, 3)) < 0.5, 1, -1)
    y[:, 1] = np.where(z[:, 0] + 0.5 * rng.standard_normal(500) > 0, 1, -1)
    free = vectors.directions(z, y, ["A", "B", "C"], "id", min_count=1, method="mean")
    held = vectors.directions(z, y, ["A", "B", "C"], "id", min_count=1, method="mean", hold=["B"])
    w, cov = vectors.readouts(z, y > 0)
    change = held.vectors[0].astype(np.float64) - free.vectors[0]
    # any other change u with w_B u = -w_B v costs at least as much in the metric cov^-1
    inv = np.linalg.inv(cov)
    for _ in range(20):
        u = rng.standard_normal(5)
        u -= (w[1] @ u + w[1] @ free.vectors[0]) / (w[1] @ w[1]) * w[1]  # on the constraint's plane
        assert u @ inv @ u >= change @ inv @ change - 1e-9
    assert w[1] @ held.vectors[0] == pytest.approx(0.0, abs=1e-5)


def test_holding_a_label_nobody_has_changes_nothing(codes):
    z, y, _ = codes
    y = np.hstack([y, -np.ones((len(y), 1), y.dtype)])  # E: constant, its readout is zero
    names = NAMES + ["E"]
    free = vectors.directions(z, y, names, "id", method="joint")
    held = vectors.directions(z, y, names, "id", method="joint", hold=["E"])
    np.testing.assert_allclose(held.vectors, free.vectors, rtol=1e-5, atol=1e-6)


def test_hold_survives_save_and_load_and_an_unknown_name_is_refused(codes, tmp_path):
    z, y, _ = codes
    v = vectors.directions(z, y, NAMES, "x" * 64, method="joint", hold=["B", "D"])
    vectors.save(tmp_path / "h.npz", v)
    back = vectors.load(str(tmp_path / "h.npz"))
    assert back.hold == ["B", "D"]
    np.testing.assert_array_equal(back.vectors, v.vectors)
    assert edit_rates.file_label(back) == "joint, B,D's readout kept"
    with pytest.raises(UserError, match="--hold Beard"):
        vectors.directions(z, y, NAMES, "id", method="joint", hold=["Beard"])


def test_a_file_from_before_the_methods_loads_as_mean(tmp_path):
    path = tmp_path / "old.npz"
    np.savez(path, format=np.array(vectors.FORMAT), version=np.array(1), identity=np.array("i"),
             names=np.array(["A"]), vectors=np.ones((1, 3), np.float32), unit=np.ones((1, 3), np.float32),
             n_pos=np.array([5]), n_neg=np.array([7]), spread=np.array([1.0]), skipped=np.array([], dtype=str),
             min_count=np.array(2))
    v = vectors.load(str(path))
    assert v.method == "mean" and v.n_used.tolist() == [12] and v.controls == [""] and v.ridge == 0.0


# --- the attributes command, on a tiny model and labelled faces the test makes ---

SMALL = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4)
FACE_NAMES = ["Smiling", "Eyeglasses", "Male", "Bald"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # edit_rates rebuilds its held-out split: 12 of the 48 faces
    return labelled_world(tmp_path_factory.mktemp("methods"), FACE_NAMES)


make = make_vectors


@pytest.mark.parametrize("method", ["joint", "matched"])
def test_cli_method_writes_what_directions_gives_and_the_samplers_read_it(world, tmp_path, capsys, method):
    out = tmp_path / f"{method}.npz"
    assert make(world, out, "--method", method, "--controls", "Male") == 0
    text = capsys.readouterr().out
    assert f"method {method}" in text and "rests on" in text
    mean_out = tmp_path / "mean.npz"
    assert make(world, mean_out, "--method", "mean") == 0
    got, mean = vectors.load(str(out)), vectors.load(str(mean_out))
    assert got.method == method and mean.method == "mean"
    assert got.controls[got.names.index("Smiling")] == "Male" and got.controls[got.names.index("Male")] == ""
    assert not np.allclose(got.vectors, mean.vectors)
    pictures = []
    for vf in (out, mean_out):  # the sampler takes either file as it is: same layout, other faces
        pictures.append(tmp_path / f"rows-{vf.stem}.png")
        assert py_sample.main([world["ckpt"], "--vectors", str(vf), "--attribute", "Smiling", "-n", "2",
                               "--strengths", "-1:1:3", "--out", str(pictures[-1])]) == 0
    a, b = (np.asarray(Image.open(p)).astype(int) for p in pictures)
    assert a.shape == b.shape and np.abs(a - b).max() > 0


def test_cli_hold_writes_the_held_readouts_and_says_so(world, tmp_path, capsys):
    out, plain = tmp_path / "held.npz", tmp_path / "plain.npz"
    assert make(world, out, "--method", "mean", "--hold", "Male") == 0
    assert "the linear readouts of Male kept fixed" in capsys.readouterr().out
    assert make(world, plain, "--method", "mean") == 0
    held, free = vectors.load(str(out)), vectors.load(str(plain))
    assert held.hold == ["Male"] and free.hold == []
    i, m = held.names.index("Smiling"), held.names.index("Male")
    assert not np.allclose(held.vectors[i], free.vectors[i])
    np.testing.assert_array_equal(held.vectors[m], free.vectors[m])  # Male is never held against itself


@pytest.mark.parametrize("extra,words", [
    (["--method", "median"], "--method 'median': use calibrated, mean, joint, matched"),
    (["--method", "joint", "--controls", "Mal"], "--controls Mal"),
    (["--method", "mean", "--controls", "Male"], "mean method holds no labels fixed"),
    (["--method", "matched", "--controls", "all"], "--controls all"),
    (["--method", "matched", "--controls", "others"], "--controls others"),
    (["--method", "joint", "--ridge", "0"], "--ridge"),
    (["--hold", "Beard"], "--hold Beard"),
    (["--hold", ","], "name one or more labels"),
])
def test_cli_bad_method_options_are_one_line_and_write_nothing(world, tmp_path, capsys, extra, words):
    out = tmp_path / "v.npz"
    assert make(world, out, *extra) == 2
    assert words in one_line(capsys)
    assert not out.exists()


# --- edit_rates: the summaries, the ONNX judge, the picture rows ---

def test_edit_rates_imports_no_command_module():
    """edit_rates builds on the modules below the commands (labels, vectors), never on a command's body."""
    tree = ast.parse(Path(edit_rates.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "scratchvae.latent.vectors" in imported
    commands = {f"scratchvae.{m}" for m in ("attributes", "prior", "latent.attributes", "latent.prior", "sample",
                                              "evaluate", "train", "face_features")}
    assert not imported & commands


def test_summary_reads_the_asked_share_and_the_side_effects():
    rates = {"top without": {"faces": 4, "edit": "+2*v", "shares": {
                 "top": {"real": 0.0, "before": 0.25, "after": 0.75},
                 "Male": {"real": 0.5, "before": 0.5, "after": 0.25},
                 "hat": {"real": 0.0, "before": 0.0, "after": 0.5}},
                 "flipped": {"top": 0.5, "Male": 0.75, "hat": 0.5}},
             "top with": {"faces": 2, "edit": "-2*v", "shares": {
                 "top": {"real": 1.0, "before": 1.0, "after": 0.5},
                 "Male": {"real": 0.0, "before": 0.0, "after": 0.0},
                 "hat": {"real": 0.0, "before": 0.5, "after": 0.5}},
                 "flipped": {"top": 0.5, "Male": 0.0, "hat": 0.0}}}
    plus, minus = edit_rates.summarise(rates)
    assert plus["asked"] == {"before": 0.25, "after": 0.75}
    assert plus["side_effects"] == {"Male": -0.25, "hat": 0.5}
    assert plus["largest"] == {"attribute": "hat", "change": 0.5} and plus["watched"] == -0.25
    assert plus["mean_abs"] == pytest.approx(0.375)
    assert plus["flipped"] == {"Male": 0.75, "hat": 0.5}
    assert minus["asked"] == {"before": 0.0, "after": 0.5}  # asked: called negative
    assert minus["largest"]["change"] == 0.0 and minus["watched"] == 0.0
    accuracy = {j: {"accuracy": 1.0, "baseline": 0.5, "true_positive_rate": 1.0, "true_negative_rate": None,
                    "positives": 1, "negatives": 1} for j in range(3)}
    table = edit_rates.markdown({"mean": [plus, minus], "joint": [plus, minus]}, accuracy, ["top", "Male", "hat"],
                                "stand-in", 2.0, 6)
    rows = [line for line in table.splitlines() if line.startswith("| top ") and "→" in line]
    assert rows == ["| top +2v | 4 | mean | 0.25 → **0.75** | hat +0.50 | -0.25 | 0.375 |",
                    "| top +2v | 4 | joint | 0.25 → **0.75** | hat +0.50 | -0.25 | 0.375 |",
                    "| top −2v | 2 | mean | 0.00 → **0.50** | Male +0.00 | +0.00 | 0.000 |",
                    "| top −2v | 2 | joint | 0.00 → **0.50** | Male +0.00 | +0.00 | 0.000 |"]


class _Decoder:
    """A stand-in VAE: the top half is bright where z[0] > 0, the left half where z[1] > 0."""
    def decode(self, z):
        z = np.asarray(z)
        x = np.zeros((len(z), 8, 8, 3), np.float32)
        x[:, :4] += 0.5 * (z[:, 0] > 0)[:, None, None, None]
        x[:, :, :4] += 0.5 * (z[:, 1] > 0)[:, None, None, None]
        return x


class _Judge:
    """top: a bright top half; left: a bright left half."""
    attributes = ("top", "left")

    def probabilities(self, x):
        x = np.asarray(x)
        return np.stack([x[:, :4, 4:].mean(axis=(1, 2, 3)) > 0.25,
                         x[:, 4:, :4].mean(axis=(1, 2, 3)) > 0.25], axis=1).astype(np.float64)


def test_a_leaking_direction_shows_as_a_side_effect_and_a_clean_one_does_not():
    z = np.array([[-1.0, -1.0], [-1.0, 1.0], [-2.0, -1.5], [1.0, -1.0]], np.float32)
    y = np.array([[0, 0], [0, 1], [0, 0], [1, 0]], np.float32)
    judge, dec = _Judge(), _Decoder()
    p_real = judge.probabilities(dec.decode(z))
    clean = vectors.Vectors(["top"], np.array([[2.0, 0.0]], np.float32), np.array([[1.0, 0]], np.float32),
                            np.array([1]), np.array([3]), np.array([1.0]), "id", [], 1, "joint")
    leaky = vectors.Vectors(["top"], np.array([[2.0, 1.0]], np.float32), np.array([[0.9, 0.45]], np.float32),
                            np.array([1]), np.array([3]), np.array([1.0]), "id", [], 1)
    before = judge.probabilities(dec.decode(z))
    for vec, left_change in ((clean, 0.0), (leaky, 1 / 3)):
        rates = edit_rates.edit_rates(dec, judge, p_real, z, y, vec, ["top"], 1.5, batch_size=3, before=before)
        assert rates == edit_rates.edit_rates(dec, judge, p_real, z, y, vec, ["top"], 1.5, batch_size=2)
        plus = edit_rates.summarise(rates, watched="left")[0]
        # +1.5 v: -1 -> 2, -1 -> 2, -2 -> 1: every face without "top" gets it
        assert plus["asked"] == {"before": 0.0, "after": 1.0}
        assert plus["side_effects"]["left"] == pytest.approx(left_change)
        # the leaky one lifts face 2's z[1] from -1.5 to 0 (not above) and face 0's from -1 to 0.5: one flip
        assert plus["flipped"]["left"] == pytest.approx(left_change)


def logits_network(path, size=8, attributes_meta=True, output="logits"):
    """A tiny ONNX network: logit 0 = 20 * (mean of the top half - 0.25), logit 1 = -10 (never)."""
    w = np.zeros((size * size * 3, 2), np.float32)
    w[: size * size * 3 // 2, 0] = 20.0 / (size * size * 3 / 2)
    b = np.array([-5.0, -10.0], np.float32)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["h"]),
             helper.make_node("Identity", ["h"], [output]),
             helper.make_node("Identity", ["flat"], ["features"])]
    graph = helper.make_graph(nodes, "judge", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["N", size, size, 3])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", size * size * 3]),
                               helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 2])],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    ops = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))
    if attributes_meta:
        helper.set_model_props(model, {"attributes": json.dumps(["top", "never"])})
    onnx.save(model, str(path))
    return str(path)


def test_an_onnx_networks_logits_judge_the_named_attributes(tmp_path, rng):
    judge = edit_rates.LogitsJudge(logits_network(tmp_path / "j.onnx"), ["other", "labels"])
    assert judge.known == ["top", "never"]
    judge.select(["never", "top"])
    x = rng.uniform(0, 1, (5, 8, 8, 3)).astype(np.float32)
    x[:2, :4] = 1.0
    x[2:, :4] = 0.0
    p = judge.probabilities(x, batch_size=2)
    top = 20 * x[:, :4].mean(axis=(1, 2, 3)) - 5
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-top)), rtol=1e-5)
    np.testing.assert_allclose(p[:, 0], 1 / (1 + np.exp(10.0)), rtol=1e-5)
    assert (p[:, 1] > 0.5).tolist() == [True, True, False, False, False]
    plain = edit_rates.LogitsJudge(logits_network(tmp_path / "k.onnx", attributes_meta=False), ["a", "b"])
    assert plain.known == ["a", "b"]  # no metadata: the label file's order


@pytest.mark.parametrize("case,words", [("no_logits", "no output named logits"),
                                        ("width", "gives 2 logits for 3 attribute names"),
                                        ("unknown", "has no logit for Male")])
def test_onnx_judge_refusals_are_one_line(tmp_path, case, words):
    path = logits_network(tmp_path / "j.onnx", attributes_meta=case != "width",
                          output="scores" if case == "no_logits" else "logits")
    with pytest.raises(UserError) as e:
        judge = edit_rates.LogitsJudge(path, ["a", "b", "c"])
        judge.select(["top", "Male"])
    assert words in str(e.value) and "\n" not in str(e.value)


def test_picture_rows_are_each_face_edited_by_each_file(tmp_path):
    z = np.array([[-1.0, 0.5], [0.5, -1.0]], np.float32)
    a = vectors.Vectors(["top", "left"], np.array([[1.0, 0], [0, 1.0]], np.float32), np.eye(2, dtype=np.float32),
                        np.array([1, 1]), np.array([1, 1]), np.ones(2), "id", [], 1)
    b = vectors.Vectors(["top", "left"], np.array([[2.0, 2.0], [0, 3.0]], np.float32), np.eye(2, dtype=np.float32),
                        np.array([1, 1]), np.array([1, 1]), np.ones(2), "id", [], 1, "joint")
    strengths = np.array([-1.0, 0.0, 1.5], np.float32)
    dec = _Decoder()
    rows, labels = edit_rates.picture_rows(dec, z, ["f1.jpg", "f2.jpg"], [("mean", a), ("joint", b)], ["top"],
                                           strengths, batch_size=2)
    assert labels == ["top mean, f1.jpg", "top joint, f1.jpg", "top mean, f2.jpg", "top joint, f2.jpg"]
    for (face, vec), row in zip([(0, a), (0, b), (1, a), (1, b)], rows):
        expect = dec.decode(z[face] + strengths[:, None] * vec.vectors[0])
        np.testing.assert_array_equal(row, expect)
    images.save_rows(tmp_path / "p.png", rows, labels=labels)
    assert Image.open(tmp_path / "p.png").size[1] == 4 * (8 + 2) + 2


def test_file_labels_name_the_method_and_a_short_list_of_controls():
    def v(method, controls, names=("A", "Male", "Young")):
        n = len(names)
        return vectors.Vectors(list(names), np.ones((n, 2), np.float32), np.ones((n, 2), np.float32), np.ones(n),
                               np.ones(n), np.ones(n), "id", [], 1, method, None, list(controls))
    files = [v("mean", ["", "", ""]), v("joint", ["all"] * 3), v("joint", ["Male,Young", "Young", "Male"]),
             v("matched", ["B,C", "C,D", "A,E"])]
    assert edit_rates.file_labels(["m.npz", "j.npz", "jmy.npz", "x.npz"], files) == \
        ["mean", "joint", "joint (Male,Young)", "matched"]
    assert edit_rates.file_labels(["a/one.npz", "b/two.npz"], [files[0], files[0]]) == ["mean: one", "mean: two"]
    calibrated = v("joint", ["all"] * 3)
    calibrated.calibrated, calibrated.hold = ["A"], ["Male"]
    assert edit_rates.file_label(calibrated) == "joint, Male's readout kept, calibrated"


def test_edit_rates_cli_measures_every_file_on_the_same_faces_and_draws_them(world, tmp_path, capsys):
    files = [tmp_path / "mean.npz", tmp_path / "joint.npz"]
    assert make(world, files[0], "--split", "train", "--method", "mean") == 0
    assert make(world, files[1], "--split", "train", "--method", "joint") == 0
    common = [world["ckpt"], "--vectors", *map(str, files), "--names", "Smiling,Eyeglasses,Male",
              "--cache-dir", world["cache"], "--quiet"]
    out_json, out_md = tmp_path / "rates.json", tmp_path / "rates.md"
    assert edit_rates.main(common + ["--epochs", "1", "--batch-size", "8", "--json", str(out_json),
                                     "--table", str(out_md)]) == 0
    record = json.loads(out_json.read_text())
    assert record["held_out"] == 12 and list(record["methods"]) == ["mean", "joint"]
    for tag in ("mean", "joint"):
        rows = record["summary"][tag]
        assert [(r["attribute"], r["group"]) for r in rows if r["faces"]] == \
            [(r["attribute"], r["group"]) for r in record["summary"]["mean"] if r["faces"]]
        for name in ("Smiling", "Eyeglasses", "Male"):
            assert sum(r["faces"] for r in rows if r["attribute"] == name) == 12
    table = out_md.read_text()
    assert table in capsys.readouterr().out and "| Smiling +2v |" in table
    assert table.count("| mean |") == table.count("| joint |") == len(record["summary"]["mean"])
    picture = tmp_path / "side.png"
    assert edit_rates.main(common + ["--edit", "Smiling", "--faces", "2", "--strengths", "-2:2:5",
                                     "--picture", str(picture)]) == 0
    assert Image.open(picture).size[1] == 2 * 2 * (16 + 2) + 2
    assert edit_rates.main(common + ["--picture", str(picture)]) == 2
    assert "--force" in one_line(capsys)


def test_edit_rates_cli_refuses_vectors_of_another_model(world, tmp_path, capsys):
    other = tmp_path / "other.npz"
    v = vectors.directions(np.zeros((4, SMALL.z_dim)), np.array([[1], [1], [-1], [-1]]), ["Smiling"], "0" * 64,
                           min_count=1, method="joint")
    vectors.save(other, v)
    assert edit_rates.main([world["ckpt"], "--vectors", str(other), "--names", "Smiling",
                            "--cache-dir", world["cache"], "--quiet"]) == 2
    assert "another checkpoint" in one_line(capsys)
