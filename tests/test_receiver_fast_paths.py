"""The receiver's shortcuts keep its promises: cached state, inline get_state, direct sends.

Each shortcut skips work only when skipping cannot be seen: the cached ``get_state`` body is
the one a rebuild would write, a ``get_state`` answered on arrival has nothing ahead of it,
and an answer sent without the publisher task has no earlier answer still waiting.
"""

from __future__ import annotations

import json
from typing import Any

from imaginex_context_plugin.context import ContextStore
from imaginex_context_plugin.protocol import GetStateRequest
from imaginex_context_plugin.receiver.answers import AckWriter
from imaginex_context_plugin.receiver.state import StateAnswers


class _Agent:
    id = "agent-1"


class _Session:
    """Just what a state answer reads."""

    def __init__(self) -> None:
        self.agent_state = "listening"
        self.user_state = "listening"
        self.current_agent = _Agent()


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
    # an entry with a ttl: expires_in_s moves with the clock alone, so nothing is reused
    store.add("short-lived", key="t", ttl_s=30)
    first = _state(answers, 7)["context_entries"][-1]["expires_in_s"]
    clock.now += 10
    assert _state(answers, 8)["context_entries"][-1]["expires_in_s"] == first - 10
