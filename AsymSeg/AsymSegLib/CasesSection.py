"""Section 1, Training data (Qt): channel names, one row per case, problems shown inline.

Each row holds one volume per channel, an annotation (labelmap or segmentation), an optional
ROI mask (a labelmap, or a segmentation with the segment to use) and a role.
The table is kept in the parameter node through the injected ``CaseStoreProtocol``, so a
saved scene restores it; ``changed`` is emitted after every edit (already saved and checked).
``addCase`` appends a case made elsewhere (a corrected prediction, ``RetrainSection``).
"""

from __future__ import annotations

from typing import Optional

import qt

from .Cases import ROLES, CaseInput, Issue, isSegmentation
from .CaseStore import CaseStoreProtocol
from .Logic import TrainingLogicProtocol
from .QtUtils import (ERROR_COLOR, OK_COLOR, WARNING_COLOR, comboData, nodeSelector, richText, setTableColumns,
                      setTableRow, sideBySide, volumeSelector)
from .Signal import Signal

DEFAULT_CHANNEL = "image"
ALL_SEGMENTS = ("all segments", "")  # (label, segment ID) of the union of a segmentation mask's segments
LABEL_NODE_TYPES = ["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"]


class CaseRow:
    """The widgets of one row of the case table."""

    def __init__(self, channelCount: int):
        self.channelSelectors = [volumeSelector("Input volume of this channel") for _ in range(channelCount)]
        self.annotationSelector = nodeSelector(LABEL_NODE_TYPES, "Annotation: a labelmap volume or a segmentation")
        self.maskSelector = nodeSelector(LABEL_NODE_TYPES, "Optional region of interest: a labelmap (non-zero = "
                                                           "inside) or a segmentation; normalisation statistics, "
                                                           "background patches and logit statistics stay inside it")
        self.maskSegmentSelector = qt.QComboBox()
        self.maskSegmentSelector.toolTip = "The segment of the mask segmentation that is the region of interest"
        self.maskCell = sideBySide(self.maskSelector, self.maskSegmentSelector)
        self.maskSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.listMaskSegments)
        self.listMaskSegments(None)
        self.roleSelector = qt.QComboBox()
        for role in ROLES:
            self.roleSelector.addItem(role)
        self.roleSelector.toolTip = "train: used for training; validation: unseen, for metrics and margin charts"
        self.statusLabel = qt.QLabel()

    def listMaskSegments(self, mask) -> None:
        """The segments of a segmentation mask to choose from (hidden for a labelmap or no mask)."""
        combo = self.maskSegmentSelector
        combo.blockSignals(True)  # the row changes once, with the mask node
        combo.clear()
        if isSegmentation(mask):
            combo.addItem(*ALL_SEGMENTS)
            segmentation = mask.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                combo.addItem(segmentation.GetNthSegment(index).GetName(), segmentation.GetNthSegmentID(index))
        combo.blockSignals(False)
        combo.setVisible(isSegmentation(mask))

    def setCase(self, case: CaseInput) -> None:
        for selector, image in zip(self.channelSelectors, case.images):
            selector.setCurrentNode(image)
        self.annotationSelector.setCurrentNode(case.annotation)
        self.maskSelector.setCurrentNode(case.mask)
        self.maskSegmentSelector.setCurrentIndex(max(self.maskSegmentSelector.findData(case.maskSegment), 0))
        self.roleSelector.setCurrentIndex(max(self.roleSelector.findText(case.role), 0))

    def toCase(self) -> CaseInput:
        mask = self.maskSelector.currentNode()
        return CaseInput([s.currentNode() for s in self.channelSelectors], self.annotationSelector.currentNode(),
                         self.roleSelector.currentText, mask=mask,
                         maskSegment=(comboData(self.maskSegmentSelector) or "") if isSegmentation(mask) else "")

    def showIssues(self, issues: list[Issue]) -> None:
        if any(i.isError for i in issues):
            self.statusLabel.text = f"<span style='color:{ERROR_COLOR}'>&#10007; fix</span>"
        elif issues:
            self.statusLabel.text = f"<span style='color:{WARNING_COLOR}'>&#9888; check</span>"
        else:
            self.statusLabel.text = f"<span style='color:{OK_COLOR}'>&#10003;</span>"
        self.statusLabel.toolTip = "\n".join(str(i) for i in issues) or "No problem found"


class CasesSection:
    def __init__(self, ui, logic: TrainingLogicProtocol, store: CaseStoreProtocol):
        self.ui = ui
        self.logic = logic
        self.store = store
        self.parameters = None               # parameterNodeWrapper instance
        self.rows: list[CaseRow] = []
        self.issues: list[Issue] = []        # as last shown
        self.changed = Signal()              # the cases changed (saved and checked)
        self.channelsChanged = Signal()      # the channel names changed
        self._updating = False
        ui.casesTable.verticalHeader().setVisible(False)
        ui.channelNamesLineEdit.editingFinished.connect(self.onChannelNamesChanged)
        ui.addCaseButton.clicked.connect(self.onAddCase)
        ui.removeCaseButton.clicked.connect(self.onRemoveCase)

    def setParameters(self, parameters) -> None:
        """Restore the table saved in ``parameters``' node (None: unbound, the table is kept)."""
        self.parameters = parameters
        if parameters is None:
            return
        cases, channels = self.store.load(parameters.parameterNode)
        self._updating = True
        try:
            self.ui.channelNamesLineEdit.text = ", ".join(channels) if channels else DEFAULT_CHANNEL
            self.rebuild(cases)
        finally:
            self._updating = False
        self.onCasesChanged()

    def channelNames(self) -> list[str]:
        names = [n.strip() for n in self.ui.channelNamesLineEdit.text.split(",") if n.strip()]
        return names or [DEFAULT_CHANNEL]

    def cases(self) -> list[CaseInput]:
        return [row.toCase() for row in self.rows]

    def hasErrors(self) -> bool:
        return any(i.isError for i in self.issues)

    def rebuild(self, cases: list[CaseInput]) -> None:
        """One row per case, one volume column per channel."""
        channels = self.channelNames()
        table = self.ui.casesTable
        wasUpdating, self._updating = self._updating, True
        try:
            table.clearContents()
            setTableColumns(table, channels + ["Annotation", "ROI mask (optional)", "Role", "Check"])
            table.setRowCount(0)
            self.rows = []
            for case in cases:
                self._appendRow(case)
        finally:
            self._updating = wasUpdating

    def _appendRow(self, case: Optional[CaseInput]) -> None:
        row = CaseRow(len(self.channelNames()))
        if case is not None:
            row.setCase(case)
        index = self.ui.casesTable.rowCount
        self.ui.casesTable.insertRow(index)
        setTableRow(self.ui.casesTable, index,
                    [*row.channelSelectors, row.annotationSelector, row.maskCell, row.roleSelector, row.statusLabel])
        for selector in [*row.channelSelectors, row.annotationSelector, row.maskSelector]:
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onCasesChanged)
        for combo in (row.roleSelector, row.maskSegmentSelector):
            combo.connect("currentIndexChanged(int)", self.onCasesChanged)
        self.rows.append(row)

    def onChannelNamesChanged(self) -> None:
        self.rebuild(self.cases())
        self.channelsChanged.emit()
        self.onCasesChanged()

    def onAddCase(self) -> None:
        """A new row; the third one becomes the validation case while all others train."""
        role = "validation" if len(self.rows) >= 2 and all(r.roleSelector.currentText == "train" for r in self.rows) \
            else "train"
        self._appendRow(CaseInput([], None, role))
        self.onCasesChanged()

    def addCase(self, case: CaseInput, channelNames: list[str]) -> int:
        """Append ``case`` as a row and return its index; an empty table takes ``channelNames`` (the case's own,
        e.g. a model's) first. ValueError when the case has another number of channels than the table."""
        if not self.rows and channelNames and channelNames != self.channelNames():
            self.ui.channelNamesLineEdit.text = ", ".join(channelNames)
            self.rebuild([])
            self.channelsChanged.emit()
        channels = self.channelNames()
        if len(case.images) != len(channels):
            raise ValueError(f"The case has {len(case.images)} volume(s) but the training cases have "
                             f"{len(channels)} channel(s) ({', '.join(channels)}): a training table holds cases of "
                             "one set of channels.")
        self._appendRow(case)
        self.onCasesChanged()
        return len(self.rows) - 1

    def onRemoveCase(self) -> None:
        """Remove the selected row, else the last one."""
        index = self.ui.casesTable.currentRow()
        if index < 0:
            index = len(self.rows) - 1
        if index < 0:
            return
        self.ui.casesTable.removeRow(index)
        del self.rows[index]
        self.onCasesChanged()

    def onCasesChanged(self, *_) -> None:
        if self._updating:
            return
        if self.parameters is not None:
            self.store.save(self.parameters.parameterNode, self.cases(), self.channelNames())
        self.check()
        self.changed.emit()

    def check(self, extraIssues: Optional[list[Issue]] = None) -> None:
        """Check the cases and show the problems (plus ``extraIssues``, e.g. the class analysis's)."""
        self.issues = list(dict.fromkeys(self.logic.checkCases(self.cases(), self.channelNames()) +
                                         list(extraIssues or [])))  # the same issue once
        byRow: dict = {}
        for issue in self.issues:
            if issue.case is not None:
                byRow.setdefault(issue.case, []).append(issue)
        for index, row in enumerate(self.rows):
            row.showIssues(byRow.get(index, []))
        lines = [richText(f"Error: {i}", ERROR_COLOR) if i.isError else richText(f"Warning: {i}", WARNING_COLOR)
                 for i in self.issues]
        self.ui.dataIssuesLabel.text = "<br>".join(lines) or richText("All cases look consistent.", OK_COLOR)
