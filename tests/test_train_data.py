"""python -m scratchvae.train with a --data that does not exist: refused in one line before an output
folder is chosen or named, so a mistyped path neither announces runs/vae-2 nor leaves a folder."""

from pathlib import Path

from scratchvae import train


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def test_a_missing_data_folder_is_refused_before_an_output_folder_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "vae").mkdir(parents=True)
    (tmp_path / "runs" / "vae" / "checkpoint.npz").write_bytes(b"an earlier run")  # the default is taken
    before = files_under(tmp_path)
    for extra in ([], ["--out", "fresh/run"]):
        assert train.main(["--data", "missing/"] + extra) == 2
        out, err = capsys.readouterr()
        assert "writing to" not in out and "vae-2" not in out + err
        assert err.startswith("error: missing/: no such file or folder") and err.count("\n") == 1, err
        assert files_under(tmp_path) == before
