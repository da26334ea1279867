from __future__ import annotations

import tomllib
from pathlib import Path
from typing import get_type_hints

import pytest

from hakuriver.config import Config, ConfigError, default_toml_text, load_config


def test_packaged_defaults_and_dataclasses_name_the_same_keys():
    data = tomllib.loads(default_toml_text())
    sections = get_type_hints(Config)
    assert set(data) == set(sections)
    for name, cls in sections.items():
        assert set(data[name]) == set(cls._fields), name


def test_seed_keys_and_defaults():
    c = load_config()
    assert (c.network.host_bind_ip, c.network.host_port, c.network.host_reachable_address, c.network.runner_port) == (
        "0.0.0.0", 8000, "127.0.0.1", 8001)
    assert c.paths.numactl_path == ""
    assert (c.timing.heartbeat_interval, c.timing.heartbeat_timeout_factor, c.timing.cleanup_check_interval) == (5, 6, 10)
    assert c.timing.heartbeat_timeout == 30
    assert not c.paths.shared_dir.startswith("~")  # expanded for the user running it


def test_override_names_only_some_keys(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text('[network]\nhost_port = 9000\n[runner]\nnode_name = "n1"\n')
    c = load_config(str(f))
    assert c.network.host_port == 9000 and c.runner.node_name == "n1"
    assert c.network.host_reachable_address == "127.0.0.1" and c.timing.heartbeat_interval == 5


def test_integers_are_accepted_for_seconds(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("[timing]\nheartbeat_interval = 0.5\nkill_grace = 2\n")
    c = load_config(str(f))
    assert c.timing.heartbeat_interval == 0.5 and c.timing.kill_grace == 2.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("[network]\nhost_port = true\n", "network.host_port must be a whole number"),
        ("[network]\nhost_port = 70000\n", "network.host_port must be a port between 1 and 65535"),
        ("[runner]\ncores = -1\n", "runner.cores must be a whole number >= 0"),
        ("[paths]\nshared_dir = 5\n", "paths.shared_dir must be a string"),
        ("[timing]\nheartbeat_timeout_factor = 0.5\n", "timing.heartbeat_timeout_factor must be a number >= 1"),
        ("network = 1\n", "[network] must be a table"),
        ("[network]\nbogus = 1\n", "unknown key network.bogus"),
        ("[bogus]\n", "unknown section [bogus]"),
        ("[network\n", "is not valid TOML"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, message: str):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(f))
    assert message in str(err.value) and str(f) in str(err.value)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"))
