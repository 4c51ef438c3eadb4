"""The console's routes, mounted on the gateway's application by ``create_app(console=...)``.

- ``GET /console``: the page; ``GET /console/assets/{name}``: its script, styles, icon;
- ``POST /console/api/login``, ``GET /console/api/session``, ``POST /console/api/logout``;
- ``GET /console/api/calls``: the tenant's live calls;
- ``POST /console/api/takeover``: a LiveKit token to take a call over by voice;
- ``/console/api/v1/agent/{agent_code}/...``: the REST API's own routes (speak, add-context,
  the call-control endpoints, the events stream), the same handlers admitting the caller by
  its console session instead of its ``api-secret``.

Every answer carries the console's security headers (a strict Content-Security-Policy among
them). An events stream ends when its session is signed out, and within
``ConsoleOptions.stream_check_s`` of the session's end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from ....errors import BackendError, ErrorCode, StateUnavailable
from ....log import logger
from ...models import NonBlank
from ...refusals import STATUS_FOR, Refusal
from ..body import BodyReader
from ..fanout import FanOut
from ..gatekeeper import Admission
from .assets import ConsoleAssets, content_security_policy, security_headers
from .console_options import ConsoleOptions
from .live_calls import CallsView
from .signin import ConsoleAdmission, ConsoleSignIn
from .takeover import operator_token

__all__ = ["CONSOLE_API", "CONSOLE_PATH", "ApiRoute", "ConsoleRoutes"]

CONSOLE_PATH: Final = "/console"
CONSOLE_API: Final = "/console/api"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ApiRoute = tuple[str, str, Handler]
"""(method, path, handler) of one REST API route."""


class TakeoverBody(BaseModel):
    """``POST /console/api/takeover``: the call to take over."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    agent_code: NonBlank
    room_id: NonBlank


class ConsoleRoutes:
    """The console's handlers and what they share (sign-in, calls, open streams).

    Args:
        options: The console's settings.
        sign_in: Sessions.
        admission: Admits the mirrored API routes by session.
        fanout: Finds the agent of a call to take over.
        bodies: Reads request bodies.
    """

    def __init__(
        self,
        options: ConsoleOptions,
        *,
        sign_in: ConsoleSignIn,
        admission: ConsoleAdmission,
        fanout: FanOut,
        bodies: BodyReader,
    ) -> None:
        self._options = options
        self._sign_in = sign_in
        self._admission = admission
        self._fanout = fanout
        self._bodies = bodies
        self._calls = CallsView(options.room_directory(), ttl=options.calls_ttl_s)
        self._headers = security_headers(content_security_policy(options.browser_livekit_url))
        self.assets = ConsoleAssets(self._headers)
        self._streams: dict[str, set[asyncio.Task[object]]] = {}
        self._checker: asyncio.Task[None] | None = None

    @property
    def admission(self) -> Admission:
        return self._admission

    @property
    def headers(self) -> dict[str, str]:
        """The security headers of every console answer."""
        return self._headers

    def mount(self, app: web.Application, api_routes: list[ApiRoute]) -> None:
        """Add the console's routes to ``app``; ``api_routes`` are the REST API's routes built
        with the console's admission, served under ``/console/api``."""
        app.router.add_get(CONSOLE_PATH, self.assets.page)
        app.router.add_get(CONSOLE_PATH + "/", self._to_page)
        app.router.add_get(CONSOLE_PATH + "/assets/{name}", self.assets.asset)
        app.router.add_post(CONSOLE_API + "/login", self._guarded(self._sign_in.login))
        app.router.add_get(CONSOLE_API + "/session", self._guarded(self._sign_in.session))
        app.router.add_post(CONSOLE_API + "/logout", self._guarded(self._logout))
        app.router.add_get(CONSOLE_API + "/calls", self._guarded(self._list_calls))
        app.router.add_post(CONSOLE_API + "/takeover", self._guarded(self._takeover))
        for method, path, handler in api_routes:
            if method == "GET":  # the events stream: ended with its session
                handler = self._tracked(handler)
            app.router.add_route(method, CONSOLE_API + path, self._guarded(handler))
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._close)

    async def _to_page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=308, headers={**self._headers, "Location": CONSOLE_PATH})

    def _guarded(self, handler: Handler) -> Handler:
        """``handler`` with the console's headers on its answer, errors included."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except Refusal as refusal:
                refusal.headers = {**self._headers, "Cache-Control": "no-store", **refusal.headers}
                raise
            if not response.prepared:  # a stream has sent its own already
                response.headers.update(self._headers)
                response.headers.setdefault("Cache-Control", "no-store")
            return response

        return guarded

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        signed_in = await self._sign_in.current(request)
        response = await self._sign_in.logout(request)
        self._end_streams(signed_in.key)
        return response

    async def _list_calls(self, request: web.Request) -> web.StreamResponse:
        signed_in = await self._sign_in.current(request)
        try:
            calls = await self._calls.calls_for(signed_in.principal)
        except BackendError as exc:
            raise Refusal(STATUS_FOR[exc.code], exc.code.value, exc.message) from None
        return web.json_response({"calls": [call.to_json() for call in calls]})

    async def _takeover(self, request: web.Request) -> web.StreamResponse:
        signed_in = await self._sign_in.current(request)
        body = await self._bodies.read(request, TakeoverBody)
        principal = await self._admission.admit_signed_in(signed_in, body.agent_code)
        [target] = await self._fanout.targets(body.agent_code, body.room_id)
        if target.refusal is not None:
            raise Refusal(404, ErrorCode.AGENT_NOT_FOUND.value, target.refusal)
        token = operator_token(
            self._options.livekit,
            url=self._options.browser_livekit_url,
            room=target.room,
            tenant=principal.name,
        )
        logger.info(
            "console take-over token minted",
            extra={"room": target.room, "tenant": principal.name, "identity": token.identity},
        )
        return web.json_response(token.to_json())

    def _tracked(self, handler: Handler) -> Handler:
        """An events stream that its session's end (or sign-out) cuts short."""

        async def tracked(request: web.Request) -> web.StreamResponse:
            signed_in = await self._sign_in.current(request)
            task = asyncio.current_task()
            assert task is not None
            streams = self._streams.setdefault(signed_in.key, set())
            streams.add(task)
            try:
                return await handler(request)
            finally:
                streams.discard(task)
                if not streams:
                    self._streams.pop(signed_in.key, None)

        return tracked

    def _end_streams(self, key: str) -> None:
        for task in self._streams.pop(key, set()):
            task.cancel()

    async def _start(self, app: web.Application) -> None:
        self._checker = asyncio.get_running_loop().create_task(
            self._check_streams(), name="imaginex_console.stream_sessions"
        )

    async def _check_streams(self) -> None:
        while True:
            await asyncio.sleep(self._options.stream_check_s)
            for key in list(self._streams):
                try:
                    alive = await self._sign_in.store.touch(key, idle_s=self._sign_in.idle_s)
                except StateUnavailable:
                    continue  # not known to have ended: checked again next time
                if alive is None:
                    self._end_streams(key)

    async def _close(self, app: web.Application) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        for key in list(self._streams):
            self._end_streams(key)
        await self._calls.aclose()

