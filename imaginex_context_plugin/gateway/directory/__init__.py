"""The agent directory: which rooms each agent code is live in, kept without asking LiveKit.

``agent_directory`` is the seam and its rules, ``memory_directory`` and ``redis_directory`` the
two stores (the same rules, one contract test), ``sync`` what keeps it true (webhooks, re-checks,
reconciliation), ``webhook`` the route LiveKit's webhooks reach.
"""

from __future__ import annotations

from .agent_directory import AgentDirectory, Presence
from .memory_directory import MemoryAgentDirectory
from .redis_directory import RedisAgentDirectory
from .sync import DEFAULT_RECONCILE_INTERVAL_S, DirectorySync
from .webhook import WEBHOOK_PATH, LiveKitWebhook

__all__ = [
    "DEFAULT_RECONCILE_INTERVAL_S",
    "WEBHOOK_PATH",
    "AgentDirectory",
    "DirectorySync",
    "LiveKitWebhook",
    "MemoryAgentDirectory",
    "Presence",
    "RedisAgentDirectory",
]
