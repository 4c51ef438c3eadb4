"""The context the plugin adds to the agent: keyed entries, a budget, and re-application.

The store is the plugin's own record of what it added. The agent's chat context is derived from
it: :meth:`ContextStore.merge_into` rewrites a list of chat items in one pass so that the
plugin's messages in it are exactly the live entries (replaced in place, removed when gone,
appended when new). Because the store, not the agent, is the record, an agent handoff loses
nothing (merge into the new agent), and nothing is ever duplicated (entries are found by their
stable chat item ids).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from livekit.agents import llm

from .protocol import ContextDropReason, ContextEntryInfo, ContextRole, ContextScope, LlmCall

ENTRY_ID_PREFIX: Final = "imaginex_ctx_"
"""Chat item ids of the plugin's messages start with this, so they can be found again."""


@dataclass(frozen=True)
class ContextBudget:
    """How much context the plugin may hold; the oldest unkeyed entries go first.

    Args:
        max_entries: Most entries held at once.
        max_chars: Most characters of context text held at once.
    """

    max_entries: int = 64
    max_chars: int = 32_000

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_chars < 1:
            raise ValueError("ContextBudget needs max_entries >= 1 and max_chars >= 1")


DEFAULT_CONTEXT_BUDGET: Final = ContextBudget()


class AddResult(NamedTuple):
    entry_id: str
    evicted: int
    """How many older entries the budget pushed out to make room."""


@dataclass(slots=True)  # one per add_context: slots make it smaller and quicker to build
class ContextEntry:
    entry_id: str
    key: str | None
    role: ContextRole
    text: str
    scope: ContextScope
    expires_at: float | None  # time.monotonic() deadline
    request_id: str | None
    created_at: float = field(default_factory=time.time)
    """Wall-clock time it was added; the ``created_at`` of its chat message."""
    slot: int = 0
    """Its place in age order (a keyed replacement keeps the slot of the entry it replaces)."""
    sender: str | None = None
    """Who added it (the identity answers go to): told ``context_used`` / ``context_dropped``."""
    v1_3: bool = False
    """Whether its sender speaks v1.3 (only those are sent the context events)."""
    reported: bool = False
    """Whether ``context_used`` or ``context_dropped`` went out for it (one of them, once)."""
    used_by: LlmCall | None = None
    """The first model request that carried it (``context_used``; ``get_state`` lists it)."""
    _message: llm.ChatMessage | None = field(default=None, repr=False, compare=False)

    @property
    def message(self) -> llm.ChatMessage:
        """The chat message the agent sees for this entry (built on first use).

        Built lazily because validating a ``ChatMessage`` is most of what adding an entry costs,
        and in a burst larger than the budget most entries are evicted before any sync.
        """
        if self._message is None:
            self._message = llm.ChatMessage(
                id=self.entry_id,
                role=self.role,
                content=[self.text],
                extra={"imaginex_context": True},
                created_at=self.created_at,
            )
        return self._message


Departure = tuple[ContextEntry, ContextDropReason]
"""An entry that left the store, and why."""


class ContextStore:
    """Ordered context entries with a budget; O(1) to add, replace or remove one.

    Changes can be made provisionally: between :meth:`begin` and :meth:`commit`, every entry
    touched is journalled once (O(1)), so :meth:`rollback` can put the store back exactly as
    it was when a change could not be applied to the agent.

    Every entry that leaves (replaced, evicted, removed, expired) is handed to ``on_departure``:
    at once outside a transaction, at :meth:`commit` inside one (a rollback brings them back,
    so they never left).
    """

    def __init__(
        self,
        budget: ContextBudget = DEFAULT_CONTEXT_BUDGET,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget = budget
        self._clock = clock
        # insertion order is age order; a keyed replacement keeps its slot ("in place")
        self._entries: dict[str, ContextEntry] = {}
        self._chars = 0
        self._serial = 0
        self._slots = 0
        self._expiring = 0  # entries with a ttl: next_expiry() is O(1) while there are none
        self._version = 0  # bumped by every change: lets a reader cache what it derives
        # entry id -> the entry as it was before the open transaction first touched it
        self._journal: dict[str, ContextEntry | None] | None = None
        self._departed: list[Departure] = []  # inside a transaction, until commit
        self.on_departure: Callable[[list[Departure]], None] | None = None
        """Told every entry that left, with why (``ContextUse``: ``context_dropped``)."""

    @property
    def budget(self) -> ContextBudget:
        return self._budget

    @property
    def chars(self) -> int:
        return self._chars

    @property
    def version(self) -> int:
        """A number that changes whenever the entries do (``get_state`` caches by it)."""
        return self._version

    @property
    def has_ttl(self) -> bool:
        """Whether an entry has a ttl: then :meth:`describe` changes with time alone."""
        return self._expiring > 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[ContextEntry]:
        return list(self._entries.values())

    def entry(self, entry_id: str) -> ContextEntry | None:
        """The live entry with this id, if any."""
        return self._entries.get(entry_id)

    def mark_used(self, entry: ContextEntry, call: LlmCall) -> None:
        """Record the first model request that carried ``entry``: ``get_state`` lists it, so
        that a sender that missed its ``context_used`` still knows. Not journalled: a use
        happened, whatever becomes of a change still open."""
        if entry.used_by is None:
            entry.used_by = call
            self._version += 1

    def begin(self) -> None:
        """Start a transaction: later changes stay provisional until commit or rollback."""
        self._journal = {}

    def commit(self) -> None:
        """Keep the changes made since :meth:`begin`."""
        self._journal = None
        departed = self._departed
        if departed:
            self._departed = []
            if self.on_departure is not None:
                self.on_departure(departed)

    def rollback(self) -> None:
        """Undo every change made since :meth:`begin`: entries, order, budget counters."""
        journal = self._journal
        self._journal = None
        self._departed = []
        if not journal:
            return
        self._version += 1
        entries = self._entries
        for entry_id, before in journal.items():
            if before is None:
                entries.pop(entry_id, None)
            else:
                entries[entry_id] = before
        # a restored entry may have gone to the end: age order is slot order. Rare path, and
        # at most the budget's entries, so it simply sorts and recounts
        self._entries = dict(sorted(entries.items(), key=lambda item: item[1].slot))
        self._chars = sum(len(e.text) for e in self._entries.values())
        self._expiring = sum(e.expires_at is not None for e in self._entries.values())

    def _journal_entry(self, entry_id: str) -> None:
        # every change journals the entry it touches first: the one place to count changes
        self._version += 1
        journal = self._journal
        if journal is not None and entry_id not in journal:
            journal[entry_id] = self._entries.get(entry_id)

    def add(
        self,
        text: str,
        *,
        role: ContextRole = "system",
        key: str | None = None,
        scope: ContextScope = "persistent",
        ttl_s: float | None = None,
        request_id: str | None = None,
        sender: str | None = None,
        v1_3: bool = False,
    ) -> AddResult:
        """Add or replace an entry, then enforce the budget.

        Raises:
            ValueError: The text alone is larger than the whole character budget.
        """
        if len(text) > self._budget.max_chars:
            raise ValueError(
                f"Context is longer than the context budget of {self._budget.max_chars} characters."
            )
        if key is not None:
            entry_id = ENTRY_ID_PREFIX + "key_" + key
        else:
            self._serial += 1
            entry_id = f"{ENTRY_ID_PREFIX}{self._serial}"
        old = self._entries.get(entry_id)
        if old is not None:
            slot = old.slot
            self._chars -= len(old.text)
            self._expiring -= old.expires_at is not None
        else:
            self._slots += 1
            slot = self._slots
        entry = ContextEntry(
            entry_id=entry_id,
            key=key,
            role=role,
            text=text,
            scope=scope,
            expires_at=None if ttl_s is None else self._clock() + ttl_s,
            request_id=request_id,
            slot=slot,
            sender=sender,
            v1_3=v1_3,
        )
        self._journal_entry(entry_id)
        if old is not None:
            self._depart(old, "replaced")
        self._entries[entry_id] = entry  # an existing key keeps its position
        self._chars += len(text)
        self._expiring += entry.expires_at is not None
        return AddResult(entry_id, self._enforce_budget(keep=entry_id))

    def _enforce_budget(self, *, keep: str) -> int:
        budget = self._budget
        evicted = 0
        while len(self._entries) > budget.max_entries or self._chars > budget.max_chars:
            # a plain loop rather than next(<generator>): once the budget is full this runs for
            # every message, and the oldest entry is usually the unkeyed one wanted
            victim: ContextEntry | None = None
            for entry in self._entries.values():
                if entry.key is None:
                    victim = entry
                    break
            if victim is None or victim.entry_id == keep:
                # only keyed entries left (or the new one is the oldest unkeyed): oldest other
                victim = next(e for e in self._entries.values() if e.entry_id != keep)
            self._drop(victim.entry_id, "evicted")
            evicted += 1
        return evicted

    def _drop(self, entry_id: str, reason: ContextDropReason) -> None:
        self._journal_entry(entry_id)
        entry = self._entries.pop(entry_id)
        self._chars -= len(entry.text)
        self._expiring -= entry.expires_at is not None
        self._depart(entry, reason)

    def _depart(self, entry: ContextEntry, reason: ContextDropReason) -> None:
        if entry.reported:  # it was used: nothing more to say about it
            return
        if self._journal is not None:
            self._departed.append((entry, reason))
        elif self.on_departure is not None:
            self.on_departure([(entry, reason)])

    def remove_key(self, key: str) -> bool:
        entry_id = ENTRY_ID_PREFIX + "key_" + key
        if entry_id not in self._entries:
            return False
        self._drop(entry_id, "removed")
        return True

    def remove_where(
        self, predicate: Callable[[ContextEntry], bool], reason: ContextDropReason = "removed"
    ) -> int:
        doomed = [e.entry_id for e in self._entries.values() if predicate(e)]
        for entry_id in doomed:
            self._drop(entry_id, reason)
        return len(doomed)

    def expire(self) -> int:
        """Drop entries whose ttl has passed. Returns how many."""
        now = self._clock()
        return self.remove_where(
            lambda e: e.expires_at is not None and e.expires_at <= now, "expired"
        )

    def next_expiry(self) -> float | None:
        if not self._expiring:
            return None
        deadlines = [e.expires_at for e in self._entries.values() if e.expires_at is not None]
        return min(deadlines) if deadlines else None

    def drop_next_turn(self, *, added_before: float) -> int:
        """Drop ``next_turn`` entries the agent has now replied with (added before the reply)."""
        return self.remove_where(
            lambda e: e.scope == "next_turn" and e.created_at <= added_before, "expired"
        )

    def merge_into(self, items: Iterable[llm.ChatItem]) -> list[llm.ChatItem]:
        """Chat items with the plugin's messages made equal to the live entries, in one pass.

        Items that are not the plugin's pass through untouched and in order. A live entry already
        present is swapped for its current message at the same position (a keyed replacement
        stays where it was); a present entry that is gone is dropped; new entries go at the end,
        oldest first.
        """
        pending = dict(self._entries)  # live entries not placed yet, oldest first
        merged: list[llm.ChatItem] = []
        # runs over the whole chat context at every sync: bound methods hoisted out of the loop
        take, append = pending.pop, merged.append
        for item in items:
            item_id = item.id
            entry = take(item_id, None)
            if entry is not None:
                message = entry._message
                append(message if message is not None else entry.message)
            elif not item_id.startswith(ENTRY_ID_PREFIX):
                append(item)
            # else: the plugin's, and gone or already placed: dropped
        if pending:
            merged.extend(e.message for e in pending.values())
        return merged

    def describe(self) -> list[ContextEntryInfo]:
        now = self._clock()
        return [
            ContextEntryInfo(
                entry_id=e.entry_id,
                key=e.key,
                role=e.role,
                chars=len(e.text),
                scope=e.scope,
                expires_in_s=None
                if e.expires_at is None
                else round(max(0.0, e.expires_at - now), 3),
                request_id=e.request_id,
                used=e.used_by,
            )
            for e in self._entries.values()
        ]
