"""Atomic file writes: readers see the old file or the whole new one, never half of it.

Bytes go to a temporary file in the same folder (named TMP_PREFIX + 8 random characters + the
final name), are fsynced, then renamed into place. A run killed mid-write leaves only such a
temporary file; `is_temp_name` recognises one, so the next run can remove it. `why_failed` says
why a write failed, with the free space when the disk is full or read-only.
"""

import errno
import os
import re
import shutil
import tempfile

TMP_PREFIX = ".tmp-"
# mkstemp's random part: 8 characters from a-z, 0-9 and "_"; the final file's name follows.
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"[a-z0-9_]{8}.+")


def default_file_mode():
    """0666 less the process umask: the mode open() would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes(path, data):
    """Write `data` to `path` via a temporary file, fsync and rename; the temporary file is removed
    on any failure, and the previous file at `path` (if any) stays as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.basename(path), dir=folder)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; a saved file should look like any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power loss
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic


FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def why_failed(e, folder):
    """An OSError's reason in words; for a full or read-only disk, with the free space in `folder`."""
    why = e.strerror or str(e)
    if e.errno in FULL_OR_READ_ONLY:
        try:
            why += f", {shutil.disk_usage(folder).free / 1e6:,.1f} MB free in {folder}"
        except OSError:
            pass
    return why


def is_temp_name(name):
    """True for the name of a temporary file that write_bytes left behind (a killed write)."""
    return _TMP_NAME.fullmatch(name) is not None
