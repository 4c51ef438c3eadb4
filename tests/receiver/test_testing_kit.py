"""The public test kit (``imaginex_context_plugin.testing``) works as docs/testing.md shows it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from livekit.agents import Agent, function_tool, llm

import imaginex_context_plugin.testing as kit

PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
SECTION = "# Test your own agent with the plugin, no server"


def _documented_example() -> str:
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]  # ValueError: the page lost its section
    match = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert match is not None, "the page has no Python example"
    return match.group(1)


async def test_the_documented_example_runs_as_written() -> None:
    class MyAgent(Agent):
        def __init__(self) -> None:
            super().__init__(instructions="You are a support agent.")

    namespace: dict[str, Any] = {"MyAgent": MyAgent}
    exec(compile(_documented_example(), str(PAGE), "exec"), namespace)
    await namespace["test_my_agent_speaks_what_the_backend_sends"]()


def test_the_kit_exports_what_the_page_lists() -> None:
    assert sorted(kit.__all__) == sorted(
        [
            "OfflineRoom",
            "PlayedSegment",
            "RecordingAudioOutput",
            "RecordingChunkedStream",
            "RecordingTTS",
            "ScriptedLLM",
            "ScriptedLLMStream",
            "reply_from_context",
            "start_session",
        ]
    )
    for name in (
        "ScriptedLLM",
        "RecordingTTS",
        "RecordingAudioOutput",
        "start_session",
        "reply_from_context",
    ):
        assert f"`{name}(" in PAGE.read_text(encoding="utf-8")


async def test_an_offline_room_reports_its_name_and_never_connects() -> None:
    room = kit.OfflineRoom("customer_session_1")
    assert room.name == "customer_session_1"
    assert not room.isconnected()


async def test_a_scripted_tool_call_runs_the_agents_tool_and_the_next_reply_sees_its_output() -> (
    None
):
    looked_up: list[str] = []

    class ShopAgent(Agent):
        def __init__(self) -> None:
            super().__init__(instructions="You are a support agent.")

        @function_tool
        async def lookup_order(self, order_id: str) -> str:
            """Look an order up by its number."""
            looked_up.append(order_id)
            return f"order {order_id} shipped"

    call = llm.FunctionToolCall(name="lookup_order", arguments='{"order_id": "42"}', call_id="c1")
    model = kit.ScriptedLLM([call], default_reply="It shipped.")
    session = await kit.start_session(ShopAgent(), llm_model=model, text_only=True)
    try:
        await session.generate_reply(user_input="Where is order 42?")
    finally:
        await session.aclose()
    assert looked_up == ["42"]
    assert len(model.calls) == 2
    last = model.calls[1].items[-1]
    assert isinstance(last, llm.FunctionCallOutput)
    assert last.output == "order 42 shipped"
