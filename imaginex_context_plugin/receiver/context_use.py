"""Context you can prove was used: ``context_used`` / ``context_dropped`` (protocol v1.3).

Every context entry ends with exactly one of the two, for its sender (when it speaks v1.3) and
for subscribers of ``context``:

- ``context_used``, the first time a model request really carried the entry. It is read from
  what the agent hands its model, not from the plugin's own records: for a pipeline LLM, the
  chat context of each call of the agent's ``llm_node`` (the plugin wraps the current agent's
  node, and unwraps it when it stops); for a realtime model, the conversation its realtime
  session holds (what the plugin pushed and the session accepted) when it begins a response:
  one the session asked for (``generate_reply``, wrapped the same way) or one the model began
  by itself (the session's ``generation_created`` event). An entry matches when the request
  holds a message with its id and its text, so a keyed entry replaced meanwhile is not taken
  for its successor.
- ``context_dropped``, when the entry left before any request carried it: ``replaced`` by an
  add_context with the same key, ``evicted`` by the budget, ``removed``, ``expired`` (its ttl,
  or a ``next_turn`` entry's turn ended), ``session_closed``.

What "used" cannot see: an ``llm_node`` that drops or rewrites messages before calling its
model (the plugin sees what the node was given), and a realtime server that accepted an update
and then dropped the message on its side. The docs (``docs/protocol.md``) say so.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, Final

from livekit.agents import llm

from ..context import ENTRY_ID_PREFIX, ContextEntry, ContextStore, Departure
from ..log import logger
from ..protocol import (
    ContextDroppedEvent,
    ContextDropReason,
    ContextUsedEvent,
    LlmCall,
    utc_timestamp,
)
from .subscribers import LazyEvent, Subscribers

if TYPE_CHECKING:
    from livekit.agents.voice import Agent, AgentSession

_WRAPPED: Final = "__imaginex_context_use__"
"""Marks the plugin's wrappers, so that a node is never wrapped twice or unwrapped wrongly."""


def _speech_handle_var() -> contextvars.ContextVar[Any] | None:
    # the speech a model request is made for: LiveKit keeps it in a private context variable,
    # so it is read defensively and the event simply goes without it when it cannot be read
    try:
        from livekit.agents.voice import agent_activity
    except ImportError:  # pragma: no cover - part of livekit-agents
        return None
    var = getattr(agent_activity, "_SpeechHandleContextVar", None)
    return var if isinstance(var, contextvars.ContextVar) else None


_SPEECH_HANDLE = _speech_handle_var()


def _current_speech_id() -> str | None:
    if _SPEECH_HANDLE is None:
        return None
    handle = _SPEECH_HANDLE.get(None)
    speech_id = getattr(handle, "id", None)
    return speech_id if isinstance(speech_id, str) else None


class ContextUse:
    """Watches the agent's model requests and reports each context entry's fate once.

    Args:
        session: The agent session (its current agent is followed across handoffs).
        store: The context entries the plugin holds; its departures are reported here.
        events: Numbers, keeps and sends the events.
    """

    def __init__(
        self, session: AgentSession[Any], store: ContextStore, events: Subscribers
    ) -> None:
        self._session = session
        self._store = store
        self._events = events
        self._calls = 0
        self._agent: Agent | None = None
        self._rt_session: llm.RealtimeSession[Any] | None = None
        self._closed = False
        store.on_departure = self._on_departure

    @property
    def calls(self) -> int:
        """Model requests seen so far."""
        return self._calls

    # ------------------------------------------------------------------------------------------
    # following the current agent

    def follow(self) -> None:
        """Watch the current agent's model requests (again after a handoff). Idempotent."""
        if self._closed:
            return
        try:
            agent = self._session.current_agent
        except RuntimeError:  # not started yet: the next sync or handoff follows it
            return
        if agent is not self._agent:
            self._unwrap_agent()
            self._wrap_agent(agent)
        self._follow_realtime(agent)

    def _wrap_agent(self, agent: Agent) -> None:
        node = agent.llm_node
        if getattr(node, _WRAPPED, False):
            self._agent = agent
            return
        use = self

        def llm_node(chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: Any) -> Any:
            use.on_model_request(chat_ctx.items, realtime=False)
            return node(chat_ctx, tools, model_settings)

        setattr(llm_node, _WRAPPED, True)
        # an attribute of this agent object shadows its class's node: LiveKit reads
        # ``agent.llm_node`` for every generation, and nothing else changes
        agent.llm_node = llm_node  # type: ignore[method-assign]
        self._agent = agent

    def _unwrap_agent(self) -> None:
        agent, self._agent = self._agent, None
        if agent is not None and getattr(agent.__dict__.get("llm_node"), _WRAPPED, False):
            del agent.__dict__["llm_node"]

    def _follow_realtime(self, agent: Agent) -> None:
        try:
            rt_session: llm.RealtimeSession[Any] | None = agent.realtime_llm_session
        except RuntimeError:  # a pipeline agent (or not running): nothing to follow
            rt_session = None
        if rt_session is self._rt_session:
            return
        self._unwrap_realtime()
        if rt_session is None:
            return
        generate_reply = rt_session.generate_reply
        use = self

        def wrapped_generate_reply(*args: Any, **kwargs: Any) -> Any:
            use._realtime_response(rt_session)
            return generate_reply(*args, **kwargs)

        setattr(wrapped_generate_reply, _WRAPPED, True)
        rt_session.generate_reply = wrapped_generate_reply  # type: ignore[method-assign]
        rt_session.on("generation_created", self._on_generation_created)
        self._rt_session = rt_session

    def _unwrap_realtime(self) -> None:
        rt_session, self._rt_session = self._rt_session, None
        if rt_session is None:
            return
        rt_session.off("generation_created", self._on_generation_created)
        if getattr(rt_session.__dict__.get("generate_reply"), _WRAPPED, False):
            del rt_session.__dict__["generate_reply"]

    def _on_generation_created(self, ev: llm.GenerationCreatedEvent) -> None:
        # responses the session asked for were seen at generate_reply; this is the model's own
        if not ev.user_initiated and self._rt_session is not None:
            self._realtime_response(self._rt_session)

    def _realtime_response(self, rt_session: llm.RealtimeSession[Any]) -> None:
        try:
            items = rt_session.chat_ctx.items
        except Exception:  # a session being closed: it starts no response either
            logger.debug("could not read the realtime session's chat context", exc_info=True)
            return
        self.on_model_request(items, realtime=True)

    # ------------------------------------------------------------------------------------------
    # what the model was handed, and what left before

    def on_model_request(self, items: Iterable[llm.ChatItem], *, realtime: bool) -> None:
        """A model request carrying ``items`` is being made: report the entries it carries
        for the first time. Never raises (it runs inside LiveKit's generation)."""
        try:
            self._calls += 1
            used: list[ContextEntry] = []
            get = self._store.entry
            for item in items:
                if not item.id.startswith(ENTRY_ID_PREFIX):
                    continue
                entry = get(item.id)
                if entry is None or entry.reported or not _carries(item, entry):
                    continue
                entry.reported = True
                used.append(entry)
            if used:
                call = LlmCall(
                    index=self._calls,
                    speech_id=_current_speech_id(),
                    realtime=True if realtime else None,
                )
                for entry in used:
                    self._store.mark_used(entry, call)
                    self._used(entry, call)
        except Exception:
            logger.exception("could not report the context a model request carried")

    def _used(self, entry: ContextEntry, call: LlmCall) -> None:
        events = self._events
        events.publish(
            ContextUsedEvent(
                **events.log.stamped(),
                entry_id=entry.entry_id,
                key=entry.key,
                request_id=entry.request_id,
                llm_call=call,
            ),
            kind="context",
            to=entry.sender,
            send_to=entry.v1_3,
        )

    def _on_departure(self, departed: list[Departure]) -> None:
        # the add_context hot path: a burst past the budget evicts an entry per message, so
        # the events are built only if someone gets them now (else kept, built on a replay),
        # and the entries that left together (one commit) share one clock reading
        log = self._events.log
        t_ms, timestamp = log.t_ms(), utc_timestamp()
        seq = log.seq
        events: list[LazyEvent] = []
        for entry, reason in departed:
            if entry.reported:
                continue
            entry.reported = True
            seq += 1
            events.append(
                (
                    entry.sender,
                    entry.v1_3,
                    (seq, t_ms, timestamp, entry.entry_id, entry.key, entry.request_id, reason),
                )
            )
        if events:
            log.seq = seq
            self._events.publish_lazy_many(_dropped, _dropped_json, events, kind="context")

    def on_session_close(self, _: object) -> None:
        self.close()

    def close(self) -> None:
        """The session is over: every entry not reported yet is ``session_closed``; the
        agent's node and the realtime session are given back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._unwrap_agent()
        self._unwrap_realtime()
        self._store.on_departure = None
        departed: list[Departure] = [
            (entry, "session_closed") for entry in self._store.entries() if not entry.reported
        ]
        self._on_departure(departed)


def _carries(item: llm.ChatItem, entry: ContextEntry) -> bool:
    """Whether ``item`` is this very entry (not an older or newer version under its id)."""
    if item is entry._message:
        return True
    return isinstance(item, llm.ChatMessage) and item.text_content == entry.text


def _dropped_json(
    seq: int,
    t_ms: int,
    timestamp: str,
    entry_id: str,
    key: str | None,
    request_id: str | None,
    reason: ContextDropReason,
) -> bytes:
    """The ``context_dropped`` event's JSON written directly: byte for byte what its model
    serializes (pinned by a test), at a fraction of the cost, since a burst past the budget
    sends one per message to a v1.3 sender."""
    return (
        f'{{"type":"context_dropped","seq":{seq},"t_ms":{t_ms},"timestamp":"{timestamp}",'
        f'"entry_id":{encode_basestring(entry_id)},'
        f'"key":{"null" if key is None else encode_basestring(key)},'
        f'"request_id":{"null" if request_id is None else encode_basestring(request_id)},'
        f'"reason":"{reason}"}}'
    ).encode()


def _dropped(
    seq: int,
    t_ms: int,
    timestamp: str,
    entry_id: str,
    key: str | None,
    request_id: str | None,
    reason: ContextDropReason,
) -> ContextDroppedEvent:
    return ContextDroppedEvent(
        seq=seq,
        t_ms=t_ms,
        timestamp=timestamp,
        entry_id=entry_id,
        key=key,
        request_id=request_id,
        reason=reason,
    )
