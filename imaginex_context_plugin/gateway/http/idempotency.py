"""The ``Idempotency-Key`` header: the request id sent to the agents, one request per key.

The first request to claim (agent code, key) delivers; a concurrent or later one with the same
key, on this gateway or another replica sharing its state, waits for that first answer and gets
it again (same status, same body, plus ``Idempotent-Replayed: true``) and nothing is delivered
again. The same key for another body or endpoint is refused with 422 ``ID_REUSED``; one still
being delivered after the waiter's own deadline gets 409 (the IETF Idempotency-Key draft).

A claim is a lease: a replica that dies mid-delivery blocks its key only until the lease ends;
then a retry takes over and delivers again, and the agents apply it once (they dedup by the
signed sender and the id). The answer is kept for the window only when every room's outcome is
final; when a room's outcome may change on a retry (a timeout, LiveKit unreachable, ...), only
the key's binding to its request is kept, so that a retry delivers again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from ...errors import ErrorCode, StateUnavailable
from ...log import logger
from ...protocol import MAX_ID_LENGTH
from ..refusals import REQUEST_IN_PROGRESS, Refusal, invalid, state_unavailable
from ..state.gateway_state import IDEMPOTENCY_WINDOW_S, IdempotencyStore, StoredAnswer

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "IDEMPOTENCY_WINDOW_S",
    "IDEMPOTENT_REPLAYED_HEADER",
    "ID_REUSED_MESSAGE",
    "IN_PROGRESS_MESSAGE",
    "MAX_KEPT_ANSWER_BYTES",
    "RETRY_MAY_CHANGE",
    "IdempotencyKeys",
    "Lease",
    "replayed",
    "to_store",
]

IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"
IDEMPOTENT_REPLAYED_HEADER: Final = "Idempotent-Replayed"
"""Set to ``true`` on an answer given again for a repeated Idempotency-Key."""
ID_REUSED_MESSAGE: Final = (
    "This Idempotency-Key was already used for a different request (another body or endpoint) "
    "in the last 10 minutes; send a new key. Nothing was sent."
)
IN_PROGRESS_MESSAGE: Final = (
    "A request with this Idempotency-Key is still being delivered; retry after Retry-After "
    "seconds to get its answer. Nothing was sent again."
)
RETRY_MAY_CHANGE: Final = frozenset(
    {
        ErrorCode.TIMEOUT,
        ErrorCode.LIVEKIT_UNAVAILABLE,
        ErrorCode.NOT_READY,
        ErrorCode.RATE_LIMITED,
        ErrorCode.BUSY,
        ErrorCode.INTERNAL_ERROR,
    }
)
"""Room outcomes a retry may change: an answer with one of them is not kept (the agents keep
no error ack either, so a retry is delivered and applied afresh)."""
MAX_KEPT_ANSWER_BYTES: Final = 16 * 1024
"""Largest answer kept for a key's repeats (about 130 rooms' entries). A larger one is not kept:
its repeats deliver again and each agent answers ``duplicate: true``. It bounds a lone
gateway's records to 10 000 x 16 KiB."""
_KEPT_HEADERS: Final = ("Retry-After",)
_FIRST_POLL_S: Final = 0.01
_MAX_POLL_S: Final = 0.2


def replayed(answer: StoredAnswer) -> web.Response:
    """The first answer again, marked as a replay."""
    headers = {**answer.headers, IDEMPOTENT_REPLAYED_HEADER: "true"}
    return web.Response(
        body=answer.body, status=answer.status, headers=headers, content_type="application/json"
    )


def to_store(response: web.Response) -> StoredAnswer | None:
    """What is kept of an answer: status, JSON body, and the headers a repeat must also get;
    None for an answer over :data:`MAX_KEPT_ANSWER_BYTES`."""
    body = response.body
    if not isinstance(body, bytes):
        raise TypeError("only answers with a bytes body are kept")
    if len(body) > MAX_KEPT_ANSWER_BYTES:
        return None
    headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
    return StoredAnswer(response.status, body, headers)


@dataclass
class Lease:
    """The right to deliver one claimed key; :meth:`finish` it exactly once."""

    store: IdempotencyStore
    key: str
    token: str

    async def finish(self, answer: StoredAnswer | None) -> None:
        """Keep ``answer`` for the key's repeats (None: keep only the binding) and end the lease.

        Never raises for the store: the delivery already happened, so the caller still gets its
        answer; a repeat then delivers again and the agents dedup it.
        """
        try:
            kept = await self.store.finish(self.key, token=self.token, answer=answer)
        except StateUnavailable:
            logger.warning("idempotency answer not stored: the shared state is unreachable")
            return
        if not kept:
            logger.info(
                "idempotency lease expired before the answer; another request took the key over",
                extra={"lease": self.token},
            )


class IdempotencyKeys:
    """Request ids from the ``Idempotency-Key`` header, each bound to the request it came with.

    Args:
        store: Where claims and answers live (memory, or Redis shared by replicas).
        lease_s: How long a claim is held before another request may take the key over; longer
            than one delivery can take.
        wait_s: How long a repeat waits for the first request's answer before 409.
    """

    def __init__(self, store: IdempotencyStore, *, lease_s: float, wait_s: float) -> None:
        if not 0 < lease_s < 86_400 or not 0 < wait_s < 86_400:
            raise ValueError("lease_s and wait_s must be positive numbers of seconds")
        self._store = store
        self._lease_ms = max(1, round(lease_s * 1000))
        self._wait_s = wait_s

    def request_id(self, request: web.Request) -> str:
        """The caller's key, or a fresh random id without one.

        Raises:
            Refusal: 400 for an empty or over-long key.
        """
        key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if key is None:
            return uuid.uuid4().hex
        key = key.strip()
        if not key or len(key) > MAX_ID_LENGTH:
            raise invalid(
                f"Header {IDEMPOTENCY_KEY_HEADER} must be 1 to {MAX_ID_LENGTH} characters."
            )
        return key

    async def claim(
        self,
        request: web.Request,
        agent_code: str,
        request_id: str,
        fingerprint: Callable[[], tuple[str | None, ...]],
    ) -> Lease | StoredAnswer | None:
        """Claim the request's key: a lease to deliver under, the first answer to give again,
        or None when the caller sent no key (a made-up id is never repeated).
        ``fingerprint`` gives what the key is bound to, asked only when there is a key.

        Raises:
            Refusal: 422 ``ID_REUSED``, 409 still in progress after ``wait_s``, 503 the shared
                state is unreachable (nothing is delivered without the check).
        """
        if IDEMPOTENCY_KEY_HEADER not in request.headers:
            return None
        key = _store_key(agent_code, request_id)
        digest = _digest(fingerprint())
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self._wait_s
        pause = _FIRST_POLL_S
        while True:
            try:
                claim = await self._store.claim(key, digest, token=token, lease_ms=self._lease_ms)
            except StateUnavailable:
                raise state_unavailable() from None
            if claim.outcome == "claimed":
                return Lease(self._store, key, token)
            if claim.outcome == "done" and claim.answer is not None:
                return claim.answer
            if claim.outcome == "mismatch":
                raise Refusal(422, ErrorCode.ID_REUSED.value, ID_REUSED_MESSAGE)
            left = deadline - time.monotonic()
            if left <= 0:
                raise Refusal(
                    409,
                    REQUEST_IN_PROGRESS,
                    IN_PROGRESS_MESSAGE,
                    headers={"Retry-After": str(max(1, -(-claim.retry_ms // 1000)))},
                )
            # polling, not a notification: the first request may be on another replica, and a
            # lease that ends without an answer (its replica died) must be noticed too
            await asyncio.sleep(min(pause, left, claim.retry_ms / 1000 or pause))
            pause = min(pause * 1.5, _MAX_POLL_S)


def _store_key(agent_code: str, request_id: str) -> str:
    """A fixed-length key: the agent code and the caller's key may be long or any Unicode."""
    raw = f"{agent_code}\0{request_id}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()


def _digest(fingerprint: tuple[str | None, ...]) -> bytes:
    canonical = json.dumps(fingerprint, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest()

