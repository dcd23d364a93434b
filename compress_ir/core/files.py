"""Atomic file output: a reader never sees a half-written model or report.

Data goes to a temp file in the target's folder (same filesystem), is synced, gets
the mode a plain `open()` would give, and is renamed over the target.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def new_file_mode() -> int:
    """The mode `open()` would give a new file: 0o666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_temp(parent: Path, data: bytes) -> Path:
    """`data` in a new, fsynced temp file in `parent` with a normal file's mode.

    The temp name is short (a 250-character legal target name must still fit) and
    the file is removed again if writing fails; renaming it into place is the caller's.
    """
    fd, tmp = tempfile.mkstemp(prefix=".cir-", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_atomic(path: str | os.PathLike, data: bytes) -> int:
    """Write `data` to `path` atomically; return the number of bytes written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(target.parent, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)
