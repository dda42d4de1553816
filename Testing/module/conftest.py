"""Fixtures of the module tests (helpers: asymseg_module_testing.py, a unique module name)."""

import pytest

from asymseg_module_testing import buildEnvironment


@pytest.fixture
def mrml():
    """A fresh scene with the Colors, Volumes, Segmentations and Plots logics; ``slicer.mrmlScene`` is it."""
    env = buildEnvironment()
    yield env
    # no scene.Clear(1): with these logics attached it crashes slicer-core; the scene is dropped instead
