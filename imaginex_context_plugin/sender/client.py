"""The sender's front: :class:`ContextClient`, its lifecycle and its waits.

It holds no mechanism of its own: :mod:`.calls` gives it the request calls (``speak``,
``add_context``, ...), :mod:`.requests` prepares and signs, :mod:`.delivery` runs the retry loop,
:mod:`.locator` finds the agent, :mod:`.channels` sends (RPC or data), :mod:`.room_events`
routes what the room says back to :mod:`.waiters` (pending acks and playout waits), and
:mod:`.connection` joins the room for :meth:`ContextClient.connect`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from livekit import rtc
from pydantic import BaseModel

from .._livekit.tokens import DEFAULT_TOKEN_TTL
from ..log import logger
from ..protocol import (
    PROTOCOL_VERSION,
    Request,
    SessionEventType,
    SpeechFailedEvent,
    SpeechFinishedEvent,
    SuccessAck,
)
from ..request_errors import (
    ContextError,
    PlayoutTimeoutError,
    PlayoutWait,
    SpeechFailedError,
)
from .channels import DataChannel, RpcChannel
from .clips import AudioClip, send_clip
from .connection import join_room
from .control_calls import ControlCalls
from .delivery import Delivery
from .locator import AgentLocator
from .options import (
    DEFAULT_AGENT_TIMEOUT_S,
    DEFAULT_BACKOFF_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_PLAYOUT_TIMEOUT_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_VIA,
    ClientOptions,
    Via,
)
from .requests import Signer, prepare_request
from .room_events import RoomEvents
from .subscription import (
    ALL_EVENTS,
    DEFAULT_EVENT_QUEUE_SIZE,
    EventSinks,
    SessionEvents,
    SubscribeHooks,
)
from .waiters import CLOSED_MESSAGE, PendingAcks, PlayoutWaiters, closed_error

if TYPE_CHECKING:
    # typing.Unpack is 3.11+; only the type checker reads these annotations
    from typing_extensions import Unpack


class ContextClient(ControlCalls):
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
        self._timeout = timeout
        self._playout_timeout = playout_timeout
        self._owns_room = False
        self._closed = False
        self._locator = AgentLocator(
            room,
            agent_identity=agent_identity,
            agent_code=agent_code,
            agent_timeout=agent_timeout,
            closed=lambda: closed_error(None) if self._closed else None,
        )
        pending = PendingAcks()
        self._playouts = PlayoutWaiters()
        self._delivery = Delivery(
            room,
            channel=RpcChannel(room) if via == "rpc" else DataChannel(room),
            locator=self._locator,
            pending=pending,
            playouts=self._playouts,
            signer=Signer(secret) if secret else None,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            closed=lambda: self._closed,
        )
        self._sinks = EventSinks()
        self._subscription: SessionEvents | None = None
        self._events = RoomEvents(
            room,
            locator=self._locator,
            pending=pending,
            playouts=self._playouts,
            sinks=self._sinks,
        )

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
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        token_ttl: timedelta = DEFAULT_TOKEN_TTL,
        room_factory: Callable[[], rtc.Room] = rtc.Room,
        **options: Unpack[ClientOptions],
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
            connect_timeout: Seconds to wait for the connection. Default 10.
            token_ttl: Lifetime of the minted token. Default 6 hours.
            room_factory: Builds the ``rtc.Room`` to connect (a subclass, in tests).
            **options: The client's own keyword options (``via``, ``secret``, ``timeout``, ...),
                each documented on :class:`ContextClient` (:class:`~.options.ClientOptions`).

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
        client = cls(lk_room, **options)
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
        self._events.detach()
        self._events.fail_everything(CLOSED_MESSAGE)
        if self._owns_room:
            try:
                await self._room.disconnect()
            except Exception:
                logger.warning("could not leave the room cleanly", exc_info=True)

    # ------------------------------------------------------------------------------------------
    # waiting

    async def wait_for_playout(
        self, request_id: str, *, timeout: float | None = None
    ) -> SpeechFinishedEvent:
        """Wait for the ``speech_finished`` event of a speech this client requested.

        Works for a speak, and for a reply a message triggered (an add_context with
        ``trigger_reply``, a user_message). Events are kept for 10 minutes, so it may be called
        after the speech ended. A repeated id answered as a ``duplicate`` only finds the event
        if this client sent the first one too.

        It never just runs out: the agent (v1.3) ends every speech with exactly one event, and
        one that did not play raises :class:`SpeechFailedError` with its reason at once (a
        speak that could not start within its ``start_within_s`` included). If ``timeout``
        passes all the same, the client asks the agent (one ``get_state``) whether the speech
        is still queued or playing, and :class:`PlayoutTimeoutError` says which (``why``).

        Args:
            request_id: The request's id.
            timeout: Seconds to wait. Default: the client's ``playout_timeout``.

        Returns:
            The event (``interrupted``, ``played_s``, ``speech_id``).

        Raises:
            SpeechFailedError: The speech did not play (``reason``: ``not_started``,
                ``tts_error``, ``llm_error``, ``session_closed``, ``cancelled``,
                ``avatar_left``).
            PlayoutTimeoutError: The event did not arrive in time (``why``: ``pending``,
                ``lost``, ``unknown``).
            ContextError: The agent left, or the client was closed or disconnected.
        """
        self._ensure_open()
        wait = self._playout_timeout if timeout is None else timeout
        try:
            event = await self._playouts.wait(request_id, wait)
        except asyncio.TimeoutError as exc:
            if isinstance(exc, ContextError):
                raise
            why = await self._why_unfinished(request_id)
            raise PlayoutTimeoutError(
                f"The speech did not finish within {wait:g} s; {_WHY[why]}",
                request_id=request_id,
                why=why,
            ) from None
        if isinstance(event, SpeechFailedEvent):
            raise SpeechFailedError(event)
        return event

    async def _why_unfinished(self, request_id: str) -> PlayoutWait:
        """Ask the agent whether the speech of ``request_id`` is still queued or playing."""
        speech_id = self._playouts.speech_id(request_id)
        if speech_id is None or self._closed or not self._room.isconnected():
            return "unknown"
        try:
            state = await asyncio.wait_for(
                self._deliver(self._prepare({"type": "get_state"}), None), self._timeout
            )
        except (ContextError, asyncio.TimeoutError):
            return "unknown"
        if state.data.state is None:
            return "unknown"
        pending = state.data.state.pending_speeches
        if speech_id in pending:
            return "pending"
        if state.data.state.pending_speeches_truncated:
            return "unknown"  # the list was cut: it may be among those left out
        return "lost"

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
    # live session events

    def subscribe(
        self,
        *,
        events: Sequence[SessionEventType] = ALL_EVENTS,
        interim: bool = False,
        tool_arguments: bool = False,
        queue_size: int = DEFAULT_EVENT_QUEUE_SIZE,
        timeout: float | None = None,
        since_seq: int | None = None,
    ) -> SessionEvents:
        """Watch the call: the agent's live session events, as typed models.

        ::

            async with client.subscribe(events=["user_transcript", "agent_state"]) as events:
                async for event in events:
                    print(event.type, event.model_dump_json())

        Subscribes on entry (or ``await client.subscribe(...)``), unsubscribes on exit.
        Iteration hands out ``UserTranscriptEvent``, ``AgentTranscriptEvent``,
        ``AgentStateEvent``, ``UserStateEvent``, ``ConversationItemEvent``, ``ToolCallEvent``
        and ends after the ``CallEndedEvent`` (sent whether asked for or not). Events that
        arrive before the subscribe ack are kept. One subscription per client at a time (the
        agent keeps one per sender identity).

        Args:
            events: Which events. Default: all of them.
            interim: Also interim (not final) user transcripts. Default False.
            tool_arguments: Also each tool call's arguments (they may hold personal data).
                Default False.
            queue_size: Most events held here while the caller is busy; beyond it the oldest
                are dropped and the next event's ``dropped`` counts them (as it counts those
                the agent dropped). Default 1,024.
            timeout: Seconds to wait for the subscribe ack to each attempt. Default: the
                client's.
            since_seq: v1.3, resume: the ``seq`` of the last event seen (an earlier
                subscription's :attr:`SessionEvents.last_seq`). The agent first replays what it
                still holds after it (each ``replay: True``), or sends ``events_lost`` and a
                fresh ``snapshot`` when its buffer no longer reaches back, then goes live:
                nothing missing, nothing twice. Default: live events only.

        Returns:
            A :class:`SessionEvents`, not subscribed until entered or awaited.

        Raises:
            ValueError: ``events`` is empty, or ``queue_size`` is below 1.

        On entry (or await) it raises ``ContextError``: ``UNAUTHORIZED`` unless the agent's
        ``permissions=`` grant this sender ``subscribe``, ``NOT_READY`` once the call has ended,
        ``RATE_LIMITED`` when the agent has as many subscribers as it serves; and
        ``AckTimeoutError`` when no ack comes. While iterating: ``ContextError``
        ``AGENT_NOT_FOUND`` when the agent leaves without ending the call,
        ``LIVEKIT_UNAVAILABLE`` when the room goes away or the client closes.
        """
        self._ensure_open()
        if not events:
            raise ValueError("events must name at least one event")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if since_seq is not None and since_seq < 0:
            raise ValueError("since_seq must not be negative")
        hooks = SubscribeHooks(
            sinks=self._sinks,
            find_agent=self._locator.resolve,
            request=lambda obj, wait: self._deliver(self._prepare(obj), wait),
            usable=lambda: not self._closed and self._room.isconnected(),
            opened=self._subscription_opened,
            closed=self._subscription_closed,
        )
        return SessionEvents(
            hooks,
            events=events,
            interim=interim,
            tool_arguments=tool_arguments,
            queue_size=queue_size,
            timeout=timeout,
            since_seq=since_seq,
        )

    async def unsubscribe(
        self, *, id: str | None = None, timeout: float | None = None
    ) -> SuccessAck:
        """End this sender's subscription at the agent (also one another client of the same
        identity opened); an open :class:`SessionEvents` of this client stops iterating.

        ``data.removed`` in the ack says whether there was one. Any sender may unsubscribe.

        Raises:
            ContextError: It could not be delivered.
            AckTimeoutError: No ack in time.
        """
        request: dict[str, Any] = {"type": "unsubscribe"}
        if id is not None:
            request["id"] = id
        ack = await self._deliver(self._prepare(request), timeout)
        if self._subscription is not None:
            self._subscription.end_locally()
        return ack

    def _subscription_opened(self, subscription: SessionEvents) -> None:
        if self._subscription is not None:
            raise RuntimeError(
                "this client already has a subscription open; the agent keeps one per sender"
            )
        self._subscription = subscription

    def _subscription_closed(self, subscription: SessionEvents) -> None:
        if self._subscription is subscription:
            self._subscription = None

    # ------------------------------------------------------------------------------------------
    # helpers

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("ContextClient is closed")

    def _prepare(self, request: Request | BaseModel | Mapping[str, Any]) -> dict[str, Any]:
        self._ensure_open()
        obj = prepare_request(request, agent_code=self._agent_code)
        # this client knows v1.3's events (speech_failed, context_used, ...): the agent sends
        # them; an older agent ignores the field
        obj.setdefault("protocol", PROTOCOL_VERSION)
        return obj

    async def _send_clip(self, clip: AudioClip) -> dict[str, str]:
        """Stream ``clip`` to the agent (v1.3 ``speak{audio}``); the request's ``audio``."""
        self._ensure_open()
        agent = await self._locator.resolve()
        return await send_clip(self._room, agent, clip)

    async def send_clip(
        self, audio: bytes | str | os.PathLike[str], *, mime_type: str | None = None
    ) -> dict[str, str]:
        """Stream a recorded clip to the agent, for a ``speak`` request built by hand (``send``).

        :meth:`speak` with ``audio=`` does this itself. The agent keeps the clip for a minute
        (``CLIP_KEEP_S``) waiting for the speak that names it.

        Returns:
            The request's ``audio`` field: ``{"stream_id": ..., "sha256": ...}``.

        Raises:
            ContextError: ``PAYLOAD_TOO_LARGE`` over 4 MiB, ``VALIDATION_ERROR`` if empty,
                ``LIVEKIT_UNAVAILABLE`` if it could not be streamed.
            OSError: The file cannot be read.
        """
        return await self._send_clip(AudioClip.of(audio, mime_type))

    async def _deliver(self, obj: dict[str, Any], timeout: float | None) -> SuccessAck:
        return await self._delivery.deliver(obj, timeout)


_WHY: dict[PlayoutWait, str] = {
    "pending": "the agent still has it queued or playing.",
    "lost": "the agent no longer has it: its end was sent but did not arrive here.",
    "unknown": "whether the agent still has it could not be asked.",
}


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
