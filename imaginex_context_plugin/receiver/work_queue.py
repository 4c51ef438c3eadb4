"""One ordered queue of admitted jobs and housekeeping, drained by one consumer.

One consumer, not a task per message: tasks could apply two messages swapped. Context changes
right behind each other are taken as one batch, so that a burst costs one chat context update.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import Final

from ..protocol import AddContextRequest
from .jobs import Housekeeping, Job

DEFAULT_MAX_QUEUE: Final = 1_024
"""Most messages waiting to be applied at once; beyond it senders get RATE_LIMITED."""


class WorkQueue:
    """Jobs and housekeeping in arrival order, and how many jobs are still owed an answer."""

    def __init__(self) -> None:
        self._items: deque[Job | Housekeeping] = deque()
        self._ready = asyncio.Event()
        self._waiting = False  # the consumer is parked in next(): nothing is being applied
        self.pending_jobs = 0
        """Jobs queued or being applied, not yet answered."""

    @property
    def idle(self) -> bool:
        """Nothing queued and the consumer waiting for work: nothing would be ahead of a new job.

        Housekeeping counts: an expiry or a handoff being applied changes what a job sees.
        """
        return self._waiting and not self._items

    def put(self, item: Job | Housekeeping) -> None:
        if isinstance(item, Job):
            self.pending_jobs += 1
        self._items.append(item)
        self._ready.set()

    def settled(self) -> None:
        """One job got its answer."""
        self.pending_jobs -= 1

    async def next(self) -> Job | Housekeeping:
        """The oldest item, once there is one."""
        while not self._items:
            self._ready.clear()
            self._waiting = True
            try:
                await self._ready.wait()
            finally:
                self._waiting = False
        return self._items.popleft()

    def take_batch(self, first: Job) -> list[Job]:
        """``first`` plus, for context changes, the ones right behind it.

        A repeated id ends the batch so that the repeat sees the first one's ack and is not
        applied twice. An add_context that asks for a reply is a batch of its own: its change is
        committed only once the reply is scheduled, and a refusal must not undo its neighbours.
        """
        batch = [first]
        if not first.changes_context or _asks_for_reply(first):
            return batch
        items = self._items
        keys = {first.dedup_key}
        while items:
            nxt = items[0]
            if not isinstance(nxt, Job) or not nxt.changes_context or _asks_for_reply(nxt):
                break
            key = nxt.dedup_key
            if key is not None and key in keys:
                break
            keys.add(key)
            batch.append(nxt)
            items.popleft()
        return batch

    def put_back(self, batch: list[Job]) -> None:
        """Return the unanswered jobs of an interrupted batch to the front, in order."""
        self._items.extendleft(reversed([job for job in batch if not job.answered]))

    def drain_jobs(self) -> Iterator[Job]:
        """Empty the queue, yielding the jobs in it (closing answers them)."""
        while self._items:
            item = self._items.popleft()
            if isinstance(item, Job):
                yield item


def _asks_for_reply(job: Job) -> bool:
    request = job.request
    return isinstance(request, AddContextRequest) and request.trigger_reply
