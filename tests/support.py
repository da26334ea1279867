"""Test support: polling instead of sleeping, and a real local cluster of processes (à la HyperQueue's HqEnv)."""

from __future__ import annotations

import contextlib
import os
import signal as signals
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

BIN = Path(sys.executable).parent


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `pred` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def program(name: str) -> list[str]:
    """The installed console script if there is one (what users run), else `python -m`."""
    script = BIN / f"hakuriver.{name}"
    if script.exists():
        return [str(script)]
    module = {"host": "hakuriver.host.main", "runner": "hakuriver.runner.main", "client": "hakuriver.client.cli"}[name]
    return [sys.executable, "-m", module]


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.fh = open(log, "ab")
        self.popen = subprocess.Popen((prefix or []) + argv, stdout=self.fh, stderr=subprocess.STDOUT,
                                      start_new_session=True, env=env)
        self.expected_exit = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        self.expected_exit = sig in (signals.SIGKILL, signals.SIGTERM, signals.SIGINT)
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 10.0) -> None:
        self.signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signals.SIGKILL)
            self.popen.wait(5)
        self.fh.close()


class LocalCluster:
    """A host and runners as real processes on a free loopback port, everything under `root`."""

    def __init__(self, root: Path, heartbeat_interval: float = 0.5, timeout_factor: float = 4,
                 host_address: str = "127.0.0.1", kill_grace: float = 1.0) -> None:
        self.root = root
        self.shared = root / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_address = host_address
        self.db_file = root / "db" / "hakuriver.db"  # its folder does not exist yet: the host creates it
        self.base: dict[str, dict[str, Any]] = {
            "network": {"host_port": self.port, "host_reachable_address": host_address, "host_bind_ip": "127.0.0.1"},
            "paths": {"shared_dir": str(self.shared), "local_temp_dir": str(root / "tmp-host")},
            "database": {"db_file": str(self.db_file)},
            # the host makes both on its first start; runners and clients of this config find them
            "auth": {"cluster_key_file": str(root / "auth" / "cluster.key"), "token_file": str(root / "auth" / "token")},
            "timing": {"heartbeat_interval": heartbeat_interval, "heartbeat_timeout_factor": timeout_factor,
                       "cleanup_check_interval": 0.2, "kill_grace": kill_grace},
        }
        self.config = write_toml(root / "client.toml", self.base)
        self.host: Proc | None = None
        self.runners: dict[str, Proc] = {}
        self.procs: list[Proc] = []

    @property
    def url(self) -> str:
        return f"http://{self.host_address}:{self.port}"

    @property
    def token_file(self) -> Path:
        return Path(self.base["auth"]["token_file"])

    @property
    def token(self) -> str:
        """The first admin's token, which the host wrote on its first start."""
        return self.token_file.read_text().strip()

    @property
    def cluster_key(self) -> str:
        return Path(self.base["auth"]["cluster_key_file"]).read_text().strip()

    def api(self, timeout: float = 30.0):  # noqa: ANN201 - a HostClient
        """The client library, as the first admin."""
        from hakuriver.client.api import HostClient

        return HostClient(self.url, timeout=timeout, token=self.token)

    def runner_config(self, name: str, cores: int, node_name: str | None = None, host_address: str | None = None,
                      **paths: str) -> Path:
        """Config of runner `name`; node_name "" lets it use its hostname."""
        tmp = self.root / f"tmp-{name}"
        tmp.mkdir(exist_ok=True)
        sections = {k: dict(v) for k, v in self.base.items()}
        sections["paths"]["local_temp_dir"] = str(tmp)
        sections["paths"].update(paths)
        if host_address:
            sections["network"]["host_reachable_address"] = host_address
        sections["runner"] = {"node_name": name if node_name is None else node_name, "cores": cores}
        return write_toml(self.root / f"runner-{name}.toml", sections)

    def start_host(self, bind_ip: str | None = None) -> Proc:
        config = self.config
        if bind_ip:
            sections = {k: dict(v) for k, v in self.base.items()}
            sections["network"]["host_bind_ip"] = bind_ip
            config = write_toml(self.root / "host.toml", sections)
        self.host = Proc("host", program("host") + ["--config", str(config)], self.root / "host.log")
        self.procs.append(self.host)
        wait_until(self._host_up, 15, f"the host to listen (log {self.root / 'host.log'})")
        return self.host

    def _host_up(self) -> bool:
        if self.host is not None and not self.host.alive():
            raise AssertionError(f"host exited early:\n{(self.root / 'host.log').read_text()}")
        try:
            with socket.create_connection((self.host_address, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start_runner(self, name: str, cores: int, prefix: list[str] | None = None, node_name: str | None = None,
                     host_address: str | None = None, **paths: str) -> Proc:
        config = self.runner_config(name, cores, node_name, host_address, **paths)
        log = self.root / f"runner-{name}.log"
        proc = Proc(f"runner-{name}", program("runner") + ["--config", str(config)], log, prefix=prefix)
        self.runners[name] = proc
        self.procs.append(proc)
        return proc

    def client(self, *args: str, cwd: str | None = None, config: Path | None = None, timeout: float = 60,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """The client as a user runs it; `env` is added to this process's environment."""
        argv = program("client") + ["--config", str(config or self.config), *args]
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, **env} if env else None)

    def submit(self, *args: str, **kw: Any) -> str:
        res = self.client(*args, **kw)
        assert res.returncode == 0, res.stderr
        return res.stdout.splitlines()[0].strip()

    def nodes(self) -> dict[str, sqlite3.Row]:
        return {r["name"]: r for r in self.query("SELECT * FROM nodes")}

    def wait_online(self, *names: str, timeout: float = 20) -> None:
        def online() -> bool:
            res = self.client("--list-nodes")
            lines = res.stdout.splitlines()[1:]
            states = {line.split()[0]: line.split()[1] for line in lines if line.strip()}
            return all(states.get(n) == "online" for n in names)
        wait_until(online, timeout, f"nodes {names} online")

    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        """Read the host's real SQLite file (read-only, like an operator would)."""
        db = sqlite3.connect(f"file:{self.db_file}?mode=ro", uri=True, timeout=5)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def task(self, task_id: str) -> sqlite3.Row:
        rows = self.query("SELECT * FROM tasks WHERE task_id = ?", task_id)
        assert rows, f"task {task_id} not in the database"
        return rows[0]

    def wait_state(self, task_id: str, *states: str, timeout: float = 30) -> sqlite3.Row:
        def reached() -> sqlite3.Row | None:
            row = self.task(task_id)
            return row if row["state"] in states else None
        return wait_until(reached, timeout, f"task {task_id} to reach {states}")

    def task_processes(self) -> list[psutil.Process]:
        """Processes started for this cluster's tasks (they carry its shared dir in their env)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("HAKURIVER_SHARED_DIR") == str(self.shared):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log}) ---\n{p.log.read_text(errors='replace')[-4000:]}" for p in self.procs)

    def shutdown(self) -> list[str]:
        """Stop everything; the names of processes that died without being told to."""
        crashed = [p.name for p in self.procs if not p.alive() and not p.expected_exit and p.popen.returncode != 0]
        for p in self.procs:
            p.stop()
        leftovers = self.task_processes() + self.keepers()
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        wait_until(lambda: not any(_alive(p) for p in leftovers), 10, "killed processes to die")
        return crashed

    def keepers(self) -> list[psutil.Process]:
        """The runners' keepers (they outlive a runner on purpose, for as long as a task runs)."""
        return keepers_below(str(self.root))


def keepers_below(folder: str) -> list[psutil.Process]:
    """The keepers whose state folder is `folder` or inside it."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "hakuriver.runner.keeper" in cmdline and any(a == folder or a.startswith(folder + "/") for a in cmdline):
            found.append(proc)
    return found


def _alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie: a zombie's files and working folder are already released."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def make_cluster(tmp_path: Path, request: pytest.FixtureRequest, **kw: Any):  # noqa: ANN201
    cluster = LocalCluster(tmp_path, **kw)
    yield cluster
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(cluster.logs())
    crashed = cluster.shutdown()
    assert not crashed, f"processes crashed: {crashed}\n{cluster.logs()}"


@contextlib.contextmanager
def cluster_running(tmp_path: Path, request: pytest.FixtureRequest, **kw: Any) -> Iterator[LocalCluster]:
    """make_cluster as a `with` block, for a fixture or a test that starts processes first:
    the cluster is shut down (and checked for crashes) however the block ends."""
    gen = make_cluster(tmp_path, request, **kw)
    cluster = next(gen)
    try:
        yield cluster
    finally:
        for _ in gen:
            pass




# ---- the host app in-process (no port), as a runner and a user would call it -----------------
CLUSTER_KEY = "in-process-cluster-key"


def in_process_app(store: Any, users: tuple[tuple[str, bool], ...] = (("ada", True),)):  # noqa: ANN201
    """The host's app on `store`, and a token per user (name, admin): the app users see, with its guard."""
    from hakuriver.core.cluster import Cluster
    from hakuriver.host.app import build_app
    from hakuriver.host.auth import Authenticator
    from hakuriver.host.service import HostService
    from hakuriver.host.users import add_user

    tokens = {name: add_user(store, name, admin) for name, admin in users}
    app = build_app(HostService(Cluster(heartbeat_timeout=30), store), Authenticator(store, CLUSTER_KEY))
    return app, tokens


def authed_client(app: Any, token: str):  # noqa: ANN201
    """A Starlette TestClient that presents `token`, and the cluster key on the runner routes."""
    from starlette.testclient import TestClient

    class AuthedClient(TestClient):
        def request(self, method: str, url: Any, **kw: Any) -> Any:  # type: ignore[override]
            secret = CLUSTER_KEY if str(url).startswith("/api/runner/") else token
            kw["headers"] = {"Authorization": f"Bearer {secret}", **(kw.get("headers") or {})}
            return super().request(method, url, **kw)

    return AuthedClient(app)


def start_namespaced(cluster: LocalCluster, netlab: Any, *names: str, cores: int = 2) -> None:
    """A host on every address and a runner per name in its own network namespace (tests/netlab.py),
    each named after its namespace's hostname, host-<name>; back once all are online."""
    cluster.start_host(bind_ip="0.0.0.0")
    for name in names:
        netlab.add_host(name)
        # node_name "" : the runner names itself after the hostname of its own UTS namespace
        cluster.start_runner(name, cores, prefix=netlab.prefix(name, f"host-{name}"), node_name="",
                             host_address=netlab.gateway)
    cluster.wait_online(*(f"host-{n}" for n in names))


def start_a_and_b(cluster: LocalCluster) -> None:
    """The shared test cluster's shape: a host, runner `a` with 4 cores and runner `b` with 2, online."""
    cluster.start_host()
    cluster.start_runner("a", 4)
    cluster.start_runner("b", 2)
    cluster.wait_online("a", "b")
