"""The ``Idempotency-Key`` header: the request id sent to the agents, bound to one request.

The agents apply an id from one sender once (for 10 minutes); the gateway adds that a key used
for one request is refused for another, so a caller's mistake is an error, not a silent
duplicate answer.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Final

from aiohttp import web

from ..expiring import ExpiringCache
from ..protocol import MAX_ID_LENGTH, ErrorCode
from ..security import DEDUP_WINDOW_S
from .refusals import Refusal, invalid

IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"
IDEMPOTENCY_WINDOW_S: Final = DEDUP_WINDOW_S
"""How long an Idempotency-Key stays bound to its request: the agents' 10-minute dedup window."""
IDEMPOTENCY_MAX_KEYS: Final = 10_000
"""Keys remembered at most; past that the oldest are forgotten and only the agents check them."""
ID_REUSED_MESSAGE: Final = (
    "This Idempotency-Key was already used for a different request (another body or endpoint) "
    "in the last 10 minutes; send a new key. Nothing was sent."
)


class IdempotencyKeys:
    """Request ids from the ``Idempotency-Key`` header, each bound to the request it came with."""

    def __init__(self) -> None:
        # (agent code, Idempotency-Key) -> digest of the request it was first used for: the
        # agents dedup per (gateway identity, id), and each agent serves one code
        self._bound: ExpiringCache[bytes] = ExpiringCache(
            ttl_s=IDEMPOTENCY_WINDOW_S, max_entries=IDEMPOTENCY_MAX_KEYS
        )

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

    def bind(
        self,
        request: web.Request,
        agent_code: str,
        request_id: str,
        fingerprint: tuple[str | None, ...],
    ) -> None:
        """Refuse a key already bound to another request, else bind it to this one.

        Synchronous, so two concurrent calls with one key cannot both pass.

        Raises:
            Refusal: 422 ``ID_REUSED``.
        """
        if IDEMPOTENCY_KEY_HEADER not in request.headers:
            return  # a key the gateway made up is never reused
        canonical = json.dumps(fingerprint, ensure_ascii=False, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest()
        bound = self._bound.get((agent_code, request_id))
        if bound is None:
            # not refreshed by repeats: the key stays bound no longer than the agents remember it
            self._bound.put((agent_code, request_id), digest)
        elif bound != digest:
            raise Refusal(422, ErrorCode.ID_REUSED.value, ID_REUSED_MESSAGE)
