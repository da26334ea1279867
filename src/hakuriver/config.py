"""Configuration: typed sections, the packaged defaults, and merging a user's TOML over them.

The packaged `utils/default_config.toml` is the single source of default values; the classes
below only say which keys exist and of what type. Loading never touches the file system beyond
reading the TOML files, and never knows whether the host, a runner or the client is asking.
"""

from __future__ import annotations

import os
from collections import namedtuple

# annotations only: importing typing would cost every command ~2 ms of start-up
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the packaged defaults, next to this module (a plain path: importlib.resources costs the
#: client ~8 ms of start-up, and the package is always installed as files)
DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "utils", "default_config.toml")


class ConfigError(Exception):
    """A config file is missing, unreadable, malformed, or has a wrong key or value."""


def _section(cls: type) -> Any:
    """An immutable record with the fields `cls` annotates, in order, and its methods: what
    typing.NamedTuple makes, built on collections.namedtuple (no typing, no dataclasses, whose
    imports every command would pay for). The annotations stay, as the types `_build` checks."""
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    return type(cls.__name__, (namedtuple(cls.__name__, cls.__annotations__),), {**body, "__slots__": ()})


@_section
class NetworkConfig:
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


@_section
class PathsConfig:
    shared_dir: str
    local_temp_dir: str
    numactl_path: str


@_section
class DatabaseConfig:
    db_file: str


@_section
class TimingConfig:
    heartbeat_interval: float
    heartbeat_timeout_factor: float
    cleanup_check_interval: float
    kill_grace: float

    @property
    def heartbeat_timeout(self) -> float:
        return self.heartbeat_interval * self.heartbeat_timeout_factor


@_section
class RunnerConfig:
    node_name: str
    cores: int


@_section
class TasksConfig:
    default_time_limit: str

    @property
    def default_time_limit_seconds(self) -> float | None:
        from hakuriver.durations import parse_duration

        return parse_duration(self.default_time_limit) if self.default_time_limit else None


@_section
class AuthConfig:
    cluster_key_file: str
    token_file: str
    metrics_public: bool


@_section
class Config:
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
    from hakuriver.durations import parse_duration

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
    merged = parse_toml(default_toml_text())
    if path is not None:
        user = _read_user_file(path)
        _merge(merged, user, path)
    return _build(merged, path or "default config")


def _read_user_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: not UTF-8 text") from None
    try:
        return parse_toml(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def parse_toml(text: str) -> dict[str, Any]:
    """`tomllib.loads(text)`. A file of plain tables and `key = value` lines (strings without
    escapes, whole numbers, decimals, true/false, comments) is read here, sparing every command
    tomllib's import (~4 ms); anything else goes to tomllib, so every file means what TOML says."""
    simple = _parse_simple(text)
    if simple is not None:
        return simple
    import tomllib

    return tomllib.loads(text)


_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _parse_simple(text: str) -> dict[str, Any] | None:
    """The document, if every line is in the plain subset; None if any is not (or repeats a name)."""
    doc: dict[str, Any] = {}
    table = doc
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if line.endswith("\r") and number < len(lines):  # CRLF; a lone CR is not a line break
            line = line[:-1]
        if any(c < " " and c != "\t" or c == "\x7f" for c in line):
            return None
        s = line.strip(" \t")
        if not s or s[0] == "#":
            continue
        if s[0] == "[":
            name, close, tail = s[1:].partition("]")
            name = name.strip(" \t")
            if not close or not _is_bare(name) or name in doc or not _is_end(tail):
                return None
            table = doc[name] = {}
            continue
        key, eq, rest = s.partition("=")
        key = key.strip(" \t")
        if not eq or not _is_bare(key) or key in table:
            return None
        value, tail = _simple_value(rest.lstrip(" \t"))
        if value is None or not _is_end(tail):
            return None
        table[key] = value
    return doc


def _is_bare(name: str) -> bool:
    return bool(name) and all(c in _BARE for c in name)


def _is_end(tail: str) -> bool:
    tail = tail.strip(" \t")
    return not tail or tail[0] == "#"


def _simple_value(rest: str) -> tuple[Any, str]:
    """A value at the start of `rest`, and what follows it; (None, "") if it is not a plain one."""
    if rest[:1] in ('"', "'"):
        quote = rest[0]
        end = rest.find(quote, 1)
        if end < 0 or rest.startswith(quote * 3) or (quote == '"' and "\\" in rest[1:end]):
            return None, ""
        return rest[1:end], rest[end + 1:]
    token, _, tail = rest.replace("\t", " ").partition(" ")
    token, hash_, comment = token.partition("#")
    tail = f"{hash_}{comment} {tail}"
    if token in ("true", "false"):
        return token == "true", tail
    digits = token[1:] if token[:1] in "+-" else token
    whole, dot, fraction = digits.partition(".")
    if not whole.isdigit() or not whole.isascii() or (len(whole) > 1 and whole[0] == "0"):
        return None, ""
    if not dot:
        return int(token), tail
    if not fraction.isdigit() or not fraction.isascii():
        return None, ""
    return float(token), tail


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
    """'bool', 'int', 'float' or 'str' (the annotation: a string, as annotations are postponed here)."""
    annotation = cls.__annotations__[name]
    return getattr(annotation, "__name__", annotation)


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
