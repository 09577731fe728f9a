"""Directions corrected on decoded faces (scratchvae/latent/calibrate.py): on a judge that reads each label
from one coordinate, with a leak that no code statistic shows; the exclusive labels; the face draw; and the
attributes CLI's --calibrate, its classifier and its refusals."""

import numpy as np
import pytest

from scratchvae.evaluation import classifier
from scratchvae.latent import calibrate, vectors
from tests.labelled import labelled_world, make_vectors, one_line


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def judge_with_leak(leak):
    """A decoder-and-classifier stand-in: label j is read from coordinate j of the code, and label 1 also
    from `leak` times coordinate 0 (as a decoder that softens a face when it adds glasses)."""
    def judge(codes):
        logits = 3.0 * codes[:, :4].astype(np.float64)
        logits[:, 1] += 3.0 * leak * codes[:, 0]
        return sigmoid(logits)
    return judge


@pytest.fixture
def groups():
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((300, 6)) * 0.5, 1.0), (rng.standard_normal((300, 6)) * 0.5, -1.0)]


def test_a_clean_direction_through_a_leaking_judge_gains_the_opposite_of_the_leak(groups):
    """Direction e0 is clean in the codes, but the judge sees label 1 move with coordinate 0: the
    calibrated direction takes about leak * e1 off and label 1 stops moving, label 0 still moves."""
    probe = calibrate.Probe(judge_with_leak(0.5), groups, strength=1.0)
    eye = np.eye(6)
    v, history = calibrate.calibrate(eye[0], eye[1:4], probe, own=0, steps=6, max_step=1.0)
    before, after = history[0], history[-1]
    assert abs(before[1]) > 0.15 and abs(after[1]) < 0.01 and abs(after[4 + 1]) < 0.01
    assert after[0] > 0.9 * before[0] and after[4] < 0.9 * before[4]  # +v raises label 0, -v lowers it
    assert v[1] == pytest.approx(-0.5, abs=0.05) and np.abs(v[2:]).max() < 0.05 and v[0] == 1.0


def test_a_direction_leaking_in_the_codes_is_cleaned_and_a_clean_one_is_left_alone(groups):
    eye = np.eye(6)
    probe = calibrate.Probe(judge_with_leak(0.0), groups, strength=1.0)
    v, history = calibrate.calibrate(eye[0] + 0.6 * eye[2], eye[1:4], probe, own=0, steps=6, max_step=1.0)
    assert abs(history[0][2]) > 0.15 and abs(history[-1][2]) < 0.01
    np.testing.assert_allclose(v, eye[0], atol=0.03)
    clean, _ = calibrate.calibrate(eye[0], eye[1:4], probe, own=0, steps=2)
    np.testing.assert_allclose(clean, eye[0], atol=1e-3)


def test_a_free_label_is_not_held_and_each_step_is_capped(groups):
    eye = np.eye(6)
    probe = calibrate.Probe(judge_with_leak(0.5), groups, strength=1.0)
    free = np.array([False, True, False, False])
    v, history = calibrate.calibrate(eye[0], eye[1:4], probe, own=0, free=free, steps=3)
    np.testing.assert_allclose(v, eye[0], atol=1e-3)  # label 1 may move: nothing to correct
    capped, _ = calibrate.calibrate(eye[0], eye[1:4], probe, own=0, steps=1, max_step=0.1)
    assert np.linalg.norm(capped - eye[0]) == pytest.approx(0.1)


def test_a_length_weight_keeps_the_direction_short_in_the_codes_metric(groups):
    """Moving along e1 is costly in the metric (the codes barely spread that way): with a length weight
    the correction takes less of e1 and leaves more of the side effect; without one it is as before."""
    eye = np.eye(6)
    probe = calibrate.Probe(judge_with_leak(0.5), groups, strength=1.0)
    metric = np.diag([1.0, 100.0, 1.0, 1.0, 1.0, 1.0])
    free, h_free = calibrate.calibrate(eye[0], eye[1:4], probe, own=0, steps=6, max_step=1.0, metric=metric,
                                       length=0.0)
    short, h_short = calibrate.calibrate(eye[0], eye[1:4], probe, own=0, steps=6, max_step=1.0, metric=metric,
                                         length=1.0)
    plain, _ = calibrate.calibrate(eye[0], eye[1:4], probe, own=0, steps=6, max_step=1.0)
    np.testing.assert_allclose(free, plain, atol=1e-12)
    assert abs(short[1]) < 0.8 * abs(free[1]) and abs(h_short[-1][1]) > abs(h_free[-1][1]) + 0.02
    assert short @ metric @ short < free @ metric @ free


def test_the_code_metric_is_the_inverse_covariance():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((5000, 3)) * [1.0, 2.0, 0.5]
    np.testing.assert_allclose(calibrate.code_metric(z), np.linalg.inv(np.cov(z, rowvar=False)), rtol=1e-4)
    assert np.isfinite(calibrate.code_metric(np.zeros((10, 3)))).all()  # no spread: costly, not singular


def test_probe_counts_its_judge_calls_and_a_zero_edit_changes_nothing(groups):
    probe = calibrate.Probe(judge_with_leak(0.5), groups)
    assert probe.calls == 2
    np.testing.assert_allclose(probe.effects(np.zeros(6)), 0.0, atol=1e-12)
    assert probe.calls == 4
    steps, basis = 2, np.eye(6)[1:4]
    calibrate.calibrate(np.eye(6)[0], basis, probe, own=0, steps=steps)
    assert probe.calls == 4 + 2 * (1 + len(basis) + steps)  # the slopes once, then one look per step


def test_slopes_from_fewer_faces_are_found_once_and_the_steps_look_at_every_face(groups):
    """With a slopes probe the finite differences decode only its faces; the leak is still taken off."""
    probe = calibrate.Probe(judge_with_leak(0.5), groups, strength=1.0)
    few = [(codes[calibrate.slope_faces(np.arange(len(codes)), 20)], sign) for codes, sign in groups]
    slopes = calibrate.Probe(judge_with_leak(0.5), few, strength=1.0)
    eye, steps = np.eye(6), 6
    v, history = calibrate.calibrate(eye[0], eye[1:4], probe, own=0, steps=steps, max_step=1.0, slopes=slopes)
    assert slopes.calls == 2 + 2 * (1 + 3) and probe.calls == 2 + 2 * (1 + steps)
    faces = sum(len(codes) for codes, _ in groups) * probe.calls // 2 + sum(len(c) for c, _ in few) * slopes.calls // 2
    assert faces == calibrate.decodes(600, 40, 3, steps)  # what the progress bar counts
    assert calibrate.decodes(600, 40, 0, steps) == 2 * 600 + 40  # no other direction: before and at v only
    assert abs(history[0][1]) > 0.15 and abs(history[-1][1]) < 0.01
    assert v[1] == pytest.approx(-0.5, abs=0.05)


def test_broydens_update_corrects_slopes_that_are_wrong():
    """Slopes found on a judge half as sensitive as the real one: the first step goes twice as far as it
    should and turns the leak round; with the updated Jacobian the next steps take it off all the same."""
    rng = np.random.default_rng(4)
    faces = [(rng.standard_normal((300, 6)) * 0.5, 1.0), (rng.standard_normal((300, 6)) * 0.5, -1.0)]
    leaky = judge_with_leak(0.5)
    probe = calibrate.Probe(leaky, faces, strength=1.0)
    slopes = calibrate.Probe(lambda codes: leaky(codes / 2.0), faces, strength=1.0)
    eye = np.eye(6)
    _, history = calibrate.calibrate(eye[0], eye[1:4], probe, own=0, steps=8, max_step=1.0, slopes=slopes)
    assert history[0][1] > 0.15 and history[1][1] < -0.1 and abs(history[-1][1]) < 0.01


def test_with_no_other_direction_the_direction_is_left_as_it_is(groups):
    probe = calibrate.Probe(judge_with_leak(0.5), groups)
    v, history = calibrate.calibrate(np.eye(6)[0], np.zeros((0, 6)), probe, own=0)
    np.testing.assert_array_equal(v, np.eye(6)[0])
    assert len(history) == 1 and probe.calls == 4


def test_slope_faces_are_spread_over_the_draw():
    faces = np.arange(100, 300, 2)
    few = calibrate.slope_faces(faces, 10)
    assert len(few) == 10 and few[0] == 100 and few[-1] == 298 and np.all(np.diff(few) > 0)
    np.testing.assert_array_equal(calibrate.slope_faces(faces[:5], 10), faces[:5])


def test_exclusive_labels_are_those_almost_never_seen_together():
    rng = np.random.default_rng(1)
    n = 2000
    blond = rng.random(n) < 0.2
    black = ~blond & (rng.random(n) < 0.4)  # never both
    male = rng.random(n) < 0.5  # independent
    bald = np.zeros(n, bool)  # nobody: not exclusive, there is nothing to hold
    pos = np.stack([blond, black, male, bald], axis=1)
    np.testing.assert_array_equal(calibrate.exclusive(pos, 0), [False, True, False, False])
    pos[np.flatnonzero(blond)[:1], 1] = True  # 1 together where independence gives about 130: still exclusive
    assert calibrate.exclusive(pos, 0)[1]
    pos[np.flatnonzero(blond)[:40], 1] = True
    assert not calibrate.exclusive(pos, 0)[1]


def test_faces_are_drawn_per_side_sorted_and_the_same_each_time():
    pos = np.zeros((50, 2), bool)
    pos[::5, 0] = True  # 10 with label 0
    without, with_ = calibrate.pick_faces(pos, 0, 8)
    assert len(without) == 8 and len(with_) == 8 and np.all(np.diff(without) > 0)
    assert not pos[without, 0].any() and pos[with_, 0].all()
    again = calibrate.pick_faces(pos, 0, 8)
    np.testing.assert_array_equal(again[0], without)
    assert len(calibrate.pick_faces(pos, 0, 30)[1]) == 10  # all there are


# --- the attributes CLI ---

NAMES = ["Smiling", "Eyeglasses", "Male", "Bald"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return labelled_world(tmp_path_factory.mktemp("calibrate"), NAMES)


make = make_vectors


SMALL = ["--calibrate-faces", "6", "--batch-size", "8"]


def test_cli_calibrates_the_named_direction_only_and_records_how(world, tmp_path, capsys):
    clf_path, out, plain = tmp_path / "clf.npz", tmp_path / "cal.npz", tmp_path / "plain.npz"
    assert make(world, out, "--calibrate", "Smiling", *SMALL, "--classifier", str(clf_path)) == 0
    text = capsys.readouterr().out
    assert "classifier of 4 labels trained" in text and "Smiling: own" in text
    assert "Smiling calibrated on decoded faces" in text and "calibrated 1 direction in" in text
    assert make(world, plain, "--method", "joint") == 0
    got, ref = vectors.load(str(out)), vectors.load(str(plain))
    assert got.calibrated == ["Smiling"] and ref.calibrated == [] and "6 faces per side" in got.calibration
    i = got.names.index("Smiling")
    assert not np.allclose(got.vectors[i], ref.vectors[i])
    others = [j for j in range(len(got.names)) if j != i]
    np.testing.assert_array_equal(got.vectors[others], ref.vectors[others])
    np.testing.assert_allclose(np.linalg.norm(got.unit[i]), 1.0, rtol=1e-6)
    clf, _ = classifier.Classifier.load(str(clf_path))
    assert clf.attributes == NAMES
    again = tmp_path / "again.npz"  # the saved classifier is loaded, and the same faces give the same file
    assert make(world, again, "--calibrate", "Smiling", *SMALL, "--classifier", str(clf_path)) == 0
    assert "classifier of 4 labels loaded" in capsys.readouterr().out
    np.testing.assert_array_equal(vectors.load(str(again)).vectors, got.vectors)


@pytest.mark.parametrize("extra,words", [
    (["--calibrate", "Beard"], "--calibrate Beard"),
    (["--calibrate", ","], "name one or more labels"),
    (["--calibrate", "Bald"], "--calibrate Bald: it has no direction"),
    (["--method", "joint", "--classifier", "c.npz"], "give --calibrate NAMES as well"),
    (["--calibrate", "Smiling", "--calibrate-faces", "0"], "must be at least 1"),
    (["--calibrate", "Smiling", "--calibrate-length", "-1"], "--calibrate-length -1.0"),
])
def test_cli_bad_calibration_options_are_one_line_and_write_nothing(world, tmp_path, capsys, extra, words):
    out = tmp_path / "v.npz"
    assert make(world, out, *extra) == 2
    assert words in one_line(capsys)
    assert not out.exists()


def test_a_classifier_of_other_labels_is_refused(world, tmp_path, capsys):
    path = tmp_path / "few.npz"
    classifier.Classifier(16, ["Smiling", "Male"]).save(str(path))
    out = tmp_path / "v.npz"
    assert make(world, out, "--calibrate", "Smiling", "--classifier", str(path)) == 2
    assert "classifies 2 labels" in one_line(capsys) and not out.exists()


def test_calibration_survives_save_and_load_and_an_older_file_has_none(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 4)).astype(np.float32)
    values = np.where(rng.random((200, 3)) < 0.5, 1, -1)
    v = vectors.directions(z, values, ["A", "B", "C"], "id", method="joint")
    moved = vectors.with_directions(v, v.vectors * 2, z, ["B"], "by hand")
    vectors.save(str(tmp_path / "v.npz"), moved)
    back = vectors.load(str(tmp_path / "v.npz"))
    assert back.calibrated == ["B"] and back.calibration == "by hand"
    np.testing.assert_allclose(back.vectors, v.vectors * 2)
    np.testing.assert_allclose(back.unit, v.unit, atol=1e-6)
    assert v.calibrated == [] and v.calibration == ""
