from __future__ import annotations

import pytest

from support import cluster_running, make_cluster, start_a_and_b

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):  # noqa: ANN201
    """A host with two runners: `a` (4 cores) and `b` (2 cores), shared by a module's tests."""
    with cluster_running(tmp_path_factory.mktemp("cluster"), request) as c:
        start_a_and_b(c)
        yield c


@pytest.fixture
def fresh_cluster(tmp_path, request):  # noqa: ANN001, ANN201
    """A cluster of one's own, for tests that stop or restart its processes."""
    yield from make_cluster(tmp_path, request)
