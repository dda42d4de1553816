"""The job spec (docs/protocol.md): load, validate, fill defaults, and build one from an nnU-Net folder.

Every error names the field and says what to write instead; relative paths are resolved
against the folder of the job file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .data import CaseSpec, ClassMap, Normalization, read_nnunet_dataset
from .errors import InputError
from .network import downsampling_factor, network_config
from .protocol import CHOICES, JOB_FIELDS, JOB_FORMAT, JOB_VERSION, job_default
from .techniques import Technique, resolve_technique

NATIVE = "native"  # target_spacing: the images' own spacing, no resampling
PLANNED_FIELDS = ("target_spacing", "patch_size", "batch_size", "network", "normalization", "learning_rate",
                  "iterations", "validation_interval")
"""The job fields a plan fills when the job leaves them out (protocol.json: default null; planning.py)."""

LOSSES = {name: (w["ce_weight"], w["dice_weight"]) for name, w in CHOICES["loss"].items()}


@dataclass
class Job:
    """A validated job; every field is filled by :func:`job_from_dict` (defaults: protocol.json).

    The fields of planning.PLANNED_FIELDS are None until :meth:`apply_plan` fills them (a job
    that leaves them out is planned from its data and the device); ``target_spacing`` is then a
    (z, y, x) list or ``"native"``.
    """

    cases: List[CaseSpec]
    class_map: ClassMap
    output: Path
    channels: List[str]
    rarity: List[float]
    technique: Technique
    loss: str
    network: Optional[dict]
    patch_size: Optional[List[int]]
    target_spacing: Union[List[float], str, None]
    normalization: Optional[Normalization]
    batch_size: Optional[int]
    iterations: Optional[int]
    time_budget_minutes: float
    optimizer: str
    lr_schedule: str
    learning_rate: Optional[float]
    foreground_fraction: float
    validation_interval: Optional[int]
    early_stopping: bool
    seed: int
    device: str
    amp: bool
    initial_checkpoint: Optional[Path]
    logit_statistics: bool

    def cases_with_role(self, role: str) -> List[CaseSpec]:
        return [c for c in self.cases if c.role == role]

    def unplanned(self) -> List[str]:
        """The planned fields this job leaves out."""
        return [name for name in PLANNED_FIELDS if getattr(self, name) is None]

    def given(self) -> dict:
        """The planned fields as the job sets them (None: left out), in plain JSON values."""
        plain = self.to_dict()
        return {name: plain[name] for name in PLANNED_FIELDS}

    def apply_plan(self, settings: dict) -> None:
        """Fill the fields the job leaves out from a plan's ``settings`` (a field the job sets is kept; a None in
        ``settings`` leaves the field to the plan)."""
        for name in self.unplanned():
            value = settings.get(name)
            if value is None:
                continue
            if name == "normalization":
                value = Normalization.from_dict(value)
            elif name == "network":
                value = network_config(value)
            setattr(self, name, value)

    @property
    def spacing(self) -> Optional[List[float]]:
        """The spacing the arrays are resampled to; None: the images' own."""
        return None if self.target_spacing == NATIVE else self.target_spacing

    def to_dict(self) -> dict:
        """The resolved job: absolute paths, every default written out."""
        return {"format": JOB_FORMAT, "version": JOB_VERSION, "output": str(self.output), "channels": self.channels,
                "cases": [c.to_dict() for c in self.cases], **_class_fields(self.class_map),
                "rarity": dict(zip(self.class_map.names, self.rarity)), "technique": self.technique.to_dict(),
                "loss": self.loss, "network": self.network, "patch_size": self.patch_size,
                "target_spacing": self.target_spacing,
                "normalization": self.normalization.to_dict() if self.normalization else None,
                "batch_size": self.batch_size, "iterations": self.iterations,
                "time_budget_minutes": self.time_budget_minutes, "optimizer": self.optimizer,
                "lr_schedule": self.lr_schedule,
                "learning_rate": self.learning_rate, "foreground_fraction": self.foreground_fraction,
                "validation_interval": self.validation_interval, "early_stopping": self.early_stopping,
                "seed": self.seed, "device": self.device,
                "amp": self.amp, "initial_checkpoint": str(self.initial_checkpoint) if self.initial_checkpoint else None,
                "logit_statistics": self.logit_statistics}


def _class_fields(class_map: ClassMap) -> dict:
    d = class_map.to_dict()
    return {"classes": d["classes"], "unlisted_labels": d["unlisted"]}


def _field_error(name: str, problem: str, fix: str) -> InputError:
    return InputError(f"Job field '{name}' {problem}", fix)


def _value(d: dict, name: str):
    """Field ``name`` of the job, or its default, checked against its type and range in protocol.json."""
    spec, default = JOB_FIELDS[name], job_default(name)
    value = d.get(name, default)
    kind = spec["type"]
    if value is None and default is None:
        return None  # left to the plan
    if kind == "bool" and not isinstance(value, bool):
        raise _field_error(name, f"must be true or false; got {value!r}.", f"Write true or false (default {default}).")
    if kind == "choice" and value not in CHOICES[name]:
        raise _field_error(name, f"is {value!r}.", f"Use one of {list(CHOICES[name])}.")
    if kind == "string" and not isinstance(value, str):
        raise _field_error(name, f"must be a string; got {value!r}.", f"E.g. {default!r}.")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (kind == "int" and value != int(value)):
            raise _field_error(name, f"must be {'an integer' if kind == 'int' else 'a finite number'}; got {value!r}.",
                               f"Write a {'whole ' if kind == 'int' else ''}number, e.g. {default}.")
        value = int(value) if kind == "int" else float(value)
        low, high, open_low = spec.get("minimum"), spec.get("maximum"), spec.get("minimum_open", False)
        if (low is not None and (value <= low if open_low else value < low)) or (high is not None and value > high):
            rng = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
            raise _field_error(name, f"must be {rng}; got {value}.", f"E.g. {default}.")
    return value


def parse_target_spacing(values: Optional[Sequence[str]]):
    """A command line's ``--target-spacing``: three numbers (z, y, x in mm), ``native``, or None (planned)."""
    if values is None or list(values) == [NATIVE]:
        return None if values is None else NATIVE
    try:
        if len(values) == 3:
            return [float(v) for v in values]
    except ValueError:
        pass
    raise InputError(f"--target-spacing {' '.join(map(str, values))} is not three numbers (z, y, x in mm) or "
                     f"'{NATIVE}'.", f"E.g. --target-spacing 2 2 2, or {NATIVE} for the images' own spacing.")


def _resolve_path(base: Path, value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def job_from_dict(d: dict, base_dir: Path) -> Job:
    """Validate a job-spec dictionary; relative paths are taken from ``base_dir``."""
    if not isinstance(d, dict):
        raise InputError("The job spec must be a JSON object.", "See docs/protocol.md for the format.")
    if d.get("format", JOB_FORMAT) != JOB_FORMAT or d.get("version", JOB_VERSION) > JOB_VERSION:
        raise _field_error("format/version", f"is {d.get('format')!r} v{d.get('version')}, not {JOB_FORMAT} "
                           f"v{JOB_VERSION}.", "Write the job for this AsymSeg version (docs/protocol.md).")
    known = set(JOB_FIELDS) | {"format", "version"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise _field_error(str(unknown), "is not a known job field.", f"Known fields: {', '.join(sorted(known))}.")
    if "classes" not in d:
        raise _field_error("classes", "is missing.", 'Name the training classes, e.g. {"background": [0], "lesion": [1]}.')
    class_map = ClassMap(d["classes"], _value(d, "unlisted_labels"))
    raw_cases = d.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise _field_error("cases", "must be a non-empty list of cases.", "Add at least one training case.")
    cases = []
    for i, raw in enumerate(raw_cases):
        try:
            case = CaseSpec.from_dict(raw)
        except (TypeError, KeyError, AttributeError) as exc:
            raise _field_error(f"cases[{i}]", f"is not a valid case ({exc}).",
                               'Each case needs "id", "images" (list of paths), "label" and optional "mask", "role".')
        if case.role not in CHOICES["role"]:
            raise _field_error(f"cases[{i}].role", f"is '{case.role}'.", f"Use one of {CHOICES['role']}.")
        case.images = [_resolve_path(base_dir, p) for p in case.images]
        case.label = _resolve_path(base_dir, case.label)
        case.mask = _resolve_path(base_dir, case.mask)
        cases.append(case)
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise _field_error("cases", f"has duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}.",
                           "Give every case a unique id.")
    owner = {}
    for c in cases:
        for path in c.images:
            if path in owner and owner[path] != c.id:
                raise _field_error("cases", f"uses the image {path} in two cases, {owner[path]} and {c.id}.",
                                   "Each case needs its own images: a case counted twice (or as training and "
                                   "validation at once) biases training and validation.")
            owner[path] = c.id
    n_channels = len(cases[0].images)
    channels = list(d.get("channels") or [f"channel{i}" for i in range(n_channels)])
    for c in cases:
        if len(c.images) != len(channels):
            raise _field_error(f"cases[{c.id}].images", f"has {len(c.images)} image(s) but the job has "
                               f"{len(channels)} channel(s) {channels}.", "Give every case one image per channel, "
                               "in the same order.")
        if c.role in ("train", "validation") and c.label is None:
            raise _field_error(f"cases[{c.id}].label", f"is missing for a {c.role} case.", "Give its label map.")
    if not any(c.role == "train" for c in cases):
        raise _field_error("cases", "has no case with role 'train'.", "Mark at least one case as a training case.")

    rarity = d.get("rarity") or {}
    unknown_classes = sorted(set(rarity) - set(class_map.names))
    if not isinstance(rarity, dict) or unknown_classes:
        raise _field_error("rarity", f"names classes {unknown_classes} that are not in 'classes'.",
                           f"Give rarity per class name: {class_map.names}.")
    rarity_list = [float(rarity.get(name, 0.0 if i == 0 else 1.0)) for i, name in enumerate(class_map.names)]
    if any(not 0 <= r <= 1 for r in rarity_list):
        raise _field_error("rarity", f"values must lie in [0, 1]; got {rarity_list}.", "1 = rare, 0 = well represented.")

    net = network_config(d["network"]) if d.get("network") is not None else None
    patch = d.get("patch_size")
    if patch is not None and (not isinstance(patch, list) or len(patch) != 3
                              or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in patch)):
        raise _field_error("patch_size", f"must be three positive integers (z, y, x); got {patch!r}.",
                           "E.g. [48, 48, 48]; [1, 64, 64] for 2D images; leave it out to have it planned.")
    factor = downsampling_factor(net or network_config(None))
    bad = [p for p in patch or [] if p != 1 and p % factor]
    if bad:
        raise _field_error("patch_size", f"{patch} has sizes {bad} not divisible by {factor}, the network's "
                           "downsampling factor.", f"Use multiples of {factor}, e.g. "
                           f"{[max(factor, round(p / factor) * factor) if p != 1 else 1 for p in patch]}.")
    spacing = d.get("target_spacing")
    if spacing is not None and spacing != NATIVE and (not isinstance(spacing, list) or len(spacing) != 3 or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in spacing)):
        raise _field_error("target_spacing", f"must be three positive numbers in mm (z, y, x), \"native\" or null "
                           f"(planned); got {spacing!r}.", "E.g. [2.0, 2.0, 2.0].")
    normalization = d.get("normalization")
    init = d.get("initial_checkpoint")
    output = Path(_resolve_path(base_dir, d.get("output", job_default("output"))))
    technique = resolve_technique(d.get("technique", job_default("technique")))
    if technique.objective != "asymmetric" and _value(d, "loss") != job_default("loss"):
        raise _field_error("loss", f"is '{d['loss']}' but the technique's objective '{technique.objective}' is a "
                           "loss of its own.", f"Leave loss at '{job_default('loss')}' with this technique.")
    return Job(cases=cases, class_map=class_map, output=output, channels=channels, rarity=rarity_list,
               technique=technique, loss=_value(d, "loss"),
               network=net, patch_size=patch,
               target_spacing=[float(s) for s in spacing] if isinstance(spacing, list) else spacing,
               normalization=Normalization.from_dict(normalization) if normalization is not None else None,
               batch_size=_value(d, "batch_size"), iterations=_value(d, "iterations"),
               time_budget_minutes=_value(d, "time_budget_minutes"), early_stopping=_value(d, "early_stopping"),
               optimizer=_value(d, "optimizer"), lr_schedule=_value(d, "lr_schedule"),
               learning_rate=_value(d, "learning_rate"),
               foreground_fraction=_value(d, "foreground_fraction"),
               validation_interval=_value(d, "validation_interval"), seed=_value(d, "seed"),
               device=_value(d, "device"), amp=_value(d, "amp"),
               initial_checkpoint=Path(_resolve_path(base_dir, init)) if init else None,
               logit_statistics=_value(d, "logit_statistics"))


def load_job(path: Path) -> Job:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"Job file {path} does not exist.", "Give the path of a job.json (docs/protocol.md).")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"Job file {path} is not valid JSON: {exc}.", "Fix the file (docs/protocol.md).")
    return job_from_dict(d, path.parent.resolve())


def job_from_dataset(dataset: Path, classes: Sequence[str], train_cases: Sequence[str],
                     val_cases: Sequence[str] = (), test_cases: Sequence[str] = (), **settings) -> dict:
    """A job-spec dictionary for cases of an nnU-Net v2 raw folder (``--dataset`` on the CLI).

    ``classes``: CLI strings ``NAME=v1,v2``; unlisted label values become background.
    ``settings``: any further job fields (technique, iterations, output, ...).
    """
    info, specs = read_nnunet_dataset(Path(dataset))
    by_id = {c.id: c for c in specs}
    roles = {}
    for role, ids in (("train", train_cases), ("validation", val_cases), ("test", test_cases)):
        for case_id in ids:
            if roles.get(case_id, role) != role:
                raise InputError(f"Case {case_id} is both a {roles[case_id]} and a {role} case.",
                                 "Give each case one role: a validation case must be unseen in training.")
            roles[case_id] = role
    missing = sorted(set(roles) - set(by_id))
    if missing:
        raise InputError(f"Case(s) {missing} are not in {dataset}.", f"Available cases: {', '.join(sorted(by_id))}.")
    if not train_cases:
        raise InputError("No training cases were chosen.", "Name them with --train-cases ID,ID.")
    class_map = ClassMap.parse(list(classes))
    cases = []
    for case_id, role in roles.items():
        case = by_id[case_id]
        cases.append({**case.to_dict(), "role": role})
    channel_names = info.get("channel_names", {})
    return {"format": JOB_FORMAT, "version": JOB_VERSION,
            "channels": [channel_names[k] for k in sorted(channel_names, key=int)] or None,
            "cases": cases, **_class_fields(class_map), **settings}
