"""Shared fixtures (helpers that build phantoms live in `phantoms.py`)."""

import pytest

from neuroldm.config import load_config


@pytest.fixture
def small_cfg():
    """A coarse grid so that preparing a phantom takes milliseconds."""
    return load_config(None, None, ["prepare.spacing=[4,4,4]", "prepare.grid=[40,48,40]", "split.folds=2",
                                    "split.val_fraction=0.2", "split.test_fraction=0.2"])
