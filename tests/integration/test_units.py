"""`--print-systemd-unit`: units that start this installation, accepted by systemd-analyze where it exists."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess

import pytest

from support import program, write_toml


def _unit(name: str, *args: str) -> configparser.ConfigParser:
    res = subprocess.run(program(name) + [*args, "--print-systemd-unit"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    parsed = configparser.ConfigParser(strict=True, interpolation=None)
    parsed.optionxform = str  # systemd's keys are case-sensitive
    parsed.read_string(res.stdout)
    parsed.text = res.stdout  # type: ignore[attr-defined]
    return parsed


@pytest.mark.parametrize("name", ["host", "runner"])
def test_the_unit_starts_this_installation_with_this_config(name, tmp_path):
    config = write_toml(tmp_path / "c.toml", {"network": {"host_port": 8123}})
    unit = _unit(name, "--config", str(config))
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[-2:] == ["--config", str(config)]
    assert service["Restart"] == "always"
    # the command it names runs: the same interpreter and module, here asked only for its help
    res = subprocess.run(argv[:-2] + ["--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and f"hakuriver.{name}" in res.stdout, res.stderr
    if name == "runner":
        assert service["KillMode"] == "process"  # the keeper and its tasks outlive a restart
    else:
        assert "KillMode" not in service
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("name", ["host", "runner"])
def test_systemd_analyze_accepts_the_unit(name, tmp_path):
    path = tmp_path / f"hakuriver-{name}.service"
    path.write_text(_unit(name).text)  # type: ignore[attr-defined]
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"hakuriver-{name}.service" not in res.stderr, res.stderr  # no warning about the unit itself


def test_a_bad_config_prints_no_unit(tmp_path):
    res = subprocess.run(program("runner") + ["--config", str(tmp_path / "none.toml"), "--print-systemd-unit"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.splitlines()) == 1
