"""Shared fixtures: generated phantom data (never real patient data in the repo) and the BRATS folder."""

import os
from pathlib import Path

import pytest

BRATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset001_BraTS2015_DeepMedic6"
TINY_NETWORK = {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1}
UNPLANNED = {"normalization": {"mode": "zscore"}, "target_spacing": "native", "learning_rate": 1e-3}
"""With these, a network, patch and batch size, iterations and a validation interval, a job leaves nothing to the
plan: Trainer methods can then be called one by one."""

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory):
    """Four 24^3 two-channel phantom cases in nnU-Net layout (ids phantom_000 ... phantom_003)."""
    from AsymSegTrainer.phantoms import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantoms"), num_cases=4, shape=(24, 24, 24))


@pytest.fixture
def brats():
    if not BRATS.is_dir():
        pytest.skip(f"real data not present at {BRATS}")
    return BRATS
