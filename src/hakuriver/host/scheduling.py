"""Coalesced scheduling: any number of events in one loop iteration cost one planning pass."""

from __future__ import annotations

import asyncio

from hakuriver.core.cluster import Cluster
from hakuriver.host.commits import GroupCommit


class Scheduler:
    def __init__(self, cluster: Cluster, commits: GroupCommit) -> None:
        self.cluster = cluster
        self.commits = commits
        self._requested = False

    def request(self) -> None:
        """Plan once at the end of this loop iteration, however many events ask for it."""
        if not self._requested:
            self._requested = True
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        """Plan now, staging the assignments it makes."""
        self._requested = False
        self.commits.stage(self.cluster.schedule())
