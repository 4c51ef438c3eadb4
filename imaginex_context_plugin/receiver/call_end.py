"""Ending the call: ``end_call``, and ``speak`` with ``end_call_after`` once it has played out.

The end is decided at once (from then on every message is refused with ``NOT_READY``, "the call
has ended"), and carried out after the ack has been handed to the outbox: the session shuts
down (draining what is playing and queued, or cutting it); as it closes, every listener
(``add_listener``: the seam for the subscribers' ``call_ended``) is told the reason, before any
other ``close`` listener hooked after this one; then, inside a job, the job shuts down and the
room is deleted so that every participant, SIP callers too, is disconnected. That last step is
what LiveKit's own ``EndCallTool`` does once the session has closed.

A listener may hand back an awaitable: the job is not shut down before it is done (for at most
``FLUSH_TIMEOUT_S``), and then not before ``LINGER_S`` more. On the real server (livekit-server
1.13) the job's shutdown disconnects the agent's room at once, and the disconnect aborts its data
channel: what the SDK had accepted but not yet sent is dropped. Without these waits a
subscriber's ``call_ended``, and now and then the ``end_call`` ack itself (an RPC response), never
reached the sender.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from livekit.agents.job import get_job_context

from ..log import logger
from .outbox import DRAIN_TIMEOUT_S
from .speech import SpeechTracker

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession
    from livekit.agents.voice.events import CloseEvent

CALL_ENDED_MESSAGE: Final = "The call has ended."
END_CALL_REASON: Final = "end_call"
"""The reason reported for an ``end_call`` sent without one."""
END_CALL_AFTER_REASON: Final = "end_call_after"
"""The reason a call ended by a ``speak`` with ``end_call_after`` carries."""
FLUSH_TIMEOUT_S: Final = DRAIN_TIMEOUT_S
"""Longest wait for the listeners' awaitables (the subscribers' last events) before the job
shuts down."""

LINGER_S: Final = 1.0
"""Seconds between the last answer handed to the SDK and the job's shutdown, for them to leave:
the SDK's send returns before the data is on the wire, and nothing tells when it is."""

EndListener = Callable[[str], Awaitable[object] | None]
"""Told the reason the call ended; may return an awaitable the job's shutdown waits for."""


class CallEnd:
    """Whether the call has ended, and ending it once.

    Args:
        session: The agent session to shut down.
        speeches: The speeches messages started (cut and reported when the end is immediate).
    """

    def __init__(
        self, session: AgentSession[Any], speeches: Callable[[], SpeechTracker]
    ) -> None:
        self._session = session
        self._speeches = speeches
        self._listeners: list[EndListener] = []
        self._flushes: list[asyncio.Future[Any]] = []
        self.ended = False
        """True from the moment an end is applied: every later message is refused."""
        self.reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] | None = None

    def add_listener(self, listener: EndListener) -> None:
        """Call ``listener`` with the reason when a call ended by a message has closed.

        Called once, from the session's ``close`` event, before the ``close`` listeners hooked
        after this object's: ``reason`` is the sender's, else ``"end_call"`` (or
        ``"end_call_after"``). If it returns an awaitable, the job shuts down (and the room is
        deleted) once that is done, or after ``FLUSH_TIMEOUT_S``.
        """
        self._listeners.append(listener)

    def on_session_close(self, _: CloseEvent) -> None:
        """The session's ``close`` listener."""
        if self.ended:
            reason = self.reason or END_CALL_REASON
            for listener in self._listeners:
                try:
                    pending = listener(reason)
                    if pending is not None:
                        self._flushes.append(asyncio.ensure_future(pending))
                except Exception:
                    logger.exception("unexpected error reporting the end of the call")
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def end(self, *, after_speech: bool, reason: str | None) -> None:
        """End the call: now (cutting everything) or once what is playing and queued is done.

        The shutdown starts in a task of its own, after the caller has handed over its ack.
        """
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        self._closed = asyncio.get_running_loop().create_future()
        logger.info("call ending", extra={"reason": reason, "after_speech": after_speech})
        if not after_speech:
            self._speeches().cancel_all()
        self._task = asyncio.get_running_loop().create_task(
            self._shut_down(drain=after_speech), name="imaginex_context.end_call"
        )

    def hang_up(self) -> None:
        """A ``speak`` with ``end_call_after`` has played out: what is queued behind it is
        dropped (each reported cancelled) and the call ends."""
        self.end(after_speech=False, reason=END_CALL_AFTER_REASON)

    async def _shut_down(self, *, drain: bool) -> None:
        assert self._closed is not None
        await asyncio.sleep(0)  # the ack is handed over first
        self._session.shutdown(drain=drain)
        await self._closed
        logger.info("call ended", extra={"reason": self.reason})
        job_ctx = get_job_context(required=False)
        if job_ctx is None:
            return
        if self._flushes:
            # asyncio.wait, not wait_for: a listener's work is not ours to cancel at the timeout
            await asyncio.wait(self._flushes, timeout=FLUSH_TIMEOUT_S)
        await asyncio.sleep(LINGER_S)
        # as LiveKit's EndCallTool: delete the room from the job's shutdown, then shut it down
        job_ctx.add_shutdown_callback(_delete_room)
        job_ctx.shutdown(reason="end_call")

    async def aclose(self) -> None:
        """Stop waiting for the session (the plugin is closing)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _delete_room() -> None:
    job_ctx = get_job_context(required=False)
    if job_ctx is None:
        return
    logger.info("deleting the room: the call was ended")
    await job_ctx.delete_room()
