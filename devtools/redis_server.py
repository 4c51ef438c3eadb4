"""A real ``redis-server`` for the tests: Debian's package, started on a free loopback port.

Which Redis the tests use, in order:

1. ``IMAGINEX_TEST_REDIS_URL`` set: that server, as it is (the tests use their own key prefix
   and flush nothing else);
2. ``redis-server`` on PATH (Debian: ``apt-get install redis-server``): started by the fixture
   with a config of ours: bound to 127.0.0.1 only, protected mode on, no persistence, its own
   work directory, its log in a file a failing test can print;
3. otherwise none: the tests that need it skip saying how to get one, and under ``CI=true``
   they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from devtools.livekit_server import LOOPBACK, free_tcp_port
from devtools.processes import stop_process

READY_TIMEOUT_S: Final = 10.0
HOW_TO_GET_ONE: Final = (
    "no Redis: install Debian's redis-server (apt-get install redis-server) so that it is on "
    "PATH, or set IMAGINEX_TEST_REDIS_URL to a Redis the tests may use"
)


class NoRedis(Exception):
    """No Redis can be had on this machine; the message says how to get one."""


def redis_from_env() -> str | None:
    return os.environ.get("IMAGINEX_TEST_REDIS_URL") or None


def find_redis_binary() -> Path:
    found = shutil.which("redis-server")
    if found is None:
        raise NoRedis(HOW_TO_GET_ONE)
    return Path(found)


def loopback_redis_config(port: int, workdir: Path) -> str:
    """Redis on 127.0.0.1 only, nothing written to disk."""
    return f"""\
bind {LOOPBACK}
port {port}
protected-mode yes
daemonize no
save ""
appendonly no
dir {workdir}
logfile ""
databases 16
"""


@dataclass
class RedisServer:
    """One ``redis-server`` process on a loopback port; ``stop()`` leaves no orphan."""

    binary: Path
    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        """``host:port``, the form LiveKit's ``redis.address`` takes."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    def start(self) -> str:
        if not self.port:
            self.port = free_tcp_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "redis.conf"
        config.write_text(loopback_redis_config(self.port, self.workdir))
        self.log_path = self.workdir / "redis-server.log"
        self._spawn(config)
        self._wait_ready()
        return self.url

    def _spawn(self, config: Path) -> None:
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode} at start:\n"
                    + self.log_tail()
                )
            if ping(LOOPBACK, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not become ready in time")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, *, crash: bool = False) -> None:
        process, self.process = self.process, None
        if process is not None:
            first = signal.SIGKILL if crash else signal.SIGTERM
            stop_process(process, timeout=10, first=first, group=True)

    def start_again(self) -> None:
        """Start the stopped server on the same port (its data is gone: nothing persists)."""
        self._spawn(self.workdir / "redis.conf")
        self._wait_ready()


def ping(host: str, port: int) -> bool:
    """True when a Redis answers PING at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
