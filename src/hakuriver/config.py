"""Configuration: typed sections, the packaged defaults, and merging a user's TOML over them.

The packaged `utils/default_config.toml` is the single source of default values; the classes
below only say which keys exist and of what type. Loading never touches the file system beyond
reading the TOML files, and never knows whether the host, a runner or the client is asking.
"""

from __future__ import annotations

import os
import tomllib
# NamedTuple, not dataclasses: tomllib imports typing anyway, while dataclasses would cost the
# client ~10 ms of start-up
from typing import Any, NamedTuple

#: the packaged defaults, next to this module (a plain path: importlib.resources costs the
#: client ~8 ms of start-up, and the package is always installed as files)
DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "utils", "default_config.toml")


class ConfigError(Exception):
    """A config file is missing, unreadable, malformed, or has a wrong key or value."""


class NetworkConfig(NamedTuple):
    host_bind_ip: str
    host_port: int
    host_reachable_address: str
    runner_port: int
    tls_cert_file: str
    tls_key_file: str
    tls_ca_file: str

    @property
    def tls(self) -> bool:
        """HTTPS: the host has a certificate, or clients and runners are told which CA to trust."""
        return bool(self.tls_cert_file or self.tls_ca_file)

    @property
    def host_url(self) -> str:
        address = self.host_reachable_address
        if ":" in address and not address.startswith("["):
            address = f"[{address}]"  # an IPv6 literal
        return f"{'https' if self.tls else 'http'}://{address}:{self.host_port}"


class PathsConfig(NamedTuple):
    shared_dir: str
    local_temp_dir: str
    numactl_path: str


class DatabaseConfig(NamedTuple):
    db_file: str


class TimingConfig(NamedTuple):
    heartbeat_interval: float
    heartbeat_timeout_factor: float
    cleanup_check_interval: float
    kill_grace: float

    @property
    def heartbeat_timeout(self) -> float:
        return self.heartbeat_interval * self.heartbeat_timeout_factor


class RunnerConfig(NamedTuple):
    node_name: str
    cores: int


class TasksConfig(NamedTuple):
    default_time_limit: str

    @property
    def default_time_limit_seconds(self) -> float | None:
        from hakuriver.protocol import parse_duration

        return parse_duration(self.default_time_limit) if self.default_time_limit else None


class AuthConfig(NamedTuple):
    cluster_key_file: str
    token_file: str
    metrics_public: bool


class Config(NamedTuple):
    network: NetworkConfig
    paths: PathsConfig
    database: DatabaseConfig
    timing: TimingConfig
    runner: RunnerConfig
    tasks: TasksConfig
    auth: AuthConfig


_SECTION_TYPES = {
    "network": NetworkConfig,
    "paths": PathsConfig,
    "database": DatabaseConfig,
    "timing": TimingConfig,
    "runner": RunnerConfig,
    "tasks": TasksConfig,
    "auth": AuthConfig,
}
# Keys whose values are paths: "~" is expanded so that the defaults work for any user.
_PATH_KEYS = {("paths", "shared_dir"), ("paths", "local_temp_dir"), ("database", "db_file"),
              ("auth", "cluster_key_file"), ("auth", "token_file"), ("network", "tls_cert_file"),
              ("network", "tls_key_file"), ("network", "tls_ca_file")}
# Range checks, applied after types: (section, key) -> (predicate, what it must be).
_RULES: dict[tuple[str, str], tuple[Any, str]] = {
    ("network", "host_port"): (lambda v: 1 <= v <= 65535, "a port between 1 and 65535"),
    ("network", "runner_port"): (lambda v: 1 <= v <= 65535, "a port between 1 and 65535"),
    ("network", "host_reachable_address"): (lambda v: v.strip() != "", "a non-empty host name or IP"),
    ("timing", "heartbeat_interval"): (lambda v: v > 0, "a number of seconds > 0"),
    ("timing", "heartbeat_timeout_factor"): (lambda v: v >= 1, "a number >= 1"),
    ("timing", "cleanup_check_interval"): (lambda v: v > 0, "a number of seconds > 0"),
    ("timing", "kill_grace"): (lambda v: v >= 0, "a number of seconds >= 0"),
    ("runner", "cores"): (lambda v: v >= 0, "a whole number >= 0 (0 = all cores)"),
    ("database", "db_file"): (lambda v: v.strip() != "", "a file path"),
    ("auth", "cluster_key_file"): (lambda v: v.strip() != "", "a file path"),
    ("auth", "token_file"): (lambda v: v.strip() != "", "a file path"),
    ("tasks", "default_time_limit"): (lambda v: v == "" or _is_duration(v),
                                      'empty (no limit) or a duration like 90, 90s, 15m, 2h, 1d or 1:30:00'),
}


def _is_duration(text: str) -> bool:
    from hakuriver.protocol import parse_duration

    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def default_toml_text() -> str:
    with open(DEFAULT_CONFIG_PATH, encoding="utf-8") as fh:
        return fh.read()


def load_config(path: str | None = None) -> Config:
    """The packaged defaults, with the keys named in `path` (if given) laid over them."""
    merged = tomllib.loads(default_toml_text())
    if path is not None:
        user = _read_user_file(path)
        _merge(merged, user, path)
    return _build(merged, path or "default config")


def _read_user_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: not UTF-8 text") from None


def _merge(base: dict[str, Any], user: dict[str, Any], path: str) -> None:
    for section, values in user.items():
        if section not in base:
            known = ", ".join(f"[{s}]" for s in base)
            raise ConfigError(f"{path}: unknown section [{section}] (known: {known})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table of keys")
        for key, value in values.items():
            if key not in base[section]:
                known = ", ".join(base[section])
                raise ConfigError(f"{path}: unknown key {section}.{key} (known in [{section}]: {known})")
            base[section][key] = value


def _build(data: dict[str, Any], source: str) -> Config:
    built: dict[str, Any] = {}
    for section, cls in _SECTION_TYPES.items():
        values = {}
        for name in cls._fields:
            values[name] = _check_value(section, name, _type_name(cls, name), data[section][name], source)
        built[section] = cls(**values)
    return Config(**built)


def _type_name(cls: type, name: str) -> str:
    """'int', 'float' or 'str' (NamedTuple keeps postponed annotations as ForwardRefs)."""
    annotation = cls.__annotations__[name]
    if hasattr(annotation, "__forward_arg__"):
        return annotation.__forward_arg__
    return annotation if isinstance(annotation, str) else annotation.__name__


def _check_value(section: str, key: str, type_name: str, value: Any, source: str) -> Any:
    name = f"{section}.{key}"
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
    elif type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {name} must be a whole number, got {value!r}")
    elif type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
        value = float(value)
    elif type_name == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
        if (section, key) in _PATH_KEYS:
            value = os.path.expanduser(value)
    else:
        raise TypeError(f"config key {name} has an unsupported type {type_name}")  # a bug here, not user input
    rule = _RULES.get((section, key))
    if rule is not None and not rule[0](value):
        raise ConfigError(f"{source}: {name} must be {rule[1]}, got {value!r}")
    return value
