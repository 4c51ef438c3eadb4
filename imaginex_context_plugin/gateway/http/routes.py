"""The routes: each API call admitted, read, given its id, fanned out to the rooms, answered.

A request goes, in this order: throttle a client address with too many failed
authentications, authenticate the ``api-secret`` (nothing else is looked at before), rate
limit per secret, check the secret may address the agent code, read and validate
the body (size limit first), find the rooms where the agent is live, deliver to all of them at
once with a timeout, and answer with the platform's response shape plus a per-room list.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from ...version import __version__
from ..delivery.agent_backend import AgentBackend
from ..models import CONTROL_BODIES, AddContextBody, ControlBody, HealthResponse, SpeakBody
from ..refusals import Refusal, error_response, json_response
from ..state.gateway_state import GatewayState, StoredAnswer
from .body import BodyReader
from .fanout import FanOut, RoomOutcome
from .gatekeeper import Admission, Gatekeeper
from .idempotency import RETRY_MAY_CHANGE, IdempotencyKeys, Lease, replayed, to_store
from .messages import Endpoint, MessageWriter, Outgoing
from .openapi import build_openapi
from .responses import answer


class GatewayRoutes:
    """The routes: each API call is admitted, read, given its id, and fanned out to the rooms.

    Every step is a collaborator with one job; this class only puts them in order.
    """

    def __init__(
        self,
        backend: AgentBackend,
        *,
        gatekeeper: Gatekeeper,
        bodies: BodyReader,
        writer: MessageWriter,
        delivery_timeout: float,
        state: GatewayState,
        lease_s: float,
    ) -> None:
        self._backend = backend
        self._gatekeeper = gatekeeper
        self._admission: Admission = gatekeeper
        self._bodies = bodies
        self._writer = writer
        self._state = state
        # a repeat waits as long as the first request may hold its key: by then it has its
        # answer, or the lease ended and the repeat delivers itself
        self._keys = IdempotencyKeys(state.idempotency, lease_s=lease_s, wait_s=lease_s)
        self._fanout = FanOut(backend, writer=writer, delivery_timeout=delivery_timeout)
        self._timeout = delivery_timeout
        self._openapi = b"{}"
        """The OpenAPI document of the routes served (``describe`` writes it)."""

    @property
    def gatekeeper(self) -> Gatekeeper:
        return self._gatekeeper

    @property
    def bodies(self) -> BodyReader:
        return self._bodies

    def admitted_by(self, admission: Admission) -> GatewayRoutes:
        """The same routes (same keys, fan-out and state) admitting callers by ``admission``
        instead of the ``api-secret`` (the console's session)."""
        routes = copy.copy(self)
        routes._admission = admission
        return routes

    @property
    def fanout(self) -> FanOut:
        return self._fanout

    @property
    def writer(self) -> MessageWriter:
        return self._writer

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response(HealthResponse(version=__version__))

    def describe(self, *, events: bool, webhook: bool) -> None:
        """Serve the document of exactly these routes at ``/openapi.json``."""
        document = build_openapi(events=events, webhook=webhook)
        self._openapi = json.dumps(document).encode("utf-8")

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def speak(self, request: web.Request) -> web.Response:
        return await self._handle(request, "speak", SpeakBody)

    async def add_context(self, request: web.Request) -> web.Response:
        return await self._handle(request, "add-context", AddContextBody)

    def control(self, model: type[ControlBody]) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The handler of one call-control endpoint (end-call, interrupt, ...): the same steps."""
        endpoint = CONTROL_BODIES[model]

        async def handle(request: web.Request) -> web.Response:
            return await self._handle(request, endpoint, model)

        return handle

    async def _handle(
        self,
        request: web.Request,
        endpoint: Endpoint,
        model: type[SpeakBody | AddContextBody | ControlBody],
    ) -> web.Response:
        agent_code = request.match_info["agent_code"]
        await self._admission.admit(request, agent_code)
        body = await self._bodies.read(request, model)
        outgoing = Outgoing(endpoint, body.fields(), body.text_field, body.long_text())
        return await self._send(request, agent_code, outgoing, body.room_id)

    async def _send(
        self, request: web.Request, agent_code: str, outgoing: Outgoing, room_id: str | None
    ) -> web.Response:
        # the order matters: nothing is bound or asked of LiveKit for a message that cannot fit
        request_id = self._keys.request_id(request)
        self._writer.check_fits(outgoing, request_id, agent_code, room_id)
        # the fingerprint only when the caller sent a key (a canonical JSON of the fields)
        claimed = await self._keys.claim(
            request, agent_code, request_id, lambda: outgoing.fingerprint(room_id)
        )
        if claimed is None:
            return await self._deliver(agent_code, outgoing, request_id, room_id, None)
        if isinstance(claimed, Lease):
            return await self._deliver(agent_code, outgoing, request_id, room_id, claimed)
        return replayed(claimed)

    async def _deliver(
        self,
        agent_code: str,
        outgoing: Outgoing,
        request_id: str,
        room_id: str | None,
        lease: Lease | None,
    ) -> web.Response:
        """Deliver, answer, and keep the answer for the key's repeats when it is final."""
        try:
            targets = await self._fanout.targets(agent_code, room_id)
            outcomes = await self._fanout.deliver(targets, outgoing, request_id, agent_code)
        except Exception:
            # nothing (or not everything) was delivered: a repeat must deliver again
            if lease is not None:
                await lease.finish(None)
            raise
        try:
            response = answer(
                outgoing, agent_code, request_id, outcomes, delivery_timeout=self._timeout
            )
        except Refusal as refusal:
            if lease is not None:
                await lease.finish(_kept(error_response(refusal), outcomes))
            raise
        if lease is not None:
            await lease.finish(_kept(response, outcomes))
        return response

    async def close(self, app: web.Application) -> None:
        try:
            await self._backend.aclose()
        finally:
            await self._state.aclose()


def _kept(response: web.Response, outcomes: list[RoomOutcome]) -> StoredAnswer | None:
    """The answer to keep for an Idempotency-Key, or None when a retry may change it."""
    if any(o.error in RETRY_MAY_CHANGE for o in outcomes):
        return None
    return to_store(response)

