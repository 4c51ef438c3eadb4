"""No test traffic leaves loopback: what the server hands out, says, and holds open.

Checked against the server the tests started (an external ``LIVEKIT_URL`` server is not ours
to judge: these tests skip then).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path

import pytest

from devtools.livekit_server import LOOPBACK, LiveKitServer
from devtools.netns import CLIENT_ADDRESS, STATE_ENV
from tests.helpers import wait_until
from tests.integration.live import live_agent
from tests.integration.network import (
    candidate_address,
    candidate_lines,
    is_loopback,
    join_ice_urls,
    read_signal,
    server_sockets,
)

_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?![\d.])")


@pytest.fixture
def our_server(livekit_server: LiveKitServer | None) -> LiveKitServer:
    if livekit_server is None or livekit_server.info is None:
        pytest.skip("the server is external (LIVEKIT_URL): its network is not ours to check")
    return livekit_server


async def test_the_server_hands_out_only_loopback_ice(our_server: LiveKitServer) -> None:
    assert our_server.info is not None
    responses = await read_signal(our_server.info, seconds=3.0)
    kinds = [r.WhichOneof("message") for r in responses]
    assert "join" in kinds

    # no public STUN, no TURN: only the loopback port where nothing listens
    assert join_ice_urls(responses) == [f"stun:{LOOPBACK}:3478"]

    lines = candidate_lines(responses)
    assert lines, "the server handed out no ICE candidate at all"
    addresses = [candidate_address(line) for line in lines]
    assert all(address is not None for address in addresses), lines
    assert set(addresses) == {LOOPBACK}


async def test_the_server_log_advertises_only_loopback(our_server: LiveKitServer) -> None:
    info = our_server.info
    assert info is not None
    assert info.log_path is not None
    # a real session, so that the server logs the candidates it used
    async with live_agent(info) as agent:
        await wait_until(agent.code_listed, "the agent to be active")
    text = info.log_path.read_text(errors="replace")
    start = next(line for line in text.splitlines() if "starting LiveKit server" in line)
    assert f'"nodeIP": "{LOOPBACK}"' in start
    assert f'"bindAddresses": ["{LOOPBACK}"]' in start
    active = [line for line in text.splitlines() if "participant active" in line]
    assert active
    for line in active:
        # candidates are logged as "udp4 host 127.0.0.1:40461" (remote ones masked "127.0....")
        for candidate in re.findall(r"(?:udp|tcp)4? (?:host|srflx|prflx|relay) ([^\"\]]+)", line):
            assert candidate.startswith("127.0."), line[:300]
    every_address = set(_IPV4.findall(text))
    assert every_address <= {LOOPBACK, CLIENT_ADDRESS, "0.0.0.0"}, every_address


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
async def test_every_socket_the_server_holds_is_on_loopback(our_server: LiveKitServer) -> None:
    process = our_server.process
    assert process is not None
    async with live_agent(our_server.info) as agent:  # type: ignore[arg-type]
        await wait_until(agent.code_listed, "the agent to be active")
        seen = server_sockets(process.pid)
    assert seen, "found none of the server's sockets"
    for table, local, remote in seen:
        assert is_loopback(local), (table, local, remote)
        assert is_loopback(remote) or ipaddress.ip_address(remote).is_unspecified, (
            table,
            local,
            remote,
        )


def test_the_session_runs_in_a_loopback_only_network_when_it_can() -> None:
    if os.environ.get(STATE_ENV) != "1":
        if os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0:
            pytest.fail("CI runs as root, so the live suite must run in its private namespace")
        pytest.skip("not isolated here (not root, or an external LIVEKIT_URL)")
    names = sorted(name for _, name in socket.if_nameindex())
    assert names == sorted(["lo", "imx-clients", "imx-peer"])
    # nothing outside loopback is reachable: there is no route anywhere else
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe,
        pytest.raises(OSError, match="unreachable"),
    ):
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never a real host
