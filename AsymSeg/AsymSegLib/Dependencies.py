"""The engine's Python packages in Slicer's Python: check, then (once the user agreed) install.

Never installs at import time; lower bounds only (the engine's pyproject.toml). torch is
installed through the PyTorch extension's ``PyTorchUtils`` when present (it picks the build
that matches the GPU driver), otherwise from PyPI. Slicer >= 5.11 offers
``slicer.packaging.pip_ensure`` (check, prompt, progress, restart offer); older versions
``slicer.util.pip_install`` after our own confirmation.

Qt-free: what to check, what to ask and what to install is decided here
(``ensureEngineReady``); the panel only asks the user the question it is given. The panel
receives a ``DependenciesProtocol`` (``SlicerDependencies`` in Slicer, a fake in tests).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Protocol

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

    def missingNames(self) -> list[str]:
        return (["torch"] if self.torchMissing else []) + [r.split(">")[0] for r in self.missing]

    def describe(self) -> str:
        return ", ".join(self.missingNames())


class DependenciesProtocol(Protocol):
    """What the panel needs to get the engine's packages (a fake records the calls in widget tests)."""

    def check(self) -> DependencyStatus: ...
    def installQuestion(self, status: DependencyStatus) -> str: ...
    def install(self, status: DependencyStatus) -> None: ...


def ensureEngineReady(dependencies: DependenciesProtocol, confirm: Callable[[str], bool]) -> DependencyStatus:
    """Check the engine's packages and install the missing ones once ``confirm(question)`` agrees.

    No question (``installQuestion`` is empty) means the installer asks by itself. Returns the
    status afterwards: ``ok`` when the engine can run.
    """
    status = dependencies.check()
    if status.ok:
        return status
    question = dependencies.installQuestion(status)
    if question and not confirm(question):
        return status
    dependencies.install(status)
    return dependencies.check()


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def checkDependencies() -> DependencyStatus:
    """What the engine needs but this Python lacks (no package is imported)."""
    return DependencyStatus(not _present("torch"),
                            [req for module, req in REQUIREMENTS.items() if not _present(module)])


def _pipEnsure():
    """``slicer.packaging.pip_ensure`` (Slicer >= 5.11: prompts by itself), else None."""
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return getattr(packaging, "pip_ensure", None)


def installQuestion(status: DependencyStatus) -> str:
    """The question to ask before installing: torch always; the others only when ``pip_ensure``
    (which asks by itself) is not available. Empty when there is nothing to ask."""
    asked = status.missingNames() if _pipEnsure() is None else (["torch"] if status.torchMissing else [])
    if not asked:
        return ""
    return (f"AsymSeg's training engine needs these Python packages: {', '.join(asked)}.\n"
            "Install them now? This downloads up to several hundred MB (torch) and may take minutes.")


def installDependencies(status: DependencyStatus) -> None:
    """Install what ``status`` lists, in Slicer, without asking (``installQuestion`` was asked)."""
    import slicer

    if status.torchMissing:
        _installTorch()
    if status.missing:
        ensure = _pipEnsure()
        if ensure is not None:
            ensure(status.missing, requester="AsymSeg")
        else:
            slicer.util.pip_install(status.missing)


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


class SlicerDependencies:
    """The engine's packages in Slicer's own Python (the ``DependenciesProtocol`` the module uses)."""

    def check(self) -> DependencyStatus:
        return checkDependencies()

    def installQuestion(self, status: DependencyStatus) -> str:
        return installQuestion(status)

    def install(self, status: DependencyStatus) -> None:
        installDependencies(status)
