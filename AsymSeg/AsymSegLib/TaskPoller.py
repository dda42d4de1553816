"""The one engine task that runs (training or inference), polled on the GUI thread (Qt).

The engine runs in a child process; a ``qt.QTimer`` drains its events (``EngineTask.poll``,
which emits the task's own signals), so Slicer stays usable while it trains. ``finished``
tells the panel when the task has ended.
"""

from __future__ import annotations

import logging
from typing import Optional

from .QtUtils import timer
from .Runs import EngineTask
from .Signal import Signal

POLL_INTERVAL_MS = 200


class TaskPoller:
    def __init__(self, cancelTimeout: float):
        self.cancelTimeout = cancelTimeout
        self.task: Optional[EngineTask] = None
        self.finished = Signal("EngineTask")
        self.timer = timer(POLL_INTERVAL_MS, self.poll)

    @property
    def running(self) -> bool:
        return self.task is not None and self.task.running

    def watch(self, task: EngineTask) -> None:
        """Poll ``task`` (started) until it ends."""
        self.task = task
        task.finished.connect(self._ended)
        self.timer.start()

    def poll(self) -> None:
        if self.task is None:
            self.timer.stop()
            return
        try:
            self.task.poll()  # may end the task: _ended then clears self.task
        except Exception:  # noqa: BLE001 - a display bug must not break the timer
            logging.exception("AsymSeg: polling the engine failed")

    def _ended(self, task: EngineTask) -> None:
        self.timer.stop()
        self.task = None
        self.finished.emit(task)

    def cancel(self) -> None:
        """Ask the running task to stop (it keeps its last checkpoint); killed after ``cancelTimeout``."""
        if self.running:
            self.task.cancel(self.cancelTimeout)

    def shutdown(self) -> None:
        """The module is closing: stop the task quickly, killing it if it does not stop."""
        if self.running:
            self.task.cancel(5.0)
            try:
                self.task.wait(timeout=10.0)
            except TimeoutError:
                self.task.process.killTree()
        self.timer.stop()
