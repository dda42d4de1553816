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
