"""CelebA's attribute labels (list_attr_celeba.txt), read strictly and matched to a data set's images.

The file: a line with the number of images, a line of attribute names, then one line per image,
`000001.jpg` followed by one value of 1 or -1 per attribute. Any departure is one error naming the line.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratchvae.run.errors import UserError

ATTRIBUTES_FILE = "list_attr_celeba.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class LabelError(UserError):
    """A label file that is missing or malformed; str() names the file, the line and the fix."""


@dataclass
class Labels:
    path: str
    attributes: list  # attribute names, in the file's order
    files: list  # image file name of each row
    values: np.ndarray  # (rows, attributes) int8 of +1 / -1

    def row_of(self):
        return {name: i for i, name in enumerate(self.files)}


def find(data_path, given=None):
    """The label file: `given` when named, else list_attr_celeba.txt where CelebA's layout puts it
    (in the data folder, or beside it, or in an Anno/ folder in either place)."""
    if given is not None:
        if not Path(given).is_file():
            raise LabelError(f"--attributes {given}: no such file; give CelebA's {ATTRIBUTES_FILE}")
        return str(given)
    data = Path(data_path).expanduser().absolute()
    base = data if data.is_dir() else data.parent
    for folder in (base, base / "Anno", base.parent, base.parent / "Anno"):
        if (folder / ATTRIBUTES_FILE).is_file():
            return str(folder / ATTRIBUTES_FILE)
    raise LabelError(f"no {ATTRIBUTES_FILE} in or beside {data}: name it with --attributes PATH")


def _is_file_name(name):
    return name.lower().endswith(IMAGE_SUFFIXES) and "/" not in name and "\\" not in name and name[0] != "."


def read(path):
    """Labels from a list_attr_celeba.txt; LabelError naming the line at the first problem."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise LabelError(f"{path} is not a text file: give CelebA's {ATTRIBUTES_FILE}") from None
    except OSError as e:
        raise LabelError(f"cannot read {path} ({e.strerror or e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise LabelError(f"{path}: expected a count line and a line of attribute names, found {len(lines)} line(s)")
    head = lines[0].split()
    if len(head) != 1 or not head[0].isdigit():
        raise LabelError(f"{path} line 1: expected the number of images, found {lines[0][:60]!r}")
    count, attributes = int(head[0]), lines[1].split()
    if not attributes:
        raise LabelError(f"{path} line 2: expected the attribute names, found an empty line")
    seen = set()
    for name in attributes:
        if name in seen or "+" in name or "-" in name:
            raise LabelError(f"{path} line 2: {name[:40]!r} is not an attribute name (repeated, or holding + or -)")
        seen.add(name)
    rows = lines[2:]
    if len(rows) != count:
        raise LabelError(f"{path} line 1: the header says {count} images but {len(rows)} rows follow; "
                         f"the file is truncated or the count is wrong")
    k = len(attributes)
    values = np.empty((count, k), np.int8)
    files, where = [], {}
    for i, line in enumerate(rows):
        number, parts = i + 3, line.split()
        if len(parts) != k + 1:
            raise LabelError(f"{path} line {number}: expected a file name and {k} values, found {len(parts)} fields")
        name = parts[0]
        if not _is_file_name(name):
            raise LabelError(f"{path} line {number}: {name[:60]!r} is not an image file name like 000001.jpg")
        if name in where:
            raise LabelError(f"{path} line {number}: {name} is listed again (first on line {where[name]})")
        where[name] = number
        try:
            row = [{"1": 1, "-1": -1}[v] for v in parts[1:]]
        except KeyError:
            bad = next(j for j, v in enumerate(parts[1:]) if v not in ("1", "-1"))
            raise LabelError(f"{path} line {number}: {attributes[bad]} is {parts[1 + bad][:20]!r}, "
                             f"but every value must be 1 or -1") from None
        values[i] = row
        files.append(name)
    return Labels(str(path), attributes, files, values)


def for_images(labels, image_names):
    """(len(image_names), attributes) int8: the row of each image, matched by file name (the data's
    names may carry folders, as CelebA's img_align_celeba/000001.jpg does). Every image needs a row."""
    rows, index = labels.row_of(), np.empty(len(image_names), np.int64)
    missing = []
    for i, name in enumerate(image_names):
        row = rows.get(name.rsplit("/", 1)[-1])
        if row is None:
            missing.append(name)
        else:
            index[i] = row
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise LabelError(f"{labels.path} has no row for {missing[0]}{more}: use the label file of these images "
                         f"(or name it with --attributes)")
    return labels.values[index]
