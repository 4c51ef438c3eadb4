"""``examples/offline_agent.py`` as a real worker: registered with the server, dispatched into a
room with the agent dispatch API, driven with the ``imaginex-context`` CLI as a user would.

This is the docs' local testing story (``docs/local-testing.md``), run as written against the
server it starts, ``scripts/livekit-server --dev`` (LiveKit's dev keys, everything on
127.0.0.1): the worker is ``python -m livekit.agents start examples/offline_agent.py --dev``
(its own process group, stopped with SIGTERM then SIGKILL, its log attached to any failure),
the CLI runs as a subprocess with the dev keys and says nothing about their length, and a user
in the room reads what the agent says from the ``lk.transcription`` text stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from livekit import api, rtc

from devtools.agent_worker import WorkerProcess as Worker
from devtools.agent_worker import agent_worker, livekit_env
from devtools.livekit_server import ROOT, ServerInfo
from devtools.processes import communicate_within
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, ContextClient
from tests.helpers import wait_until
from tests.integration.live import participant_token, room_name
from tests.integration.local_server import LocalServer

AGENT_NAME = "offline-agent"
AGENT_CODE = "OFFLINE01"
TRANSCRIPTION_TOPIC = "lk.transcription"
AGENT_STATE_ATTRIBUTE = "lk.agent.state"
JOIN_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 90.0
CLI = Path(sys.executable).parent / "imaginex-context"
LOCAL_TESTING = ROOT / "docs" / "local-testing.md"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)

# the story's key pair is LiveKit's dev pair: PyJWT warns when this process signs with it
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@dataclass
class Listener:
    """A participant in the room that collects what the agent says (``lk.transcription``)."""

    room: rtc.Room
    texts: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def on_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            self.texts.append(await reader.read_all())

        task = asyncio.ensure_future(read())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def agent_listening(self) -> bool:
        """The agent is here with its code, and its session started (state ``listening``)."""
        return any(
            p.attributes.get(AGENT_CODE_ATTRIBUTE) == AGENT_CODE
            and p.attributes.get(AGENT_STATE_ATTRIBUTE) == "listening"
            for p in self.room.remote_participants.values()
        )


@contextlib.asynccontextmanager
async def listener(lk: ServerInfo, room: str) -> AsyncIterator[Listener]:
    joined = Listener(rtc.Room())
    joined.room.register_text_stream_handler(TRANSCRIPTION_TOPIC, joined.on_stream)
    await joined.room.connect(lk.url, participant_token(lk, room, "it-listener"))
    try:
        yield joined
    finally:
        await joined.room.disconnect()


async def cli(lk: ServerInfo, *args: str) -> tuple[int, str]:
    """Run the command: its exit status and stdout (and stderr, if it failed)."""
    return await run(lk, str(CLI), *args)


async def shell(lk: ServerInfo, script: str) -> tuple[int, str]:
    """Run ``script`` with bash, as a user's terminal in the repository would."""
    return await run(lk, "bash", "-euc", script)


async def run(lk: ServerInfo, *args: str) -> tuple[int, str]:
    """Run ``args`` with the server's keys in the environment. Its stderr holds nothing about
    the length of the dev key (PyJWT warns about it on every token)."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env=livekit_env(lk),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = await communicate_within(process, CLI_TIMEOUT_S)
    assert process.returncode is not None
    output, errors = (part.decode("utf-8", errors="replace") for part in (out, err))
    assert "InsecureKeyLengthWarning" not in errors, errors
    assert "HMAC key" not in errors, errors
    assert not [line for line in errors.splitlines() if line.startswith("warning:")], errors
    return process.returncode, output if process.returncode == 0 else output + errors


async def wait_for(
    worker: Worker,
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout: float = JOIN_TIMEOUT_S,
) -> None:
    """``wait_until``, with the worker's log in the failure message."""
    try:
        await wait_until(predicate, what, timeout=timeout)
    except pytest.fail.Exception as exc:
        pytest.fail(f"{exc}\nworker log:\n{worker.log()}", pytrace=False)


def terminal_3(lk: ServerInfo, room: str) -> tuple[str, list[str]]:
    """The docs' terminal 3, as written but for the room (and the server's URL, if it could
    not have the usual port): the dispatch, then each command."""
    text = LOCAL_TESTING.read_text(encoding="utf-8")
    (block,) = [code for code in BASH_BLOCK.findall(text) if code.startswith("# 3. dispatch")]
    block = (
        block.replace('room="demo"', f'room="{room}"')
        .replace("--room demo", f"--room {room}")
        .replace("ws://127.0.0.1:7880", lk.url)
        .replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    )
    first = block.index(f"{Path(sys.executable).parent}/imaginex-context")
    commands = [line for line in block[first:].splitlines() if line.strip()]
    return block[:first], commands


@pytest.fixture
def livekit(local_livekit: LocalServer) -> ServerInfo:
    """The story's server: the docs' ``scripts/livekit-server --dev``."""
    return local_livekit.info


@pytest.fixture
def worker(livekit: ServerInfo, tmp_path: Path) -> Iterator[Worker]:
    log_path = tmp_path / "offline-agent.log"
    with agent_worker(livekit, "examples/offline_agent.py", log_path) as started:
        yield started


@pytest.fixture
async def dispatched(livekit: ServerInfo, worker: Worker) -> AsyncIterator[tuple[str, Listener]]:
    """A fresh room with a user (the listener) that the worker was then dispatched into, once
    the agent's session runs there.

    The user comes first, as in real life: the agent links its output to the user it finds, and
    a text-only agent publishes its transcription only once it is linked to someone.
    """
    room = room_name("it-worker")
    async with (
        listener(livekit, room) as heard,
        api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret) as lkapi,
    ):
        try:
            dispatch = await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=room)
            )
            assert dispatch.agent_name == AGENT_NAME
            await wait_for(worker, heard.agent_listening, "the dispatched agent's session to run")
            yield room, heard
        finally:
            with contextlib.suppress(api.TwirpError):
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))


async def test_the_example_worker_speaks_what_the_cli_sends(
    livekit: ServerInfo, worker: Worker, dispatched: tuple[str, Listener]
) -> None:
    room, heard = dispatched
    code, out = await cli(livekit, "speak", "--room", room, "--wait-playout", "--json", "Hello")
    assert code == 0, f"{out}\nworker log:\n{worker.log()}"
    answer = json.loads(out)
    ack, finished = answer["ack"], answer["speech_finished"]
    assert ack["success"] is True
    assert ack["data"]["agent_code"] == AGENT_CODE
    assert ack["data"]["room_id"] == room
    assert ack["data"]["method"] == "say"
    # text-only output: the speech "plays out" once its text went out, and was not cut
    assert finished["speech_id"] == ack["data"]["speech_id"]
    assert finished["interrupted"] is False
    # the example keeps the worker's HTTP health server on loopback
    assert "HTTP server listening on 127.0.0.1:" in worker.text()
    await wait_for(worker, lambda: heard.texts == ["Hello"], "the agent's transcription of Hello")


async def test_added_context_shapes_the_example_workers_next_reply(
    livekit: ServerInfo, worker: Worker, dispatched: tuple[str, Listener]
) -> None:
    room, heard = dispatched
    fact = "The customer is John, a VIP."
    code, out = await cli(livekit, "add-context", "--room", room, "--key", "customer", fact)
    assert code == 0, f"{out}\nworker log:\n{worker.log()}"
    # background knowledge: nothing is said, and the agent now holds it
    async with await ContextClient.connect(
        livekit.url,
        livekit.api_key,
        livekit.api_secret,
        room,
        identity="backend",
        agent_code=AGENT_CODE,
    ) as client:
        state = await client.get_state()
    assert [(e.key, e.chars) for e in state.context_entries] == [("customer", len(fact))]
    assert heard.texts == []

    code, out = await cli(livekit, "add-context", "--room", room, "--reply", "Greet the customer.")
    assert code == 0, f"{out}\nworker log:\n{worker.log()}"
    # reply_from_context answers from the context it holds: its reply is made of both entries
    await wait_for(worker, lambda: bool(heard.texts), "the agent's reply")
    assert heard.texts == [f"Here is what I know: {fact} Greet the customer."]


async def test_terminal_3_runs_as_the_docs_write_it(livekit: ServerInfo, worker: Worker) -> None:
    room = room_name("it-docs")
    dispatch, commands = terminal_3(livekit, room)
    assert [command.split()[1] for command in commands] == ["speak", "add-context", "add-context"]
    # "join demo with any LiveKit client first to read it"
    async with (
        listener(livekit, room) as heard,
        api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret) as lkapi,
    ):
        try:
            code, out = await shell(livekit, dispatch)
            assert code == 0, out
            await wait_for(worker, heard.agent_listening, "the dispatched agent's session to run")
            outputs = []
            for command in commands:
                code, out = await shell(livekit, command)
                assert code == 0, f"{command}\n{out}\nworker log:\n{worker.log()}"
                outputs.append(out)
            assert outputs[0].startswith("ok: Speech triggered successfully")
            assert "played out:" in outputs[0]
            assert "interrupted" not in outputs[0]
            assert outputs[1].startswith("ok: Context added successfully")
            assert outputs[2].startswith("ok: Context added successfully")
            await wait_for(
                worker,
                lambda: heard.texts
                == [
                    "Hello from the backend!",
                    "Here is what I know: The customer is John, a VIP. Greet the customer.",
                ],
                "the agent's two documented lines",
            )
        finally:
            with contextlib.suppress(api.TwirpError):
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
