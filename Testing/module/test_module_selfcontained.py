"""The module folder AsymSeg/ is self-contained: what it imports and what it reads at run time.

Slicer loads the module from the ``AsymSeg`` folder alone (an installed extension, or the
folder added under Additional module paths), so every file of it is parsed here with ``ast``
(nothing is imported) and:

- every top-level module it imports (anywhere, inside functions too) is the standard library,
  provided by Slicer itself, the module's own package, or installed on first use by
  ``AsymSegLib/Dependencies.py`` (read from that file's own ``REQUIREMENTS`` and
  ``TORCH_REQUIREMENT``); the latter are absent until the user agrees to install them, so
  they may only be imported lazily (inside a function) or under ``try/except ImportError``;
- torch, MONAI, SimpleITK and the engine are never imported: heavy work runs in the engine
  child process (``python -m AsymSegTrainer``);
- every file the module reads at run time exists and is listed in ``AsymSeg/CMakeLists.txt``,
  so an installed extension contains it.

Each check returns its problems for a given folder, so ``test_the_checks_find_planted_faults``
runs them on a copy with faults planted in it: the checks can fail.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "AsymSeg"

# Provided by Slicer's own Python in every Slicer, so never installed by the module. Only the
# names the module actually imports (a test below keeps this list exact).
SLICER_PROVIDED = {
    "slicer": "Slicer's Python package (slicer.util, slicer.ScriptedLoadableModule, parameterNodeWrapper)",
    "vtk": "VTK, which Slicer is built on (MRML node classes are reached as slicer.vtkMRML*)",
    "qt": "PythonQt's Qt bindings, part of the Slicer application",
    "ctk": "CTK's Python bindings (ctk.ctkSliderWidget ...), part of the Slicer application",
    "numpy": "ships with Slicer (slicer.util.arrayFromVolume returns numpy arrays); Dependencies.py lists it "
             "too only so the engine's check covers it",
}
# The module's own package, inside the folder.
OWN = {"AsymSegLib", "AsymSeg"}
# Optional modules of other extensions: used when present, so always under try/except ImportError.
OPTIONAL = {
    "PyTorchUtils": "the PyTorch extension's module; Dependencies._installTorch falls back to pip without it",
}
# Never imported by the module: the engine and its heavy packages run in the child process.
FORBIDDEN = {
    "torch": "heavy work runs in the engine child process, never in Slicer's process",
    "monai": "heavy work runs in the engine child process, never in Slicer's process",
    "SimpleITK": "image files are read and written by the engine child process and by Slicer's own I/O",
    "AsymSegTrainer": "the engine is started as a child process (python -m AsymSegTrainer), never imported",
}
DEPENDENCIES = Path("AsymSegLib") / "Dependencies.py"
PROTOCOL = Path("AsymSegLib") / "Protocol.py"
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def pyFiles(moduleDir: Path) -> list:
    return sorted(p for p in moduleDir.rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path, moduleDir: Path) -> str:
    return f"AsymSeg/{path.relative_to(moduleDir).as_posix()}"


# ---------------------------------------------------------------------------------------- imports


@dataclass
class Imported:
    line: int
    module: str        # as written ("" for ``from . import x``)
    level: int         # relative import level
    names: tuple       # the names of ``from ... import names``
    guarded: bool      # inside ``try`` whose handlers catch ImportError
    inFunction: bool   # inside a function (runs when called, not when the module is loaded)

    @property
    def root(self) -> str:
        return self.module.split(".")[0]


def _catchesImportError(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in IMPORT_ERRORS for t in types)


class ImportCollector(ast.NodeVisitor):
    """Every import statement and every ``importlib.import_module``/``__import__`` call."""

    def __init__(self):
        self.found: list = []
        self.unreadable: list = []  # lines of dynamic imports whose module is not a literal
        self._guards = 0
        self._functions = 0

    def _add(self, line, module, level=0, names=()):
        self.found.append(Imported(line, module, level, tuple(names), self._guards > 0, self._functions > 0))

    def visit_Try(self, node):
        guards = any(_catchesImportError(h) for h in node.handlers)
        self._guards += guards
        for statement in node.body:
            self.visit(statement)
        self._guards -= guards
        for statement in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(statement)

    visit_TryStar = visit_Try

    def visit_FunctionDef(self, node):
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            self._add(node.lineno, alias.name)

    def visit_ImportFrom(self, node):
        self._add(node.lineno, node.module or "", node.level, [a.name for a in node.names])

    def visit_Call(self, node):
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
        if name in ("import_module", "__import__"):
            argument = node.args[0] if node.args else None
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                module = argument.value.lstrip(".")
                self._add(node.lineno, module, len(argument.value) - len(module))
            else:
                self.unreadable.append(node.lineno)
        self.generic_visit(node)


def collectImports(path: Path) -> ImportCollector:
    collector = ImportCollector()
    collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return collector


def _literalAssignments(path: Path) -> dict:
    """Top-level ``NAME = <literal>`` of a file, evaluated with ``ast.literal_eval``."""
    values = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
        if isinstance(target, ast.Name):
            try:
                values[target.id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def installedOnFirstUse(moduleDir: Path) -> dict:
    """Import name -> requirement, from Dependencies.py's REQUIREMENTS and TORCH_REQUIREMENT (not imported)."""
    values = _literalAssignments(moduleDir / DEPENDENCIES)
    requirements, torch = values.get("REQUIREMENTS"), values.get("TORCH_REQUIREMENT")
    assert isinstance(requirements, dict) and requirements and isinstance(torch, str), (
        f"AsymSeg/{DEPENDENCIES.as_posix()} no longer defines REQUIREMENTS (a literal dict: import name -> "
        "requirement) and TORCH_REQUIREMENT (a literal string): update installedOnFirstUse in this test")
    torchName = re.match(r"[A-Za-z0-9_.\-]+", torch).group(0)
    return {torchName: torch, **requirements}


def _ownModuleExists(moduleDir: Path, parts: list) -> bool:
    base = moduleDir.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def importProblems(moduleDir: Path) -> list:
    """Imports that are neither stdlib, Slicer's, the module's own, optional-and-guarded, nor first-use-and-lazy."""
    firstUse = installedOnFirstUse(moduleDir)
    problems = []
    for path in pyFiles(moduleDir):
        where = rel(path, moduleDir)
        collector = collectImports(path)
        for line in collector.unreadable:
            problems.append(f"{where}:{line}: a dynamic import whose module is not a string literal: write it as an "
                            "import statement so this test can check it")
        for imported in collector.found:
            root, at = imported.root, f"{where}:{imported.line}"
            if imported.level:
                package = path.parent
                for _ in range(imported.level - 1):
                    package = package.parent
                parts = [p for p in imported.module.split(".") if p]
                targets = [parts] if parts else [[name] for name in imported.names]
                for target in targets:
                    if not (_ownModuleExists(package, target) or (not parts and (package / "__init__.py").is_file())):
                        problems.append(f"{at}: relative import of {'.'.join(target)}, which is not a file of "
                                        f"{rel(package, moduleDir)}/: add the file (and list it in "
                                        "AsymSeg/CMakeLists.txt)")
                continue
            if root in FORBIDDEN:
                continue  # forbiddenImportProblems
            if root in sys.stdlib_module_names or root in SLICER_PROVIDED:
                continue
            if root in OWN:
                if not _ownModuleExists(moduleDir, imported.module.split(".")):
                    problems.append(f"{at}: imports {imported.module}, which is not a file of AsymSeg/: add it "
                                    "(and list it in AsymSeg/CMakeLists.txt)")
                continue
            if root in OPTIONAL:
                if not imported.guarded:
                    problems.append(f"{at}: imports {root} ({OPTIONAL[root]}) without try/except ImportError: "
                                    "guard it, Slicer may not have that extension")
                continue
            if root in firstUse:
                if not (imported.inFunction or imported.guarded):
                    problems.append(f"{at}: imports {root} when the module is loaded, but Dependencies.py installs it "
                                    "only on first use (after the user agreed): import it inside the function that "
                                    "needs it, or under try/except ImportError")
                continue
            problems.append(f"{at}: imports {imported.module}, which is neither the standard library, provided by "
                            f"Slicer ({sorted(SLICER_PROVIDED)}), the module's own package, nor installed on first "
                            f"use by AsymSeg/{DEPENDENCIES.as_posix()}: add it to REQUIREMENTS there (and to the "
                            "engine's pyproject.toml) and import it lazily, or, if Slicer really ships it, to "
                            "SLICER_PROVIDED in this test with the reason")
    return problems


def forbiddenImportProblems(moduleDir: Path) -> list:
    problems = []
    for path in pyFiles(moduleDir):
        for imported in collectImports(path).found:
            if not imported.level and imported.root in FORBIDDEN:
                problems.append(f"{rel(path, moduleDir)}:{imported.line}: imports {imported.module}: "
                                f"{FORBIDDEN[imported.root]}; move that work into the engine (AsymSegTrainer) and "
                                "run it through the child process")
    return problems


def unusedSlicerProvided(moduleDir: Path) -> list:
    used = {i.root for p in pyFiles(moduleDir) for i in collectImports(p).found if not i.level}
    return sorted(set(SLICER_PROVIDED) - used)


def test_sys_stdlib_module_names_is_available():
    assert hasattr(sys, "stdlib_module_names"), "Python >= 3.10 is needed to tell the standard library apart"


def test_every_import_is_stdlib_slicer_own_or_installed_on_first_use():
    if not hasattr(sys, "stdlib_module_names"):
        pytest.skip("Python < 3.10")
    problems = importProblems(MODULE_DIR)
    assert not problems, "\n".join(problems)


def test_the_module_never_imports_torch_monai_simpleitk_or_the_engine():
    problems = forbiddenImportProblems(MODULE_DIR)
    assert not problems, "\n".join(problems)


def test_slicer_provided_list_is_exact():
    unused = unusedSlicerProvided(MODULE_DIR)
    assert not unused, f"SLICER_PROVIDED in {Path(__file__).name} lists {unused}, which no file of AsymSeg/ imports: " \
                       "remove them, so the list names only what the module relies on"


def test_first_use_packages_are_read_from_dependencies():
    firstUse = installedOnFirstUse(MODULE_DIR)
    assert "torch" in firstUse and "monai" in firstUse and "SimpleITK" in firstUse, \
        f"AsymSeg/{DEPENDENCIES.as_posix()}: the engine's packages (torch, monai, SimpleITK) are no longer listed: " \
        f"found {sorted(firstUse)}"


# ---------------------------------------------------------------------------------------- shipped files


def cmakeVariables(moduleDir: Path) -> dict:
    """``set(NAME items...)`` of AsymSeg/CMakeLists.txt, with ${MODULE_NAME} substituted."""
    text = re.sub(r"#[^\n]*", "", (moduleDir / "CMakeLists.txt").read_text(encoding="utf-8"))
    variables = {m.group(1): m.group(2).split() for m in re.finditer(r"set\((\w+)\s+([^)]*)\)", text)}
    name = variables.get("MODULE_NAME", ["AsymSeg"])[0]
    return {key: [item.replace("${MODULE_NAME}", name) for item in items] for key, items in variables.items()}


def resourcePathLiterals(moduleDir: Path) -> tuple:
    """(path, line, argument) of every ``resourcePath(...)`` call; argument None when not a literal."""
    found = []
    for path in pyFiles(moduleDir):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "resourcePath":
                argument = node.args[0] if node.args else None
                literal = argument.value if isinstance(argument, ast.Constant) and isinstance(argument.value, str) \
                    else None
                found.append((path, node.lineno, literal))
    return found


def uiFileReferences(uiFile: Path) -> list:
    """Files a .ui refers to by path (icons, pixmaps, .qrc); Qt resource paths (":/...") are Slicer's own."""
    root = ET.parse(uiFile).getroot()
    paths = [e.get("location") for e in root.iter("include") if e.get("location")]
    for element in root.iter():
        if element.tag in ("iconset", "pixmap", "normaloff", "normalon", "disabledoff", "activeoff", "selectedoff"):
            text = (element.text or "").strip()
            if text:
                paths.append(text)
    return [p for p in paths if not p.startswith(":")]


def shippedFileProblems(moduleDir: Path, repo: Path) -> list:
    variables = cmakeVariables(moduleDir)
    scripts = variables.get("MODULE_PYTHON_SCRIPTS", [])
    resources = variables.get("MODULE_PYTHON_RESOURCES", [])
    engineResources = variables.get("ASYMSEG_ENGINE_RESOURCES", [])
    problems = []
    if not scripts or not resources:
        return ["AsymSeg/CMakeLists.txt: MODULE_PYTHON_SCRIPTS or MODULE_PYTHON_RESOURCES not found: "
                "update cmakeVariables in this test"]

    for path in pyFiles(moduleDir):
        name = path.relative_to(moduleDir).as_posix()
        if name not in scripts:
            problems.append(f"{rel(path, moduleDir)} is not in MODULE_PYTHON_SCRIPTS of AsymSeg/CMakeLists.txt, so an "
                            f"installed extension lacks it: add '{name}' there")
    for name in scripts + resources:
        if not (moduleDir / name).is_file():
            problems.append(f"AsymSeg/CMakeLists.txt lists '{name}', which does not exist in AsymSeg/: remove it or "
                            "add the file")
    for path in sorted(p for p in (moduleDir / "Resources").rglob("*") if p.is_file()):
        name = path.relative_to(moduleDir).as_posix()
        if name not in resources:
            problems.append(f"{rel(path, moduleDir)} is not in MODULE_PYTHON_RESOURCES of AsymSeg/CMakeLists.txt, so "
                            f"an installed extension lacks it: add '{name}' there (or delete the file if unused)")

    # files the module asks for by name at run time
    needed = []
    for path, line, literal in resourcePathLiterals(moduleDir):
        if literal is None:
            problems.append(f"{rel(path, moduleDir)}:{line}: resourcePath() with a computed name: use a string "
                            "literal so this test can check that the file ships")
        else:
            needed.append((f"Resources/{literal}", f"{rel(path, moduleDir)}:{line} (resourcePath)"))
    for uiFile in sorted((moduleDir / "Resources").rglob("*.ui")):
        for reference in uiFileReferences(uiFile):
            target = (uiFile.parent / reference).resolve()
            name = target.relative_to(moduleDir.resolve()).as_posix() if target.is_relative_to(moduleDir.resolve()) \
                else reference
            needed.append((name, f"{rel(uiFile, moduleDir)} (refers to {reference})"))
    # Slicer's ScriptedLoadableModule sets the module icon from Resources/Icons/<module name>.svg or .png
    icons = [f"Resources/Icons/{p.stem}{ext}" for p in moduleDir.glob("*.py") for ext in (".svg", ".png")
             if (moduleDir / "Resources" / "Icons" / f"{p.stem}{ext}").is_file()]
    if not icons:
        problems.append("AsymSeg/Resources/Icons/AsymSeg.png (or .svg) is missing: Slicer shows the module without an "
                        "icon; add it and list it in MODULE_PYTHON_RESOURCES")
    needed += [(icon, "the module icon Slicer loads by name") for icon in icons]
    for name, reason in needed:
        if not (moduleDir / name).is_file():
            problems.append(f"AsymSeg/{name} ({reason}) does not exist: add it under AsymSeg/ and list it in "
                            "MODULE_PYTHON_RESOURCES of AsymSeg/CMakeLists.txt")
        elif name not in resources:
            problems.append(f"AsymSeg/{name} ({reason}) is not in MODULE_PYTHON_RESOURCES of AsymSeg/CMakeLists.txt: "
                            "add it, an installed extension lacks it otherwise")

    # The engine's protocol.json, which the module reads (Protocol.py), ships with the engine package,
    # installed beside the module by the same CMakeLists.txt (in a checkout: the repository root).
    values = _literalAssignments(moduleDir / PROTOCOL)
    package, fileName = values.get("ENGINE_PACKAGE"), values.get("PROTOCOL_FILE_NAME")
    if not (package and fileName):
        problems.append(f"AsymSeg/{PROTOCOL.as_posix()} no longer names ENGINE_PACKAGE and PROTOCOL_FILE_NAME as "
                        "literals: update shippedFileProblems in this test")
    else:
        name = f"{package}/{fileName}"
        if not (repo / name).is_file():
            problems.append(f"{name} (read by AsymSeg/{PROTOCOL.as_posix()}) does not exist in the repository")
        if name not in engineResources:
            problems.append(f"{name} (read by AsymSeg/{PROTOCOL.as_posix()}) is not in ASYMSEG_ENGINE_RESOURCES of "
                            "AsymSeg/CMakeLists.txt: add it, an installed extension lacks it otherwise")
    return problems


def test_every_file_the_module_needs_is_shipped_and_listed_in_cmake():
    problems = shippedFileProblems(MODULE_DIR, REPO)
    assert not problems, "\n".join(problems)


def test_the_checks_look_at_real_files():
    """Guards against vacuous checks: the files and calls the checks rely on are found."""
    assert len(pyFiles(MODULE_DIR)) > 10
    assert any(literal == "UI/AsymSeg.ui" for _, _, literal in resourcePathLiterals(MODULE_DIR))
    roots = {i.root for p in pyFiles(MODULE_DIR) for i in collectImports(p).found}
    assert {"slicer", "AsymSegLib", "psutil", "PyTorchUtils"} <= roots


# ---------------------------------------------------------------------------------------- the checks can fail


def test_the_checks_find_planted_faults(tmp_path):
    """On a copy of the module folder with faults planted, every check reports them."""
    if not hasattr(sys, "stdlib_module_names"):
        pytest.skip("Python < 3.10")
    moduleDir = tmp_path / "AsymSeg"
    shutil.copytree(MODULE_DIR, moduleDir, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "AsymSegTrainer").mkdir()  # an engine package without its protocol.json
    library = moduleDir / "AsymSegLib"
    (library / "Planted.py").write_text(
        "import psutil\n"                 # first-use package at load time
        "import requests\n"               # neither stdlib, Slicer's nor installed on first use
        "from .Missing import thing\n"    # own file that does not exist
        "import PyTorchUtils\n"           # optional, unguarded
        "def f():\n"
        "    import torch\n"              # forbidden, even lazily
        "    from SimpleITK import ReadImage\n"
        "    import importlib; importlib.import_module('monai')\n", encoding="utf-8")
    (moduleDir / "Resources" / "Icons" / "Extra.png").write_bytes(b"")
    (moduleDir / "Resources" / "UI" / "AsymSeg.ui").unlink()

    imports = "\n".join(importProblems(moduleDir))
    for expected in ("Planted.py:1: imports psutil when the module is loaded", "Planted.py:2: imports requests",
                     "Planted.py:3: relative import of Missing", "Planted.py:4: imports PyTorchUtils"):
        assert expected in imports, f"{expected!r} not reported:\n{imports}"
    forbidden = "\n".join(forbiddenImportProblems(moduleDir))
    for expected in ("Planted.py:6: imports torch", "Planted.py:7: imports SimpleITK", "Planted.py:8: imports monai"):
        assert expected in forbidden, f"{expected!r} not reported:\n{forbidden}"
    shipped = "\n".join(shippedFileProblems(moduleDir, tmp_path))
    for expected in ("AsymSeg/AsymSegLib/Planted.py is not in MODULE_PYTHON_SCRIPTS",
                     "AsymSeg/Resources/Icons/Extra.png is not in MODULE_PYTHON_RESOURCES",
                     "lists 'Resources/UI/AsymSeg.ui', which does not exist",
                     "AsymSeg/Resources/UI/AsymSeg.ui (AsymSeg/AsymSeg.py:",
                     "AsymSegTrainer/protocol.json (read by AsymSeg/AsymSegLib/Protocol.py) does not exist"):
        assert expected in shipped, f"{expected!r} not reported:\n{shipped}"

    # and a CMake list without a file: the installed extension would lack it
    cmake = moduleDir / "CMakeLists.txt"
    cmake.write_text(cmake.read_text(encoding="utf-8").replace("  Resources/Icons/${MODULE_NAME}.png\n", ""),
                     encoding="utf-8")
    shipped = "\n".join(shippedFileProblems(moduleDir, tmp_path))
    assert "AsymSeg/Resources/Icons/AsymSeg.png is not in MODULE_PYTHON_RESOURCES" in shipped, shipped
    assert "the module icon Slicer loads by name" in shipped, shipped
