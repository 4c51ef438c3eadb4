"""A real ``livekit-server`` for the live suite: found or built, configured for loopback, started.

Which server the live tests use, in order:

1. ``LIVEKIT_URL`` + ``LIVEKIT_API_KEY`` + ``LIVEKIT_API_SECRET`` set: that server, as it is;
2. a ``livekit-server`` binary on PATH, or built before in ``.cache/livekit-server/<version>/``;
3. with Go on the machine: ``scripts/livekit-server --build`` builds it from its Go module;
4. otherwise none: the live tests skip saying how to get one, and under ``CI=true`` they fail.

A server we start runs ``--dev`` with a config file of ours that keeps every byte on loopback:
bound to 127.0.0.1 only, ``node_ip`` 127.0.0.1 with external IP discovery off, ICE candidates
on 127.0.0.1 alone (loopback candidates enabled, since pion drops them by default), STUN pointed
at a loopback port where nothing listens (without it clients are handed public STUN servers), no
TURN, no ICE over TCP (its listener would take every address), and a small UDP range. Its log
goes to a file that a failing live test prints.

The local server of the docs (``scripts/livekit-server --dev``) runs with the same settings, on
LiveKit's usual dev ports and keys: ``scripts/livekit-local.yaml``, written by
``python -m devtools.livekit_server`` (a test checks that the file is what it prints).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from devtools.processes import stop_process

ROOT: Final = Path(__file__).resolve().parent.parent
BUILD_SCRIPT: Final = ROOT / "scripts" / "livekit-server"
LOOPBACK: Final = "127.0.0.1"
API_KEY: Final = "devkey"
# long enough for the server's key validation and for PyJWT's HMAC key-length warning
API_SECRET: Final = "imaginex-live-suite-secret-0123456789abcdef"
UNUSED_STUN_PORT: Final = 3478
UDP_PORTS: Final = 16
LOCAL_CONFIG: Final = ROOT / "scripts" / "livekit-local.yaml"
"""The config ``scripts/livekit-server --dev`` runs with (see :func:`local_config_file`)."""
LOCAL_HTTP_PORT: Final = 7880
LOCAL_UDP_PORT: Final = 7882
"""LiveKit's own ``--dev`` ports: the local server's URL is ws://127.0.0.1:7880."""
LOCAL_API_KEY: Final = "devkey"
LOCAL_API_SECRET: Final = "secret"
"""LiveKit's own ``--dev`` key pair, which the docs' commands export."""
READY_TIMEOUT_S: Final = 30.0
HOW_TO_GET_ONE: Final = (
    "no LiveKit server: set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET, put "
    "livekit-server on PATH (brew install livekit, or the release binary), or install Go "
    "(>= 1.26) so that scripts/livekit-server can build it"
)


class NoServer(Exception):
    """No LiveKit server can be had on this machine; the message says how to get one."""


@dataclass(frozen=True)
class ServerInfo:
    url: str
    api_key: str
    api_secret: str
    started_here: bool
    log_path: Path | None = None
    http_port: int | None = None

    def log_tail(self, lines: int = 80) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(the server was not started by the tests: no log)"
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(line[:400] for line in tail)


def server_from_env() -> ServerInfo | None:
    url, key, secret = (
        os.environ.get(name) for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
    )
    if url and key and secret:
        return ServerInfo(url, key, secret, started_here=False)
    return None


def find_binary(*, build: bool) -> Path:
    """The server binary: on PATH, cached, or (``build`` and Go present) built now."""
    found = subprocess.run(
        [str(BUILD_SCRIPT), "--path"], capture_output=True, text=True, check=False
    )
    if found.returncode == 0 and found.stdout.strip():
        return Path(found.stdout.strip())
    if not build or shutil.which("go") is None:
        raise NoServer(HOW_TO_GET_ONE)
    built = subprocess.run(
        [str(BUILD_SCRIPT), "--build"], stdout=subprocess.PIPE, text=True, check=False
    )
    if built.returncode != 0 or not built.stdout.strip():
        raise NoServer(f"building livekit-server with Go failed (exit {built.returncode})")
    return Path(built.stdout.strip().splitlines()[-1])


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_range(size: int) -> int:
    """The first port of ``size`` consecutive UDP ports free on loopback right now."""
    for _ in range(200):
        start = 40_000 + secrets.randbelow(20_000)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(start, start + size):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return start
    raise RuntimeError("no free UDP port range on loopback")


def loopback_config(
    http_port: int,
    udp_start: int,
    *,
    redis_address: str | None = None,
    webhook_urls: Sequence[str] = (),
    udp_ports: int = UDP_PORTS,
    udp_mux: bool = False,
    api_key: str = API_KEY,
    api_secret: str = API_SECRET,
) -> str:
    """The server's YAML config: everything on 127.0.0.1, nothing reaches beyond it.

    ``tcp_port: 0`` turns ICE over TCP off: its listener ignores ``bind_addresses`` and would
    listen on every address of the machine (``[::]``). Candidates are kept to 127.0.0.1 by
    address, not by interface name (``lo`` on Linux is ``lo0`` on macOS). ``webhook_urls``
    (each on 127.0.0.1) get the server's webhooks, signed with ``api_key``'s secret.
    ``udp_ports``: the size of the ICE port range; each peer connection takes one port of it
    (two per participant), so it caps the participants the server can hold. ``udp_mux``: one
    UDP port (``udp_start``) shared by every peer connection instead, as LiveKit's ``--dev``.
    """
    redis = f"redis:\n  address: {redis_address}\n" if redis_address else ""
    webhook = ""
    if webhook_urls:
        for url in webhook_urls:
            check_loopback_url(url)
        listed = ", ".join(f'"{url}"' for url in webhook_urls)
        webhook = f"webhook:\n  api_key: {api_key}\n  urls: [{listed}]\n"
    if udp_mux:
        udp = f"udp_port: {udp_start}"
    else:
        udp = f"port_range_start: {udp_start}\n  port_range_end: {udp_start + udp_ports - 1}"
    return f"""\
port: {http_port}
bind_addresses: ["{LOOPBACK}"]
keys:
  {api_key}: {api_secret}
rtc:
  tcp_port: 0
  {udp}
  node_ip: {LOOPBACK}
  use_external_ip: false
  enable_loopback_candidate: true
  ips:
    includes: [{LOOPBACK}/32]
  stun_servers: ["{LOOPBACK}:{UNUSED_STUN_PORT}"]
turn:
  enabled: false
logging:
  level: info
{redis}{webhook}"""


def local_config_file() -> str:
    """``scripts/livekit-local.yaml``: the live suite's loopback settings on LiveKit's ``--dev``
    ports and keys, with a header that says what each setting is for."""
    header = f"""\
# The local LiveKit server of the docs: `scripts/livekit-server --dev` runs with this file
# (`livekit-server --dev --config scripts/livekit-local.yaml` with a binary of your own).
# Written by `python -m devtools.livekit_server > scripts/livekit-local.yaml`: the live
# suite's loopback settings, so nothing here reaches beyond this machine.
#
# - LiveKit's dev keys ({LOCAL_API_KEY} / {LOCAL_API_SECRET}); HTTP and WebSocket on \
{LOOPBACK}:{LOCAL_HTTP_PORT},
#   WebRTC over UDP on {LOOPBACK}:{LOCAL_UDP_PORT} (one port for every peer connection);
# - ICE candidates on {LOOPBACK} only: loopback candidates enabled (pion drops them by
#   default), node_ip {LOOPBACK} without external IP discovery;
# - STUN pointed at a loopback port where nothing listens: without it, LiveKit hands every
#   client its public STUN servers (in the join response) and the clients query them;
# - no TURN, no ICE over TCP (its listener would take every address of the machine).
"""
    return header + loopback_config(
        LOCAL_HTTP_PORT,
        LOCAL_UDP_PORT,
        udp_mux=True,
        api_key=LOCAL_API_KEY,
        api_secret=LOCAL_API_SECRET,
    )


def check_loopback_url(url: str) -> None:
    """Refuse a webhook URL that would take the server's traffic off 127.0.0.1."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname != LOOPBACK or '"' in url:
        raise ValueError(f"a webhook URL must be http(s)://{LOOPBACK}:<port>/...: {url!r}")


@dataclass
class LiveKitServer:
    """One ``livekit-server --dev`` process on loopback ports; ``stop()`` leaves no orphan."""

    binary: Path
    workdir: Path
    redis_address: str | None = None
    webhook_urls: Sequence[str] = ()
    udp_ports: int = UDP_PORTS
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    info: ServerInfo | None = field(default=None, init=False)

    def start(self) -> ServerInfo:
        http_port = free_tcp_port()
        udp_start = free_udp_range(self.udp_ports)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "livekit.yaml"
        config.write_text(
            loopback_config(
                http_port,
                udp_start,
                redis_address=self.redis_address,
                webhook_urls=self.webhook_urls,
                udp_ports=self.udp_ports,
            )
        )
        log_path = self.workdir / "livekit-server.log"
        log_path.write_bytes(b"")
        self._spawn(config, log_path)
        self.info = ServerInfo(
            f"ws://{LOOPBACK}:{http_port}",
            API_KEY,
            API_SECRET,
            started_here=True,
            log_path=log_path,
            http_port=http_port,
        )
        self._wait_ready(http_port)
        return self.info

    def _spawn(self, config: Path, log_path: Path) -> None:
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "--dev", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,  # its own process group: stop() takes all of it
            )

    def _wait_ready(self, http_port: int) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"livekit-server exited with {self.process.returncode} at start:\n"
                    + (self.info.log_tail() if self.info else "")
                )
            url = f"http://{LOOPBACK}:{http_port}/"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("livekit-server did not become ready in time")

    def stop(self, *, crash: bool = False) -> None:
        """Stop it (SIGTERM, then SIGKILL after 10 s), or with ``crash`` kill it at once."""
        process, self.process = self.process, None
        if process is not None:
            first = signal.SIGKILL if crash else signal.SIGTERM
            stop_process(process, timeout=10, first=first, group=True)

    def start_again(self) -> None:
        """Start the stopped server on the same ports and config (its rooms are gone)."""
        assert self.info is not None
        assert self.info.log_path is not None
        assert self.info.http_port is not None
        self._spawn(self.workdir / "livekit.yaml", self.info.log_path)
        self._wait_ready(self.info.http_port)


@contextlib.contextmanager
def running_server(workdir: Path, *, build: bool) -> Iterator[tuple[ServerInfo, LiveKitServer]]:
    server = LiveKitServer(find_binary(build=build), workdir)
    try:
        yield server.start(), server
    finally:
        server.stop()


if __name__ == "__main__":
    print(local_config_file(), end="")
