"""The live benchmarks' LiveKit server, tokens, and an agent worker dispatched into a room (the
rest of what they share is in ``_harness``)."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from livekit import api  # noqa: E402

from devtools.agent_worker import agent_worker, dispatched_room  # noqa: E402
from devtools.livekit_server import LiveKitServer, ServerInfo, find_binary, server_from_env  # noqa: E402
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE  # noqa: E402


@contextlib.contextmanager
def livekit(given: ServerInfo | None = None) -> Iterator[ServerInfo]:
    """The live benchmarks' server: ``given``, else the one ``LIVEKIT_URL`` names, else a
    ``livekit-server --dev`` started here (and stopped afterwards)."""
    external = given or server_from_env()
    if external is not None:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="bench-livekit-") as workdir:
        server = LiveKitServer(find_binary(build=True), Path(workdir))
        try:
            yield server.start()
        finally:
            server.stop()


def room_token(
    lk: ServerInfo,
    room: str,
    identity: str,
    *,
    agent: bool = False,
    attributes: dict[str, str] | None = None,
) -> str:
    """A token to join ``room`` as ``identity`` (an agent participant with ``agent``)."""
    grants = api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True)
    built = api.AccessToken(lk.api_key, lk.api_secret).with_identity(identity).with_grants(grants)
    if agent:
        built = built.with_kind("agent")
    if attributes:
        built = built.with_attributes(attributes)
    return built.to_jwt()


@contextlib.contextmanager
def worker_on_livekit(
    server: ServerInfo | None, worker_file: str, *, prefix: str
) -> Iterator[tuple[ServerInfo, Path]]:
    """The live benchmarks' server (as ``livekit``), a scratch folder named after ``prefix``,
    and ``worker_file`` running there as a registered agent worker (its log in the folder)."""
    with (
        livekit(server) as lk,
        tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp,
        agent_worker(lk, worker_file, Path(tmp) / "worker.log"),
    ):
        yield lk, Path(tmp)


@contextlib.asynccontextmanager
async def agent_room(
    lk: ServerInfo, agent_name: str, agent_code: str, *, prefix: str
) -> AsyncIterator[str]:
    """A fresh room with the worker's agent ``agent_name`` in it, once it shows ``agent_code``
    (the plugin's attribute); deleted afterwards."""
    async with dispatched_room(
        lk, agent_name, prefix=prefix, agent_attribute=(AGENT_CODE_ATTRIBUTE, agent_code)
    ) as room:
        yield room
