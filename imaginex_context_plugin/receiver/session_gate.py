"""Calls into the ``AgentSession`` that wait through its start-up and agent handoffs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession
    from livekit.agents.voice.events import CloseEvent

DEFAULT_READY_TIMEOUT_S: Final = 10.0
"""How long a message waits for the session to start or finish a handoff before NOT_READY."""
_RETRY_INTERVAL_S: Final = 0.02

_T = TypeVar("_T")


class NotReady(Exception):
    """The session cannot take the call: the message is refused with ``NOT_READY``."""


class SessionGate:
    """The session, and whether it can take a call now or soon.

    Args:
        session: The agent session messages are applied to.
        ready_timeout: Seconds a call waits for the session to start or finish a handoff.
    """

    def __init__(self, session: AgentSession[Any], ready_timeout: float) -> None:
        self.session = session
        self._ready_timeout = ready_timeout
        self._closed = False

    def on_session_close(self, _: CloseEvent) -> None:
        """The session's ``close`` listener: from now on every call is refused."""
        self._closed = True

    async def call(self, call: Callable[[], _T]) -> _T:
        """Run a session call, waiting through session start-up and agent handoffs.

        During a handoff LiveKit refuses new speech for a moment (RuntimeError); before start()
        it has no agent. Both pass, so the call is retried until ``ready_timeout``.

        Raises:
            NotReady: The session has ended, or did not become ready in time.
        """
        deadline = time.monotonic() + self._ready_timeout
        while True:
            if self._closed:
                raise NotReady("The agent session has ended.")
            try:
                return call()
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise NotReady(
                        "The agent session is not running (not started, or stuck in a handoff)."
                    ) from None
            await asyncio.sleep(_RETRY_INTERVAL_S)
