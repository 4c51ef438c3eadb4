"""Answers on their way out: every job's one answer, speech events, and the publisher task.

Answers go out one at a time, in arrival order. When nothing is waiting and nothing is being
sent, an answer's send is started at once, by whoever made the answer: the hand-off to the
publisher task (a loop iteration and a task switch) would cost more than most answers. If that
send has to wait (``publish_data`` waits for LiveKit to confirm), the publisher task finishes it
before anything later. Otherwise answers wait in a bounded queue (``MAX_OUTBOUND_ANSWERS``) and
the publisher sends them, so a slow ``publish_data`` never blocks the room callback or the
consumer. When publishing falls behind a flood, refusals to untrusted senders are dropped
first, then other refusals; success acks and speech events only when nothing else is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, Final

from livekit import rtc

from .. import protocol
from ..errors import ErrorCode
from ..log import logger
from ..protocol import ACK_TOPIC, ErrorAck
from ..security import SenderPolicy
from .dedup import DedupMemory
from .http_replies import HttpReplies
from .jobs import Answer, Job, Success
from .stats import PluginStats

MAX_OUTBOUND_ANSWERS: Final = 2_048
"""Most answers waiting to be published. Beyond it one is dropped (``stats.answers_dropped``):
first a refusal to an untrusted sender, then any other refusal; a success ack or speech event
only when nothing but those is waiting."""
DRAIN_TIMEOUT_S: Final = 2.0
"""How long closing waits for the answers still queued to be published."""

_Outbound = tuple[int, str, bytes]  # arrival number, destination identity, payload
_Send = Coroutine[Any, Any, None]
_UNTRUSTED_REFUSAL, _REFUSAL, _DELIVERY = 0, 1, 2  # drop ranks: lowest goes first


class AckTransport:
    """Sends acks and speech events to one participant. The default publishes on the room.

    Subclass it to route answers elsewhere, e.g. to print them in a demo or to capture them in a
    test, without touching the plugin's internals. ``send`` is called for one answer at a time,
    in order, in the plugin's publisher task.

    ``start_inline``: when nothing is waiting, start ``send`` at once in the plugin's own
    callback (the code up to its first suspension runs there; the publisher task finishes it),
    which saves a task hand-off per answer. True for this class's own ``send``, whose code is
    known; a subclass that overrides ``send`` opts in with ``start_inline = True`` only if that
    code needs no task of its own before its first ``await`` (no ``asyncio.timeout``, no
    ``TaskGroup``, no ``asyncio.current_task()``).
    """

    @property
    def start_inline(self) -> bool:
        return type(self).send is AckTransport.send

    def __init__(self, room: rtc.Room) -> None:
        self._room = room

    async def send(self, payload: bytes, destination_identity: str) -> None:
        await self._room.local_participant.publish_data(
            payload, reliable=True, destination_identities=[destination_identity], topic=ACK_TOPIC
        )


class Outbox:
    """Answers each job once, remembers first acks, and publishes answers in arrival order.

    Args:
        policy: Who is trusted: refusals to others are the first dropped under load.
        dedup: Where the first ack of every applied id is remembered.
        stats: Where answers, refusals and drops are counted.
        replies: Posts the answers of jobs that carry a ``reply_url`` (None: there are none).
    """

    def __init__(
        self,
        *,
        policy: SenderPolicy,
        dedup: DedupMemory,
        stats: PluginStats,
        replies: HttpReplies | None = None,
    ) -> None:
        self._policy = policy
        self._replies = replies
        self._dedup = dedup
        self._stats = stats
        # one queue per drop rank; each item carries an arrival number so that they are
        # published in arrival order whatever their rank
        self._queues: tuple[deque[_Outbound], deque[_Outbound], deque[_Outbound]] = (
            deque(),
            deque(),
            deque(),
        )
        self._count = 0
        self._serial = 0
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        # set while the publisher runs and its transport lets sends start inline
        self._inline: AckTransport | None = None
        self._sending = False  # a send is under way: later answers wait their turn
        # a send started inline that had to wait, with what it waits on: the publisher's next
        self._suspended: tuple[_Send, object, str] | None = None

    @property
    def waiting(self) -> int:
        """Answers queued and not yet handed to the transport."""
        return self._count

    def answer(self, job: Job, answer: Answer) -> bool:
        """Give ``job`` its one answer; False (and nothing sent) if it already had it."""
        if job.answered:
            return False
        job.answered = True
        if isinstance(answer, Success) and not answer.duplicate:
            self._stats.applied += 1
            # a repeat of this id within the dedup window gets this first ack again
            self._dedup.remember(job, answer)
        if job.reply is not None:  # RPC: the answer is the response, whatever else is named
            if not job.reply.done():
                job.reply.set_result(answer)
            if isinstance(answer, ErrorAck):
                self.record_refusal(answer, job.sender)
            return True
        if job.reply_url is not None:
            self.post_reply(job.reply_url, answer)
            return True
        self.send(job.sender, answer)
        return True

    def post_reply(self, url: str, message: protocol.ServerMessage | Success) -> None:
        """Post ``message`` to ``url`` (an allowed, signed ``reply_to``) instead of a
        participant; queued in its own task, never awaited here."""
        if isinstance(message, ErrorAck):
            self.record_refusal(message, None)
        if self._replies is None:  # admission lets no reply_url through without it
            return
        payload = message.payload if isinstance(message, Success) else protocol.encode_message(
            message
        )
        self._replies.post(url, payload)

    def record_refusal(self, ack: ErrorAck, sender: str | None) -> None:
        code = ack.error.value
        self._stats.errors[code] = self._stats.errors.get(code, 0) + 1
        # refusals are counted in stats; only untrusted senders are worth an INFO line
        log = logger.info if ack.error is ErrorCode.UNAUTHORIZED else logger.debug
        log(
            "context message refused",
            extra={"error": code, "request_id": ack.id, "sender": sender},
        )

    def send(self, destination: str | None, message: protocol.ServerMessage | Success) -> None:
        """Queue ``message`` for ``destination`` (None: sent through the server API, unanswered).

        The queue is bounded (``MAX_OUTBOUND_ANSWERS``): when publishing falls behind a flood,
        refusals to untrusted senders go first, then other refusals; success acks and speech
        events are dropped only when nothing else is waiting.
        """
        if isinstance(message, ErrorAck):
            self.record_refusal(message, destination)
            rank = _REFUSAL if self._policy.trusts(destination) else _UNTRUSTED_REFUSAL
        else:
            rank = _DELIVERY
        if destination is None:
            return  # there is nobody to answer
        if self._count >= MAX_OUTBOUND_ANSWERS and not self._drop_below(rank):
            self._stats.answers_dropped += 1
            return
        payload = message.payload if isinstance(message, Success) else protocol.encode_message(
            message
        )
        if self._inline is not None and not self._count and not self._sending:
            self._send_now(self._inline, payload, destination)
            return
        self._queue(rank, destination, payload)

    def send_payload(self, destination: str, payload: bytes) -> None:
        """Queue an event's JSON, written directly, for ``destination``: a delivery, like a
        success ack (``send`` without the answer to unwrap)."""
        if self._count >= MAX_OUTBOUND_ANSWERS and not self._drop_below(_DELIVERY):
            self._stats.answers_dropped += 1
            return
        if self._inline is not None and not self._count and not self._sending:
            self._send_now(self._inline, payload, destination)
            return
        self._queue(_DELIVERY, destination, payload)

    def _queue(self, rank: int, destination: str, payload: bytes) -> None:
        self._serial += 1
        self._queues[rank].append((self._serial, destination, payload))
        self._count += 1
        self._drained.clear()
        self._ready.set()

    def _drop_below(self, rank: int) -> bool:
        """Drop the oldest waiting answer ranked below ``rank``; False if there is none."""
        for queue in self._queues[:rank]:
            if queue:
                queue.popleft()
                self._count -= 1
                self._stats.answers_dropped += 1
                return True
        return False

    def _next(self) -> _Outbound:
        """The earliest waiting answer, whatever its rank: answers go out in arrival order."""
        earliest: deque[_Outbound] | None = None
        for queue in self._queues:
            if queue and (earliest is None or queue[0][0] < earliest[0][0]):
                earliest = queue
        assert earliest is not None
        self._count -= 1
        return earliest.popleft()

    def _send_now(self, transport: AckTransport, payload: bytes, destination: str) -> None:
        """Start sending ``payload`` here; if it has to wait, the publisher finishes it."""
        # marked first: an answer made while this one is on its way (a transport that calls
        # back into the plugin) must queue behind it, not start beside it
        self._sending = True
        try:
            send = transport.send(payload, destination)
            waits_on = send.send(None)
        except StopIteration:  # sent without waiting: the common case for a fast transport
            self._sending = False
            self._stats.acks_sent += 1
            return
        except (Exception, asyncio.CancelledError):  # even its own cancellation: never raise
            self._sending = False
            self._failed(destination)
            return
        # nothing later may start before it ends: the publisher resumes it first
        self._suspended = (send, waits_on, destination)
        self._drained.clear()
        self._ready.set()

    async def publish(self, transport: AckTransport) -> None:
        """The publisher task: send waiting answers one by one until cancelled."""
        self._inline = transport if transport.start_inline else None
        try:
            while True:
                suspended = self._suspended
                if suspended is not None:
                    self._suspended = None
                    send, waits_on, destination = suspended
                    await self._settle(_resume(send, waits_on), destination)
                    continue
                if not self._count:
                    self._drained.set()
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                _, destination, payload = self._next()
                self._sending = True
                await self._settle(transport.send(payload, destination), destination)
        finally:
            self._inline = None

    async def _settle(self, send: Awaitable[None], destination: str) -> None:
        """Await one send to its end and count it; only cancellation gets out."""
        try:
            await send
            self._stats.acks_sent += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failed(destination)
        finally:
            self._sending = False

    def _failed(self, destination: str) -> None:
        self._stats.ack_failures += 1
        logger.warning("could not send an answer", exc_info=True, extra={"sender": destination})

    async def drain(self, publisher: asyncio.Task[None]) -> None:
        """Let ``publisher`` flush what is waiting (up to ``DRAIN_TIMEOUT_S``)."""
        if (self._count or self._sending) and not publisher.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), DRAIN_TIMEOUT_S)


@types.coroutine
def _resume(send: _Send, waits_on: object) -> Generator[Any, Any, None]:
    """Drive ``send``, started by hand and suspended on ``waits_on``, to its end.

    What ``await send`` would have done from there: the awaiting task receives what ``send``
    yields (``waits_on`` first) and everything it gets back (values, exceptions such as a
    cancellation) goes to ``send``.
    """
    yielded = waits_on
    while True:
        try:
            value = yield yielded
        except BaseException as exc:
            try:
                yielded = send.throw(exc)
            except StopIteration:
                return
        else:
            try:
                yielded = send.send(value)
            except StopIteration:
                return
