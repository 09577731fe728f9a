"""benches/compare_priors.py on two tiny runs of the built-in faces, each with its fitted prior and two
evaluate records: one table row per run and sampler holding the records' numbers, the figure's rows
decoded from latent.draw_z and from the prior's mixture.draw, and a missing or wrong file in one line."""

import csv
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchvae import evaluate, images, latent, train
from scratchvae.latent import mixture, prior
from scratchvae.model import VAE
from tests.test_quality import tiny_feature_model
from tests.test_train import TINY

BENCH = Path(__file__).resolve().parents[1] / "benches" / "compare_priors.py"
_spec = importlib.util.spec_from_file_location("compare_priors", BENCH)
compare_priors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_priors)

RUNS = {"seed's objective": ["--recon", "mse"], "--recon sigma": ["--recon", "sigma"]}
SAMPLERS = (("N(0, I)", "eval-normal.json"), ("fitted prior", "eval-prior.json"))
N, SEED, SIZE, PAD = 5, 3, 16, 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two runs of 2 epochs on 96 built-in faces, each with prior.npz (python -m scratchvae.prior) and
    eval-normal.json and eval-prior.json (python -m scratchvae.evaluate with a tiny feature network and
    three sample seeds), as the real runs are made."""
    root = tmp_path_factory.mktemp("compare_priors")
    cache = str(root / "cache")
    features = tiny_feature_model(root / "features.onnx", layout="NHWC")
    folders = []
    for i, extra in enumerate(RUNS.values()):
        out = root / f"run{i}"
        assert train.main([*TINY, "--out", str(out), "--limit", "96", "--epochs", "2", "--no-prior", "--seed", str(i),
                           "--threads", "1", "--cache-dir", cache, *extra]) == 0
        ckpt = str(out / "checkpoint.npz")
        assert prior.main([ckpt, "--components", "2", "--threads", "1", "--cache-dir", cache, "--quiet"]) == 0
        common = [ckpt, "--features", str(features), "--sample-seeds", "0,1,2", "--n-samples", "24", "--threads", "1",
                  "--cache-dir", cache, "--quiet"]
        assert evaluate.main([*common, "--json", str(out / "eval-normal.json")]) == 0
        assert evaluate.main([*common, "--prior", str(out / "prior.npz"), "--json", str(out / "eval-prior.json")]) == 0
        folders.append(out)
    return folders


def bench(folders, out, *extra):
    return compare_priors.main([*map(str, folders), "--labels", ",".join(RUNS), "--table", str(out / "table.md"),
                                "--json", str(out / "table.json"), "--figure", str(out / "figure.png"),
                                *map(str, extra)])


def test_the_numbers_are_printed_to_three_significant_digits():
    sig = compare_priors.sig
    assert [sig(74.23), sig(7.8), sig(0.001234), sig(-0.01234), sig(1234.4), sig(0.0), sig(None)] == \
        ["74.2", "7.80", "0.00123", "-0.0123", "1234", "0", "n/a"]


def test_one_row_per_run_and_sampler_holding_the_records_numbers(folders, tmp_path, capsys):
    assert bench(folders, tmp_path) == 0
    printed = capsys.readouterr().out
    md = (tmp_path / "table.md").read_text()
    lines = md.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| " + " | ".join(compare_priors.COLUMNS) + " |" and lines[1] == "|---|" + "---|" * 9
    rows = [line[2:-2].split(" | ") for line in table[1:]]
    assert [r[0] for r in rows] == [f"{label}, {sampler}" for label in RUNS for sampler, _ in SAMPLERS]
    numbers = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert len(numbers) == 4
    sig = compare_priors.sig
    for k, (cells, got) in enumerate(zip(rows, numbers)):
        folder, (sampler, name) = folders[k // 2], SAMPLERS[k % 2]
        record = json.loads((folder / name).read_text())
        seeds, recon = record["features"]["sample_seeds"], record["features"]["reconstructions"]["frechet_distance"]
        fd, kid = seeds["frechet_distance_spread"], seeds["kid_spread"]["median"]
        with open(folder / "metrics.csv", newline="") as f:
            seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
        assert got["source"] == str(folder / name) and got["sampler"] == sampler
        assert got["psnr"] == record["z_mean"]["psnr"] and got["ssim"] == record["z_mean"]["ssim"]
        assert got["fd_samples"] == {"median": fd["median"], "range": fd["range"], "seeds": [0, 1, 2], "count": 24}
        assert fd["median"] == statistics.median(seeds["frechet_distance"])
        assert got["kid_samples"] == kid == statistics.median(seeds["kid"])
        assert got["fd_reconstructions"] == recon and got["fd_ratio"] == fd["median"] / recon
        assert got["blur_ratio"] == record["samples"]["blur"]["ratio"]
        best = record["features"]["training_reconstructions"]["frechet_distance"]
        assert got["fd_best_prior"] == best
        assert got["seconds_per_epoch"] == {"median": statistics.median(seconds),
                                            "range": [min(seconds), max(seconds)], "epochs": 2}
        assert cells[1:] == [f"{record['z_mean']['psnr']:.2f}", f"{record['z_mean']['ssim']:.3f}",
                             f"{sig(fd['median'])} ({sig(fd['range'][0])}–{sig(fd['range'][1])})", sig(kid), sig(recon),
                             f"{fd['median'] / recon:.2f}", sig(best), sig(record["samples"]["blur"]["ratio"]),
                             f"{sig(statistics.median(seconds))} ({sig(min(seconds))}–{sig(max(seconds))}, 2 epochs)"]
        assert f"  {cells[0]}: {folder / name} (z_mean.psnr" in printed
    # z = mu's measures are one per run, whichever sampler drew the samples
    assert numbers[0]["psnr"] == numbers[1]["psnr"] and numbers[2]["psnr"] == numbers[3]["psnr"]
    assert numbers[0]["fd_samples"] != numbers[1]["fd_samples"]
    # the line under the table: each run's floor (the runs' seeds differ, so do their splits) and the network
    note = lines[-1]
    assert lines[-2] == "" and note.startswith("Floor, seed's objective: training photographs against the ")
    for folder in folders:
        floor = json.loads((folder / "eval-normal.json").read_text())["features"]["floor"]
        assert f"FD {sig(floor['at_sample_count']['frechet_distance'])} " in note
    assert note.endswith("Feature network: features.onnx (its distances compare only with the same file).")
    assert md in printed


def test_the_figure_decodes_the_same_draws_per_sampler_in_every_run(folders, tmp_path, capsys):
    assert bench(folders, tmp_path, "--n", N, "--seed", SEED) == 0
    expected = []
    for folder in folders:
        vae = VAE.load(folder / "checkpoint.npz")
        p = prior.load(folder / "prior.npz")
        for z in (latent.draw_z(SEED, N, 4), mixture.draw(p.weights, p.means, p.cholesky, SEED, N)):
            expected.append(np.clip(np.asarray(vae.decode(z, training=False)), 0, 1))
    labels = [f"{label}, {sampler}" for label in RUNS for sampler, _ in SAMPLERS]
    with Image.open(tmp_path / "figure.png") as im:
        got = np.asarray(im.convert("RGB"))
    assert got.shape[0] == 4 * (SIZE + PAD) + PAD and got.shape[1] > N * (SIZE + PAD) + PAD
    assert np.array_equal(got, images.labelled_rows(expected, labels))

    def tiles(r):
        top = PAD + r * (SIZE + PAD)
        return got[top:top + SIZE, -(N * (SIZE + PAD) + PAD):]
    for r in (0, 2):  # each run's prior row is another draw than its N(0, I) row
        assert np.abs(tiles(r).astype(int) - tiles(r + 1)).mean() > 1


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture
def copy_of_run(folders, tmp_path):
    return Path(shutil.copytree(folders[1], tmp_path / "run"))


@pytest.mark.parametrize("name", compare_priors.FILES)
def test_a_missing_file_is_named_in_one_line_and_nothing_is_written(folders, copy_of_run, tmp_path, capsys, name):
    (copy_of_run / name).unlink()
    assert bench([folders[0], copy_of_run], tmp_path / "out") == 2
    one_line_error(capsys, f"{copy_of_run} lacks {name}")
    assert not (tmp_path / "out").exists()


def test_the_script_exits_2_with_one_line(copy_of_run):
    (copy_of_run / "eval-prior.json").unlink()
    done = subprocess.run([sys.executable, str(BENCH), str(copy_of_run)], check=False, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    line = (f"error: {copy_of_run} lacks eval-prior.json: make it with python -m scratchvae.evaluate "
            f"{copy_of_run / 'checkpoint.npz'} --features FEATURES.onnx --sample-seeds 0,1,2 "
            f"--prior {copy_of_run / 'prior.npz'} --json {copy_of_run / 'eval-prior.json'}")
    assert done.stderr.splitlines() == [line]


def test_wrong_files_and_labels_are_refused_in_one_line(folders, copy_of_run, tmp_path, capsys):
    assert bench(folders[:1], tmp_path / "out") == 2
    one_line_error(capsys, "--labels names 2 runs; 1 were given")
    shutil.copy(copy_of_run / "eval-normal.json", copy_of_run / "eval-prior.json")
    assert bench([folders[0], copy_of_run], tmp_path / "out") == 2
    one_line_error(capsys, "eval-prior.json holds samples of N(0, I), not of the fitted prior")
    shutil.copy(folders[1] / "eval-prior.json", copy_of_run / "eval-prior.json")
    shutil.copy(folders[0] / "prior.npz", copy_of_run / "prior.npz")  # another checkpoint's prior
    assert bench([folders[0], copy_of_run], tmp_path / "out") == 2
    one_line_error(capsys, "prior.npz was made for another checkpoint")
    (copy_of_run / "eval-normal.json").write_text("{not json")
    assert bench([folders[0], copy_of_run], tmp_path / "out") == 2
    one_line_error(capsys, "eval-normal.json is not a readable JSON file")
    assert not (tmp_path / "out").exists()


def test_a_further_prior_record_adds_a_row_where_a_run_has_it(folders, tmp_path, capsys):
    """--also eval-prior-T1.4.json: the run that holds the record gets a third row, labelled with its
    temperature and holding its numbers; its figure row is the prior's draws at that temperature; the
    run without it keeps two rows. A name with a folder in it is refused."""
    runs = [Path(shutil.copytree(f, tmp_path / f"run{i}")) for i, f in enumerate(folders)]
    ckpt, fitted = runs[1] / "checkpoint.npz", runs[1] / "prior.npz"
    assert evaluate.main([str(ckpt), "--features", str(folders[0].parent / "features.onnx"), "--prior", str(fitted),
                          "--temperature", "1.4", "--sample-seeds", "0,1,2", "--n-samples", "24", "--threads", "1",
                          "--cache-dir", str(folders[0].parent / "cache"), "--quiet",
                          "--json", str(runs[1] / "eval-prior-T1.4.json")]) == 0
    out = tmp_path / "out"
    assert bench(runs, out, "--also", "eval-prior-T1.4.json", "--n", N, "--seed", SEED) == 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert [r["label"] for r in rows] == [f"{label}, {sampler}" for label in RUNS for sampler, _ in SAMPLERS] + \
        ["--recon sigma, fitted prior at temperature 1.4"]
    record = json.loads((runs[1] / "eval-prior-T1.4.json").read_text())
    assert rows[-1]["temperature"] == 1.4 and rows[-1]["source"] == str(runs[1] / "eval-prior-T1.4.json")
    assert rows[-1]["fd_samples"]["median"] == record["features"]["sample_seeds"]["frechet_distance_spread"]["median"]
    assert rows[-1]["fd_samples"]["median"] != rows[-2]["fd_samples"]["median"]
    vae, p = VAE.load(ckpt), prior.load(fitted)
    tempered = np.clip(np.asarray(vae.decode(mixture.draw(p.weights, p.means, p.cholesky, SEED, N, 1.4),
                                             training=False)), 0, 1)
    with Image.open(out / "figure.png") as im:
        got = np.asarray(im.convert("RGB"))
    top = PAD + 4 * (SIZE + PAD)
    assert got.shape[0] == 5 * (SIZE + PAD) + PAD
    assert np.array_equal(got[top:top + SIZE, -(N * (SIZE + PAD) + PAD):],
                          images.labelled_rows([tempered], ["x"])[PAD:PAD + SIZE, -(N * (SIZE + PAD) + PAD):])
    capsys.readouterr()
    assert bench(runs, tmp_path / "refused", "--also", "run1/eval-prior-T1.4.json") == 2
    one_line_error(capsys, "--also", "file names inside the run folders")
    assert not (tmp_path / "refused").exists()
