"""House rules over the repository's tracked text, and the package's shape: the faces of the data and
latent folders hand on their modules' names, and the two commands that live in latent/ still run as
`python -m scratchvae.attributes` and `python -m scratchvae.prior`.
"""

import re
import subprocess
import sys
import types
from pathlib import Path

from scratchvae import data, latent
from scratchvae.data import sources
from scratchvae.latent import arithmetic

ROOT = Path(__file__).resolve().parents[1]
# The word and the path are built from pieces so that this file does not name them itself.
WORD = re.compile("sess" "ion", re.IGNORECASE)
ALLOWED = re.compile(r"\b(?:InferenceSession|SessionOptions)\b")  # onnxruntime's own names
MACHINE_PATH = "/" "work/"
LOCK_FILES = re.compile(r"(?:^|/)(?:package-lock\.json|npm-shrinkwrap\.json|yarn\.lock|pnpm-lock\.yaml|[^/]+\.lock)$")


def tracked_text():
    """(path, text) of every tracked file that is text: not a lock file, no NUL byte, valid UTF-8."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [p for p in listed.decode().split("\0") if p and not LOCK_FILES.search(p)]
    assert len(paths) > 100, "git ls-files listed too few files to be this repository"
    out = []
    for path in paths:
        raw = (ROOT / path).read_bytes() if (ROOT / path).is_file() else b""
        if b"\0" in raw[:8192]:
            continue
        try:
            out.append((path, raw.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def hits(check):
    """`path:line: text` for each line of tracked text where check(line) holds."""
    return [f"{path}:{i}: {line.strip()[:100]}" for path, text in tracked_text()
            for i, line in enumerate(text.splitlines(), 1) if check(line)]


def test_tracked_text_never_uses_the_word_outside_onnxruntimes_names():
    found = hits(lambda line: WORD.search(ALLOWED.sub("", line)))
    assert not found, "say runner, run or process instead:\n" + "\n".join(found)


def test_the_check_finds_the_word_and_passes_onnxruntimes_names():
    assert WORD.search(ALLOWED.sub("", "the second " + "Sess" "ion of work"))
    assert not WORD.search(ALLOWED.sub("", "ort.InferenceSession(path, ort.SessionOptions())"))


def test_no_tracked_file_names_a_machine_path():
    found = hits(lambda line: MACHINE_PATH in line)
    assert not found, "name paths relative to the repository instead:\n" + "\n".join(found)


def public_names(module):
    """What a module defines for others: its own functions and classes, and its constants."""
    return {name for name, value in vars(module).items() if not name.startswith("_")
            and not isinstance(value, types.ModuleType)
            and (getattr(value, "__module__", None) == module.__name__ or name.isupper())}


def test_the_folders_faces_hand_on_their_modules_names():
    """`data.load_images` and `latent.draw_z` are the very objects of data/sources.py and
    latent/arithmetic.py, and every name those define is on the face."""
    for face, module, some in ((data, sources, {"load_images", "DataError", "CROPS"}),
                               (latent, arithmetic, {"draw_z", "slerp", "GOLDEN"})):
        names = public_names(module)
        assert some <= names
        for name in names:
            assert getattr(face, name, None) is getattr(module, name), f"{face.__name__}.{name}"


def test_the_latent_commands_still_run_from_their_old_names(tmp_path):
    missing = tmp_path / "none.npz"
    for command in ("attributes", "prior"):
        done = subprocess.run([sys.executable, "-m", f"scratchvae.{command}", str(missing)], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.strip().splitlines() == [f"error: no checkpoint at {missing}: give the checkpoint.npz "
                                                    f"a training run wrote"], command
