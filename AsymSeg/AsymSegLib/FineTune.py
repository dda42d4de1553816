"""Fine-tuning a trained model on the (corrected) training cases: the shorter plan, and whether the model fits.

Qt-free. ``fineTuningSettings`` starts the panel's settings from the model (the job's
``initial_checkpoint``; the engine keeps its network, normalisation and spacing and plans a lower
learning rate) with ``FINE_TUNING_SHARE`` of the time. ``compatibilityProblems`` compares the
model's channels and classes (``ModelInfo``, from its ``job.json``) with the training data's before
anything is exported, so a mismatch is a message naming both, not an engine failure later.
"""

from __future__ import annotations

from dataclasses import replace

from .JobSpec import TrainingSettings

FINE_TUNING_SHARE = 1 / 3
"""Share of the time budget (and of iterations set by hand) a fine-tuning gets: 5 of the default 15 minutes.
The weights already segment these classes and the engine plans 0.3 times the usual learning rate from a trained
model, so the run only has to take in a few corrected cases, not learn the task; a third keeps the correct ->
fine-tune -> apply loop short enough to wait for, while the plan still fits its iterations to it (never fewer than
the engine's minimum of 100)."""
SHARE_IN_WORDS = "a third"


def fineTuningSettings(settings: TrainingSettings, modelPath: str) -> TrainingSettings:
    """``settings`` starting from ``modelPath`` with ``FINE_TUNING_SHARE`` of the budget (and of set iterations)."""
    iterations = None if settings.iterations is None else max(1, round(settings.iterations * FINE_TUNING_SHARE))
    return replace(settings, initialModel=str(modelPath), iterations=iterations,
                   timeBudgetMinutes=settings.timeBudgetMinutes * FINE_TUNING_SHARE)


def _listed(names: list) -> str:
    return ", ".join(f"'{name}'" for name in names) or "none"


def compatibilityProblems(modelPath: str, info, channelNames: list, classNames: list) -> list[str]:
    """What keeps the model (``info``: its ``Logic.ModelInfo``) from being fine-tuned on training data with these
    channel and class names (in order: class indices must match); each problem says what to do."""
    if not info.channels and not info.classNames:
        return [f"The channels and classes of {modelPath} are unknown (no job.json beside it): fine-tune a model "
                "trained by AsymSeg (its run folder keeps job.json), or set it as the initial model under Technique."]
    problems = []
    if [c.lower() for c in info.channels] != [c.lower() for c in channelNames]:
        problems.append(f"The model takes the channels {_listed(info.channels)}; the training data has "
                        f"{_listed(channelNames)}. Name the channels in Training data as the model's, in its order "
                        "(the same kinds of images), or train a new model with Start.")
    if info.classNames != list(classNames):
        notInData = [n for n in info.classNames if n not in classNames]
        notInModel = [n for n in classNames if n not in info.classNames]
        differences = "; ".join(text for text in (
            f"missing from the training data: {_listed(notInData)}" if notInData else "",
            f"not in the model: {_listed(notInModel)}" if notInModel else "") if text) or "the same in another order"
        problems.append(f"The model's classes are {_listed(info.classNames)}; the training data's are "
                        f"{_listed(classNames)} ({differences}). Name the segments (or map the labels in Classes) as "
                        "the model's classes, or train a new model with Start.")
    return problems
