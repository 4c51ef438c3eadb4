"""The ``get_state`` answer: the agent's and the plugin's state, always within one packet."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pydantic import TypeAdapter

from .. import protocol
from ..context import ContextStore
from ..protocol import (
    GET_STATE_SUCCESS_MESSAGE,
    MAX_PAYLOAD_BYTES,
    AgentStateInfo,
    GetStateRequest,
    SuccessAck,
)
from .answers import AckWriter
from .jobs import Success

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession

_T = TypeVar("_T")
_STR_JSON: Final = TypeAdapter(str)


def state_answer(
    request: GetStateRequest,
    *,
    session: AgentSession[Any],
    store: ContextStore,
    pending_speeches: list[str],
    writer: AckWriter,
) -> Success:
    """The state ack; when it would not fit one packet, its lists keep their first items."""
    try:
        current_agent: str | None = session.current_agent.id
    except RuntimeError:
        current_agent = None
    state = AgentStateInfo(
        agent_state=session.agent_state,
        user_state=session.user_state,
        current_agent=current_agent,
        context_entries=store.describe(),
        context_chars=store.chars,
        pending_speeches=pending_speeches,
    )
    answer = writer.success(request, GET_STATE_SUCCESS_MESSAGE, state=state)
    if len(answer.payload) <= MAX_PAYLOAD_BYTES:
        return answer
    ack = writer.success_model(request, GET_STATE_SUCCESS_MESSAGE, state=state)
    return Success(protocol.encode_message(_truncated(ack, state)))


def _truncated(ack: SuccessAck, state: AgentStateInfo) -> SuccessAck:
    """``ack`` with its lists cut to their first items so that it fits one packet.

    Context entries keep priority over pending speech ids. Rare (a full budget of long keys
    and ids, or hundreds of queued speeches), so it measures each item's JSON once.
    """
    entries, speeches = state.context_entries, state.pending_speeches
    shell = state.model_copy(
        update={
            "context_entries": [],
            "pending_speeches": [],
            "context_entries_truncated": True,
            "context_entries_total": len(entries),
            "pending_speeches_truncated": True,
            "pending_speeches_total": len(speeches),
        }
    )
    empty = ack.model_copy(update={"data": ack.data.model_copy(update={"state": shell})})
    room = MAX_PAYLOAD_BYTES - len(protocol.encode_message(empty))
    kept_entries, used = _fitting(entries, room, protocol.encode_message)
    kept_speeches, _ = _fitting(speeches, room - used, _STR_JSON.dump_json)
    cut_entries = len(kept_entries) < len(entries)
    cut_speeches = len(kept_speeches) < len(speeches)
    fitted = state.model_copy(
        update={
            "context_entries": kept_entries,
            "pending_speeches": kept_speeches,
            "context_entries_truncated": True if cut_entries else None,
            "context_entries_total": len(entries) if cut_entries else None,
            "pending_speeches_truncated": True if cut_speeches else None,
            "pending_speeches_total": len(speeches) if cut_speeches else None,
        }
    )
    return ack.model_copy(update={"data": ack.data.model_copy(update={"state": fitted})})


def _fitting(items: list[_T], room: int, encode: Callable[[_T], bytes]) -> tuple[list[_T], int]:
    """The longest prefix of ``items`` whose JSON fits in ``room`` bytes, and the bytes it uses."""
    used = 0
    for count, item in enumerate(items):
        size = len(encode(item)) + 1  # and the comma separating it from the next
        if used + size > room:
            return items[:count], used
        used += size
    return items, used
