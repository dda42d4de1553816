"""Render the README pictures headless (EGL) from a test scene: not a test, run by hand.

    python Testing/module/render_screenshots.py [--iterations 1500] [--out Resources/Screenshots]

Phantom cases (the engine's generator) are loaded into a slicer-core MRML scene, trained
with the module's logic and the real engine (2 training cases, 1 validation case, asymmetric
focal loss), the model is applied to an unseen case with ground truth, and three pictures are
rendered: the slice view with the prediction (fill) and the ground truth (outline), the same
slice with the lesion probability over it (where the model hesitates), and the lesion-class
margin chart (training cases vs the unseen case, with its sentence) of the plot-series nodes.
Needs Debian libegl1 libegl-mesa0 libgl1-mesa-dri; the tests never do.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.pop("DISPLAY", None)
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# sets up sys.path, quiet VTK and the slicer shim
from asymseg_module_testing import REPO, addColorTable, attachLogic, buildEnvironment  # noqa: E402

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402

from AsymSegLib.Cases import CaseInput  # noqa: E402
from AsymSegLib.JobSpec import TrainingSettings  # noqa: E402
from AsymSegLib.Logic import AsymSegCoreLogic  # noqa: E402
from AsymSegLib.Probabilities import OVERLAY_OPACITY, OVERLAY_THRESHOLD  # noqa: E402
from AsymSegLib.Runs import RunStatus  # noqa: E402


def readVolume(path: Path, name: str, labelmap: bool = False):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode",
                                              name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise RuntimeError(f"cannot read {path}")
    node.CreateDefaultDisplayNodes()
    return node


def phantomCases(folder: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from AsymSegTrainer.phantoms import make_phantom_dataset  # the engine's generator (a script may use it)

    dataset = make_phantom_dataset(folder / "phantoms", num_cases=4)
    table = addColorTable("phantom classes", {1: ("lesion", (0.95, 0.75, 0.1))})
    cases = {}
    for index in range(4):
        case = f"phantom_{index:03d}"
        images = [readVolume(dataset / "imagesTr" / f"{case}_{c:04d}.nii.gz", f"{case} {name}")
                  for c, name in enumerate(("T1", "T2"))]
        label = readVolume(dataset / "labelsTr" / f"{case}.nii.gz", f"{case} lesion", labelmap=True)
        label.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
        cases[case] = (images, label)
    return cases


def wait(task, timeout=1800):
    deadline = time.time() + timeout
    while task.running:
        task.poll()
        if time.time() > deadline:
            task.process.killTree()
            raise TimeoutError("\n".join(task.log[-20:]))
        time.sleep(0.2)
    return task.state


def renderSlice(env, background, segmentations, path: Path, caption: str, foreground=None, size=(560, 560)):
    scene = env.scene
    sliceNode = scene.GetNodeByID("vtkMRMLSliceNodeRed")
    sliceLogic = attachLogic(slicer.vtkMRMLSliceLogic(), env.app, scene)
    sliceLogic.SetSliceNode(sliceNode)
    composite = sliceLogic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(background.GetID())
    composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
    composite.SetForegroundOpacity(OVERLAY_OPACITY)
    sliceNode.SetDimensions(size[0], size[1], 1)
    sliceLogic.FitSliceToAll(size[0], size[1])
    # the axial slice with the most ground-truth lesion voxels
    truth = segmentations[-1]
    segmentId = truth.GetSegmentation().GetNthSegmentID(0)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(truth, segmentId, background)
    k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    matrix = vtk.vtkMatrix4x4()
    background.GetIJKToRASMatrix(matrix)
    center = matrix.MultiplyPoint([mask.shape[2] / 2, mask.shape[1] / 2, k, 1])
    sliceNode.JumpSliceByOffsetting(*center[:3])
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    mapper = vtk.vtkImageMapper()
    mapper.SetInputConnection(sliceLogic.GetImageDataConnection())
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    renderer.AddViewProp(actor)
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(env.app)
    factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(sliceNode)
    text = vtk.vtkTextActor()
    text.SetInput(caption)
    text.GetTextProperty().SetFontSize(15)
    text.GetTextProperty().SetColor(1, 1, 1)
    text.SetPosition(8, 8)
    renderer.AddViewProp(text)
    window.Render()
    writePng(window, path)


def renderChart(chartNode, path: Path, size=(760, 480), captionHeight=64):
    """The chart's series, title and axes, and under them its sentence (``AsymSeg.Summary``), wrapped."""
    view = vtk.vtkContextView()
    view.GetRenderWindow().SetOffScreenRendering(1)
    view.GetRenderWindow().SetSize(*size)
    view.GetRenderer().SetBackground(1, 1, 1)
    chart = vtk.vtkChartXY()
    chart.SetAutoSize(False)
    chart.SetSize(vtk.vtkRectf(0, captionHeight, size[0], size[1] - captionHeight))
    view.GetScene().AddItem(chart)
    chart.SetTitle(chartNode.GetTitle())
    chart.GetTitleProperties().SetFontSize(15)
    chart.SetShowLegend(True)
    chart.GetLegend().SetHorizontalAlignment(vtk.vtkChartLegend.RIGHT)
    chart.GetLegend().SetVerticalAlignment(vtk.vtkChartLegend.TOP)
    chart.GetAxis(vtk.vtkAxis.LEFT).SetTitle(chartNode.GetYAxisTitle())
    chart.GetAxis(vtk.vtkAxis.BOTTOM).SetTitle(chartNode.GetXAxisTitle())
    for index in range(chartNode.GetNumberOfPlotSeriesNodes()):
        series = chartNode.GetNthPlotSeriesNode(index)
        table = series.GetTableNode().GetTable()
        line = chart.AddPlot(vtk.vtkChart.LINE)
        line.SetInputData(table, series.GetXColumnName(), series.GetYColumnName())
        line.SetLabel(series.GetName())
        r, g, b = series.GetColor()
        line.SetColor(int(255 * r), int(255 * g), int(255 * b), 255)
        line.SetWidth(series.GetLineWidth())
        pens = {slicer.vtkMRMLPlotSeriesNode.LineStyleDash: vtk.vtkPen.DASH_LINE,
                slicer.vtkMRMLPlotSeriesNode.LineStyleDot: vtk.vtkPen.DOT_LINE}
        if series.GetLineStyle() in pens:
            line.GetPen().SetLineType(pens[series.GetLineStyle()])
    caption = vtk.vtkTextActor()
    caption.SetInput(textwrap.fill(chartNode.GetAttribute("AsymSeg.Summary") or "", 100))
    caption.GetTextProperty().SetFontSize(14)
    caption.GetTextProperty().SetColor(0.1, 0.1, 0.1)
    caption.SetPosition(12, 10)
    view.GetRenderer().AddViewProp(caption)
    view.GetRenderWindow().Render()
    writePng(view.GetRenderWindow(), path)


def writePng(window, path: Path):
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetCompressionLevel(9)
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)  # 13 min on 2 cores; 300 gave validation DSC 2%
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="asymseg-pictures-"))
    args.out.mkdir(parents=True, exist_ok=True)
    env = buildEnvironment()
    cases = phantomCases(work)
    roles = {"phantom_000": "train", "phantom_001": "train", "phantom_002": "validation"}
    inputs = [CaseInput(cases[c][0], cases[c][1], role) for c, role in roles.items()]
    logic = AsymSegCoreLogic(python=sys.executable)
    settings = TrainingSettings(preset="asymmetric-focal", iterations=args.iterations, patchSize=(32, 32, 32),
                                batchSize=4, learningRate=1e-3, validationInterval=50, device="cpu",
                                network={"name": "unet", "channels": [8, 16, 32], "strides": [2, 2],
                                         "num_res_units": 1})
    started = time.time()
    task = logic.startTraining(logic.prepareTraining(inputs, ["T1", "T2"], settings, work / "run"))
    state = wait(task)
    assert state.status is RunStatus.FINISHED, state.message
    print(f"trained in {time.time() - started:.0f} s: {state.metricsLine()}")
    images, truthLabel = cases["phantom_003"]
    inference = logic.prepareInference(state.model, images, work / "infer", groundTruth=truthLabel, device="cpu")
    inferTask = logic.startInference(inference)
    assert wait(inferTask).status is RunStatus.FINISHED
    imported = logic.importInferenceResults(inferTask, images[0], name="phantom_003 AsymSeg")
    truth = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "phantom_003 ground truth")
    truth.CreateDefaultDisplayNodes()
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(truthLabel, truth)
    truth.GetSegmentation().GetNthSegment(0).SetColor(0.2, 0.9, 0.3)
    truth.GetDisplayNode().SetVisibility2DFill(False)
    truth.GetDisplayNode().SetSliceIntersectionThickness(2)
    imported.segmentation.GetDisplayNode().SetOpacity2DFill(0.55)
    renderSlice(env, images[0], [imported.segmentation, truth], args.out / "prediction-overlay.png",
                "AsymSeg prediction (fill) vs ground truth (outline), unseen case")
    imported.segmentation.GetDisplayNode().SetVisibility2DFill(False)
    renderSlice(env, images[0], [imported.segmentation, truth], args.out / "probability-overlay.png",
                f"Lesion probability (heat; clear below {OVERLAY_THRESHOLD:.0%}): where the model hesitates",
                imported.overlays["lesion"])
    renderChart(imported.charts.charts["lesion"], args.out / "logit-histograms.png")


if __name__ == "__main__":
    main()
