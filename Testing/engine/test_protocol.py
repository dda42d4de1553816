"""protocol.json is the one source: the engine validates against it and the docs are generated from it."""

import json
import math
from pathlib import Path

import pytest

from AsymSegTrainer import cli, protocol, training
from AsymSegTrainer.errors import AsymSegError, DivergenceError, InputError, ResourceError
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.jobspec import LOSSES, job_from_dict
from AsymSegTrainer.network import network_config
from AsymSegTrainer.techniques import PRESETS, Technique, resolve_technique

REPO = Path(__file__).resolve().parents[2]


def test_generated_docs_are_up_to_date():
    assert protocol.stale_docs(REPO) == [], "run: python -m AsymSegTrainer.protocol --write-docs"
    assert protocol.main(["--root", str(REPO), "--check-docs"]) == 0


def test_a_drifted_table_is_detected_and_rewritten(tmp_path):
    (tmp_path / "docs").mkdir()
    readme = "intro\n<!-- generated: exit-codes -->\n| code | meaning |\n| 0 | stale |\n<!-- end generated -->\nend\n"
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    assert protocol.stale_docs(tmp_path) == ["README.md"]
    assert protocol.main(["--root", str(tmp_path), "--check-docs"]) == 1
    assert protocol.main(["--root", str(tmp_path), "--write-docs"]) == 0
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("<!-- end generated -->\nend\n") and "stale" not in text
    assert "| 10 | cancelled (SIGTERM, SIGINT or a `STOP` file in the output folder) | `cancelled` |" in text
    assert protocol.stale_docs(tmp_path) == []


def test_unknown_generated_block_is_an_error():
    with pytest.raises(KeyError, match="unknown generated block 'nope'"):
        protocol.render_generated("<!-- generated: nope -->\n<!-- end generated -->")


def test_exit_codes_of_errors_and_cli_come_from_the_protocol():
    codes = protocol.EXIT_CODES
    assert codes == {"finished": 0, "internal": 1, "usage": 2, "input": 3, "resource": 4, "divergence": 5,
                     "cancelled": 10}
    assert [InputError("m").exit_code, ResourceError("m").exit_code, DivergenceError("m").exit_code,
            AsymSegError("m").exit_code] == [3, 4, 5, 1]
    for error in (InputError, ResourceError, DivergenceError):
        assert error.kind in codes and error("m").exit_code == codes[error.kind]
    with pytest.raises(SystemExit) as usage:  # argparse's own usage code is the documented one
        cli.main(["train", "--no-such-flag"])
    assert usage.value.code == codes["usage"]
    for entry in protocol.PROTOCOL["exit_codes"]:
        assert f"{entry['code']} {entry['meaning'].split(' (')[0]}" in cli.EPILOG


def test_choices_of_job_cli_and_training_agree():
    assert list(LOSSES) == list(protocol.CHOICES["loss"])
    assert list(training.OPTIMIZERS) == protocol.CHOICES["optimizer"]
    train = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "optimizer")
    assert list(train.choices) == protocol.CHOICES["optimizer"]
    for name, choices in protocol.CHOICES.items():  # every choice is documented in its field's meaning
        meaning = protocol.JOB_FIELDS["cases" if name == "role" else name]["meaning"]
        for choice in choices:
            assert f"`{choice}`" in meaning or f'\\"{choice}\\"' in json.dumps(meaning), (name, choice)


def test_technique_fields_and_presets_are_the_data():
    settings = protocol.TECHNIQUE_SETTINGS
    assert [f for f in Technique.__dataclass_fields__] == ["preset", *settings]
    assert set(PRESETS) == {p["name"] for p in protocol.PROTOCOL["technique"]["presets"]}
    assert protocol.RECOMMENDED in PRESETS
    for name, values in PRESETS.items():
        resolved = resolve_technique(name)
        for key in settings:
            assert getattr(resolved, key) == values.get(key, settings[key]["default"]), (name, key)
    combination = resolve_technique("asymmetric-combination")
    assert combination.adversarial and combination.mixup and not combination.symmetric
    # the paper's BRATS 5% combination (Supplementary Table V), with the official update structure
    assert (combination.margin, combination.gamma, combination.l, combination.mixup_alpha, combination.mixup_margin,
            combination.update) == (1.0, 1.5, 10.0, 1.0, 0.2, "sequential")


@pytest.mark.parametrize("key", [k for k, s in protocol.TECHNIQUE_SETTINGS.items() if s["type"] == "float"])
def test_every_technique_range_is_enforced_at_its_bounds(key):
    s = protocol.TECHNIQUE_SETTINGS[key]
    preset = "asymmetric-mixup" if key == "mixup_alpha" else "vanilla"
    assert getattr(resolve_technique({"preset": preset, key: s["maximum"]}), key) == s["maximum"]
    for bad in (s["maximum"] * 1.01 + 1e-9, s["minimum"] - 1e-9, math.nan, math.inf, "1", True):
        with pytest.raises(InputError, match=f"technique.{key} must be a number in"):
            resolve_technique({"preset": preset, key: bad})


def test_technique_flags_must_be_booleans_and_unknown_settings_are_named():
    with pytest.raises(InputError, match="technique.mixup must be true or false; got 'false'"):
        resolve_technique({"preset": "vanilla", "mixup": "false"})
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['dropout'\]"):
        resolve_technique({"preset": "vanilla", "dropout": 0.5})
    with pytest.raises(InputError, match="mixup_alpha must be > 0 when mixup is on"):
        resolve_technique({"preset": "asymmetric-mixup", "mixup_alpha": 0.0})


def _minimal_job(**fields):
    return {"cases": [{"id": "a", "images": ["a.nii.gz"], "label": "a_label.nii.gz"}],
            "classes": {"background": [0], "lesion": [1]}, **fields}


def test_job_defaults_come_from_the_protocol(tmp_path):
    job = job_from_dict(_minimal_job(), tmp_path)
    for name in ("optimizer", "foreground_fraction", "seed", "device", "amp", "logit_statistics", "loss",
                 "time_budget_minutes", "early_stopping"):
        assert getattr(job, name) == protocol.job_default(name), name
    assert job.output == tmp_path / protocol.job_default("output")
    planned = [f["name"] for f in protocol.JOB_FIELDS.values() if "planned (`plan`)" in f["meaning"]]
    assert set(job.unplanned()) == set(planned) and len(planned) == 8
    assert all(protocol.job_default(name) is None for name in planned)
    assert network_config(None) == {"name": "unet", **protocol.CHOICES["network"]["unet"]}
    assert job.to_dict()["format"] == protocol.JOB_FORMAT and job.to_dict()["version"] == protocol.JOB_VERSION


@pytest.mark.parametrize("name, value, message", [
    ("amp", "false", "'amp' must be true or false; got 'false'"),
    ("logit_statistics", 1, "'logit_statistics' must be true or false"),
    ("learning_rate", math.nan, "'learning_rate' must be a finite number; got nan"),
    ("learning_rate", 0.0, "'learning_rate' must be > 0.0 and <= 1.0; got 0.0"),
    ("learning_rate", 2.0, "'learning_rate' must be > 0.0 and <= 1.0; got 2.0"),
    ("batch_size", 2.5, "'batch_size' must be an integer; got 2.5"),
    ("iterations", 0, "'iterations' must be >= 1; got 0"),
    ("foreground_fraction", 1.5, "'foreground_fraction' must be >= 0.0 and <= 1.0"),
    ("optimizer", "adagrad", "'optimizer' is 'adagrad'"),
    ("loss", "focal", "'loss' is 'focal'"),
    ("device", 0, "'device' must be a string"),
    ("unlisted_labels", "ignore", "'unlisted_labels' is 'ignore'"),
    ("target_spacing", [1.0, math.nan, 1.0], "'target_spacing' must be three positive numbers in mm"),
    ("target_spacing", "coarse", "'target_spacing' must be three positive numbers in mm"),
])
def test_job_fields_are_checked_against_their_type_and_range(tmp_path, name, value, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        job_from_dict(_minimal_job(**{name: value}), tmp_path)


def test_unknown_job_and_network_fields_are_errors(tmp_path):
    with pytest.raises(InputError, match=r"\['dropout'\]' is not a known job field"):
        job_from_dict(_minimal_job(dropout=0.5), tmp_path)
    with pytest.raises(InputError, match=r"network has unknown setting\(s\) \['dropout'\] for 'unet'"):
        job_from_dict(_minimal_job(network={"dropout": 0.5}), tmp_path)
    with pytest.raises(InputError, match="network.name 'vnet' is not supported"):
        network_config({"name": "vnet"})
    defaults = network_config({"name": "dynunet"})
    defaults["strides"].append(2)  # the protocol's defaults are copied, never shared
    assert network_config({"name": "dynunet"})["strides"] == protocol.CHOICES["network"]["dynunet"]["strides"]


def test_events_must_be_protocol_events_with_their_keys(capsys):
    sink = EventSink(json_stdout=True, progress_bar=False)
    try:
        sink.emit("warning", message="m", hint="h")
        with pytest.raises(ValueError, match="event 'chat' with keys"):
            sink.emit("chat", message="hello")
        with pytest.raises(ValueError, match=r"required: \['kind', 'path', 'iteration'\]"):
            sink.emit("checkpoint", kind="last", path="/x")
    finally:
        sink.close()
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["warning"]
