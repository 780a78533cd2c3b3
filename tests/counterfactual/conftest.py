"""The tiny trained run shared by the counterfactual tests (built once per session)."""

import pytest

from counterfactual_run import make_counterfactual_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return make_counterfactual_run(tmp_path_factory.mktemp("counterfactual"))
