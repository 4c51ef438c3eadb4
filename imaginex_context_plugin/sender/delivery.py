"""Getting one prepared request acknowledged: attempts, retries and back-off.

:class:`Delivery` sends the request through the client's channel to the agent the locator
finds, signs each attempt anew, and retries timeouts and retryable refusals with a doubling,
jittered delay (at least a ``RATE_LIMITED`` ack's ``retry_after``). The request keeps its id
across attempts, so the agent applies it at most once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from livekit import rtc

from ..errors import ErrorCode
from ..log import logger
from ..protocol import ErrorAck, SuccessAck
from ..request_errors import AckTimeoutError, ContextError
from .channels import Channel, NoAck
from .locator import AgentLocator
from .options import MAX_BACKOFF_S, MAX_RETRY_AFTER_S
from .requests import Signer, check_size, encode
from .waiters import Pending, PendingAcks, PlayoutWaiters, closed_error


class Delivery:
    """The retry loop around one channel.

    Args:
        room: The sender's room (an attempt in a disconnected room fails at once).
        channel: How each attempt travels (RPC or data).
        locator: Finds the agent before each attempt (it may have come back as someone else).
        pending: Where a request waits for its ack.
        playouts: Told which agent each request went to, for its speech events.
        signer: Signs each attempt, or None to send unsigned.
        timeout: Default seconds to wait for the ack to one attempt.
        retries: Attempts after the first.
        backoff: First delay between attempts.
        closed: True once the client is closed: no further attempt is made.
    """

    def __init__(
        self,
        room: rtc.Room,
        *,
        channel: Channel,
        locator: AgentLocator,
        pending: PendingAcks,
        playouts: PlayoutWaiters,
        signer: Signer | None,
        timeout: float,
        retries: int,
        backoff: float,
        closed: Callable[[], bool],
    ) -> None:
        self._room = room
        self._channel = channel
        self._locator = locator
        self._pending = pending
        self._playouts = playouts
        self._signer = signer
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._closed = closed

    async def deliver(self, obj: dict[str, Any], timeout: float | None) -> SuccessAck:
        """Send the prepared request ``obj`` until it is acknowledged, retrying what may pass.

        Raises:
            ValueError: ``timeout`` is not positive.
            ContextError: The agent refused it, or it could not be delivered.
            AckTimeoutError: No ack in time, on the last attempt.
        """
        request_id: str = obj["id"]
        attempt_timeout = self._timeout if timeout is None else timeout
        if attempt_timeout <= 0:
            raise ValueError("timeout must be positive")
        pending = self._pending.add(request_id)
        body = encode(obj)
        try:
            attempt = 0
            while True:
                failure = await self._try_once(pending, body, attempt_timeout, attempt)
                if isinstance(failure, SuccessAck):
                    return failure
                if not failure.retryable or attempt >= self._retries or self._closed():
                    raise failure
                delay = self._retry_delay(attempt, failure)
                logger.info(
                    "retrying a context request",
                    extra={
                        "request_id": request_id,
                        "error": failure.code.value,
                        "attempt": attempt + 1,
                        "delay_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)
                attempt += 1
        finally:
            self._pending.remove(request_id)

    async def _try_once(
        self, pending: Pending, body: str, timeout: float, attempt: int
    ) -> SuccessAck | ContextError:
        """One attempt: the success ack, or the failure to raise or retry."""
        try:
            ack = await self._attempt(pending, body, timeout)
        except NoAck:
            return AckTimeoutError(
                f"No ack from agent '{pending.agent}' within {timeout:g} s"
                + (f" ({attempt + 1} attempts)." if attempt else "."),
                request_id=pending.request_id,
                attempts=attempt + 1,
            )
        except ContextError as exc:
            return exc
        if isinstance(ack, ErrorAck):
            return ContextError.from_ack(ack)
        logger.debug(
            "context request acknowledged",
            extra={"request_id": pending.request_id, "attempts": attempt + 1},
        )
        self._playouts.accepted(ack)
        return ack

    def _retry_delay(self, attempt: int, failure: ContextError) -> float:
        delay = min(MAX_BACKOFF_S, self._backoff * 2.0**attempt) * random.uniform(0.5, 1.0)
        if failure.retry_after:
            delay = max(delay, min(failure.retry_after, MAX_RETRY_AFTER_S))
        return delay

    async def _attempt(self, pending: Pending, body: str, timeout: float) -> SuccessAck | ErrorAck:
        """Send once and return the ack; raises ``NoAck`` on a timeout, else ContextError."""
        if self._closed():
            raise closed_error(pending.request_id)
        if not self._room.isconnected():
            raise ContextError(
                ErrorCode.LIVEKIT_UNAVAILABLE,
                "The room is not connected.",
                request_id=pending.request_id,
                retryable=False,
            )
        agent = await self._locator.resolve()
        payload = self._signer.sign(body) if self._signer is not None else body
        check_size(payload, pending.request_id)
        pending.agent = agent
        self._playouts.sent(pending.request_id, agent)
        return await self._channel.attempt(pending, agent, payload, timeout)
