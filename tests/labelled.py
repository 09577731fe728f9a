"""A small labelled face set for the attribute tests: random pictures named as CelebA names its
files, and a list_attr_celeba.txt beside them in CelebA's format (the last attribute never set, so
that it is skipped when vectors are made)."""

import numpy as np
from PIL import Image


def labelled_faces(folder, n, names, seed):
    """Write n images and their labels into `folder`; (file names, values (n, len(names)) of +-1)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    files = [f"{i + 1:06d}.png" for i in range(n)]
    for name in files:
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(folder / name)
    values = np.where(rng.random((n, len(names))) < 0.5, 1, -1)
    values[:, -1] = -1  # nobody has the last one: it is skipped
    lines = [str(n), " ".join(names)] + [f"{f} " + " ".join(f"{v:2d}" for v in row) for f, row in zip(files, values)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return files, values


def labelled_run(tmp, names, n=48, seed=3):
    """A labelled face set in tmp/faces and a tiny untrained 16-px model saved as tmp/checkpoint.npz with
    the run settings training records, so that a command can rebuild its split (a quarter held out).
    (faces folder, checkpoint path)."""
    from scratchvae.model import VAE, VAEConfig
    faces, ckpt = tmp / "faces", tmp / "checkpoint.npz"
    labelled_faces(faces, n, names, seed=seed)
    run = {"data": str(faces), "limit": None, "crop": "center", "batch_size": 8, "seed": 0, "val_fraction": 0.25}
    VAE(VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4), seed=0).save(ckpt, meta={"train": run, "images": n})
    return faces, ckpt


def labelled_world(tmp, names):
    """labelled_run in tmp as the dict the attribute CLI tests pass around: tmp, faces, ckpt and an
    image cache folder of their own."""
    faces, ckpt = labelled_run(tmp, names)
    return {"tmp": tmp, "faces": str(faces), "ckpt": str(ckpt), "cache": str(tmp / "cache")}


def make_vectors(world, out, *extra):
    """python -m scratchvae.attributes on a labelled_world, writing `out`; its exit status."""
    from scratchvae.latent import attributes
    return attributes.main([world["ckpt"], "--data", world["faces"], "--out", str(out), "--min-count", "3",
                            "--cache-dir", world["cache"], "--quiet", *extra])


def one_line(capsys):
    """The captured error output, notes left out, asserted to be one `error:` line without a traceback."""
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if not line.startswith("note:"))
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err
