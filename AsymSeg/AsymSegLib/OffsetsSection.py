"""Part of section 5, Results (Qt): a logit-offset slider per rare class, relabelling the prediction live.

A slider moves the class's logit by up to ``OFFSET_RANGE`` units either way (0 = as
predicted); once it rests for ``PREVIEW_DELAY_MS`` the prediction's segments are recomputed
from the stored probabilities (``Probabilities.OffsetPreview``). Apply keeps what is shown,
Reset goes back to the engine's prediction, Use calibrated sets the offsets the engine fitted
to the model (when the engine reports them). A new prediction discards offsets shown but not
applied on the previous one.
"""

from __future__ import annotations

import math
from typing import Optional

import ctk
import qt
import slicer

from .Logic import InferenceResults
from .Probabilities import OffsetPreview, describeOffsets
from .QtUtils import clearLayout, richText, timer
from .ResultImport import specWords

OFFSET_RANGE = 5.0      # logit units either way; a calibrated offset beyond widens its slider
OFFSET_STEP = 0.1
PREVIEW_DELAY_MS = 200  # one recomputation when the slider rests, not one per step dragged


class OffsetsSection:
    def __init__(self, ui):
        self.ui = ui
        self.preview: Optional[OffsetPreview] = None
        self.results: Optional[InferenceResults] = None
        self.sliders: dict = {}   # rare class name -> ctkSliderWidget
        self.timer = timer(PREVIEW_DELAY_MS, self.updatePreview, singleShot=True)
        ui.offsetsWidget.setLayout(qt.QFormLayout())
        ui.applyOffsetsButton.clicked.connect(self.onApply)
        ui.resetOffsetsButton.clicked.connect(self.onReset)
        ui.useCalibratedOffsetsButton.clicked.connect(self.onUseCalibrated)

    def updateButtons(self) -> None:
        ready = self.preview is not None
        self.ui.applyOffsetsButton.enabled = ready
        self.ui.resetOffsetsButton.enabled = ready
        calibration = self.results.calibration if self.results is not None else None
        self.ui.useCalibratedOffsetsButton.enabled = ready and calibration is not None and \
            bool(set(calibration.offsets) & set(self.sliders))

    def setResults(self, results: InferenceResults) -> None:
        """Sliders for the rare classes of a new prediction (``discard`` the last one's first)."""
        self.results, self.preview = results, results.offsets
        clearLayout(self.ui.offsetsWidget.layout())
        self.sliders = {}
        calibrated = results.calibration.offsets if results.calibration is not None else {}
        for name in results.rareClasses if self.preview is not None else []:
            slider = ctk.ctkSliderWidget()
            limit = max(OFFSET_RANGE, math.ceil(abs(calibrated.get(name, 0.0))))
            slider.minimum, slider.maximum, slider.singleStep, slider.decimals = -limit, limit, OFFSET_STEP, 1
            slider.value = 0.0
            slider.toolTip = f"Logit offset of '{name}': positive grows it, negative shrinks it"
            if name in calibrated:
                slider.toolTip += f"; calibrated: {calibrated[name]:+.2f} ({results.calibration.criterion})"
            slider.connect("valueChanged(double)", lambda *_: self.timer.start())
            self.ui.offsetsWidget.layout().addRow(f"{name}:", slider)
            self.sliders[name] = slider
        self.ui.offsetsStatusLabel.text = "" if self.preview is not None else \
            "No class probabilities from the engine: logit offsets are not available for this prediction."
        self.updateButtons()

    def offsets(self) -> dict:
        return {name: float(slider.value) for name, slider in self.sliders.items()}

    def updatePreview(self) -> None:
        """Relabel the prediction with the sliders' offsets and say what changed."""
        if self.preview is None:
            return
        with slicer.util.tryWithErrorDisplay("AsymSeg could not apply the logit offsets.", waitCursor=True):
            offsets = self.offsets()
            shown = self.preview.milliliters(self.preview.show(offsets))
            if not any(offsets.values()):
                self.ui.offsetsStatusLabel.text = richText("The prediction as the engine made it.")
                return
            predicted = self.preview.milliliters(self.preview.predicted)
            volumes = ", ".join(f"{name} {shown[name]:.2f} mL (predicted {predicted[name]:.2f})"
                                for name in self.sliders)
            processed = {k: v for k, v in self.results.postprocessing.items() if v != "none"}
            text = f"Preview, not applied: offsets {describeOffsets(offsets)}: {volumes}."
            if processed:
                text += " The argmax of the probabilities: the model's post-processing (" + \
                    ", ".join(f"{k}: {specWords(v)}" for k, v in processed.items()) + ") is not applied."
            self.ui.offsetsStatusLabel.text = richText(text)

    def onApply(self) -> None:
        if self.timer.active:  # a slider moved within the delay: show what the sliders say first
            self.timer.stop()
            self.updatePreview()
        table = self.preview.apply()
        self.ui.offsetsStatusLabel.text = richText(
            f"Kept as '{self.preview.segmentation.GetName()}'; offsets and class volumes in table '{table.GetName()}'.")

    def onReset(self) -> None:
        for slider in self.sliders.values():
            slider.value = 0.0
        self.timer.stop()
        self.preview.reset()
        self.ui.offsetsStatusLabel.text = richText("The prediction as the engine made it.")

    def onUseCalibrated(self) -> None:
        for name, value in self.results.calibration.offsets.items():
            if name in self.sliders:
                self.sliders[name].value = value

    def discard(self) -> None:
        """Offsets shown but not applied go: the prediction shows what was last applied."""
        self.timer.stop()
        if self.preview is not None:
            self.preview.discard()

    def clear(self) -> None:
        """The scene is gone: nothing left to relabel."""
        self.timer.stop()
        self.preview, self.results, self.sliders = None, None, {}
        clearLayout(self.ui.offsetsWidget.layout())
        self.ui.offsetsStatusLabel.text = ""
        self.updateButtons()
