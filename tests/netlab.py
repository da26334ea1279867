"""The project's own namespace cluster: test hosts with their own IP and hostname on a private bridge.

Every address lives in a 10.x subnet on a bridge this object creates and removes; nothing is
sent anywhere else. Needs root and `ip netns`; `NetLab.unavailable()` says why not.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class NetLab:
    def __init__(self) -> None:
        self.tag = f"{random.randrange(16**4):04x}"
        self.net = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
        self.bridge = f"hrb{self.tag}"
        self.gateway = f"{self.net}.1"
        self.hosts: dict[str, tuple[str, str, str]] = {}  # name -> (netns, host-side veth, address)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    @staticmethod
    def unavailable() -> str | None:
        """Why namespace tests cannot run here, or None."""
        if os.geteuid() != 0:
            return "needs root for ip netns"
        for tool in ("ip", "unshare", "hostname"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        probe = f"hrprobe{os.getpid()}"
        if _ip("netns", "add", probe, check=False).returncode != 0:
            return "ip netns add is not permitted here"
        _ip("netns", "del", probe, check=False)
        return None

    def add_host(self, name: str) -> str:
        """A namespace with one link to the bridge; its address."""
        index = len(self.hosts)
        ns, outside, inside = f"hr{self.tag}{name}", f"v{self.tag}{index}h", f"v{self.tag}{index}n"
        address = f"{self.net}.{index + 2}"
        _ip("netns", "add", ns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.hosts[name] = (ns, outside, address)
        return address

    def prefix(self, name: str, hostname: str) -> list[str]:
        """Run a command inside the host's namespace with its own hostname."""
        ns = self.hosts[name][0]
        return ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]

    def cut(self, name: str) -> None:
        _ip("link", "set", self.hosts[name][1], "down")

    def heal(self, name: str) -> None:
        _ip("link", "set", self.hosts[name][1], "up")

    def close(self) -> None:
        for ns, outside, _ in self.hosts.values():
            _ip("link", "del", outside, check=False)
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)
