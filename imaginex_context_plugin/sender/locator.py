"""Finding the agent participant in the room, waiting for it to join (rule: ``_livekit.agents``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from livekit import rtc

from .._livekit.agents import choose_agent
from ..errors import ErrorCode
from ..request_errors import ContextError


class AgentLocator:
    """The identity of the agent in ``room``: the one given, or the one the rule chooses.

    Args:
        room: The sender's room.
        agent_identity: Send to this participant; it only has to be in the room.
        agent_code: Else, the code the agent publishes.
        agent_timeout: Default seconds to wait for the agent to appear.
        closed: Raises when the client has been closed meanwhile.
    """

    def __init__(
        self,
        room: rtc.Room,
        *,
        agent_identity: str | None,
        agent_code: str | None,
        agent_timeout: float,
        closed: Callable[[], ContextError | None],
    ) -> None:
        self._room = room
        self._agent_identity = agent_identity
        self._agent_code = agent_code
        self._agent_timeout = agent_timeout
        self._closed = closed
        self._roster_changed = asyncio.Event()

    def changed(self) -> None:
        """Someone joined, left or changed attributes: look again."""
        self._roster_changed.set()

    async def resolve(self, timeout: float | None = None) -> str:
        """The agent's identity, waiting up to ``timeout`` (default: ``agent_timeout``).

        Raises:
            ContextError: ``AGENT_NOT_FOUND`` when none (or several) matched in time; the
                closed error when the client closed meanwhile.
        """
        wait = self._agent_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            closed = self._closed()
            if closed is not None:
                raise closed
            # cleared before looking, so a change after the look wakes the wait below
            self._roster_changed.clear()
            ambiguous: ContextError | None = None
            try:
                found = self._match()
            except ContextError as exc:
                # may resolve itself: an agent publishes its code a moment after joining
                found, ambiguous = None, exc
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ambiguous or ContextError(
                    ErrorCode.AGENT_NOT_FOUND, self._no_agent_message(wait), retryable=False
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._roster_changed.wait(), remaining)

    def _match(self) -> str | None:
        participants = self._room.remote_participants
        if self._agent_identity is not None:
            return self._agent_identity if self._agent_identity in participants else None
        return choose_agent(
            ((p.identity, p.kind, p.attributes) for p in participants.values()),
            agent_code=self._agent_code,
            room=self._room.name,
        )

    def _no_agent_message(self, waited: float) -> str:
        room = self._room.name
        if self._agent_identity is not None:
            return (
                f"Participant '{self._agent_identity}' is not in room '{room}' "
                f"(waited {waited:g} s)."
            )
        if self._agent_code is not None:
            return (
                f"No participant with agent code '{self._agent_code}' is in room '{room}' "
                f"(waited {waited:g} s); the agent publishes its code once "
                "ContextPlugin(agent_code=...) has started."
            )
        return f"No agent participant is in room '{room}' (waited {waited:g} s)."
