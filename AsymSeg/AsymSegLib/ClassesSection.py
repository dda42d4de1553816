"""Section 2, Classes (Qt): the classes found in the annotations, their voxel counts, which are rare.

Class discovery reads every annotation, so it runs shortly after the cases stop changing
(``schedule``) or at once (``refreshNow``, the Check data button). The rarity the user sets is
kept in the parameter node (``rarityJson``) and restored onto the next analysis. ``analysed``
is emitted after every refresh that reached an answer (the analysis, or None without any
annotated case).
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Optional

import qt

from .Cases import CaseInput
from .Classes import ClassAnalysis
from .Logic import TrainingLogicProtocol
from .QtUtils import ERROR_COLOR, richText, setTableColumns, setTableRow, timer
from .Signal import Signal

COLUMNS = ["Class", "Label", "Voxels (train)", "Background : class", "Rare", "Rarity"]
RARITY_COLUMN = COLUMNS.index("Rarity")
REFRESH_DELAY_MS = 400


class ClassesSection:
    def __init__(self, ui, logic: TrainingLogicProtocol, cases: Callable[[], list[CaseInput]]):
        self.ui = ui
        self.logic = logic
        self.cases = cases                   # the Training data section's current cases
        self.parameters = None               # parameterNodeWrapper instance
        self.analysis: Optional[ClassAnalysis] = None
        self.analysed = Signal("ClassAnalysis or None")
        self.timer = timer(REFRESH_DELAY_MS, self.refresh, singleShot=True)
        table = ui.classesTable
        table.verticalHeader().setVisible(False)
        setTableColumns(table, COLUMNS)
        table.setColumnHidden(RARITY_COLUMN, True)
        ui.showRarityCheckBox.toggled.connect(lambda on: table.setColumnHidden(RARITY_COLUMN, not on))

    def setParameters(self, parameters) -> None:
        self.parameters = parameters

    def schedule(self) -> None:
        """Refresh once the cases have stopped changing for a moment."""
        self.timer.start()

    def refreshNow(self) -> None:
        self.timer.stop()
        self.refresh()

    def refresh(self) -> None:
        cases = self.cases()
        if not any(c.reference is not None and c.annotation is not None for c in cases):
            self.clear()
            self.analysed.emit(None)
            return
        try:
            self.analysis = self.logic.discoverClasses(cases)
        except Exception as error:  # noqa: BLE001 - shown inline, never a modal error while editing
            logging.exception("AsymSeg: class discovery failed")
            self.analysis = None
            self.ui.classesHintLabel.text = richText(f"Could not read the annotations: {error}", ERROR_COLOR)
            return
        if self.parameters is not None:
            try:
                self.analysis.catalog.applyRarity(json.loads(self.parameters.rarityJson or "{}"))
            except ValueError:
                pass
        self._fillTable()
        self.analysed.emit(self.analysis)

    def clear(self) -> None:
        self.analysis = None
        self._fillTable()

    def _fillTable(self) -> None:
        table = self.ui.classesTable
        table.clearContents()
        catalog = self.analysis.catalog if self.analysis else None
        classes = catalog.classes if catalog else []
        table.setRowCount(len(classes))
        for index, info in enumerate(classes):
            ratio = catalog.ratio(info.name)
            ratioText = "-" if info.isBackground else ("no voxels" if ratio is None else f"{ratio:,.1f} : 1")
            rare = qt.QCheckBox()
            rare.checked = info.rare
            rare.enabled = not info.isBackground
            rare.toolTip = "Rare: treated asymmetrically (kept away from the decision boundary)"
            rare.toggled.connect(lambda on, name=info.name: self.onRareToggled(name, on))
            rarity = qt.QDoubleSpinBox()
            rarity.setRange(0.0, 1.0)
            rarity.setSingleStep(0.1)
            rarity.value = info.rarity
            rarity.enabled = not info.isBackground
            rarity.connect("valueChanged(double)", lambda value, name=info.name: self.onRarityChanged(name, value))
            setTableRow(table, index, [info.name, str(info.value), f"{info.trainVoxels:,}", ratioText, rare, rarity])
        if catalog:
            self.ui.classesHintLabel.text = ("Rare classes get the asymmetric treatment. Suggested: every class but "
                                             "background is rare, unless it outnumbers the background.")

    def onRareToggled(self, name: str, on: bool) -> None:
        self.onRarityChanged(name, 1.0 if on else 0.0)
        self._fillTable()  # the rarity column follows

    def onRarityChanged(self, name: str, value: float) -> None:
        """Set a class's rarity and keep it in the parameter node."""
        if self.analysis:
            self.analysis.catalog.setRarity(name, value)
            if self.parameters is not None:
                self.parameters.rarityJson = json.dumps(self.analysis.catalog.rarityMap())
