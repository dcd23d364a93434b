"""Output safety: no output may destroy an input, another output or an artifact's files.

Every output path is checked before any work is done (`OutputPlan.add`):
- `-` means standard output (at most one output may use it);
- a path that resolves (any spelling, symbolic links, hard links) to an input, to
  the input's external data, to another output, or into an artifact folder being
  written, is refused;
- a character device, FIFO or socket (`/dev/null`, `/dev/stdout`, a named pipe) is
  written through, never replaced; a symbolic link to a regular file is refused
  rather than silently replaced; a directory is refused.
Outputs are then staged next to their destination (short temp names, so a
250-character legal name works) and committed together at the end (`Commit`):
a failure before or during the commit leaves every destination as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from compress_ir.core.errors import OutputError
from compress_ir.core.files import write_temp

STDOUT = "-"
TEMP_PREFIX = ".cir-"  # short: the temp name must fit wherever the final name fits


@dataclass(frozen=True)
class Destination:
    """One checked output: how it will be written."""

    label: str  # the flag that named it, for messages ("-o", "--report", ...)
    path: str
    kind: str  # "file" | "dir"
    mode: str  # "stdout" | "special" (written through) | "atomic" (temp + rename)

    @property
    def final(self) -> Path:
        return Path(self.path)


_FD_ALIAS = re.compile(r"^/(?:dev/fd|proc/self/fd)/(\d+)$")


def means_stdout(path: str | os.PathLike) -> bool:
    """`-`, `/dev/stdout`, `/dev/fd/1`: the process's standard output, whatever it is.

    Written to the open stream, never reopened or renamed over: `/dev/stdout` may
    point at the user's redirect file, a pipe or a terminal.
    """
    text = os.fspath(path)
    if text in (STDOUT, "/dev/stdout"):
        return True
    match = _FD_ALIAS.match(text)
    return bool(match) and match.group(1) == "1"


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """Canonical spelling and, if it exists, (device, inode) to catch hard links."""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
        return real, (st.st_dev, st.st_ino)
    except OSError:
        return real, None


def _same(a: tuple[str, tuple[int, int] | None], b: tuple[str, tuple[int, int] | None]
          ) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_special(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@dataclass
class OutputPlan:
    """Inputs and outputs of one run; `add` refuses an unsafe output path."""

    inputs: list[tuple[str, tuple[str, tuple[int, int] | None]]] = field(default_factory=list)
    outputs: list[tuple[Destination, tuple[str, tuple[int, int] | None]]] = field(
        default_factory=list)

    def add_input(self, label: str, path: str | os.PathLike) -> None:
        """Something read by this run (model, external data, calibration, artifact file)."""
        ident = _identity(Path(path))
        for dest, other in self.outputs:
            self._collide(dest, other, label, ident)
        self.inputs.append((label, ident))

    def add(self, label: str, path: str | os.PathLike, kind: str = "file") -> Destination:
        """Check an output path now, before any work; return how it will be written."""
        text = os.fspath(path)
        if not isinstance(text, str) or not text:
            raise OutputError(f"{label}: empty path")
        if "\x00" in text:
            raise OutputError(f"{label} {text!r}: a path cannot contain a NUL byte")
        if means_stdout(text):
            if kind != "file":
                raise OutputError(f"{label} -: standard output cannot hold a folder")
            if any(d.mode == "stdout" for d, _ in self.outputs):
                raise OutputError(f"{label} -: another output already goes to standard output")
            dest = Destination(label, text, kind, "stdout")
            self.outputs.append((dest, ("<stdout>", None)))
            return dest
        p = Path(text)
        mode = "atomic"
        try:
            st = os.stat(p)
        except FileNotFoundError:
            st = None
            if p.is_symlink():
                raise OutputError(f"{label} {text}: a dangling symbolic link; "
                                  "not replacing it") from None
        except OSError as exc:
            raise OutputError(f"cannot write {label} {text}: {exc.strerror or exc}") from None
        if st is not None:
            if _is_special(st.st_mode):
                if kind == "dir":
                    raise OutputError(f"{label} {text}: not a folder")
                mode = "special"
            elif stat.S_ISDIR(st.st_mode):
                if kind == "file":
                    raise OutputError(f"{label} {text}: is a directory")
            elif not stat.S_ISREG(st.st_mode):
                raise OutputError(f"{label} {text}: not a regular file; not writing to it")
            elif kind == "dir":
                raise OutputError(f"{label} {text}: exists and is not a folder")
            if mode == "atomic" and p.is_symlink():
                raise OutputError(f"{label} {text}: is a symbolic link; not replacing it "
                                  f"(give the path it points to: {os.path.realpath(p)})")
        else:
            parent = p.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if not parent.is_dir():
                raise OutputError(f"cannot write {label} {text}: {parent} is not a folder")
        ident = _identity(p)
        dest = Destination(label, text, kind, mode)
        for in_label, other in self.inputs:
            self._collide(dest, ident, in_label, other)
        for prev, other in self.outputs:
            if prev.mode == "stdout" or (mode == "special" and prev.mode == "special"):
                continue
            if _same(ident, other):
                raise OutputError(f"{label} {text} is the same file as {prev.label} "
                                  f"{prev.path}; give different paths")
            for outer, inner, inner_label, folder in ((prev, ident[0], label, other[0]),
                                                      (dest, other[0], prev.label, ident[0])):
                if inner != folder and _inside(inner, folder):
                    if outer.kind == "dir":
                        raise OutputError(f"{inner_label} lies inside the {outer.label} folder "
                                          f"{outer.path}, which is replaced as a whole")
                    raise OutputError(f"{inner_label} lies under {outer.label} {outer.path}, "
                                      "which is written as a file")
        self.outputs.append((dest, ident))
        return dest

    @staticmethod
    def _collide(dest: Destination, ident: tuple[str, tuple[int, int] | None],
                 in_label: str, other: tuple[str, tuple[int, int] | None]) -> None:
        if dest.mode == "stdout":
            return
        if _same(ident, other):
            raise OutputError(f"{dest.label} {dest.path} is the {in_label} ({other[0]}); "
                              "refusing to overwrite an input")
        if dest.kind == "dir" and _inside(other[0], ident[0]):
            raise OutputError(f"{dest.label} {dest.path} holds the {in_label} ({other[0]}); "
                              "refusing to replace it")


class Commit:
    """Stage outputs next to their destinations; make them all visible at once.

    Use as a context manager: leaving it with an exception (including Ctrl-C or
    SIGTERM, which the CLI raises as KeyboardInterrupt) removes everything staged.
    """

    def __init__(self) -> None:
        self._files: list[tuple[Destination, Path]] = []
        self._direct: list[tuple[Destination, bytes]] = []
        self._dirs: list[tuple[Destination, Path]] = []
        self._reserved: list[tuple[Destination, Path]] = []
        self._made: list[Path] = []  # folders created for outputs (removed on rollback)
        self._done = False

    def _parent(self, dest: Destination) -> Path:
        """The destination's folder, created if needed (and remembered for rollback)."""
        parent = dest.final.parent
        missing = []
        probe = parent
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write {dest.label} {dest.path}: "
                              f"{exc.strerror or exc}") from None
        self._made.extend(missing)  # deepest first
        return parent

    def reserve(self, dest: Destination) -> Path:
        """A temp path (same suffix) a writer such as matplotlib fills; committed if filled."""
        if dest.mode != "atomic":
            return dest.final
        parent = self._parent(dest)
        try:
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=dest.final.suffix, dir=parent)
        except OSError as exc:
            raise OutputError(f"cannot write {dest.label} {dest.path}: "
                              f"{exc.strerror or exc}") from None
        os.close(fd)
        self._reserved.append((dest, Path(tmp)))
        return Path(tmp)

    def __enter__(self) -> Commit:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._done:
            self.rollback()

    def stage_file(self, dest: Destination, data: bytes) -> None:
        """Write `data` to a temp file beside the destination (or keep it for stdout/device)."""
        if dest.mode != "atomic":
            self._direct.append((dest, data))
            return
        parent = self._parent(dest)
        try:
            tmp = write_temp(parent, data)
        except OSError as exc:
            raise OutputError(f"cannot write {dest.label} {dest.path}: "
                              f"{exc.strerror or exc}") from None
        self._files.append((dest, tmp))

    def stage_dir(self, dest: Destination) -> Path:
        """A not-yet-existing path beside the destination for a builder to create."""
        parent = self._parent(dest)
        try:
            box = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
        except OSError as exc:
            raise OutputError(f"cannot write {dest.label} {dest.path}: "
                              f"{exc.strerror or exc}") from None
        self._dirs.append((dest, box))
        return box / "a"

    def commit(self) -> None:
        """Rename everything into place; on failure put back what was there."""
        from compress_ir.core.boundary import check_interrupted

        check_interrupted()  # an interrupt swallowed by a library still writes nothing
        undo: list[tuple[Path, Path | None]] = []  # (final, backup or None)
        for dest, tmp in self._reserved:  # filled ones are committed like staged files
            if tmp.exists() and tmp.stat().st_size > 0:
                self._files.append((dest, tmp))
            else:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        self._reserved.clear()
        try:
            for dest, box in self._dirs:
                final = dest.final
                backup = None
                if final.exists():
                    backup = box / "old"
                    os.replace(final, backup)
                undo.append((final, backup))
                os.replace(box / "a", final)
            for dest, tmp in self._files:
                final = dest.final
                backup = None
                if final.exists():
                    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=final.parent)
                    os.close(fd)
                    backup = Path(name)
                    try:
                        os.replace(final, backup)
                    except BaseException:
                        backup.unlink(missing_ok=True)  # the empty placeholder
                        raise
                undo.append((final, backup))
                os.replace(tmp, final)
        except BaseException as exc:
            for final, backup in reversed(undo):
                with contextlib.suppress(OSError):
                    if final.is_dir() and not final.is_symlink():
                        shutil.rmtree(final)
                    elif final.exists():
                        final.unlink()
                    if backup is not None:
                        os.replace(backup, final)
            self.rollback()
            if isinstance(exc, OSError):
                raise OutputError(f"cannot write {exc.filename or ''}: "
                                  f"{exc.strerror or exc}") from None
            raise
        for _final, backup in undo:
            if backup is not None and backup.is_file():
                with contextlib.suppress(OSError):
                    backup.unlink()
        self._done = True
        self._made.clear()  # the outputs live there now
        self.rollback()  # removes the (now empty or old-holding) staging folders
        for dest, data in self._direct:
            _write_direct(dest, data)

    def rollback(self) -> None:
        """Remove every staged file and folder (idempotent)."""
        for _dest, tmp in self._files:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for _dest, box in self._dirs:
            shutil.rmtree(box, ignore_errors=True)
        for _dest, tmp in self._reserved:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for folder in sorted(self._made, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._files.clear()
        self._dirs.clear()
        self._reserved.clear()
        self._made.clear()


def _write_direct(dest: Destination, data: bytes) -> None:
    """Standard output or a device/FIFO: written through, never renamed over."""
    try:
        if dest.mode == "stdout":
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        with open(dest.path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write {dest.label} {dest.path}: "
                          f"{exc.strerror or exc}") from None


def write_output(label: str, path: str | os.PathLike, data: bytes,
                 inputs: list[tuple[str, str | os.PathLike]] = ()) -> None:
    """Check and write a single output under the same rules (e.g. `run --output`)."""
    plan = OutputPlan()
    for in_label, in_path in inputs:
        plan.add_input(in_label, in_path)
    dest = plan.add(label, path)
    with Commit() as commit:
        commit.stage_file(dest, data)
        commit.commit()
