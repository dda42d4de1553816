"""Section 2, Classes (Qt): the labels found in the annotations, the class each is trained as, which are rare.

One row per source label (a label map value or a segment name). *Train as* names its training
class: typing the same name on several rows merges them (tumour core = necrosis + enhancing),
``background`` drops a label into the background. Voxels, background : class and rarity are the
training class's. Class discovery reads every annotation, so it runs shortly after the cases stop
changing (``schedule``) or at once (``refreshNow``, the Check data button). The mapping and the
rarity the user sets are kept in the parameter node (``trainAsJson``, ``rarityJson``) and restored
onto the next analysis. ``analysed`` is emitted after every refresh that reached an answer (the
analysis, or None without any annotated case) and after every change of the mapping (its
warnings change).
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Optional

import qt

from .Cases import CaseInput
from .Classes import ClassAnalysis
from .Logic import TrainingLogicProtocol
from .QtUtils import ERROR_COLOR, WARNING_COLOR, richText, setTableColumns, setTableRow, timer
from .Signal import Signal

COLUMNS = ["Label", "Value", "Voxels (train)", "Background : class", "Rare", "Rarity", "Train as"]
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
            for field, apply in (("trainAsJson", self.analysis.catalog.applyTrainAs),
                                 ("rarityJson", self.analysis.catalog.applyRarity)):
                try:
                    apply(json.loads(getattr(self.parameters, field) or "{}"))
                except (ValueError, AttributeError):  # a scene saved by hand or by an older version
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
        rows = [(source, info) for info in classes for source in catalog.sources if source.name in info.sources]
        table.setRowCount(len(rows))
        for index, (source, info) in enumerate(rows):
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
            trainAs = qt.QLineEdit()
            trainAs.text = info.name
            trainAs.enabled = source.value != 0
            trainAs.toolTip = ("The class this label is trained as: the same name on several rows merges them into "
                               "one class; 'background' drops the label into the background.")
            trainAs.editingFinished.connect(
                lambda edit=trainAs, name=source.name: self.onTrainAsChanged(name, edit.text))
            setTableRow(table, index, [source.name, str(source.value), f"{info.trainVoxels:,}", ratioText, rare,
                                       rarity, trainAs])
        if catalog:
            warnings = [str(issue) for issue in self.analysis.coverageIssues]
            hint = ("Rare classes get the asymmetric treatment. Suggested: every class but background is rare, "
                    "unless it outnumbers the background. Type the same name under Train as to merge labels.")
            self.ui.classesHintLabel.text = richText(hint) + "".join(f"<br>{richText(w, WARNING_COLOR)}"
                                                                     for w in warnings)

    def onTrainAsChanged(self, source: str, className: str) -> None:
        """Train a source label as ``className`` (merge or rename), keep the mapping in the parameter node."""
        if not self.analysis:
            return
        catalog = self.analysis.catalog
        if catalog.targetOf(catalog.source(source)) == (className.strip() or source):
            return
        catalog.setTrainAs(source, className)
        if self.parameters is not None:
            self.parameters.trainAsJson = json.dumps(catalog.trainAs)
        self._fillTable()
        self.analysed.emit(self.analysis)

    def onRareToggled(self, name: str, on: bool) -> None:
        self.onRarityChanged(name, 1.0 if on else 0.0)
        self._fillTable()  # the rarity column follows

    def onRarityChanged(self, name: str, value: float) -> None:
        """Set a class's rarity and keep it in the parameter node."""
        if self.analysis:
            self.analysis.catalog.setRarity(name, value)
            if self.parameters is not None:
                self.parameters.rarityJson = json.dumps(self.analysis.catalog.rarityMap())
