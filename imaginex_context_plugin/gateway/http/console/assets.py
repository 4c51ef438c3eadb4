"""The console's page and its static files, shipped built inside the package (``static/``).

They are built from the TypeScript sources in ``js/console/`` (``node js/console/build.mjs``)
and committed, so running the gateway needs no Node; ``tests/test_console_assets.py`` fails
when the committed build is not what the sources build to. Every file is read once, kept in
memory with its gzip form and an ``ETag``, and served with the console's security headers.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

__all__ = [
    "INDEX",
    "ConsoleAssets",
    "content_security_policy",
    "security_headers",
]

INDEX: Final = "index.html"
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


def content_security_policy(livekit_url: str) -> str:
    """The console's Content-Security-Policy: its own origin for everything, no inline script
    or style, no frames, no plugins; ``connect-src`` adds the LiveKit server (the take-over's
    signalling connection, ``ws``/``wss`` and its ``http``/``https`` twin)."""
    parts = urlsplit(livekit_url)
    secure = parts.scheme in ("wss", "https")
    host = parts.netloc
    livekit = f"{'wss' if secure else 'ws'}://{host} {'https' if secure else 'http'}://{host}"
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src 'self' {livekit}",
            "media-src 'self' blob:",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def security_headers(csp: str) -> dict[str, str]:
    """The headers every console answer carries (the page, its files, its API)."""
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "microphone=(self), camera=(), geolocation=(), payment=()",
    }


class ConsoleAssets:
    """Serves ``static/``: the page at ``/console``, its files at ``/console/assets/<name>``.

    Args:
        headers: The security headers added to every answer.
    """

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers
        self._assets: dict[str, _Asset] | None = None

    def _load(self) -> dict[str, _Asset]:
        if self._assets is None:
            folder = resources.files(__package__).joinpath("static")
            assets = {}
            for entry in folder.iterdir():
                if not entry.is_file() or entry.name.startswith("."):
                    continue
                body = entry.read_bytes()
                suffix = entry.name[entry.name.rfind(".") :]
                kind = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0]
                assets[entry.name] = _Asset(
                    body=body,
                    gzipped=gzip.compress(body, compresslevel=9, mtime=0),
                    content_type=kind or "application/octet-stream",
                    etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
                )
            self._assets = assets
        return self._assets

    @property
    def names(self) -> list[str]:
        """The files served (the page included)."""
        return sorted(self._load())

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request, INDEX, cache="no-store")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == INDEX or name not in self._load():
            raise web.HTTPNotFound(headers=self._headers)
        # no hashed names: a browser revalidates (a 304 costs one round trip), never runs a
        # stale script after an upgrade
        return self._serve(request, name, cache="no-cache")

    def _serve(self, request: web.Request, name: str, *, cache: str) -> web.StreamResponse:
        asset = self._load()[name]
        headers = {**self._headers, "Cache-Control": cache, "ETag": asset.etag}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        body = asset.body
        headers["Vary"] = "Accept-Encoding"
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        headers["Content-Type"] = asset.content_type
        return web.Response(body=body, headers=headers)
