"""The receiver: :class:`ContextPlugin` and the collaborators behind it.

``plugin`` is the front and the guide to the hot path (bytes -> admitted -> queued -> applied
-> acked); each other module holds one step or one concern:

- ``admission``: size, one pydantic pass, authorisation, rate limit, targets -> job or refusal;
- ``work_queue``: the ordered queue, batching of context changes, housekeeping items;
- ``applier``: speak, context batches, trigger_reply, get_state (``state``) on the session,
  through ``session_gate`` (waiting out start-up and handoffs);
- ``context_sync``: the context store kept in the agent's chat context, expiry and turn ends;
- ``dedup``: first acks of applied ids, answers for repeats;
- ``answers``: success acks written straight to wire bytes;
- ``outbox``: every answer once, the bounded prioritised outbound queue, the publisher task;
- ``speech``: ``speech_started`` / ``speech_finished`` from each speech's playout;
- ``subscribers``: live session events for subscribers, one bounded queue and task each;
- ``connection_keeper``: the RPC method and the agent-code attribute on every connection, and in the
  join token (:func:`accept_with_agent_code`);
- ``jobs``, ``stats``: the data passed between them, and the counters.
"""

from __future__ import annotations

from .connection_keeper import accept_with_agent_code
from .outbox import DRAIN_TIMEOUT_S, MAX_OUTBOUND_ANSWERS, AckTransport
from .plugin import ContextPlugin
from .session_gate import DEFAULT_READY_TIMEOUT_S
from .stats import PluginStats
from .steering import DEFAULT_MAX_INSTRUCTIONS_CHARS
from .work_queue import DEFAULT_MAX_QUEUE

__all__ = [
    "DEFAULT_MAX_INSTRUCTIONS_CHARS",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_READY_TIMEOUT_S",
    "DRAIN_TIMEOUT_S",
    "MAX_OUTBOUND_ANSWERS",
    "AckTransport",
    "ContextPlugin",
    "PluginStats",
    "accept_with_agent_code",
]
