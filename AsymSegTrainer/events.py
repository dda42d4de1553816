"""Machine-readable events and the human log (protocol.md, "Events").

With ``json_stdout`` the process's stdout carries one JSON object per line and nothing
else: anything else that would print to stdout is redirected to stderr for the run. Every
event also goes to ``OUT/events.jsonl``; human messages go to stderr and ``OUT/log.txt``.
Without ``json_stdout``, training progress is a tqdm bar on stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Optional

from .errors import InputError, ResourceError, as_user_error
from .formatting import plan_text
from .protocol import EVENT_KEYS

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX; on Windows the is_symlink check below guards


def _open_append(path: Path) -> IO:
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; AsymSeg writes only regular files in its output folder.",
                         "Remove the link or choose another output folder.")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as exc:
        raise as_user_error(exc) or ResourceError(f"Cannot write {path}: {exc.strerror or exc}.",
                                                  "Choose an output folder you can write to.") from exc
    return os.fdopen(fd, "a", encoding="utf-8")


def _json_safe(value):
    """NaN/inf are not JSON: they become null (a NaN loss is reported by an ``error`` event)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _json_safe(value.item())
    return value


def _describe(event: dict) -> str:
    """The human log line of an event ('' for events that only the machine needs)."""
    kind = event["type"]
    if kind in ("warning", "error"):
        return f"{kind.upper()}: {event['message']}" + (f"\n  hint: {event['hint']}" if event.get("hint") else "")
    if kind == "start":
        return f"{event['command']} on {event['device']}, output {event['output']}"
    if kind == "progress":
        return f"{event['phase']} {event['iteration']}/{event['total']}" + (f": {event['case']}" if "case" in event else "") \
            + (f" ({event['fraction']:.0%})" if "fraction" in event else "")
    if kind == "validation":
        scores = ", ".join(f"{name} DSC {m['dsc'] or 0:.3f} SEN {m['sensitivity'] or 0:.3f} PRC {m['precision'] or 0:.3f}"
                           for name, m in event["metrics"].items())
        return f"validation at iteration {event['iteration']}: {scores}" + (" (best so far)" if event["best"] else "")
    if kind == "plan":
        return plan_text(event["plan"])
    if kind == "checkpoint" and event["kind"] == "chosen":
        return f"chose {event['path']}: {event['reason']}"
    if kind == "checkpoint":
        return f"saved {event['kind']} model {event['path']} (iteration {event['iteration']})"
    if kind == "done":
        lines = [f"{event['status']} (exit code {event['exit_code']})"] + \
                ([f"  model: {event['model']}"] if event.get("model") else []) + \
                [f"  {name}: {path}" for name, path in (event.get("outputs") or {}).items()]
        return "\n".join(lines)
    return ""


class EventSink:
    """Emits events and log lines; ``attach(folder)`` starts ``events.jsonl`` and ``log.txt`` there."""

    def __init__(self, json_stdout: bool = False, progress_bar: Optional[bool] = None, rank: int = 0):
        """``rank`` > 0: another process of a torchrun world; it writes no stdout, no progress bar and
        marks its stderr lines with its rank (rank 0 reports the run)."""
        json_stdout = json_stdout and rank == 0
        progress_bar = False if rank else progress_bar
        self._prefix = f"[rank {rank}] " if rank else ""
        self.json_stdout = json_stdout
        self._stdout: IO = sys.stdout
        if json_stdout:
            sys.stdout = sys.stderr  # keep stray prints out of the event stream
        self._progress_bar = (not json_stdout) if progress_bar is None else progress_bar
        self._bar = None
        self._events_file: Optional[IO] = None
        self._log_file: Optional[IO] = None
        self.events: list = []
        self.failure_fields = dict  # extra keys of a failed run's done event (e.g. the last model)

    def attach(self, folder: Path) -> None:
        """Write events and log lines to ``folder`` from now on (appending); files attached before are closed.

        The files are opened without following symbolic links: a link planted in the output
        folder cannot make the engine write elsewhere.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._close_files()
        self._events_file = _open_append(folder / "events.jsonl")
        self._log_file = _open_append(folder / "log.txt")

    def _write(self, f: IO, text: str) -> None:
        """Append to an attached file; a failing disk detaches the files and becomes a ResourceError."""
        try:
            f.write(text)
            f.flush()
        except OSError as exc:
            self._close_files()  # later events still reach stdout / stderr
            raise as_user_error(exc) or ResourceError(f"Cannot write the log {f.name}: {exc}",
                                                      "Choose an output folder you can write to.") from exc

    def emit(self, type_: str, **fields) -> dict:
        """Send one event; its type and required keys are those of protocol.json (a mismatch is a bug)."""
        if type_ not in EVENT_KEYS or not set(EVENT_KEYS[type_]) <= set(fields):
            raise ValueError(f"event {type_!r} with keys {sorted(fields)} is not in protocol.json "
                             f"(required: {EVENT_KEYS.get(type_)})")
        event = _json_safe({"type": type_, "time": round(time.time(), 3), **fields})
        line = json.dumps(event)
        self.events.append(event)
        if self.json_stdout:
            self._stdout.write(line + "\n")
            self._stdout.flush()
        if self._events_file:
            self._write(self._events_file, line + "\n")
        if type_ == "start":  # a new run (e.g. the demo's second training) starts a new bar
            self.end_progress()
        if type_ == "progress" and event.get("phase") == "train":
            self._show_progress(event)
        else:
            text = _describe(event)
            if text:
                self.log(text)
        return event

    def warning(self, message: str, hint: str = "") -> None:
        self.emit("warning", message=message, hint=hint)

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        message = self._prefix + message
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(f"[{stamp}] {message}", file=sys.stderr, flush=True)
        if self._log_file:
            self._write(self._log_file, f"[{stamp}] {message}\n")

    def _show_progress(self, event: dict) -> None:
        if not self._progress_bar:
            return
        if self._bar is None:
            from tqdm import tqdm
            self._bar = tqdm(total=event["total"], initial=event["iteration"] - 1, desc="training", unit="it",
                             file=sys.stderr, dynamic_ncols=True)
        self._bar.update(event["iteration"] - self._bar.n)
        terms = " ".join(f"{k}={v:.4f}" for k, v in event.get("terms", {}).items() if v is not None)
        self._bar.set_postfix_str(terms)
        if event["iteration"] >= event["total"]:  # the last iteration: later log lines print below the bar
            self.end_progress()

    def end_progress(self) -> None:
        """Close the training bar (e.g. a run ended early) so later log lines do not redraw it."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _close_files(self) -> None:
        for f in (self._events_file, self._log_file):
            if f:
                try:
                    f.close()
                except OSError:  # a full disk cannot take the last buffered bytes: nothing more to do
                    pass
        self._events_file = self._log_file = None

    def close(self) -> None:
        self.end_progress()
        self._close_files()
        if self.json_stdout:
            sys.stdout = self._stdout
