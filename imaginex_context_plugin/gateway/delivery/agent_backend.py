"""The seam between the gateway's HTTP side and a delivery: :class:`AgentBackend`.

A delivery is one module behind this seam: it finds the agents serving a code and delivers one
request to each (``room_delivery``: pooled room connections and RPC; ``server_api_delivery``:
``RoomService.SendData``, the answers posted back over HTTP). What a delivery can do beyond
that, the application asks through the small capability protocols here, never through its
class:

- :class:`RoomHolder`: it holds room connections, so the live events stream is served;
- :class:`WebhookSource`: it keeps an agent directory, so LiveKit's webhooks are taken;
- :class:`RepliesOverHttp`: its agents post their answers to the gateway
  (:data:`REPLIES_PATH`), so that route is served, and the messages must be signed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from aiohttp import web
from livekit import rtc

from ..directory.webhook import LiveKitWebhook
from ..state.gateway_state import ReplyMemory

REPLIES_PATH: Final = "/v1/internal/replies"
"""Where agents post their answers (relative to the gateway's public URL)."""


@dataclass(frozen=True)
class AgentTarget:
    """One live agent: the room it is in and its participant identity there.

    ``refusal`` is set, and ``identity`` empty, for a room where the agent cannot be chosen
    (several publish the code): nothing is sent there and the room reports
    ``AGENT_NOT_FOUND`` with this sentence.
    """

    room: str
    identity: str
    refusal: str | None = None


class AgentBackend(Protocol):
    """The gateway's view of LiveKit: all the HTTP side sees of a delivery."""

    async def find_agents(self, agent_code: str, *, room_id: str | None) -> list[AgentTarget]:
        """The live agents serving ``agent_code``, at most one per room.

        Args:
            agent_code: The code agents publish in their ``imaginex.agent_code`` attribute.
            room_id: Only look in this room; every room when None.

        Raises:
            BackendError: ``LIVEKIT_UNAVAILABLE`` when LiveKit cannot be asked.
            StateUnavailable: The agent directory's store (Redis) cannot be read.
        """
        ...

    async def deliver(self, target: AgentTarget, payload: str, *, timeout: float) -> str:
        """Send one request JSON to one agent and return the agent's ack JSON.

        Args:
            target: The agent.
            payload: The request JSON (see ``protocol``), possibly in a signed envelope.
            timeout: Seconds the agent has to answer; the caller also enforces it.

        Raises:
            BackendError: When it could not be delivered (the code says why).
        """
        ...

    async def aclose(self) -> None:
        """Release every connection. Idempotent."""
        ...


@runtime_checkable
class RoomHolder(Protocol):
    """A delivery that holds room connections: the events route listens on one."""

    async def hold_room(self, room_name: str) -> tuple[rtc.Room, Callable[[], None]]:
        """The connection to ``room_name``, kept open until the returned ``release`` is called.

        Raises:
            BackendError: ``LIVEKIT_UNAVAILABLE`` when the room cannot be joined.
        """
        ...


@runtime_checkable
class WebhookSource(Protocol):
    """A delivery that keeps an agent directory and so takes LiveKit's webhooks."""

    @property
    def livekit_webhook(self) -> LiveKitWebhook | None:
        """The webhook route's handler; None when the delivery keeps no directory."""
        ...


class ReplyEndpoint(Protocol):
    """The handler of :data:`REPLIES_PATH`: the agents' signed answers, each taken once."""

    replies: ReplyMemory
    """The replies taken; the application puts the state's here (shared by replicas)."""

    async def handle(self, request: web.Request) -> web.Response: ...


@runtime_checkable
class RepliesOverHttp(Protocol):
    """A delivery whose agents post their answers to the gateway: the application serves
    ``reply_inbox`` at :data:`REPLIES_PATH` and starts it, and refuses to run unsigned (an
    agent answers only a signed ``reply_to``)."""

    @property
    def reply_inbox(self) -> ReplyEndpoint: ...

    async def start(self) -> None:
        """Start taking answers (from the other replicas too); called as the app starts."""
        ...
