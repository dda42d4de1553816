"""The job's network: defaults, validation of its settings, and the downsampling factor patch sizes must respect."""

import inspect

import pytest
import torch

from AsymSegTrainer import protocol
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.jobspec import job_from_dict
from AsymSegTrainer.network import MONAI_CLASSES, build_network, downsampling_factor, load_weights, network_config


def _job(**fields):
    return {"cases": [{"id": "a", "images": ["a.nii.gz"], "label": "a_label.nii.gz"}],
            "classes": {"background": [0], "lesion": [1]}, **fields}


def test_every_protocol_network_is_a_monai_class_the_engine_builds():
    from monai.networks import nets

    assert set(MONAI_CLASSES) == set(protocol.CHOICES["network"]) == {"unet", "dynunet", "segresnet"}
    for name, monai_class in MONAI_CLASSES.items():
        assert type(build_network({"name": name}, 1, 2)) is getattr(nets, monai_class), name


def test_segresnet_defaults_are_a_small_monai_segresnet():
    from monai.networks.nets import SegResNet

    config = network_config({"name": "segresnet"})
    assert config == {"name": "segresnet", "init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]}
    monai = inspect.signature(SegResNet).parameters  # and they are MONAI's own
    assert config["init_filters"] == monai["init_filters"].default
    assert (config["blocks_down"], config["blocks_up"]) == (list(monai["blocks_down"].default),
                                                            list(monai["blocks_up"].default))
    config["blocks_down"].append(2)  # the protocol's defaults are copied, never shared
    assert network_config({"name": "segresnet"})["blocks_down"] == [1, 2, 2, 4]


@pytest.mark.parametrize("settings, message", [
    ({"init_filters": 12}, "network.init_filters must be a positive multiple of 8 .*got 12"),
    ({"init_filters": 0}, "network.init_filters must be a positive multiple of 8 .*got 0"),
    ({"init_filters": True}, "network.init_filters must be a positive multiple of 8 .*got True"),
    ({"init_filters": "16"}, "network.init_filters must be a positive multiple of 8 .*got '16'"),
    ({"blocks_down": [1, 0, 2]}, r"network.blocks_down must be a list of positive integers .*got \[1, 0, 2\]"),
    ({"blocks_down": [1, 1.5]}, r"network.blocks_down must be a list of positive integers .*got \[1, 1.5\]"),
    ({"blocks_down": 4}, "network.blocks_down must be a list of positive integers .*got 4"),
    ({"blocks_down": [], "blocks_up": []}, "network.blocks_down is empty"),
    ({"blocks_up": [1, True, 1]}, r"network.blocks_up must be a list of positive integers .*got \[1, True, 1\]"),
    ({"blocks_up": [1, 1]}, "network.blocks_up has 2 entries and network.blocks_down 4"),
    ({"blocks_down": [1, 2], "blocks_up": [1, 1]}, "network.blocks_up has 2 entries and network.blocks_down 2"),
    ({"strides": [2, 2]}, r"network has unknown setting\(s\) \['strides'\] for 'segresnet'"),
])
def test_bad_segresnet_settings_name_the_field_and_what_to_do(tmp_path, settings, message):
    with pytest.raises(InputError, match=message) as info:
        network_config({"name": "segresnet", **settings})
    assert info.value.hint.startswith("E.g.") or "blocks_down, blocks_up, init_filters" in info.value.hint
    with pytest.raises(InputError, match=message):  # and the job refuses it
        job_from_dict(_job(network={"name": "segresnet", **settings}), tmp_path)


def test_an_unknown_network_name_lists_the_three_networks():
    with pytest.raises(InputError, match="network.name 'vnet' is not supported") as info:
        network_config({"name": "vnet"})
    for name, monai_class in (("unet", "UNet"), ("dynunet", "DynUNet"), ("segresnet", "SegResNet")):
        assert f"'{name}' (MONAI {monai_class})" in info.value.hint


@pytest.mark.parametrize("network, factor", [
    (None, 8),  # the default UNet, strides [2, 2, 2]
    ({"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1}, 2),
    ({"name": "dynunet"}, 8),  # strides [1, 2, 2, 2]
    ({"name": "dynunet", "filters": [4, 8, 8], "strides": [1, 2, 2]}, 4),
    ({"name": "segresnet"}, 8),  # blocks_down [1, 2, 2, 4]: three halvings
    ({"name": "segresnet", "blocks_down": [2], "blocks_up": []}, 1),
    ({"name": "segresnet", "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}, 4),
    ({"name": "segresnet", "blocks_down": [1, 1, 1, 1, 1], "blocks_up": [1, 1, 1, 1]}, 16),
])
def test_downsampling_factor(network, factor):
    assert downsampling_factor(network) == factor


@pytest.mark.parametrize("blocks_down", [[1, 1], [1, 1, 1]])
def test_monais_segresnet_takes_multiples_of_the_factor_and_fails_between(blocks_down):
    """The factor checked against MONAI itself: a multiple goes through at full size, a size between does not."""
    config = {"name": "segresnet", "blocks_down": blocks_down, "blocks_up": [1] * (len(blocks_down) - 1)}
    factor = downsampling_factor(config)
    model = build_network(config, 1, 2).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 3 * factor, factor, 2 * factor)).shape == (1, 2, 3 * factor, factor, 2 * factor)
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 1, 3 * factor + factor // 2, factor, factor))


def test_the_job_refuses_a_patch_that_is_not_a_multiple_of_segresnets_factor(tmp_path):
    network = {"name": "segresnet", "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}
    with pytest.raises(InputError, match=r"'patch_size' \[16, 16, 18\] has sizes \[18\] not divisible by 4") as info:
        job_from_dict(_job(network=network, patch_size=[16, 16, 18]), tmp_path)
    assert "Use multiples of 4" in info.value.hint
    job = job_from_dict(_job(network=network, patch_size=[12, 16, 20]), tmp_path)
    assert job.network == network_config(network) and job.patch_size == [12, 16, 20]
    with pytest.raises(InputError, match="not divisible by 8"):  # the default blocks: [1, 2, 2, 4]
        job_from_dict(_job(network={"name": "segresnet"}, patch_size=[12, 16, 16]), tmp_path)


def test_load_weights_resets_only_segresnets_final_convolution_for_other_classes():
    config = {"name": "segresnet", "blocks_down": [1, 1], "blocks_up": [1]}
    two, three = build_network(config, 2, 2), build_network(config, 2, 3)
    before = {k: v.clone() for k, v in three.state_dict().items()}
    assert load_weights(three, two.state_dict()) == ["conv_final.2.conv.weight", "conv_final.2.conv.bias"]
    for key, value in three.state_dict().items():
        expected = before[key] if key.startswith("conv_final.2.") else two.state_dict()[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
