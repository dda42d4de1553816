"""Section 6, Next case to annotate (Qt): rank unlabelled cases by how much the model hesitates about the rare classes.

The cases are listed here, one row each with a volume per channel of the Results section's model.
Rank exports them and runs the engine's ``rank`` in the background (``Ranking``; progress here,
Cancel here or in Run); the table shows each case's rank, name, score in % and the rare-class
volumes behind it, with the measure in one line under it. Double-click a case, or Show, to see it
in the slice views: ``caseChosen`` hands its volumes to the panel (the Results section's inputs,
to apply the model to it next).
"""

from __future__ import annotations

from typing import Callable, Optional

import slicer

from .Cases import CaseInput
from .Logic import TrainingLogicProtocol, rankingRunFolder
from .QtUtils import ERROR_COLOR, Dialogs, richText, setTableColumns, setTableRow, volumeSelector
from .Ranking import PreparedRanking, Ranking
from .Runs import EngineTask, RunState, RunStatus
from .Signal import Signal

RANKING_COLUMNS = ["Rank", "Case", "Score (%)", "Hesitant (mL)", "Candidate (mL)"]


class RankSection:
    def __init__(self, ui, logic: TrainingLogicProtocol, dialogs: Dialogs, modelPath: Callable[[], str],
                 channelNames: Callable[[], list[str]]):
        self.ui = ui
        self.logic = logic
        self.dialogs = dialogs
        self.modelPath = modelPath           # the Results section's model
        self.channelNames = channelNames     # its channels
        self.channels: list[str] = []        # the columns shown
        self.rows: list[list] = []           # per case to rank, one volume selector per channel
        self.prepared: Optional[PreparedRanking] = None
        self.ranking: Optional[Ranking] = None
        self.changed = Signal()              # the cases to rank changed
        self.caseChosen = Signal("list of volume nodes")
        ui.rankCasesTable.verticalHeader().setVisible(False)
        ui.rankingTable.verticalHeader().setVisible(False)
        setTableColumns(ui.rankingTable, RANKING_COLUMNS)
        ui.addRankCaseButton.clicked.connect(lambda: self._appendRow([]))
        ui.removeRankCaseButton.clicked.connect(self.onRemoveCase)
        ui.rankingTable.connect("cellDoubleClicked(int,int)", lambda row, column: self.showCase(row))
        ui.showRankedCaseButton.clicked.connect(lambda: self.showCase(ui.rankingTable.currentRow()))
        self.updateChannels()

    # ------------------------------------------------------------------ the cases to rank

    def updateChannels(self) -> None:
        """One column per channel of the model (the rows keep their volumes where the channel count allows)."""
        channels = self.channelNames()
        if channels == self.channels:
            return
        self.channels = channels
        kept = [[s.currentNode() for s in row] for row in self.rows]
        setTableColumns(self.ui.rankCasesTable, channels)
        self.ui.rankCasesTable.setRowCount(0)
        self.rows = []
        for volumes in kept:
            self._appendRow(volumes)

    def _appendRow(self, volumes: list) -> None:
        selectors = [volumeSelector(f"Volume of the case for the model's channel '{name}'") for name in self.channels]
        for selector, volume in zip(selectors, volumes):
            selector.setCurrentNode(volume)
        for selector in selectors:
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda *_: self.changed.emit())
        index = self.ui.rankCasesTable.rowCount
        self.ui.rankCasesTable.insertRow(index)
        setTableRow(self.ui.rankCasesTable, index, selectors)
        self.rows.append(selectors)
        self.changed.emit()

    def onRemoveCase(self) -> None:
        """Remove the selected row, else the last one."""
        index = self.ui.rankCasesTable.currentRow()
        index = index if index >= 0 else len(self.rows) - 1
        if index >= 0:
            self.ui.rankCasesTable.removeRow(index)
            del self.rows[index]
            self.changed.emit()

    def cases(self) -> list[CaseInput]:
        return [CaseInput([s.currentNode() for s in row]) for row in self.rows]

    def updateButtons(self, running: bool, ranking: bool) -> None:
        """``running``: an engine task runs; ``ranking``: it is a ranking."""
        self.ui.rankButton.enabled = not running and bool(self.modelPath()) and bool(self.rows) and \
            all(s.currentNode() is not None for row in self.rows for s in row)
        self.ui.cancelRankButton.enabled = ranking
        self.ui.showRankedCaseButton.enabled = self.ranking is not None and bool(self.ranking.cases)

    # ------------------------------------------------------------------ ranking

    def startRanking(self, outputFolder: str, device: str) -> EngineTask:
        """Export the cases into a new folder under ``outputFolder`` and start the engine's ``rank``."""
        model = self.modelPath()
        self.prepared = self.logic.prepareRanking(model, self.cases(), rankingRunFolder(outputFolder, model), device)
        return self.logic.startRanking(self.prepared)

    def showState(self, state: RunState) -> None:
        self.ui.rankProgressBar.setValue(int(round(100 * state.fraction)))
        self.ui.rankStatusLabel.text = richText(state.statusLine(),
                                                ERROR_COLOR if state.status is RunStatus.FAILED else "")

    def rankingFinished(self, task: EngineTask) -> None:
        """Show the ranked cases, or why there are none (a failure also gets a dialog)."""
        if task.state.status is not RunStatus.FINISHED:
            self.dialogs.showFailure(task.state, "AsymSeg ranking failed")
            return
        self.prepared = task.context["prepared"]
        self.ranking = self.logic.importRanking(task)
        table = self.ui.rankingTable
        table.clearContents()
        table.setRowCount(len(self.ranking.cases))
        for index, case in enumerate(self.ranking.cases):
            setTableRow(table, index, [str(case.rank), self._caseName(case.case),
                                       f"{100 * case.score:.1f}", f"{case.hesitantMl:.2f}", f"{case.candidateMl:.2f}"])
        self.ui.rankMeasureLabel.text = richText(self.ranking.explanation())
        if self.ranking.cases:
            first = self.ranking.cases[0]
            self.ui.rankStatusLabel.text = richText(
                f"{len(self.ranking.cases)} case(s) ranked: annotate '{self._caseName(first.case)}' first "
                f"({100 * first.score:.1f}%). Double-click a case to show it.")

    def _caseName(self, caseId: str) -> str:
        return self.prepared.names.get(caseId, caseId)

    def showCase(self, row: int) -> None:
        """Show the ranked case of ``row`` in the slice views and hand its volumes on (``caseChosen``)."""
        if self.ranking is None or not 0 <= row < len(self.ranking.cases):
            return
        caseId = self.ranking.cases[row].case
        case = self.prepared.cases[caseId]
        if not all(slicer.mrmlScene.IsNodePresent(volume) for volume in case.images):
            self.ui.rankStatusLabel.text = richText(f"The volumes of '{self._caseName(caseId)}' are no longer in "
                                                    "the scene.", ERROR_COLOR)
            return
        slicer.util.setSliceViewerLayers(background=case.images[0], fit=True)
        self.caseChosen.emit(list(case.images))

    def clear(self) -> None:
        """The scene is gone, and the volumes with it."""
        self.ui.rankCasesTable.setRowCount(0)
        self.rows = []
        self.prepared, self.ranking = None, None
        self.ui.rankingTable.clearContents()
        self.ui.rankingTable.setRowCount(0)
        self.ui.rankMeasureLabel.text = ""
