"""Config loading: valid files, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_node.config import EXAMPLE_CONFIG, EdgeConfig
from edge_node.errors import ConfigError

MINIMAL = """
node_id = "gw-1"
listen = "127.0.0.1:9300"
data_dir = "/tmp/x"
[central]
url = "http://central:9400"
api_key = "k"
[buffer]
max_disk_mb = 100
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edge.toml"
    p.write_text(text)
    return p


def test_minimal_config_loads(tmp_path: Path) -> None:
    cfg = EdgeConfig.from_toml(_write(tmp_path, MINIMAL), env={})
    assert cfg.node_id == "gw-1"
    assert cfg.listen_port == 9300
    assert cfg.buffer.max_disk_mb == 100.0
    assert cfg.buffer.synchronous == "full"


def test_example_config_is_valid(tmp_path: Path) -> None:
    cfg = EdgeConfig.from_toml(_write(tmp_path, EXAMPLE_CONFIG), env={})
    assert cfg.central.api_key == "CHANGE-ME"


def test_env_overrides_every_level(tmp_path: Path) -> None:
    env = {"FLEET_EDGE_NODE_ID": "gw-2", "FLEET_EDGE_CENTRAL_API_KEY": "secret",
           "FLEET_EDGE_BUFFER_MAX_DISK_MB": "5", "FLEET_EDGE_BUFFER_SYNCHRONOUS": "normal",
           "FLEET_EDGE_INGEST_MAX_BODY_BYTES": "2_000_000", "FLEET_EDGE_CONFIG": "ignored"}
    cfg = EdgeConfig.from_toml(_write(tmp_path, MINIMAL), env=env)
    assert (cfg.node_id, cfg.central.api_key, cfg.buffer.max_disk_mb) == ("gw-2", "secret", 5.0)
    assert cfg.buffer.synchronous == "normal"
    assert cfg.ingest.max_body_bytes == 2_000_000


@pytest.mark.parametrize(("text", "env", "key"), [
    (MINIMAL + "\n[central.extra]\n", {}, "central.extra"),
    (MINIMAL.replace("max_disk_mb = 100", "max_disk_mb = 100\nmax_dsk_mb = 1"), {},
     "buffer.max_dsk_mb"),
    (MINIMAL.replace("max_disk_mb = 100", 'max_disk_mb = "lots"'), {}, "buffer.max_disk_mb"),
    (MINIMAL.replace("max_disk_mb = 100", "max_disk_mb = 0"), {}, "buffer.max_disk_mb"),
    (MINIMAL.replace('url = "http://central:9400"', 'url = "central:9400"'), {}, "central.url"),
    (MINIMAL.replace('listen = "127.0.0.1:9300"', 'listen = "9300"'), {}, "listen"),
    (MINIMAL.replace('node_id = "gw-1"', ""), {}, "node_id"),
    (MINIMAL.replace('api_key = "k"', ""), {}, "central.api_key"),
    (MINIMAL, {"FLEET_EDGE_BUFFER_MAX_DISK_MB": "many"}, "buffer.max_disk_mb"),
    (MINIMAL, {"FLEET_EDGE_CENTRAL_APIKEY": "x"}, "FLEET_EDGE_CENTRAL_APIKEY"),
    (MINIMAL.replace('[buffer]', 'buffer = 3\n[other]'), {}, "buffer"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        EdgeConfig.from_toml(_write(tmp_path, text), env=env)
    assert str(info.value).startswith(key) or key in str(info.value)


def test_syntax_error_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        EdgeConfig.from_toml(_write(tmp_path, "node_id = "), env={})


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        EdgeConfig.from_toml(tmp_path / "nope.toml", env={})


def test_the_tracked_edge_toml_is_the_current_example(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """The README's walkthrough writes `fleet-edge example-config > edge.toml`: the file in the
    repository must be exactly that, or the walkthrough leaves the checkout modified."""
    from pathlib import Path

    from edge_node.cli import main

    assert main(["example-config"]) == 0
    printed = capsys.readouterr().out
    tracked = Path(__file__).resolve().parents[2] / "edge.toml"
    assert tracked.read_text() == printed
