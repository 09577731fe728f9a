"""The strict reader of CelebA's list_attr_celeba.txt, on files the tests write: good ones, each kind
of damage (named by its line), finding the file in CelebA's layout, and matching rows to images."""

import numpy as np
import pytest

from scratchvae.latent import labels

NAMES = ["5_o_Clock_Shadow", "Eyeglasses", "Smiling"]
ROWS = [("000001.jpg", [-1, 1, 1]), ("000002.jpg", [1, -1, -1]), ("000003.jpg", [-1, -1, 1])]


def write(path, count=None, names=NAMES, rows=ROWS, extra=""):
    lines = [str(len(rows) if count is None else count), " ".join(names)]
    lines += [f"{f} " + " ".join(f"{v:2d}" for v in vals) for f, vals in rows]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_reads_names_files_and_values(tmp_path):
    found = labels.read(write(tmp_path / "list_attr_celeba.txt", extra="\n\n"))
    assert found.attributes == NAMES
    assert found.files == [f for f, _ in ROWS]
    assert found.values.dtype == np.int8
    np.testing.assert_array_equal(found.values, np.array([v for _, v in ROWS]))


@pytest.mark.parametrize("case,line,words", [
    ("count_high", 1, "header says 5 images but 3 rows"),
    ("count_low", 1, "header says 2 images but 3 rows"),
    ("count_text", 1, "expected the number of images"),
    ("value_zero", 3, "Eyeglasses is '0'"),
    ("value_word", 4, "Smiling is 'yes'"),
    ("short_row", 3, "expected a file name and 3 values, found 3 fields"),
    ("bad_name", 4, "'000002.txt' is not an image file name"),
    ("repeated", 4, "000001.jpg is listed again (first on line 3)"),
    ("repeated_attribute", 2, "'Smiling' is not an attribute name"),
    ("missing_header", 2, "is not an attribute name"),
])
def test_damage_is_one_error_naming_the_line(tmp_path, case, line, words):
    path = tmp_path / "list_attr_celeba.txt"
    rows = [list(r) for r in ROWS]
    if case == "count_high":
        write(path, count=5)
    elif case == "count_low":
        write(path, count=2)
    elif case == "count_text":
        write(path, count="three")
    elif case == "value_zero":
        rows[0][1] = [-1, 0, 1]
        write(path, rows=rows)
    elif case == "value_word":
        path.write_text(write(tmp_path / "x.txt").read_text().replace("000002.jpg  1 -1 -1", "000002.jpg  1 -1 yes"))
    elif case == "short_row":
        rows[0][1] = [1, 1]
        write(path, rows=rows)
    elif case == "bad_name":
        rows[1][0] = "000002.txt"
        write(path, rows=rows)
    elif case == "repeated":
        rows[1][0] = "000001.jpg"
        write(path, rows=rows)
    elif case == "repeated_attribute":
        write(path, names=["Smiling", "Eyeglasses", "Smiling"])
    elif case == "missing_header":
        path.write_text("3\n" + "\n".join(f"{f} " + " ".join(map(str, v)) for f, v in ROWS) + "\n")
    with pytest.raises(labels.LabelError) as e:
        labels.read(path)
    message = str(e.value)
    assert f"line {line}:" in message and words in message and "\n" not in message, message


def test_an_empty_or_binary_file_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    for name in ("empty.txt", "binary.txt"):
        with pytest.raises(labels.LabelError):
            labels.read(tmp_path / name)


def test_found_in_celeba_layouts(tmp_path):
    images = tmp_path / "celeba" / "celeba-sample"
    images.mkdir(parents=True)
    with pytest.raises(labels.LabelError, match="--attributes"):
        labels.find(images)
    beside = write(tmp_path / "celeba" / labels.ATTRIBUTES_FILE)
    assert labels.find(images) == str(beside)
    (tmp_path / "celeba" / "Anno").mkdir()
    inside = write(images / labels.ATTRIBUTES_FILE)
    assert labels.find(images) == str(inside)  # the data folder's own file comes first
    zipped = tmp_path / "celeba" / "img_align_celeba.zip"
    zipped.write_bytes(b"")
    assert labels.find(zipped) == str(beside)
    named = write(tmp_path / "mine.txt")
    assert labels.find(images, named) == str(named)
    with pytest.raises(labels.LabelError, match="no such file"):
        labels.find(images, tmp_path / "nothing.txt")


def test_rows_follow_the_images_by_file_name(tmp_path):
    found = labels.read(write(tmp_path / "a.txt"))
    got = labels.for_images(found, ["img_align_celeba/000003.jpg", "000001.jpg"])
    np.testing.assert_array_equal(got, np.array([ROWS[2][1], ROWS[0][1]]))
    with pytest.raises(labels.LabelError, match="no row for 000009.jpg and 1 more"):
        labels.for_images(found, ["000001.jpg", "000009.jpg", "x/000010.jpg"])
