"""Which core IDs of one node are free: the home of the "disjoint core sets" guarantee."""

from __future__ import annotations

from collections.abc import Iterable


class CoreSet:
    """The core IDs of one node, each either free or taken by exactly one task."""

    def __init__(self, core_ids: Iterable[int]) -> None:
        self.all: tuple[int, ...] = tuple(sorted(set(core_ids)))
        self._free: set[int] = set(self.all)
        #: taken cores the node no longer offers: they leave the set when given back
        self._retiring: set[int] = set()

    @property
    def offered(self) -> tuple[int, ...]:
        """The cores the node offers: all of them but those retiring."""
        return tuple(i for i in self.all if i not in self._retiring)

    @property
    def total(self) -> int:
        return len(self.all)

    @property
    def free_count(self) -> int:
        return len(self._free)

    def free_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._free))

    def take(self, n: int) -> tuple[int, ...]:
        """The n lowest free core IDs, now taken."""
        if n < 1 or n > len(self._free):
            raise ValueError(f"cannot take {n} cores, {len(self._free)} free")
        ids = tuple(sorted(self._free)[:n])
        self._free.difference_update(ids)
        return ids

    def take_exact(self, ids: Iterable[int]) -> bool:
        """Take exactly these IDs (restoring a running task); False if any is not free."""
        wanted = set(ids)
        if not wanted <= self._free:
            return False
        self._free -= wanted
        return True

    def retire(self, ids: Iterable[int]) -> None:
        """These taken cores stay taken until given back, and then leave the set (a node that shrank)."""
        leaving = set(ids) & set(self.all)
        if leaving & self._free:
            raise ValueError(f"cores {sorted(leaving & self._free)} are free: remove them instead of retiring them")
        self._retiring |= leaving

    def give_back(self, ids: Iterable[int]) -> None:
        returned = set(ids) & set(self.all)
        if returned & self._free:
            raise ValueError(f"cores {sorted(returned & self._free)} were not taken")
        gone = returned & self._retiring
        if gone:
            self._retiring -= gone
            self.all = tuple(i for i in self.all if i not in gone)
        self._free |= returned - gone


class CoreQueues:
    """Per busy core of one node, how many tasks are queued ahead behind the one using it
    (core/ahead.py): such a core is given back only when its last task leaves it."""

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self._behind = {core: n for core, n in (counts or {}).items() if n > 0}
        #: tasks queued ahead on the node, all cores together
        self.total = sum(self._behind.values())

    def behind(self, core: int) -> int:
        return self._behind.get(core, 0)

    def add(self, core: int) -> None:
        self._behind[core] = self._behind.get(core, 0) + 1
        self.total += 1

    def leave(self, core: int) -> bool:
        """A task leaves `core`: True if one was queued behind it (which now has the core)."""
        behind = self._behind.get(core, 0)
        if not behind:
            return False
        if behind > 1:
            self._behind[core] = behind - 1
        else:
            del self._behind[core]
        self.total -= 1
        return True

    def as_dict(self) -> dict[int, int]:
        return dict(self._behind)


def format_core_ids(ids: Iterable[int]) -> str:
    """(2, 3) -> "2,3", the form of HAKURIVER_CORES and numactl --physcpubind."""
    return ",".join(str(i) for i in ids)


def parse_core_ids(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip() != "")
