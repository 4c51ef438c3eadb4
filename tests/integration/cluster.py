"""The ``livekit_cluster`` fixture: two ``livekit-server`` nodes sharing one Redis (LiveKit's
multi-node mode), built by ``devtools/livekit_cluster.py`` (which says what multi-node needs).

Session-scoped, registered by ``tests/integration/conftest.py``; it skips (fails under
``CI=true``) like ``livekit`` and ``redis_server`` when a binary is missing. It always starts
its own nodes, even when ``LIVEKIT_URL`` names an external server: one URL is one node as far
as the tests can tell.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.livekit_cluster import LiveKitCluster, start_cluster
from devtools.livekit_server import NoServer
from devtools.redis_server import NoRedis
from tests.integration.missing import missing


@pytest.fixture(scope="session")
def livekit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitCluster]:
    """Two LiveKit nodes sharing one Redis (LiveKit's multi-node mode), for the whole session."""
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("livekit-cluster"))
    except (NoServer, NoRedis) as exc:
        missing(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()
