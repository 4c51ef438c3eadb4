"""ContextPlugin: the receiver that lets a backend drive a running agent.

The hot path, top to bottom (this module is the guide; each step is one collaborator):

1. bytes arrive: ``_on_data_received`` (a data packet on ``CONTEXT_TOPIC``), ``_on_rpc`` (the
   RPC method, registered on every connection by ``ConnectionKeeper``) or ``ingest()``;
2. validated and authorised: ``Admission.admit`` checks the size, reads and validates the
   packet in one pydantic pass, authorises it (allow-list / server key / signature), applies the
   sender's rate limit and the target checks. A refusal is an error ack at once
   (``Outbox.send``) and never reaches the queue;
3. queued: one ordered ``WorkQueue``, drained by one consumer task (``_consume``), which takes
   a run of context changes as one batch. A ``get_state`` that finds the queue empty and the
   consumer idle is answered on arrival instead (``_dispatch``): nothing is ahead of it, so
   the order is the same, and it reads the session without changing it;
4. applied: ``SessionApplier`` answers a repeated id from the ``DedupMemory``, else applies the
   job (speak -> ``AgentSession.say``; add_context -> the context store -> one chat context
   update per batch, ``ContextSync``; get_state -> the state, cut to fit one packet);
5. acked: ``Outbox.answer`` remembers the first ack and hands it to the publisher task (or, for
   RPC, returns it as the response); for speech, ``SpeechTracker`` sends ``speech_started`` /
   ``speech_finished`` from the speech's own playout.

Room and session callbacks are synchronous: they only filter, enqueue (or answer a get_state
that nothing is ahead of), and never raise.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from livekit import rtc
from livekit.agents.job import get_job_context

from .._env import AGENT_CODE_ENV, LIVEKIT_API_SECRET_ENV
from ..context import DEFAULT_CONTEXT_BUDGET, ContextBudget, ContextStore
from ..errors import ErrorCode
from ..log import logger
from ..protocol import AUDIO_STREAM_TOPIC, CONTEXT_TOPIC, ErrorAck, GetStateRequest, error_ack
from ..security import (
    DEDUP_WINDOW_S,
    DEFAULT_RATE_LIMIT,
    Permissions,
    RateLimit,
    RateLimiter,
    SenderPolicy,
    remembered_ids_capacity,
)
from .admission import Admission, signature_verifier, warn_if_server_untrusted
from .answers import AckWriter, internal_error
from .call_end import CALL_ENDED_MESSAGE, EndListener
from .clip_player import Clips
from .dedup import DedupMemory
from .event_log import DEFAULT_EVENT_BUFFER, EventLog
from .jobs import Answer, Housekeeping, Job, Success
from .listeners import EventListeners, grouped
from .outbox import AckTransport, Outbox
from .parts import SessionParts
from .session_gate import DEFAULT_READY_TIMEOUT_S
from .stats import PluginStats
from .steering import DEFAULT_MAX_INSTRUCTIONS_CHARS
from .subscribers import Subscribers
from .work_queue import DEFAULT_MAX_QUEUE, WorkQueue

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession

_SHUTTING_DOWN: Final = "The agent is shutting down."
_UUID4: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_UNREADABLE: Final = "The message could not be read."


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
            unsigned one could come from anyone in the room. They cannot be answered: a sender
            that wants the answer calls ``RoomService.PerformRpc`` instead.
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
        permissions: Which message types each trusted sender may send: identity (``"*"``: any
            trusted sender; ``"<server>"``: server-API packets) -> types (``"*"``: all). A
            signed message counts as the identity that relayed it. With it, a sender may send
            the union of its entry and the ``"*"`` entry, nothing else. Default: every type but
            the sensitive ones (``security.SENSITIVE_TYPES``: ``subscribe``, ...), which are
            refused with ``UNAUTHORIZED``. ``unsubscribe`` is always allowed. Types are spelled
            as on the wire (``end_call``, not the CLI's ``end-call``); one that does not exist
            raises ``ValueError`` here rather than grant nothing.
        max_instructions_chars: Most characters the senders' ``update_instructions`` may add
            up to (the appended texts, or a replacement and what was appended to it; the
            agent's own instructions do not count). One that would go over is refused with
            ``VALIDATION_ERROR`` and changes nothing; ``reset_instructions`` or a ``replace``
            starts again. Default 32,000 (``DEFAULT_MAX_INSTRUCTIONS_CHARS``).
        event_buffer: How many of its latest events the agent keeps, so that a subscriber
            that was away resumes without a gap (``subscribe{since_seq}``); beyond them it gets
            ``events_lost`` and a fresh snapshot. Interim transcripts are not kept. Default
            1,024 (``DEFAULT_EVENT_BUFFER``); 0 keeps none.
    """

    _parts: SessionParts  # made by start(): they need the session and the room

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
        permissions: Mapping[str, Iterable[str]] | None = None,
        max_instructions_chars: int = DEFAULT_MAX_INSTRUCTIONS_CHARS,
        event_buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> None:
        if require_signature and not secret:
            raise ValueError("require_signature=True needs a secret")
        if dedup_max_entries is not None and dedup_max_entries < 1:
            raise ValueError("dedup_max_entries must be at least 1")
        if max_instructions_chars < 1:
            raise ValueError("max_instructions_chars must be at least 1")
        self._max_instructions_chars = max_instructions_chars
        self._agent_code = agent_code if agent_code is not None else os.getenv(AGENT_CODE_ENV)
        server_key = (server_secret or os.getenv(LIVEKIT_API_SECRET_ENV)) if trust_server else None
        warn_if_server_untrusted(trust_server, server_key)
        policy = SenderPolicy.build(allowed_identities)
        self.stats = PluginStats()
        self._store = ContextStore(context_budget)
        self._ready_timeout = ready_timeout
        self._ack_transport = ack_transport
        self._work = WorkQueue()
        self._dedup = DedupMemory(
            window_s=dedup_window,
            max_entries=dedup_max_entries or remembered_ids_capacity(rate_limit, dedup_window),
            stats=self.stats,
        )
        self._outbox = Outbox(policy=policy, dedup=self._dedup, stats=self.stats)
        self._writer = AckWriter(self._agent_code, self._room_name)
        self._events = EventLog(event_buffer)
        self._subscribers = Subscribers(
            writer=self._writer,
            stats=self.stats,
            log=self._events,
            send=self._outbox.send,
            send_payload=self._outbox.send_payload,
        )
        self._admission = Admission(
            agent_code=self._agent_code,
            room_name=self._room_name,
            policy=policy,
            permissions=Permissions.build(permissions),
            verifier=signature_verifier(
                secret=secret,
                server_key=server_key,
                rate_limit=rate_limit,
                max_remembered=dedup_max_entries,
            ),
            require_signature=require_signature,
            rate_limiter=RateLimiter(rate_limit) if rate_limit is not None else None,
            max_queue=max_queue,
            work=self._work,
            dedup=self._dedup,
            stats=self.stats,
        )
        self._clips = Clips(
            accepts=lambda identity: secret is not None or policy.trusts(identity),
            sample_rate=self._audio_sample_rate,
        )
        self._session: AgentSession[Any] | None = None
        self._room: rtc.Room | None = None
        self._started = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._end_listeners: list[EndListener] = []
        self._hooked: list[tuple[Any, str, EventListeners]] = []
        """Our room and session listeners, one per emitter and event: hooked at start, unhooked
        at close."""

    @property
    def agent_code(self) -> str | None:
        return self._agent_code

    @property
    def context_store(self) -> ContextStore:
        """The context entries the plugin holds (read-only use)."""
        return self._store

    @property
    def subscribers(self) -> list[str]:
        """The identities subscribed to the session's live events now."""
        return self._subscribers.identities

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest event the agent sent (0: none yet); a subscriber that
        resumes after it misses nothing (v1.3)."""
        return self._events.seq

    @property
    def idle(self) -> bool:
        """Whether nothing waits: no message queued to be applied, no answer to be sent."""
        return self._work.idle and not self._outbox.waiting

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def add_call_end_listener(self, listener: EndListener) -> None:
        """Call ``listener(reason)`` once when a sender's ``end_call`` (or a speech's
        ``end_call_after``) has closed the session; ``reason`` is the sender's, else
        ``"end_call"``. If it returns an awaitable, a job's shutdown (and the room's deletion)
        waits for it, up to a few seconds: time to save what the call produced. Works before
        or after :meth:`start`."""
        self._end_listeners.append(listener)
        if self._started:
            self._parts.call_end.add_listener(listener)

    # ------------------------------------------------------------------------------------------
    # lifecycle

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
        self._session, self._room = session, room
        self._parts = SessionParts.build(
            session=session,
            room=room,
            store=self._store,
            work=self._work,
            dedup=self._dedup,
            writer=self._writer,
            outbox=self._outbox,
            subscribers=self._subscribers,
            ready_timeout=self._ready_timeout,
            max_instructions_chars=self._max_instructions_chars,
            agent_code=self._agent_code,
            answer=self._answer,
            on_rpc=self._on_rpc,
            clips=self._clips,
        )

        for listener in self._end_listeners:
            self._parts.call_end.add_listener(listener)
        self._hooked = grouped(self._parts.hooks(session, room, self._on_data_received))
        for emitter, event, listeners in self._hooked:
            emitter.on(event, listeners)
        room.register_byte_stream_handler(AUDIO_STREAM_TOPIC, self._clips.on_byte_stream)
        self._parts.speeches.watch_audio_output()
        self._parts.context_use.follow()

        self._events.start_clock(started_ago_s=_session_age_s(session))
        transport = self._ack_transport or AckTransport(room)
        self._subscribers.start(transport, self._parts.snapshot)
        self._tasks = [
            asyncio.create_task(self._consume(), name="imaginex_context.consume"),
            asyncio.create_task(self._outbox.publish(transport), name="imaginex_context.publish"),
            asyncio.create_task(self._parts.keeper.run(), name="imaginex_context.connect"),
        ]
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
        for emitter, event, listeners in self._hooked:
            emitter.off(event, listeners)
        self._room.unregister_byte_stream_handler(AUDIO_STREAM_TOPIC)
        self._parts.speeches.unwatch_audio_output()
        self._parts.context_sync.close()
        self._parts.context_use.close()
        self._parts.keeper.unregister()
        await self._parts.call_end.aclose()

        consume, publish, connect = self._tasks
        for task in (consume, connect):
            task.cancel()
        await asyncio.gather(consume, connect, return_exceptions=True)
        # every message still queued gets its answer
        for job in self._work.drain_jobs():
            self._answer(job, error_ack(ErrorCode.NOT_READY, _SHUTTING_DOWN, job.request.id))
        # every speech we reported ends with an event, even one still playing: its sender may
        # be waiting for playout, and nobody will tell it once the plugin is gone
        self._parts.speeches.finish_all()
        # let the publisher flush the answers and every subscriber its last event (call_ended;
        # a stalled one is cut off after a while), then stop the publisher
        await asyncio.gather(self._outbox.drain(publish), self._subscribers.aclose())
        publish.cancel()
        await asyncio.gather(publish, return_exceptions=True)
        await self._clips.aclose()
        self._tasks.clear()
        logger.info("context plugin closed", extra={"agent_code": self._agent_code})

    # ------------------------------------------------------------------------------------------
    # 1. bytes arrive, 2. validated and authorised

    def _on_data_received(self, packet: rtc.DataPacket) -> None:
        if packet.topic != CONTEXT_TOPIC or self._closed:
            return
        self._receive(packet.data, packet.participant.identity if packet.participant else None)

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

    def _receive(self, raw: bytes, sender: str | None) -> None:
        try:
            admitted = self._admission.admit(raw, sender)
        except Exception:  # a room callback must never raise
            logger.exception("unexpected error admitting a context packet")
            admitted = error_ack(ErrorCode.INTERNAL_ERROR, _UNREADABLE, None)
        if isinstance(admitted, Job):
            self._dispatch(admitted)
            return
        try:
            self._outbox.send(sender, admitted)
        except Exception:  # e.g. an answer that cannot be encoded: still never raise
            logger.exception("unexpected error answering a context packet")

    async def _on_rpc(self, data: rtc.RpcInvocationData) -> str:
        if self._closed:
            return error_ack(ErrorCode.NOT_READY, _SHUTTING_DOWN, None).model_dump_json()
        try:
            admitted = self._admission.admit(data.payload.encode("utf-8"), data.caller_identity)
        except Exception:
            logger.exception("unexpected error admitting a context RPC")
            admitted = error_ack(ErrorCode.INTERNAL_ERROR, _UNREADABLE, None)
        if isinstance(admitted, ErrorAck):
            self._outbox.record_refusal(admitted, data.caller_identity)
            return admitted.model_dump_json()
        if _made_up_by_livekit(data.caller_identity, self._room):
            # a server-API RPC (RoomService.PerformRpc): LiveKit calls under a fresh UUID that
            # is nobody in the room, so, as for a server-API packet, there is nobody to send
            # speech events to; the answer is the RPC's return value all the same
            admitted.sender = None
        admitted.reply = asyncio.get_running_loop().create_future()
        self._dispatch(admitted)  # a get_state answered at once leaves the reply done
        # shield: if the caller gives up, the consumer still applies and records the message
        answer = await asyncio.shield(admitted.reply)
        if isinstance(answer, Success):
            return answer.payload.decode("utf-8")
        return answer.model_dump_json()

    # ------------------------------------------------------------------------------------------
    # 3. queued, 4. applied, 5. acked

    def _dispatch(self, job: Job) -> None:
        """Queue ``job``, or answer a ``get_state`` at once when nothing is ahead of it.

        The queue's hand-off to the consumer is a loop iteration and a task switch, more than a
        cached state answer costs; with nothing queued or being applied, answering here is
        answering in arrival order.
        """
        request = job.request
        if self._parts.call_end.ended:  # nothing is applied after the end, whatever is queued
            self._outbox.answer(job, error_ack(ErrorCode.NOT_READY, CALL_ENDED_MESSAGE, request.id))
            return
        if not isinstance(request, GetStateRequest) or not self._work.idle:
            self._work.put(job)
            return
        try:
            answer: Answer = self._parts.state.answer(request)
        except Exception:  # a room callback must never raise; the job still gets its answer
            logger.exception("unexpected error answering get_state")
            answer = internal_error(request.id)
        # never queued, so not counted among the pending jobs: no settled()
        self._outbox.answer(job, answer)

    async def _consume(self) -> None:
        """The one consumer: applies everything in arrival order."""
        work, applier = self._work, self._parts.applier
        while True:
            item = await work.next()
            if isinstance(item, Housekeeping):
                try:
                    await self._parts.context_sync.housekeep(item)
                    if item.kind == "handoff":  # the new agent gets the senders' instructions
                        await self._parts.steering.on_handoff()
                except Exception:
                    logger.exception("unexpected error maintaining the context")
                continue
            batch = work.take_batch(item)
            try:
                await applier.apply(batch)
            except asyncio.CancelledError:
                work.put_back(batch)  # what was not answered: aclose() answers it
                raise
            except Exception:
                logger.exception("unexpected error applying a context message")
                for job in batch:
                    if not job.answered:
                        self._answer(job, internal_error(job.request.id))

    def _answer(self, job: Job, answer: Answer) -> None:
        if self._outbox.answer(job, answer):
            self._work.settled()

    def _room_name(self) -> str:
        assert self._room is not None
        return self._room.name

    def _audio_sample_rate(self) -> int | None:
        audio = self._session.output.audio if self._session is not None else None
        return audio.sample_rate if audio is not None else None


def _session_age_s(session: AgentSession[Any]) -> float:
    """Seconds since the session started (0 if it has not, or cannot say): ``t_ms`` counts
    from its start. LiveKit keeps the start time private, so it is read defensively."""
    started_at = getattr(session, "_started_at", None)
    if not isinstance(started_at, int | float):
        return 0.0
    return max(0.0, time.time() - started_at)


def _made_up_by_livekit(caller: str, room: rtc.Room | None) -> bool:
    """Whether an RPC's caller is the identity LiveKit makes up for ``RoomService.PerformRpc``
    (a fresh UUID, nobody in the room; docs/livekit.md) rather than a participant."""
    return (
        room is not None
        and caller not in room.remote_participants
        and _UUID4.fullmatch(caller) is not None
    )
