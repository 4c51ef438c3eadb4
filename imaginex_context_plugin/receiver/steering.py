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

DEFAULT_MAX_INSTRUCTIONS_CHARS: Final = 32_000
"""Most characters the senders' instructions may add up to (what ``update_instructions``
appended, or the replacement and what was appended to it), the order of the context budget
(``ContextBudget.max_chars``): the agent's own instructions do not count."""


class InstructionsTooLong(ValueError):
    """An ``update_instructions`` that would take the senders' instructions over the limit."""


class Steering:
    """The senders' instructions and the agent they apply to.

    Args:
        gate: The session, reached through its readiness gate.
        max_chars: See :data:`DEFAULT_MAX_INSTRUCTIONS_CHARS`.
    """

    def __init__(
        self, gate: SessionGate, *, max_chars: int = DEFAULT_MAX_INSTRUCTIONS_CHARS
    ) -> None:
        self._gate = gate
        self._max_chars = max_chars
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
            InstructionsTooLong: The senders' instructions would be over the limit; nothing
                was changed.
            NotReady: The session has ended or has no agent within the ready timeout.
        """
        replacement: str | None
        if mode == "replace":
            replacement, additions = instructions, []
        else:
            replacement, additions = self._replacement, [*self._additions, instructions]
        total = len(replacement or "") + sum(len(text) for text in additions)
        if total > self._max_chars:
            raise InstructionsTooLong(self._too_long(total, mode))
        self._replacement, self._additions = replacement, additions
        await self.apply()

    def _too_long(self, total: int, mode: InstructionsMode) -> str:
        limit = f"this agent's limit of {self._max_chars:,} characters"
        if mode == "replace":
            return f"The instructions are {total:,} characters, over {limit}; nothing was changed."
        return (
            f"With these, the instructions added to the agent would be {total:,} characters, "
            f"over {limit}; nothing was changed. Replace them (mode 'replace') or send "
            "reset_instructions first."
        )

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
