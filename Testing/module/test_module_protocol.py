"""Contract tests: the module and the engine read one protocol.json and cannot drift apart.

The module never imports the engine; these tests import both (the engine from the repository
root) and compare what each half does with the same data: presets, setting ranges, job
defaults, exit codes and event types. They also check that the extension ships every engine
file the module relies on.
"""

from __future__ import annotations

import re
import types

import pytest

from asymseg_module_testing import MODULE_DIR, REPO

engine_protocol = pytest.importorskip("AsymSegTrainer.protocol")
techniques = pytest.importorskip("AsymSegTrainer.techniques")
jobspec = pytest.importorskip("AsymSegTrainer.jobspec")
errors = pytest.importorskip("AsymSegTrainer.errors")

from AsymSegLib import Protocol  # noqa: E402
from AsymSegLib.Events import EXIT_MESSAGES, EventType, ExitCode, eventFromDict  # noqa: E402
from AsymSegLib.JobSpec import PLANNED_FIELDS, TrainingSettings, buildJob  # noqa: E402
from AsymSegLib.ParameterNode import TECHNIQUE_FIELDS  # noqa: E402
from AsymSegLib.Presets import PRESETS, SETTINGS, techniqueSpec  # noqa: E402
from AsymSegLib.SceneExport import ExportedCase  # noqa: E402


def test_the_module_reads_the_engine_file():
    assert Protocol.engineFolder() == REPO
    assert Protocol.protocol() == engine_protocol.PROTOCOL


def test_setting_ranges_are_the_engines_and_both_halves_enforce_them():
    numeric = {k for k, s in engine_protocol.TECHNIQUE_SETTINGS.items() if s["type"] == "float"}
    assert set(SETTINGS) == set(TECHNIQUE_FIELDS) == numeric
    for key, s in SETTINGS.items():
        e = engine_protocol.TECHNIQUE_SETTINGS[key]
        assert (s.minimum, s.maximum, s.decimals, s.tooltip) == (e["minimum"], e["maximum"], e["decimals"], e["tooltip"])
        name = next(n for n, p in PRESETS.items() if key in p.defaults)
        above = s.maximum + 1.0
        with pytest.raises(ValueError, match=re.escape(s.label)):  # the panel refuses it ...
            techniqueSpec(name, {key: above})
        with pytest.raises(errors.InputError, match=f"technique.{key}"):  # ... and so would the engine
            techniques.resolve_technique({"preset": name, key: above})
        assert getattr(techniques.resolve_technique(techniqueSpec(name, {key: s.maximum})), key) == s.maximum


def test_each_preset_sends_what_the_engine_would_use():
    assert list(PRESETS) == list(techniques.PRESETS)
    for name, preset in PRESETS.items():
        assert techniques.resolve_technique(techniqueSpec(name)) == techniques.resolve_technique(name), name
        used = {k for k in SETTINGS if techniques.PRESETS[name].get(k) is not None}
        assert set(preset.settingKeys) == used, name  # the panel shows exactly the preset's numeric settings


def test_a_job_with_the_panels_defaults_leaves_every_planned_field_to_the_engine(tmp_path):
    """The panel's auto settings are the engine's planned fields, and its other defaults are the engine's own."""
    assert set(PLANNED_FIELDS) == set(jobspec.PLANNED_FIELDS)
    export = types.SimpleNamespace(channels=["channel0"], classes={"background": [0], "lesion": [1]},
                                   rarity={"background": 0.0, "lesion": 1.0},
                                   cases=[ExportedCase("a", ["a.nrrd"], "a_label.nrrd", "train")])
    job = buildJob(export, TrainingSettings())
    explicit = jobspec.job_from_dict(job, tmp_path)
    assert sorted(explicit.unplanned()) == sorted(jobspec.PLANNED_FIELDS)
    implicit = jobspec.job_from_dict({k: job[k] for k in ("cases", "classes")}, tmp_path).to_dict()
    implicit["technique"] = explicit.to_dict()["technique"]  # the job default is vanilla, the panel's the recommended
    assert explicit.to_dict() == implicit
    user = jobspec.job_from_dict(buildJob(export, TrainingSettings(targetSpacing="native", batchSize=2)), tmp_path)
    assert sorted(set(jobspec.PLANNED_FIELDS) - set(user.unplanned())) == ["batch_size", "target_spacing"]
    assert user.given()["target_spacing"] == "native"


def test_exit_codes_and_messages_are_the_engines():
    assert {c.name.lower(): int(c) for c in ExitCode} == engine_protocol.EXIT_CODES
    assert set(EXIT_MESSAGES) == set(ExitCode)
    for error in (errors.InputError, errors.ResourceError, errors.DivergenceError):
        assert ExitCode[error.kind.upper()] == error("m").exit_code


def test_event_types_are_the_engines_and_each_parses_to_its_typed_event():
    assert {t.value for t in EventType} - {"log"} == set(engine_protocol.EVENT_KEYS)
    for kind, keys in engine_protocol.EVENT_KEYS.items():
        event = eventFromDict({"type": kind, "time": 1.0, **{k: None for k in keys}})
        assert event.type is EventType(kind) and type(event).__name__.lower() == f"{kind}event", kind


def cmakeList(text: str, variable: str) -> list:
    match = re.search(r"set\(" + variable + r"\s+(.*?)\)", text, re.S)
    return match.group(1).split() if match else []


def test_extension_ships_every_engine_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"file\(GLOB_RECURSE ASYMSEG_ENGINE_SCRIPTS .*AsymSegTrainer/\*\.py\)", text), \
        "engine scripts must be globbed recursively (subpackages such as bench/)"
    assert 'RESOURCES "${ASYMSEG_ENGINE_RESOURCES}"' in text
    resources = set(cmakeList(text, "ASYMSEG_ENGINE_RESOURCES"))
    data = {p.relative_to(REPO).as_posix() for p in (REPO / "AsymSegTrainer").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert data and resources == data, f"not shipped: {sorted(data - resources)}; listed but absent: " \
                                       f"{sorted(resources - data)}"


@pytest.mark.parametrize("network,factor", [
    (None, 8),                                                      # the engine's default UNet: strides 2, 2, 2
    ({"name": "dynunet"}, 8),                                       # strides 1, 2, 2, 2
    ({"name": "unet", "strides": [2, [1, 2, 2]]}, 4),               # an anisotropic stride counts by its largest
    ({"name": "segresnet"}, 8),                                     # blocks_down [1, 2, 2, 4]: three halvings
    ({"name": "segresnet", "blocks_down": [1, 2]}, 2),
])
def test_the_panel_checks_a_patch_against_the_networks_downsampling(network, factor):
    settings = TrainingSettings(network=network, patchSize=(factor * 3, factor * 3, factor * 3 + 1))
    assert settings.downsamplingFactor() == factor
    assert any(f"[{factor * 3 + 1}] are not multiples of {factor}" in p for p in settings.problems())
