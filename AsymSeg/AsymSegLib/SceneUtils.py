"""Small MRML helpers shared by annotation reading, export, result import and plots (Qt-free).

``slicer.mrmlScene`` and ``slicer`` itself are reached at call time, so these files import
under slicer-core before any scene exists.
"""

from __future__ import annotations

import os


def mrmlScene():
    """The current scene (``slicer.mrmlScene``)."""
    import slicer

    return slicer.mrmlScene


def volumeStorage(path):
    """A standalone ``vtkMRMLVolumeArchetypeStorageNode`` for ``path``: reads or writes a volume
    node's data without being attached to the node or added to the scene."""
    import slicer

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(os.fspath(path))
    return storage


def readVolumeData(volumeNode, path, what: str):
    """Read the file ``path`` into ``volumeNode`` (in a scene or not); RuntimeError naming ``what`` and the
    file when it cannot be read. Returns the node."""
    storage = volumeStorage(path)
    storage.SetSingleFile(1)
    if not storage.ReadData(volumeNode):
        raise RuntimeError(f"Could not read {what} {path}.")
    return volumeNode


def removeWithDependents(scene, volumeNode) -> None:
    """Remove a temporary volume node with its display and storage nodes and its own (not
    built-in) colour node, so the scene ends with the nodes it had before."""
    display = volumeNode.GetDisplayNode()
    colorNode = display.GetColorNode() if display is not None else None
    storage = volumeNode.GetStorageNode()
    scene.RemoveNode(volumeNode)
    for node in (display, storage):
        if node is not None and scene.IsNodePresent(node):
            scene.RemoveNode(node)
    if colorNode is not None and not colorNode.GetSingletonTag() and scene.IsNodePresent(colorNode):
        scene.RemoveNode(colorNode)


# ---------------------------------------------------------------------------- run folders

RUN_FOLDER_ATTRIBUTE = "AsymSeg.RunFolder"


def subjectHierarchy():
    """The scene's subject hierarchy node (created when the scene has none)."""
    import slicer

    return slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(mrmlScene())


def runFolderItem(runFolder, name: str = "") -> int:
    """The subject-hierarchy folder of a run (``AsymSeg <run folder's name>``, or ``name``), under the scene:
    the one already made for the same run folder, else a new one. Returns its item ID."""
    shNode = subjectHierarchy()
    key = os.fspath(runFolder)
    children = vtkIdList()
    shNode.GetItemChildren(shNode.GetSceneItemID(), children, True)
    for index in range(children.GetNumberOfIds()):
        item = children.GetId(index)
        if shNode.GetItemAttribute(item, RUN_FOLDER_ATTRIBUTE) == key:
            return item
    item = shNode.CreateFolderItem(shNode.GetSceneItemID(), name or f"AsymSeg {os.path.basename(key.rstrip(os.sep))}")
    shNode.SetItemAttribute(item, RUN_FOLDER_ATTRIBUTE, key)
    return item


def placeInFolder(folderItem: int, *nodes) -> None:
    """Put data nodes (None skipped) under the subject-hierarchy item ``folderItem``; a node the hierarchy does
    not list yet (no Subject hierarchy module logic, as under slicer-core) gets its item there."""
    if not folderItem:
        return
    shNode = subjectHierarchy()
    for node in nodes:
        if node is None:
            continue
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, folderItem)
        else:
            shNode.CreateItem(folderItem, node)


def folderOf(node) -> int:
    """The subject-hierarchy parent item of a data node (0 when it has none)."""
    shNode = subjectHierarchy()
    item = shNode.GetItemByDataNode(node)
    return shNode.GetItemParent(item) if item else 0


def vtkIdList():
    import vtk

    return vtk.vtkIdList()


# ---------------------------------------------------------------------------- segmentation visibility

VISIBILITY_ATTRIBUTE = "AsymSeg.VisibilityBeforePrediction"


def hideOtherSegmentations(shown, scene=None) -> list:
    """Hide every segmentation but ``shown`` (a prediction) in the views. Each display node hidden here keeps
    the visibility it had (the attribute ``VISIBILITY_ATTRIBUTE``, saved with the scene) until
    ``restoreSegmentations``; one already remembered (hidden for an earlier prediction) keeps its first value.
    Returns the display nodes hidden now. ``scene``: the current one by default."""
    scene = scene or mrmlScene()
    hidden = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if node is shown or (shown is not None and node.GetID() == shown.GetID()):
            continue
        for d in range(node.GetNumberOfDisplayNodes()):
            display = node.GetNthDisplayNode(d)
            if display is None or not display.GetVisibility():
                continue
            if display.GetAttribute(VISIBILITY_ATTRIBUTE) is None:
                display.SetAttribute(VISIBILITY_ATTRIBUTE, "1")
            display.SetVisibility(False)
            hidden.append(display)
    return hidden


def restoreSegmentations(scene=None) -> list:
    """Give every segmentation display node hidden by ``hideOtherSegmentations`` its remembered visibility back.
    Returns the display nodes restored. ``scene``: the current one by default."""
    scene = scene or mrmlScene()
    restored = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationDisplayNode")):
        display = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationDisplayNode")
        value = display.GetAttribute(VISIBILITY_ATTRIBUTE)
        if value is None:
            continue
        display.RemoveAttribute(VISIBILITY_ATTRIBUTE)
        display.SetVisibility(value == "1")
        restored.append(display)
    return restored


def _weakCallback(owner, method: str):
    """An observer callback calling ``owner.<method>()`` while ``owner`` lives (a no-op after)."""
    import weakref

    reference = weakref.ref(owner)

    def callback(*_):
        target = reference()
        if target is not None:
            getattr(target, method)()

    return callback


class PredictionVisibility:
    """While a prediction is shown, the other segmentations are hidden (``hideOtherSegmentations``); hiding the
    prediction (its display node's visibility) or removing it from the scene gives them their visibility back,
    showing it again hides them again. One prediction is followed at a time: following a new one stops
    following the last (whose own visibility is then remembered and hidden like any other segmentation's)."""

    prediction = None
    _display = None
    _scene = None
    _visible = False
    _observers: tuple = ()   # (subject, tag); class defaults: callbacks stay safe during interpreter shutdown

    def follow(self, prediction) -> None:
        import vtk

        self.stop()
        scene = self._scene = mrmlScene()
        self._observers = []
        self.prediction = prediction
        self._display = prediction.GetDisplayNode()
        self._visible = bool(self._display is not None and self._display.GetVisibility())
        if self._visible:
            hideOtherSegmentations(prediction, scene)
        # The observers reach this object through a weak reference: no cycle through VTK that Python's
        # garbage collector cannot see (collected only at exit, where it crashes).
        if self._display is not None:
            self._observers.append((self._display, self._display.AddObserver(
                vtk.vtkCommand.ModifiedEvent, _weakCallback(self, "_onDisplayModified"))))
        self._observers.append((scene, scene.AddObserver(scene.NodeRemovedEvent, _weakCallback(self, "_onNodeRemoved"))))
        self._observers.append((scene, scene.AddObserver(scene.StartCloseEvent, _weakCallback(self, "stop"))))

    def _onDisplayModified(self) -> None:
        if self._display is None:
            return
        visible = bool(self._display.GetVisibility())
        if visible != self._visible:
            self._visible = visible
            hideOtherSegmentations(self.prediction, self._scene) if visible else restoreSegmentations(self._scene)

    def _onNodeRemoved(self) -> None:
        if self.prediction is not None and not self._scene.IsNodePresent(self.prediction):
            self.restore()

    def restore(self) -> None:
        """Stop following the prediction and give the other segmentations their visibility back."""
        scene = self._scene
        self.stop()
        restoreSegmentations(scene)

    def stop(self) -> None:
        """Stop following the prediction (the segmentations stay as they are)."""
        for subject, tag in self._observers:
            subject.RemoveObserver(tag)
        self._observers = []
        self.prediction, self._display, self._scene, self._visible = None, None, None, False
