"""The sender side: send ``speak`` / ``add_context`` to a running agent and get its answer.

:class:`ContextClient` is a participant in the agent's room. It finds the agent participant by
itself, sends protocol v1 requests over RPC (method ``imaginex.context``, the response is the
ack) or as data packets (topic ``imaginex.context``, the ack comes back on
``imaginex.context.ack``), and returns the parsed :class:`~.protocol.SuccessAck`::

    async with await ContextClient.connect(url, api_key, api_secret, "room-1",
                                           agent_code="A12345678") as client:
        await client.add_context("Customer John Smith is a premium member.", key="customer")
        result = await client.speak("Your order has shipped!", wait_for_playout=True)

Every failure is a :class:`ContextError` carrying an :class:`~.protocol.ErrorCode`; the two
ways of running out of time are also ``TimeoutError``\\ s (:class:`AckTimeoutError`,
:class:`PlayoutTimeoutError`). A request keeps its id across retries and the receiver applies
an id from one sender once, so a retried ``speak`` is never spoken twice.

:func:`send_via_server_api` is for backends that do not want to join the room: it sends through
LiveKit's ``RoomService.SendData``, which cannot be acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal, overload

import aiohttp
from livekit import api, rtc
from pydantic import BaseModel, ValidationError

from . import protocol
from .errors import RETRYABLE_CODES as RETRYABLE_CODES
from .errors import AckTimeoutError as AckTimeoutError
from .errors import ContextError as ContextError
from .errors import PlayoutTimeoutError as PlayoutTimeoutError
from .errors import ProtocolError
from .expiring import ExpiringCache
from .log import logger
from .protocol import (
    ACK_TOPIC,
    AGENT_CODE_ATTRIBUTE,
    CONTEXT_TOPIC,
    MAX_PAYLOAD_BYTES,
    RPC_METHOD,
    SENDER_ATTRIBUTE,
    AgentStateInfo,
    ContextRole,
    ContextScope,
    ErrorAck,
    ErrorCode,
    Request,
    SpeakMode,
    SpeechFinishedEvent,
    SuccessAck,
)
from .security import DEDUP_WINDOW_S, SIGNATURE_WINDOW_S, sign_request

Via = Literal["rpc", "data"]
"""How requests reach the agent: ``"rpc"`` (``perform_rpc``) or ``"data"`` (data packets)."""

DEFAULT_VIA: Final[Via] = "rpc"
DEFAULT_TIMEOUT_S: Final = 5.0
"""Seconds to wait for the ack to one attempt."""
DEFAULT_RETRIES: Final = 2
"""Attempts after the first one, for failures that may pass (see ``ContextError.retryable``)."""
DEFAULT_BACKOFF_S: Final = 0.25
_FIRST_CONTACT_RESEND_S: Final = 0.5
"""Data packets to an agent that has not answered us yet are sent again this often."""
"""First delay between attempts; it doubles each time (with jitter), up to ``MAX_BACKOFF_S``."""
MAX_BACKOFF_S: Final = 5.0
MAX_RETRY_AFTER_S: Final = 30.0
"""The longest ``retry_after`` from a RATE_LIMITED ack the client waits before retrying."""
DEFAULT_AGENT_TIMEOUT_S: Final = 10.0
"""Seconds to wait for the agent participant to appear in the room."""
DEFAULT_PLAYOUT_TIMEOUT_S: Final = 120.0
"""Seconds to wait for ``speech_finished`` after the ack, with ``wait_for_playout=True``."""
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_TOKEN_TTL: Final = timedelta(hours=6)
SENDER_IDENTITY_PREFIX: Final = "imaginex-sender-"
"""``connect()`` without an identity joins as this prefix plus 8 random hex digits."""
_EVENT_MEMORY_S: Final = DEDUP_WINDOW_S
_EVENT_MEMORY_MAX: Final = 4_096
_AGENT_KIND: Final = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT

# RPC failures that say "try again": the call never reached a handler that answered
_RPC_TIMEOUTS: Final = frozenset(
    {rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT, rtc.RpcError.ErrorCode.CONNECTION_TIMEOUT}
)
_RPC_UNREACHABLE: Final = frozenset(
    {
        rtc.RpcError.ErrorCode.RECIPIENT_NOT_FOUND,
        rtc.RpcError.ErrorCode.RECIPIENT_DISCONNECTED,
        rtc.RpcError.ErrorCode.SEND_FAILED,
    }
)


# ---------------------------------------------------------------------------------------------
# errors and results


@dataclass(frozen=True)
class SpeakResult:
    """What ``speak(..., wait_for_playout=True)`` returns: the ack and the end of the speech."""

    ack: SuccessAck
    finished: SpeechFinishedEvent

    @property
    def interrupted(self) -> bool:
        """Whether the speech was cut before its end (by the user, or by an interrupting speak)."""
        return self.finished.interrupted


@dataclass(frozen=True)
class ServerSendResult:
    """What :func:`send_via_server_api` returns. Such a send is never acknowledged."""

    request_id: str
    room: str
    destination_identity: str
    acknowledged: Literal[False] = False
    """Always False: the server API gives the receiver no sender to answer."""


@dataclass(eq=False)
class _Pending:
    """One request waiting for its ack; ``future`` is replaced at each attempt."""

    request_id: str
    agent: str | None = None
    future: asyncio.Future[SuccessAck | ErrorAck] | None = None


# ---------------------------------------------------------------------------------------------
# shared helpers


def sender_token(
    api_key: str,
    api_secret: str,
    *,
    room: str,
    identity: str,
    hidden: bool = False,
    name: str | None = None,
    ttl: timedelta = DEFAULT_TOKEN_TTL,
) -> str:
    """A LiveKit access token for a sender: it may join ``room`` and publish data, nothing else.

    The sender joins as a participant of kind AGENT carrying the attribute ``imaginex.sender``:
    LiveKit counts such a participant as dependent (it never keeps a room open and never
    triggers an agent dispatch), an agent's ``RoomIO`` never links it as the user, and senders
    looking for the agent skip it.

    Args:
        api_key: LiveKit API key.
        api_secret: LiveKit API secret.
        room: The room to join.
        identity: The participant identity; the agent trusts senders by identity
            (``ContextPlugin(allowed_identities=...)``) unless the messages are signed.
        hidden: Invisible to the other participants. Default False, and only for senders that
            expect no answer: a real LiveKit server strips a hidden participant's identity from
            everything it sends, so the agent sees its RPCs with an empty caller (the response
            never comes back) and its data packets as if the server API had sent them.
        name: Display name. Default: none.
        ttl: Token lifetime (default 6 hours); it only matters when (re)connecting.

    Returns:
        The signed JWT.
    """
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=False,
        can_publish_data=True,
        # kept True: the acks and speech events come back as data packets
        can_subscribe=True,
        hidden=hidden,
    )
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_attributes({SENDER_ATTRIBUTE: "1"})
        .with_grants(grants)
        .with_ttl(ttl)
    )
    if name:
        token = token.with_name(name)
    return token.to_jwt()


def _new_request_id() -> str:
    return uuid.uuid4().hex


def prepare_request(
    request: Request | BaseModel | Mapping[str, Any], *, agent_code: str | None = None
) -> dict[str, Any]:
    """Turn a request model or mapping into the JSON object to send, with an id, validated.

    A request without an id gets a random one (32 hex digits). ``agent_code``, when given and
    the request names none, is added so that the receiver refuses the request if it serves
    another code. Unknown fields of a mapping are kept (newer receivers may understand them).

    Raises:
        ContextError: ``VALIDATION_ERROR`` if the request is not a valid protocol v1 request.
        TypeError: If ``request`` is neither a model nor a mapping.
    """
    if isinstance(request, BaseModel):
        obj = request.model_dump(mode="json", exclude_none=True)
    elif isinstance(request, Mapping):
        obj = dict(request)
    else:
        raise TypeError("request must be a protocol request model or a mapping")
    if obj.get("id") is None:
        obj["id"] = _new_request_id()
    if agent_code is not None and obj.get("agent_code") is None:
        obj["agent_code"] = agent_code
    try:
        protocol.validate_request(obj)
    except ProtocolError as exc:
        raise ContextError(
            exc.code, exc.message, request_id=protocol.request_id_of(obj), retryable=False
        ) from None
    return obj


def _encode(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _check_size(payload: str, request_id: str) -> None:
    size = len(payload.encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        raise ContextError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"The message is {size} bytes once encoded; the limit is {MAX_PAYLOAD_BYTES} bytes.",
            request_id=request_id,
            retryable=False,
        )


def check_request_size(obj: Mapping[str, Any], *, secret: str | bytes | None = None) -> None:
    """Refuse a prepared request that will not fit in one packet, signed when ``secret`` is set.

    Lets a caller find out before joining the room what the client would refuse at send time.

    Raises:
        ContextError: ``PAYLOAD_TOO_LARGE``.
    """
    body = _encode(obj)
    payload = sign_request(body, secret) if secret else body
    _check_size(payload, str(obj.get("id")))


def _pick_agent(
    candidates: Iterable[tuple[str, int, Mapping[str, str]]],
    *,
    agent_code: str | None,
    room: str,
) -> str | None:
    """The identity of the one agent among ``(identity, kind, attributes)``, or None.

    With an agent code: the participant publishing that code. Without: the participant of kind
    AGENT, or publishing any agent code; among several, the only one with a code wins.

    Raises:
        ContextError: ``AGENT_NOT_FOUND`` when more than one participant matches.
    """
    # other senders (CLI, gateway replicas) join as agents too; they are never the target
    people = [person for person in candidates if SENDER_ATTRIBUTE not in person[2]]
    if agent_code is not None:
        matches = [
            ident for ident, _, attrs in people if attrs.get(AGENT_CODE_ATTRIBUTE) == agent_code
        ]
    else:
        matches = [
            ident
            for ident, kind, attrs in people
            if kind == _AGENT_KIND or AGENT_CODE_ATTRIBUTE in attrs
        ]
        with_code = [ident for ident, _, attrs in people if AGENT_CODE_ATTRIBUTE in attrs]
        if len(matches) > 1 and len(with_code) == 1:
            matches = with_code
    if len(matches) > 1:
        which = f"with agent code '{agent_code}' " if agent_code is not None else ""
        raise ContextError(
            ErrorCode.AGENT_NOT_FOUND,
            f"More than one agent {which}is in room '{room}' ({', '.join(sorted(matches))}); "
            "pass agent_code or agent_identity to choose one.",
            retryable=False,
        )
    return matches[0] if matches else None


def _env(value: str | None, name: str) -> str | None:
    return value if value else os.getenv(name)


# ---------------------------------------------------------------------------------------------
# the client


class ContextClient:
    """Sends requests to the agent in a LiveKit room and returns its acks.

    Build it with :meth:`connect` (it joins the room itself and leaves on close), or wrap a
    connected ``rtc.Room`` you already have (closing the client then leaves the room alone).
    Use it as ``async with`` or call :meth:`aclose`. Any number of requests may be in flight at
    once; each waits for its own ack.

    Args:
        room: The room to send in.
        agent_identity: The agent participant to send to. Default: found in the room, see
            ``agent_code``.
        agent_code: Send to the participant publishing this agent code (the receiver publishes
            the ``imaginex.agent_code`` attribute); it is also put in every request, so an agent
            serving another code refuses it. Default: the one participant of kind AGENT.
        via: ``"rpc"`` (default): the request goes with ``perform_rpc`` and the response is the
            ack. ``"data"``: a data packet on ``imaginex.context``, the ack comes back on
            ``imaginex.context.ack``. Speech events always come back as data packets.
        secret: Sign every request with this shared secret (``ContextPlugin(secret=...)``); each
            attempt is signed anew. Default: unsigned, so the agent must trust this participant's
            identity.
        timeout: Seconds to wait for the ack to each attempt. Default 5.
        retries: Attempts after the first, for timeouts and retryable errors
            (``RATE_LIMITED``, ``NOT_READY``, the agent briefly unreachable). Default 2, so a
            call gives up after about ``3 * timeout`` plus back-off.
        backoff: First delay between attempts in seconds (doubling, with jitter; at least the
            ``retry_after`` of a RATE_LIMITED ack, up to 30 s). Default 0.25.
        agent_timeout: Seconds to wait for the agent to appear in the room. Default 10.
        playout_timeout: Seconds to wait for ``speech_finished`` after the ack. Default 120.

    Raises:
        ValueError: For an unknown ``via`` or a non-positive timeout.
    """

    def __init__(
        self,
        room: rtc.Room,
        *,
        agent_identity: str | None = None,
        agent_code: str | None = None,
        via: Via = DEFAULT_VIA,
        secret: str | bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        agent_timeout: float = DEFAULT_AGENT_TIMEOUT_S,
        playout_timeout: float = DEFAULT_PLAYOUT_TIMEOUT_S,
    ) -> None:
        if via not in ("rpc", "data"):
            raise ValueError("via must be 'rpc' or 'data'")
        if timeout <= 0 or agent_timeout < 0 or playout_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self._room = room
        self._agent_identity = agent_identity
        self._agent_code = agent_code
        self._via: Via = via
        self._secret = secret or None
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._agent_timeout = agent_timeout
        self._playout_timeout = playout_timeout
        self._owns_room = False
        self._closed = False

        self._pending: dict[str, _Pending] = {}
        # request id -> the agent it was sent to: only that agent's events are accepted for it
        # agents that have answered a data packet of ours: they know who we are
        self._heard_from: set[str] = set()
        self._sent_to: ExpiringCache[str] = ExpiringCache(
            ttl_s=_EVENT_MEMORY_S, max_entries=_EVENT_MEMORY_MAX
        )
        # speech_finished may arrive before anyone waits for it (RPC acks and data events
        # travel separately), so recent ones are kept
        self._finished: ExpiringCache[SpeechFinishedEvent] = ExpiringCache(
            ttl_s=_EVENT_MEMORY_S, max_entries=_EVENT_MEMORY_MAX
        )
        self._playout_waiters: dict[str, list[asyncio.Future[SpeechFinishedEvent]]] = {}
        # sha256(body) -> last signing timestamp: a retry in the same second must not produce
        # the very same envelope, which the receiver would refuse as a replay
        self._signed_at: ExpiringCache[int] = ExpiringCache(
            ttl_s=2 * SIGNATURE_WINDOW_S, max_entries=_EVENT_MEMORY_MAX
        )
        self._roster_changed = asyncio.Event()

        room.on("data_received", self._on_data_received)
        room.on("participant_connected", self._on_participant_connected)
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("participant_attributes_changed", self._on_attributes_changed)
        room.on("disconnected", self._on_disconnected)

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        room: str | None = None,
        *,
        identity: str | None = None,
        name: str | None = None,
        hidden: bool | None = None,
        agent_identity: str | None = None,
        agent_code: str | None = None,
        via: Via = DEFAULT_VIA,
        secret: str | bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        agent_timeout: float = DEFAULT_AGENT_TIMEOUT_S,
        playout_timeout: float = DEFAULT_PLAYOUT_TIMEOUT_S,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        token_ttl: timedelta = DEFAULT_TOKEN_TTL,
        room_factory: Callable[[], rtc.Room] = rtc.Room,
    ) -> ContextClient:
        """Join ``room`` with a token minted here, and return a client that leaves on close.

        The participant may publish data only, and subscribes to no media.

        Args:
            url: LiveKit server URL. Default: ``LIVEKIT_URL``.
            api_key: LiveKit API key. Default: ``LIVEKIT_API_KEY``.
            api_secret: LiveKit API secret. Default: ``LIVEKIT_API_SECRET``.
            room: The room the agent is in (required).
            identity: This sender's identity. Default: ``imaginex-sender-`` plus 8 hex digits.
                The agent must trust it (``allowed_identities``) unless ``secret`` is given.
            name: Display name. Default: none.
            hidden: Must stay False (the default): a real LiveKit server strips a hidden
                participant's identity from its RPCs and data packets, so the agent could not
                answer it. The sender joins as a dependent participant instead (see
                :func:`sender_token`).
            agent_identity: See :class:`ContextClient`.
            agent_code: See :class:`ContextClient`.
            via: See :class:`ContextClient`. Default ``"rpc"``.
            secret: See :class:`ContextClient`.
            timeout: See :class:`ContextClient`.
            retries: See :class:`ContextClient`.
            backoff: See :class:`ContextClient`.
            agent_timeout: See :class:`ContextClient`.
            playout_timeout: See :class:`ContextClient`.
            connect_timeout: Seconds to wait for the connection. Default 10.
            token_ttl: Lifetime of the minted token. Default 6 hours.
            room_factory: Builds the ``rtc.Room`` to connect (a subclass, in tests).

        Returns:
            A connected client that owns its room.

        Raises:
            ValueError: If the URL, the API key or secret, or the room is missing, or if
                ``hidden=True``.
            ContextError: ``LIVEKIT_UNAVAILABLE`` if the connection fails.
        """
        url = _env(url, "LIVEKIT_URL")
        api_key = _env(api_key, "LIVEKIT_API_KEY")
        api_secret = _env(api_secret, "LIVEKIT_API_SECRET")
        if not url:
            raise ValueError("No LiveKit URL: pass url or set LIVEKIT_URL.")
        if not api_key or not api_secret:
            raise ValueError(
                "No LiveKit API key and secret: pass them or set LIVEKIT_API_KEY and "
                "LIVEKIT_API_SECRET."
            )
        if not room:
            raise ValueError("No room: pass the name of the room the agent is in.")
        if hidden:
            raise ValueError(
                "A hidden sender cannot be answered: LiveKit strips a hidden participant's "
                "identity from its RPCs and data packets. Leave hidden unset."
            )
        identity = identity or SENDER_IDENTITY_PREFIX + uuid.uuid4().hex[:8]
        token = sender_token(
            api_key,
            api_secret,
            room=room,
            identity=identity,
            name=name,
            ttl=token_ttl,
        )
        lk_room = room_factory()
        try:
            await asyncio.wait_for(
                lk_room.connect(url, token, rtc.RoomOptions(auto_subscribe=False)),
                connect_timeout,
            )
        except (rtc.ConnectError, asyncio.TimeoutError, OSError) as exc:
            with contextlib.suppress(Exception):
                await lk_room.disconnect()
            reason = (
                f"no answer within {connect_timeout:g} s"
                if isinstance(exc, asyncio.TimeoutError)
                else getattr(exc, "message", None) or str(exc) or type(exc).__name__
            )
            raise ContextError(
                ErrorCode.LIVEKIT_UNAVAILABLE,
                f"Could not connect to LiveKit at {url}: {reason}.",
                retryable=False,
            ) from exc
        logger.info("context client connected", extra={"room": room, "identity": identity})
        client = cls(
            lk_room,
            agent_identity=agent_identity,
            agent_code=agent_code,
            via=via,
            secret=secret,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            agent_timeout=agent_timeout,
            playout_timeout=playout_timeout,
        )
        client._owns_room = True
        return client

    # ------------------------------------------------------------------------------------------
    # lifecycle

    @property
    def room(self) -> rtc.Room:
        return self._room

    @property
    def via(self) -> Via:
        return self._via

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> ContextClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, fail what is still waiting, and leave the room if it is ours.

        Idempotent. Calls still waiting raise :class:`ContextError` (``LIVEKIT_UNAVAILABLE``);
        later calls raise ``RuntimeError``.
        """
        if self._closed:
            return
        self._closed = True
        room = self._room
        room.off("data_received", self._on_data_received)
        room.off("participant_connected", self._on_participant_connected)
        room.off("participant_disconnected", self._on_participant_disconnected)
        room.off("participant_attributes_changed", self._on_attributes_changed)
        room.off("disconnected", self._on_disconnected)
        self._fail_everything("The client was closed before the answer arrived.")
        if self._owns_room:
            try:
                await room.disconnect()
            except Exception:
                logger.warning("could not leave the room cleanly", exc_info=True)

    # ------------------------------------------------------------------------------------------
    # requests

    @overload
    async def speak(
        self,
        text: str | None = ...,
        *,
        instructions: str | None = ...,
        id: str | None = ...,
        allow_interruptions: bool = ...,
        interrupt: bool = ...,
        mode: SpeakMode | None = ...,
        wait_for_playout: Literal[False] = ...,
        timeout: float | None = ...,
        playout_timeout: float | None = ...,
    ) -> SuccessAck: ...

    @overload
    async def speak(
        self,
        text: str | None = ...,
        *,
        instructions: str | None = ...,
        id: str | None = ...,
        allow_interruptions: bool = ...,
        interrupt: bool = ...,
        mode: SpeakMode | None = ...,
        wait_for_playout: Literal[True],
        timeout: float | None = ...,
        playout_timeout: float | None = ...,
    ) -> SpeakResult: ...

    @overload
    async def speak(
        self,
        text: str | None = ...,
        *,
        instructions: str | None = ...,
        id: str | None = ...,
        allow_interruptions: bool = ...,
        interrupt: bool = ...,
        mode: SpeakMode | None = ...,
        wait_for_playout: bool,
        timeout: float | None = ...,
        playout_timeout: float | None = ...,
    ) -> SuccessAck | SpeakResult: ...

    async def speak(
        self,
        text: str | None = None,
        *,
        instructions: str | None = None,
        id: str | None = None,
        allow_interruptions: bool = True,
        interrupt: bool = False,
        mode: SpeakMode | None = None,
        wait_for_playout: bool = False,
        timeout: float | None = None,
        playout_timeout: float | None = None,
    ) -> SuccessAck | SpeakResult:
        """Make the agent say ``text`` through its TTS (or phrase ``instructions`` with its LLM).

        Args:
            text: What to say, verbatim.
            instructions: Instead of ``text``: what the LLM should say, in its own words.
            id: The request id (the dedup key). Default: a random one.
            allow_interruptions: False: the user cannot barge in. Default True.
            interrupt: True: cut the agent's current interruptible speech first. Default False:
                queue behind it.
            mode: ``"queue"``, ``"interrupt"`` or ``"if_idle"`` (refused with ``BUSY`` if the
                agent or the user is speaking). Default: from ``interrupt``.
            wait_for_playout: Also wait until the speech has played out (or was cut).
            timeout: Seconds to wait for the ack to each attempt. Default: the client's.
            playout_timeout: Seconds to wait for the end of the speech. Default: the client's.

        Returns:
            The success ack (``data.speech_id`` names the speech; ``duplicate`` is True when an
            earlier attempt was applied already), or with ``wait_for_playout`` a
            :class:`SpeakResult`.

        Raises:
            ContextError: The agent refused the request, or it could not be delivered.
            AckTimeoutError: No ack in time.
            PlayoutTimeoutError: Accepted, but the speech did not end in time.
        """
        obj: dict[str, Any] = {
            "type": "speak",
            "id": id,
            "message": text,
            "instructions": instructions,
            "allow_interruptions": allow_interruptions,
            "interrupt": interrupt,
            "mode": mode,
        }
        prepared = self._prepare({k: v for k, v in obj.items() if v is not None})
        request_id: str = prepared["id"]
        ack = await self._deliver(prepared, timeout)
        if not wait_for_playout:
            return ack
        try:
            finished = await self.wait_for_playout(request_id, timeout=playout_timeout)
        except PlayoutTimeoutError as exc:
            raise PlayoutTimeoutError(exc.message, request_id=request_id, accepted=ack) from None
        return SpeakResult(ack=ack, finished=finished)

    async def add_context(
        self,
        text: str,
        *,
        key: str | None = None,
        role: ContextRole = "system",
        id: str | None = None,
        trigger_reply: bool = False,
        scope: ContextScope = "persistent",
        ttl_s: float | None = None,
        timeout: float | None = None,
    ) -> SuccessAck:
        """Give the agent background knowledge for its next replies; nothing is spoken.

        Args:
            text: The context.
            key: A later add_context with the same key replaces this one. Default: none.
            role: ``system`` (default), ``developer``, ``user`` or ``assistant``.
            id: The request id (the dedup key). Default: a random one.
            trigger_reply: Let the agent respond to it right away. Default False.
            scope: ``persistent`` (default) or ``next_turn`` (dropped after the next reply).
            ttl_s: Seconds after which the entry leaves the agent's context. Default: never.
            timeout: Seconds to wait for the ack to each attempt. Default: the client's.

        Returns:
            The success ack.

        Raises:
            ContextError: The agent refused the request, or it could not be delivered.
            AckTimeoutError: No ack in time.
        """
        obj: dict[str, Any] = {
            "type": "add_context",
            "id": id,
            "context": text,
            "key": key,
            "role": role,
            "trigger_reply": trigger_reply,
            "scope": scope,
            "ttl_s": ttl_s,
        }
        prepared = self._prepare({k: v for k, v in obj.items() if v is not None})
        return await self._deliver(prepared, timeout)

    async def remove_context(
        self, key: str, *, id: str | None = None, timeout: float | None = None
    ) -> SuccessAck:
        """Remove the context added under ``key`` (``data.removed`` says whether there was one).

        Raises:
            ContextError: The agent refused the request, or it could not be delivered.
            AckTimeoutError: No ack in time.
        """
        obj: dict[str, Any] = {"type": "remove_context", "key": key}
        if id is not None:
            obj["id"] = id
        return await self._deliver(self._prepare(obj), timeout)

    async def get_state(self, *, timeout: float | None = None) -> AgentStateInfo:
        """The agent's and the user's state and the context entries the plugin holds.

        Raises:
            ContextError: The agent refused the request, or it could not be delivered.
            AckTimeoutError: No ack in time.
        """
        ack = await self._deliver(self._prepare({"type": "get_state"}), timeout)
        if ack.data.state is None:
            raise ContextError(
                ErrorCode.INTERNAL_ERROR,
                "The agent's get_state answer carries no state.",
                request_id=ack.id,
                retryable=False,
            )
        return ack.data.state

    async def send(
        self, request: Request | BaseModel | Mapping[str, Any], *, timeout: float | None = None
    ) -> SuccessAck:
        """Send any protocol v1 request (a model such as ``SpeakRequest``, or a mapping).

        A request without an ``id`` gets a random one; read it from the returned ack.

        Raises:
            ContextError: The request is invalid, the agent refused it, or it could not be
                delivered.
            AckTimeoutError: No ack in time.
        """
        return await self._deliver(self._prepare(request), timeout)

    async def wait_for_playout(
        self, request_id: str, *, timeout: float | None = None
    ) -> SpeechFinishedEvent:
        """Wait for the ``speech_finished`` event of a speech this client requested.

        Works for a speak, and for an add_context with ``trigger_reply``. Events are kept for
        10 minutes, so it may be called after the speech ended. A repeated id answered as a
        ``duplicate`` only finds the event if this client sent the first one too.

        Args:
            request_id: The request's id.
            timeout: Seconds to wait. Default: the client's ``playout_timeout``.

        Returns:
            The event (``interrupted``, ``played_s``, ``speech_id``).

        Raises:
            PlayoutTimeoutError: The event did not arrive in time.
            ContextError: The agent left, or the client was closed or disconnected.
        """
        self._ensure_open()
        cached = self._finished.get(request_id)
        if cached is not None:
            return cached
        wait = self._playout_timeout if timeout is None else timeout
        future: asyncio.Future[SpeechFinishedEvent] = asyncio.get_running_loop().create_future()
        waiters = self._playout_waiters.setdefault(request_id, [])
        waiters.append(future)
        try:
            return await asyncio.wait_for(future, wait)
        except asyncio.TimeoutError as exc:
            if isinstance(exc, ContextError):
                raise
            raise PlayoutTimeoutError(
                f"The speech did not finish within {wait:g} s.", request_id=request_id
            ) from None
        finally:
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._playout_waiters.pop(request_id, None)

    async def find_agent(self, *, timeout: float | None = None) -> str:
        """The identity of the agent participant, waiting for it to join if needed.

        Args:
            timeout: Seconds to wait. Default: the client's ``agent_timeout``.

        Raises:
            ContextError: ``AGENT_NOT_FOUND`` if none appeared in time, or if several match.
        """
        self._ensure_open()
        return await self._resolve_agent(timeout)

    # ------------------------------------------------------------------------------------------
    # delivery

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("ContextClient is closed")

    def _prepare(self, request: Request | BaseModel | Mapping[str, Any]) -> dict[str, Any]:
        self._ensure_open()
        return prepare_request(request, agent_code=self._agent_code)

    def _closed_error(self, request_id: str | None = None) -> ContextError:
        return ContextError(
            ErrorCode.LIVEKIT_UNAVAILABLE,
            "The client was closed before the answer arrived.",
            request_id=request_id,
            retryable=False,
        )

    async def _deliver(self, obj: dict[str, Any], timeout: float | None) -> SuccessAck:
        request_id: str = obj["id"]
        if request_id in self._pending:
            raise ValueError(f"A request with id '{request_id}' is already waiting for its ack.")
        attempt_timeout = self._timeout if timeout is None else timeout
        if attempt_timeout <= 0:
            raise ValueError("timeout must be positive")
        body = _encode(obj)
        pending = _Pending(request_id)
        self._pending[request_id] = pending
        try:
            attempt = 0
            while True:
                try:
                    ack = await self._attempt(pending, body, attempt_timeout)
                except _NoAck:
                    failure: ContextError = AckTimeoutError(
                        f"No ack from agent '{pending.agent}' within {attempt_timeout:g} s"
                        + (f" ({attempt + 1} attempts)." if attempt else "."),
                        request_id=request_id,
                        attempts=attempt + 1,
                    )
                except ContextError as exc:
                    failure = exc
                else:
                    if isinstance(ack, SuccessAck):
                        logger.debug(
                            "context request acknowledged",
                            extra={"request_id": request_id, "attempts": attempt + 1},
                        )
                        return ack
                    failure = ContextError.from_ack(ack)
                if not failure.retryable or attempt >= self._retries or self._closed:
                    raise failure
                delay = self._retry_delay(attempt, failure)
                logger.info(
                    "retrying a context request",
                    extra={
                        "request_id": request_id,
                        "error": failure.code.value,
                        "attempt": attempt + 1,
                        "delay_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)
                attempt += 1
        finally:
            self._pending.pop(request_id, None)

    def _retry_delay(self, attempt: int, failure: ContextError) -> float:
        delay = min(MAX_BACKOFF_S, self._backoff * 2.0**attempt) * random.uniform(0.5, 1.0)
        if failure.retry_after:
            delay = max(delay, min(failure.retry_after, MAX_RETRY_AFTER_S))
        return delay

    async def _attempt(self, pending: _Pending, body: str, timeout: float) -> SuccessAck | ErrorAck:
        """Send once and return the ack; raises ``_NoAck`` on a timeout, else ContextError."""
        if self._closed:
            raise self._closed_error(pending.request_id)
        if not self._room.isconnected():
            raise ContextError(
                ErrorCode.LIVEKIT_UNAVAILABLE,
                "The room is not connected.",
                request_id=pending.request_id,
                retryable=False,
            )
        agent = await self._resolve_agent(None)
        payload = self._sign(body) if self._secret is not None else body
        _check_size(payload, pending.request_id)
        pending.agent = agent
        self._sent_to.put(pending.request_id, agent)
        if self._via == "rpc":
            return await self._attempt_rpc(pending, agent, payload, timeout)
        return await self._attempt_data(pending, agent, payload, timeout)

    async def _attempt_data(
        self, pending: _Pending, agent: str, payload: str, timeout: float
    ) -> SuccessAck | ErrorAck:
        # registered before publishing: the ack may arrive before publish_data returns
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SuccessAck | ErrorAck] = loop.create_future()
        pending.future = future
        deadline = loop.time() + timeout
        try:
            while True:
                await self._publish_to(agent, payload, pending.request_id)
                # Until the agent has answered us once, it may not know us yet: on a real
                # server a newcomer's first packets can reach it before the news that we
                # joined, and then arrive without a sender, which it must refuse unanswered.
                # So the same packet (same id: applied at most once) goes again shortly.
                wait = deadline - loop.time()
                if agent not in self._heard_from:
                    wait = min(wait, _FIRST_CONTACT_RESEND_S)
                done, _ = await asyncio.wait({future}, timeout=max(wait, 0.0))
                if done:
                    self._heard_from.add(agent)
                    return future.result()
                if loop.time() >= deadline:
                    raise _NoAck
        finally:
            pending.future = None

    async def _publish_to(self, agent: str, payload: str, request_id: str) -> None:
        try:
            await self._room.local_participant.publish_data(
                payload.encode("utf-8"),
                reliable=True,
                destination_identities=[agent],
                topic=CONTEXT_TOPIC,
            )
        except Exception as exc:
            raise ContextError(
                ErrorCode.LIVEKIT_UNAVAILABLE,
                f"Could not send the message to agent '{agent}'.",
                request_id=request_id,
                retryable=True,
            ) from exc

    async def _attempt_rpc(
        self, pending: _Pending, agent: str, payload: str, timeout: float
    ) -> SuccessAck | ErrorAck:
        try:
            response = await asyncio.wait_for(
                self._room.local_participant.perform_rpc(
                    destination_identity=agent,
                    method=RPC_METHOD,
                    payload=payload,
                    response_timeout=timeout,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise _NoAck from None
        except rtc.RpcError as exc:
            if exc.code in _RPC_TIMEOUTS:
                raise _NoAck from None
            raise self._rpc_failure(exc, agent, pending.request_id) from None
        try:
            ack = protocol.parse_ack(response)
        except ValueError:
            raise ContextError(
                ErrorCode.INTERNAL_ERROR,
                f"Participant '{agent}' answered the RPC with something that is not an ack.",
                request_id=pending.request_id,
                retryable=False,
            ) from None
        # an error ack may carry no id (the agent could not read the request); anything else
        # must be this request's ack, or a broken agent could confirm what it never applied
        if ack.id != pending.request_id and not (isinstance(ack, ErrorAck) and ack.id is None):
            raise ContextError(
                ErrorCode.INTERNAL_ERROR,
                f"Participant '{agent}' answered the RPC with the ack of another request; "
                "whether this one was applied is unknown.",
                request_id=pending.request_id,
                retryable=False,
            )
        return ack

    @staticmethod
    def _rpc_failure(exc: rtc.RpcError, agent: str, request_id: str) -> ContextError:
        code = exc.code
        try:
            name = rtc.RpcError.ErrorCode(code).name
        except ValueError:
            name = str(code)
        if code in _RPC_UNREACHABLE:
            return ContextError(
                ErrorCode.AGENT_NOT_FOUND,
                f"Agent '{agent}' could not be reached over RPC ({name}).",
                request_id=request_id,
                retryable=True,
            )
        if code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD:
            # also what an agent answers in the moment between joining and registering it
            return ContextError(
                ErrorCode.NOT_READY,
                f"Participant '{agent}' does not answer the '{RPC_METHOD}' RPC method; "
                "is ContextPlugin running there?",
                request_id=request_id,
                retryable=True,
            )
        if code == rtc.RpcError.ErrorCode.REQUEST_PAYLOAD_TOO_LARGE:
            return ContextError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                "The message is too large for an RPC request.",
                request_id=request_id,
                retryable=False,
            )
        if code in (
            rtc.RpcError.ErrorCode.UNSUPPORTED_SERVER,
            rtc.RpcError.ErrorCode.UNSUPPORTED_VERSION,
        ):
            return ContextError(
                ErrorCode.LIVEKIT_UNAVAILABLE,
                f"RPC is not available with this LiveKit server or SDK ({name}).",
                request_id=request_id,
                retryable=False,
            )
        return ContextError(
            ErrorCode.INTERNAL_ERROR,
            f"The agent's RPC handler failed ({name}).",
            request_id=request_id,
            retryable=False,
        )

    def _sign(self, body: str) -> str:
        assert self._secret is not None
        digest = hashlib.sha256(body.encode("utf-8")).digest()
        now = int(time.time())
        last = self._signed_at.get(digest)
        timestamp = now if last is None or now > last else last + 1
        self._signed_at.put(digest, timestamp)
        return sign_request(body, self._secret, timestamp=timestamp)

    # ------------------------------------------------------------------------------------------
    # finding the agent

    async def _resolve_agent(self, timeout: float | None) -> str:
        wait = self._agent_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            if self._closed:
                raise self._closed_error()
            # cleared before looking, so a change after the look wakes the wait below
            self._roster_changed.clear()
            ambiguous: ContextError | None = None
            try:
                found = self._match_agent()
            except ContextError as exc:
                # may resolve itself: an agent publishes its code a moment after joining
                found, ambiguous = None, exc
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ambiguous or ContextError(
                    ErrorCode.AGENT_NOT_FOUND, self._no_agent_message(wait), retryable=False
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._roster_changed.wait(), remaining)

    def _match_agent(self) -> str | None:
        participants = self._room.remote_participants
        if self._agent_identity is not None:
            return self._agent_identity if self._agent_identity in participants else None
        return _pick_agent(
            ((p.identity, p.kind, p.attributes) for p in participants.values()),
            agent_code=self._agent_code,
            room=self._room.name,
        )

    def _no_agent_message(self, waited: float) -> str:
        room = self._room.name
        if self._agent_identity is not None:
            return (
                f"Participant '{self._agent_identity}' is not in room '{room}' "
                f"(waited {waited:g} s)."
            )
        if self._agent_code is not None:
            return (
                f"No participant with agent code '{self._agent_code}' is in room '{room}' "
                f"(waited {waited:g} s); the agent publishes its code once "
                "ContextPlugin(agent_code=...) has started."
            )
        return f"No agent participant is in room '{room}' (waited {waited:g} s)."

    # ------------------------------------------------------------------------------------------
    # room events (synchronous; they never raise)

    def _on_participant_connected(self, _: rtc.RemoteParticipant) -> None:
        self._roster_changed.set()

    def _on_attributes_changed(self, _: dict[str, str], __: rtc.Participant) -> None:
        self._roster_changed.set()

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self._roster_changed.set()
        gone = participant.identity
        for pending in self._pending.values():
            future = pending.future
            if pending.agent == gone and future is not None and not future.done():
                # retryable: the next attempt waits for the agent to come back
                future.set_exception(
                    ContextError(
                        ErrorCode.AGENT_NOT_FOUND,
                        f"Agent '{gone}' left the room before answering.",
                        request_id=pending.request_id,
                        retryable=True,
                    )
                )
        for request_id, waiters in self._playout_waiters.items():
            if self._sent_to.get(request_id) != gone:
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(
                        ContextError(
                            ErrorCode.AGENT_NOT_FOUND,
                            f"Agent '{gone}' left the room before the speech finished.",
                            request_id=request_id,
                            retryable=False,
                        )
                    )

    def _on_disconnected(self, _: Any) -> None:
        self._fail_everything("The client was disconnected from the room.")

    def _fail_everything(self, message: str) -> None:
        self._roster_changed.set()
        for pending in self._pending.values():
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(
                    ContextError(
                        ErrorCode.LIVEKIT_UNAVAILABLE,
                        message,
                        request_id=pending.request_id,
                        retryable=False,
                    )
                )
        for request_id, waiters in self._playout_waiters.items():
            for future in waiters:
                if not future.done():
                    future.set_exception(
                        ContextError(
                            ErrorCode.LIVEKIT_UNAVAILABLE,
                            message,
                            request_id=request_id,
                            retryable=False,
                        )
                    )

    def _on_data_received(self, packet: rtc.DataPacket) -> None:
        if packet.topic != ACK_TOPIC or packet.participant is None:
            return
        sender = packet.participant.identity
        try:
            message = protocol.parse_server_message(packet.data)
        except (ValueError, ValidationError, RecursionError):
            logger.debug("ignored a malformed packet on the ack topic", extra={"sender": sender})
            return
        if isinstance(message, SuccessAck | ErrorAck):
            self._on_ack(message, sender)
        elif isinstance(message, SpeechFinishedEvent):
            self._on_speech_finished(message, sender)

    def _on_ack(self, ack: SuccessAck | ErrorAck, sender: str) -> None:
        if ack.id is not None:
            pending = self._pending.get(ack.id)
        else:
            # refusals of messages the agent could not read carry no id; they can only be
            # matched when exactly one request to that agent is waiting
            waiting = [
                p
                for p in self._pending.values()
                if p.agent == sender and p.future is not None and not p.future.done()
            ]
            pending = waiting[0] if len(waiting) == 1 and isinstance(ack, ErrorAck) else None
        if pending is None or pending.agent != sender:
            return
        future = pending.future
        if future is not None and not future.done():
            future.set_result(ack)

    def _on_speech_finished(self, event: SpeechFinishedEvent, sender: str) -> None:
        if event.id is None or self._sent_to.get(event.id) != sender:
            return
        self._finished.put(event.id, event)
        for future in self._playout_waiters.get(event.id, []):
            if not future.done():
                future.set_result(event)


class _NoAck(Exception):
    """One attempt got no answer in time."""


# ---------------------------------------------------------------------------------------------
# the server API path


async def send_via_server_api(
    request: Request | BaseModel | Mapping[str, Any],
    *,
    room: str,
    agent_identity: str | None = None,
    agent_code: str | None = None,
    lkapi: api.LiveKitAPI | None = None,
    url: str | None = None,
    api_key: str | None = None,
    api_secret: str | None = None,
    secret: str | bytes | None = None,
) -> ServerSendResult:
    """Send a request with LiveKit's server API (``RoomService.SendData``), without joining.

    **It cannot be acknowledged.** The agent receives the packet with no sender participant, so
    it has nobody to send an ack or speech events to: this function returns once LiveKit
    accepted the packet, and ``ServerSendResult.acknowledged`` is always False. Whether the
    agent applied it is unknown. The request is signed, with ``secret`` if given, else with the
    LiveKit API secret: the agent cannot tell a server packet from a hidden or newly joined
    participant's, so it trusts only signed ones (``ContextPlugin(trust_server=True)``, the
    default, checks the LiveKit API secret). Use :class:`ContextClient` when you need the
    answer.

    Args:
        request: A request model or mapping; without an id it gets a random one.
        room: The room the agent is in.
        agent_identity: The agent to send to. Default: looked up with ``ListParticipants`` (the
            participant publishing ``agent_code``, else the one agent participant).
        agent_code: See ``agent_identity``; also put in the request.
        lkapi: A ``LiveKitAPI`` to use (left open). Default: one made from ``url``,
            ``api_key``, ``api_secret`` (or ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``,
            ``LIVEKIT_API_SECRET``) and closed again.
        url: LiveKit server URL, when ``lkapi`` is not given.
        api_key: LiveKit API key, when ``lkapi`` is not given.
        api_secret: LiveKit API secret, when ``lkapi`` is not given.
        secret: Sign the request with this shared secret (the agent's ``secret``). Default:
            sign it with the LiveKit API secret (``api_secret``, ``LIVEKIT_API_SECRET``, or
            ``lkapi``'s).

    Returns:
        The request id and where it went, with ``acknowledged=False``.

    Raises:
        ContextError: ``VALIDATION_ERROR`` / ``PAYLOAD_TOO_LARGE`` for a bad request,
            ``AGENT_NOT_FOUND`` if no agent is in the room (or several match),
            ``NO_ACTIVE_ROOMS`` if the room does not exist, ``LIVEKIT_UNAVAILABLE`` if the
            server cannot be reached or refuses the call.
        ValueError: If no ``lkapi`` is given and the URL or credentials are missing.
    """
    obj = prepare_request(request, agent_code=agent_code)
    request_id: str = obj["id"]
    body = _encode(obj)
    own_api = lkapi is None
    client = lkapi if lkapi is not None else api.LiveKitAPI(url, api_key, api_secret)
    try:
        payload = sign_request(body, secret or client.room.api_secret)
        _check_size(payload, request_id)
        if agent_identity is None:
            listing = await client.room.list_participants(api.ListParticipantsRequest(room=room))
            agent_identity = _pick_agent(
                (
                    (
                        p.identity,
                        # the server API numbers kinds on its own; only AGENT matters here
                        _AGENT_KIND if p.kind == api.ParticipantInfo.Kind.AGENT else -1,
                        dict(p.attributes),
                    )
                    for p in listing.participants
                ),
                agent_code=agent_code,
                room=room,
            )
            if agent_identity is None:
                which = f"with agent code '{agent_code}' " if agent_code else ""
                raise ContextError(
                    ErrorCode.AGENT_NOT_FOUND,
                    f"No agent {which}is in room '{room}'.",
                    request_id=request_id,
                    retryable=False,
                )
        await client.room.send_data(
            api.SendDataRequest(
                room=room,
                data=payload.encode("utf-8"),
                kind=api.DataPacket.Kind.RELIABLE,
                destination_identities=[agent_identity],
                topic=CONTEXT_TOPIC,
            )
        )
    except api.TwirpError as exc:
        if exc.code == api.TwirpErrorCode.NOT_FOUND:
            raise ContextError(
                ErrorCode.NO_ACTIVE_ROOMS,
                f"Room '{room}' does not exist on the LiveKit server.",
                request_id=request_id,
                retryable=False,
            ) from exc
        raise ContextError(
            ErrorCode.LIVEKIT_UNAVAILABLE,
            f"The LiveKit server refused the call ({exc.code}).",
            request_id=request_id,
            retryable=exc.status >= 500,
        ) from exc
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise ContextError(
            ErrorCode.LIVEKIT_UNAVAILABLE,
            "The LiveKit server could not be reached.",
            request_id=request_id,
            retryable=True,
        ) from exc
    finally:
        if own_api:
            await client.aclose()
    logger.info(
        "context request sent through the server API",
        extra={"request_id": request_id, "room": room, "agent": agent_identity},
    )
    return ServerSendResult(request_id=request_id, room=room, destination_identity=agent_identity)
