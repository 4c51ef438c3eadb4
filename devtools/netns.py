"""Run the whole test session in a private network namespace that has only ``lo``.

Called from the project's root ``conftest.py``, which pytest imports before ``tests/conftest.py``
and so before anything imports LiveKit (whose native side starts threads that would stay behind
in the old namespace): the process moves itself into a new network namespace
(``unshare(CLONE_NEWNET)``) and brings its loopback interface up. From then on it and everything
it starts (the LiveKit server, the gateway and worker processes, LiveKit's native threads) can
reach the loopback range and nothing else.

WebRTC clients never gather candidates on a loopback *interface*, so the namespace also gets
one veth pair that carries only the loopback address ``127.0.0.2`` (IPv6 off): the clients'
candidates are 127.0.0.2, the server's 127.0.0.1, and every packet still goes through ``lo``.
Outside the namespace the clients would use the machine's own LAN address instead.
So no test can send a byte to the LAN or the internet, whatever a config says.

It needs root or CAP_SYS_ADMIN (CI and our machines run as root); elsewhere the suite runs in
the normal namespace and relies on the loopback-only server config. It is skipped when
``LIVEKIT_URL`` names an external server (which may not be on loopback) and when
``IMAGINEX_TEST_NETNS=0``. The LiveKit server binary is found (or built with Go, which needs the
module proxy) before the move, since nothing can be downloaded afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Final

CLONE_NEWNET: Final = 0x40000000
SIOCGIFFLAGS: Final = 0x8913
SIOCSIFFLAGS: Final = 0x8914
IFF_UP: Final = 0x1
CLIENT_INTERFACE: Final = "imx-clients"
PEER_INTERFACE: Final = "imx-peer"
CLIENT_ADDRESS: Final = "127.0.0.2"
ENV_SWITCH: Final = "IMAGINEX_TEST_NETNS"
STATE_ENV: Final = "IMAGINEX_TEST_NETNS_ACTIVE"
"""Set to "1" once the session runs in its private namespace (read by the tests)."""


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _enter_private_namespace() -> str | None:
    """Move into a new network namespace with only ``lo`` up; None, or why not."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    if len(os.listdir("/proc/self/task")) != 1:
        # a thread started before us would stay behind in the old namespace
        return "other threads already run"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return os.strerror(ctypes.get_errno())
    _bring_loopback_up()
    _add_client_interface()
    os.environ[STATE_ENV] = "1"
    return None


def _add_client_interface() -> None:
    commands = [
        ["ip", "link", "add", CLIENT_INTERFACE, "type", "veth", "peer", "name", PEER_INTERFACE],
        ["ip", "addr", "add", f"{CLIENT_ADDRESS}/32", "dev", CLIENT_INTERFACE],
    ]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)
    for name in (CLIENT_INTERFACE, PEER_INTERFACE):
        with contextlib.suppress(OSError):  # no IPv6 at all: nothing to switch off
            Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
        subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True)


def isolate() -> str:
    """Enter the private namespace if we can; a line for the test report saying what happened."""
    if os.environ.get(STATE_ENV) == "1":
        return "network: private namespace, loopback only"
    if os.environ.get(ENV_SWITCH) == "0" or os.environ.get("LIVEKIT_URL"):
        return "network: not isolated (switched off, or an external LIVEKIT_URL)"
    # imported here: it must pull nothing of LiveKit in before the move
    from devtools.livekit_server import NoServer, find_binary

    with contextlib.suppress(NoServer):  # the live suite says so itself (skip, or fail in CI)
        find_binary(build=True)
    why_not = _enter_private_namespace()
    if why_not is not None:
        return f"network: not isolated ({why_not}); servers still bind 127.0.0.1 only"
    return "network: private namespace, loopback only"
