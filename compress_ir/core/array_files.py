""".npy / .npz readers for user data that may be careless or hostile.

The header is checked against the file before any array is allocated: object
(pickled) dtypes, scalars, truncated data, a header that claims more than the
file holds, a non-zip `.npz` and a zip member that inflates past the limit all
become a one-line UsageError naming the file. Only regular files are read (a FIFO
would block forever).
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npformat

from compress_ir.core.errors import UsageError
from compress_ir.core.limits import MAX_CALIB_BYTES, human_bytes


def _fail(path: str | os.PathLike, message: str) -> UsageError:
    return UsageError(f"{os.fspath(path)}: {message}")


def _regular(path: str | os.PathLike) -> int:
    """Size of a regular file; anything else (missing, folder, FIFO, device) is refused."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "not a regular file")
    return st.st_size


def _read_array(fh: IO[bytes], size: int, where: str, cap: int) -> np.ndarray:
    """One .npy stream of `size` bytes, validated before allocation."""
    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
    except Exception as exc:  # noqa: BLE001 - numpy parses the header with ast/tokenize
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise _fail(where, f"not a valid .npy array ({first})") from None
    if dtype.hasobject:
        raise _fail(where, "holds Python objects (pickled); only numeric arrays are read")
    if dtype.kind not in "biuf":
        raise _fail(where, f"dtype {dtype} is not a numeric array")
    if not shape:
        raise _fail(where, "holds a scalar; expected samples on axis 0")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > cap:
        raise _fail(where, f"the array would take {human_bytes(nbytes)}, over the limit of "
                    f"{human_bytes(cap)} (COMPRESS_IR_MAX_CALIB_BYTES)")
    remaining = size - fh.tell()
    if remaining != nbytes:
        raise _fail(where, f"header says {list(shape)} {dtype} ({nbytes} bytes) but the file "
                    f"holds {remaining}; truncated or corrupt")
    data = fh.read(nbytes)
    if len(data) != nbytes:
        raise _fail(where, "truncated")
    order = "F" if fortran else "C"
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy()


def read_npy(path: str | os.PathLike, cap: int = MAX_CALIB_BYTES) -> np.ndarray:
    """A numeric array from a .npy file (not a scalar), checked before allocating."""
    size = _regular(path)
    try:
        with open(path, "rb") as fh:
            return _read_array(fh, size, os.fspath(path), cap)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None


def read_npz(path: str | os.PathLike, cap: int = MAX_CALIB_BYTES) -> dict[str, np.ndarray]:
    """Arrays by name from an .npz (zip of .npy); members may not inflate past `cap`."""
    _regular(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            total = sum(m.file_size for m in members)
            if total > cap:
                raise _fail(path, f"unpacks to {human_bytes(total)}, over the limit of "
                            f"{human_bytes(cap)}")
            for m in members:
                name = m.filename[:-4] if m.filename.endswith(".npy") else m.filename
                if name in arrays:
                    raise _fail(path, f"holds {name!r} twice")
                with zf.open(m) as fh:
                    arrays[name] = _read_array(fh, m.file_size, f"{path}[{name}]", cap)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            zlib.error, ValueError) as exc:
        raise _fail(path, f"not a valid .npz archive ({exc})") from None
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # encrypted members
        raise _fail(path, f"cannot read archive member: {exc}") from None
    if not arrays:
        raise _fail(path, "holds no arrays")
    return arrays


def is_regular_file(path: Path) -> bool:
    """True for a regular file (following symlinks); FIFOs and devices are skipped."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
