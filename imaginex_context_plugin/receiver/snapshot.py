"""Where the call stands, in one packet: the snapshot a subscriber starts from (protocol v1.3).

A snapshot is the state ``get_state`` reports, the newest conversation messages and the
speeches still queued or playing, at a ``seq``: the live events continue after it. It goes in
the ``subscribe`` ack and, after ``events_lost``, as a ``snapshot`` event, so it must fit one
packet with whatever carries it: the oldest messages go first, then the state's lists are cut
(and say so, as in ``get_state``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from livekit.agents import llm

from ..protocol import AgentStateInfo, PendingSpeech, Snapshot, oversize
from .call_control import history_item
from .state import StateAnswers

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession

SNAPSHOT_MAX_ITEMS: Final = 20
"""Most conversation messages a snapshot carries (the newest)."""


class SnapshotSource:
    """Makes snapshots of one session.

    Args:
        session: The agent session.
        state: Reports the state as ``get_state`` does.
        pending: The speeches the plugin started that are still queued or playing.
    """

    def __init__(
        self,
        *,
        session: AgentSession[Any],
        state: StateAnswers,
        pending: Callable[[], list[PendingSpeech]],
    ) -> None:
        self._session = session
        self._state = state
        self._pending = pending

    def __call__(self, seq: int, encode: Callable[[Snapshot], bytes]) -> Snapshot:
        """The snapshot at ``seq``, cut until ``encode(snapshot)`` fits one packet."""
        messages = [
            item for item in self._session.history.items if isinstance(item, llm.ChatMessage)
        ]
        items = [history_item(m) for m in messages[-SNAPSHOT_MAX_ITEMS:]]
        snapshot = Snapshot(
            seq=seq,
            state=self._state.info(),
            items=items,
            pending_speeches=self._pending(),
            items_truncated=True if len(messages) > len(items) else None,
        )
        if oversize(encode(snapshot)) is None:
            return snapshot
        return _cut(snapshot, encode)


def _cut(snapshot: Snapshot, encode: Callable[[Snapshot], bytes]) -> Snapshot:
    """Drop the oldest messages, then halve the lists until it fits (a rare path)."""
    items = list(snapshot.items)
    while items:
        items.pop(0)
        snapshot = snapshot.model_copy(update={"items": items, "items_truncated": True})
        if oversize(encode(snapshot)) is None:
            return snapshot
    state = snapshot.state
    pending = list(snapshot.pending_speeches)
    while True:
        entries, speeches = state.context_entries, state.pending_speeches
        if not entries and not speeches and not pending:
            return snapshot  # nothing left to cut; not reached with the protocol's limits
        state = _halved(state)
        pending = pending[: len(pending) // 2]
        snapshot = snapshot.model_copy(update={"state": state, "pending_speeches": pending})
        if oversize(encode(snapshot)) is None:
            return snapshot


def _halved(state: AgentStateInfo) -> AgentStateInfo:
    entries, speeches = state.context_entries, state.pending_speeches
    total_entries = state.context_entries_total or len(entries)
    total_speeches = state.pending_speeches_total or len(speeches)
    kept_entries, kept_speeches = entries[: len(entries) // 2], speeches[: len(speeches) // 2]
    return state.model_copy(
        update={
            "context_entries": kept_entries,
            "pending_speeches": kept_speeches,
            "context_entries_truncated": True if len(kept_entries) < total_entries else None,
            "context_entries_total": total_entries if len(kept_entries) < total_entries else None,
            "pending_speeches_truncated": True if len(kept_speeches) < total_speeches else None,
            "pending_speeches_total": (
                total_speeches if len(kept_speeches) < total_speeches else None
            ),
        }
    )

