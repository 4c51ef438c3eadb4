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
    IOState,
    SuccessAck,
)
from .answers import AckWriter
from .jobs import Success

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession

_T = TypeVar("_T")
_STR_JSON: Final = TypeAdapter(str)


class StateAnswers:
    """Writes ``get_state`` answers, reusing the encoded state while nothing in it changes.

    Building the state (a model per context entry) and encoding it is most of what a
    ``get_state`` costs, and a sender polling it mostly finds nothing changed. So the state's
    JSON is kept with everything it was made from: the session's agent and user state, current
    agent and input/output switches (read fresh each time: no event to miss), the store's
    version (bumped by
    every change) and the pending speech ids (read fresh: a speech is done before its
    callback runs). It is rebuilt when any of them differs, and never cached while an entry
    has a ttl, since ``expires_in_s`` moves with the clock alone.

    Args:
        session: The agent session whose state is reported.
        store: The context entries the plugin holds.
        pending_speeches: The ids of the speeches still queued or playing.
        writer: Writes the ack around the state.
    """

    def __init__(
        self,
        *,
        session: AgentSession[Any],
        store: ContextStore,
        pending_speeches: Callable[[], list[str]],
        writer: AckWriter,
    ) -> None:
        self._session = session
        self._store = store
        self._pending_speeches = pending_speeches
        self._writer = writer
        self._key: tuple[object, ...] | None = None
        self._json = ""

    def info(self) -> AgentStateInfo:
        """The state as it is now (built afresh: for snapshots, which are rare)."""
        session, store = self._session, self._store
        try:
            current_agent: str | None = session.current_agent.id
        except RuntimeError:
            current_agent = None
        output = session.output
        return AgentStateInfo(
            agent_state=session.agent_state,
            user_state=session.user_state,
            current_agent=current_agent,
            context_entries=store.describe(),
            context_chars=store.chars,
            pending_speeches=self._pending_speeches(),
            io=IOState(
                agent_audio=output.audio_enabled,
                user_audio=session.input.audio_enabled,
                transcription=output.transcription_enabled,
            ),
        )

    def answer(self, request: GetStateRequest) -> Success:
        """The state ack; when it would not fit one packet, its lists keep their first items."""
        session, store = self._session, self._store
        try:
            current_agent: str | None = session.current_agent.id
        except RuntimeError:
            current_agent = None
        pending = self._pending_speeches()
        output = session.output
        io = (output.audio_enabled, session.input.audio_enabled, output.transcription_enabled)
        key = (session.agent_state, session.user_state, current_agent, store.version, pending, io)
        state: AgentStateInfo | None = None
        if key == self._key:
            state_json = self._json
        else:
            state = AgentStateInfo(
                agent_state=session.agent_state,
                user_state=session.user_state,
                current_agent=current_agent,
                context_entries=store.describe(),
                context_chars=store.chars,
                pending_speeches=pending,
                io=IOState(agent_audio=io[0], user_audio=io[1], transcription=io[2]),
            )
            state_json = protocol.encode_message(state).decode()
            self._key = None if store.has_ttl else key
            self._json = state_json
        answer = self._writer.success(request, GET_STATE_SUCCESS_MESSAGE, state_json=state_json)
        if len(answer.payload) <= MAX_PAYLOAD_BYTES:
            return answer
        if state is None:  # rare: a cached state too large for this request's id
            state = AgentStateInfo.model_validate_json(state_json)
        ack = self._writer.success_model(request, GET_STATE_SUCCESS_MESSAGE, state=state)
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
