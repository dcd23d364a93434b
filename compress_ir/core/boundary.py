"""The CLI's one error boundary: every failure is one line on stderr and a documented code.

0 ok, 1 numeric check failed, 2 usage (including unsafe or unwritable paths),
3 unsupported/invalid model, 70 internal error (a bug: the line says how to
report it), 130 interrupted (Ctrl-C or SIGTERM; temp files are removed because
the interrupt is raised as KeyboardInterrupt, so every `finally` runs).
`--debug` prints the traceback before the same line and returns the same code.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator

from compress_ir.core.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_USAGE,
    CompressIRError,
    InternalError,
    UnsupportedModelError,
    UsageError,
)

REPORT_BUGS = ("this is a bug in compress-ir; please report it with the command and the "
               "output of --debug")
MAX_MESSAGE = 800  # characters: a runaway message (a whole tensor) is cut


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) message into one bounded line."""
    flat = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= MAX_MESSAGE else flat[: MAX_MESSAGE - 1] + "…"


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for any exception that reaches the boundary."""
    if isinstance(exc, CompressIRError):
        return exc.exit_code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, MemoryError):
        return EXIT_MODEL, "out of memory (the model or the data is too large for this machine)"
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in _EXTRAS:
        extra = _EXTRAS[(exc.name or "").split(".")[0]]
        return EXIT_USAGE, (f"this needs the {exc.name.split('.')[0]} package: "
                            f"pip install 'compress-ir[{extra}]'")
    if is_onnxruntime_error(exc):
        return EXIT_MODEL, f"onnxruntime cannot run the model: {exc}"
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        return EXIT_USAGE, f"{where}: {reason}" if where else reason
    return EXIT_INTERNAL, f"{type(exc).__name__}: {exc}"


def library_error(exc: BaseException) -> CompressIRError:
    """The library error class an API caller gets for `exc` (the cause stays chained)."""
    if isinstance(exc, CompressIRError):
        return exc
    code, message = classify(exc)
    cls = {EXIT_USAGE: UsageError, EXIT_MODEL: UnsupportedModelError}.get(code, InternalError)
    return cls(message)


def is_onnxruntime_error(exc: BaseException) -> bool:
    """onnxruntime refusing a model (no kernel for an op/opset, invalid graph): a model
    problem, not a compress-ir bug."""
    return type(exc).__module__.startswith("onnxruntime")


# Optional imports and the extra that provides them.
_EXTRAS = {"tvm": "tvm", "tvm_ffi": "tvm", "PIL": "images", "matplotlib": "plots",
           "xgboost": "tune", "psutil": "tune", "cloudpickle": "tvm"}


_INTERRUPTED = threading.Event()


def _raise_interrupt(signum: int, frame: object) -> None:
    _INTERRUPTED.set()  # remembered: library code may swallow the exception below
    raise KeyboardInterrupt


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C/SIGTERM arrived, even if something swallowed it.

    Called before outputs are committed, so an interrupted run never writes them
    (TVM's schedule search, for one, catches errors raised inside its callbacks).
    """
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def _quiet_and_interruptible() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C; numpy/onnxruntime chatter stays off stderr."""
    main = threading.current_thread() is threading.main_thread()
    _INTERRUPTED.clear()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt) if main else None
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)  # fatal only: our one line says what failed
    except ImportError:  # pragma: no cover - onnxruntime is a core dependency
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import numpy as np

            with np.errstate(all="ignore"):
                yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


def run_guarded(fn: Callable[[], int], debug: bool = False, prog: str = "compress-ir") -> int:
    """Run `fn`; any exception becomes one stderr line and its exit code."""
    try:
        with _quiet_and_interruptible():
            code = fn()
            check_interrupted()  # a swallowed interrupt still ends as 130
            return code
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - this is the boundary
        code, message = classify(exc)
        if _INTERRUPTED.is_set():  # a library turned our KeyboardInterrupt into its own error
            code, message = EXIT_INTERRUPTED, "interrupted"
        if code == EXIT_INTERNAL:
            message = f"internal error: {message} ({REPORT_BUGS})"
        if debug:
            traceback.print_exc(file=sys.stderr)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
        return code

