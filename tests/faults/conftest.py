from __future__ import annotations

import pytest

from netlab import NetLab
from support import make_cluster

pytestmark = pytest.mark.faults


@pytest.fixture
def cluster(tmp_path, request):  # noqa: ANN001, ANN201
    yield from make_cluster(tmp_path, request)


@pytest.fixture
def slow_cluster(tmp_path, request):  # noqa: ANN001, ANN201
    """A longer heartbeat timeout (4 s), so that a short link cut stays clearly below it."""
    yield from make_cluster(tmp_path, request, heartbeat_interval=0.5, timeout_factor=8)


@pytest.fixture
def netlab():  # noqa: ANN201
    why = NetLab.unavailable()
    if why:
        pytest.skip(f"network namespace tests skipped: {why}")
    lab = NetLab()
    yield lab
    lab.close()
