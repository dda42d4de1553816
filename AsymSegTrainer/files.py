"""Writing results safely: every output appears whole or not at all, and nothing is overwritten half-way.

A writer gets a temporary path beside the target (same extension, so format-by-extension
writers still work), and the temporary file replaces the target only once it is complete
and flushed to disk. A full disk or an unwritable folder becomes a ResourceError that says
what to do; the previous file, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Optional

from .errors import ResourceError

_COMPOUND_EXTENSIONS = (".nii.gz",)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((path.name[-len(e):] for e in _COMPOUND_EXTENSIONS if name.endswith(e)), path.suffix)


_NEARLY_FULL = 16 << 20  # bytes: a writer that failed with less than this free ran out of disk


def _disk_full(path: Path, exc: BaseException) -> bool:
    """ENOSPC, or a library's own write error (torch.save's RuntimeError) on a disk with next to no space left."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    try:
        return shutil.disk_usage(path.parent).free < _NEARLY_FULL
    except OSError:
        return False


def _resource_error(path: Path, exc: BaseException) -> ResourceError:
    if _disk_full(path, exc):
        return ResourceError(f"The disk is full while writing {path}; the previous file, if any, is intact.",
                             "Free disk space or choose another output folder (training: then continue with --resume).")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ResourceError(f"Cannot write {path}: {reason}.", "Choose an output folder you can write to.")


@contextlib.contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is synced and renamed onto ``path``.

    Parent folders are created. Any failure removes the temporary file and leaves ``path``
    untouched; OS errors (and SimpleITK's RuntimeError on write) become ResourceError.
    """
    path = Path(path)
    suffix = _suffix(path)
    tmp = path.with_name(f".{path.name[: len(path.name) - len(suffix)]}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        raise _resource_error(path, exc) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path, data, indent: Optional[int] = 1) -> Path:
    """Strict JSON (NaN refused: undefined values are null), written atomically."""
    return write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def check_writable_folder(folder) -> Path:
    """Create ``folder`` and check that a file can be written there (ResourceError otherwise)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".asymseg-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ResourceError(f"The output folder {folder} is not writable: {exc.strerror or exc}.",
                            "Choose an output folder you can write to.") from exc
    return folder
