"""``FanOut`` on its seam (``AgentBackend``): the one deadline holds for every room even when a
delivery does not stop itself, and a request that goes away takes its rooms' calls with it."""

from __future__ import annotations

import asyncio
import json
import time

from imaginex_context_plugin.gateway.delivery.agent_backend import AgentTarget
from imaginex_context_plugin.gateway.http.fanout import FanOut
from imaginex_context_plugin.gateway.http.messages import MessageWriter, Outgoing
from imaginex_context_plugin.protocol import AckData, SuccessAck, utc_timestamp

SPEAK = Outgoing(endpoint="speak", fields={"type": "speak", "message": "Hello"}, text="Hello")


class Rooms:
    """An ``AgentBackend`` whose agents answer at once, except those named ``stuck*``, which
    never answer and ignore the timeout they are given (the fan-out's wait must cut them)."""

    def __init__(self) -> None:
        self.calls_going = 0
        self.cancelled: list[str] = []

    async def find_agents(self, agent_code: str, *, room_id: str | None) -> list[AgentTarget]:
        return []

    async def deliver(self, target: AgentTarget, payload: str, *, timeout: float) -> str:
        request_id = json.loads(payload)["id"]
        if not target.room.startswith("stuck"):
            data = AckData(
                agent_code="CODE",
                context_type="speak",
                room_id=target.room,
                timestamp=utc_timestamp(),
            )
            return SuccessAck(id=request_id, message="ok", data=data).model_dump_json()
        self.calls_going += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(target.room)
            raise
        finally:
            self.calls_going -= 1
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


def fanout(rooms: Rooms, timeout: float) -> FanOut:
    writer = MessageWriter(signing_secret=None, sender=None)
    return FanOut(rooms, writer=writer, delivery_timeout=timeout)


async def test_a_delivery_that_ignores_its_timeout_is_cut_at_the_deadline() -> None:
    rooms = Rooms()
    targets = [AgentTarget("ok-1", "a"), AgentTarget("stuck-1", "a"), AgentTarget("ok-2", "a")]
    started = time.monotonic()
    outcomes = await fanout(rooms, 0.3).deliver(targets, SPEAK, "req-1", "CODE")
    took = time.monotonic() - started

    assert 0.3 <= took < 2.0
    assert [(o.result.room, o.result.delivered, o.result.error) for o in outcomes] == [
        ("ok-1", True, None),
        ("stuck-1", False, "TIMEOUT"),
        ("ok-2", True, None),
    ]
    assert outcomes[1].result.message == "The agent did not answer within 0.3 s."
    assert rooms.cancelled == ["stuck-1"]
    assert rooms.calls_going == 0


async def test_a_request_that_goes_away_cancels_every_room_call() -> None:
    rooms = Rooms()
    targets = [AgentTarget(f"stuck-{i}", "a") for i in range(5)]
    request = asyncio.ensure_future(fanout(rooms, 30).deliver(targets, SPEAK, "req-2", "CODE"))
    while rooms.calls_going < 5:
        await asyncio.sleep(0.01)
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)

    assert request.cancelled()
    assert sorted(rooms.cancelled) == [f"stuck-{i}" for i in range(5)]
    assert rooms.calls_going == 0


async def test_no_rooms_no_outcomes() -> None:
    assert await fanout(Rooms(), 1).deliver([], SPEAK, "req-3", "CODE") == []
