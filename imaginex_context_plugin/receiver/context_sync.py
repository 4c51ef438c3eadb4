"""The context store kept in the agent's chat context: one update per change, and its upkeep.

The store holds the entries; this keeps the current agent's chat context holding exactly the
live ones: after a batch of changes, after an agent handoff (the new agent starts with only the
context it was built with), when an entry's ttl runs out, and when a ``next_turn`` entry has
served its turn. Upkeep arrives as :class:`Housekeeping` on the work queue, so that only the
consumer ever touches the session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from livekit.agents import llm

from ..context import ContextStore
from ..log import logger
from .jobs import Housekeeping
from .session_gate import SessionGate

if TYPE_CHECKING:
    from livekit.agents.voice.events import ConversationItemAddedEvent


class ContextSync:
    """Syncs the store into the agent's chat context and schedules its expiry.

    Args:
        store: The context entries the plugin holds.
        gate: The session, reached through its readiness gate.
        enqueue: Puts housekeeping on the work queue (the expiry timer's target).
    """

    def __init__(
        self,
        store: ContextStore,
        gate: SessionGate,
        enqueue: Callable[[Housekeeping], None],
        *,
        follow: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._gate = gate
        self._enqueue = enqueue
        self._follow = follow
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def sync(self) -> None:
        """Make the current agent's chat context hold exactly the live entries: one update.

        Raises:
            NotReady: The session has ended or has no agent within the ready timeout.
        """
        session = self._gate.session
        agent = await self._gate.call(lambda: session.current_agent)
        self._follow()  # watch this agent's model requests (context_used), once per agent
        merged = self._store.merge_into(agent.chat_ctx.items)
        try:
            await agent.update_chat_ctx(llm.ChatContext(merged))
        except llm.RealtimeError:
            # a realtime API that did not confirm the push in time: the agent's own context
            # already holds the update and the items were sent, so livekit itself treats the
            # push as best effort. Failing the ack would invite a retry that duplicates them.
            logger.warning("the realtime model did not confirm the chat context update")
        self._schedule_expiry()

    async def restore(self) -> None:
        """After a refused change: the agent's chat context back in step with the store.

        Best effort and without waiting: the session is usually ending when this is needed,
        and the store, which every later sync follows, is already right.
        """
        try:
            agent = self._gate.session.current_agent
            await agent.update_chat_ctx(
                llm.ChatContext(self._store.merge_into(agent.chat_ctx.items))
            )
        except Exception:
            logger.debug("could not restore the agent's chat context", exc_info=True)

    def on_conversation_item_added(self, ev: ConversationItemAddedEvent) -> None:
        """The session's listener: a handoff or the agent's reply queues context upkeep."""
        item = ev.item
        if item.type == "agent_handoff":
            self._enqueue(Housekeeping("handoff"))
        elif item.type == "message" and item.role == "assistant":
            self._enqueue(Housekeeping("turn_end", at=item.created_at))

    async def housekeep(self, item: Housekeeping) -> None:
        if item.kind == "handoff":
            self._follow()
            # the new agent starts with only the context it was built with: re-apply ours
            if len(self._store):
                await self.sync()
            return
        if item.kind == "expire":
            self._expiry_timer = None
            removed = self._store.expire()
        else:
            removed = self._store.drop_next_turn(added_before=item.at)
        if removed:
            await self.sync()
        elif item.kind == "expire":
            self._schedule_expiry()

    def close(self) -> None:
        """Stop the expiry timer; nothing is scheduled after this."""
        self._closed = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None

    def _schedule_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        deadline = self._store.next_expiry()
        if deadline is None or self._closed:
            return
        delay = max(0.0, deadline - time.monotonic())
        self._expiry_timer = asyncio.get_running_loop().call_later(
            delay, self._enqueue, Housekeeping("expire")
        )
