"""What travels through the receiver between admission and the answer.

A :class:`Job` is one admitted request on its way to the session; :class:`Housekeeping` is work
the session's own events put on the same queue (an agent handoff, an expired entry, the end of a
turn), so that only the consumer ever touches the session. :class:`Success` is a success ack
already encoded: it is made once, sent as is and remembered as is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

from ..protocol import ErrorAck, Request

SERVER_SENDER: Final = "<server>"
"""Rate-limit and dedup key for packets sent through the server API (no participant)."""


class Success(NamedTuple):
    """A success ack as the JSON bytes that go on the wire."""

    payload: bytes
    duplicate: bool = False
    """A repeat of an applied request answered with its first ack: nothing was applied."""


Answer = Success | ErrorAck
"""What every job ends with: a success ack (encoded) or an error ack (a model: its code is
counted and logged before it is encoded)."""


@dataclass(eq=False, slots=True)
class Job:
    """One admitted request waiting to be applied and answered exactly once."""

    request: Request
    sender: str | None  # participant identity; None for the server API
    reply: asyncio.Future[Answer] | None = None  # set for RPC: the ack is the response
    # a signed envelope seen before: applied never, answered as a duplicate only if its request
    # was already applied (a relay retrying), else refused as a replay
    replayed: bool = False
    answered: bool = False
    # who the message counts as when that is not ``sender``: the ``sender`` a signed envelope
    # names (gateway replicas relay under distinct identities but are one sender). It owns the
    # message's dedup key and its speech (a cancel through another replica finds it).
    counted_as: str | None = None
    # (owner, id): a repeat within the dedup window is answered, not applied again. Set once:
    # it is read at batching, at the dedup check and when the ack is remembered.
    dedup_key: tuple[str, str] | None = field(init=False)
    # what makes a repeat "the same request": every field of the request (not the envelope).
    # The frozen model's hash of its field values is cheap and, within this process, as good
    # as a digest; a mismatch under the same id is refused with ID_REUSED.
    fingerprint: int = field(init=False)
    # whether it joins a batch of context changes (one chat context update per burst)
    changes_context: bool = field(init=False)

    def __post_init__(self) -> None:
        request = self.request
        rid = request.id
        # the discriminator, not isinstance against the union: this runs for every message
        kind = request.type
        self.changes_context = kind == "add_context" or kind == "remove_context"
        # get_state / get_history change nothing: a repeat is answered with what is there now
        if rid is None or kind == "get_state" or kind == "get_history":
            self.dedup_key = None
            self.fingerprint = 0
        else:
            owner = self.owner
            self.dedup_key = (owner if owner is not None else SERVER_SENDER, rid)
            self.fingerprint = hash(request)

    @property
    def owner(self) -> str | None:
        """Who the message counts as: the signed sender if named, else the relaying identity
        (None: the server API). Answers always go to ``sender``."""
        return self.counted_as if self.counted_as is not None else self.sender


@dataclass(eq=False, slots=True)
class Housekeeping:
    """Context upkeep the consumer does between jobs, in arrival order with them."""

    kind: Literal["handoff", "expire", "turn_end"]
    at: float = 0.0
