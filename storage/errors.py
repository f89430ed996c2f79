"""The one exception hierarchy of cubepipe.

Every error a user can cause (a missing file, a store another job left half-written, a
GPU asked for where there is none) is a :class:`CubepipeError`. The command line turns
these into a single line on stderr and exit code 2; anything else is a bug and exits 1.

Messages follow one shape: what was expected, what came (naming the file or value), and
what to do about it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CubepipeError",
    "CubepipeWarning",
    "DeviceError",
    "FileSystemError",
    "FormatError",
    "IncompleteStoreError",
    "InputError",
    "InvalidStoreError",
    "MissingDependencyError",
    "NonFiniteError",
    "StepError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
]


class CubepipeError(Exception):
    """Base class of every error cubepipe raises on purpose."""

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints str(exc) as the whole error report.
        super().__init__(" ".join(str(message).split()))


class CubepipeWarning(UserWarning):
    """Something was done that the user should know about (a fallback, a clamp)."""


class InputError(CubepipeError, ValueError):
    """An argument or input file is not what the operation needs."""


class FormatError(InputError):
    """A file is not in the format it claims to be, or is damaged."""


class StoreNotFoundError(CubepipeError, FileNotFoundError):
    """No store (or input file) exists at the given path."""

    def __init__(self, path: object, what: str = "store") -> None:
        super().__init__(
            f"{what} not found: {path} (check the path; create stores with `cubepipe ingest`)"
        )
        self.path = path


class InvalidStoreError(CubepipeError, ValueError):
    """The path exists but is not a readable zarr v3 cube store."""


class IncompleteStoreError(CubepipeError):
    """The store's writer has not finished (it was interrupted or is still running)."""

    def __init__(self, path: object) -> None:
        super().__init__(
            f"store {path} is incomplete: the job writing it did not finish. Rerun that command "
            "with --resume to finish it (or --overwrite to start over), or pass "
            "allow_incomplete=True (CLI: --allow-incomplete) to read it anyway"
        )
        self.path = path


class StoreExistsError(CubepipeError, FileExistsError):
    """The output path already holds data and the user did not say what to do with it."""


class StoreLockedError(CubepipeError):
    """Another live process is writing the same output (see :mod:`cubepipe.storage.guard`)."""


class NonFiniteError(InputError):
    """An operation turned values into +-inf (an overflow of the output dtype), or its
    fitted parameters are not finite; nothing is marked complete."""


class StepError(CubepipeError):
    """A step of a pipeline (``cubepipe run``) failed; the message names the step and op.

    ``step`` is the pipeline's step (anything with ``number`` and ``op``, e.g.
    :class:`cubepipe.pipeline.runner.Step`); the error that stopped it is ``__cause__``.
    """

    def __init__(self, step: Any, cause: BaseException, hint: str = "") -> None:
        super().__init__(f"step {step.number} ({step.op}) failed: {cause}{hint}")
        self.step = step


class DeviceError(CubepipeError, RuntimeError):
    """The requested compute device cannot be used."""


class MissingDependencyError(CubepipeError, ImportError):
    """A feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, module: str, extra: str | None) -> None:
        how = f"pip install 'cubepipe[{extra}]'" if extra else f"pip install {module}"
        super().__init__(
            f"{feature} needs the Python package '{module}', which is not installed; "
            f"install it with: {how}"
        )
        self.module = module
        self.extra = extra


class FileSystemError(CubepipeError, OSError):
    """The operating system refused a read or write the user can do something about: no
    space left, a quota, a read-only or too-small filesystem, no permission, too many open
    files (see :mod:`cubepipe.storage.oserrors`, which makes these from ``OSError``).

    ``errno`` is the original error number, ``path`` what cubepipe was working on; the
    original ``OSError`` is ``__cause__``. ``str()`` is the one-line message.
    """

    def __init__(self, message: str, *, errno: int | None = None, path: object = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path

    def __str__(self) -> str:
        # OSError.__str__ would print "[Errno N] ..." once errno is set.
        return str(self.args[0]) if self.args else ""
