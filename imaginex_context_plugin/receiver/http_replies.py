"""Answers posted over HTTP, for signed server-API packets that name an allowed ``reply_to``.

The consumer and the room callback only queue a reply (:meth:`HttpReplies.post`, synchronous,
O(1)); one task of its own posts them, so a slow or dead gateway never holds up the session.
The queue is bounded and each post has a short timeout; a reply that cannot be posted is
counted (``stats.ack_failures`` / ``stats.answers_dropped``) and the gateway reports a timeout
for that room, as it would for a lost packet. The scheme is in :mod:`..replies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import aiohttp

from ..log import logger
from ..replies import REPLY_SIGNATURE_HEADER, REPLY_TIMESTAMP_HEADER, reply_signature
from .stats import PluginStats

DEFAULT_REPLY_TIMEOUT_S: Final = 3.0
"""Seconds one reply's POST may take (connecting included) before it is given up."""
MAX_WAITING_REPLIES: Final = 1_024
"""Most replies waiting to be posted; beyond it the newest is dropped."""
DRAIN_TIMEOUT_S: Final = 2.0
"""How long closing waits for the replies still queued to be posted."""
KEEPALIVE_S: Final = 4.0
"""Seconds an idle connection to a gateway is kept for the next reply: under the gateway's
10 s idle limit (``--header-timeout``), so that a reply rarely goes out on a connection the
gateway is just closing (aiohttp's default, 15 s, made that the rule after any 10 s pause)."""


class HttpReplies:
    """Posts the agent's answers to the gateways that asked for them.

    Args:
        secret: Signs every reply (the key the gateway signs its requests with).
        room_name: The room's current name, put in every reply.
        stats: Where sent, failed and dropped replies are counted.
        timeout: Seconds per POST. Default ``DEFAULT_REPLY_TIMEOUT_S``.
        max_waiting: Most replies queued. Default ``MAX_WAITING_REPLIES``.
    """

    def __init__(
        self,
        *,
        secret: str | bytes,
        room_name: Callable[[], str],
        stats: PluginStats,
        timeout: float = DEFAULT_REPLY_TIMEOUT_S,
        max_waiting: int = MAX_WAITING_REPLIES,
    ) -> None:
        self._secret = secret
        self._room_name = room_name
        self._stats = stats
        self._timeout = timeout
        self._max_waiting = max_waiting
        self._waiting: deque[tuple[str, bytes, int]] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def post(self, url: str, ack: bytes) -> None:
        """Queue ``ack`` (the encoded ack) for ``url``; never blocks, never raises."""
        if len(self._waiting) >= self._max_waiting:
            self._stats.answers_dropped += 1
            return
        body = json.dumps(
            {"room": self._room_name(), "ack": ack.decode("utf-8")}, separators=(",", ":")
        ).encode("utf-8")
        self._waiting.append((url, body, int(time.time())))
        self._idle.clear()
        self._ready.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="imaginex_context.http_replies"
            )

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        # no cookies, no redirects followed (a redirect could lead to a URL not allowed)
        async with aiohttp.ClientSession(
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S),
        ) as session:
            while True:
                if not self._waiting:
                    self._idle.set()
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                url, body, timestamp = self._waiting.popleft()
                await self._post_one(session, url, body, timestamp)

    async def _post_one(
        self, session: aiohttp.ClientSession, url: str, body: bytes, timestamp: int
    ) -> None:
        headers = {
            "Content-Type": "application/json",
            REPLY_TIMESTAMP_HEADER: str(timestamp),
            REPLY_SIGNATURE_HEADER: reply_signature(body, timestamp, self._secret),
        }
        try:
            try:
                status = await self._post(session, url, body, headers)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError):
                # a kept-alive connection the gateway closed as it was reused (it closes idle
                # ones): the reply did not get through; once more, on a fresh connection. Had
                # it got through, the gateway refuses the repeat as a replay and that is all.
                status = await self._post(session, url, body, headers)
            ok = status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._stats.ack_failures += 1
            logger.warning("could not post a reply", extra={"error": type(exc).__name__})
            return
        if ok:
            self._stats.acks_sent += 1
        else:
            self._stats.ack_failures += 1
            logger.warning("reply refused by the gateway", extra={"status": status})

    @staticmethod
    async def _post(
        session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
    ) -> int:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
            await response.read()
            return response.status

    async def aclose(self) -> None:
        """Post what is waiting (up to ``DRAIN_TIMEOUT_S``), then stop. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), DRAIN_TIMEOUT_S)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
