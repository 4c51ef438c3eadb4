"""The local server of the docs, started as a user starts it: ``scripts/livekit-server --dev``.

On LiveKit's usual ports (7880, UDP 7882) when both are free, which they always are in the
test session's private network namespace; else (a developer's own local server already runs)
with ``--port`` / ``--udp-port`` added, which the docs say still apply. Its own process group,
stopped with SIGTERM then SIGKILL; its output goes to a file that failing tests print.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.livekit_server import (
    BUILD_SCRIPT,
    LOCAL_API_KEY,
    LOCAL_API_SECRET,
    LOCAL_HTTP_PORT,
    LOCAL_UDP_PORT,
    LOOPBACK,
    READY_TIMEOUT_S,
    ServerInfo,
    free_tcp_port,
    free_udp_range,
)
from devtools.processes import stop_process

STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LocalServer:
    """The running ``scripts/livekit-server --dev``: what it was started with, and its process."""

    args: list[str]
    info: ServerInfo
    process: subprocess.Popen[bytes]
    udp_port: int


def _free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def documented_args() -> tuple[list[str], int, int]:
    """``["--dev"]`` on the usual ports when they are free, else ``--dev`` on free ones."""
    if _free(socket.SOCK_STREAM, LOCAL_HTTP_PORT) and _free(socket.SOCK_DGRAM, LOCAL_UDP_PORT):
        return ["--dev"], LOCAL_HTTP_PORT, LOCAL_UDP_PORT
    http_port, udp_port = free_tcp_port(), free_udp_range(1)
    return ["--dev", "--port", str(http_port), "--udp-port", str(udp_port)], http_port, udp_port


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, timeout=STOP_TIMEOUT_S, group=True)


@contextlib.contextmanager
def local_server(workdir: Path) -> Iterator[LocalServer]:
    """Start the documented command in ``workdir``; yield once it answers HTTP."""
    args, http_port, udp_port = documented_args()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "livekit-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    with log_path.open("wb") as log:
        # the script execs the server: this process is the server itself
        process = subprocess.Popen(
            [str(BUILD_SCRIPT), *args],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    info = ServerInfo(
        f"ws://{LOOPBACK}:{http_port}",
        LOCAL_API_KEY,
        LOCAL_API_SECRET,
        started_here=True,
        log_path=log_path,
        http_port=http_port,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"scripts/livekit-server {' '.join(args)} exited with "
                    f"{process.returncode}:\n{info.log_tail()}"
                )
            url = f"http://{LOOPBACK}:{http_port}/"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local server did not answer in time:\n{info.log_tail()}")
            time.sleep(0.1)
        yield LocalServer(args, info, process, udp_port)
    finally:
        _stop(process)
