"""The case table in the module's parameter node, so a saved scene restores the Training data panel.

Qt-free. Cases are stored as MRML node references on the ``vtkMRMLScriptedModuleNode``
(``AsymSegCase<i>Channel<c>``, ``AsymSegCase<i>Annotation``, ``AsymSegCase<i>Mask``) plus
string parameters (count, roles, mask segments, channel names): references survive scene
save/load and node-ID remapping on import, which plain node IDs in strings would not. The
``parameterNodeWrapper`` fields of the same node (``ParameterNode.py``) use other names. The
panel receives a ``CaseStoreProtocol`` (``ParameterNodeCaseStore`` in Slicer, a fake in tests).
"""

from __future__ import annotations

import json
from typing import Protocol

from .Cases import CaseInput

COUNT = "AsymSegCaseCount"
CHANNELS = "AsymSegChannelNames"


def _channelRole(case: int, channel: int) -> str:
    return f"AsymSegCase{case}Channel{channel}"


def _annotationRole(case: int) -> str:
    return f"AsymSegCase{case}Annotation"


def _maskRole(case: int) -> str:
    return f"AsymSegCase{case}Mask"


def _roleParameter(case: int) -> str:
    return f"AsymSegCase{case}Role"


def _maskSegmentParameter(case: int) -> str:
    return f"AsymSegCase{case}MaskSegment"


def saveCases(parameterNode, cases: list[CaseInput], channelNames: list[str]) -> None:
    """Replace the stored table with ``cases``."""
    wasModifying = parameterNode.StartModify()
    try:
        oldCount = int(parameterNode.GetParameter(COUNT) or 0)
        oldChannels = len(loadChannelNames(parameterNode)) or 1
        for case in range(max(oldCount, len(cases))):
            for channel in range(max(oldChannels, len(channelNames), 1) + 4):
                parameterNode.RemoveNodeReferenceIDs(_channelRole(case, channel))
            parameterNode.RemoveNodeReferenceIDs(_annotationRole(case))
            parameterNode.RemoveNodeReferenceIDs(_maskRole(case))
            parameterNode.UnsetParameter(_roleParameter(case))
            parameterNode.UnsetParameter(_maskSegmentParameter(case))
        for index, case in enumerate(cases):
            for channel, node in enumerate(case.images):
                if node is not None:
                    parameterNode.SetNodeReferenceID(_channelRole(index, channel), node.GetID())
            if case.annotation is not None:
                parameterNode.SetNodeReferenceID(_annotationRole(index), case.annotation.GetID())
            if case.mask is not None:
                parameterNode.SetNodeReferenceID(_maskRole(index), case.mask.GetID())
                parameterNode.SetParameter(_maskSegmentParameter(index), case.maskSegment)
            parameterNode.SetParameter(_roleParameter(index), case.role)
        parameterNode.SetParameter(COUNT, str(len(cases)))
        parameterNode.SetParameter(CHANNELS, json.dumps(list(channelNames)))
    finally:
        parameterNode.EndModify(wasModifying)


def loadChannelNames(parameterNode) -> list[str]:
    text = parameterNode.GetParameter(CHANNELS)
    try:
        names = json.loads(text) if text else []
    except ValueError:
        names = []
    return [str(n) for n in names] if isinstance(names, list) else []


def loadCases(parameterNode) -> tuple[list[CaseInput], list[str]]:
    """(cases, channel names) as stored; missing nodes come back as None."""
    channelNames = loadChannelNames(parameterNode)
    count = int(parameterNode.GetParameter(COUNT) or 0)
    cases = []
    for index in range(count):
        images = [parameterNode.GetNodeReference(_channelRole(index, channel))
                  for channel in range(max(len(channelNames), 1))]
        role = parameterNode.GetParameter(_roleParameter(index)) or "train"
        cases.append(CaseInput(images, parameterNode.GetNodeReference(_annotationRole(index)), role,
                               mask=parameterNode.GetNodeReference(_maskRole(index)),
                               maskSegment=parameterNode.GetParameter(_maskSegmentParameter(index))))
    return cases, channelNames


class CaseStoreProtocol(Protocol):
    """Where the panel keeps its case table (a fake keeps it in memory in widget tests)."""

    def load(self, parameterNode) -> tuple[list[CaseInput], list[str]]: ...
    def save(self, parameterNode, cases: list[CaseInput], channelNames: list[str]) -> None: ...


class ParameterNodeCaseStore:
    """The case table in the module's parameter node (the ``CaseStoreProtocol`` the module uses)."""

    def load(self, parameterNode) -> tuple[list[CaseInput], list[str]]:
        return loadCases(parameterNode)

    def save(self, parameterNode, cases: list[CaseInput], channelNames: list[str]) -> None:
        saveCases(parameterNode, cases, channelNames)
