"""Logging and progress: messages to stderr and a log file, never to stdout.

Why: stdout belongs to the result (the table, or the JSON of `--report -`). The CLI
configures the `compress_ir` logger (-q: errors only, default: warnings, -v: info,
-vv: debug; `--log-file`: everything at DEBUG), routes TVM's Python loggers (including
MetaSchedule's, which prints tuning logs to stdout by default) into the same handlers,
and turns progress on. Library users get nothing unless they configure logging.

Progress: `progress(iterable, ...)` shows a tqdm bar when stderr is a terminal and a
one-line message every few seconds otherwise; it is silent unless the
`compress_ir.progress` logger is enabled for INFO (the CLI enables it on stderr unless
-q or COMPRESS_IR_PROGRESS=off, and in the log file).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

LOGGER = "compress_ir"
PROGRESS_LOGGER = "compress_ir.progress"
PROGRESS_INTERVAL_S = 5.0
PROGRESS_ENV = "COMPRESS_IR_PROGRESS"  # "off": no progress on stderr (still in --log-file)
PHASE_MAX_INTERVAL_S = 60.0
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
_OWNED = "_compress_ir_handler"  # marks handlers this module installed


class _Stderr(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is at the time of each record.

    Bound at emit time, not creation, so a redirected or replaced stderr (tests,
    notebooks) never leaves a handler writing to a closed stream.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


def _own(handler: logging.Handler) -> logging.Handler:
    setattr(handler, _OWNED, True)
    return handler


def _reset(logger: logging.Logger) -> None:
    for handler in [h for h in logger.handlers if getattr(h, _OWNED, False)]:
        logger.removeHandler(handler)
        handler.close()


def setup_logging(verbosity: int = 0, log_file: str | None = None) -> None:
    """Configure the CLI's logging: stderr at `verbosity`, `log_file` at DEBUG.

    Idempotent (handlers it installed before are replaced), so tests can call main()
    repeatedly.
    """
    level = _LEVELS.get(verbosity, logging.DEBUG)
    handlers: list[logging.Handler] = []
    console = _own(_Stderr())
    console.setLevel(level)
    console.setFormatter(logging.Formatter("compress-ir: %(levelname)s: %(message)s"))
    handlers.append(console)
    if log_file:
        file_handler = _own(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        handlers.append(file_handler)
    floor = logging.DEBUG if log_file else level
    for name in (LOGGER, "tvm"):
        logger = logging.getLogger(name)
        _reset(logger)
        logger.setLevel(floor)
        logger.propagate = False
        for handler in handlers:
            logger.addHandler(handler)
    progress_logger = logging.getLogger(PROGRESS_LOGGER)
    _reset(progress_logger)
    # progress lines have their own stderr handler (shown unless -q); they also reach
    # the log file through the parent logger
    progress_logger.setLevel(logging.DEBUG if verbosity >= 0 or log_file else logging.ERROR)
    if verbosity >= 0 and os.environ.get(PROGRESS_ENV, "").lower() not in ("0", "off", "no"):
        line = _own(_Stderr())
        line.setLevel(logging.INFO)
        line.setFormatter(logging.Formatter("compress-ir: %(message)s"))
        progress_logger.addHandler(line)
    _quiet_onnxruntime(verbosity)
    route_tvm_logs()


def _quiet_onnxruntime(verbosity: int) -> None:
    """onnxruntime's C++ logger writes to stderr; keep it to errors unless -vv."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a core dependency
        return
    ort.set_default_logger_severity(1 if verbosity >= 2 else 3)


class _LogWriter(io.TextIOBase):
    """A text stream that turns what is written to it into log records, line by line."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        self.logger, self.level, self.buffer_ = logger, level, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer_ += text
        *lines, self.buffer_ = self.buffer_.split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, "%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self.buffer_.strip():
            self.logger.log(self.level, "%s", self.buffer_.rstrip())
        self.buffer_ = ""


@contextlib.contextmanager
def stdout_to_log(name: str) -> Iterator[None]:
    """Within the block, what Python code prints to stdout becomes log records of `name`.

    For third-party code that prints (MetaSchedule binds its console handler to
    whatever `sys.stdout` is when it configures logging, and XGBoost prints).
    """
    writer = _LogWriter(logging.getLogger(name))
    try:
        with contextlib.redirect_stdout(writer):
            yield
    finally:
        writer.flush()
        route_tvm_logs()


def route_tvm_logs() -> None:
    """Send TVM loggers that write to stdout (MetaSchedule's console handler) to ours.

    MetaSchedule's `create_loggers` installs a StreamHandler on sys.stdout each time
    tasks are extracted, so this runs again after that (see backend/schedule/tuning.py).
    """
    for name in list(logging.root.manager.loggerDict):
        if not name.startswith("tvm"):
            continue
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            stream = getattr(handler, "stream", None)
            if not isinstance(handler, logging.FileHandler) and (
                    stream in (sys.stdout, sys.__stdout__) or isinstance(stream, _LogWriter)):
                logger.removeHandler(handler)
                logger.propagate = True


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             unit: str = "it") -> Iterator[T]:
    """Iterate with a progress display (see module doc); a plain loop when disabled."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    if not logger.isEnabledFor(logging.INFO):
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    on_screen = bool(logger.handlers)  # setup_logging adds the stderr handler unless -q
    if on_screen and sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                  leave=False, dynamic_ncols=True) as bar:
            yield from bar
        logger.debug("%s: done (%s %s)", desc, total if total is not None else "?", unit)
        return
    start = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL_S:
            last = now
            of = f"/{total}" if total else ""
            logger.info("%s: %d%s %s (%.0f s)", desc, done, of, unit, now - start)
    logger.debug("%s: done, %d %s in %.1f s", desc, done, unit, time.monotonic() - start)


@contextlib.contextmanager
def phase(desc: str) -> Iterator[None]:
    """Progress for one long step without sub-steps (a TVM build, tuning): elapsed time.

    A ticking tqdm bar on a terminal, a line every PROGRESS_INTERVAL_S otherwise, from a
    background thread; nothing when progress is off.
    """
    import threading

    logger = logging.getLogger(PROGRESS_LOGGER)
    if not logger.isEnabledFor(logging.INFO):
        yield
        return
    start = time.monotonic()
    stop = threading.Event()
    bar = None
    if logger.handlers and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc=desc, file=sys.stderr, leave=False, bar_format="{desc}: {elapsed}")

    def tick() -> None:
        # a terminal redraws every second; a log gets lines 5, 10, 20, 40, 60, 60 ... s apart
        interval = 1.0 if bar is not None else max(PROGRESS_INTERVAL_S, 0.05)
        while not stop.wait(interval):
            if bar is not None:
                bar.refresh()
                continue
            logger.info("%s: running (%.0f s)", desc, time.monotonic() - start)
            interval = min(interval * 2, max(PHASE_MAX_INTERVAL_S, interval))

    thread = threading.Thread(target=tick, name="compress-ir-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if bar is not None:
            bar.close()
        logger.debug("%s: done in %.1f s", desc, time.monotonic() - start)
