"""Writing results safely: every output appears whole or not at all, and nothing is overwritten half-way.

A writer gets a temporary path beside the target (same extension, so format-by-extension
writers still work), and the temporary file replaces the target only once it is complete
and flushed to disk. A full disk or an unwritable folder becomes a ResourceError that says
what to do; the previous file, if any, is left as it was. Before writing, a command checks with
:func:`refuse_overwriting_inputs` that none of its outputs is, or lies inside, one of its inputs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, Iterable, Iterator, Mapping, Optional, Tuple, Union

from .errors import InputError, ResourceError

_COMPOUND_EXTENSIONS = (".nii.gz",)
PathLike = Union[str, os.PathLike]


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


def case_inputs(specs) -> Dict[str, Optional[str]]:
    """what -> path of the images, labels and masks of cases (data.CaseSpec: id, images, label, mask)."""
    named: Dict[str, Optional[str]] = {}
    for spec in specs:
        named.update({f"image {c} of case {spec.id}": path for c, path in enumerate(spec.images)})
        named.update({f"{kind} of case {spec.id}": getattr(spec, kind) for kind in ("label", "mask")})
    return named


def refuse_overwriting_inputs(outputs: Iterable[PathLike], inputs: Mapping[str, Optional[PathLike]]) -> None:
    """InputError naming both paths when an output file or folder is, or lies inside, an input file or folder.

    Called before a command writes anything, so a mistyped output path can never replace an
    image, a label, a mask or a model, nor write into a dataset folder. ``inputs``: what -> path,
    e.g. ``{"--label": "gt.nii.gz"}`` (None paths are skipped); ``what`` names the input in the
    message. Paths are compared as the file system sees them: symbolic links and ``..``
    resolved, and by device and inode where the path exists (as os.path.samefile), which also
    catches hard links and other spellings of one file.
    """
    cache: Dict[str, list] = {}

    def identities(path) -> list:
        """The resolved path and, when it exists, its (device, inode)."""
        key = os.fspath(path)
        if key not in cache:
            real = os.path.realpath(key)
            try:
                stat = os.stat(real)
                cache[key] = [real, (stat.st_dev, stat.st_ino)]
            except OSError:
                cache[key] = [real]
        return cache[key]

    known: Dict[object, Tuple[str, object]] = {}
    for what, path in inputs.items():
        if path is not None:
            for identity in identities(path):
                known.setdefault(identity, (what, path))
    for path in outputs:
        real = Path(identities(path)[0])
        for candidate in (real, *real.parents):
            clash = next((known[i] for i in identities(candidate) if i in known), None)
            if clash is not None:
                relation = "is" if candidate == real else "lies inside"
                raise InputError(f"The output {path} {relation} the input {clash[0]} {clash[1]}.",
                                 "Choose an output path outside the inputs, which are never overwritten; "
                                 "nothing was written.")
