"""The receiver's shortcuts keep its promises: cached state, inline get_state, direct sends.

Each shortcut skips work only when skipping cannot be seen: the cached ``get_state`` body is
the one a rebuild would write, a ``get_state`` answered on arrival has nothing ahead of it,
and an answer sent without the publisher task has no earlier answer still waiting.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from livekit.agents import Agent, llm

from imaginex_context_plugin import AckTransport
from imaginex_context_plugin.context import ContextStore
from imaginex_context_plugin.protocol import GetStateRequest
from imaginex_context_plugin.receiver.answers import AckWriter
from imaginex_context_plugin.receiver.dedup import DedupMemory
from imaginex_context_plugin.receiver.jobs import Success
from imaginex_context_plugin.receiver.outbox import Outbox
from imaginex_context_plugin.receiver.state import StateAnswers
from imaginex_context_plugin.receiver.stats import PluginStats
from imaginex_context_plugin.security import SenderPolicy
from imaginex_context_plugin.testing import OfflineRoom
from tests.conftest import BACKEND_IDENTITY, HarnessFactory
from tests.helpers import wait_until


class _Agent:
    id = "agent-1"


class _Switches:
    def __init__(self) -> None:
        self.audio_enabled = True
        self.transcription_enabled = True


class _Session:
    """Just what a state answer reads."""

    def __init__(self) -> None:
        self.agent_state = "listening"
        self.user_state = "listening"
        self.current_agent = _Agent()
        self.output = _Switches()
        self.input = _Switches()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _state(answers: StateAnswers, n: int) -> dict[str, Any]:
    payload = answers.answer(GetStateRequest(type="get_state", id=f"s{n}")).payload
    ack = json.loads(payload)
    assert ack["id"] == f"s{n}"
    state: dict[str, Any] = ack["data"]["state"]
    return state


def test_the_cached_state_follows_every_change_it_reports() -> None:
    clock = _Clock()
    store = ContextStore(clock=clock)
    session = _Session()
    speeches: list[str] = []
    answers = StateAnswers(
        session=session,  # type: ignore[arg-type]
        store=store,
        pending_speeches=lambda: list(speeches),
        writer=AckWriter("A1", lambda: "room-1"),
    )
    assert _state(answers, 1)["context_entries"] == []
    store.add("note", key="k")
    assert [e["key"] for e in _state(answers, 2)["context_entries"]] == ["k"]
    store.begin()
    store.remove_key("k")
    assert _state(answers, 3)["context_entries"] == []
    store.rollback()  # back as it was: the answer says so too
    assert [e["key"] for e in _state(answers, 4)["context_entries"]] == ["k"]
    session.agent_state = "speaking"
    session.user_state = "away"
    speeches.append("speech_1")
    state = _state(answers, 5)
    assert (state["agent_state"], state["user_state"]) == ("speaking", "away")
    assert state["pending_speeches"] == ["speech_1"]
    speeches.clear()
    assert _state(answers, 6)["pending_speeches"] == []
    session.output.audio_enabled = False
    assert _state(answers, 6)["io"] == {
        "agent_audio": False, "user_audio": True, "transcription": True,
    }
    # an entry with a ttl: expires_in_s moves with the clock alone, so nothing is reused
    store.add("short-lived", key="t", ttl_s=30)
    first = _state(answers, 7)["context_entries"][-1]["expires_in_s"]
    clock.now += 10
    assert _state(answers, 8)["context_entries"][-1]["expires_in_s"] == first - 10


# ---------------------------------------------------------------------------------------------
# get_state answered on arrival


class _Collecting(AckTransport):
    """Keeps every answer, in the order the plugin sends them."""

    start_inline = True  # an in-memory sink: nothing before its first await needs a task

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, payload: bytes, destination_identity: str) -> None:
        self.sent.append(json.loads(payload))

    def ids(self) -> list[str]:
        return [answer["id"] for answer in self.sent]


class _HeldAgent(Agent):
    """An agent whose chat context update can be held open, once armed."""

    def __init__(self) -> None:
        super().__init__(instructions="You are a test.")
        self.armed = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def update_chat_ctx(
        self, chat_ctx: llm.ChatContext, *, exclude_invalid_function_calls: bool = True
    ) -> None:
        if self.armed:
            self.entered.set()
            await self.release.wait()
        await super().update_chat_ctx(
            chat_ctx, exclude_invalid_function_calls=exclude_invalid_function_calls
        )


def _ingest(plugin: Any, message: dict[str, Any]) -> None:
    plugin.ingest(json.dumps(message), sender_identity=BACKEND_IDENTITY)


_ADD = {"type": "add_context", "id": "c1", "key": "k", "context": "a note"}


async def test_get_state_behind_a_queued_change_comes_after_it(
    make_harness: HarnessFactory,
) -> None:
    transport = _Collecting()
    harness = await make_harness(text_only=True, ack_transport=transport)
    await asyncio.sleep(0.05)  # the consumer and the publisher are running and idle
    _ingest(harness.plugin, _ADD)
    _ingest(harness.plugin, {"type": "get_state", "id": "s1"})
    await wait_until(lambda: len(transport.sent) == 2)
    assert transport.ids() == ["c1", "s1"]
    assert [e["key"] for e in transport.sent[1]["data"]["state"]["context_entries"]] == ["k"]


async def test_get_state_while_a_change_is_being_applied_waits_for_it(
    make_harness: HarnessFactory,
) -> None:
    agent = _HeldAgent()
    transport = _Collecting()
    harness = await make_harness(text_only=True, agent=agent, ack_transport=transport)
    await asyncio.sleep(0.05)
    agent.armed = True
    _ingest(harness.plugin, _ADD)
    await asyncio.wait_for(agent.entered.wait(), 5)
    # the queue is empty but the consumer is busy: the change is ahead of the get_state
    _ingest(harness.plugin, {"type": "get_state", "id": "s1"})
    await asyncio.sleep(0.05)
    assert transport.sent == []
    agent.release.set()
    await wait_until(lambda: len(transport.sent) == 2)
    assert transport.ids() == ["c1", "s1"]
    assert [e["key"] for e in transport.sent[1]["data"]["state"]["context_entries"]] == ["k"]


async def test_get_state_with_nothing_ahead_is_answered_on_arrival(
    make_harness: HarnessFactory,
) -> None:
    transport = _Collecting()
    harness = await make_harness(text_only=True, ack_transport=transport)
    _ingest(harness.plugin, _ADD)
    await wait_until(lambda: len(transport.sent) == 1)
    await asyncio.sleep(0.01)  # the consumer is parked again
    _ingest(harness.plugin, {"type": "get_state", "id": "s1"})
    # no loop iteration in between: answered (and sent) within ingest()
    assert transport.ids() == ["c1", "s1"]
    assert harness.plugin.stats.applied == 2
    # through RPC too: the answer is the response, and nothing else is sent
    response = await harness.backend.rpc({"type": "get_state", "id": "s2"})
    assert response["id"] == "s2"
    assert [e["key"] for e in response["data"]["state"]["context_entries"]] == ["k"]
    assert transport.ids() == ["c1", "s1"]


# ---------------------------------------------------------------------------------------------
# answers sent without the publisher task


class _HeldTransport(AckTransport):
    """Its first send waits until released; records when each send starts and ends."""

    start_inline = True  # an in-memory sink: nothing before its first await needs a task

    def __init__(self, *, start_inline: bool = True) -> None:
        self.start_inline = start_inline
        self.started: list[bytes] = []
        self.sent: list[bytes] = []
        self.cancelled: list[bytes] = []
        self.release = asyncio.Event()

    async def send(self, payload: bytes, destination_identity: str) -> None:
        self.started.append(payload)
        try:
            if len(self.started) == 1:
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(payload)
            raise
        self.sent.append(payload)


def _outbox() -> tuple[Outbox, PluginStats]:
    stats = PluginStats()
    dedup = DedupMemory(window_s=60, max_entries=10, stats=stats)
    return Outbox(policy=SenderPolicy.build(["b"]), dedup=dedup, stats=stats), stats


def _answer(n: int) -> Success:
    return Success(b'{"type":"ack","id":"%d"}' % n)


async def test_a_direct_send_that_waits_is_not_overtaken() -> None:
    outbox, stats = _outbox()
    transport = _HeldTransport()
    publisher = asyncio.create_task(outbox.publish(transport))
    await asyncio.sleep(0)
    try:
        outbox.send("b", _answer(1))
        assert transport.started == [_answer(1).payload]  # started at once, and now waiting
        outbox.send("b", _answer(2))
        outbox.send("b", _answer(3))
        await asyncio.sleep(0.02)
        assert transport.started == [_answer(1).payload]  # the backlog waits for it
        transport.release.set()
        await wait_until(lambda: len(transport.sent) == 3)
        assert transport.sent == [_answer(n).payload for n in (1, 2, 3)]
        # idle again: the next answer goes out within send()
        outbox.send("b", _answer(4))
        assert transport.sent[-1] == _answer(4).payload
        assert stats.acks_sent == 4
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)


async def test_a_send_started_inline_is_cancelled_with_the_publisher() -> None:
    outbox, _ = _outbox()
    transport = _HeldTransport()
    publisher = asyncio.create_task(outbox.publish(transport))
    await asyncio.sleep(0)
    outbox.send("b", _answer(1))
    await asyncio.sleep(0.01)  # the publisher has taken it over
    publisher.cancel()
    await asyncio.gather(publisher, return_exceptions=True)
    assert transport.cancelled == [_answer(1).payload]


async def test_a_transport_can_keep_every_send_in_the_publisher_task() -> None:
    outbox, _ = _outbox()
    transport = _HeldTransport(start_inline=False)
    transport.release.set()
    publisher = asyncio.create_task(outbox.publish(transport))
    await asyncio.sleep(0)
    try:
        outbox.send("b", _answer(1))
        assert transport.started == []
        await wait_until(lambda: len(transport.sent) == 1)
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)


async def test_only_known_send_code_starts_inline_unless_a_subclass_opts_in() -> None:
    class Overriding(AckTransport):
        async def send(self, payload: bytes, destination_identity: str) -> None:
            return None

    room = OfflineRoom("r")
    # the built-in transport's code is known; a user's send may need a task of its own
    assert AckTransport(room).start_inline is True
    assert Overriding(room).start_inline is False
    assert _Collecting().start_inline is True
