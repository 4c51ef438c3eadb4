"""The operator console: ``GET /console`` on the gateway, a page to watch and steer live calls.

A supervisor signs in with the tenant's api-secret (exchanged once for a short-lived session
cookie), sees the tenant's live calls, opens one to follow its transcript, state, context and
pending speeches, sends any control through the gateway's own REST API routes (admitted by the
session), and can take the call over by voice and hand it back. The page is built from
TypeScript (``js/console/``) and shipped here, built (``static/``).
"""

from __future__ import annotations

from .console_options import ConsoleOptions
from .endpoints import CONSOLE_API, CONSOLE_PATH, ApiRoute, ConsoleRoutes
from .live_calls import AGENT_STATE_ATTRIBUTE, Call, CallsView
from .sessions import (
    CSRF_HEADER,
    DEFAULT_SESSION_IDLE_S,
    DEFAULT_SESSION_MAX_S,
    SESSION_COOKIE,
    ConsoleSession,
    MemorySessions,
    SessionStore,
)
from .signin import ConsoleAdmission, ConsoleSignIn
from .takeover import OPERATOR_ATTRIBUTE, OPERATOR_IDENTITY_PREFIX, operator_token

__all__ = [
    "AGENT_STATE_ATTRIBUTE",
    "CONSOLE_API",
    "CONSOLE_PATH",
    "CSRF_HEADER",
    "DEFAULT_SESSION_IDLE_S",
    "DEFAULT_SESSION_MAX_S",
    "OPERATOR_ATTRIBUTE",
    "OPERATOR_IDENTITY_PREFIX",
    "SESSION_COOKIE",
    "ApiRoute",
    "Call",
    "CallsView",
    "ConsoleAdmission",
    "ConsoleOptions",
    "ConsoleRoutes",
    "ConsoleSession",
    "ConsoleSignIn",
    "MemorySessions",
    "SessionStore",
    "operator_token",
]
