"""ContextPlugin: the receiver that lets a backend drive a running agent.

The hot path, top to bottom in this module:

1. bytes arrive: ``_on_data_received`` (data packet on ``CONTEXT_TOPIC``) or ``_on_rpc``;
2. ``_admit``: size check, one pydantic pass that reads and validates the packet, authorise
   (allow-list / server / signature), rate limit (refused senders too), target checks. A
   refusal becomes an error ack at once and never reaches the queue;
3. one ordered queue, drained by one consumer task (``_consume``): dedup by id, then applied
   (``_apply_speak`` -> ``AgentSession.say``; add_context -> the context store -> one chat
   context update per burst);
4. the ack goes back to the sender (``_send``, via one publisher task), and for speech,
   ``speech_started`` / ``speech_finished`` follow from the speech's own playout.

Room and session callbacks are synchronous: they only filter and enqueue, and never raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from livekit import rtc
from livekit.agents import llm, tts
from livekit.agents.job import get_job_context
from livekit.agents.utils import is_given
from pydantic import TypeAdapter

from . import protocol
from .context import DEFAULT_CONTEXT_BUDGET, ContextBudget, ContextStore
from .expiring import ExpiringCache
from .log import logger
from .protocol import (
    ACK_TOPIC,
    ADD_CONTEXT_SUCCESS_MESSAGE,
    AGENT_CODE_ATTRIBUTE,
    CONTEXT_TOPIC,
    GET_STATE_SUCCESS_MESSAGE,
    ID_REUSED_MESSAGE,
    MAX_PAYLOAD_BYTES,
    REMOVE_CONTEXT_SUCCESS_MESSAGE,
    RPC_METHOD,
    SPEAK_SUCCESS_MESSAGE,
    AckData,
    AddContextRequest,
    AgentStateInfo,
    ErrorAck,
    ErrorCode,
    GetStateRequest,
    ProtocolError,
    RemoveContextRequest,
    Request,
    SignedEnvelope,
    SpeakRequest,
    SpeechFinishedEvent,
    SpeechStartedEvent,
    SuccessAck,
    echo,
    error_ack,
    utc_timestamp,
)
from .security import (
    DEDUP_WINDOW_S,
    DEFAULT_RATE_LIMIT,
    SIGNATURE_WINDOW_S,
    RateLimit,
    RateLimiter,
    SenderPolicy,
    SignatureProblem,
    SignatureVerifier,
    remembered_ids_capacity,
)

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession, SpeechHandle
    from livekit.agents.voice.events import (
        AgentStateChangedEvent,
        CloseEvent,
        ConversationItemAddedEvent,
        ErrorEvent,
    )
    from livekit.agents.voice.io import AudioOutput, PlaybackFinishedEvent, PlaybackStartedEvent

AGENT_CODE_ENV: Final = "IMAGINEX_AGENT_CODE"
SERVER_SECRET_ENV: Final = "LIVEKIT_API_SECRET"
DEFAULT_READY_TIMEOUT_S: Final = 10.0
"""How long a message waits for the session to start or finish a handoff before NOT_READY."""
DEFAULT_MAX_QUEUE: Final = 1_024
"""Most messages waiting to be applied at once; beyond it senders get RATE_LIMITED."""
MAX_OUTBOUND_ANSWERS: Final = 2_048
"""Most answers waiting to be published. Beyond it one is dropped (``stats.answers_dropped``):
first a refusal to an untrusted sender, then any other refusal; a success ack or speech event
only when nothing but those is waiting."""
DRAIN_TIMEOUT_S: Final = 2.0
_RETRY_INTERVAL_S: Final = 0.02
_CONNECT_POLL_S: Final = 0.05
_CONNECTION_CHECK_S: Final = 1.0
SERVER_SENDER: Final = "<server>"
"""Rate-limit and dedup key for packets sent through the server API (no participant)."""

_T = TypeVar("_T")
_SpeakMethod = Literal["say", "generate_reply"]
_VERBATIM_INSTRUCTIONS: Final = "Say the following to the user, word for word, and nothing else:\n"
AckMessage = SuccessAck | ErrorAck
_Outbound = tuple[int, str, bytes]  # arrival number, destination identity, payload
_STR_JSON: Final = TypeAdapter(str)


class AckTransport:
    """Sends acks and speech events to one participant. The default publishes on the room.

    Subclass it to route answers elsewhere, e.g. to print them in a demo or to capture them in a
    test, without touching the plugin's internals.
    """

    def __init__(self, room: rtc.Room) -> None:
        self._room = room

    async def send(self, payload: bytes, destination_identity: str) -> None:
        await self._room.local_participant.publish_data(
            payload, reliable=True, destination_identities=[destination_identity], topic=ACK_TOPIC
        )


@dataclass
class PluginStats:
    """Counters a health check or a benchmark can read (``ContextPlugin.stats``)."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    acks_sent: int = 0
    ack_failures: int = 0
    answers_dropped: int = 0
    """Answers not sent because the outbound queue was full (``MAX_OUTBOUND_ANSWERS``)."""
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False)
class _Job:
    request: Request
    sender: str | None  # participant identity; None for the server API
    reply: asyncio.Future[AckMessage] | None = None  # set for RPC: the ack is the response
    # a signed envelope seen before: applied never, answered as a duplicate only if its request
    # was already applied (a relay retrying), else refused as a replay
    replayed: bool = False
    answered: bool = False
    # (sender, id): a repeat within the dedup window is answered, not applied again. Set once:
    # it is read at batching, at the dedup check and when the ack is remembered.
    dedup_key: tuple[str, str] | None = field(init=False)
    # what makes a repeat "the same request": every field of the request (not the envelope).
    # The frozen model's hash of its field values is cheap and, within this process, as good
    # as a digest; a mismatch under the same id is refused with ID_REUSED.
    fingerprint: int = field(init=False)

    def __post_init__(self) -> None:
        rid = self.request.id
        # get_state changes nothing: a repeat is answered with the state as it is now
        if rid is None or isinstance(self.request, GetStateRequest):
            self.dedup_key = None
            self.fingerprint = 0
        else:
            self.dedup_key = (self.sender if self.sender is not None else SERVER_SENDER, rid)
            self.fingerprint = hash(self.request)


@dataclass(eq=False)
class _Housekeeping:
    kind: Literal["handoff", "expire", "turn_end"]
    at: float = 0.0


@dataclass(eq=False)
class _SpeechTrack:
    request_id: str | None
    sender: str | None
    handle: SpeechHandle
    started: bool = False
    played_s: float | None = None
    tts_failed: bool = False


class _NotReady(Exception):
    pass


def _is_context_change(job: _Job) -> bool:
    return isinstance(job.request, AddContextRequest | RemoveContextRequest)


def _fitting(items: list[_T], room: int, encode: Callable[[_T], bytes]) -> tuple[list[_T], int]:
    """The longest prefix of ``items`` whose JSON fits in ``room`` bytes, and the bytes it uses."""
    used = 0
    for count, item in enumerate(items):
        size = len(encode(item)) + 1  # and the comma separating it from the next
        if used + size > room:
            return items[:count], used
        used += size
    return items, used


class ContextPlugin:
    """Receives speak / add_context messages for a running ``AgentSession`` and answers each.

    Attach it with one line in the entrypoint::

        plugin = ContextPlugin(agent_code="A12345678", allowed_identities=["backend"])
        await plugin.start(session, ctx.room)

    Args:
        agent_code: Reported in every ack and published as the participant attribute
            ``imaginex.agent_code``; requests naming another code are refused. Defaults to the
            ``IMAGINEX_AGENT_CODE`` environment variable.
        allowed_identities: Participant identities trusted to send messages. Default: none.
        trust_server: Trust packets sent with the server API (``RoomService.SendData``), which
            arrive without a participant. Default True. Such a packet must be signed with the
            LiveKit API secret (``send_via_server_api`` does it): LiveKit also delivers hidden
            participants' packets, and newcomers' first packets, without a participant, so an
            unsigned one could come from anyone in the room. They cannot be answered.
        server_secret: The LiveKit API secret that server packets are signed with. Default:
            the ``LIVEKIT_API_SECRET`` environment variable (the worker has it to register).
        secret: Shared secret for signed messages; a validly signed message is trusted whoever
            relays it (see ``security.sign_request``). Default: signed messages are refused.
        require_signature: Refuse every message that is not validly signed. Default False.
        rate_limit: Per-sender token bucket (default 10/s, bursts of 50); ``None`` turns it off.
        context_budget: How much context the plugin may hold (default 64 entries, 32,000 chars).
        ready_timeout: Seconds a message waits for the session to start or finish an agent
            handoff before it is refused with ``NOT_READY``. Default 10.
        max_queue: Most messages waiting at once (default 1,024); beyond it ``RATE_LIMITED``.
        dedup_window: Seconds during which a repeated id from the same sender is applied once.
        dedup_max_entries: Most ids (and, with a secret, signatures) remembered at once. Each
            is remembered for its whole window; when the table is full, new messages are
            refused with ``RATE_LIMITED`` until the oldest expire. Default: sized from the rate
            limit (``security.remembered_ids_capacity``).
        ack_transport: Where acks go. Default: ``publish_data`` on the room, to the sender.
    """

    def __init__(
        self,
        *,
        agent_code: str | None = None,
        allowed_identities: Iterable[str] = (),
        trust_server: bool = True,
        server_secret: str | bytes | None = None,
        secret: str | bytes | None = None,
        require_signature: bool = False,
        rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
        context_budget: ContextBudget = DEFAULT_CONTEXT_BUDGET,
        ready_timeout: float = DEFAULT_READY_TIMEOUT_S,
        max_queue: int = DEFAULT_MAX_QUEUE,
        dedup_window: float = DEDUP_WINDOW_S,
        dedup_max_entries: int | None = None,
        ack_transport: AckTransport | None = None,
    ) -> None:
        if require_signature and not secret:
            raise ValueError("require_signature=True needs a secret")
        if dedup_max_entries is not None and dedup_max_entries < 1:
            raise ValueError("dedup_max_entries must be at least 1")
        self._agent_code = agent_code if agent_code is not None else os.getenv(AGENT_CODE_ENV)
        self._policy = SenderPolicy.build(allowed_identities)
        server_key = (server_secret or os.getenv(SERVER_SECRET_ENV)) if trust_server else None
        keys = [key for key in (secret, server_key) if key]
        self._verifier = (
            SignatureVerifier(
                keys[0],
                also=keys[1:],
                max_remembered=dedup_max_entries
                or remembered_ids_capacity(rate_limit, 2 * SIGNATURE_WINDOW_S),
            )
            if keys
            else None
        )
        if trust_server and not server_key:
            logger.warning(
                "trust_server is on but no LiveKit API secret is known: server-API packets "
                "will be refused (set LIVEKIT_API_SECRET or pass server_secret)"
            )
        self._require_signature = require_signature
        self._rate_limiter = RateLimiter(rate_limit) if rate_limit is not None else None
        self._store = ContextStore(context_budget)
        self._ready_timeout = ready_timeout
        self._max_queue = max_queue
        # (request fingerprint, first ack as JSON bytes): thousands of small pydantic models
        # would cost about 4x the memory and six GC-tracked objects each, which full
        # collections must walk. Never evicted before expiry: admission refuses instead.
        self._dedup: ExpiringCache[tuple[int, bytes]] = ExpiringCache(
            ttl_s=dedup_window,
            max_entries=dedup_max_entries or remembered_ids_capacity(rate_limit, dedup_window),
        )
        self._ack_transport = ack_transport

        self._session: AgentSession[Any] | None = None
        self._room: rtc.Room | None = None
        self._started = False
        self._closed = False
        self._session_closed = False

        self._work: deque[_Job | _Housekeeping] = deque()
        self._pending_jobs = 0
        self._work_ready = asyncio.Event()
        # answers waiting for the publisher, one queue per drop priority (see _send); each
        # item carries an arrival number so they are published in arrival order
        self._outbound: tuple[deque[_Outbound], deque[_Outbound], deque[_Outbound]] = (
            deque(),
            deque(),
            deque(),
        )
        self._outbound_count = 0
        self._outbound_serial = 0
        self._outbound_ready = asyncio.Event()
        self._outbound_drained = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rpc_registered = False
        self._room_left = asyncio.Event()
        self._expiry_timer: asyncio.TimerHandle | None = None

        self._speeches: dict[str, _SpeechTrack] = {}
        self._watched_audio: AudioOutput | None = None
        self.stats = PluginStats()

    # ------------------------------------------------------------------------------------------
    # lifecycle

    @property
    def agent_code(self) -> str | None:
        return self._agent_code

    @property
    def context_store(self) -> ContextStore:
        """The context entries the plugin holds (read-only use)."""
        return self._store

    async def start(self, session: AgentSession[Any], room: rtc.Room) -> None:
        """Attach to the session and the room. Works before or after the room connects.

        Raises:
            RuntimeError: If the plugin was already started or closed.
        """
        if self._closed:
            raise RuntimeError("ContextPlugin is closed")
        if self._started:
            raise RuntimeError("ContextPlugin is already started")
        self._started = True
        self._session = session
        self._room = room
        if self._ack_transport is None:
            self._ack_transport = AckTransport(room)

        room.on("data_received", self._on_data_received)
        room.on("disconnected", self._on_room_disconnected)
        session.on("conversation_item_added", self._on_conversation_item_added)
        session.on("agent_state_changed", self._on_agent_state_changed)
        session.on("close", self._on_session_close)
        session.on("error", self._on_session_error)
        self._watch_audio_output()

        self._tasks.append(asyncio.create_task(self._consume(), name="imaginex_context.consume"))
        self._tasks.append(asyncio.create_task(self._publish(), name="imaginex_context.publish"))
        self._tasks.append(
            asyncio.create_task(self._keep_registered(), name="imaginex_context.connect")
        )

        job_ctx = get_job_context(required=False)
        if job_ctx is not None:
            job_ctx.add_shutdown_callback(self.aclose)
        logger.info(
            "context plugin started",
            extra={"agent_code": self._agent_code, "room_connected": room.isconnected()},
        )

    async def __aenter__(self) -> ContextPlugin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop receiving, answer what is still queued, and unhook everything. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        assert self._session is not None
        assert self._room is not None

        self._room.off("data_received", self._on_data_received)
        self._room.off("disconnected", self._on_room_disconnected)
        self._session.off("conversation_item_added", self._on_conversation_item_added)
        self._session.off("agent_state_changed", self._on_agent_state_changed)
        self._session.off("close", self._on_session_close)
        self._session.off("error", self._on_session_error)
        self._unwatch_audio_output()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        if self._rpc_registered:
            self._rpc_registered = False
            with contextlib.suppress(Exception):  # the room may already be gone
                self._room.local_participant.unregister_rpc_method(RPC_METHOD)

        consume, publish, connect = self._tasks
        for task in (consume, connect):
            task.cancel()
        await asyncio.gather(consume, connect, return_exceptions=True)

        # every message still queued gets its answer
        while self._work:
            item = self._work.popleft()
            if isinstance(item, _Job):
                self._answer(
                    item,
                    error_ack(ErrorCode.NOT_READY, "The agent is shutting down.", item.request.id),
                )
        # every speech we reported ends with an event, even one still playing: its sender may
        # be waiting for playout, and nobody will tell it once the plugin is gone
        for track in list(self._speeches.values()):
            track.handle.remove_done_callback(self._on_speech_done)
            self._finish_speech(track, shutdown=not track.handle.done())
        self._speeches.clear()

        # let the publisher flush the answers, then stop it
        if self._outbound_count and not publish.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbound_drained.wait(), DRAIN_TIMEOUT_S)
        publish.cancel()
        await asyncio.gather(publish, return_exceptions=True)
        self._tasks.clear()
        logger.info("context plugin closed", extra={"agent_code": self._agent_code})

    async def _keep_registered(self) -> None:
        """Register the RPC method and publish the agent code each time the room connects.

        rtc.Room.connect() emits no "connected" event and a later connection_state_changed is
        not guaranteed, so this polls for it. A Room can be connected again after it was
        disconnected: the new local participant has neither the method nor the attribute, so
        both are set again. (LiveKit's own reconnects keep them: nothing to do there.)
        """
        room = self._room
        assert room is not None
        while True:
            while not room.isconnected():  # noqa: ASYNC110 - there is no event to wait on
                await asyncio.sleep(_CONNECT_POLL_S)
            self._room_left.clear()
            participant = room.local_participant
            participant.register_rpc_method(RPC_METHOD, self._on_rpc)
            self._rpc_registered = True
            if self._agent_code:
                try:
                    await participant.set_attributes({AGENT_CODE_ATTRIBUTE: self._agent_code})
                except Exception:
                    logger.warning("could not publish the agent code attribute", exc_info=True)
            # the "disconnected" event ends this connection; the poll is a fallback in case
            # the event is missed (it races a quick reconnect). asyncio.wait, not wait_for:
            # on Python 3.11 wait_for swallows a cancellation that arrives as the event is set,
            # which is just what a job's shutdown does (it disconnects and closes us at once),
            # and this task then polled for a connection forever.
            left = asyncio.ensure_future(self._room_left.wait())
            try:
                while not left.done() and self._still_on(participant):
                    await asyncio.wait({left}, timeout=_CONNECTION_CHECK_S)
            finally:
                left.cancel()
            self._rpc_registered = False

    def _still_on(self, participant: rtc.LocalParticipant) -> bool:
        room = self._room
        return room is not None and room.isconnected() and room.local_participant is participant

    def _on_room_disconnected(self, _reason: object) -> None:
        self._room_left.set()

    # ------------------------------------------------------------------------------------------
    # 1. bytes arrive

    def _on_data_received(self, packet: rtc.DataPacket) -> None:
        if packet.topic != CONTEXT_TOPIC or self._closed:
            return
        self._receive(packet.data, packet.participant.identity if packet.participant else None)

    def _receive(self, raw: bytes, sender: str | None) -> None:
        try:
            admitted = self._admit(raw, sender)
        except Exception:  # a room callback must never raise
            logger.exception("unexpected error admitting a context packet")
            admitted = error_ack(ErrorCode.INTERNAL_ERROR, "The message could not be read.", None)
        if isinstance(admitted, _Job):
            self._enqueue(admitted)
            return
        try:
            self._send(sender, admitted)
        except Exception:  # e.g. an answer that cannot be encoded: still never raise
            logger.exception("unexpected error answering a context packet")

    async def _on_rpc(self, data: rtc.RpcInvocationData) -> str:
        if self._closed:
            return error_ack(
                ErrorCode.NOT_READY, "The agent is shutting down.", None
            ).model_dump_json()
        try:
            admitted = self._admit(data.payload.encode("utf-8"), data.caller_identity)
        except Exception:
            logger.exception("unexpected error admitting a context RPC")
            admitted = error_ack(ErrorCode.INTERNAL_ERROR, "The message could not be read.", None)
        if isinstance(admitted, ErrorAck):
            self._record_refusal(admitted, data.caller_identity)
            return admitted.model_dump_json()
        admitted.reply = asyncio.get_running_loop().create_future()
        self._enqueue(admitted)
        # shield: if the caller gives up, the consumer still applies and records the message
        ack = await asyncio.shield(admitted.reply)
        return ack.model_dump_json()

    def ingest(self, payload: bytes | str, *, sender_identity: str | None) -> None:
        """Feed one message as if it arrived on the context topic from ``sender_identity``.

        It takes exactly the path room bytes take; ``None`` means "sent through the server API".
        Useful for bridges from other transports, demos and tests.
        """
        if not self._started or self._closed:
            raise RuntimeError("ContextPlugin is not running")
        self._receive(
            payload.encode("utf-8") if isinstance(payload, str) else payload, sender_identity
        )

    # ------------------------------------------------------------------------------------------
    # 2. admitted or refused

    def _admit(self, raw: bytes, sender: str | None) -> _Job | ErrorAck:
        self.stats.received += 1
        if len(raw) > MAX_PAYLOAD_BYTES:
            return error_ack(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"Message is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes (15 KiB).",
                None,
            )
        try:
            request, replayed = self._authorise(protocol.read_packet(raw), sender)
        except ProtocolError as refusal:
            # every sender is rate limited, refused or not: each answer costs a packet
            return self._rate_limit(sender, refusal.request_id) or error_ack(
                refusal.code, refusal.message, refusal.request_id, retry_after=refusal.retry_after
            )
        limited = self._rate_limit(sender, request.id)
        if limited is not None:
            return limited
        return self._admit_request(request, sender, replayed)

    def _rate_limit(self, sender: str | None, request_id: str | None) -> ErrorAck | None:
        if self._rate_limiter is None:
            return None
        wait = self._rate_limiter.acquire(sender if sender is not None else SERVER_SENDER)
        if not wait:
            return None
        return error_ack(
            ErrorCode.RATE_LIMITED,
            "Too many messages from this sender; retry after the given seconds.",
            request_id,
            retry_after=round(wait, 3),
        )

    def _admit_request(
        self, request: Request, sender: str | None, replayed: bool
    ) -> _Job | ErrorAck:
        """The checks every valid, authorised request passes before it is queued."""
        if request.agent_code is not None and request.agent_code != self._agent_code:
            return error_ack(
                ErrorCode.AGENT_NOT_FOUND,
                f"Agent with code '{echo(request.agent_code)}' not found",
                request.id,
            )
        if request.room_id is not None and request.room_id != self._room_name():
            return error_ack(
                ErrorCode.NO_ACTIVE_ROOMS,
                f"No active sessions found for agent in room '{echo(request.room_id)}'",
                request.id,
            )
        if self._pending_jobs >= self._max_queue:
            return error_ack(
                ErrorCode.RATE_LIMITED,
                "The agent's message queue is full; retry shortly.",
                request.id,
                retry_after=1.0,
            )
        job = _Job(request=request, sender=sender, replayed=replayed)
        # each queued job may add one id: refuse rather than forget an id inside its window
        # (a repeat of a remembered id adds none: it is answered as the duplicate it is)
        if (
            job.dedup_key is not None
            and self._dedup.free() <= self._pending_jobs
            and job.dedup_key not in self._dedup
        ):
            return error_ack(
                ErrorCode.RATE_LIMITED,
                "The agent remembers too many message ids at once; retry after the given seconds.",
                request.id,
                retry_after=round(max(self._dedup.seconds_until_room(), 1.0), 3),
            )
        return job

    def _authorise(
        self, packet: Request | SignedEnvelope, sender: str | None
    ) -> tuple[Request, bool]:
        """The request to apply and whether it is a replayed envelope, or a ``ProtocolError``.

        A replayed envelope is let through only when its request has an id: it is then answered
        from the dedup window (a relay's retry) or refused as a replay, never applied.
        """
        if isinstance(packet, SignedEnvelope):
            inner = protocol.decode_object(packet.body)
            request_id = protocol.request_id_of(inner)
            if self._verifier is None:
                raise ProtocolError(
                    ErrorCode.UNAUTHORIZED,
                    "This agent does not accept signed messages: it has no secret configured.",
                    request_id=request_id,
                )
            problem = self._verifier.verify(packet.body, packet.timestamp, packet.signature)
            if problem is SignatureProblem.FULL:
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    problem.value,
                    request_id=request_id,
                    retry_after=round(max(self._verifier.seconds_until_room(), 1.0), 3),
                )
            replayed = problem is SignatureProblem.REPLAYED
            if problem is not None and not (replayed and request_id is not None):
                raise ProtocolError(ErrorCode.UNAUTHORIZED, problem.value, request_id=request_id)
            # a valid signature is trusted whoever relayed the message
            request = protocol.validate_request(inner)
            if replayed and isinstance(request, GetStateRequest):
                raise ProtocolError(
                    ErrorCode.UNAUTHORIZED, SignatureProblem.REPLAYED.value, request_id=request_id
                )
            return request, replayed
        if self._require_signature:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED,
                "This agent only accepts signed messages, and this one is not signed.",
                request_id=packet.id,
            )
        if sender is None:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED,
                "A packet without a sender participant must be signed (server-API packets: "
                "with the LiveKit API secret).",
                request_id=packet.id,
            )
        if not self._policy.trusts(sender):
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED,
                "This sender is not allowed to send messages to this agent.",
                request_id=packet.id,
            )
        return packet, False

    def _room_name(self) -> str:
        assert self._room is not None
        return self._room.name

    def _enqueue(self, item: _Job | _Housekeeping) -> None:
        if isinstance(item, _Job):
            self._pending_jobs += 1
        self._work.append(item)
        self._work_ready.set()

    # ------------------------------------------------------------------------------------------
    # 3. one consumer applies everything in arrival order

    async def _consume(self) -> None:
        while True:
            if not self._work:
                self._work_ready.clear()
                await self._work_ready.wait()
                continue
            item = self._work.popleft()
            if isinstance(item, _Housekeeping):
                try:
                    await self._housekeep(item)
                except Exception:
                    logger.exception("unexpected error maintaining the context")
                continue
            batch = self._take_batch(item)
            try:
                if _is_context_change(item):
                    await self._apply_context_batch(batch)
                else:
                    await self._apply_one(item)
            except asyncio.CancelledError:
                # put back what was not answered: aclose() answers it
                self._work.extendleft(reversed([job for job in batch if not job.answered]))
                raise
            except Exception:
                logger.exception("unexpected error applying a context message")
                for job in batch:
                    if not job.answered:
                        self._answer(job, self._internal_error(job))

    def _take_batch(self, first: _Job) -> list[_Job]:
        """The first job plus, for context changes, the ones right behind it.

        A burst of context changes costs one chat context update, not one each. A repeated id
        ends the batch so that the repeat sees the first one's ack and is not applied twice.
        """
        batch = [first]
        if not _is_context_change(first):
            return batch
        keys = {first.dedup_key}
        while self._work:
            nxt = self._work[0]
            if not isinstance(nxt, _Job) or not _is_context_change(nxt):
                break
            key = nxt.dedup_key
            if key is not None and key in keys:
                break
            keys.add(key)
            batch.append(nxt)
            self._work.popleft()
        return batch

    def _duplicate_of(self, job: _Job) -> AckMessage | None:
        """The answer for a repeated id (nothing is applied), or None: apply the job."""
        key = job.dedup_key
        if key is None:
            return None
        first = self._dedup.get(key)
        if first is None:
            if job.replayed:
                # a replayed envelope whose request was never applied: a real replay
                return error_ack(
                    ErrorCode.UNAUTHORIZED, SignatureProblem.REPLAYED.value, job.request.id
                )
            return None
        fingerprint, first_ack = first
        if fingerprint != job.fingerprint:
            return error_ack(ErrorCode.ID_REUSED, ID_REUSED_MESSAGE, job.request.id)
        self.stats.duplicates += 1
        return SuccessAck.model_validate_json(first_ack).model_copy(update={"duplicate": True})

    async def _apply_one(self, job: _Job) -> None:
        duplicate = self._duplicate_of(job)
        if duplicate is not None:
            self._answer(job, duplicate)
            return
        request = job.request
        try:
            if isinstance(request, SpeakRequest):
                ack = await self._apply_speak(job, request)
            else:
                assert isinstance(request, GetStateRequest)
                ack = self._state_ack(request)
        except _NotReady as exc:
            ack = error_ack(ErrorCode.NOT_READY, str(exc), request.id)
        self._answer(job, ack)

    async def _apply_speak(self, job: _Job, request: SpeakRequest) -> AckMessage:
        session = self._require_session()
        mode = request.effective_mode
        if mode == "if_idle" and self._someone_is_speaking():
            return error_ack(
                ErrorCode.BUSY,
                "The agent or the user is speaking, or speech is queued; nothing was said "
                "(mode if_idle).",
                request.id,
            )
        if mode == "interrupt":
            self._interrupt_interruptible()

        text = request.text

        def schedule() -> tuple[SpeechHandle, _SpeakMethod, Literal["generate_reply"] | None]:
            if text is None:
                assert request.instructions is not None
                handle = session.generate_reply(
                    instructions=request.instructions,
                    allow_interruptions=request.allow_interruptions,
                )
                return handle, "generate_reply", None
            if self._can_say_verbatim():
                handle = session.say(text, allow_interruptions=request.allow_interruptions)
                return handle, "say", None
            # a realtime model without TTS cannot say() text: ask it to read the text as is
            handle = session.generate_reply(
                instructions=_VERBATIM_INSTRUCTIONS + text,
                allow_interruptions=request.allow_interruptions,
            )
            return handle, "generate_reply", "generate_reply"

        handle, method, fallback = await self._with_session_ready(schedule)
        self._track_speech(handle, job)
        logger.debug(
            "speech scheduled",
            extra={"request_id": request.id, "speech_id": handle.id, "speech_text": text},
        )
        return self._success(
            request,
            SPEAK_SUCCESS_MESSAGE,
            speech_id=handle.id,
            method=method,
            fallback=fallback,
        )

    def _someone_is_speaking(self) -> bool:
        session = self._require_session()
        return (
            session.agent_state in ("speaking", "thinking")
            or session.user_state == "speaking"
            or session.current_speech is not None
            # queued speech is not idle: ours (not playing yet, so not current_speech), and the
            # session's own queue, which LiveKit keeps private (read defensively)
            or any(not track.handle.done() for track in self._speeches.values())
            or bool(getattr(getattr(session, "_activity", None), "_speech_q", None))
        )

    def _interrupt_interruptible(self) -> None:
        session = self._require_session()
        try:
            # force=False: speech sent with allow_interruptions=false is never cut
            session.interrupt(force=False)
        except RuntimeError:
            logger.debug("current speech is not interruptible; the new speech queues behind it")

    def _can_say_verbatim(self) -> bool:
        # mirrors AgentActivity.say(): without a TTS, say() only works when there is no audio
        # output or the realtime model can say text itself
        session = self._require_session()
        agent = session.current_agent
        tts_model = agent.tts if is_given(agent.tts) else session.tts
        if tts_model is not None:
            return True
        model = agent.llm if is_given(agent.llm) else session.llm
        if isinstance(model, llm.RealtimeModel) and model.capabilities.supports_say:
            return True
        return not (session.output.audio is not None and session.output.audio_enabled)

    async def _with_session_ready(self, call: Callable[[], _T]) -> _T:
        """Run a session call, waiting through session start-up and agent handoffs.

        During a handoff LiveKit refuses new speech for a moment (RuntimeError); before start()
        it has no agent. Both pass, so the call is retried until ``ready_timeout``.
        """
        deadline = time.monotonic() + self._ready_timeout
        while True:
            if self._session_closed:
                raise _NotReady("The agent session has ended.")
            try:
                return call()
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise _NotReady(
                        "The agent session is not running (not started, or stuck in a handoff)."
                    ) from None
            await asyncio.sleep(_RETRY_INTERVAL_S)

    async def _apply_context_batch(self, batch: list[_Job]) -> None:
        """Apply a burst of add/remove_context to the store, then sync the agent once.

        The store changes provisionally and is committed only once the agent's chat context
        holds them: a batch refused (or failed) as a whole leaves no trace.
        """
        # (job, answer, whether the answer depends on the sync); None: answered after a reply
        answers: list[tuple[_Job, AckMessage | None, bool]] = []
        changed = False
        self._store.begin()
        try:
            for job in batch:
                settled = self._duplicate_of(job)
                if settled is not None:
                    answers.append((job, settled, False))
                    continue
                request = job.request
                if isinstance(request, RemoveContextRequest):
                    removed = self._store.remove_key(request.key)
                    changed |= removed
                    ack: AckMessage | None = self._success(
                        request, REMOVE_CONTEXT_SUCCESS_MESSAGE, key=request.key, removed=removed
                    )
                    answers.append((job, ack, True))
                    continue
                assert isinstance(request, AddContextRequest)
                try:
                    result = self._store.add(
                        request.text,
                        role=request.role,
                        key=request.key,
                        scope=request.scope,
                        ttl_s=request.ttl_s,
                        request_id=request.id,
                    )
                except ValueError as exc:
                    refusal = error_ack(ErrorCode.VALIDATION_ERROR, str(exc), request.id)
                    answers.append((job, refusal, False))
                    continue
                changed = True
                logger.debug(
                    "context added",
                    extra={
                        "request_id": request.id, "key": request.key, "context_text": request.text
                    },
                )
                ack = None
                if not request.trigger_reply:
                    ack = self._success(
                        request,
                        ADD_CONTEXT_SUCCESS_MESSAGE,
                        key=request.key,
                        evicted=result.evicted,
                    )
                answers.append((job, ack, True))
            if changed:
                await self._sync_context()
        except _NotReady as exc:
            # refused as a whole: nothing of the batch takes effect, now or at a later sync
            self._store.rollback()
            answers = [
                (job, error_ack(ErrorCode.NOT_READY, str(exc), job.request.id), False)
                if applied
                else (job, ack, False)
                for job, ack, applied in answers
            ]
        except BaseException:
            self._store.rollback()  # answered as an internal error (or, cancelled, at aclose)
            raise
        else:
            self._store.commit()
        for job, answer, _ in answers:
            if answer is None:
                assert isinstance(job.request, AddContextRequest)
                answer = await self._trigger_reply(job, job.request)
            self._answer(job, answer)

    async def _trigger_reply(self, job: _Job, request: AddContextRequest) -> AckMessage:
        session = self._require_session()
        try:
            handle = await self._with_session_ready(lambda: session.generate_reply())
        except _NotReady as exc:
            return error_ack(ErrorCode.NOT_READY, str(exc), request.id)
        self._track_speech(handle, job)
        return self._success(
            request,
            ADD_CONTEXT_SUCCESS_MESSAGE,
            key=request.key,
            speech_id=handle.id,
            method="generate_reply",
        )

    async def _sync_context(self) -> None:
        """Make the current agent's chat context hold exactly the live entries: one update."""
        session = self._require_session()
        agent = await self._with_session_ready(lambda: session.current_agent)
        merged = self._store.merge_into(agent.chat_ctx.items)
        try:
            await agent.update_chat_ctx(llm.ChatContext(merged))
        except llm.RealtimeError:
            # a realtime API that did not confirm the push in time: the agent's own context
            # already holds the update and the items were sent, so livekit itself treats the
            # push as best effort. Failing the ack would invite a retry that duplicates them.
            logger.warning("the realtime model did not confirm the chat context update")
        self._schedule_expiry()

    async def _housekeep(self, item: _Housekeeping) -> None:
        if item.kind == "handoff":
            # the new agent starts with only the context it was built with: re-apply ours
            if len(self._store):
                await self._sync_context()
            return
        if item.kind == "expire":
            self._expiry_timer = None
            removed = self._store.expire()
        else:
            removed = self._store.drop_next_turn(added_before=item.at)
        if removed:
            await self._sync_context()
        elif item.kind == "expire":
            self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        deadline = self._store.next_expiry()
        if deadline is None or self._closed:
            return
        delay = max(0.0, deadline - time.monotonic())
        self._expiry_timer = asyncio.get_running_loop().call_later(
            delay, self._enqueue, _Housekeeping("expire")
        )

    def _state_ack(self, request: GetStateRequest) -> SuccessAck:
        session = self._require_session()
        try:
            current_agent: str | None = session.current_agent.id
        except RuntimeError:
            current_agent = None
        state = AgentStateInfo(
            agent_state=session.agent_state,
            user_state=session.user_state,
            current_agent=current_agent,
            context_entries=self._store.describe(),
            context_chars=self._store.chars,
            pending_speeches=[s for s, t in self._speeches.items() if not t.handle.done()],
        )
        ack = self._success(request, GET_STATE_SUCCESS_MESSAGE, state=state)
        if len(protocol.encode_message(ack)) <= MAX_PAYLOAD_BYTES:
            return ack
        return self._truncated_state_ack(ack, state)

    def _truncated_state_ack(self, ack: SuccessAck, state: AgentStateInfo) -> SuccessAck:
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
        assert ack.data.state is not None
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

    def _require_session(self) -> AgentSession[Any]:
        assert self._session is not None
        return self._session

    # ------------------------------------------------------------------------------------------
    # 4. answers

    def _success(self, request: Request, message: str, **data: Any) -> SuccessAck:
        return SuccessAck(
            id=request.id,
            message=message,
            data=AckData(
                agent_code=self._agent_code,
                context_type=request.type,
                room_id=self._room_name(),
                timestamp=utc_timestamp(),
                **data,
            ),
        )

    def _internal_error(self, job: _Job) -> ErrorAck:
        return error_ack(
            ErrorCode.INTERNAL_ERROR,
            "The agent could not apply the message because of an internal error.",
            job.request.id,
        )

    def _answer(self, job: _Job, ack: AckMessage) -> None:
        if job.answered:
            return
        job.answered = True
        self._pending_jobs -= 1
        payload: bytes | None = None
        if isinstance(ack, SuccessAck) and not ack.duplicate:
            self.stats.applied += 1
            # a repeat of this id within the dedup window gets this first ack again
            payload = protocol.encode_message(ack)
            # admission kept a slot for it (it refuses when the table is full), so this never
            # forgets an id still inside its window
            if job.dedup_key is not None and not self._dedup.put_if_room(
                job.dedup_key, (job.fingerprint, payload)
            ):
                logger.warning("the dedup table is full; an applied id is not remembered")
        if job.reply is not None:
            if not job.reply.done():
                job.reply.set_result(ack)
            if isinstance(ack, ErrorAck):
                self._record_refusal(ack, job.sender)
            return
        self._send(job.sender, ack, payload)

    def _record_refusal(self, ack: ErrorAck, sender: str | None) -> None:
        code = ack.error.value
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        # refusals are counted in stats; only untrusted senders are worth an INFO line
        log = logger.info if ack.error is ErrorCode.UNAUTHORIZED else logger.debug
        log(
            "context message refused",
            extra={"error": code, "request_id": ack.id, "sender": sender},
        )

    def _send(
        self, destination: str | None, message: protocol.ServerMessage, payload: bytes | None = None
    ) -> None:
        """Queue ``message`` for ``destination``; ``payload``: its encoding, if already made.

        The queue is bounded (``MAX_OUTBOUND_ANSWERS``): when publishing falls behind a flood,
        refusals to untrusted senders go first, then other refusals; success acks and speech
        events are dropped only when nothing else is waiting.
        """
        if isinstance(message, ErrorAck):
            self._record_refusal(message, destination)
            rank = 1 if self._policy.trusts(destination) else 0
        else:
            rank = 2
        if destination is None:
            return  # sent through the server API: there is nobody to answer
        if self._outbound_count >= MAX_OUTBOUND_ANSWERS and not self._drop_outbound_below(rank):
            self.stats.answers_dropped += 1
            return
        if payload is None:
            payload = protocol.encode_message(message)
        self._outbound_serial += 1
        self._outbound[rank].append((self._outbound_serial, destination, payload))
        self._outbound_count += 1
        self._outbound_drained.clear()
        self._outbound_ready.set()

    def _drop_outbound_below(self, rank: int) -> bool:
        """Drop the oldest waiting answer ranked below ``rank``; False if there is none."""
        for queue in self._outbound[:rank]:
            if queue:
                queue.popleft()
                self._outbound_count -= 1
                self.stats.answers_dropped += 1
                return True
        return False

    def _next_outbound(self) -> _Outbound:
        """The earliest waiting answer, whatever its rank: answers go out in arrival order."""
        earliest: deque[_Outbound] | None = None
        for queue in self._outbound:
            if queue and (earliest is None or queue[0][0] < earliest[0][0]):
                earliest = queue
        assert earliest is not None
        self._outbound_count -= 1
        return earliest.popleft()

    async def _publish(self) -> None:
        transport = self._ack_transport
        assert transport is not None
        while True:
            if not self._outbound_count:
                self._outbound_drained.set()
                self._outbound_ready.clear()
                await self._outbound_ready.wait()
                continue
            _, destination, payload = self._next_outbound()
            try:
                await transport.send(payload, destination)
                self.stats.acks_sent += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.ack_failures += 1
                logger.warning(
                    "could not send an answer", exc_info=True, extra={"sender": destination}
                )

    # ------------------------------------------------------------------------------------------
    # speech playout events

    def _track_speech(self, handle: SpeechHandle, job: _Job) -> None:
        self._speeches[handle.id] = _SpeechTrack(job.request.id, job.sender, handle)
        self._watch_audio_output()
        handle.add_done_callback(self._on_speech_done)
        self._check_speech_started()

    def _check_speech_started(self) -> None:
        session = self._session
        if session is None or session.agent_state != "speaking":
            return
        current = session.current_speech
        track = self._speeches.get(current.id) if current is not None else None
        if track is None or track.started:
            return
        track.started = True
        self._send(
            track.sender,
            SpeechStartedEvent(
                id=track.request_id, speech_id=track.handle.id, timestamp=utc_timestamp()
            ),
        )

    def _on_speech_done(self, handle: SpeechHandle) -> None:
        track = self._speeches.pop(handle.id, None)
        if track is not None:
            self._finish_speech(track, shutdown=False)

    def _finish_speech(self, track: _SpeechTrack, *, shutdown: bool) -> None:
        """Send ``speech_finished``; ``shutdown``: the plugin stops before the speech ended."""
        handle = track.handle
        if shutdown:
            # the end was not observed: the sender must not take it for a full playout
            interrupted, failed = True, False
        else:
            # LLM failures are recorded on the handle; a TTS failure only as a session error
            interrupted = handle.interrupted
            failed = handle.exception() is not None or track.tts_failed
        self._send(
            track.sender,
            SpeechFinishedEvent(
                id=track.request_id,
                speech_id=handle.id,
                interrupted=interrupted,
                played_s=track.played_s,
                failed=True if failed else None,
                reason="shutdown" if shutdown else None,
                timestamp=utc_timestamp(),
            ),
        )

    def _watch_audio_output(self) -> None:
        # the session's audio output can be set or swapped after start() (RoomIO sets it when
        # the session starts), so the listener follows it
        assert self._session is not None
        audio = self._session.output.audio
        if audio is self._watched_audio:
            return
        self._unwatch_audio_output()
        if audio is not None:
            audio.on("playback_started", self._on_playback_started)
            audio.on("playback_finished", self._on_playback_finished)
        self._watched_audio = audio

    def _unwatch_audio_output(self) -> None:
        if self._watched_audio is not None:
            self._watched_audio.off("playback_started", self._on_playback_started)
            self._watched_audio.off("playback_finished", self._on_playback_finished)
            self._watched_audio = None

    def _on_playback_started(self, _: PlaybackStartedEvent) -> None:
        # back-to-back speeches keep the agent "speaking", so each segment start is checked too
        self._check_speech_started()

    def _on_playback_finished(self, ev: PlaybackFinishedEvent) -> None:
        session = self._session
        current = session.current_speech if session is not None else None
        track = self._speeches.get(current.id) if current is not None else None
        if track is not None:
            track.played_s = round(ev.playback_position, 3)

    # ------------------------------------------------------------------------------------------
    # session events

    def _on_agent_state_changed(self, ev: AgentStateChangedEvent) -> None:
        if ev.new_state == "speaking":
            self._check_speech_started()

    def _on_conversation_item_added(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if item.type == "agent_handoff":
            self._enqueue(_Housekeeping("handoff"))
        elif item.type == "message" and item.role == "assistant":
            self._enqueue(_Housekeeping("turn_end", at=item.created_at))

    def _on_session_error(self, ev: ErrorEvent) -> None:
        if isinstance(ev.error, tts.TTSError) and not ev.error.recoverable:
            session = self._session
            current = session.current_speech if session is not None else None
            track = self._speeches.get(current.id) if current is not None else None
            if track is not None:
                track.tts_failed = True

    def _on_session_close(self, _: CloseEvent) -> None:
        self._session_closed = True
