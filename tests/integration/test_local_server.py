"""The docs' local server, ``scripts/livekit-server --dev``, keeps everything on this machine.

It runs with ``scripts/livekit-local.yaml`` (the live suite's loopback settings on LiveKit's
``--dev`` ports and keys): the join response names no public STUN server, every candidate is
127.0.0.1, and every socket the server holds is on loopback. The three-terminal story against
it is ``test_worker_live.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from devtools.livekit_server import (
    BUILD_SCRIPT,
    LOCAL_API_KEY,
    LOCAL_API_SECRET,
    LOCAL_HTTP_PORT,
    LOCAL_UDP_PORT,
    LOOPBACK,
    UNUSED_STUN_PORT,
)
from tests.helpers import wait_until
from tests.integration.live import live_agent
from tests.integration.local_server import LocalServer
from tests.integration.network import (
    candidate_address,
    candidate_lines,
    is_loopback,
    join_ice_urls,
    read_signal,
    server_sockets,
)

# one of the server's own candidates in its log: "[local][trickle] udp4 host 127.0.0.1:7882"
SERVER_CANDIDATE = re.compile(
    r"\[local\][^\"]*? (?:udp|tcp)4? (?:host|srflx|prflx|relay) ([^ \"\]]+)"
)

# the docs' key pair is LiveKit's dev pair: PyJWT warns when this process signs with it
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def test_it_runs_with_the_loopback_config_on_the_dev_ports(local_livekit: LocalServer) -> None:
    assert local_livekit.args[0] == "--dev"
    assert (local_livekit.info.api_key, local_livekit.info.api_secret) == (
        LOCAL_API_KEY,
        LOCAL_API_SECRET,
    )
    assert local_livekit.info.log_path is not None
    log = local_livekit.info.log_path.read_text(errors="replace")
    start = next(line for line in log.splitlines() if "starting LiveKit server" in line)
    assert f'"portHttp": {local_livekit.info.http_port}' in start
    assert f'"nodeIP": "{LOOPBACK}"' in start
    assert f'"bindAddresses": ["{LOOPBACK}"]' in start
    assert '"rtc.portTCP"' not in start  # no ICE over TCP (logged only when on)
    assert f'"rtc.portUDP": {{"Start":{local_livekit.udp_port},"End":0}}' in start


async def test_the_join_response_carries_no_public_stun(local_livekit: LocalServer) -> None:
    responses = await read_signal(local_livekit.info, seconds=3.0)
    # LiveKit's --dev alone hands every client public STUN servers here; ours names only a
    # loopback port where nothing listens, and no TURN
    assert join_ice_urls(responses) == [f"stun:{LOOPBACK}:{UNUSED_STUN_PORT}"]
    lines = candidate_lines(responses)
    assert lines, "the server handed out no ICE candidate at all"
    assert {candidate_address(line) for line in lines} == {LOOPBACK}, lines


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
async def test_every_socket_it_holds_is_on_loopback(local_livekit: LocalServer) -> None:
    async with live_agent(local_livekit.info) as agent:
        await wait_until(agent.code_listed, "the agent to be active")
        seen = server_sockets(local_livekit.process.pid)
    assert seen, "found none of the server's sockets"
    for table, local, remote in seen:
        assert is_loopback(local), (table, local, remote)
    ports = {(table, local) for table, local, _ in seen if table.startswith("udp")}
    assert ports == {("udp", LOOPBACK)}
    assert local_livekit.info.log_path is not None
    active = [
        line
        for line in local_livekit.info.log_path.read_text(errors="replace").splitlines()
        if "participant active" in line
    ]
    assert active
    for line in active:
        # the server's own candidates, as it used them ("[local]...udp4 host 127.0.0.1:7882");
        # the clients' are the machine's own addresses (127.0.0.2 in the test namespace)
        ours = SERVER_CANDIDATE.findall(line)
        assert ours, line[:300]
        assert set(ours) == {f"{LOOPBACK}:{local_livekit.udp_port}"}, line[:300]


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``scripts/livekit-server ARGS``; with ``ports`` last the server prints the ports its
    config gives it and exits at once."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    return subprocess.run(
        [str(BUILD_SCRIPT), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dev_without_a_config_of_yours_takes_the_local_config(local_livekit: LocalServer) -> None:
    ours = run_script("--dev", "ports")
    assert ours.returncode == 0, ours.stderr
    assert f"{LOCAL_HTTP_PORT} - HTTP service" in ours.stdout
    # printed "%!s(int=7882) - ICE/UDP" by livekit-server v1.13.5
    (udp,) = [line for line in ours.stdout.splitlines() if line.endswith(" - ICE/UDP")]
    assert str(LOCAL_UDP_PORT) in udp
    assert "ICE/TCP" not in ours.stdout  # the local config turns it off
    # a config of the user's wins, whichever way it is given; and no --dev, no local config
    for given in (
        run_script("--dev", "--config-body", "port: 7990", "ports"),
        run_script("--dev", "ports", env={"LIVEKIT_CONFIG": "port: 7990"}),
    ):
        assert given.returncode == 0, given.stderr
        assert "7990 - HTTP service" in given.stdout
        assert "7881 - ICE/TCP" in given.stdout  # LiveKit's own default
    plain = run_script("--keys", "k: s", "ports")
    assert "7881 - ICE/TCP" in plain.stdout, plain.stdout + plain.stderr
