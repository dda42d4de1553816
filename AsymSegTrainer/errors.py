"""Errors the engine reports to its users, each with a hint and a documented exit code.

The CLI turns them into an ``error`` event (message + hint) and the exit code below;
the README's "Exit codes" table is generated from the same numbers.
"""

from __future__ import annotations


class AsymSegError(Exception):
    """Base class: a problem the user can act on. ``hint`` says what to do."""

    exit_code = 1
    kind = "internal"

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(AsymSegError, ValueError):
    """Bad job spec, command line, image, label or checkpoint (exit code 3)."""

    exit_code = 3
    kind = "input"


class ResourceError(AsymSegError, RuntimeError):
    """The machine cannot do it: no GPU, out of memory, disk full, folder not writable (exit 4)."""

    exit_code = 4
    kind = "resource"


class DivergenceError(AsymSegError, RuntimeError):
    """A loss term became NaN or infinite (exit code 5)."""

    exit_code = 5
    kind = "divergence"


EXIT_FINISHED = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_CANCELLED = 10
