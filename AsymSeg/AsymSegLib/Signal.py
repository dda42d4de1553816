"""A tiny pure-Python signal: logic objects notify the widget without Qt.

Logic classes expose ``Signal`` attributes; the widget (or a test) connects callables. No
threads are involved: ``emit`` calls the connected callables in the caller's thread, which
for AsymSeg is always the GUI thread (events are drained from a queue by a timer there).
"""

from __future__ import annotations

import logging
from typing import Any, Callable


class Signal:
    """``connect(callable)``, ``disconnect(callable)``, ``emit(*args)``.

    ``typeInfo`` is documentation only (e.g. ``Signal("TrainingState")``). A callback that
    raises is logged and does not stop the others: one broken view must not stall a run.
    """

    def __init__(self, *typeInfo: Any):
        self.typeInfo = typeInfo
        self._callbacks: list[Callable] = []

    def connect(self, callback: Callable) -> None:
        if callback not in self._callbacks:
            self._callbacks.append(callback)

    def disconnect(self, callback: Callable) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def disconnectAll(self) -> None:
        self._callbacks.clear()

    def emit(self, *args: Any) -> None:
        for callback in list(self._callbacks):
            try:
                callback(*args)
            except Exception:  # noqa: BLE001 - a listener's bug must not break the run
                logging.exception("AsymSeg: a signal listener failed")

    def __len__(self) -> int:
        return len(self._callbacks)
