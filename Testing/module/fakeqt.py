"""A small stand-in for PythonQt's ``qt`` module and the .ui widgets, for driving the panel in tests.

Only what the panel (``AsymSegLib/Widget.py`` and its sections) calls is modelled (properties
as attributes, ``connect`` with signal signatures, ``clicked``/``toggled``/... signal objects).
Widgets are created from the real ``AsymSeg.ui`` by name and class, with its text, tooltip,
enabled state and spin box ranges and special value text, so a name the panel uses but the
.ui lacks fails.
"""

from __future__ import annotations

import types
import xml.etree.ElementTree as ET


class FakeSignal:
    def __init__(self):
        self.callbacks = []

    def connect(self, callback):
        self.callbacks.append(callback)

    def emit(self, *args):
        for callback in list(self.callbacks):
            callback(*args)


class FakeWidget:
    SIGNALS = ("clicked", "toggled", "editingFinished", "timeout")

    def __init__(self, *args, **kwargs):
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.text = args[0] if args and isinstance(args[0], str) else ""
        self._signals = {}
        self._layout = None

    def __getattr__(self, name):
        if name in FakeWidget.SIGNALS:
            return self._signals.setdefault(name, FakeSignal())
        raise AttributeError(name)

    def connect(self, signature, callback):
        self._signals.setdefault(signature, FakeSignal()).connect(callback)

    def fire(self, signature, *args):
        self._signals.setdefault(signature, FakeSignal()).emit(*args)

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def setLayout(self, layout):
        self._layout = layout

    def layout(self):
        return self._layout

    def deleteLater(self):
        pass

    def blockSignals(self, block):
        self._blocked = block

    def setMRMLScene(self, scene):
        self.scene = scene


class QPushButton(FakeWidget):
    def click(self):
        assert self.enabled, f"{self.text} is disabled"
        self.clicked.emit()


class QLabel(FakeWidget):
    pass


class QLineEdit(FakeWidget):
    pass


class QCheckBox(FakeWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self.checked = False

    def setChecked(self, on):
        self.checked = bool(on)
        self.toggled.emit(self.checked)


class QDoubleSpinBox(FakeWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self.value = 0.0
        self.range = (0.0, 99.99)  # Qt's defaults
        self.decimals = 2
        self.specialValueText = ""  # shown instead of the value at the minimum (e.g. "auto")

    def setRange(self, low, high):
        self.range = (low, high)

    def setDecimals(self, decimals):
        self.decimals = decimals

    def setSingleStep(self, step):
        pass

    def setValue(self, value):
        self.value = value
        self.fire("valueChanged(double)", value)


class QSpinBox(QDoubleSpinBox):
    pass


class ctkSliderWidget(FakeWidget):
    """A slider with a spin box: ``value`` (a property, as in PythonQt) emits ``valueChanged(double)``."""

    def __init__(self, *args):
        super().__init__(*args)
        self.minimum, self.maximum, self.singleStep, self.decimals = 0.0, 99.0, 1.0, 2
        self._value = 0.0

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        value = min(max(float(value), self.minimum), self.maximum)
        if value != self._value:
            self._value = value
            self.fire("valueChanged(double)", value)


class QComboBox(FakeWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self.items = []  # (text, data)
        self._index = -1
        self._blocked = False

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self._index < 0:
            self.setCurrentIndex(0)

    def clear(self):
        self.items, self._index = [], -1

    @property
    def count(self):
        return len(self.items)

    def findData(self, data):
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)

    def findText(self, text):
        return next((i for i, item in enumerate(self.items) if item[0] == text), -1)

    def itemData(self, index):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def setCurrentIndex(self, index):
        if index != self._index:
            self._index = index
            if not self._blocked:
                self.fire("currentIndexChanged(int)", index)

    @property
    def currentIndex(self):
        return self._index

    @property
    def currentText(self):
        return self.items[self._index][0] if self._index >= 0 else ""

    @property
    def currentData(self):
        return self.itemData(self._index)


class QProgressBar(FakeWidget):
    def setValue(self, value):
        self.value = value

    def setFormat(self, text):
        self.format = text


class QPlainTextEdit(FakeWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self.lines = []

    def appendPlainText(self, text):
        self.lines.append(text)

    def clear(self):
        self.lines = []


class Header:
    def setVisible(self, visible):
        pass


class QTableWidgetItem:
    def __init__(self, text=""):
        self.text = text

    def setFlags(self, flags):
        self.flags = flags


class QTableWidget(FakeWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self.cells, self.items, self.headers, self.hidden = {}, {}, [], set()
        self.rowCount = 0
        self.columnCount = 0
        self._current = -1

    def verticalHeader(self):
        return Header()

    def setColumnCount(self, count):
        self.columnCount = count

    def setHorizontalHeaderLabels(self, labels):
        self.headers = list(labels)

    def setRowCount(self, count):
        self.rowCount = count
        self.cells = {k: v for k, v in self.cells.items() if k[0] < count}

    def clearContents(self):
        self.cells, self.items = {}, {}

    def insertRow(self, index):
        self.cells = {((r + 1 if r >= index else r), c): w for (r, c), w in self.cells.items()}
        self.rowCount += 1

    def removeRow(self, index):
        self.cells = {((r - 1 if r > index else r), c): w for (r, c), w in self.cells.items() if r != index}
        self.rowCount -= 1

    def setCellWidget(self, row, column, widget):
        self.cells[(row, column)] = widget

    def cellWidget(self, row, column):
        return self.cells.get((row, column))

    def setItem(self, row, column, item):
        self.items[(row, column)] = item

    def item(self, row, column):
        return self.items.get((row, column))

    def currentRow(self):
        return self._current

    def setCurrentRow(self, row):
        self._current = row

    def setColumnHidden(self, column, hidden):
        (self.hidden.add if hidden else self.hidden.discard)(column)


class LayoutItem:
    def __init__(self, widget):
        self._widget = widget

    def widget(self):
        return self._widget


class QFormLayout:
    def __init__(self, *args):
        self.rows = []

    def addRow(self, label, widget):
        self.rows.append((label, widget))

    def count(self):
        return len(self.rows)

    def takeAt(self, index):
        return LayoutItem(self.rows.pop(index)[1])


class QHBoxLayout:
    """A row of widgets; ``QHBoxLayout(parent)`` becomes ``parent``'s layout, as in Qt."""

    def __init__(self, parent=None):
        self.widgets = []
        self.margins = None
        if parent is not None:
            parent.setLayout(self)

    def setContentsMargins(self, *margins):
        self.margins = margins

    def addWidget(self, widget):
        self.widgets.append(widget)


class QTimer(FakeWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self.active = False

    def setInterval(self, ms):
        self.interval = ms

    def setSingleShot(self, on):
        self.singleShot = on

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fireIfActive(self):
        if self.active:
            if getattr(self, "singleShot", False):
                self.active = False
            self.timeout.emit()


class QSettings:
    store: dict = {}

    def value(self, key, default=None):
        return QSettings.store.get(key, default)

    def setValue(self, key, value):
        QSettings.store[key] = value


class Qt:
    ItemIsSelectable = 1
    ItemIsEnabled = 32
    WaitCursor = 3


class FakeNodeComboBox(FakeWidget):
    """slicer.qMRMLNodeComboBox"""

    def __init__(self, *args):
        super().__init__(*args)
        self._node = None
        self.attributes = {}  # node type -> {attribute name: value (None: any)}: the filter, not applied here

    def addAttribute(self, nodeType, name, value=None):
        self.attributes.setdefault(nodeType, {})[name] = value

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.fire("currentNodeChanged(vtkMRMLNode*)", node)

    def currentNode(self):
        return self._node


class QWidget(FakeWidget):
    pass


class ctkPathLineEdit(FakeWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self._path = ""
        self.nameFilters = []

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        self._path = path
        self.fire("currentPathChanged(QString)", path)


CLASSES = {"QPushButton": QPushButton, "QLabel": QLabel, "QLineEdit": QLineEdit, "QCheckBox": QCheckBox,
           "QDoubleSpinBox": QDoubleSpinBox, "QSpinBox": QSpinBox, "QComboBox": QComboBox,
           "QProgressBar": QProgressBar, "QPlainTextEdit": QPlainTextEdit, "QTableWidget": QTableWidget,
           "QWidget": QWidget, "ctkPathLineEdit": ctkPathLineEdit, "qMRMLNodeComboBox": FakeNodeComboBox}


def ctkModule() -> types.ModuleType:
    module = types.ModuleType("ctk")
    module.ctkSliderWidget = ctkSliderWidget
    return module


def qtModule() -> types.ModuleType:
    module = types.ModuleType("qt")
    for name in ("QTimer", "QSettings", "QComboBox", "QCheckBox", "QDoubleSpinBox", "QLabel", "QTableWidgetItem",
                 "QLineEdit", "QFormLayout", "QHBoxLayout", "QWidget"):
        setattr(module, name, globals()[name])
    module.Qt = Qt
    return module


def uiFromFile(path) -> types.SimpleNamespace:
    """One fake widget per named widget of the .ui (layouts are not widgets)."""
    ui = types.SimpleNamespace()
    for element in ET.parse(path).getroot().iter("widget"):
        cls = CLASSES.get(element.get("class"), FakeWidget)
        widget = cls()
        properties = {prop.get("name"): prop[0].text or "" for prop in element.findall("property") if len(prop)}
        widget.text = properties.get("text", widget.text)
        widget.toolTip = properties.get("toolTip", widget.toolTip)
        widget.enabled = properties.get("enabled", "true") == "true"
        if isinstance(widget, QCheckBox):
            widget.checked = properties.get("checked", "false") == "true"
        if isinstance(widget, QDoubleSpinBox):
            widget.decimals = int(properties.get("decimals", widget.decimals))
            widget.range = (float(properties.get("minimum", widget.range[0])),
                            float(properties.get("maximum", widget.range[1])))
            widget.specialValueText = properties.get("specialValueText", "")
        setattr(ui, element.get("name"), widget)
    return ui
