"""Errors the engine reports to its users, each with a hint and a documented exit code.

The CLI turns them into an ``error`` event (message + hint) and the exit code of their
``kind``; the codes, their meanings and the generated tables in the README and
docs/protocol.md all come from ``protocol.json`` (``EXIT_CODES``).
"""

from __future__ import annotations

import errno

from .protocol import EXIT_CODES


class AsymSegError(Exception):
    """Base class: a problem the user can act on. ``hint`` says what to do."""

    kind = "internal"

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]


class InputError(AsymSegError, ValueError):
    """Bad job spec, command line, image, label or checkpoint."""

    kind = "input"


class ResourceError(AsymSegError, RuntimeError):
    """The machine cannot do it: no GPU, out of memory, disk full, folder not writable."""

    kind = "resource"


class DivergenceError(AsymSegError, RuntimeError):
    """A loss term became NaN or infinite."""

    kind = "divergence"


class CancelledError(AsymSegError):
    """SIGTERM / SIGINT outside the training loop (which finishes its iteration instead)."""

    kind = "cancelled"


def as_user_error(exc: BaseException):
    """The user-facing error of a machine failure (memory, disk), or None when ``exc`` is not one."""
    if isinstance(exc, AsymSegError):
        return exc
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        where = "GPU" if type(exc).__name__ == "OutOfMemoryError" else "computer (RAM)"
        return ResourceError(f"The {where} ran out of memory: {exc}".split("\n")[0].rstrip(": "),
                             "Use a smaller patch or batch size, fewer or smaller cases, or close other programs.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return ResourceError(f"The disk is full: {exc}", "Free disk space or choose an output folder on another disk.")
    return None
