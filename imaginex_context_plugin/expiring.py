"""A bounded map whose entries expire: the memory behind dedup, replay and lookup windows."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

_V = TypeVar("_V")


class ExpiringCache(Generic[_V]):
    """A bounded insertion-ordered map whose entries expire after ``ttl_s`` seconds.

    Insertion order is expiry order (one ttl for all), so expiring is popping from the front:
    O(1) amortised per operation, and the size never exceeds ``max_entries``. Only the calls
    that add or count entries expire the front; lookups check the entry's own deadline, so a
    lookup followed by a store (the dedup path: once per message) walks the front once.
    """

    def __init__(
        self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[Any, tuple[float, _V]] = OrderedDict()

    def _expire(self, now: float) -> None:
        items = self._items
        while items:
            first = next(iter(items.values()))
            if first[0] > now and len(items) <= self._max_entries:
                break
            items.popitem(last=False)

    def get(self, key: Any) -> _V | None:
        hit = self._items.get(key)
        # an entry past its deadline is as good as gone; the next put lets it go
        return None if hit is None or hit[0] <= self._clock() else hit[1]

    def __contains__(self, key: Any) -> bool:
        hit = self._items.get(key)
        return hit is not None and hit[0] > self._clock()

    def put(self, key: Any, value: _V) -> None:
        """Store ``value``; when full, the oldest entry is forgotten even if it is still live."""
        now = self._clock()
        self._items.pop(key, None)
        self._items[key] = (now + self._ttl_s, value)
        self._expire(now)

    def put_if_room(self, key: Any, value: _V) -> bool:
        """Store ``value`` unless that would forget a live entry; False when full."""
        now = self._clock()
        self._expire(now)
        items = self._items
        if key not in items and len(items) >= self._max_entries:
            return False
        items.pop(key, None)
        items[key] = (now + self._ttl_s, value)
        return True

    def free(self) -> int:
        """How many more entries fit without forgetting a live one."""
        self._expire(self._clock())
        return self._max_entries - len(self._items)

    def seconds_until_room(self) -> float:
        """Seconds until the oldest entry expires (0 when there is room now)."""
        now = self._clock()
        self._expire(now)
        if len(self._items) < self._max_entries or not self._items:
            return 0.0
        return max(0.0, next(iter(self._items.values()))[0] - now)

    def __len__(self) -> int:
        return len(self._items)
