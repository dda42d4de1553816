"""Fixtures of the module tests (helpers: asymseg_module_testing.py and panel_testing.py, unique module names)."""

import gc

import pytest

from asymseg_module_testing import buildEnvironment
from panel_testing import panelFactory  # noqa: F401 - the fixture of the panel tests


@pytest.fixture
def mrml():
    """A fresh scene with the Colors, Volumes, Segmentations and Plots logics; ``slicer.mrmlScene`` is it."""
    env = buildEnvironment()
    yield env
    # no scene.Clear(1): with these logics attached it crashes slicer-core; the scene is dropped instead,
    # and collected now: left to the collection at exit, the scenes of the whole session (subject hierarchies
    # and observers since the run folders) segfaulted there after all tests had passed
    del env
    gc.collect()
