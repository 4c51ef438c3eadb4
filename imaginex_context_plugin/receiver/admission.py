"""Admission: everything that can refuse a message does so here, before the queue.

In order: the size (before parsing), one pydantic pass that reads and validates the packet,
who may send it (the allow-list, a signature with the shared secret or the LiveKit API secret),
the sender's rate limit (refused senders too: each answer costs a packet; a signed message
naming a ``sender`` counts as that sender here, in the permissions and in the dedup key), the
targets (``agent_code``, ``room_id``), and room in the queue and in the dedup memory. The
outcome is a :class:`Job` to queue or an error ack to send at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .. import protocol
from ..errors import ErrorCode, ProtocolError
from ..log import logger
from ..protocol import (
    MAX_PAYLOAD_BYTES,
    ErrorAck,
    GetHistoryRequest,
    GetStateRequest,
    Request,
    SignedEnvelope,
    echo,
    error_ack,
)
from ..replies import REPLY_URL_NOT_ALLOWED, ReplyUrls
from ..security import (
    SIGNATURE_WINDOW_S,
    Permissions,
    RateLimit,
    RateLimiter,
    SenderPolicy,
    SignatureProblem,
    SignatureVerifier,
    remembered_ids_capacity,
)
from .dedup import DedupMemory
from .jobs import SERVER_SENDER, Job
from .stats import PluginStats
from .work_queue import WorkQueue

_RATE_LIMITED: Final = "Too many messages from this sender; retry after the given seconds."
_QUEUE_FULL: Final = "The agent's message queue is full; retry shortly."
_IDS_FULL: Final = (
    "The agent remembers too many message ids at once; retry after the given seconds."
)
_NO_SECRET: Final = "This agent does not accept signed messages: it has no secret configured."
_NOT_SIGNED: Final = "This agent only accepts signed messages, and this one is not signed."
_NO_PARTICIPANT: Final = (
    "A packet without a sender participant must be signed (server-API packets: "
    "with the LiveKit API secret)."
)
_NOT_ALLOWED: Final = "This sender is not allowed to send messages to this agent."
_REPLY_URL_REFUSED: Final = "This agent does not post answers to the reply_to URL given."


def signature_verifier(
    *,
    secret: str | bytes | None,
    server_key: str | bytes | None,
    rate_limit: RateLimit | None,
    max_remembered: int | None,
) -> SignatureVerifier | None:
    """The verifier for signed messages: the shared secret and the LiveKit API secret, if any."""
    keys = [key for key in (secret, server_key) if key]
    if not keys:
        return None
    return SignatureVerifier(
        keys[0],
        also=keys[1:],
        max_remembered=max_remembered
        or remembered_ids_capacity(rate_limit, 2 * SIGNATURE_WINDOW_S),
    )


class Admission:
    """Turns packet bytes into a job to queue, or the error ack that refuses them.

    Args:
        agent_code: This agent's code; a request naming another is refused.
        room_name: The room's current name; a request naming another room is refused.
        policy: Who is trusted without a signature.
        permissions: Which types each trusted sender may send.
        verifier: Checks signed envelopes (None: signed messages are refused).
        require_signature: Refuse every message that is not validly signed.
        rate_limiter: Per-sender token buckets (None: no limit).
        max_queue: Most jobs waiting at once.
        work: The work queue (how many jobs are still owed an answer).
        dedup: The dedup memory (whether one more id fits).
        stats: Where received messages are counted.
        reply_urls: Where a signed envelope's ``reply_to`` may point (None or empty: nowhere;
            such a message is refused and nothing is sent).
    """

    def __init__(
        self,
        *,
        agent_code: str | None,
        room_name: Callable[[], str],
        policy: SenderPolicy,
        permissions: Permissions,
        verifier: SignatureVerifier | None,
        require_signature: bool,
        rate_limiter: RateLimiter | None,
        max_queue: int,
        work: WorkQueue,
        dedup: DedupMemory,
        stats: PluginStats,
        reply_urls: ReplyUrls | None = None,
    ) -> None:
        self._reply_urls = reply_urls
        self._agent_code = agent_code
        self._room_name = room_name
        self._policy = policy
        self._permissions = permissions
        self._verifier = verifier
        self._require_signature = require_signature
        self._rate_limiter = rate_limiter
        self._max_queue = max_queue
        self._work = work
        self._dedup = dedup
        self._stats = stats

    def admit(self, raw: bytes, sender: str | None) -> Job | ErrorAck:
        """Admit ``raw`` from ``sender`` (None: the server API) or say why not."""
        return self.admit_replying(raw, sender)[0]

    def admit_replying(self, raw: bytes, sender: str | None) -> tuple[Job | ErrorAck, str | None]:
        """:meth:`admit`, and the URL its answer goes to: a validly signed, allowed
        ``reply_to`` (the job carries it too), else None (the answer goes to ``sender``)."""
        self._stats.received += 1
        if len(raw) > MAX_PAYLOAD_BYTES:
            return error_ack(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"Message is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes (15 KiB).",
                None,
            ), None
        try:
            request, replayed, vouched, reply_url = self._authorise(
                protocol.read_packet(raw), sender
            )
        except ProtocolError as refusal:
            # every sender is rate limited, refused or not: each answer costs a packet
            return self._rate_limited(sender, refusal.request_id) or error_ack(
                refusal.code, refusal.message, refusal.request_id, retry_after=refusal.retry_after
            ), None
        # a signed message naming its sender counts as that sender (the key holder vouches
        # for it): gateway replicas relay under distinct identities but are one sender
        counted = vouched if vouched is not None else sender
        admitted = self._rate_limited(counted, request.id) or self._queueable(
            request, sender, counted, replayed
        )
        if reply_url is not None and isinstance(admitted, Job):
            admitted.reply_url = reply_url
        return admitted, reply_url

    def _rate_limited(self, sender: str | None, request_id: str | None) -> ErrorAck | None:
        if self._rate_limiter is None:
            return None
        wait = self._rate_limiter.acquire(sender if sender is not None else SERVER_SENDER)
        if not wait:
            return None
        return error_ack(
            ErrorCode.RATE_LIMITED, _RATE_LIMITED, request_id, retry_after=round(wait, 3)
        )

    def _queueable(
        self, request: Request, sender: str | None, counted: str | None, replayed: bool
    ) -> Job | ErrorAck:
        """The checks every valid, authorised request passes before it is queued.

        ``sender`` relayed the message and gets its answers; ``counted`` is who it counts as
        (permissions, dedup): the envelope's ``sender`` if it names one, else ``sender``.
        """
        kind = request.type
        if not self._permissions.allows(counted if counted is not None else SERVER_SENDER, kind):
            return error_ack(ErrorCode.UNAUTHORIZED, Permissions.refusal(kind), request.id)
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
        pending = self._work.pending_jobs
        if pending >= self._max_queue:
            return error_ack(ErrorCode.RATE_LIMITED, _QUEUE_FULL, request.id, retry_after=1.0)
        # a retry relayed by another replica has the same owner and id: answered from the
        # dedup memory instead of applied again
        job = Job(request, sender, replayed=replayed, counted_as=counted)
        # refuse rather than forget an id inside its window
        if not self._dedup.has_room(job, pending):
            wait = round(max(self._dedup.seconds_until_room(), 1.0), 3)
            return error_ack(ErrorCode.RATE_LIMITED, _IDS_FULL, request.id, retry_after=wait)
        return job

    def _authorise(
        self, packet: Request | SignedEnvelope, sender: str | None
    ) -> tuple[Request, bool, str | None, str | None]:
        """The request to apply, whether it is a replayed envelope, the sender a signature
        vouches for (None: none named) and the allowed URL it names for the answers (None:
        none), or a ``ProtocolError``."""
        if isinstance(packet, SignedEnvelope):
            request, replayed = self._open_envelope(packet)
            if packet.reply_to is not None:
                self._check_reply_url(packet.reply_to, request.id)
            return request, replayed, packet.sender, packet.reply_to
        if self._require_signature:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, _NOT_SIGNED, request_id=packet.id)
        if sender is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, _NO_PARTICIPANT, request_id=packet.id)
        if not self._policy.trusts(sender):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, _NOT_ALLOWED, request_id=packet.id)
        return packet, False, None, None

    def _check_reply_url(self, url: str, request_id: str | None) -> None:
        """Refuse a signed ``reply_to`` the agent may not post to: the key holder could
        otherwise make the agent call any address its network reaches (SSRF)."""
        if self._reply_urls is not None and self._reply_urls.allows(url):
            return
        errors = self._stats.errors
        errors[REPLY_URL_NOT_ALLOWED] = errors.get(REPLY_URL_NOT_ALLOWED, 0) + 1
        logger.warning(
            "reply URL not allowed; nothing sent",
            extra={"error": REPLY_URL_NOT_ALLOWED, "request_id": request_id, "reply_to": url},
        )
        raise ProtocolError(ErrorCode.UNAUTHORIZED, _REPLY_URL_REFUSED, request_id=request_id)

    def _open_envelope(self, packet: SignedEnvelope) -> tuple[Request, bool]:
        """The signed request, trusted whoever relayed it, and whether it is a replay.

        A replayed envelope is let through only when its request has an id: it is then answered
        from the dedup window (a relay's retry) or refused as a replay, never applied.
        """
        inner = protocol.decode_object(packet.body)
        request_id = protocol.request_id_of(inner)
        if self._verifier is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, _NO_SECRET, request_id=request_id)
        problem = self._verifier.verify(
            packet.body,
            packet.timestamp,
            packet.signature,
            sender=packet.sender,
            reply_to=packet.reply_to,
        )
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
        request = protocol.validate_request(inner)
        if replayed and isinstance(request, GetStateRequest | GetHistoryRequest):
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, SignatureProblem.REPLAYED.value, request_id=request_id
            )
        return request, replayed


def warn_if_server_untrusted(trust_server: bool, server_key: str | bytes | None) -> None:
    """Say so at start-up when server-API packets are trusted but cannot be checked."""
    if trust_server and not server_key:
        logger.warning(
            "trust_server is on but no LiveKit API secret is known: server-API packets "
            "will be refused (set LIVEKIT_API_SECRET or pass server_secret)"
        )
