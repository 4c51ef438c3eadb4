"""The receiver's counters: what a health check or a benchmark reads (``ContextPlugin.stats``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PluginStats:
    """Counters a health check or a benchmark can read (``ContextPlugin.stats``)."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    acks_sent: int = 0
    ack_failures: int = 0
    answers_dropped: int = 0
    """Answers not sent because the outbound queue was full (``MAX_OUTBOUND_ANSWERS``)."""
    events_sent: int = 0
    """Session events sent to subscribers."""
    events_dropped: int = 0
    """Session events a subscriber lost because it fell behind (``SUBSCRIBER_QUEUE_SIZE``)."""
    errors: dict[str, int] = field(default_factory=dict)
