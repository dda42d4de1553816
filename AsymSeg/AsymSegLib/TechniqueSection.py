"""Section 3, Technique (Qt): the preset, its hyper-parameters, the training settings, device and folders.

Presets, setting labels, ranges, decimals, tooltips and per-preset defaults all come from
``Presets`` (the engine's own definitions); the .ui only places the widgets. The values are
bound to the parameter node (``SlicerParameterName``), except the preset and the target
spacing mode (combo boxes whose items carry the value as data), kept here. The training
settings the engine plans sit under Advanced, "auto" at their minimum. The device and the
folders are machine-specific and kept in QSettings.
"""

from __future__ import annotations

from .Devices import DevicesProtocol
from .JobSpec import NATIVE_SPACING, TrainingSettings
from .Logic import defaultOutputFolder
from .ParameterNode import SPACING_AUTO, SPACING_CUSTOM, TECHNIQUE_FIELDS, settingsFromParameters
from .Presets import PRESETS, RECOMMENDED, SETTINGS
from .QtUtils import MODEL_FILE_FILTERS, bindPathSetting, comboData, setSettingValue, settingValue

AUTO_DEVICE = "auto"
SPACING_CHOICES = (("Automatic (planned from the cases)", SPACING_AUTO), ("Native: no resampling", NATIVE_SPACING),
                   ("Custom (z, y, x):", SPACING_CUSTOM))


class TechniqueSection:
    def __init__(self, ui, devices: DevicesProtocol):
        self.ui = ui
        self.devices = devices
        self.parameters = None               # parameterNodeWrapper instance
        for name, preset in PRESETS.items():
            ui.presetComboBox.addItem(preset.displayLabel(), name)
        for key, setting in SETTINGS.items():
            label, spinBox = self._settingWidgets(key)
            label.text = f"{setting.label}:"
            label.toolTip = spinBox.toolTip = setting.tooltip
            spinBox.setDecimals(setting.decimals)  # before the range, which Qt rounds to the decimals
            spinBox.setRange(setting.minimum, setting.maximum)
        bindPathSetting(ui.outputFolderPathLineEdit, "OutputFolder", str(defaultOutputFolder()))
        bindPathSetting(ui.initialModelPathLineEdit, "InitialModel")
        ui.initialModelPathLineEdit.nameFilters = MODEL_FILE_FILTERS
        for label, mode in SPACING_CHOICES:
            ui.targetSpacingComboBox.addItem(label, mode)
        self._showSpacingMode()
        self.refreshDevices()
        ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        ui.targetSpacingComboBox.connect("currentIndexChanged(int)", self.onTargetSpacingChanged)
        ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        ui.refreshDevicesButton.clicked.connect(self.refreshDevices)

    def _settingWidgets(self, key: str) -> tuple:
        """(label, spin box) of a technique setting, named after its parameter field in the .ui."""
        field = TECHNIQUE_FIELDS[key]
        return getattr(self.ui, f"{field}Label"), getattr(self.ui, f"{field}SpinBox")

    def setParameters(self, parameters) -> None:
        """Show the preset and the target spacing mode saved in ``parameters`` (None: unbound)."""
        self.parameters = parameters
        if parameters is not None:
            for combo, value in ((self.ui.presetComboBox, parameters.preset or RECOMMENDED),
                                 (self.ui.targetSpacingComboBox, parameters.targetSpacing)):
                combo.blockSignals(True)  # showing a saved preset must not reset its values to the defaults
                combo.setCurrentIndex(max(combo.findData(value), 0))
                combo.blockSignals(False)
            self._showPresetFields()
            self._showSpacingMode()

    def onPresetChanged(self, index: int) -> None:
        name = self.ui.presetComboBox.itemData(index)
        if not name:
            return
        if self.parameters is not None and self.parameters.preset != name:
            self.parameters.preset = name
            for key, default in PRESETS[name].defaults.items():  # a preset brings its own defaults
                setattr(self.parameters, TECHNIQUE_FIELDS[key], default)
        self._showPresetFields()

    def _showPresetFields(self) -> None:
        """The description and only the hyper-parameters the preset uses."""
        preset = PRESETS[comboData(self.ui.presetComboBox) or RECOMMENDED]
        self.ui.presetDescriptionLabel.text = preset.description
        for key in SETTINGS:
            visible = key in preset.settingKeys
            for widget in self._settingWidgets(key):
                widget.setVisible(visible)
        self.ui.advancedTechniqueGroupBox.setEnabled(bool(preset.settingKeys))

    def onTargetSpacingChanged(self, index: int) -> None:
        mode = self.ui.targetSpacingComboBox.itemData(index)
        if mode and self.parameters is not None:
            self.parameters.targetSpacing = mode
        self._showSpacingMode()

    def _showSpacingMode(self) -> None:
        """The spacing spin boxes are editable only for a custom spacing."""
        custom = comboData(self.ui.targetSpacingComboBox) == SPACING_CUSTOM
        for axis in "ZYX":
            getattr(self.ui, f"spacing{axis}SpinBox").setEnabled(custom)

    def refreshDevices(self) -> None:
        """List the devices again, keeping the saved choice (marked when it is not found now)."""
        saved = settingValue("Device", AUTO_DEVICE)
        combo = self.ui.deviceComboBox
        combo.blockSignals(True)
        combo.clear()
        for label, value in self.devices.choices():
            combo.addItem(label, value)
        index = combo.findData(saved)
        if index < 0:
            combo.addItem(f"{saved} (not found now)", saved)
            index = combo.count - 1
        combo.setCurrentIndex(index)
        combo.blockSignals(False)

    def onDeviceChanged(self, index: int) -> None:
        value = self.ui.deviceComboBox.itemData(index)
        if value:
            setSettingValue("Device", value)

    def device(self) -> str:
        return comboData(self.ui.deviceComboBox) or AUTO_DEVICE

    def outputFolder(self) -> str:
        """The chosen output folder ('' when cleared: the logic's default is used)."""
        return self.ui.outputFolderPathLineEdit.currentPath

    def trainingSettings(self) -> TrainingSettings:
        return settingsFromParameters(self.parameters, self.device(), self.ui.initialModelPathLineEdit.currentPath)
