"""The benchmark's parts that measure nothing themselves: a local cluster in a chosen profile, the
machine's two ceilings, and small helpers.

Profiles. The realistic one (the default) runs like a lab's cluster on this one machine: the
cluster's files on disk (a folder under the current directory unless --dir says otherwise),
numactl_path set when numactl is installed, and, as root, each runner in its own network
namespace with its own hostname and address (tests/netlab.py, the fault tests' lab), talking to
the host over a bridge. `--tmpfs` puts the files on /dev/shm; `--loopback` keeps every runner on
127.0.0.1.

Ceilings, both by as many threads as there are CPUs, the best of their rounds:
  spawn ceiling: spawn /bin/true and reap it;
  contract ceiling: what every task costs by contract, with nothing of HakuRiver's: make a
  scratch folder, create its stdout and stderr files, spawn /bin/true onto them, reap it,
  remove the scratch folder, on the file system of the cluster's files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import psutil

from hakuriver.client.api import HostClient

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parents[1] / "tests"


def program(name: str) -> list[str]:
    script = BIN / f"hakuriver.{name}"
    if script.exists():
        return [str(script)]
    module = {"host": "hakuriver.host.main", "runner": "hakuriver.runner.main", "client": "hakuriver.client.cli"}[name]
    return [sys.executable, "-m", module]


def emit(table_text: str, result: dict, json_file: str | None) -> None:
    """Print the table and the JSON document, and write the JSON to `json_file` if one is named."""
    print(table_text)
    text = json.dumps(result, indent=2)
    print(text)
    if json_file:
        Path(json_file).write_text(text + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def filesystem(path: str) -> str:
    """The type of the file system holding `path`, from the longest matching mount point."""
    best, kind = "", "unknown"
    real = os.path.realpath(path) + "/"
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") + "/"
        if real.startswith(mount) and len(mount) > len(best):
            best, kind = mount, part.fstype
    return kind


# ---- the ceilings -----------------------------------------------------------------------------
def _threads_round(n: int, one: Callable[[int, int], None]) -> float:
    """Seconds for `n` calls of one(thread, i), shared among as many threads as there are CPUs."""
    threads = os.cpu_count() or 1
    share = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

    def work(thread: int, count: int) -> None:
        for i in range(count):
            one(thread, i)

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(t, c)) for t, c in enumerate(share)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def best_of(n: int, rates: list[float]) -> dict:
    """A ceiling from the rates of its rounds of `n` tasks: the best one, since a ceiling is what
    the machine can do, and the best round is the one least disturbed by anything else running
    (the hardest number to compare against)."""
    return {"tasks": n, "threads": os.cpu_count() or 1, "rounds": len(rates), "seconds": n / max(rates),
            "per_second": max(rates), "per_second_rounds": rates}


def _spawn_reap(_thread: int, _i: int) -> None:
    os.waitpid(os.posix_spawn("/bin/true", ["/bin/true"], os.environ), 0)


def _contract_task(folder: Path) -> Callable[[int, int], None]:
    """One task as the contract asks, in `folder`: scratch folder, two output files, spawn, reap."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    counter = iter(range(10**12))

    def one_task(_thread: int, _i: int) -> None:
        k = next(counter)
        scratch = folder / f"scratch-{k}"
        os.mkdir(scratch)
        out = os.open(folder / f"{k}.out", flags, 0o644)
        err = os.open(folder / f"{k}.err", flags, 0o644)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)]
            pid = os.posix_spawn("/bin/true", ["/bin/true"], os.environ, file_actions=actions, setsid=True)
        finally:
            os.close(out)
            os.close(err)
        os.waitpid(pid, 0)
        os.rmdir(scratch)

    return one_task


def ceilings(folder: Path, n: int, rounds: int) -> tuple[dict, dict]:
    """Both ceilings, the best of `rounds` rounds of `n` tasks each: (spawn, contract)."""
    spawn, contract = zip(*(ceilings_round(folder, n) for _ in range(rounds)))
    return best_of(n, list(spawn)), best_of(n, list(contract))


def ceilings_round(folder: Path, n: int) -> tuple[float, float]:
    """One round of each ceiling, `n` tasks each: (spawn, contract) per second. It starts with
    nothing left to write back (`sync`: what ran before must not slow it; a bulk round starts so
    too); the contract's files go in `folder`, removed after (neither is timed)."""
    os.sync()
    spawn = n / _threads_round(n, _spawn_reap)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        contract = n / _threads_round(n, _contract_task(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return spawn, contract


# ---- a local cluster -------------------------------------------------------------------------
class Profile(NamedTuple):
    #: numactl_path of the runners ("" = pin with CPU affinity)
    numactl: str = ""
    #: each runner in its own network namespace (root only)
    netns: bool = False

    def describe(self) -> str:
        return (f"numactl {'on' if self.numactl else 'off'}, "
                f"runners {'in their own network namespaces' if self.netns else 'on loopback'}")


def profile(loopback: bool) -> tuple[Profile, str]:
    """The realistic profile as far as this machine allows, and why a part of it is off ("" if none)."""
    numactl = shutil.which("numactl") or ""
    why = "" if numactl else "numactl is not installed"
    if loopback:
        return Profile(numactl, False), why
    sys.path.insert(0, str(TESTS))
    from netlab import NetLab

    missing = NetLab.unavailable()
    return Profile(numactl, missing is None), "; ".join(w for w in (why, f"no namespaces: {missing}" if missing else "") if w)


#: every runner on loopback, pinning with CPU affinity
PLAIN = Profile()


class Cluster:
    def __init__(self, root: Path, runners: int, cores: int, prof: Profile = PLAIN) -> None:
        self.root = root
        self.profile = prof
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "shared").mkdir(parents=True)
        self.procs: list[subprocess.Popen] = []
        self.lab = None
        bind = {"host_bind_ip": "0.0.0.0"} if prof.netns else {}
        self.config = self._config("client", {"network": bind})
        try:
            self.host = self._start("host", self.config)
            wait_for(self._up, 20, "the host")
            self.runners = [self._start_runner(i + 1, cores) for i in range(runners)]
            client = self.api()
            wait_for(lambda: sum(n.state == "online" for n in client.nodes()) == runners, 30, "runners online")
        except BaseException:  # what did start does not outlive a start-up that failed
            self.stop()
            raise

    def _start_runner(self, i: int, cores: int) -> subprocess.Popen:
        tmp = self.root / f"tmp-r{i}"
        tmp.mkdir()
        extra: dict = {"runner": {"node_name": f"r{i}", "cores": cores},
                       "paths": {"local_temp_dir": str(tmp), "numactl_path": self.profile.numactl}}
        prefix: list[str] = []
        if self.profile.netns:
            if self.lab is None:
                from netlab import NetLab

                self.lab = NetLab()
            self.lab.add_host(f"r{i}")
            extra["network"] = {"host_reachable_address": self.lab.gateway}
            extra["runner"]["node_name"] = ""  # named after its own hostname, as on a real node
            prefix = self.lab.prefix(f"r{i}", f"r{i}")
        return self._start(f"runner-r{i}", self._config(f"r{i}", extra), "runner", prefix)

    def _config(self, name: str, extra: dict) -> Path:
        sections = {
            "network": {"host_port": self.port, "host_bind_ip": "127.0.0.1"},
            "paths": {"shared_dir": str(self.root / "shared"), "local_temp_dir": str(self.root)},
            "database": {"db_file": str(self.root / "hakuriver.db")},
            "timing": {"heartbeat_interval": 1, "heartbeat_timeout_factor": 10, "cleanup_check_interval": 1},
            "auth": {"cluster_key_file": str(self.key_file), "token_file": str(self.root / "token")},
        }
        for section, values in extra.items():
            sections[section].update(values) if section in sections else sections.__setitem__(section, values)
        text = "".join(
            f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in vals.items()) for s, vals in sections.items()
        )
        path = self.root / f"{name}.toml"
        path.write_text(text)
        return path

    @property
    def key_file(self) -> Path:
        return self.root / "cluster.key"

    @property
    def token(self) -> str:
        """The first admin's, made by the host on its first start."""
        return (self.root / "token").read_text().strip()

    def api(self) -> HostClient:
        return HostClient(self.url, token=self.token)

    def _start(self, name: str, config: Path, kind: str | None = None, prefix: list[str] | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen((prefix or []) + program(kind or name) + ["--config", str(config)], stdout=log,
                                stderr=log, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def client(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(program("client") + ["--config", str(self.config), *args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    def first_submit(self, batch_id: str) -> float:
        """When the host accepted the batch (read-only, from the host's own database)."""
        db = sqlite3.connect(f"file:{self.root / 'hakuriver.db'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT min(submitted_at) FROM tasks WHERE batch_id = ?", (batch_id,)).fetchone()[0]
        finally:
            db.close()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in psutil.process_iter(["cmdline"]):  # the keepers: they would linger a few seconds
            if "hakuriver.runner.keeper" in (proc.info["cmdline"] or []) and str(self.root) in " ".join(proc.info["cmdline"]):
                proc.kill()
        if self.lab is not None:
            self.lab.close()


def keeper_of(runner_pid: int) -> int:
    """The pid of the keeper a runner started (the task parent that outlives it)."""
    for child in psutil.Process(runner_pid).children():
        if "hakuriver.runner.keeper" in child.cmdline():
            return child.pid
    raise SystemExit("bench: the runner has no keeper")


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


