"""Error types with the exit code each one maps to.

Every user-facing failure is one of these, so the CLI can turn it into a one-line
message and a stable exit code instead of a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NUMERIC = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_GATE = 4  # a CI gate failed (compress_ir/gates.py)
EXIT_INTERNAL = 70  # a bug in compress-ir (EX_SOFTWARE); the message says where to report it
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; temp files and staging folders are removed

# Every exit code the CLI can return; the fuzz suite checks membership.
EXIT_CODES = (0, 1, 2, 3, EXIT_GATE, EXIT_INTERNAL, EXIT_INTERRUPTED)


class CompressIRError(Exception):
    """Base class: a failure the user can act on, with the exit code to report."""

    exit_code: int = EXIT_MODEL


class UsageError(CompressIRError):
    """Bad command line, pipeline string or pass option."""

    exit_code = EXIT_USAGE


class OutputError(UsageError):
    """An output path is unsafe (it is an input, another output, a directory...) or unwritable."""


class ModelLoadError(CompressIRError):
    """The model file cannot be read or is inconsistent (names the file and node)."""

    exit_code = EXIT_MODEL


class UnsupportedModelError(CompressIRError):
    """The model is valid ONNX but uses something compress-ir cannot handle."""

    exit_code = EXIT_MODEL


class VerificationError(CompressIRError):
    """A transform produced a model that fails the checker or shape inference."""

    exit_code = EXIT_MODEL


class PassError(CompressIRError):
    """A pass failed; the message names the pass and the passes that ran before it."""

    def __init__(self, message: str, exit_code: int = EXIT_MODEL) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ModelRunError(CompressIRError):
    """onnxruntime cannot run the model on the inputs it was given (shapes, values)."""

    exit_code = EXIT_MODEL


class NumericMismatchError(CompressIRError):
    """A transformed model does not compute what its reference computes."""

    exit_code = EXIT_NUMERIC


class InternalError(CompressIRError):
    """An unexpected failure inside compress-ir (a bug): exit 70, please report it."""

    exit_code = EXIT_INTERNAL

