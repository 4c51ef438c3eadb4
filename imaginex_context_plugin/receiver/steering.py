"""Steering the agent: ``update_instructions`` / ``reset_instructions``, kept across handoffs.

``Agent.update_instructions()`` is stored on that agent object, so a new agent after a handoff
would not carry it: what the senders asked for is kept here and applied again to every agent
that takes over, the way the context is. The instructions an agent was built with are
remembered the first time it is steered, so that ``reset_instructions`` (and a ``replace``)
start from them, and each change is written from them: appending twice adds both texts once.
With a realtime model the new instructions go to the realtime session (``session.update``);
the model uses them from its next response.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Final

from livekit.agents import llm
from livekit.agents.llm.chat_context import Instructions

from ..log import logger
from ..protocol import InstructionsMode
from .session_gate import SessionGate

if TYPE_CHECKING:
    from livekit.agents.voice import Agent

_SEPARATOR: Final = "\n\n"


class Steering:
    """The senders' instructions and the agent they apply to.

    Args:
        gate: The session, reached through its readiness gate.
    """

    def __init__(self, gate: SessionGate) -> None:
        self._gate = gate
        self._replacement: str | None = None
        self._additions: list[str] = []
        # each agent's own instructions, remembered the first time it is steered
        self._own: weakref.WeakKeyDictionary[Agent, str | Instructions] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def active(self) -> bool:
        return self._replacement is not None or bool(self._additions)

    async def update(self, instructions: str, mode: InstructionsMode) -> None:
        """Append to (or replace) the current agent's instructions.

        Raises:
            NotReady: The session has ended or has no agent within the ready timeout.
        """
        if mode == "replace":
            self._replacement, self._additions = instructions, []
        else:
            self._additions.append(instructions)
        await self.apply()

    async def reset(self) -> None:
        """The current agent's own instructions again; nothing of the senders' is kept."""
        self._replacement, self._additions = None, []
        await self.apply(restore=True)

    async def on_handoff(self) -> None:
        """A new agent took over: give it the senders' instructions too."""
        if self.active:
            await self.apply()

    async def apply(self, *, restore: bool = False) -> None:
        """Write the steered (or, ``restore``, the own) instructions into the current agent."""
        session = self._gate.session
        agent = await self._gate.call(lambda: session.current_agent)
        own = self._own.get(agent)
        if own is None:
            if restore:
                return  # never steered: it still has its own instructions
            own = self._own[agent] = agent.instructions
        text = own if restore else self._steered(own)
        try:
            # an Instructions object is accepted as the agent was built with it
            await agent.update_instructions(text)  # type: ignore[arg-type]
        except llm.RealtimeError:
            # the realtime API did not confirm in time; the agent holds the new instructions
            logger.warning("the realtime model did not confirm the instructions update")

    def _steered(self, own: str | Instructions) -> str:
        base = self._replacement
        if base is None:
            base = own if isinstance(own, str) else own.render()
        return _SEPARATOR.join([part for part in (base, *self._additions) if part])
