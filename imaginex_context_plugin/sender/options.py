"""The sender's options and their defaults, named once."""

from __future__ import annotations

import os
from typing import Final, Literal, TypedDict

from ..protocol import SpeakMode
from ..security import DEDUP_WINDOW_S

Via = Literal["rpc", "data"]
"""How requests reach the agent: ``"rpc"`` (``perform_rpc``) or ``"data"`` (data packets)."""

DEFAULT_VIA: Final[Via] = "rpc"
DEFAULT_TIMEOUT_S: Final = 5.0
"""Seconds to wait for the ack to one attempt."""
DEFAULT_RETRIES: Final = 2
"""Attempts after the first one, for failures that may pass (see ``ContextError.retryable``)."""
DEFAULT_BACKOFF_S: Final = 0.25
"""First delay between attempts; it doubles each time (with jitter), up to ``MAX_BACKOFF_S``."""
MAX_BACKOFF_S: Final = 5.0
MAX_RETRY_AFTER_S: Final = 30.0
"""The longest ``retry_after`` from a RATE_LIMITED ack the client waits before retrying."""
FIRST_CONTACT_RESEND_S: Final = 0.5
"""Data packets to an agent that has not answered us yet are sent again this often."""
DEFAULT_AGENT_TIMEOUT_S: Final = 10.0
"""Seconds to wait for the agent participant to appear in the room."""
DEFAULT_PLAYOUT_TIMEOUT_S: Final = 120.0
"""Seconds to wait for ``speech_finished`` after the ack, with ``wait_for_playout=True``."""
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
SENDER_IDENTITY_PREFIX: Final = "imaginex-sender-"
"""``connect()`` without an identity joins as this prefix plus 8 random hex digits."""
EVENT_MEMORY_S: Final = DEDUP_WINDOW_S
"""How long the agent an id went to, and its speech_finished, are remembered."""
EVENT_MEMORY_MAX: Final = 4_096


class ClientOptions(TypedDict, total=False):
    """The keyword options of :class:`ContextClient`, which :meth:`ContextClient.connect` takes too.

    Each is documented once, on :class:`ContextClient`.
    """

    agent_identity: str | None
    agent_code: str | None
    via: Via
    secret: str | bytes | None
    timeout: float
    retries: int
    backoff: float
    agent_timeout: float
    playout_timeout: float


class SpeakOptions(TypedDict, total=False):
    """The keyword options of :meth:`ContextClient.speak` besides ``wait_for_playout``.

    Named once so that the three typed forms of ``speak`` (by ``wait_for_playout``) share them;
    each is documented on :meth:`ContextClient.speak`.
    """

    instructions: str | None
    id: str | None
    allow_interruptions: bool
    interrupt: bool
    mode: SpeakMode | None
    end_call_after: bool
    add_to_history: bool
    start_within_s: float | None
    audio: bytes | str | os.PathLike[str] | None
    audio_mime_type: str | None
    timeout: float | None
    playout_timeout: float | None
