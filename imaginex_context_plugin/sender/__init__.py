"""The sender side: send ``speak`` / ``add_context`` to a running agent and get its answer.

:class:`ContextClient` is a participant in the agent's room. It finds the agent participant by
itself, sends protocol v1 requests over RPC (method ``imaginex.context``, the response is the
ack) or as data packets (topic ``imaginex.context``, the ack comes back on
``imaginex.context.ack``), and returns the parsed :class:`~..protocol.SuccessAck`::

    async with await ContextClient.connect(url, api_key, api_secret, "room-1",
                                           agent_code="A12345678") as client:
        await client.add_context("Customer John Smith is a premium member.", key="customer")
        result = await client.speak("Your order has shipped!", wait_for_playout=True)

Every failure is a :class:`~..errors.ContextError` carrying an :class:`~..errors.ErrorCode`;
the two ways of running out of time are also ``TimeoutError``\\ s. A request keeps its id
across retries and the receiver applies an id from one sender once, so a retried ``speak`` is
never spoken twice.

:func:`send_via_server_api` is for backends that do not want to join the room: it sends through
LiveKit's ``RoomService.SendData``, which cannot be acknowledged.

Inside: ``client`` (the front: lifecycle and waits), ``calls`` (the request calls),
``control_calls`` (the v1.1 call-control calls), ``subscription`` (``subscribe``: the
session's live events as an async iterator),
``delivery`` (the retry loop), ``channels`` (RPC / data), ``room_events`` (acks, speech events
and roster changes, routed), ``waiters`` (pending acks and playout waits), ``locator`` (which
participant is the agent), ``requests`` (preparation and signing), ``connection`` (joining),
``server_api``.
"""

from __future__ import annotations

from .._livekit.tokens import DEFAULT_TOKEN_TTL, sender_token
from ..errors import RETRYABLE_CODES
from ..request_errors import (
    AckTimeoutError,
    ContextError,
    PlayoutTimeoutError,
    SpeechFailedError,
)
from .client import ContextClient
from .options import (
    DEFAULT_AGENT_TIMEOUT_S,
    DEFAULT_BACKOFF_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_PLAYOUT_TIMEOUT_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_VIA,
    MAX_BACKOFF_S,
    MAX_RETRY_AFTER_S,
    SENDER_IDENTITY_PREFIX,
    ClientOptions,
    Via,
)
from .requests import check_request_size, prepare_request
from .results import HistoryResult, ServerSendResult, SpeakResult
from .server_api import send_via_server_api
from .subscription import (
    ALL_EVENTS,
    DEFAULT_EVENT_QUEUE_SIZE,
    UNSUBSCRIBE_TIMEOUT_S,
    SessionEvents,
)

__all__ = [
    "ALL_EVENTS",
    "DEFAULT_AGENT_TIMEOUT_S",
    "DEFAULT_BACKOFF_S",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_EVENT_QUEUE_SIZE",
    "DEFAULT_PLAYOUT_TIMEOUT_S",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_TOKEN_TTL",
    "DEFAULT_VIA",
    "MAX_BACKOFF_S",
    "MAX_RETRY_AFTER_S",
    "RETRYABLE_CODES",
    "SENDER_IDENTITY_PREFIX",
    "UNSUBSCRIBE_TIMEOUT_S",
    "AckTimeoutError",
    "ClientOptions",
    "ContextClient",
    "ContextError",
    "HistoryResult",
    "PlayoutTimeoutError",
    "ServerSendResult",
    "SessionEvents",
    "SpeakResult",
    "SpeechFailedError",
    "Via",
    "check_request_size",
    "prepare_request",
    "send_via_server_api",
    "sender_token",
]
