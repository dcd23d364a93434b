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


def write_atomic(path: str | os.PathLike, data: bytes) -> int:
    """Write `data` to `path` atomically; return the number of bytes written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a short temp name: a 250-character legal target name must still work
    fd, tmp = tempfile.mkstemp(prefix=".cir-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(data)
