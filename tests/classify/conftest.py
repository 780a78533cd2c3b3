"""The tiny prepared cohort shared by the classifier tests (built once per session)."""

import pytest
import torch

from classify_cohort import make_cohort


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("classify"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny 3D convolutions run fastest on one thread, and far slower on two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
