"""What a LiveKit server hands its clients and holds open: read by the loopback checks."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
from pathlib import Path

import aiohttp
from livekit.protocol import rtc as rtc_proto

from devtools.livekit_server import ServerInfo
from tests.integration.live import participant_token, room_name

SIGNAL_PROTOCOL = 15
_CANDIDATE_ADDRESS = re.compile(r"candidate:\S+ \d+ \S+ \d+ (\S+) ")


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


async def read_signal(info: ServerInfo, seconds: float) -> list[rtc_proto.SignalResponse]:
    """Join as a bare signalling client and collect what the server sends for ``seconds``."""
    token = participant_token(info, room_name("it-signal"), "it-signal")
    url = info.url.replace("ws://", "http://") + "/rtc"
    params = {"access_token": token, "protocol": str(SIGNAL_PROTOCOL), "auto_subscribe": "1"}
    responses: list[rtc_proto.SignalResponse] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url, params=params) as ws:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                message = await asyncio.wait_for(ws.receive(), left)
            except asyncio.TimeoutError:
                break
            if message.type is not aiohttp.WSMsgType.BINARY:
                break
            response = rtc_proto.SignalResponse()
            response.ParseFromString(message.data)
            responses.append(response)
    return responses


def join_ice_urls(responses: list[rtc_proto.SignalResponse]) -> list[str]:
    """The STUN and TURN URLs of the join response: what every client is told to query."""
    join = next(r.join for r in responses if r.WhichOneof("message") == "join")
    return [url for server in join.ice_servers for url in server.urls]


def candidate_lines(responses: list[rtc_proto.SignalResponse]) -> list[str]:
    """Every ICE candidate the server handed out: trickled, and in its offers."""
    trickled = [r.trickle.candidateInit for r in responses if r.WhichOneof("message") == "trickle"]
    offers = [r.offer.sdp for r in responses if r.WhichOneof("message") == "offer"]
    return trickled + [line for sdp in offers for line in sdp.splitlines() if "candidate:" in line]


def candidate_address(line: str) -> str | None:
    match = _CANDIDATE_ADDRESS.search(line)
    return match.group(1) if match else None


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _decode(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    # /proc prints IPv6 as four little-endian 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def server_sockets(pid: int) -> list[tuple[str, str, str]]:
    """(table, local address, remote address) of every socket ``pid`` holds open (Linux)."""
    inodes = _socket_inodes(pid)
    seen = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[9] in inodes:
                seen.append((table, _decode(fields[1])[0], _decode(fields[2])[0]))
    return seen
