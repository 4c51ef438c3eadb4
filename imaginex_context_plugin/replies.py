"""Answers over HTTP for packets sent through the server API: the reply's signature and which
URLs an agent may post to.

A packet sent with ``RoomService.SendData`` reaches the agent with no participant, so there is
nobody in the room to answer. The gateway then names a URL in the signed envelope
(``reply_to``, covered by the HMAC, see ``security.sign_request``) and the agent posts its ack
there, signed with the same secret:

    POST {reply_to}
    Content-Type: application/json
    X-Imaginex-Timestamp: {timestamp}            (unix seconds)
    X-Imaginex-Signature: {signature}            (lowercase hex)
    body = {"room": room name, "ack": the ack JSON, as a string}

    signature = HMAC-SHA256(key=secret, msg=f"imaginex-answer-v1.{timestamp}.".encode() + body)

The prefix keeps a reply's signature from ever being taken for a request's (and the other way
round): a request's signed message starts with digits, ``imaginex-sender-v1.`` or
``imaginex-reply-v1.``. The agent only posts to a URL under one of the prefixes it was given
(``ContextPlugin(reply_urls=...)``; none by default), so a key holder cannot make it call
arbitrary addresses, and the gateway only takes a reply that matches a delivery it is waiting
for.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import SplitResult, urlsplit

REPLY_TIMESTAMP_HEADER: Final = "X-Imaginex-Timestamp"
REPLY_SIGNATURE_HEADER: Final = "X-Imaginex-Signature"
ANSWER_SIGNATURE_PREFIX: Final = b"imaginex-answer-v1."
"""What a reply's signed message starts with (see the module docstring)."""
REPLY_URL_NOT_ALLOWED: Final = "REPLY_URL_NOT_ALLOWED"
"""Counted in ``PluginStats.errors`` (and logged) for a signed packet whose ``reply_to`` the
agent does not allow: the request is refused and nothing is sent anywhere."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def reply_signature(body: bytes, timestamp: int, secret: str | bytes) -> str:
    """The ``X-Imaginex-Signature`` of a reply ``body`` sent at ``timestamp``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    message = ANSWER_SIGNATURE_PREFIX + str(timestamp).encode() + b"." + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def reply_signature_valid(
    body: bytes, timestamp: int, signature: str, keys: Iterable[str | bytes]
) -> bool:
    """Whether ``signature`` was made over ``body`` and ``timestamp`` with one of ``keys``."""
    if not signature.isascii():
        return False
    given = signature.lower()
    return any(
        hmac.compare_digest(reply_signature(body, timestamp, key), given) for key in keys
    )


class ReplyUrls:
    """The URL prefixes an agent may post answers to.

    A URL is allowed when its scheme, host and port equal a prefix's and its path starts with
    the prefix's path. Prefixes must be absolute ``http``/``https`` URLs whose path ends with
    ``/``, so that ``http://gw:8089/`` cannot be extended to ``http://gw:8089.evil/``. URLs with
    user info, a fragment or dot segments are never allowed.

    Args:
        prefixes: The allowed prefixes, e.g. ``["http://gateway.internal:8089/v1/internal/"]``.

    Raises:
        ValueError: A prefix is not such a URL.
    """

    def __init__(self, prefixes: Sequence[str]) -> None:
        parsed: list[tuple[str, str, int, str]] = []
        for prefix in prefixes:
            parts = _parts(prefix)
            if parts is None or not parts[3].endswith("/"):
                raise ValueError(
                    f"reply URL prefix {prefix!r} must be an http(s) URL with a host, no user "
                    "info, query or fragment, and a path ending with '/'"
                )
            parsed.append(parts)
        self._prefixes = tuple(parsed)

    def __bool__(self) -> bool:
        return bool(self._prefixes)

    def allows(self, url: str) -> bool:
        """Whether answers may be posted to ``url``."""
        parts = _parts(url)
        if parts is None:
            return False
        scheme, host, port, path = parts
        return any(
            scheme == p_scheme and host == p_host and port == p_port and path.startswith(p_path)
            for p_scheme, p_host, p_port, p_path in self._prefixes
        )


def _parts(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path) of an acceptable URL, else None."""
    try:
        split: SplitResult = urlsplit(url)
        port = split.port
    except ValueError:
        return None
    scheme = split.scheme.lower()
    host = (split.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or split.username is not None:
        return None
    if split.password is not None or split.fragment or split.query or "\\" in url:
        return None
    path = split.path or "/"
    # a dot segment could climb out of the allowed path once the client normalises it
    if any(segment in (".", "..") or "%" in segment for segment in path.split("/")):
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme], path
