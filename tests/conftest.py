import sys
from pathlib import Path

import pytest
import torch

# The command-line tools (argtypes) for tests that load a tool by its path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
# Test helpers (helpers.py, photos.py); pytest's importlib mode does not put tests/ on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import helpers  # noqa: E402

from mobileone_mm.devkit import analysis  # noqa: E402


@pytest.fixture
def randomize_bn():
    """devkit.analysis.randomize_bn: non-trivial BN statistics and affine values."""
    return analysis.randomize_bn


@pytest.fixture
def rel_error():
    """helpers.rel_error: max |a - e| / max |e|, in float64."""
    return helpers.rel_error


@pytest.fixture(scope='session')
def tiny_classifier(tmp_path_factory):
    """helpers.make_tiny_classifier, built once: name -> path of the tiny classifier's
    config, checkpoint, ONNX graph and a photo. Read-only: tests write elsewhere (and
    those that check their inputs stay unchanged snapshot its 'dir')."""
    return helpers.make_tiny_classifier(tmp_path_factory.mktemp('tiny_classifier'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
