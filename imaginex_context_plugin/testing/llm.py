"""``ScriptedLLM``: an ``llm.LLM`` that answers from a script, for tests without a model.

Each call answers with the next scripted string (or, past the script, what ``default_reply``
says: a string, or a function of the chat context such as :func:`reply_from_context`),
streamed in a few chunks, or asks for a tool (a scripted ``llm.FunctionToolCall``), and records
the ``ChatContext`` (and per-turn instructions) the call saw. It is the package's one offline
LLM: the demo, the examples and the live suite's workers run on it too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeAlias

from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
    llm,
)
from livekit.agents.llm.chat_context import DYNAMIC_INSTRUCTIONS_MESSAGE_ID
from livekit.agents.voice.generation import INSTRUCTIONS_MESSAGE_ID

from ..context import ENTRY_ID_PREFIX

Reply: TypeAlias = "str | llm.FunctionToolCall"
"""One scripted answer: text to stream, or a call of one of the agent's tools (the session runs
the tool and calls the LLM again, the tool's output last in the chat context)."""

PROVIDER = "imaginex.testing"
"""The ``provider`` every fake of this kit reports (in LiveKit's metrics and logs)."""

# NoReturn: no events beyond the base class's metrics_collected/error
class ScriptedLLM(llm.LLM[NoReturn]):
    """An LLM that replies with ``replies`` in order, then ``default_reply`` forever.

    ``default_reply`` is a string, or a function of the call's chat context that returns one
    (:func:`reply_from_context` answers from what the plugin added: an agent that needs no API
    key for a demo or a worker). A reply may also be an ``llm.FunctionToolCall``: the call asks
    for that tool instead of answering.

    ``calls`` holds a copy of the ``ChatContext`` of every call and ``instructions`` the
    per-turn instructions of the same call (``generate_reply(instructions=...)``), or None.
    ``replies`` is public so a test can queue more answers while the session runs.
    """

    def __init__(
        self,
        replies: Sequence[Reply] = (),
        *,
        default_reply: Reply | Callable[[llm.ChatContext], Reply] = "ok",
        chunks: int = 3,
    ) -> None:
        super().__init__()
        self.replies: list[Reply] = list(replies)
        self.default_reply = default_reply
        self.chunks = max(1, chunks)
        self.calls: list[llm.ChatContext] = []
        self.instructions: list[str | None] = []

    @property
    def model(self) -> str:
        return "scripted"

    @property
    def provider(self) -> str:
        return PROVIDER

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> ScriptedLLMStream:
        # the session goes on editing its context after the call, so keep a snapshot
        self.calls.append(chat_ctx.copy())
        self.instructions.append(_turn_instructions(chat_ctx))
        if self.replies:
            reply = self.replies.pop(0)
        elif callable(self.default_reply):
            reply = self.default_reply(chat_ctx)
        else:
            reply = self.default_reply
        return ScriptedLLMStream(
            self,
            reply=reply,
            chunks=self.chunks,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
        )


class ScriptedLLMStream(llm.LLMStream):
    """Streams one scripted reply as a few ``ChatChunk``s (a tool call as one)."""

    def __init__(
        self,
        scripted_llm: ScriptedLLM,
        *,
        reply: Reply,
        chunks: int,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(scripted_llm, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._reply = reply
        self._chunks = chunks

    async def _run(self) -> None:
        request_id = f"scripted-{uuid.uuid4().hex[:8]}"
        if isinstance(self._reply, llm.FunctionToolCall):
            delta = llm.ChoiceDelta(role="assistant", tool_calls=[self._reply])
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=delta))
            return
        for piece in split_words(self._reply, self._chunks):
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=piece))
            )
            # yield between chunks so consumers see a stream rather than one burst
            await asyncio.sleep(0)


def _turn_instructions(chat_ctx: llm.ChatContext) -> str | None:
    # generate_reply(instructions=...) appends them as a trailing system message
    # (AgentActivity._pipeline_reply_task); the agent's own instructions live under fixed
    # ids at the front. A system message a test appended itself is indistinguishable.
    if not chat_ctx.items:
        return None
    last = chat_ctx.items[-1]
    if (
        isinstance(last, llm.ChatMessage)
        and last.role == "system"
        and last.id not in (INSTRUCTIONS_MESSAGE_ID, DYNAMIC_INSTRUCTIONS_MESSAGE_ID)
    ):
        return last.text_content
    return None


def split_words(text: str, parts: int) -> list[str]:
    """Split ``text`` at spaces into at most ``parts`` pieces that join back to ``text``."""
    words = text.split(" ")
    size = max(1, -(-len(words) // parts))
    groups = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [g + " " if i < len(groups) - 1 else g for i, g in enumerate(groups)]


def reply_from_context(chat_ctx: llm.ChatContext) -> str:
    """An answer made of what the chat context holds: ``ScriptedLLM(default_reply=...)``.

    It reports what the agent knows (the messages the plugin added) and, asked with
    ``instructions`` (``speak(..., instructions=...)``), follows them literally.
    """
    notes = [m.text_content or "" for m in chat_ctx.messages() if m.id.startswith(ENTRY_ID_PREFIX)]
    last = chat_ctx.messages()[-1] if chat_ctx.messages() else None
    if last is not None and last.role in ("system", "developer") and not last.id.startswith(
        ENTRY_ID_PREFIX
    ):
        # generate_reply(instructions=...) arrives as a trailing instruction message
        text = last.text_content or ""
        marker = "word for word, and nothing else:\n"
        return text.split(marker, 1)[1] if marker in text else f"(as instructed) {text}"
    if not notes:
        return "I don't know anything about you yet."
    return "Here is what I know: " + " ".join(notes)
