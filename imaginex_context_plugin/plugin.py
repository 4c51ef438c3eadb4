"""Compatibility module: ``imaginex_context_plugin.plugin`` as users have imported it.

The receiver lives in :mod:`imaginex_context_plugin.receiver` (``receiver/plugin.py`` is the
guide to the hot path); this module re-exports the names it always had.
"""

from __future__ import annotations

from ._env import AGENT_CODE_ENV
from ._env import LIVEKIT_API_SECRET_ENV as SERVER_SECRET_ENV
from .receiver.jobs import SERVER_SENDER
from .receiver.outbox import DRAIN_TIMEOUT_S, MAX_OUTBOUND_ANSWERS, AckTransport
from .receiver.plugin import ContextPlugin
from .receiver.session_gate import DEFAULT_READY_TIMEOUT_S
from .receiver.stats import PluginStats
from .receiver.work_queue import DEFAULT_MAX_QUEUE

__all__ = [
    "AGENT_CODE_ENV",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_READY_TIMEOUT_S",
    "DRAIN_TIMEOUT_S",
    "MAX_OUTBOUND_ANSWERS",
    "SERVER_SECRET_ENV",
    "SERVER_SENDER",
    "AckTransport",
    "ContextPlugin",
    "PluginStats",
]
