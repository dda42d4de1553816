"""The engine's Python packages in Slicer's Python: check, then (after asking) install.

Never installs at import time; lower bounds only (the engine's pyproject.toml). torch is
installed through the PyTorch extension's ``PyTorchUtils`` when present (it picks the build
that matches the GPU driver), otherwise from PyPI. Slicer >= 5.11 offers
``slicer.packaging.pip_ensure`` (check, prompt, progress, restart offer); older versions
``slicer.util.pip_install`` after our own confirmation.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

TORCH_REQUIREMENT = "torch>=2.1"
REQUIREMENTS = {  # import name -> requirement (lower bounds only)
    "monai": "monai>=1.3",
    "numpy": "numpy>=1.24",
    "SimpleITK": "SimpleITK>=2.2",
    "scipy": "scipy>=1.10",
    "tqdm": "tqdm>=4.65",
    "psutil": "psutil>=5.9",
}


@dataclass
class DependencyStatus:
    torchMissing: bool
    missing: list  # requirement strings other than torch

    @property
    def ok(self) -> bool:
        return not self.torchMissing and not self.missing

    def describe(self) -> str:
        names = (["torch"] if self.torchMissing else []) + [r.split(">")[0] for r in self.missing]
        return ", ".join(names)


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def checkDependencies() -> DependencyStatus:
    """What the engine needs but this Python lacks (no package is imported)."""
    return DependencyStatus(not _present("torch"),
                            [req for module, req in REQUIREMENTS.items() if not _present(module)])


def installDependencies(status: DependencyStatus, ask: bool = True) -> bool:
    """Install what ``status`` lists, in Slicer. Returns True when everything is present afterwards."""
    import slicer

    if status.ok:
        return True
    try:
        import slicer.packaging as packaging  # Slicer >= 5.11
    except ImportError:
        packaging = None
    ensure = getattr(packaging, "pip_ensure", None)
    # pip_ensure (Slicer >= 5.11) prompts by itself; we ask for torch and, before 5.11, for all.
    asked = (["torch"] if status.torchMissing else []) + ([] if ensure else [r.split(">")[0] for r in status.missing])
    if ask and asked and not slicer.util.confirmOkCancelDisplay(
            f"AsymSeg's training engine needs these Python packages: {', '.join(asked)}.\n"
            "Install them now? This downloads up to several hundred MB (torch) and may take minutes.",
            windowTitle="AsymSeg: install Python packages"):
        return False
    if status.torchMissing:
        _installTorch()
    if status.missing:
        if ensure is not None:
            ensure(status.missing, requester="AsymSeg")
        else:
            slicer.util.pip_install(status.missing)
    return checkDependencies().ok


def _installTorch() -> None:
    import slicer

    try:
        import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        logic = PyTorchUtils.PyTorchUtilsLogic()
        if not logic.torchInstalled():
            if logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):]) is None:
                raise RuntimeError("PyTorch could not be installed (PyTorch extension).")
        return
    slicer.util.pip_install(TORCH_REQUIREMENT)
