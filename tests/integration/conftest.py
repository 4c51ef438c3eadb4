"""The live suite: every test here runs against a real LiveKit server.

The ``livekit`` fixture (session-scoped) gives the server: the one ``LIVEKIT_URL``,
``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` name, or else a ``livekit-server --dev`` the tests
start on loopback ports (found on PATH or in ``.cache/``, built from its Go module when Go is
here; see ``devtools/livekit_server.py``). Without any, the tests skip saying how to get one, and
under ``CI=true`` they fail: CI must never pass with the live suite skipped.

A failing live test prints the tail of the server's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# two LiveKit nodes sharing one Redis (LiveKit's multi-node mode)
from devtools.livekit_cluster import LiveKitCluster
from devtools.livekit_server import (
    LiveKitServer,
    ServerInfo,
    server_from_env,
)
from tests.integration.cluster import livekit_cluster  # noqa: F401
from tests.integration.local_server import LocalServer, local_server
from tests.integration.missing import server_binary

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # a conftest hook sees the whole session's items: touch only this directory's
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer | None]:
    """The server process we started, or None when an external server (env) is used."""
    if server_from_env() is not None:
        yield None
        return
    server = LiveKitServer(server_binary(), tmp_path_factory.mktemp("livekit-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def local_livekit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """The docs' local server, ``scripts/livekit-server --dev``, started as they say (always
    ours, whatever ``LIVEKIT_URL`` names: it is the command under test)."""
    server_binary()
    with local_server(tmp_path_factory.mktemp("local-livekit-server")) as server:
        yield server


@pytest.fixture(scope="session")
def livekit(livekit_server: LiveKitServer | None) -> ServerInfo:
    """URL, API key and secret of the server the live tests talk to."""
    if livekit_server is None:
        info = server_from_env()
        assert info is not None
        return info
    assert livekit_server.info is not None
    return livekit_server.info


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    report = yield
    server = item.funcargs.get("livekit_server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(server, LiveKitServer) and server.info is not None:
        report.sections.append(("livekit-server log (tail)", server.info.log_tail()))
    local = item.funcargs.get("local_livekit") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(local, LocalServer):
        report.sections.append(("scripts/livekit-server --dev log (tail)", local.info.log_tail()))
    cluster = item.funcargs.get("livekit_cluster") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(cluster, LiveKitCluster):
        report.sections.append(("livekit cluster logs (tail)", cluster.log_tails()))
    return report
