"""Resource limits: how much a model, a calibration file or a remote device may cost us.

A hostile or careless input must fail with a clear error instead of eating all
memory or hanging. The caps are generous for real models (the largest torchvision
weight is ~400 MB) and can be raised with environment variables where a user
really needs more. The README lists them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from compress_ir.core.errors import UsageError


def _env_bytes(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


MIB = 1 << 20
GIB = 1 << 30

# Any one tensor read from a model (initializer, external data, sparse initializer).
MAX_TENSOR_BYTES = _env_bytes("COMPRESS_IR_MAX_TENSOR_BYTES", 4 * GIB)
# Any one tensor created by constant folding at load time (a 4 KB Expand must not
# become gigabytes).
MAX_FOLD_BYTES = _env_bytes("COMPRESS_IR_MAX_FOLD_BYTES", 256 * MIB)
# All calibration data together (decoded arrays, random:N, image folders).
MAX_CALIB_BYTES = _env_bytes("COMPRESS_IR_MAX_CALIB_BYTES", 4 * GIB)
# Pixels of one calibration image (Pillow's decompression-bomb guard).
MAX_IMAGE_PIXELS = 64 * MIB
# Remote (TVM RPC) connection and each remote call, in seconds.
DEFAULT_RPC_TIMEOUT = 120.0
# A whole RPC session (upload, runs, benchmark rounds): the server ends it after this.
RPC_SESSION_MAX_S = 3600.0


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB': sizes in messages."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.4g} {unit}"
        value /= 1024
    return f"{value:.4g} TiB"


def check_tensor_bytes(nbytes: int, what: str, cap: int = MAX_TENSOR_BYTES) -> None:
    """Refuse materialising a tensor larger than `cap` (UsageError names it and its size)."""
    if nbytes > cap:
        raise UsageError(f"{what} would take {human_bytes(nbytes)}, over the limit of "
                         f"{human_bytes(cap)}")


class DeadlineExceeded(Exception):
    """Raised inside a `deadline` block when its time is up."""


@contextlib.contextmanager
def deadline(seconds: float | None, what: str) -> Iterator[None]:
    """Raise UsageError if the block runs longer than `seconds` (main thread only).

    Uses SIGALRM: TVM's socket code retries EINTR through Python's signal check,
    so a blocked RPC recv returns into Python and the exception ends it. Off the
    main thread (or on platforms without SIGALRM) the block runs unbounded.
    """
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise DeadlineExceeded(what)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    except DeadlineExceeded:
        raise UsageError(f"{what}: no answer within {seconds:g} s (--rpc-timeout)") from None
    except Exception as exc:  # TVM wraps the handler's exception in its own error type
        if "DeadlineExceeded" in f"{type(exc).__name__} {exc}":
            raise UsageError(f"{what}: no answer within {seconds:g} s (--rpc-timeout)") from None
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
