"""Who may drive the agent, how often, and how a message is applied only once.

Everything here is synchronous and O(1) per message, because it runs inside the room's data
callback before a message is queued. Every table is bounded, so a flooding sender costs a fixed
amount of memory whatever it sends.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from json.encoder import encode_basestring_ascii as _json_string
from typing import Final

from .errors import did_you_mean
from .expiring import ExpiringCache
from .protocol import MESSAGE_TYPES, SENDER_SIGNATURE_PREFIX

SIGNATURE_WINDOW_S: Final = 300.0
"""Signed messages older or newer than this (seconds) are refused."""
DEDUP_WINDOW_S: Final = 600.0
"""The same request id from the same sender within this many seconds is applied once."""
DEDUP_MIN_ENTRIES: Final = 10_000
"""Fewest ids (or signatures) a table remembers, whatever the rate limit."""
DEDUP_MAX_ENTRIES: Final = 50_000
"""Most ids (or signatures) a table remembers (about 25 MB of first acks at most)."""
DEDUP_SENDERS_AT_FULL_RATE: Final = 4
"""A table holds this many senders each sending at its full rate limit for a whole window."""
RATE_LIMIT_MAX_SENDERS: Final = 4_096

ENVELOPE_START: Final = '{"type":"signed","body":"'
"""How every envelope :func:`sign_request` writes begins (compact JSON, ``type`` first, then
the body as a JSON string)."""


def sign_request(
    body: str | bytes,
    secret: str | bytes,
    *,
    timestamp: int | None = None,
    sender: str | None = None,
) -> str:
    """Wrap request JSON in a signed envelope, ready to send.

    The scheme, so that any language can implement it::

        timestamp = current unix time in whole seconds
        without a sender (v1):
            message = f"{timestamp}.{body}"
        with a sender:
            message = f"imaginex-sender-v1.{timestamp}.{n}.{sender}.{body}"
            where n = the length of sender in UTF-8 bytes, in decimal
        signature = lowercase hex of HMAC-SHA256(key=secret, msg=message as UTF-8)
        packet    = {"type": "signed", "body": body, "timestamp": timestamp,
                     "signature": signature}            (plus "sender": sender, if given)

    ``body`` is the request JSON text itself, carried as a JSON string, so the receiver checks
    the exact bytes that were signed. The two messages cannot be confused: a v1 message starts
    with the timestamp's digits (or ``-``), one with a sender with a letter; and the sender's
    byte length says exactly where it ends, whatever characters it holds (dots included). So a
    signature made for one sender is worthless for another, or for none.

    ``sender``: who the message comes from, vouched for by whoever holds the secret. The
    receiver deduplicates, rate limits and checks permissions by it instead of the participant
    that relayed the packet, so several relays (gateway replicas, which must have distinct
    participant identities) sending one request id count as one sender and it is applied once.

    Args:
        body: The request JSON (text or UTF-8 bytes).
        secret: The secret shared with the receiver (``ContextPlugin(secret=...)``).
        timestamp: Unix seconds; the current time when omitted.
        sender: The sender the receiver counts the message as (1 to 128 visible characters).
            Default: none, the v1 envelope; the relaying participant is the sender.

    Returns:
        The envelope JSON to publish on the context topic or send over RPC.
    """
    body_text = body.decode("utf-8") if isinstance(body, bytes) else body
    ts = int(time.time()) if timestamp is None else timestamp
    signature = compute_signature(body_text, ts, secret, sender=sender)
    # written by hand, byte for byte what json.dumps(separators=(",", ":")) writes for the
    # same dict (a test holds them equal): json.dumps with options builds a new encoder at
    # every call
    escaped: str = _json_string(body_text)[1:-1]
    return (
        ENVELOPE_START
        + escaped
        + _after_body(ts)
        + signature
        + _envelope_end(sender)
    )


GIL_HELD_BYTES: Final = 2047
"""The most bytes hashed in one HMAC update (see :func:`hmac_sha256_hex`)."""


def _update_holding_gil(mac: hmac.HMAC, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), GIL_HELD_BYTES):
        mac.update(view[start : start + GIL_HELD_BYTES])


def _keyed(secret: str | bytes) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with ``secret`` (UTF-8 if text), to copy per message: the key's
    setup is then paid once (:func:`hmac_sha256_hex`)."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, digestmod="sha256")


def hmac_sha256_hex(key: hmac.HMAC | bytes, message: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of ``message``, computed without releasing the GIL.

    ``key``: the key, or an HMAC already keyed with it (copied, so its key setup is paid
    once). CPython lets other threads run during ``hmac.digest`` and during an update of
    2048 bytes or more; in an agent's process LiveKit's FFI threads then take the GIL, and
    getting it back waits out the interpreter's switch interval (5 ms) for a hash of a few
    microseconds. Live, that made checking signatures the agents' largest cost per message
    over a bare ``say()``. Fed in pieces below that size, the hash keeps the GIL.
    """
    mac = hmac.new(key, digestmod="sha256") if isinstance(key, bytes) else key.copy()
    _update_holding_gil(mac, message)
    return mac.hexdigest()


def _after_body(timestamp: int) -> str:
    """An envelope's text from the end of the body's string to the signature's hex."""
    return f'","timestamp":{timestamp},"signature":"'


def _envelope_end(sender: str | None) -> str:
    """An envelope's text after the signature's hex."""
    return '"' + ("" if sender is None else ',"sender":' + _json_string(sender)) + "}"


def signed_message(body: str, timestamp: int, sender: str | None) -> bytes:
    """The exact bytes an envelope's HMAC covers (see :func:`sign_request`).

    Raises:
        UnicodeEncodeError: ``body`` or ``sender`` is not text (a lone surrogate).
    """
    return _message_head(timestamp, sender) + body.encode("utf-8")


def _message_head(timestamp: int, sender: str | None) -> bytes:
    """What the HMAC covers before the body."""
    if sender is None:
        return f"{timestamp}.".encode()
    who = sender.encode("utf-8")
    return f"{SENDER_SIGNATURE_PREFIX}.{timestamp}.{len(who)}.".encode() + who + b"."


class SplicedBodies:
    """Many request bodies that differ in one JSON string only, and their signed envelopes.

    A fan-out sends one request to every room, each copy naming its room: the bodies are
    ``head + json(room) + tail``. Written and signed one by one, each copy costs a model dump,
    the JSON-string escaping of the whole body and an HMAC over all of it (about a third of
    the gateway's CPU per room, ``benchmarks/bench_gateway_rooms.py``). Here the fixed parts are
    escaped once and the HMAC state after ``head`` is kept (per timestamp second), so a copy
    costs its room's part. The output is byte for byte :func:`sign_request`'s for the same
    body, timestamp and sender (a property test holds them equal).

    Args:
        head: The body's text before the varying string.
        tail: The body's text after it.
        secret: Sign with it; None: :meth:`message` returns the bare body.
        sender: As for :func:`sign_request`.
    """

    def __init__(
        self, head: str, tail: str, *, secret: str | bytes | None, sender: str | None
    ) -> None:
        self._head = head
        self._tail = tail
        # keyed once: each second's state after the head starts from a copy
        self._keyed = None if secret is None else _keyed(secret)
        self._sender = sender
        self._tail_bytes = tail.encode("utf-8")
        # a JSON string's escaping is per character, so the body's escaped text is the
        # escaped text of its parts, one after the other
        self._envelope_head = ENVELOPE_START + _json_string(head)[1:-1]
        self._escaped_tail = _json_string(tail)[1:-1]
        self._envelope_end = _envelope_end(sender)
        # per timestamp second: the HMAC after everything before the part, and the text from
        # the part to the signature
        self._timestamp: int | None = None
        self._mac: hmac.HMAC | None = None
        self._before_signature = ""

    def body(self, part: str) -> str:
        """The body with ``part`` spliced in, as a JSON string."""
        return self._head + _json_text(part) + self._tail

    def message(self, part: str, *, timestamp: int | None = None) -> str:
        """What is sent for ``part``: the signed envelope of :meth:`body` (the body itself
        without a secret)."""
        if self._keyed is None:
            return self.body(part)
        ts = int(time.time()) if timestamp is None else timestamp
        base = self._mac
        if base is None or ts != self._timestamp:
            base = self._mac = self._keyed.copy()
            _update_holding_gil(base, _message_head(ts, self._sender) + self._head.encode("utf-8"))
            self._before_signature = self._escaped_tail + _after_body(ts)
            self._timestamp = ts
        text = _json_text(part)
        signature = hmac_sha256_hex(base, text.encode("utf-8") + self._tail_bytes)
        escaped: str = _json_string(text)[1:-1]
        return (
            self._envelope_head
            + escaped
            + self._before_signature
            + signature
            + self._envelope_end
        )


def _json_text(value: str) -> str:
    """``value`` as a JSON string, written as pydantic writes a model's ``str`` field (UTF-8
    kept, quotes, backslashes and control characters escaped)."""
    return json.dumps(value, ensure_ascii=False)


def compute_signature(
    body: str,
    timestamp: int,
    secret: str | bytes,
    *,
    sender: str | None = None,
) -> str:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac_sha256_hex(key, signed_message(body, timestamp, sender))


class SignatureProblem(str, Enum):
    """Why a signed envelope was refused; the value is the sentence its answer carries."""

    MISMATCH = "The signature does not match the message."
    STALE = "The signature timestamp is outside the allowed 5 minute window."
    REPLAYED = "This signed message was already received (replay)."
    FULL = "Too many signed messages to remember at once; retry after the given seconds."


class SignatureVerifier:
    """Checks signed envelopes: the HMAC, the clock window, and that none is used twice.

    Every signature is remembered for as long as its timestamp is acceptable; when the table
    is full of such signatures, new ones are refused (``FULL``) rather than an old one
    forgotten, because a forgotten signature could be replayed.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        also: Iterable[str | bytes] = (),
        window_s: float = SIGNATURE_WINDOW_S,
        clock: Callable[[], float] = time.time,
        max_remembered: int = DEDUP_MAX_ENTRIES,
    ) -> None:
        """Args: ``secret``, and ``also``: further keys a valid signature may be made with."""
        # keyed once: each check copies the keyed state
        self._keys = tuple(_keyed(key) for key in (secret, *also))
        self._window_s = window_s
        self._clock = clock
        # every signature seen within the window; older ones would fail the clock check anyway
        self._seen: ExpiringCache[None] = ExpiringCache(
            ttl_s=2 * window_s, max_entries=max_remembered, clock=clock
        )

    def verify(
        self,
        body: str,
        timestamp: int,
        signature: str,
        *,
        sender: str | None = None,
    ) -> SignatureProblem | None:
        """Returns None when valid (and remembers it), else why it was refused.

        ``sender``: the envelope's, covered by the signature (see
        ``sign_request``).
        """
        try:
            message = signed_message(body, timestamp, sender)
        except UnicodeEncodeError:
            # a body or sender that is not text cannot have been signed as UTF-8
            return SignatureProblem.MISMATCH
        # compare_digest takes only ASCII text: anything else cannot be the hex signature
        if not signature.isascii():
            return SignatureProblem.MISMATCH
        given = signature.lower()
        for key in self._keys:
            expected = hmac_sha256_hex(key, message)
            if hmac.compare_digest(expected, given):
                break
        else:
            return SignatureProblem.MISMATCH
        if abs(self._clock() - timestamp) > self._window_s:
            return SignatureProblem.STALE
        if expected in self._seen:
            return SignatureProblem.REPLAYED
        if not self._seen.put_if_room(expected, None):
            return SignatureProblem.FULL
        return None

    def seconds_until_room(self) -> float:
        """After ``FULL``: seconds until the oldest remembered signature may be forgotten."""
        return self._seen.seconds_until_room()


def remembered_ids_capacity(limit: RateLimit | None, window_s: float) -> int:
    """How many ids (or signatures) a table must hold to remember each for its whole window.

    A sender at its full rate fills ``burst + per_second * window_s`` entries in a window;
    the table holds ``DEDUP_SENDERS_AT_FULL_RATE`` such senders, within
    ``DEDUP_MIN_ENTRIES``..``DEDUP_MAX_ENTRIES``. Without a rate limit: the maximum.
    """
    if limit is None:
        return DEDUP_MAX_ENTRIES
    per_sender = limit.burst + math.ceil(limit.per_second * window_s)
    return max(DEDUP_MIN_ENTRIES, min(DEDUP_MAX_ENTRIES, per_sender * DEDUP_SENDERS_AT_FULL_RATE))


@dataclass(frozen=True)
class RateLimit:
    """A per-sender token bucket: ``burst`` messages at once, refilled at ``per_second``."""

    per_second: float = 10.0
    burst: int = 50

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("RateLimit needs per_second > 0 and burst >= 1")


DEFAULT_RATE_LIMIT: Final = RateLimit()


class RateLimiter:
    """Token buckets keyed by sender; the least recently seen senders are forgotten first."""

    def __init__(
        self,
        limit: RateLimit,
        *,
        max_senders: int = RATE_LIMIT_MAX_SENDERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._max_senders = max_senders
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # sender -> [tokens, at]

    def __len__(self) -> int:
        """Senders with a bucket now (at most ``max_senders``)."""
        return len(self._buckets)

    def acquire(self, sender: str) -> float:
        """Take one token. Returns 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(sender)
        if bucket is None:
            bucket = [float(self._limit.burst), now]
            self._buckets[sender] = bucket
            if len(self._buckets) > self._max_senders:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(sender)
            bucket[0] = min(
                float(self._limit.burst), bucket[0] + (now - bucket[1]) * self._limit.per_second
            )
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self._limit.per_second


@dataclass(frozen=True)
class SenderPolicy:
    """Who is trusted without a signature: the allow-listed participants, nobody else.

    A packet without a participant (``identity`` None) is never trusted unsigned: a real
    LiveKit server strips a hidden participant's identity, and the Python SDK drops the
    identity of a participant it has not been told about yet, so such a packet may come from
    anyone in the room. ``trust_server`` instead admits packets signed with the LiveKit API
    secret (see ``ContextPlugin``), which only holders of that secret can make.
    """

    allowed_identities: frozenset[str]

    @classmethod
    def build(cls, allowed_identities: Iterable[str]) -> SenderPolicy:
        if isinstance(allowed_identities, str):
            raise TypeError("allowed_identities must be a list of identities, not one string")
        return cls(frozenset(allowed_identities))

    def trusts(self, identity: str | None) -> bool:
        return identity is not None and identity in self.allowed_identities


SENSITIVE_TYPES: Final = frozenset(
    {
        "end_call",
        "update_io",
        "update_instructions",
        "reset_instructions",
        "subscribe",
        "get_history",
    }
)
"""Message types no trusted sender may send unless granted (``ContextPlugin(permissions=...)``)."""
ANYONE_TYPES: Final = frozenset({"unsubscribe"})
"""Message types every trusted sender may send whatever ``permissions`` says: they only undo
something of the sender's own."""
ANY_SENDER: Final = "*"
"""In ``permissions``: any trusted sender (as an identity), every type (as a type)."""
GRANTABLE_TYPES: Final = frozenset({*MESSAGE_TYPES, ANY_SENDER})
"""What a ``permissions`` entry may name: the message types, and ``"*"`` for all of them."""


def unknown_permission(identity: str, kind: object) -> str:
    """The refusal of ``permissions={identity: {kind}}`` where ``kind`` is no message type."""
    hint = did_you_mean(kind, MESSAGE_TYPES) if isinstance(kind, str) else ""
    return (
        f"permissions[{identity!r}] names {kind!r}, which is not a message type{hint}; "
        f"use any of: {', '.join(MESSAGE_TYPES)}, or '*' for all of them."
    )


@dataclass(frozen=True)
class Permissions:
    """Which message types each trusted sender may send.

    Without a mapping (``grants`` None) every trusted sender may send every type but the
    sensitive ones (``SENSITIVE_TYPES``). With one, it is the whole truth: a sender may send
    the union of its own entry and the ``"*"`` entry, ``"*"`` as a type meaning all. A signed
    message counts as the ``sender`` its envelope names, else as the identity that relayed
    it; a server-API packet as ``"<server>"``.
    ``unsubscribe`` is always allowed.
    """

    grants: Mapping[str, frozenset[str]] | None = None

    @classmethod
    def build(cls, grants: Mapping[str, Iterable[str]] | None) -> Permissions:
        """The permissions ``ContextPlugin(permissions=...)`` describes.

        Raises:
            TypeError: An entry is one string instead of a set of types.
            ValueError: An entry names a type that does not exist: it would grant nothing,
                silently (the message names the valid types and, for ``end-call``, the
                underscore spelling meant).
        """
        if grants is None:
            return cls()
        built: dict[str, frozenset[str]] = {}
        for identity, kinds in grants.items():
            if isinstance(kinds, str):
                raise TypeError(f"permissions[{identity!r}] must be a set of types, not a string")
            built[identity] = frozenset(kinds)
            for kind in sorted(built[identity], key=str):
                if kind not in GRANTABLE_TYPES:
                    raise ValueError(unknown_permission(identity, kind))
        return cls(built)

    def allows(self, sender: str, kind: str) -> bool:
        grants = self.grants
        if grants is None:
            return kind not in SENSITIVE_TYPES
        if kind in ANYONE_TYPES:
            return True
        empty: frozenset[str] = frozenset()
        for entry in (grants.get(sender, empty), grants.get(ANY_SENDER, empty)):
            if kind in entry or ANY_SENDER in entry:
                return True
        return False

    @staticmethod
    def refusal(kind: str) -> str:
        return (
            f"This sender may not send '{kind}': it needs the '{kind}' permission "
            "(ContextPlugin(permissions=...))."
        )
