"""The TypeScript client on the real parts: in Debian's Chromium against the real server and a
real agent worker, and from Node against the real gateway process.

- The room client: ``js/test/browser/live.test.mjs`` drives Chromium (``playwright-core``, the
  page serves ``dist/browser/imaginex-room.min.js`` and ``livekit-client``) in a room where
  ``tests/integration/browser_worker.py`` runs as a real worker (``start --dev``, dispatched with
  the agent dispatch API): speak with playout events, add_context reaching the LLM's next call,
  an error ack with its code, a retry applied once, subscribe receiving transcripts, and
  ``docs/typescript.md``'s browser example. WebRTC stays on loopback: the session's private
  namespace has no other route (``devtools/netns.py``).
- The gateway client: ``js/test/gateway/live.test.mjs`` against ``imaginex-context gateway``
  processes in front of real agents, and ``docs/typescript.md``'s Node examples.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.agent_worker import WorkerProcess
from devtools.agent_worker import dispatched_room as agent_dispatched_room
from devtools.livekit_server import ServerInfo
from devtools.netns import STATE_ENV
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE
from imaginex_context_plugin.gateway import DEFAULT_GATEWAY_IDENTITY
from tests.helpers import wait_until
from tests.integration.browser_worker import AGENT_CODE, AGENT_NAME, BROWSER, DOCS_READER
from tests.integration.live import live_agent, module_worker, participant_token
from tests.integration.test_gateway_process_live import SECRET as GATEWAY_SECRET
from tests.integration.test_gateway_process_live import gateway_process, wait_until_serving
from tests.typescript import (
    JS,
    chromium,
    docs_example,
    node,
    node_tests_async,
    readme_example,
    to_javascript,
)

WORKER_FILE = "tests/integration/browser_worker.py"


@pytest.fixture(scope="module")
def browser_worker(
    livekit: ServerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    yield from module_worker(livekit, tmp_path_factory, WORKER_FILE, "browser-worker")


def dispatched_room(lk: ServerInfo, prefix: str) -> contextlib.AbstractAsyncContextManager[str]:
    return agent_dispatched_room(
        lk, AGENT_NAME, prefix=prefix, agent_attribute=(AGENT_CODE_ATTRIBUTE, AGENT_CODE)
    )


async def test_the_room_client_in_chromium_drives_a_real_worker(
    livekit: ServerInfo, browser_worker: WorkerProcess
) -> None:
    browser = chromium()
    example = to_javascript(docs_example("browser"))
    if os.environ.get(STATE_ENV) != "1" and os.environ.get("CI"):
        pytest.fail("CI=true and the session is not in its loopback-only network namespace")
    async with dispatched_room(livekit, "ts-browser") as room:
        env = {
            "LIVEKIT_URL": livekit.url,
            "ROOM": room,
            "BROWSER_TOKEN": participant_token(livekit, room, BROWSER),
            "DOCS_TOKEN": participant_token(livekit, room, DOCS_READER),
            "DOCS_EXAMPLE": example,
            "README_EXAMPLE": to_javascript(readme_example()),
            "CHROMIUM": str(browser),
        }
        try:
            counts = await node_tests_async("test/browser/live.test.mjs", env=env)
        except pytest.fail.Exception as exc:
            pytest.fail(f"{exc}\nworker log:\n{browser_worker.log()}", pytrace=False)
    assert counts["pass"] == counts["tests"] >= 11


def _node_example(name: str, gateway_url: str, room: str) -> str:
    """``docs/typescript.md``'s example ``name`` as a module inside js/ (where the package's own
    name resolves), pointed at our gateway and room."""
    code = to_javascript(docs_example(name))
    code = code.replace("http://127.0.0.1:8089", gateway_url).replace("customer_session_1", room)
    path = JS / "build" / "docs" / f"{name}.mjs"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code, encoding="utf-8")
    return str(path)


async def test_the_gateway_client_against_the_real_gateway_process(
    livekit: ServerInfo, tmp_path: Path
) -> None:
    node()
    identity = DEFAULT_GATEWAY_IDENTITY
    async with live_agent(
        livekit,
        agent_code=AGENT_CODE,
        allowed_identities=[identity],
        permissions={identity: {"*"}},
    ) as agent:
        await wait_until(agent.code_listed, "the agent's code to reach RoomService")
        with (
            gateway_process(livekit, tmp_path) as gateway,
            gateway_process(
                livekit, tmp_path, "--rate-limit", "1", "--burst", "2", api_secret=GATEWAY_SECRET
            ) as limited,
        ):
            await wait_until_serving(gateway)
            await wait_until_serving(limited)
            env = {
                "GATEWAY_URL": gateway.base_url,
                "LIMITED_GATEWAY_URL": limited.base_url,
                "API_SECRET": GATEWAY_SECRET,
                "ROOM": agent.room_name,
                "DOCS_NODE": _node_example("node", gateway.base_url, agent.room_name),
                "DOCS_NODE_EVENTS": _node_example("node-events", gateway.base_url, agent.room_name),
            }
            try:
                counts = await node_tests_async("test/gateway/live.test.mjs", env=env)
            except pytest.fail.Exception as exc:
                pytest.fail(f"{exc}\ngateway log:\n{gateway.log()}", pytrace=False)
    assert counts["pass"] == counts["tests"] >= 8
