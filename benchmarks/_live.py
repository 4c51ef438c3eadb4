"""The live benchmarks' LiveKit server and tokens (the rest of what they share is in
``_harness``)."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from livekit import api  # noqa: E402

from devtools.livekit_server import LiveKitServer, ServerInfo, find_binary, server_from_env  # noqa: E402


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
