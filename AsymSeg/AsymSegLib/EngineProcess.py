"""Starting, reading and stopping the engine child process (docs/protocol.md).

Qt-free and non-blocking. Two reader threads put stdout and stderr lines on a queue;
``poll()`` drains it (in Slicer from a ``qt.QTimer`` on the GUI thread, in tests from a plain
loop) and returns typed events. Cancel is graceful first (a ``STOP`` file in the output
folder, plus SIGTERM on POSIX), then, after a timeout, the whole process tree is killed
(psutil when present; the process group / ``taskkill /T`` otherwise), because killing only
the direct child would leave data-loader workers behind.

The process is started with ``subprocess.Popen`` rather than ``slicer.util.launchConsoleProcess``:
the latter's signature and return value changed between Slicer 5.8 and 5.12 and it merges
stderr into stdout, which would interleave log lines with the JSON event stream.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from .Events import Event, parseLine
from .Protocol import ENGINE_PACKAGE, engineFolder  # noqa: F401 - engineFolder is part of this module's API


def pythonExecutable() -> str:
    """Slicer's Python launcher inside Slicer (``PythonSlicer``), else this interpreter."""
    try:
        import slicer

        inSlicer = hasattr(slicer, "app")
    except ImportError:
        inSlicer = False
    if inSlicer:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def engineCommand(python: str, *arguments: str) -> list[str]:
    return [python, "-m", ENGINE_PACKAGE, *[os.fspath(a) for a in arguments]]


def engineEnvironment(folder: Optional[Path], extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    if folder is not None:
        parts = [os.fspath(folder)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


class EngineProcess:
    """One engine child process; ``start``, then ``poll`` until ``finished``."""

    def __init__(self, args: list, env: Optional[dict] = None, cwd=None, stopFile=None):
        self.args = [os.fspath(a) for a in args]
        self.env = env
        self.cwd = os.fspath(cwd) if cwd else None
        self.stopFile = Path(stopFile) if stopFile else None
        self.proc: Optional[subprocess.Popen] = None
        self.returnCode: Optional[int] = None
        self.cancelRequested = False
        self.killed = False
        self._killDeadline: Optional[float] = None
        self._queue: "queue.Queue" = queue.Queue()
        self._threads: list = []
        self._openStreams = 0
        self._exitSeen = False
        self.startTime: Optional[float] = None
        self._processes: dict = {}  # pid -> psutil.Process of the child and every process seen under it

    # ------------------------------------------------------------------ start

    def start(self) -> "EngineProcess":
        kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                      env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1)
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: the tree can be killed at once
        if self.stopFile is not None and self.stopFile.exists():
            self.stopFile.unlink()
        self.proc = subprocess.Popen(self.args, **kwargs)
        self.startTime = time.time()
        self._openStreams = 2
        for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr")):
            thread = threading.Thread(target=self._read, args=(stream, name), daemon=True,
                                      name=f"AsymSeg-{name}-{self.proc.pid}")
            thread.start()
            self._threads.append(thread)
        return self

    def _read(self, stream, name: str) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, None))

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    @property
    def started(self) -> bool:
        return self.proc is not None

    @property
    def finished(self) -> bool:
        """True once the process exited and both streams were read to the end."""
        return self._exitSeen

    @property
    def running(self) -> bool:
        return self.started and not self.finished

    def elapsed(self) -> float:
        return time.time() - self.startTime if self.startTime else 0.0

    # ------------------------------------------------------------------ reading

    def poll(self, maxLines: int = 10000) -> list[Event]:
        """Events read since the last call; never blocks. Also enforces the cancel timeout."""
        events = []
        for _ in range(maxLines):
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._openStreams -= 1
                continue
            events.append(parseLine(line, name))
        if self.proc is not None and not self._exitSeen:
            self._rememberDescendants()
            if self._openStreams <= 0 and self._queue.empty():
                code = self.proc.poll()
                if code is None:
                    try:
                        code = self.proc.wait(timeout=0.1)
                    except subprocess.TimeoutExpired:
                        code = None
                if code is not None:
                    self.returnCode = code
                    self._exitSeen = True
                    self._cleanupGroup()
            if not self._exitSeen and self._killDeadline is not None and time.time() >= self._killDeadline:
                self.killTree()
        return events

    def wait(self, timeout: float = 600.0, interval: float = 0.05, onEvents=None) -> list[Event]:
        """Poll until finished (tests and scripts); returns every event read. TimeoutError past ``timeout``."""
        collected = []
        deadline = time.time() + timeout
        while True:
            events = self.poll()
            collected += events
            if onEvents is not None and events:
                onEvents(events)
            if self.finished:
                return collected
            if time.time() > deadline:
                raise TimeoutError(f"The engine did not finish within {timeout:.0f} s.")
            time.sleep(interval)

    # ------------------------------------------------------------------ stopping

    def cancel(self, timeout: float = 30.0) -> None:
        """Ask the engine to stop after the current iteration; kill the tree after ``timeout`` s."""
        if not self.started or self.finished:
            return
        self.cancelRequested = True
        if self.stopFile is not None:
            try:
                self.stopFile.parent.mkdir(parents=True, exist_ok=True)
                self.stopFile.write_text("stop requested by the AsymSeg module\n", encoding="utf-8")
            except OSError:
                pass
        if os.name != "nt":  # on Windows terminate() is a hard kill: the STOP file is the graceful path
            try:
                self.proc.send_signal(signal.SIGTERM)
            except (ProcessLookupError, OSError):
                pass
        self._killDeadline = time.time() + max(float(timeout), 0.0)

    def killTree(self) -> None:
        """Kill the child and every process under it, now."""
        if self.proc is None:
            return
        self.killed = True
        self._rememberDescendants()
        psutil = _psutil()
        try:
            self.proc.kill()  # the direct child first, through Popen, which also reaps it
        except OSError:
            pass
        if psutil is not None:
            # Never psutil-wait the direct child: that would reap it behind Popen's back (exit code lost).
            victims = [p for pid, p in self._processes.items() if pid != self.proc.pid]
            for process in victims:
                try:
                    process.kill()  # psutil checks the creation time: a reused pid is never hit
                except psutil.Error:
                    pass
            psutil.wait_procs(victims, timeout=5)
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.proc.pid)], capture_output=True, check=False)
        self._killGroup()
        self._killDeadline = None

    def _killGroup(self) -> None:
        """SIGKILL the child's process group (POSIX: the child leads its own session)."""
        if os.name != "nt" and self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass

    @property
    def descendants(self) -> set:
        return {pid for pid in self._processes if self.proc is None or pid != self.proc.pid}

    def _rememberDescendants(self) -> None:
        psutil = _psutil()
        if psutil is None or self.proc is None:
            return
        try:
            root = self._processes.get(self.proc.pid) or psutil.Process(self.proc.pid)
            self._processes.setdefault(root.pid, root)
            for child in root.children(recursive=True):
                self._processes.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def _cleanupGroup(self) -> None:
        """After the child exited: stray processes of its group (orphaned workers) go too."""
        self._killGroup()
        psutil = _psutil()
        if psutil is not None:
            for process in list(self._processes.values()):
                try:
                    if process.pid != self.proc.pid:
                        process.kill()
                except psutil.Error:
                    pass

    def aliveProcesses(self) -> list[int]:
        """Pids of the child and its remembered descendants that still run (zombies excluded)."""
        psutil = _psutil()
        if psutil is None or self.proc is None:
            return []
        alive = []
        for process in self._processes.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process.pid)
            except psutil.Error:
                pass
        return alive


def _psutil():
    try:
        import psutil

        return psutil
    except ImportError:
        return None
