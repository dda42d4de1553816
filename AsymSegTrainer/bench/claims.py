"""Sharing one bench folder between processes: claims on run folders and the aggregation lock.

A run is claimed by creating ``claim.json`` with ``O_CREAT | O_EXCL``; a run claimed by a live
process is left to it, a claim whose process has died is taken over (atomic rename). The
results are rebuilt under an exclusive lock (locks.py). The bench folder itself is shared, not
locked: a bench only refuses one that another engine command holds (``refuse_held_folder``);
each run's training folder is locked by the trainer. All of the bench's POSIX-only code
(``os.kill`` probing of process ids) is in this module.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import ContextManager, Optional

from ..locks import FolderLock, exclusive_lock

CLAIM_FILE = "claim.json"


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_owner(folder: Path) -> Optional[int]:
    try:
        return int(json.loads((folder / CLAIM_FILE).read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def claim(folder: Path) -> bool:
    """Claim a run folder (``claim.json`` created exclusively); False when a live process holds it.

    A claim left by a process that has died (same host, pid gone) is taken over: it is renamed
    away atomically, so of several processes only one wins it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                other = None
            if other is None:  # being written right now (or garbage older than a minute)
                try:
                    if time.time() - path.stat().st_mtime < 60:
                        return False
                except FileNotFoundError:
                    continue
            elif other.get("host") != me["host"] or _pid_alive(int(other.get("pid", -1))):
                return False
            stale = folder / f".stale-claim.{os.getpid()}"
            try:
                os.rename(path, stale)
            except FileNotFoundError:
                return False
            stale.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return True
    return False


def release(folder: Path) -> None:
    """Give up the claim on a run folder (finished, failed or cancelled)."""
    (folder / CLAIM_FILE).unlink(missing_ok=True)


def claimed_by_another(folder: Path) -> bool:
    """Whether another process than this one holds a claim on the run folder (a worker, for the ETA)."""
    return (folder / CLAIM_FILE).exists() and _claim_owner(folder) != os.getpid()


def aggregation_lock(out: Path) -> ContextManager[None]:
    """Held while the results of the bench folder ``out`` are rebuilt: one process at a time."""
    return exclusive_lock(out / ".aggregate.lock")


def refuse_held_folder(out: Path) -> None:
    """InputError naming the holder when another engine command (train, infer, evaluate) holds ``out``'s folder lock.

    Bench processes share ``out`` on purpose and hold no folder lock on it; they only test it, under
    the aggregation lock, so that two of them starting together never see each other's test.
    """
    with aggregation_lock(out):
        FolderLock(out).acquire().release()
