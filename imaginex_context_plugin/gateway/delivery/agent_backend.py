"""The seam between the gateway's HTTP side and a delivery: :class:`AgentBackend`.

A delivery is one module behind this seam: it finds the agents serving a code and delivers one
request to each (``room_delivery``: pooled room connections and RPC; ``server_rpc_delivery``:
``RoomService.PerformRpc``, the agent's answer being the call's). What a delivery can do beyond
that, the application asks through the small capability protocols here, never through its
class:

- :class:`RoomHolder`: it holds room connections, so the live events stream is served;
- :class:`WebhookSource`: it keeps an agent directory, so LiveKit's webhooks are taken;
- :class:`SigningDelivery`: its agents trust only signed messages, so the gateway signs them
  even without a signing secret of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from livekit import rtc

from ..directory.webhook import LiveKitWebhook


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


@runtime_checkable
class SigningDelivery(Protocol):
    """A delivery whose agents cannot tell who calls them (LiveKit makes the caller up), so
    every message must be signed: with the gateway's signing secret when it has one, else with
    this one (the agents check it with ``ContextPlugin(trust_server=True)``)."""

    @property
    def unsigned_messages_secret(self) -> str:
        """The secret messages are signed with when the gateway has no signing secret."""
        ...
