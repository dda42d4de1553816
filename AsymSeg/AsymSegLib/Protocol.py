"""The engine's ``protocol.json``, read as plain JSON: presets, settings, job defaults, exit codes, events.

Qt-free and torch-free. The file ships inside the engine package (``AsymSegTrainer/``), which
is installed beside the module (or found at the repository root in a source checkout), so
the panel's presets, ranges, defaults and exit-code messages are the engine's own.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Optional

ENGINE_PACKAGE = "AsymSegTrainer"
PROTOCOL_FILE_NAME = "protocol.json"


def engineFolder(candidates: Optional[list] = None) -> Optional[Path]:
    """The folder that contains the ``AsymSegTrainer`` package.

    Installed extension: the module's script folder (CMake installs the package beside
    ``AsymSeg.py``). Source checkout: the repository root, beside ``AsymSeg/``.
    """
    here = Path(__file__).resolve().parent  # .../AsymSegLib
    for folder in candidates or [here.parent, here.parent.parent]:
        if (Path(folder) / ENGINE_PACKAGE / "__init__.py").is_file():
            return Path(folder)
    return None


class ProtocolNotFoundError(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def protocol() -> dict:
    """The parsed protocol (cached; read once per session)."""
    folder = engineFolder()
    if folder is None:
        raise ProtocolNotFoundError(f"The {ENGINE_PACKAGE} engine package was not found beside the AsymSeg module: "
                                    "reinstall the extension.")
    return json.loads((folder / ENGINE_PACKAGE / PROTOCOL_FILE_NAME).read_text(encoding="utf-8"))


def jobFields() -> dict:
    """Job field name -> its entry (type, default, range, meaning)."""
    return {f["name"]: f for f in protocol()["job"]["fields"]}


def jobDefault(name: str):
    """A fresh copy of the engine's default for a job field."""
    return copy.deepcopy(jobFields()[name]["default"])
