"""Delivery without a room connection (``--delivery server-api``): ``RoomService.SendData`` out,
the ack back over HTTP.

:class:`ServerApiBackend` finds agents with a :class:`~.room_delivery.LiveKitBackend` it composes
(the directory or the scan, unchanged) but delivers with one Twirp call per room instead of
joining the room: the message, signed with the agents' secret, names where to answer
(``reply_to``, covered by the signature, see ``security.sign_request``), and the agent posts
its signed ack to the gateway's ``POST /v1/internal/replies`` (:class:`ReplyInbox`; the scheme
is in :mod:`....replies`). The inbox hands the ack to the delivery waiting for that
(room, request id); anything else is refused with 401, except that replicas with a
:class:`ReplyRelay` hand a verified reply nobody here waits for to the others.

What it costs: no WebRTC connection, no join, no memory per room; an agent must allow the
gateway's URL (``ContextPlugin(reply_urls=[...])``) and the gateway must be reachable from the
agents over HTTP. The events stream (``GET .../events``) still needs a room connection and uses
the composed backend's pool; nothing else joins a room.

A retry of the same request id (the same Idempotency-Key) is signed again (a fresh timestamp:
the agents refuse a replayed signature) and the agent answers it from its dedup memory, by the
signed ``sender``, without applying it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiohttp
from aiohttp import web
from livekit import api, rtc

from ..._livekit.send_data import DataSender
from ..._livekit.settings import LiveKitSettings
from ...errors import BackendError, ErrorCode, ProtocolError, StateUnavailable
from ...expiring import ExpiringCache
from ...log import logger
from ...protocol import (
    CONTEXT_TOPIC,
    MAX_PAYLOAD_BYTES,
    SignedEnvelope,
    decode_object,
    load_untrusted_json,
    oversize,
    read_packet,
)
from ...replies import REPLY_SIGNATURE_HEADER, REPLY_TIMESTAMP_HEADER, reply_signature_valid
from ...security import SIGNATURE_WINDOW_S, sign_request
from ..directory.webhook import LiveKitWebhook
from ..refusals import error_response, note_refusal, state_unavailable, unreadable_body
from ..state.gateway_state import ReplyMemory
from ..state.memory_state import MemoryReplies
from .agent_backend import REPLIES_PATH, AgentTarget
from .room_delivery import LiveKitBackend

MAX_REPLY_BYTES: Final = 32 * 1024
"""Largest reply body taken: an ack fits one 15 KiB packet, plus the room and the quoting."""
FIRST_RESEND_S: Final = 2.0
"""A message nobody answered within this many seconds is sent again, then after twice as
long, and so on until the delivery's deadline: SendData cannot tell whether it arrived."""
MAX_PENDING: Final = 100_000
"""Most deliveries waiting for a reply at once; beyond it a delivery fails at once."""
MAX_REMEMBERED_REPLIES: Final = 100_000
"""Most answered deliveries remembered (for :data:`ANSWERED_MEMORY_S`)."""
ANSWERED_MEMORY_S: Final = 60.0
"""How long an answered delivery still takes a second reply (to a resend) with 200."""

_NOT_SIGNED: Final = "Server-API delivery needs signed messages: the gateway has no signing secret."
_UNAVAILABLE: Final = "LiveKit could not be reached."
_ROOM_GONE: Final = "The agent's room no longer exists."
_AGENT_LEFT: Final = "The agent left the room before it answered."
_TOO_MANY: Final = "Too many deliveries are waiting for their answer; retry shortly."
_NOT_CHECKED: Final = "The reply could not be checked for a replay: the shared state is down."
_NOT_RELAYED: Final = "The reply could not be handed to the other replicas."


def _signed(payload: str) -> SignedEnvelope:
    """The gateway's signed envelope around a message; only signed ones can name a reply URL."""
    try:
        envelope = read_packet(payload.encode("utf-8"))
    except ProtocolError:
        envelope = None
    if not isinstance(envelope, SignedEnvelope):
        raise BackendError(ErrorCode.INTERNAL_ERROR, _NOT_SIGNED)
    return envelope


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes (one ``read`` may return a single chunk)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await request.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _unauthorized(message: str) -> web.Response:
    return web.json_response(
        {"success": False, "error": ErrorCode.UNAUTHORIZED.value, "message": message},
        status=401,
    )


class ReplyRelay(Protocol):
    """Hands agents' replies between gateway replicas: a reply posted to one replica (through
    a load balancer) answers the delivery another one is waiting on."""

    async def publish(self, room: str, request_id: str, ack: str) -> None:
        """Offer a verified reply to every replica.

        Raises:
            StateUnavailable: The relay cannot be reached.
        """
        ...

    async def start(self, answer: Callable[[str, str, str], None]) -> None:
        """Call ``answer(room, request_id, ack)`` for every reply any replica publishes."""
        ...

    async def aclose(self) -> None: ...


@dataclass(eq=False)
class _Waiter:
    key: tuple[str, str]
    answer: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ReplyInbox:
    """The agents' answers, matched to the deliveries waiting for them.

    Args:
        keys: The keys a reply may be signed with (the signing secret; the LiveKit API secret
            for agents without a shared secret).
        window_s: A reply's timestamp must be within this many seconds of the gateway's clock.
        clock: Unix seconds.
    """

    def __init__(
        self,
        keys: Sequence[str | bytes],
        *,
        window_s: float = SIGNATURE_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = tuple(k for k in keys if k)
        self._window_s = window_s
        self._clock = clock
        self._pending: dict[tuple[str, str], list[_Waiter]] = {}
        self._count = 0
        self.replies: ReplyMemory = MemoryReplies(window_s=2 * window_s, clock=clock)
        """The replies taken: one taken once is refused again (a replay could answer a later
        retry). ``create_app`` puts the state's here, shared by replicas on Redis."""
        # deliveries answered lately: a second answer (to a resend) is taken without a word
        self._answered: ExpiringCache[None] = ExpiringCache(
            ttl_s=ANSWERED_MEMORY_S, max_entries=MAX_REMEMBERED_REPLIES, clock=clock
        )
        self.relay: ReplyRelay | None = None
        """Where a reply nobody here waits for goes (replicas); None: refused."""
        self.accepted = 0
        self.refused = 0
        self.relayed = 0
        """Replies handed to the other replicas."""
        self.late = 0
        """Replies to a delivery already answered (a resend's duplicate), taken with 200."""

    @property
    def pending(self) -> int:
        """Deliveries waiting for their answer."""
        return self._count

    def expect(self, room: str, request_id: str) -> _Waiter:
        """Wait for the answer to ``request_id`` in ``room``; :meth:`forget` it afterwards.

        Raises:
            BackendError: ``RATE_LIMITED`` when ``MAX_PENDING`` deliveries already wait.
        """
        if self._count >= MAX_PENDING:
            raise BackendError(ErrorCode.RATE_LIMITED, _TOO_MANY, retryable=True)
        waiter = _Waiter((room, request_id))
        self._pending.setdefault(waiter.key, []).append(waiter)
        self._count += 1
        return waiter

    def forget(self, waiter: _Waiter) -> None:
        if waiter.answer.done():
            self._answered.put(waiter.key, None)
        waiters = self._pending.get(waiter.key)
        if waiters is None or waiter not in waiters:
            return
        waiters.remove(waiter)
        self._count -= 1
        if not waiters:
            del self._pending[waiter.key]

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /v1/internal/replies``: 200 when the reply answered a waiting delivery (or,
        with a ``relay``, was handed to the other replicas), else 401 (unsigned, forged,
        stale, replayed or not awaited), 413 when too large, 503 when the shared state or
        the relay is down."""
        if request.content_length is not None and request.content_length > MAX_REPLY_BYTES:
            return self._refuse("The reply is too large.", status=413)
        try:
            body = await _read_at_most(request, MAX_REPLY_BYTES + 1)
        except web.RequestPayloadError as exc:
            return self._refuse(unreadable_body(request, exc))
        if len(body) > MAX_REPLY_BYTES:
            return self._refuse("The reply is too large.", status=413)
        signature = request.headers.get(REPLY_SIGNATURE_HEADER, "")
        try:
            timestamp = int(request.headers.get(REPLY_TIMESTAMP_HEADER, ""))
        except ValueError:
            return self._refuse("The reply is not signed.")
        if not signature or not reply_signature_valid(body, timestamp, signature, self._keys):
            return self._refuse("The reply's signature does not match.")
        if abs(self._clock() - timestamp) > self._window_s:
            return self._refuse("The reply's timestamp is outside the allowed window.")
        try:
            # signed by the agent, but an agent is not trusted to be well-formed
            reply = load_untrusted_json(body)
            room, ack = reply["room"], reply["ack"]
            request_id = load_untrusted_json(ack)["id"]
        except (ValueError, KeyError, TypeError):
            return self._refuse("The reply could not be read.")
        if not (isinstance(room, str) and isinstance(ack, str) and isinstance(request_id, str)):
            return self._refuse("The reply could not be read.")
        key = (room, request_id)
        if not self._pending.get(key) and key not in self._answered and self.relay is None:
            return self._refuse("No delivery is waiting for this reply.")
        # taken once, across every replica sharing the state: before anything is answered
        try:
            first = await self.replies.remember(signature.lower())
        except StateUnavailable:
            return error_response(state_unavailable(_NOT_CHECKED))
        if not first:
            return self._refuse("This reply was already received (replay).")
        waiters = self._pending.get(key)
        if waiters:
            self._answer(waiters, ack)
            self.accepted += 1
            return web.json_response({"success": True})
        if key in self._answered:
            # the answer to a resend the agent had already received: nothing to do, and
            # nothing for the agent to worry about
            self.late += 1
            return web.json_response({"success": True})
        if self.relay is None:  # the delivery stopped waiting meanwhile
            return self._refuse("No delivery is waiting for this reply.")
        # behind a load balancer the delivery may wait on another replica: offered to all of
        # them; one that is not waiting for it ignores it
        try:
            await self.relay.publish(room, request_id, ack)
        except StateUnavailable:
            return error_response(state_unavailable(_NOT_RELAYED))
        self.relayed += 1
        return web.json_response({"success": True})

    def answer(self, room: str, request_id: str, ack: str) -> None:
        """A reply another replica took (already verified there): answers the delivery
        waiting here, if any."""
        waiters = self._pending.get((room, request_id))
        if waiters:
            self._answer(waiters, ack)
            self.accepted += 1

    @staticmethod
    def _answer(waiters: list[_Waiter], ack: str) -> None:
        for waiter in waiters:
            if not waiter.answer.done():
                waiter.answer.set_result(ack)

    def _refuse(self, message: str, *, status: int = 401) -> web.Response:
        self.refused += 1
        # the access line (INFO) carries the reason; this one is for a bare inbox
        logger.debug("agent reply refused", extra={"reason": message, "status": status})
        note_refusal(message)
        if status == 401:
            return _unauthorized(message)
        return web.json_response(
            {"success": False, "error": ErrorCode.PAYLOAD_TOO_LARGE.value, "message": message},
            status=status,
        )


class ServerApiBackend:
    """:class:`~.agent_backend.AgentBackend` delivering through ``RoomService.SendData``, answers by
    HTTP.

    Args:
        finder: Finds the agents (its directory or scan) and holds rooms for the events
            stream; its pool stays empty otherwise. Closed with this backend.
        settings: The LiveKit server and API key pair for ``SendData``.
        signing_secret: The agents' shared secret (``ContextPlugin(secret=...)``); every
            message and every reply is signed with it. Required.
        public_url: The gateway's URL as the agents reach it, e.g.
            ``http://gateway.internal:8089``; replies go to it plus ``/v1/internal/replies``,
            which the agents must allow (``ContextPlugin(reply_urls=[...])``).
        data_sender: What makes the ``SendData`` calls (left open). Default: one made from
            ``settings``, closed with the backend.
        resend_after: Seconds without an answer before a room gets the message again (then
            twice as long, and so on, until the delivery's deadline). Default
            ``FIRST_RESEND_S`` (2).
        reply_relay: For replicas behind one ``public_url`` (a load balancer): hands a reply
            that reached this replica to the one waiting for it
            (:class:`~..state.redis_state.RedisReplyRelay`). Started by :meth:`start`, closed
            with the backend. Default: none (each replica's ``public_url`` must reach that
            replica).

    Raises:
        ValueError: No signing secret, or ``public_url`` is not an http(s) URL.
    """

    def __init__(
        self,
        finder: LiveKitBackend,
        settings: LiveKitSettings,
        *,
        signing_secret: str | None,
        public_url: str,
        data_sender: DataSender | None = None,
        resend_after: float = FIRST_RESEND_S,
        reply_relay: ReplyRelay | None = None,
    ) -> None:
        if not signing_secret:
            raise ValueError(_NOT_SIGNED)
        if not public_url.startswith(("http://", "https://")):
            raise ValueError("public_url must be an http(s) URL the agents can reach")
        if not resend_after > 0:
            raise ValueError("resend_after must be a positive number of seconds")
        self._resend_after = resend_after
        self._finder = finder
        self._settings = settings
        self._secret = signing_secret
        self._reply_url = public_url.rstrip("/") + REPLIES_PATH
        self._data_sender = data_sender or DataSender(settings)
        self._owns_sender = data_sender is None
        self._inbox = ReplyInbox([signing_secret, settings.api_secret])
        self._inbox.relay = reply_relay
        self._closed = False
        self.resends = 0
        """Messages sent again because no answer came within ``resend_after`` (doubling)."""

    @property
    def reply_url(self) -> str:
        """The URL every message names for its answer."""
        return self._reply_url

    @property
    def reply_inbox(self) -> ReplyInbox:
        """The ``/v1/internal/replies`` handler."""
        return self._inbox

    @property
    def finder(self) -> LiveKitBackend:
        return self._finder

    @property
    def pooled_rooms(self) -> list[str]:
        """Rooms the gateway holds a connection to: only those with an events stream."""
        return self._finder.pooled_rooms

    @property
    def livekit_webhook(self) -> LiveKitWebhook | None:
        return self._finder.livekit_webhook

    async def find_agents(self, agent_code: str, *, room_id: str | None) -> list[AgentTarget]:
        return await self._finder.find_agents(agent_code, room_id=room_id)

    async def hold_room(self, room_name: str) -> tuple[rtc.Room, Callable[[], None]]:
        return await self._finder.hold_room(room_name)

    async def deliver(self, target: AgentTarget, payload: str, *, timeout: float) -> str:
        if self._closed:
            raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, "The gateway is shutting down.")
        deadline = time.monotonic() + timeout
        envelope = _signed(payload)
        request_id = decode_object(envelope.body).get("id")
        if not isinstance(request_id, str):  # the gateway's messages always carry an id
            raise BackendError(ErrorCode.INTERNAL_ERROR, "The message has no id.")
        signed = sign_request(
            envelope.body, self._secret, sender=envelope.sender, reply_to=self._reply_url
        )
        if oversize(signed) is not None:  # the reply URL did not count in the writer's check
            raise BackendError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"With the reply URL the message is over {MAX_PAYLOAD_BYTES} bytes.",
            )
        # expected before sending: the answer may arrive before SendData returns
        waiter = self._inbox.expect(target.room, request_id)
        try:
            await self._send(target, signed, deadline)
            pause = self._resend_after
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(
                        asyncio.shield(waiter.answer), min(pause, remaining)
                    )
                if pause >= remaining:
                    raise asyncio.TimeoutError
                # SendData reports no delivery: a packet that reached the agent before its
                # data channel was open (just after it joined) is lost without a word. Sent
                # again, signed afresh (the agent refuses a replayed signature); an agent that
                # did get the first applies it once and answers the repeat as a duplicate.
                await self._resend(target, envelope, deadline)
                pause *= 2
        except asyncio.TimeoutError:
            raise BackendError(
                ErrorCode.TIMEOUT, f"The agent did not answer within {timeout:g} s."
            ) from None
        finally:
            self._inbox.forget(waiter)

    async def _resend(self, target: AgentTarget, envelope: SignedEnvelope, deadline: float) -> None:
        """Send again, unless the agent has gone. The first copy went out, so the agent may
        have taken it: a room or an agent found gone now is ``AGENT_NOT_FOUND`` (as an RPC
        whose recipient left), and a resend that fails is let be (the answer to the first
        may still come)."""
        try:
            present = await self._finder.still_there(target)
        except BackendError:
            present = True  # LiveKit cannot say: the agent may well be there
        if not present:
            raise BackendError(ErrorCode.AGENT_NOT_FOUND, _AGENT_LEFT)
        signed = sign_request(
            envelope.body, self._secret, sender=envelope.sender, reply_to=self._reply_url
        )
        self.resends += 1
        try:
            await self._send(target, signed, deadline)
        except BackendError as exc:
            if exc.code in (ErrorCode.NO_ACTIVE_ROOMS, ErrorCode.AGENT_NOT_FOUND):
                raise BackendError(ErrorCode.AGENT_NOT_FOUND, _AGENT_LEFT) from None
            logger.info("a resend failed; still waiting", extra={"error": exc.code.value})

    async def _send(self, target: AgentTarget, signed: str, deadline: float) -> None:
        try:
            await self._data_sender.send(
                target.room,
                signed.encode("utf-8"),
                destination_identities=[target.identity],
                topic=CONTEXT_TOPIC,
                timeout=max(deadline - time.monotonic(), 0.001),
            )
        except api.TwirpError as exc:
            if exc.code == api.TwirpErrorCode.NOT_FOUND:
                raise BackendError(ErrorCode.NO_ACTIVE_ROOMS, _ROOM_GONE) from None
            if exc.code == api.TwirpErrorCode.UNAVAILABLE:
                # LiveKit v1.13 answers a room that has ended this way too (no node holds it,
                # after about 3 s): tell the two apart, so that the room's result says so
                self._raise_if_gone(await self._finder.still_there(target))
            logger.warning("SendData refused", extra={"status": exc.status, "code": exc.code})
            raise BackendError(
                ErrorCode.LIVEKIT_UNAVAILABLE, _UNAVAILABLE, retryable=exc.status >= 500
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            logger.warning("SendData failed", extra={"error": type(exc).__name__})
            raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, _UNAVAILABLE) from None

    @staticmethod
    def _raise_if_gone(present: bool | None) -> None:
        """Raise the room's result when its agent (False) or the room itself (None) is gone."""
        if present is None:
            raise BackendError(ErrorCode.NO_ACTIVE_ROOMS, _ROOM_GONE)
        if not present:
            # it may have taken the message before it left, as an RPC whose recipient
            # disconnected: the same answer as on the room path
            raise BackendError(ErrorCode.AGENT_NOT_FOUND, _AGENT_LEFT)

    async def start(self) -> None:
        """Start taking the other replicas' replies (with a ``reply_relay``)."""
        if self._inbox.relay is not None:
            await self._inbox.relay.start(self._inbox.answer)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._finder.aclose()
        finally:
            try:
                if self._inbox.relay is not None:
                    await self._inbox.relay.aclose()
            finally:
                if self._owns_sender:
                    await self._data_sender.aclose()
