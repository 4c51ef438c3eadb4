"""``bench_fanout``'s constants: identities, timeouts, the targets, and the names the report and
its JSON use (ways of finding agents, deliveries, floors, process groups).

Imports nothing of LiveKit, so that ``benchmarks/capacity_model.py`` can read a run's JSON with
the same names without entering the benchmark's network namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Final

GATEWAY_IDENTITY: Final = "bench-fanout-gateway"
AGENT_IDENTITY: Final = "bench-fanout-agent"
API_SECRET_HEADER: Final = "bench-fanout-gateway-secret"
AGENTS_PER_PROCESS: Final = 50
NODE_UDP_PORTS: Final = 1024
"""ICE ports per node: two per participant; 200 rooms put 100 agents and 100 gateway
connections on each node."""
JOINS_AT_ONCE: Final = 8
"""Agents a worker connects at once (the agents' start-up is not what is measured)."""
JOIN_ATTEMPTS: Final = 3
DELIVERY_TIMEOUT_S: Final = 10.0
READY_TIMEOUT_S: Final = 300.0
NOT_SPOKEN: Final = "did not speak each delivered message exactly once"
SETTLE_TIMEOUT_S: Final = 60.0
"""How long the agents have, after the last request, to finish the speeches they acked."""
ROOM_EMPTY_TIMEOUT_S: Final = 3600
"""Seconds a room with only its agent lives (see ``create_rooms``)."""
WARM_FACTOR: Final = 3.0
FLOOR_FACTOR: Final = 1.15
"""Target (issue 26): a delivery's warm p99 within this factor of its bare floor's."""
GATEWAY_MS_PER_ROOM: Final = 0.25
"""Target (issue 26): the gateway's own CPU per room per request, in milliseconds."""
BENCH_FILE: Final = str(Path(__file__).resolve().parents[1] / "bench_fanout.py")
"""The command, also run as the agent workers (``--agents``) and a gateway built here
(``--gateway``)."""
ROOM_SERVICE_LOG: Final = "API RoomService."
UNKNOWN_OUTCOME: Final = frozenset({"TIMEOUT", "AGENT_NOT_FOUND"})
"""Room errors after which the agent may still have spoken: no answer in time, or the agent
left the room before it answered (RPC's RECIPIENT_DISCONNECTED)."""
NODE_LABELS: Final = ("node A", "node B")
DIRECTORY: Final = "directory"
SCAN: Final = "scan"
MODES: Final = (DIRECTORY, SCAN)
"""How the gateway finds the agents: its agent directory (``--agent-directory``), or listing
every room and its participants (cached 1 s), the default."""
ROOM: Final = "room"
SERVER_RPC: Final = "server-rpc"
DELIVERIES: Final = (SERVER_RPC, ROOM)
"""How the gateway delivers: ``RoomService.PerformRpc`` (no room joined, the default), or
joining every room (RPC over a pooled connection)."""
QUIET_CORES_PER_WORKER: Final = 0.2
"""An agent worker counts as settled below this share of a core. Just after its rooms
connect, a worker of 50 agents burns about one core for 10 to 15 s, then idles at about 0.1
core: a phase measured in that burn measures the burn. (py-spy: half the worker's samples
then are in ``livekit.rtc``'s FFI callback thread, most of those in its loop over the native
side's log records, which it drops; ``RUST_LOG=warn`` did not change it.)"""
QUIET_TIMEOUT_S: Final = 180.0
RECONCILE_INTERVAL_S: Final = 3600.0
"""The directory's reconciliation interval here: longer than a run, so no phase counts one."""
SPOKEN_PREFIX: Final = "Fan-out message"
"""How the gateway's messages start: only those count as the agents' speeches."""
ECHO_METHOD: Final = "bench.fanout.echo"
RPC_BARE: Final = "bare PerformRpc echo"
RPC_SAY: Final = "bare PerformRpc + say()"
RPC_HTTP_SAY: Final = "bare HTTP hop + PerformRpc + say()"
FLOORS: Final = (RPC_BARE, RPC_SAY, RPC_HTTP_SAY)
"""The fan-out floors, measured on the same agents before the gateway's phases: one
``RoomService.PerformRpc`` per room (answered by a bare RPC method beside the plugin's), all at
once, made by this process, or (``RPC_HTTP_SAY``) by a bare HTTP relay process this process
POSTs to (``fanout/relay.py``): the least an HTTP gateway in front of the same calls does."""
BARE_FLOOR_OF: Final = {ROOM: RPC_BARE, SERVER_RPC: RPC_BARE}
"""The floor each delivery's target is measured against: the same transport, bare."""
DELIVERY_CALL: Final = {SERVER_RPC: "PerformRpc"}
"""The RoomService call a server-side delivery makes per room and request, by design."""
MIN_SAMPLES: Final = 1000
"""Room deliveries each warm p99 rests on at the least, at every size (``--min-samples``): a
size of ``rooms`` makes ``max(warm, ceil(MIN_SAMPLES / rooms))`` warm requests on every path
and every floor (see ``warm_requests``)."""
GATEWAY: Final = "gateway"
SENDER: Final = "sender"
AGENTS: Final = "agents"
"""Process groups whose CPU is counted (with each of ``NODE_LABELS``): the gateway, this process
as the floors' sender, the agents' worker processes together."""


def warm_requests(rooms: int, warm: int, min_samples: int) -> int:
    """Warm requests at a size: at least ``warm``, and enough that the requests reach
    ``min_samples`` rooms in all."""
    return max(warm, -(-min_samples // max(rooms, 1)))
