"""Helpers of the module tests: real MRML from slicer-core (the ``slicer-core`` package on PyPI), no Qt.

``AsymSeg/`` goes on sys.path (the module's script folder in Slicer) and ``shims/`` before
``import slicer`` so ``slicer.ScriptedLoadableModule`` exists. Each test gets a fresh scene
with the Colors, Volumes, Segmentations and Plots logics registered like in Slicer.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULE_DIR = REPO / "AsymSeg"
SHIMS = HERE / "shims"
# The AsymSegLib files that may import qt (the panel and its sections; Slicer only)
QT_FILES = frozenset({"Widget.py", "QtUtils.py", "TaskPoller.py", "CasesSection.py", "ClassesSection.py",
                      "TechniqueSection.py", "RunSection.py", "ResultsSection.py", "OffsetsSection.py",
                      "RetrainSection.py", "RankSection.py"})

for path in (str(MODULE_DIR), str(SHIMS)):
    if path not in sys.path:
        sys.path.insert(0, path)

import vtk  # noqa: E402

vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
vtk.vtkObject.GlobalWarningDisplayOff()

import slicer  # noqa: E402
import slicer.util  # noqa: E402

if "slicer.ScriptedLoadableModule" not in sys.modules:  # slicer imported earlier by another test folder
    slicer.__path__.append(str(SHIMS / "slicer"))
    shim = importlib.import_module("slicer.ScriptedLoadableModule")
    for _name in dir(shim):
        if not _name.startswith("_"):
            setattr(slicer, _name, getattr(shim, _name))

from AsymSegLib.Dependencies import DependencyStatus  # noqa: E402
from AsymSegLib.SceneUtils import removeWithDependents  # noqa: E402


class MrmlEnvironment(types.SimpleNamespace):
    """The scene and the logics a test scene needs; ``slicer.mrmlScene`` points at the scene."""


def attachLogic(logic, app, scene):
    """Give a logic (module or slice logic) the application logic and the scene, as Slicer does."""
    logic.SetMRMLApplicationLogic(app)
    logic.SetMRMLScene(scene)
    return logic


def buildEnvironment() -> MrmlEnvironment:
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = attachLogic(slicer.vtkSlicerColorLogic(), app, scene)
    app.SetColorLogic(colors)
    app.SetModuleLogic("Colors", colors)
    layout = slicer.vtkMRMLLayoutLogic()
    layout.SetMRMLScene(scene)
    logics = {"volumes": slicer.vtkSlicerVolumesLogic(), "segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
              "plots": slicer.vtkSlicerPlotsLogic()}
    for key, logic in logics.items():
        app.SetModuleLogic(key.capitalize(), attachLogic(logic, app, scene))
    slicer.modules = types.SimpleNamespace(**{k: types.SimpleNamespace(logic=(lambda lg=lg: lg))
                                              for k, lg in logics.items()})
    return MrmlEnvironment(scene=scene, app=app, colors=colors, layout=layout, **logics)


# ---------------------------------------------------------------------------- generated data

SHAPE = (24, 24, 24)  # (k, j, i)


def ijkToRas(spacing=(1.0, 1.2, 1.5), origin=(-10.0, 5.0, 2.5), rotate=True) -> np.ndarray:
    """An IJK-to-RAS matrix with a non-trivial rotation, anisotropic spacing and an offset origin."""
    angle = np.deg2rad(10.0) if rotate else 0.0
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rot = np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]]) @ rot  # LPS-like axes, as from DICOM
    matrix = np.eye(4)
    matrix[:3, :3] = rot @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def blobCase(seed: int, shape=SHAPE, radius=3.0, center=None):
    """(image, label): noise plus a bright ball labelled 1 (and a dim slab labelled 2 when asked)."""
    rng = np.random.default_rng(seed)
    center = center or (shape[0] // 2 + rng.integers(-3, 4), shape[1] // 2 + rng.integers(-3, 4),
                        shape[2] // 2 + rng.integers(-3, 4))
    grid = np.indices(shape)
    distance = np.sqrt(sum((grid[a] - center[a]) ** 2 for a in range(3)))
    label = (distance <= radius).astype(np.uint8)
    image = rng.normal(0.0, 0.3, shape).astype(np.float32) + 3.0 * label
    return image, label


def addVolume(array, name, matrix=None, labelmap=False):
    return slicer.util.addVolumeFromArray(array, ijkToRas() if matrix is None else matrix, name=name,
                                          nodeClassName="vtkMRMLLabelMapVolumeNode" if labelmap else None)


def addColorTable(name: str, entries: dict):
    """A user colour table node: label value -> (name, (r, g, b))."""
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetNumberOfColors(max(entries) + 1)
    for value, (label, rgb) in entries.items():
        table.SetColor(value, label, *rgb, 1.0)
    return table


def addSegmentation(labelArray, reference, names: dict, name="seg"):
    """A segmentation node made from a label array (value -> segment name), reference geometry set."""
    scene = slicer.mrmlScene
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    temp = slicer.util.addVolumeFromArray(labelArray, slicer.util.arrayFromVTKMatrix(matrix), name="__tmp__",
                                          nodeClassName="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(temp, segmentation)
    seg = segmentation.GetSegmentation()
    for index in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(index)
        segment.SetName(names[int(segment.GetLabelValue())])
    removeWithDependents(scene, temp)
    return segmentation


def softmax(logits, axis=-1):
    """Softmax of an array of logits along ``axis`` (float32)."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32)


def writeProbabilityArray(array, reference, path):
    """Write a (k, j, i, classes) array as a vector image in ``reference``'s geometry (the engine's
    ``<stem>_probabilities.nii.gz``), via a node of no scene."""
    from AsymSegLib.SceneExport import writeVolume

    node = slicer.vtkMRMLVectorVolumeNode()
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    return writeVolume(node, path)


def readVolumeFile(path):
    """Read an exported file into a node of no scene (the test scene is left as it is)."""
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node), path
    return node


def engineAvailable() -> tuple[bool, str]:
    """Whether ``python -m AsymSegTrainer train`` can run (the package and its training module import)."""
    import importlib.util

    sys.path.insert(0, str(REPO))
    try:
        for name in ("AsymSegTrainer", "AsymSegTrainer.cli", "AsymSegTrainer.training"):
            if importlib.util.find_spec(name) is None:
                return False, f"the engine package has no module {name} yet (AsymSegTrainer/ is being written)"
    except Exception as error:  # noqa: BLE001 - the package itself does not import
        return False, f"the AsymSegTrainer package cannot be imported ({type(error).__name__}: {error})"
    finally:
        sys.path.remove(str(REPO))
    return True, ""


class FakeDependencies:
    """The engine's packages (a ``DependenciesProtocol``): ``missing`` until installed; records every install.

    ``question`` empty: the installer asks by itself (like ``pip_ensure``).
    """

    def __init__(self, missing=(), question="Install {}?"):
        self.status = DependencyStatus("torch" in missing, [m for m in missing if m != "torch"])
        self.question = question
        self.installed: list[str] = []

    def check(self):
        return self.status

    def installQuestion(self, status):
        return self.question.format(status.describe())

    def install(self, status):
        self.installed.append(status.describe())
        self.status = DependencyStatus(False, [])
