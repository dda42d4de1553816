"""AsymSeg: fine-tune a segmentation network on a few cases without under-segmenting rare structures.

3D Slicer scripted module. The training itself runs in a separate engine process
(``python -m AsymSegTrainer``, docs/protocol.md); this module never imports torch, MONAI or
the engine. Layout: metadata (``AsymSeg``), a thin widget (``AsymSegWidget``; the panel is
``AsymSegLib.Widget``, one file per section), the logic entry point (``AsymSegLogic``) and a
self test (``AsymSegTest``) that runs export -> engine -> import on generated data.
"""

import ast
import graphlib
import importlib
import os
import sys
import time
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from AsymSegLib.CaseStore import ParameterNodeCaseStore
from AsymSegLib.Dependencies import SlicerDependencies
from AsymSegLib.Devices import LocalDevices
from AsymSegLib.Logic import AsymSegCoreLogic

LIBRARY = "AsymSegLib"

PAPER = ('Z. Li, K. Kamnitsas, B. Glocker, "Analyzing Overfitting under Class Imbalance in Neural Networks for '
         'Image Segmentation", IEEE Transactions on Medical Imaging 40(3), 2021 (early access 2020), '
         'doi:10.1109/TMI.2020.3046692')


class AsymSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AsymSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["AsymSeg maintainers"]
        self.parent.helpText = (
            "Train or fine-tune a segmentation network on a few annotated cases so that rare classes (a small "
            "lesion, a tumour core) are not under-segmented on new cases.<br><br>"
            "<b>1. Training data</b>: one row per case, one volume per channel plus a labelmap or segmentation, "
            "an optional ROI mask (a labelmap or a segment), role train or validation. Problems are shown next to "
            "each row, which is named after the patient (DICOM patient name, else the first volume's name); an "
            "empty annotation is an error.<br>"
            "<b>2. Classes</b>: the classes found, their voxel counts and background:class ratio; mark the rare "
            "ones.<br>"
            "<b>3. Technique</b>: asymmetric focal loss is recommended first; the asymmetric margin, adversarial, "
            "mixup, augmentation and their combination, and the symmetric baselines are available. The training "
            "time is a budget; spacing, patch and batch size, iterations and learning rate are planned from the "
            "cases and the device unless set under Advanced.<br>"
            "<b>4. Run</b>: Plan shows the planned settings, why, and the estimated time (optional: Start plans "
            "too); training runs in the background with progress, ETA, loss and validation metrics; Cancel keeps "
            "the last checkpoint.<br>"
            "<b>5. Results</b>: apply a model to a volume set (a new segmentation, and per rare class its "
            "probability over the slices: where the model hesitates), and look at the margin charts of training "
            "vs unseen cases: the share of a rare class's voxels on the wrong side of the decision boundary "
            "(missed), much larger on unseen cases when the model over-fitted. A logit offset per rare class "
            "moves its boundary and updates the segmentation at once; Apply offsets keeps it. Each run's nodes "
            "(segmentation, metrics table in % and mm, overlays, charts) are in one folder 'AsymSeg &lt;run&gt;' of "
            "the Data module; while a prediction is shown the other segmentations are hidden, and hiding or "
            "deleting it shows them again. Correct and retrain: correct the prediction in Segment Editor, then "
            "'Use as training case' adds it to the training data (its volumes, the corrected segmentation, role "
            "train) and 'Fine-tune from this model' trains from the model that made it with a third of the time "
            "budget.<br>"
            "<b>6. Next case to annotate</b>: list unlabelled cases (a volume per channel of the Results model); "
            "Rank scores each by how much the model hesitates about the rare classes (the share of their candidate "
            "volume within 2 logits of the decision boundary) and lists the case to annotate first; double-click a "
            "case to show it and choose it for Apply model.<br><br>"
            f"Method: {PAPER}."
        )
        self.parent.acknowledgementText = (
            "AsymSeg implements the asymmetric large margin loss, asymmetric focal loss, asymmetric adversarial "
            "training, asymmetric mixup and asymmetric augmentation of " + PAPER + ". Networks: MONAI. "
            "Not for clinical use."
        )


def reloadLibrary(package: str = LIBRARY) -> list[str]:
    """``importlib.reload`` every loaded ``package.*`` module, each after the sibling modules it
    imports at its top, so every reloaded module binds reloaded names. Returns the reload order."""
    loaded = {name: module for name, module in sys.modules.items()
              if name.startswith(package + ".") and getattr(module, "__file__", None)}
    imports = {}
    for name, module in loaded.items():
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        imports[name] = {f"{package}.{node.module}" for node in tree.body
                         if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module} & loaded.keys()
    order = list(graphlib.TopologicalSorter(imports).static_order())
    for name in order:
        importlib.reload(loaded[name])
    return order


class AsymSegWidget(ScriptedLoadableModuleWidget):
    """Loads the .ui, creates the logic and its collaborators, hands them to ``AsymSegLib.Widget.AsymSegPanel``."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.panel = None
        self._observers = []
        self._boundNode = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from AsymSegLib.Widget import AsymSegPanel  # Qt: only inside Slicer

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AsymSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AsymSegLogic()
        self.panel = AsymSegPanel(self.ui, self.logic, SlicerDependencies(), LocalDevices(), ParameterNodeCaseStore())
        scene = slicer.mrmlScene
        self._observers = [scene.AddObserver(scene.StartCloseEvent, self.onSceneStartClose),
                           scene.AddObserver(scene.EndCloseEvent, self.onSceneEndClose),
                           scene.AddObserver(scene.EndImportEvent, self.onSceneEndImport)]
        self.initializeParameterNode()

    def onReload(self):
        """Developer reload: the AsymSegLib files too (Slicer's own reload re-reads AsymSeg.py only)."""
        reloadLibrary()
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self):
        for tag in self._observers:
            slicer.mrmlScene.RemoveObserver(tag)
        self._observers = []
        if self.panel is not None:
            self.panel.cleanup()

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        self._boundNode = None
        self.panel.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        self.panel.onSceneClosed()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event):
        self._boundNode = None  # a loaded scene brings its own parameter node: restore the panels from it
        self.initializeParameterNode()

    def initializeParameterNode(self):
        node = self.logic.getParameterNode()
        if node is not self._boundNode:
            self._boundNode = node
            self.panel.setParameterNode(node)


class AsymSegLogic(ScriptedLoadableModuleLogic, AsymSegCoreLogic):
    """The logic entry point: export, job, engine process and import (``AsymSegLib.Logic``), Qt-free.

    Usable from Slicer's Python console, e.g.::

        logic = slicer.util.getModuleLogic("AsymSeg")
        prepared = logic.prepareTraining(cases, ["t1"], TrainingSettings(iterations=500), "/tmp/run")
        task = logic.startTraining(prepared); task.wait()
    """

    def __init__(self, python=None, engineDirectory=None, cancelTimeout=60.0):
        ScriptedLoadableModuleLogic.__init__(self)
        AsymSegCoreLogic.__init__(self, python=python, engineDirectory=engineDirectory, cancelTimeout=cancelTimeout)


class AsymSegTest(ScriptedLoadableModuleTest):
    """Export -> real engine (3 iterations, tiny network, CPU) -> prediction, margin charts and probabilities imported.

    Runs inside Slicer (Slicer's CI, ``slicer_add_python_unittest``) and under pytest with
    slicer-core (Testing/module). ``engineDirectory``/``python`` may be set before running.
    """

    engineDirectory = None
    python = None
    timeout = 600.0

    def setUp(self):
        if hasattr(slicer, "app"):
            slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        try:
            self.test_AsymSeg_TrainApplyImport()
        finally:
            self.doCleanups()  # Slicer calls runTest() directly, outside unittest's run()

    # -------------------------------------------------------------- helpers

    def _wait(self, task):
        deadline = time.time() + self.timeout
        while task.running:
            task.poll()
            if hasattr(slicer, "app"):
                slicer.app.processEvents()
            if time.time() > deadline:
                task.process.killTree()
                self.fail("The engine did not finish in time:\n" + "\n".join(task.log[-20:]))
            time.sleep(0.05)
        return task.state

    def _makeCases(self):
        import numpy as np

        from AsymSegLib.Cases import CaseInput

        cases = []
        shape = (24, 24, 24)
        grid = np.indices(shape)
        for index, role in enumerate(["train", "train", "validation"]):
            rng = np.random.default_rng(index)
            center = np.array(shape) // 2 + rng.integers(-3, 4, 3)
            label = (np.sqrt(sum((grid[a] - center[a]) ** 2 for a in range(3))) <= 3).astype(np.uint8)
            image = (rng.normal(0.0, 0.3, shape) + 3.0 * label).astype(np.float32)
            ijkToRas = np.diag([1.0, 1.2, 1.5, 1.0])
            ijkToRas[:3, 3] = (-10.0 + index, 5.0, 2.5)
            volume = slicer.util.addVolumeFromArray(image, ijkToRas, name=f"AsymSegTest_image{index}")
            labelmap = slicer.util.addVolumeFromArray(label, ijkToRas, name=f"AsymSegTest_label{index}",
                                                      nodeClassName="vtkMRMLLabelMapVolumeNode")
            cases.append(CaseInput([volume], labelmap, role))
        return cases

    # -------------------------------------------------------------- the test

    def test_AsymSeg_TrainApplyImport(self):
        import shutil
        import tempfile

        import numpy as np

        from AsymSegLib.JobSpec import TrainingSettings
        from AsymSegLib.LogitPlots import preferredChart, showChart
        from AsymSegLib.Runs import RunStatus

        from AsymSegLib.Dependencies import checkDependencies

        missing = checkDependencies()
        if not missing.ok:  # e.g. a CI machine without the PyTorch extension's torch
            self.skipTest(f"the engine's Python packages are not installed: {missing.describe()}")
        self.delayDisplay("Generating three small cases")
        cases = self._makeCases()
        before = {n.GetID(): np.array(slicer.util.arrayFromVolume(n), copy=True)
                  for c in cases for n in (*c.images, c.annotation)}
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        logic = AsymSegLogic(python=self.python, engineDirectory=self.engineDirectory)
        settings = TrainingSettings(preset="asymmetric-focal", iterations=3, patchSize=(16, 16, 16), batchSize=2,
                                    learningRate=1e-3, validationInterval=2, device="cpu",
                                    network={"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1})
        folder = tempfile.mkdtemp(prefix="AsymSegTest_")
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)

        self.delayDisplay("Exporting and training (3 iterations on the CPU)")
        prepared = logic.prepareTraining(cases, ["image"], settings, os.path.join(folder, "run"))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        task = logic.startTraining(prepared)
        state = self._wait(task)
        self.assertEqual(state.status, RunStatus.FINISHED, f"{state.message} {state.hint}\n" + "\n".join(task.log[-20:]))
        types = [e.type.value for e in task.events]
        self.assertEqual(types[0], "start")
        self.assertEqual(types[-1], "done")
        iterations = [e.iteration for e in task.events if e.type.value == "progress" and e.phase == "train"]
        # progress is throttled by the engine (twice a second): first and last always come, in order
        self.assertEqual((iterations[0], iterations[-1]), (1, 3))
        self.assertEqual(iterations, sorted(set(iterations)))
        self.assertTrue(state.model and os.path.isfile(state.model))

        self.delayDisplay("Importing the margin charts")
        results = logic.importTrainingResults(task)
        self.assertIsNotNone(results.charts)
        for className, chart in results.charts.charts.items():
            sides = [chart.GetNthPlotSeriesNode(i).GetAttribute("AsymSeg.Side")
                     for i in range(chart.GetNumberOfPlotSeriesNodes())]
            self.assertIn("train", sides, className)
            self.assertIn("unseen", sides, className)
        showChart(preferredChart(results.charts, task.context.get("rarity")))

        self.delayDisplay("Applying the model to the validation case")
        target = cases[2]
        inference = logic.prepareInference(state.model, target.images, os.path.join(folder, "infer"),
                                           groundTruth=target.annotation, device="cpu")
        inferTask = logic.startInference(inference)
        inferState = self._wait(inferTask)
        self.assertEqual(inferState.status, RunStatus.FINISHED, inferState.message)
        imported = logic.importInferenceResults(inferTask, target.images[0])
        segmentation = imported.segmentation.GetSegmentation()
        self.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())],
                         ["label_1"])
        reference = imported.segmentation.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        self.assertIs(reference, target.images[0])
        self.assertIsNotNone(imported.metricsTable)
        self.assertEqual([n.GetName() for n in imported.overlays.values()], ["AsymSegTest_image2 label_1 probability"])
        np.testing.assert_array_equal(imported.offsets.labels({"label_1": -100.0}), 0)
        if hasattr(slicer, "app"):
            slicer.util.setSliceViewerLayers(background=target.images[0], fit=True)

        self.delayDisplay("Checking that the inputs are unchanged")
        for nodeId, array in before.items():
            node = slicer.mrmlScene.GetNodeByID(nodeId)
            self.assertIsNotNone(node)
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
        self.delayDisplay("AsymSeg self test passed")
        self.results = {"task": task, "inferTask": inferTask, "charts": results.charts, "imported": imported}
