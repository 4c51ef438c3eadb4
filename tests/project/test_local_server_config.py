"""``scripts/livekit-local.yaml``, the docs' local server config, is the live suite's loopback
config on LiveKit's ``--dev`` ports and keys (the server itself is checked in
``tests/integration/test_local_server.py``)."""

from __future__ import annotations

from devtools.livekit_server import (
    LOCAL_API_KEY,
    LOCAL_API_SECRET,
    LOCAL_CONFIG,
    local_config_file,
    loopback_config,
)
from imaginex_context_plugin._livekit.settings import DEV_API_KEY, DEV_API_SECRET


def test_the_file_is_what_devtools_writes() -> None:
    # regenerate with: python -m devtools.livekit_server > scripts/livekit-local.yaml
    assert LOCAL_CONFIG.read_text(encoding="utf-8") == local_config_file()


def test_it_keeps_every_loopback_setting_of_the_live_suite() -> None:
    def settings(config: str) -> list[str]:
        ports_and_keys = ("port:", "port_range_", "udp_port:", "keys:", "devkey:")
        return [
            line
            for line in config.splitlines()
            if not line.startswith("#") and not line.strip().startswith(ports_and_keys)
        ]

    suite = settings(loopback_config(45000, 50000))
    assert settings(local_config_file()) == suite
    assert 'bind_addresses: ["127.0.0.1"]' in suite
    assert '  stun_servers: ["127.0.0.1:3478"]' in suite


def test_its_keys_are_the_dev_keys_the_cli_says_nothing_about() -> None:
    assert (LOCAL_API_KEY, LOCAL_API_SECRET) == (DEV_API_KEY, DEV_API_SECRET)
    assert f"  {DEV_API_KEY}: {DEV_API_SECRET}" in local_config_file()
