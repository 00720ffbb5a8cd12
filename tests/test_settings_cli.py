"""Settings layering and the ``garage`` / ``garage-peer`` command lines (real subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from garage_p2p.settings import SettingsError, load_settings


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_layers_defaults_config_env_flags(tmp_path):
    (tmp_path / "config.toml").write_text(
        'api = "127.0.0.1:9001"\nrequest_timeout = 30\nbootstrap = ["/ip4/127.0.0.1/tcp/1/p2p/x"]\n'
    )
    env = {"GARAGE_API": "127.0.0.1:9002", "GARAGE_BACKENDS": "a=http://127.0.0.1:1/v1, b=http://127.0.0.1:2/v1"}
    s = load_settings({"home": str(tmp_path)}, env)
    assert s.api == "127.0.0.1:9002"  # env beats the file
    assert s.request_timeout == 30  # the file beats the default
    assert s.backends == {"a": "http://127.0.0.1:1/v1", "b": "http://127.0.0.1:2/v1"}
    assert s.listen == ["/ip4/0.0.0.0/tcp/4001"]  # TCP only: QUIC connections are not watched (liveness)
    s = load_settings({"home": str(tmp_path), "api": "127.0.0.1:9003"}, env)
    assert s.api == "127.0.0.1:9003"  # flags beat everything
    assert load_settings({}, {"GARAGE_HOME": str(tmp_path)}).home == tmp_path


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"api": "nonsense"}, "HOST:PORT"),
        ({"backends": {"m": "ftp://x"}}, "not an http"),
        ({"request_timeout": -1}, "request_timeout"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, flags, message):
    with pytest.raises(SettingsError, match=message):
        load_settings({"home": str(tmp_path), **flags}, {})


def test_broken_config_file_is_a_settings_error(tmp_path):
    (tmp_path / "config.toml").write_text("api = [unclosed")
    with pytest.raises(SettingsError, match="config.toml"):
        load_settings({"home": str(tmp_path)}, {})
    (tmp_path / "config.toml").write_text("surprise = 1\n")
    with pytest.raises(SettingsError, match="surprise"):
        load_settings({"home": str(tmp_path)}, {})


def test_garage_init_is_idempotent(tmp_path):
    first = run("garage_p2p.cli.garage", "init", "--home", str(tmp_path / "h"))
    assert first.returncode == 0 and first.stdout.strip().startswith("12D3KooW")
    assert (tmp_path / "h" / "identity.key").stat().st_mode & 0o777 == 0o600
    second = run("garage_p2p.cli.garage", "init", env={"GARAGE_HOME": str(tmp_path / "h")})
    assert second.returncode == 0 and second.stdout == first.stdout


def test_garage_init_refuses_a_corrupt_key_in_one_line(tmp_path):
    (tmp_path / "identity.key").write_bytes(b"\x08\x01garbage")
    result = run("garage_p2p.cli.garage", "init", "--home", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "not a valid identity key" in result.stderr
    assert (tmp_path / "identity.key").read_bytes() == b"\x08\x01garbage"


def test_garage_peer_bad_flags_are_one_line_errors(tmp_path):
    for args, needle in [
        (["--backend", "no-equals-sign"], "NAME=URL"),
        (["--api", "localhost"], "HOST:PORT"),
    ]:
        result = run("garage_p2p.cli.peer", "--home", str(tmp_path), *args)
        assert result.returncode == 1, result.stderr
        assert needle in result.stderr and "Traceback" not in result.stderr


def test_garage_peer_port_in_use_is_a_one_line_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run(
            "garage_p2p.cli.peer",
            "--home",
            str(tmp_path),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            f"127.0.0.1:{port}",
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "--api" in result.stderr


def test_bootstrap_list_file_is_used_when_no_bootstrap_is_given(tmp_path):
    (tmp_path / "bootstrap-peers.txt").write_text(
        "# comment\n/ip4/127.0.0.1/tcp/1/p2p/a  # inline\n\n/ip4/127.0.0.1/tcp/2/p2p/b\n"
    )
    assert load_settings({"home": str(tmp_path)}, {}).bootstrap == [
        "/ip4/127.0.0.1/tcp/1/p2p/a",
        "/ip4/127.0.0.1/tcp/2/p2p/b",
    ]
    assert load_settings({"home": str(tmp_path), "bootstrap": ["/x/p2p/c"]}, {}).bootstrap == ["/x/p2p/c"]
    shipped = Path(__file__).resolve().parents[1] / "bootstrap" / "bootstrap-peers.txt"
    from garage_p2p.settings import read_bootstrap_file

    assert read_bootstrap_file(shipped) == []  # no public nodes yet: nothing is dialled by default


def test_shipped_relay_config_loads(tmp_path):
    import shutil

    shutil.copy(Path(__file__).resolve().parents[1] / "bootstrap" / "relay-node.toml", tmp_path / "config.toml")
    s = load_settings({"home": str(tmp_path)}, {})
    assert s.relay and s.dht_mode == "server" and not s.mdns and s.api == "127.0.0.1:8000"
