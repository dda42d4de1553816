"""Static checks of the module: .ui names, CMake lists, import discipline, presets vs engine."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from asymseg_module_testing import MODULE_DIR, QT_FILES, REPO, SHIMS

UI_FILE = MODULE_DIR / "Resources" / "UI" / "AsymSeg.ui"
PY_FILES = sorted(MODULE_DIR.rglob("*.py"))


def uiTree():
    return ET.parse(UI_FILE).getroot()


def uiNames() -> set:
    root = uiTree()
    return {e.get("name") for e in root.iter() if e.tag in ("widget", "layout", "spacer") and e.get("name")}


def uiAttributeUses(path: Path) -> set:
    """Names X in ``self.ui.X`` and ``ui.X`` (where ``ui`` aliases ``self.ui``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            value = node.value
            if isinstance(value, ast.Attribute) and value.attr == "ui" and isinstance(value.value, ast.Name) \
                    and value.value.id == "self":
                names.add(node.attr)
            elif isinstance(value, ast.Name) and value.id == "ui":
                names.add(node.attr)
    return names


def test_ui_is_valid_designer_xml():
    root = uiTree()
    assert root.tag == "ui" and root.find("class").text == "AsymSeg"
    custom = {c.find("class").text for c in root.iter("customwidget")}
    for widget in root.iter("widget"):
        cls = widget.get("class")
        assert cls.startswith("Q") or cls in custom, f"{cls} is neither a Qt class nor a declared custom widget"


def test_every_ui_name_used_in_code_exists_in_the_ui():
    names = uiNames()
    used = set()
    for path in PY_FILES:
        used |= uiAttributeUses(path)
    assert used, "no self.ui.<name> found: the check would be vacuous"
    missing = sorted(used - names)
    assert not missing, f"used in code but not in AsymSeg.ui: {missing}"


def test_dynamic_ui_names_exist():
    from AsymSegLib.ParameterNode import TECHNIQUE_FIELDS

    names = uiNames()
    for field in TECHNIQUE_FIELDS.values():
        assert f"{field}Label" in names and f"{field}SpinBox" in names, field


def test_parameter_names_in_ui_are_parameter_fields_of_the_right_type():
    from AsymSegLib.ParameterNode import AsymSegParameters

    hints = typing.get_type_hints(AsymSegParameters)
    bound = {}
    for widget in uiTree().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert len(bound) >= 15
    expected = {"QSpinBox": int, "QDoubleSpinBox": float, "QLineEdit": str, "QCheckBox": bool}
    for name, cls in bound.items():
        assert name in hints, f"SlicerParameterName '{name}' is not a parameter node field"
        assert hints[name] is expected[cls], f"{name}: {cls} needs {expected[cls].__name__}, field is {hints[name]}"


def cmakeList(text: str, variable: str) -> list:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, variable
    return [item.replace("${MODULE_NAME}", "AsymSeg") for item in match.group(1).split()]


def test_cmake_lists_every_python_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = set(cmakeList(text, "MODULE_PYTHON_SCRIPTS"))
    onDisk = {p.relative_to(MODULE_DIR).as_posix() for p in PY_FILES}
    assert scripts == onDisk, f"not listed: {sorted(onDisk - scripts)}; listed but absent: {sorted(scripts - onDisk)}"
    for resource in cmakeList(text, "MODULE_PYTHON_RESOURCES"):
        assert (MODULE_DIR / resource).is_file(), resource
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "AsymSegTrainer/*.py" in text  # the engine package is installed beside the module


def test_top_level_cmake_has_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(AsymSeg)" in text and "find_package(Slicer REQUIRED)" in text
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in text and "Slicer_EXTENSION_CPACK" in text
    for url in re.findall(r"https://raw\.githubusercontent\.com/\S+?/main/(\S+?)[\s\"]", text):
        assert (REPO / url).is_file(), f"{url} (icon/screenshot URL) does not exist in the repository"


def imports(path: Path) -> list:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_nothing_under_the_module_imports_torch_monai_or_the_engine():
    for path in PY_FILES:
        for name in imports(path):
            root = name.split(".")[0]
            assert root not in ("torch", "monai", "AsymSegTrainer"), f"{path.name} imports {name}"


def test_logic_files_are_qt_free():
    for path in sorted((MODULE_DIR / "AsymSegLib").glob("*.py")):
        if path.name in QT_FILES:
            continue
        for name in imports(path):
            assert name.split(".")[0] not in ("qt", "ctk", "PythonQt"), f"{path.name} imports {name}"


def test_the_panel_is_imported_in_the_widget_setup_only():
    """AsymSeg.py imports the Qt files inside AsymSegWidget.setup; no Qt-free file imports one."""
    assert all((MODULE_DIR / "AsymSegLib" / name).is_file() for name in QT_FILES)
    qtModules = {Path(name).stem for name in QT_FILES}
    moduleFile = MODULE_DIR / "AsymSeg.py"
    for path in PY_FILES:
        if path.parent.name == "AsymSegLib" and path.name in QT_FILES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        setup = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "setup"]
        inSetup = {id(n) for function in setup for n in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] in qtModules:
                assert path == moduleFile and id(node) in inSetup, f"{path.name} imports {node.module}"


def test_no_slicer_globals_bound_at_import():
    """slicer.mrmlScene / slicer.app / slicer.modules only inside functions (lazy)."""
    for path in PY_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for statement in tree.body:
            if isinstance(statement, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                bodies = [n for n in ast.walk(statement) if isinstance(n, ast.ClassDef)]
                nodes = [n for b in bodies for s in b.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                         for n in ast.walk(s)]
            else:
                nodes = list(ast.walk(statement))
            for node in nodes:
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
                    assert node.attr not in ("mrmlScene", "app", "modules"), f"{path.name}: slicer.{node.attr} at import"


def test_logic_imports_without_qt_or_scene():
    """In a fresh interpreter with slicer-core only (no mrmlScene, no qt), every logic file imports."""
    modules = [p.stem for p in (MODULE_DIR / "AsymSegLib").glob("*.py") if p.name not in QT_FILES | {"__init__.py"}]
    code = ("import sys; sys.path.insert(0, %r)\nimport slicer\nassert not hasattr(slicer, 'mrmlScene')\n"
            "import importlib\nfor m in %r: importlib.import_module('AsymSegLib.' + m)\n"
            "assert 'qt' not in sys.modules and 'torch' not in sys.modules and 'monai' not in sys.modules\n"
            "print('ok')" % (str(MODULE_DIR), modules))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_presets_match_the_engine():
    sys.path.insert(0, str(REPO))
    try:
        techniques = pytest.importorskip("AsymSegTrainer.techniques")
    finally:
        sys.path.remove(str(REPO))
    from AsymSegLib.Presets import PRESETS, RECOMMENDED, techniqueSpec

    assert set(PRESETS) == set(techniques.PRESETS)
    assert RECOMMENDED == techniques.RECOMMENDED
    for name, preset in PRESETS.items():
        resolved = techniques.resolve_technique(techniqueSpec(name))
        default = techniques.resolve_technique(name)
        assert resolved == default, f"{name}: the panel's defaults differ from the engine's"
        for key in preset.defaults:
            assert getattr(resolved, key) == pytest.approx(preset.defaults[key]), (name, key)


def test_requirements_are_lower_bounds_only():
    from AsymSegLib.Dependencies import REQUIREMENTS, TORCH_REQUIREMENT

    for requirement in [TORCH_REQUIREMENT, *REQUIREMENTS.values()]:
        assert ">=" in requirement and "==" not in requirement and "<" not in requirement, requirement


def test_shim_folder_has_no_init():
    assert not (SHIMS / "slicer" / "__init__.py").exists()
