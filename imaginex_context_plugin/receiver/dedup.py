"""The dedup memory: the first ack of every applied id, for the whole dedup window.

A repeat of an applied request gets that first ack again, marked as a duplicate; the same id for
a different request is refused (``ID_REUSED``); nothing is applied twice. The memory is bounded
and never forgets an id inside its window to make room: admission refuses new ids instead.
"""

from __future__ import annotations

from ..errors import ErrorCode
from ..expiring import ExpiringCache
from ..log import logger
from ..protocol import ID_REUSED_MESSAGE, error_ack
from ..security import SignatureProblem
from .answers import as_duplicate
from .jobs import Answer, Job, Success
from .stats import PluginStats


class DedupMemory:
    """Remembers applied ids per sender and answers their repeats.

    Args:
        window_s: How long an id is remembered.
        max_entries: Most ids remembered at once.
        stats: Where duplicates are counted.
    """

    def __init__(self, *, window_s: float, max_entries: int, stats: PluginStats) -> None:
        # (request fingerprint, first ack as JSON bytes): thousands of small pydantic models
        # would cost about 4x the memory and six GC-tracked objects each, which full
        # collections must walk. Never evicted before expiry: admission refuses instead.
        self._cache: ExpiringCache[tuple[int, bytes]] = ExpiringCache(
            ttl_s=window_s, max_entries=max_entries
        )
        self._max_entries = max_entries
        self._stats = stats

    def has_room(self, job: Job, pending_jobs: int) -> bool:
        """Whether ``job`` can be remembered once applied, with ``pending_jobs`` ahead of it.

        Each queued job may add one id; a repeat of a remembered id adds none (it is answered
        as the duplicate it is).
        """
        key = job.dedup_key
        if key is None or len(self._cache) + pending_jobs < self._max_entries:
            return True  # room even before expired ids are let go: no need to expire them now
        return self._cache.free() > pending_jobs or key in self._cache

    def seconds_until_room(self) -> float:
        return self._cache.seconds_until_room()

    def answer_for(self, job: Job) -> Answer | None:
        """The answer for a repeated id (nothing is applied), or None: apply the job."""
        key = job.dedup_key
        if key is None:
            return None
        first = self._cache.get(key)
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
        self._stats.duplicates += 1
        return as_duplicate(first_ack)

    def remember(self, job: Job, ack: Success) -> None:
        """Keep the first ack of an applied job for its repeats."""
        # admission kept a slot for it (it refuses when the table is full), so this never
        # forgets an id still inside its window
        if job.dedup_key is not None and not self._cache.put_if_room(
            job.dedup_key, (job.fingerprint, ack.payload)
        ):
            logger.warning("the dedup table is full; an applied id is not remembered")

