"""The fake run directory shared by the report tests (built once per session)."""

import pytest
from report_run import make_fake_run


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    return run, make_fake_run(run)
