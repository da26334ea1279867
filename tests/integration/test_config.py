"""`--config FILE` overrides only the keys it names."""

from __future__ import annotations

from support import write_toml


def test_client_config_naming_only_the_port_keeps_every_other_default(cluster, tmp_path):
    # host_reachable_address keeps its default 127.0.0.1; only the port is named (the token comes
    # from the environment, as the default token_file is this machine's user's own)
    config = write_toml(tmp_path / "client.toml", {"network": {"host_port": cluster.port}})
    res = cluster.client("--list-nodes", config=config, env={"HAKURIVER_TOKEN": cluster.token})
    assert res.returncode == 0, res.stderr
    assert {line.split()[0] for line in res.stdout.splitlines()[1:]} == {"a", "b"}
