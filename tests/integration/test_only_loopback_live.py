"""The docs' local story on a machine whose only network interface is ``lo``.

Each test makes a fresh network namespace (``unshare --net``, or ``unshare --net
--map-root-user`` without root), which has ``lo`` and nothing else, as ``docker run --network
none`` does: its ``lo`` is brought up as a container runtime does, and everything else runs
there as a user would. LiveKit's WebRTC clients gather no ICE candidate on a loopback interface,
so ``scripts/livekit-server --dev`` adds ``imx0`` (127.0.0.2/32, no route) when it may:

- with the right, the three terminals of ``docs/local-testing.md`` work unchanged (the
  worker, the dispatch and the CLI of ``test_worker_live.py``, run inside the namespace), and
  nothing in the namespace routes anywhere but loopback;
- a second start reuses the interface (and brings it back up if it went down);
- without the right (``CAP_NET_ADMIN`` dropped), the server says so with the one command to run,
  and that command is enough; without the ``ip`` command, it says what to install.

Where no network namespace can be made the tests skip; under ``CI=true`` they fail.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.livekit_server import BUILD_SCRIPT, ROOT
from devtools.netns import ENV_SWITCH, STATE_ENV
from tests.integration.missing import in_ci, missing, server_binary

CLIENT_LINK = "imx0"
CLIENT_PEER = "imx1"
CLIENT_ADDRESS = "127.0.0.2"
ADDED = re.compile(
    rf"^livekit-server: only loopback here; added {CLIENT_LINK} \((?P<kind>[^,]+), "
    rf"{CLIENT_ADDRESS}/32, no route\) for WebRTC clients; nothing leaves this machine",
    re.MULTILINE,
)
REUSED = (
    f"livekit-server: only loopback here; WebRTC clients use {CLIENT_LINK} ({CLIENT_ADDRESS}), "
    "added by an earlier start"
)
NOTE = "no network interface but loopback"
# the note's command: from "  ip link add" to the end of its continuation line
NOTE_COMMAND = re.compile(r"^  (ip link add .*?\\\n +&& .*)$", re.MULTILINE)
DROP_NET_ADMIN = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")
# the script's own lines only (stderr); with "ports" the server prints its ports and exits
START = f"{BUILD_SCRIPT} --dev ports 2>&1 >/dev/null"
LOCAL_TESTING = ROOT / "docs" / "local-testing.md"
STORY = "tests/integration/test_worker_live.py::test_terminal_3_runs_as_the_docs_write_it"
STORY_TIMEOUT_S = 300.0
SCRIPT_TIMEOUT_S = 60.0


@functools.cache
def _namespace_prefix() -> tuple[str, ...] | str:
    """The command that runs its arguments in a fresh network namespace, or why there is none."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare (util-linux) and ip (iproute2)"
    prefix = ("unshare", "--net") if os.geteuid() == 0 else ("unshare", "--net", "--map-root-user")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"this machine allows no network namespace here: {probe.stderr.strip()}"
    return prefix


@pytest.fixture
def fresh_namespace() -> tuple[str, ...]:
    prefix = _namespace_prefix()
    if isinstance(prefix, str):
        missing(prefix)
    server_binary()
    return prefix


def _env(**extra: str) -> dict[str, str]:
    """This environment without LiveKit's variables or the test session's namespace state."""
    dropped = (STATE_ENV, ENV_SWITCH, "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_") and k not in dropped}
    return {**env, **extra}


def in_only_loopback(
    prefix: tuple[str, ...], script: str, *, timeout: float = SCRIPT_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run the bash ``script`` in the repository, in a fresh namespace whose ``lo`` is up."""
    return subprocess.run(
        [*prefix, "bash", "-euo", "pipefail", "-c", f"ip link set lo up\n{script}"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def link_names(ip_o_link: str) -> list[str]:
    """The interfaces ``ip -o link show`` lists ("2: imx0@imx1: <...>" is imx0)."""
    return [
        line.split(":")[1].strip().split("@")[0]
        for line in ip_o_link.splitlines()
        if re.match(r"^\d+:", line)
    ]


def test_the_docs_story_runs_where_only_loopback_exists(
    fresh_namespace: tuple[str, ...], tmp_path: Path
) -> None:
    """The server, the example worker, the dispatch and each CLI command of the docs, all in
    a namespace that had only ``lo``: the story's own live test, run there."""
    basetemp = tmp_path / "inside"
    started = time.monotonic()
    inside = in_only_loopback(
        fresh_namespace,
        f"""
        echo "links before: $(awk -F: 'NR > 2 {{ gsub(/ /, "", $1); printf "%s ", $1 }}' \\
            /proc/net/dev)"
        status=0
        {ENV_SWITCH}=0 {sys.executable} -m pytest -q --basetemp {basetemp} \\
            {STORY} || status=$?
        echo "--- routes"; ip -4 route show table all; ip -6 route show table all
        echo "--- ipv6 on ours"; ip -6 -o addr show dev {CLIENT_LINK}
        echo "--- to the world"; ip route get 192.0.2.1 2>&1 || true
        echo "--- from ours"; ip route get 127.0.0.1 from {CLIENT_ADDRESS}
        exit $status
        """,
        timeout=STORY_TIMEOUT_S,
    )
    elapsed = time.monotonic() - started
    report = f"{inside.stdout}\n{inside.stderr}"
    assert "links before: lo \n" in inside.stdout, report
    assert inside.returncode == 0, report
    assert re.search(r"^1 passed", inside.stdout, re.MULTILINE), report
    # (pytest also links the newest temporary directory as "...current")
    (log,) = {path.resolve() for path in basetemp.glob("local-livekit-server*/livekit-server.log")}
    assert ADDED.search(log.read_text(errors="replace")), log.read_text(errors="replace")[:3000]

    routes = inside.stdout.split("--- routes\n")[1].split("--- ipv6 on ours\n")[0]
    # every route is a local one; ours adds exactly its own address, and there is no default
    for route in routes.splitlines():
        assert route.startswith(("local ", "broadcast ")), routes
        ours = f"dev {CLIENT_LINK} " in route or f"dev {CLIENT_PEER} " in route
        assert not ours or route.startswith(f"local {CLIENT_ADDRESS} dev {CLIENT_LINK} "), routes
    assert inside.stdout.split("--- ipv6 on ours\n")[1].startswith("--- to the world"), report
    assert "Network is unreachable" in inside.stdout.split("--- to the world\n")[1], report
    from_ours = inside.stdout.split("--- from ours\n")[1]
    assert from_ours.startswith(f"local 127.0.0.1 from {CLIENT_ADDRESS} dev lo "), from_ours
    print(f"the story in a namespace with only lo: {elapsed:.1f} s")


def test_a_second_start_reuses_the_interface(fresh_namespace: tuple[str, ...]) -> None:
    inside = in_only_loopback(
        fresh_namespace,
        f"""
        {START}; echo "--- again"
        {START}; echo "--- links"; ip -o link show
        ip link set {CLIENT_LINK} down; echo "--- down"
        {START}; echo "--- state"; ip -br link show dev {CLIENT_LINK}
        """,
    )
    assert inside.returncode == 0, inside.stdout + inside.stderr
    first, rest = inside.stdout.split("--- again\n", 1)
    assert len(ADDED.findall(first)) == 1, first
    rest = "--- again\n" + rest
    again, links = rest.split("--- again\n")[1].split("--- links\n")
    assert REUSED in again, again
    assert ADDED.search(again) is None, again
    names = sorted(link_names(links))
    # one interface for the clients (a veth pair where the kernel has no dummy driver)
    assert names in (["imx0", "lo"], ["imx0", "imx1", "lo"]), links
    down, state = rest.split("--- down\n")[1].split("--- state\n")
    assert f"set {CLIENT_LINK} up again ({CLIENT_ADDRESS}/32, no route)" in down, down
    assert " UP " in f" {state} " or "UNKNOWN" in state, state
    assert "LOWER_UP" in state, state


def test_without_the_right_it_prints_the_one_command(fresh_namespace: tuple[str, ...]) -> None:
    """No CAP_NET_ADMIN: the note with the command, which (run with the right) is enough."""
    if shutil.which("setpriv") is None:
        missing("setpriv (util-linux), which drops CAP_NET_ADMIN here, is missing")
    inside = in_only_loopback(
        fresh_namespace,
        f"""
        {" ".join(DROP_NET_ADMIN)} {START}; echo "--- links"; ip -o link show
        """,
    )
    assert inside.returncode == 0, inside.stdout + inside.stderr
    note, links = inside.stdout.split("--- links\n")
    assert NOTE in note, note
    assert "Operation not permitted" in note, note
    assert ADDED.search(note) is None, note
    assert link_names(links) == ["lo"], links
    (command,) = NOTE_COMMAND.findall(note)
    docs = LOCAL_TESTING.read_text(encoding="utf-8")
    assert " ".join(command.split()) in " ".join(docs.split()), "the docs give another command"
    # the user runs the note's command as root: the next start finds it and reuses it
    fixed = in_only_loopback(fresh_namespace, f"{command}\n{START}")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert REUSED in fixed.stdout, fixed.stdout


def test_with_another_interface_there_is_nothing_to_do() -> None:
    """Here (the test session's namespace has its client interface, or the machine its own)."""
    here = subprocess.run(
        [str(BUILD_SCRIPT), "--dev", "ports"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    if here.returncode != 0 and "not on PATH" in here.stderr and not in_ci():
        pytest.skip(here.stderr.strip())
    assert here.returncode == 0, here.stderr
    assert "only loopback here" not in here.stderr
    assert NOTE not in here.stderr


def test_without_the_ip_command_it_says_what_to_install(
    fresh_namespace: tuple[str, ...], tmp_path: Path
) -> None:
    """A slim image has no iproute2: the note says so, and the server starts all the same."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "awk", "grep", "cat", "dirname", "livekit-server"):
        found = shutil.which(tool)
        if found is not None:
            (bin_dir / tool).symlink_to(found)
    if not (bin_dir / "livekit-server").exists():
        (bin_dir / "livekit-server").symlink_to(server_binary())
    inside = in_only_loopback(fresh_namespace, f"PATH={bin_dir} {START}; echo status $?")
    assert inside.returncode == 0, inside.stdout + inside.stderr
    assert NOTE in inside.stdout, inside.stdout
    assert "the ip command is not installed: apt-get install iproute2" in inside.stdout
    assert "status 0" in inside.stdout, inside.stdout
