"""Delivering one message to every room where the agent is live, at once, within one deadline.

Every room starts at once and shares the request's one deadline (``delivery_timeout`` from the
start of the fan-out): waiting for a place in the gateway's room pool, joining the room and the
agent's answer all count against it, so a request to hundreds of rooms answers in
``delivery_timeout`` at worst, and a room not reached by then reports ``TIMEOUT``.

Each room's result is a :class:`RoomOutcome`; a room failing never fails the others, and
nothing here raises for one room's trouble (an unexpected error is logged and that room reports
``INTERNAL_ERROR``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

from ...errors import BackendError, ErrorCode, StateUnavailable
from ...log import logger
from ...protocol import MAX_PAYLOAD_BYTES, SuccessAck, oversize, parse_ack
from ..delivery.agent_backend import AgentBackend, AgentTarget
from ..models import RoomResult
from ..refusals import STATUS_FOR, Refusal, state_unavailable
from .messages import MessageWriter, Outgoing

NO_ACTIVE_ROOMS_MESSAGE: Final = "No active sessions found for agent"
_NOT_DELIVERED: Final = "The gateway failed to deliver the message."
_UNREADABLE_ACK: Final = "The agent's answer could not be read."
_DIRECTORY_UNAVAILABLE: Final = (
    "The gateway's shared state (Redis) cannot be reached, so the agent's rooms could not be "
    "looked up; nothing was sent. Retry shortly."
)


@dataclass(frozen=True)
class RoomOutcome:
    """One room's delivery result, with what the HTTP answer needs beyond ``RoomResult``."""

    result: RoomResult
    error: ErrorCode | None = None
    retry_after: float | None = None
    ack: SuccessAck | None = None
    """The agent's success ack, when it took the message."""


class FanOut:
    """Finds the agent's rooms and delivers to each.

    Args:
        backend: How LiveKit is reached.
        writer: Writes each room's message.
        delivery_timeout: Seconds from the start of a fan-out until every room has answered
            (joining rooms included); a room that has not answered by then reports
            ``TIMEOUT``.
    """

    def __init__(
        self, backend: AgentBackend, *, writer: MessageWriter, delivery_timeout: float
    ) -> None:
        self._backend = backend
        self._writer = writer
        self._timeout = delivery_timeout

    async def targets(self, agent_code: str, room_id: str | None) -> list[AgentTarget]:
        """The rooms where ``agent_code`` is live (only ``room_id`` if given).

        Raises:
            Refusal: LiveKit or the agent directory could not be asked, or no room has the
                agent (404).
        """
        try:
            targets = await self._backend.find_agents(agent_code, room_id=room_id)
        except BackendError as exc:
            raise Refusal(STATUS_FOR[exc.code], exc.code.value, exc.message) from None
        except StateUnavailable:
            raise state_unavailable(_DIRECTORY_UNAVAILABLE) from None
        if not targets:
            raise Refusal(404, ErrorCode.NO_ACTIVE_ROOMS.value, NO_ACTIVE_ROOMS_MESSAGE)
        return targets

    async def deliver(
        self,
        targets: list[AgentTarget],
        outgoing: Outgoing,
        request_id: str,
        agent_code: str,
    ) -> list[RoomOutcome]:
        """Deliver to every target at once; one outcome per target, in their order."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        outcomes = await self._deliver_all(targets, outgoing, request_id, agent_code, deadline)
        delivered = sum(1 for o in outcomes if o.result.delivered)
        # the access log has the request; this line adds where it went, at INFO when a room
        # failed
        logger.log(
            logging.INFO if delivered < len(outcomes) else logging.DEBUG,
            "message sent to agents",
            extra={
                "agent_code": agent_code,
                "request_id": request_id,
                "context_type": outgoing.kind,
                "rooms": len(outcomes),
                "delivered_to_rooms": delivered,
            },
        )
        if outgoing.text is not None:
            logger.debug(
                "message text", extra={"request_id": request_id, "message_text": outgoing.text}
            )
        return outcomes

    async def _deliver_all(
        self,
        targets: list[AgentTarget],
        outgoing: Outgoing,
        request_id: str,
        agent_code: str,
        deadline: float,
    ) -> list[RoomOutcome]:
        """Every room's outcome by ``deadline``; a room still going then is cut and reports
        ``TIMEOUT``.

        One wait for all the rooms rather than ``asyncio.wait_for`` per room, which on Python
        3.11 costs a task and a timer per room (about 40 us each, timed alone). Each backend
        call still gets its share of the deadline and stops itself; this wait is the
        guarantee.
        """
        if not targets:
            return []
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._deliver_one(t, outgoing, request_id, agent_code, deadline))
            for t in targets
        ]
        try:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        finally:
            # the deadline passed, or the request itself was cancelled (its client left)
            late = [task for task in tasks if not task.done()]
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        return [
            self._timed_out(target) if task.cancelled() else task.result()
            for target, task in zip(targets, tasks, strict=True)
        ]

    def _timed_out(self, target: AgentTarget) -> RoomOutcome:
        return _failed(
            target, ErrorCode.TIMEOUT, f"The agent did not answer within {self._timeout:g} s."
        )

    async def _deliver_one(
        self,
        target: AgentTarget,
        outgoing: Outgoing,
        request_id: str,
        agent_code: str,
        deadline: float,
    ) -> RoomOutcome:
        if target.refusal is not None:
            return _failed(target, ErrorCode.AGENT_NOT_FOUND, target.refusal)
        payload = self._writer.write(outgoing, request_id, agent_code, target.room)
        if oversize(payload) is not None:
            return _failed(
                target,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"With this room's name the message is over {MAX_PAYLOAD_BYTES} bytes.",
            )
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            raw = await self._backend.deliver(target, payload, timeout=remaining)
        except asyncio.TimeoutError:
            return self._timed_out(target)
        except BackendError as exc:
            return _failed(target, exc.code, exc.message)
        except Exception:
            logger.exception("unexpected error delivering to an agent", extra={"room": target.room})
            return _failed(target, ErrorCode.INTERNAL_ERROR, _NOT_DELIVERED)
        try:
            ack = parse_ack(raw)
        except ValueError:  # pydantic's ValidationError is a ValueError
            return _failed(target, ErrorCode.INTERNAL_ERROR, _UNREADABLE_ACK)
        if isinstance(ack, SuccessAck):
            result = RoomResult(room=target.room, delivered=True, duplicate=bool(ack.duplicate))
            return RoomOutcome(result, ack=ack)
        return _failed(target, ack.error, ack.message, ack.retry_after)


def _failed(
    target: AgentTarget, code: ErrorCode, message: str, retry_after: float | None = None
) -> RoomOutcome:
    result = RoomResult(room=target.room, delivered=False, error=code.value, message=message)
    return RoomOutcome(result, error=code, retry_after=retry_after)
