"""The sender's front: :class:`ContextClient`, its public calls and the retry loop.

It holds no mechanism of its own: :mod:`.requests` prepares and signs, :mod:`.locator` finds the
agent, :mod:`.channels` sends (RPC or data), :mod:`.waiters` matches acks and speech events, and
:mod:`.connection` joins the room for :meth:`ContextClient.connect`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Literal, overload

from livekit import rtc
from livekit.rtc.room import EventTypes
from pydantic import BaseModel, ValidationError

from .. import protocol
from .._livekit.tokens import DEFAULT_TOKEN_TTL
from ..errors import AckTimeoutError, ContextError, ErrorCode, PlayoutTimeoutError
from ..log import logger
from ..protocol import (
    ACK_TOPIC,
    AgentStateInfo,
    ContextRole,
    ContextScope,
    ErrorAck,
    Request,
    SpeakMode,
    SpeechFinishedEvent,
    SuccessAck,
)
from .channels import Channel, DataChannel, NoAck, RpcChannel
from .connection import join_room
from .locator import AgentLocator
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
    Via,
)
from .requests import Signer, check_size, encode, prepare_request
from .results import SpeakResult
from .waiters import Pending, PendingAcks, PlayoutWaiters, gone, unavailable

_CLOSED_MESSAGE = "The client was closed before the answer arrived."


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
        _check_options(via, timeout, retries, backoff, agent_timeout, playout_timeout)
        self._room = room
        self._agent_code = agent_code
        self._via: Via = via
        self._signer = Signer(secret) if secret else None
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._playout_timeout = playout_timeout
        self._owns_room = False
        self._closed = False
        self._channel: Channel = RpcChannel(room) if via == "rpc" else DataChannel(room)
        self._locator = AgentLocator(
            room,
            agent_identity=agent_identity,
            agent_code=agent_code,
            agent_timeout=agent_timeout,
            closed=lambda: self._closed_error() if self._closed else None,
        )
        self._pending = PendingAcks()
        self._playouts = PlayoutWaiters()
        self._listeners: dict[EventTypes, Callable[..., None]] = {
            "data_received": self._on_data_received,
            "participant_connected": lambda _: self._locator.changed(),
            "participant_disconnected": self._on_participant_disconnected,
            "participant_attributes_changed": lambda *_: self._locator.changed(),
            "disconnected": lambda _: self._fail_everything(
                "The client was disconnected from the room."
            ),
        }
        for event, listener in self._listeners.items():
            room.on(event, listener)

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
        lk_room = await join_room(
            url,
            api_key,
            api_secret,
            room,
            identity=identity,
            name=name,
            hidden=hidden,
            connect_timeout=connect_timeout,
            token_ttl=token_ttl,
            room_factory=room_factory,
        )
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
        for event, listener in self._listeners.items():
            self._room.off(event, listener)
        self._fail_everything(_CLOSED_MESSAGE)
        if self._owns_room:
            try:
                await self._room.disconnect()
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
        wait = self._playout_timeout if timeout is None else timeout
        try:
            return await self._playouts.wait(request_id, wait)
        except asyncio.TimeoutError as exc:
            if isinstance(exc, ContextError):
                raise
            raise PlayoutTimeoutError(
                f"The speech did not finish within {wait:g} s.", request_id=request_id
            ) from None

    async def find_agent(self, *, timeout: float | None = None) -> str:
        """The identity of the agent participant, waiting for it to join if needed.

        Args:
            timeout: Seconds to wait. Default: the client's ``agent_timeout``.

        Raises:
            ContextError: ``AGENT_NOT_FOUND`` if none appeared in time, or if several match.
        """
        self._ensure_open()
        return await self._locator.resolve(timeout)

    # ------------------------------------------------------------------------------------------
    # delivery: the retry loop

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("ContextClient is closed")

    def _prepare(self, request: Request | BaseModel | Mapping[str, Any]) -> dict[str, Any]:
        self._ensure_open()
        return prepare_request(request, agent_code=self._agent_code)

    def _closed_error(self, request_id: str | None = None) -> ContextError:
        return ContextError(
            ErrorCode.LIVEKIT_UNAVAILABLE, _CLOSED_MESSAGE, request_id=request_id, retryable=False
        )

    async def _deliver(self, obj: dict[str, Any], timeout: float | None) -> SuccessAck:
        request_id: str = obj["id"]
        attempt_timeout = self._timeout if timeout is None else timeout
        if attempt_timeout <= 0:
            raise ValueError("timeout must be positive")
        pending = self._pending.add(request_id)
        body = encode(obj)
        try:
            attempt = 0
            while True:
                failure = await self._try_once(pending, body, attempt_timeout, attempt)
                if isinstance(failure, SuccessAck):
                    return failure
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
            self._pending.remove(request_id)

    async def _try_once(
        self, pending: Pending, body: str, timeout: float, attempt: int
    ) -> SuccessAck | ContextError:
        """One attempt: the success ack, or the failure to raise or retry."""
        try:
            ack = await self._attempt(pending, body, timeout)
        except NoAck:
            return AckTimeoutError(
                f"No ack from agent '{pending.agent}' within {timeout:g} s"
                + (f" ({attempt + 1} attempts)." if attempt else "."),
                request_id=pending.request_id,
                attempts=attempt + 1,
            )
        except ContextError as exc:
            return exc
        if isinstance(ack, ErrorAck):
            return ContextError.from_ack(ack)
        logger.debug(
            "context request acknowledged",
            extra={"request_id": pending.request_id, "attempts": attempt + 1},
        )
        return ack

    def _retry_delay(self, attempt: int, failure: ContextError) -> float:
        delay = min(MAX_BACKOFF_S, self._backoff * 2.0**attempt) * random.uniform(0.5, 1.0)
        if failure.retry_after:
            delay = max(delay, min(failure.retry_after, MAX_RETRY_AFTER_S))
        return delay

    async def _attempt(self, pending: Pending, body: str, timeout: float) -> SuccessAck | ErrorAck:
        """Send once and return the ack; raises ``NoAck`` on a timeout, else ContextError."""
        if self._closed:
            raise self._closed_error(pending.request_id)
        if not self._room.isconnected():
            raise ContextError(
                ErrorCode.LIVEKIT_UNAVAILABLE,
                "The room is not connected.",
                request_id=pending.request_id,
                retryable=False,
            )
        agent = await self._locator.resolve()
        payload = self._signer.sign(body) if self._signer is not None else body
        check_size(payload, pending.request_id)
        pending.agent = agent
        self._playouts.sent(pending.request_id, agent)
        return await self._channel.attempt(pending, agent, payload, timeout)

    # ------------------------------------------------------------------------------------------
    # room events (synchronous; they never raise)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self._locator.changed()
        left = participant.identity
        # retryable: the next attempt waits for the agent to come back
        self._pending.fail(gone(left, "answering", retryable=True), agent=left)
        self._playouts.fail(gone(left, "the speech finished", retryable=False), agent=left)

    def _fail_everything(self, message: str) -> None:
        self._locator.changed()
        self._pending.fail(unavailable(message))
        self._playouts.fail(unavailable(message))

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
            self._pending.on_ack(message, sender)
        elif isinstance(message, SpeechFinishedEvent):
            self._playouts.on_finished(message, sender)


def _check_options(
    via: str,
    timeout: float,
    retries: int,
    backoff: float,
    agent_timeout: float,
    playout_timeout: float,
) -> None:
    if via not in ("rpc", "data"):
        raise ValueError("via must be 'rpc' or 'data'")
    if timeout <= 0 or agent_timeout < 0 or playout_timeout <= 0:
        raise ValueError("timeouts must be positive")
    if retries < 0 or backoff < 0:
        raise ValueError("retries and backoff must not be negative")
