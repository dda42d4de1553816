"""Qt helpers shared by the panel's sections: rich text, QSettings, timers, tables, layouts, node selectors,
dialogs.

Qt (Slicer only): imported, like every section, through ``Widget.py`` from ``AsymSegWidget.setup``.
Machine-specific choices (device, folders, model paths) live in ``qt.QSettings`` under
``AsymSeg/``; this file is the only one that reaches them.
"""

from __future__ import annotations

import html

import qt
import slicer

from .Runs import RunState, RunStatus

SETTINGS_PREFIX = "AsymSeg/"
ERROR_COLOR, WARNING_COLOR, OK_COLOR = "#c62828", "#b26a00", "#2e7d32"
MODEL_FILE_FILTERS = ["Model files (*.pt)", "All files (*)"]


def richText(text: str, color: str = "") -> str:
    """Escaped text inside a span, so QLabel renders it as rich text (entities decoded)."""
    style = f" style='color:{color}'" if color else ""
    return f"<span{style}>{html.escape(text, quote=False)}</span>"


def comboData(combo):
    """The current item's data (``itemData(currentIndex)``: unambiguous in PythonQt)."""
    return combo.itemData(combo.currentIndex)


def settingValue(key: str, default: str = "") -> str:
    value = qt.QSettings().value(SETTINGS_PREFIX + key, default)
    return default if value is None else str(value)


def setSettingValue(key: str, value: str) -> None:
    qt.QSettings().setValue(SETTINGS_PREFIX + key, value)


def bindPathSetting(pathLineEdit, key: str, default: str = "") -> None:
    """Show the saved path of ``key`` in a ``ctkPathLineEdit`` and save every change."""
    pathLineEdit.currentPath = settingValue(key, default)
    pathLineEdit.connect("currentPathChanged(QString)", lambda path: setSettingValue(key, path))


def timer(intervalMs: int, callback, singleShot: bool = False):
    """A stopped ``qt.QTimer`` that calls ``callback`` every ``intervalMs`` (once when ``singleShot``)."""
    result = qt.QTimer()
    result.setSingleShot(singleShot)
    result.setInterval(intervalMs)
    result.timeout.connect(callback)
    return result


def setTableColumns(table, labels: list[str]) -> None:
    table.setColumnCount(len(labels))
    table.setHorizontalHeaderLabels(labels)


def setTableRow(table, row: int, cells: list) -> None:
    """Fill ``row`` of ``table`` from the left: a string becomes a read-only item, anything else a cell widget."""
    for column, cell in enumerate(cells):
        if isinstance(cell, str):
            item = qt.QTableWidgetItem(cell)
            item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
            table.setItem(row, column, item)
        else:
            table.setCellWidget(row, column, cell)


def sideBySide(*widgets):
    """One widget holding ``widgets`` in a row without margins (e.g. two selectors in one table cell)."""
    container = qt.QWidget()
    layout = qt.QHBoxLayout(container)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return container


def clearLayout(layout) -> None:
    """Take every widget out of ``layout`` and delete it (rows built in code, rebuilt on a change)."""
    while layout.count():
        item = layout.takeAt(0)
        if item.widget():
            item.widget().deleteLater()


def nodeSelector(nodeTypes: list[str], toolTip: str, showChildNodeTypes: bool = True):
    """A ``qMRMLNodeComboBox`` on the scene that only selects existing nodes (none allowed)."""
    selector = slicer.qMRMLNodeComboBox()
    properties = dict(nodeTypes=nodeTypes, showChildNodeTypes=showChildNodeTypes, noneEnabled=True, addEnabled=False,
                      removeEnabled=False, renameEnabled=False, selectNodeUponCreation=False, showHidden=False,
                      toolTip=toolTip)
    for name, value in properties.items():
        setattr(selector, name, value)
    selector.setMRMLScene(slicer.mrmlScene)
    return selector


def volumeSelector(toolTip: str):
    """A selector of scalar volumes (labelmaps excluded)."""
    return nodeSelector(["vtkMRMLScalarVolumeNode"], toolTip, showChildNodeTypes=False)


class Dialogs:
    """Modal dialogs, or none when not interactive (tests): problems are then shown inline only."""

    def __init__(self, interactive: bool):
        self.interactive = interactive

    def confirm(self, question: str, windowTitle: str) -> bool:
        """The user's answer; False without asking when not interactive."""
        return self.interactive and bool(slicer.util.confirmOkCancelDisplay(question, windowTitle=windowTitle))

    def showFailure(self, state: RunState, windowTitle: str) -> None:
        """An error dialog with the engine's message and hint, when the run failed."""
        if self.interactive and state.status is RunStatus.FAILED:
            slicer.util.errorDisplay(state.message, detailedText=state.hint, windowTitle=windowTitle)
