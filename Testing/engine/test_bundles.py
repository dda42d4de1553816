"""MONAI bundles: export a model that MONAI loads as it is, and fine-tune from a bundle."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AsymSegTrainer.bundles import bundle_network, export_bundle, inference_config, load_initial_model
from AsymSegTrainer.data import Normalization, load_case, read_nnunet_dataset
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.inference import load_predictor
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.network import build_network, load_model_file, network_config, save_model
from AsymSegTrainer.prediction import predict_logits
from AsymSegTrainer.training import Trainer

from conftest import TINY_NETWORK, UNPLANNED

TINY_DYNUNET = {"name": "dynunet", "filters": [4, 8, 8], "strides": [1, 2, 2]}
TINY_SEGRESNET = {"name": "segresnet", "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}
NETWORKS = {"unet": TINY_NETWORK, "dynunet": TINY_DYNUNET, "segresnet": TINY_SEGRESNET}


def model_file(path, network=TINY_NETWORK, normalization=None, seed=0):
    """A model file as training writes it (random weights), without training."""
    torch.manual_seed(seed)
    meta = {"class_names": ["background", "lesion"], "classes": {"background": [], "lesion": [1]},
            "unlisted": "background", "rarity": [0.0, 1.0], "channels": ["t1", "t2"],
            "normalization": normalization or {"mode": "zscore", "window": None, "statistics": "foreground"},
            "target_spacing": None, "network": network_config(network), "spatial_dims": 3, "patch_size": [16, 16, 16],
            "technique": {"preset": "asymmetric-focal", "gamma": 2.0}}
    save_model(path, build_network(network, 2, 2), meta)
    return path


def quiet():
    return EventSink(progress_bar=False)


def monai_network(bundle: Path):
    """The bundle's network as MONAI builds it: ConfigParser's network_def and the weights of models/model.pt."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return parser, network.eval()


# ------------------------------------------------------------------ export

@pytest.mark.parametrize("name, monai_class", [("unet", "UNet"), ("dynunet", "DynUNet"), ("segresnet", "SegResNet")])
def test_monai_builds_the_exported_network_with_the_same_output(tmp_path, name, monai_class):
    network = NETWORKS[name]
    model = model_file(tmp_path / "model.pt", network)
    outputs = export_bundle(model, tmp_path / "bundle", quiet())
    _, bundled = monai_network(tmp_path / "bundle")  # a strict load_state_dict
    assert type(bundled).__module__.startswith("monai.networks.nets") and type(bundled).__name__ == monai_class
    engine = load_predictor(model, "cpu").model
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bundled(x), engine(x), rtol=0, atol=1e-5)
    assert set(outputs) == {"bundle", "metadata", "inference", "weights", "readme"}
    # and the engine reads back the network it wrote
    _, meta = load_initial_model(tmp_path / "bundle")
    assert meta["network"] == network_config(network) and meta["spatial_dims"] == 3


def test_export_cli_writes_metadata_and_readme(tmp_path):
    model = model_file(tmp_path / "model.pt")
    out = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, "-m", "AsymSegTrainer", "export", "--model", str(model), "--format",
                           "monai-bundle", "--out", str(out), "--events"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["command"] == "export" and events[-1]["outputs"]["bundle"] == str(out)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors",
                "copyright"):
        assert meta[key], key
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["type"] == "image" and image["num_channels"] == 2 and image["channel_def"] == {"0": "t1", "1": "t2"}
    assert image["spatial_shape"] == [16, 16, 16] and image["is_patch_data"] and image["dtype"] == "float32"
    assert pred["num_channels"] == 2 and pred["channel_def"] == {"0": "background", "1": "lesion"}
    assert meta["asymseg"]["normalization"]["mode"] == "zscore" and meta["asymseg"]["model"] == str(model)
    assert str(model) in (out / "docs" / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "model.pt"]  # no staging folder left


@pytest.mark.parametrize("normalization", [{"mode": "zscore", "window": None, "statistics": "foreground"},
                                           {"mode": "ct", "window": [100.0, 600.0], "statistics": "foreground"}],
                         ids=["zscore", "ct"])
def test_the_bundles_preprocessing_and_inferer_give_the_engines_logits(phantom_dataset, tmp_path, normalization):
    """After reading (LoadImaged needs nibabel or itk, not installed here): MONAI's (C, x, y, z) arrays."""
    from monai.data import MetaTensor

    model = model_file(tmp_path / "model.pt", normalization=normalization)
    export_bundle(model, tmp_path / "bundle", quiet())
    parser, network = monai_network(tmp_path / "bundle")
    preprocessing, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    names = [type(t).__name__ for t in preprocessing.transforms]
    assert names[:3] == ["LoadImaged", "EnsureChannelFirstd", "Transposed"]  # no Spacingd: the model's own spacing

    _, specs = read_nnunet_dataset(phantom_dataset)
    raw = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(p)) for p in specs[0].images]).astype(np.float32)
    loaded = {"image": MetaTensor(torch.from_numpy(raw.transpose(0, 3, 2, 1).copy()))}  # (C, x, y, z)
    for transform in preprocessing.transforms[2:]:
        loaded = transform(loaded)
    engine_case = load_case(specs[0], None, Normalization.from_dict(normalization))
    np.testing.assert_allclose(loaded["image"].numpy(), engine_case.image, rtol=0, atol=1e-5)

    predictor = load_predictor(model, "cpu")
    with torch.no_grad():
        bundled = inferer(torch.as_tensor(loaded["image"])[None], network)[0]
    engine = predict_logits(predictor.model, engine_case.image, [16, 16, 16], torch.device("cpu"))
    torch.testing.assert_close(torch.as_tensor(bundled), engine, rtol=0, atol=1e-5)


def test_monai_runs_the_bundle_as_it_is_to_the_engines_label_map(phantom_dataset, tmp_path):
    """MONAI's own runner on files (needs MONAI's optional pytorch-ignite and nibabel; skipped without them)."""
    pytest.importorskip("ignite")
    pytest.importorskip("nibabel")
    from monai.bundle import run as monai_run

    from AsymSegTrainer.inference import infer_case

    model = model_file(tmp_path / "model.pt")
    bundle = tmp_path / "bundle"
    export_bundle(model, bundle, quiet())
    _, specs = read_nnunet_dataset(phantom_dataset)
    monai_run(config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle),
              dataset_dir=str(Path(specs[0].images[0]).parent))
    engine = infer_case(model, specs[0].images, tmp_path / "engine.nii.gz", postprocess="none", device="cpu",
                        sink=quiet())
    bundled = sitk.ReadImage(str(bundle / "eval" / f"{specs[0].id}_0000_seg.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(bundled),
                                  sitk.GetArrayFromImage(sitk.ReadImage(engine["prediction"])))


def test_export_refuses_a_folder_that_holds_files(tmp_path):
    model = model_file(tmp_path / "model.pt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=f"The bundle folder {tmp_path / 'taken'} is not empty"):
        export_bundle(model, tmp_path / "taken", quiet())
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert Path(export_bundle(model, tmp_path / "empty", quiet())["weights"]).is_file()


def test_a_spacing_reaches_spacingd_and_comes_back(tmp_path):
    meta = {**load_model_file(model_file(tmp_path / "model.pt"))[1], "target_spacing": [3.0, 2.0, 1.0]}
    config = inference_config(meta)
    (spacing,) = [t for t in config["preprocessing"]["transforms"] if t["_target_"] == "Spacingd"]
    assert spacing["pixdim"] == [1.0, 2.0, 3.0]  # MONAI's x, y, z
    bundle = tmp_path / "bundle"
    export_bundle(tmp_path / "model.pt", bundle, quiet())
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    assert load_initial_model(bundle)[1]["target_spacing"] == [3.0, 2.0, 1.0]


# ------------------------------------------------------------------ fine-tuning from a bundle

def finetune_job(dataset, out, bundle, classes=("lesion=1",)):
    """A job that leaves the network to the plan (which takes the bundle's) and starts from a fresh seed."""
    spec = job_from_dataset(dataset, list(classes), ["phantom_000"], [], output=str(out), patch_size=[16, 16, 16],
                            batch_size=2, iterations=1, device="cpu", validation_interval=1, logit_statistics=False,
                            seed=1, initial_checkpoint=str(bundle), **UNPLANNED)
    return job_from_dict(spec, Path(out).parent)


def run(job):
    sink = quiet()
    try:
        return Trainer(job, sink).run(), sink.events
    finally:
        sink.close()


def test_finetuning_from_an_exported_bundle_loads_its_weights(phantom_dataset, tmp_path):
    bundle = tmp_path / "bundle"
    export_bundle(model_file(tmp_path / "model.pt"), bundle, quiet())
    result, events = run(finetune_job(phantom_dataset, tmp_path / "run", bundle))
    assert not [e for e in events if e["type"] == "warning"]
    (plan,) = [e["plan"] for e in events if e["type"] == "plan"]
    assert plan["settings"]["network"] == network_config(TINY_NETWORK) and plan["source"]["network"] == "initial model"
    start = torch.load(bundle / "models" / "model.pt", weights_only=True)
    tuned = load_model_file(result.model)[0]["state_dict"]
    for name, value in start.items():  # one Adam step at lr 1e-3 moves a weight by at most 1e-3
        torch.testing.assert_close(tuned[name], value, rtol=0, atol=1.01e-3, msg=name)


@pytest.mark.parametrize("name, output_layer", [
    ("unet", ["model.2.0.conv.weight", "model.2.0.conv.bias", "model.2.1.conv.unit0.conv.weight",
              "model.2.1.conv.unit0.conv.bias"]),  # the last up-sampling convolution and its residual unit
    ("segresnet", ["conv_final.2.conv.weight", "conv_final.2.conv.bias"]),
])
def test_finetuning_a_bundle_to_other_classes_reinitialises_the_output_layer(phantom_dataset, tmp_path, name,
                                                                             output_layer):
    bundle = tmp_path / "bundle"
    export_bundle(model_file(tmp_path / "model.pt", NETWORKS[name]), bundle, quiet())
    result, events = run(finetune_job(phantom_dataset, tmp_path / "run", bundle, classes=("lesion=1", "ghost=7")))
    (warning,) = [e["message"] for e in events if e["type"] == "warning"]
    assert "2 classes and this job 3" in warning and f"re-initialised ({', '.join(output_layer)})" in warning
    state, meta = load_model_file(result.model)
    assert meta["network"] == network_config(NETWORKS[name]) and meta["class_names"][-1] == "ghost"
    start, tuned = torch.load(bundle / "models" / "model.pt", weights_only=True), state["state_dict"]
    assert set(tuned) == set(start) and [k for k in start if tuned[k].shape != start[k].shape] == output_layer
    for key in set(start) - set(output_layer):  # kept, then one Adam step at lr 1e-3
        torch.testing.assert_close(tuned[key], start[key], rtol=0, atol=1.01e-3, msg=key)


def test_a_bundle_without_configs_names_the_missing_file(phantom_dataset, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    torch.save(build_network(TINY_NETWORK, 2, 2).state_dict(), bundle / "models" / "model.pt")
    with pytest.raises(InputError, match=f"{bundle / 'configs' / 'metadata.json'} does not exist") as info:
        run(finetune_job(phantom_dataset, tmp_path / "run", bundle))
    assert "configs/inference.json" in info.value.message and "export" in info.value.hint


UNET_DEF = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 2,
            "channels": [4, 8], "strides": [2], "num_res_units": 1}


SEGRESNET_DEF = {"_target_": "monai.networks.nets.SegResNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 2,
                 "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}


def test_a_bundle_unet_spelling_out_monais_defaults_is_the_engines():
    network_def = {**UNET_DEF, "_target_": "UNet", "norm": "INSTANCE", "kernel_size": 3, "dropout": 0}
    assert bundle_network(network_def, Path("inference.json")) == (network_config(TINY_NETWORK), 3, 2, 2)


def test_a_bundle_segresnet_spelling_out_monais_defaults_or_leaving_them_out_is_the_engines():
    spelt = {**SEGRESNET_DEF, "norm": ["GROUP", {"num_groups": 8}], "act": ["relu", {"inplace": True}],
             "upsample_mode": "nontrainable", "use_conv_final": True, "dropout_prob": None}
    assert bundle_network(spelt, Path("inference.json")) == (TINY_SEGRESNET, 3, 2, 2)
    bare = {k: v for k, v in SEGRESNET_DEF.items() if k not in ("blocks_down", "blocks_up")}  # MONAI's (1, 2, 2, 4)
    expected = {"name": "segresnet", "init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]}
    assert bundle_network(bare, Path("inference.json")) == (expected, 3, 2, 2)


@pytest.mark.parametrize("change, message", [
    ({"norm": "batch"}, "norm is 'batch' where AsymSeg's is 'INSTANCE'"),
    ({"_target_": "monai.networks.nets.VNet"}, "builds MONAI UNet, DynUNet, SegResNet only"),
    ({"in_channels": "@channels"}, "sets in_channels by a reference or an expression"),
    ({"flavour": 1}, "flavour is not an argument of MONAI UNet"),
])
def test_a_network_the_engine_cannot_build_is_named(change, message):
    with pytest.raises(InputError, match=f"inference.json: .*{message}"):
        bundle_network({**UNET_DEF, **change}, Path("inference.json"))


@pytest.mark.parametrize("change, message", [
    ({"dropout_prob": 0.2}, "dropout_prob is 0.2 where AsymSeg's is None"),
    ({"use_conv_final": False}, "use_conv_final is False where AsymSeg's is True"),
    ({"init_filters": "$8 * 2"}, "sets init_filters by a reference or an expression"),
    ({"blocks_up": "@blocks"}, "sets blocks_up by a reference or an expression"),
    ({"init_filters": 12}, "network.init_filters must be a positive multiple of 8"),
    ({"blocks_up": [1, 1]}, "network.blocks_up has 2 entries and network.blocks_down 2"),
    ({"channels": [4, 8]}, "channels is not an argument of MONAI SegResNet"),
])
def test_a_segresnet_the_engine_cannot_build_is_named(change, message):
    with pytest.raises(InputError, match=f"inference.json: .*{message}"):
        bundle_network({**SEGRESNET_DEF, **change}, Path("inference.json"))
