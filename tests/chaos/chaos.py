#!/usr/bin/env python3
"""Chaos run: a real cluster under a stream of tasks while processes die and links go down.

    python tests/chaos/chaos.py [--minutes M] [--seed S] [--workdir DIR] [--keep]
                                [--faults-per-minute F]

As root only (it puts each runner in its own network namespace, tests/netlab.py); otherwise it
prints one "skipped: ..." line and exits 0. One host and four runners (hostnames host-a …
host-d), heartbeats every 0.5 s, a node offline after 3 s of silence, the shared folder on real
disk (DIR/shared; DIR defaults to a fresh folder under /var/tmp, removed at the end unless --keep;
a DIR given with --workdir must be empty and is kept).

For M minutes a submitter thread sends short tasks through the real client (some with --retries,
some --after an earlier task or batch, some small --array batches, a few with --time-limit),
while the main thread injects faults at random moments: SIGKILL of a runner (restarted), of a
keeper (the runner starts a new one), of the host (restarted), and cuts of a runner's link,
healed after less or more than the heartbeat timeout.

Every task appends "<task id> <attempt>" as its one line to chaos/<task id>.<attempt> on the
shared folder, created with O_EXCL (sh's noclobber): a second run of the same attempt cannot
create it and writes to chaos/dup instead. Then it sleeps 0.1-3 s and exits 0, or non-zero on
its first attempt or on every attempt, as chosen at submission.

At the end everything is healed and restarted, and once every task is final the run checks what
the tasks wrote and the host's SQLite file (read-only): every accepted task final, none without
--retries run twice, no attempt run twice, every completed task's side effect there, no task
started before its --after dependency had run, no task process left, `PRAGMA integrity_check`.
It prints a table and exits 1 with one line per violation (and the evidence: DB rows and log
lines) if any check fails. Everything is bounded in count and time and torn down on any exit.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: support, netlab

import psutil  # noqa: E402

from netlab import NetLab  # noqa: E402
from support import LocalCluster, keepers_below  # noqa: E402

RUNNERS = ("a", "b", "c", "d")
CORES = 2
HEARTBEAT = 0.5
FACTOR = 6  # offline after 3 s of silence
TIMEOUT = HEARTBEAT * FACTOR
FINAL = ("completed", "failed", "killed", "lost", "timeout")
EVIDENCE_COLUMNS = ("task_id, batch_id, state, node, core_ids, attempt, retries, after, exit_code, signal, error, "
                    "submitted_at, started_at, finished_at, attempts")
FAULT_KINDS = ("runner_kill", "keeper_kill", "host_kill", "cut_short", "cut_long")
FAULT_WEIGHTS = (2, 2, 1.5, 1.5, 2)

# $0 seconds to sleep, $1 how it ends (0 exit 0, 1 exit 3 on its first attempt only, 2 exit 4 on every
# attempt), $2 the task it runs --after ("" for none or a batch): some file of it must exist at our start.
TASK_SCRIPT = r"""d="$HAKURIVER_SHARED_DIR/chaos"; a="${HAKURIVER_ATTEMPT:-none}"; me="$HAKURIVER_TASK_ID"
set -C
if ! echo "$me $a" > "$d/$me.$a"; then set +C; echo "$me $a" >> "$d/dup"; fi
set +C
if [ -n "$2" ]; then
  for g in "$d/$2".*; do [ -e "$g" ] || echo "$me $2" >> "$d/early"; break; done
fi
sleep "$0"
if [ "$1" = 2 ]; then exit 4; fi
if [ "$1" = 1 ] && [ "$a" = 1 ]; then exit 3; fi
exit 0
"""


def node(name: str) -> str:
    return f"host-{name}"


@dataclass
class Submission:
    ids: list[str]
    batch: str
    retries: int
    after: str  # a task or batch ID, or ""
    after_task: str  # the same when it is a task's ID, else ""
    failmode: int
    sleep: float
    time_limit: str
    at: float


@dataclass
class Stats:
    attempted: int = 0
    accepted: int = 0
    refused: int = 0
    unknown: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)
    skipped_faults: int = 0


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seed = args.seed
        self.rng = random.Random(self.seed)
        self.minutes = args.minutes
        self.stats = Stats()
        self.lock = threading.Lock()
        self.subs: list[Submission] = []
        self.task_sub: dict[str, Submission] = {}
        self.stop = threading.Event()
        self.submitter: threading.Thread | None = None
        self.violations: list[tuple[str, str]] = []  # (message, task ID or "")
        self.scheduled: list[tuple[float, str, str]] = []  # (due, action, runner name or "")
        self.down: set[str] = set()  # runners killed, not yet restarted
        self.cut: set[str] = set()  # runners whose link is down
        self.host_down = False
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.netlab: NetLab | None = None
        self.cluster: LocalCluster | None = None
        self.own_workdir = args.workdir is None
        if args.workdir is None:
            self.root = Path(tempfile.mkdtemp(prefix="hakuriver-chaos-", dir="/var/tmp"))
        else:
            self.root = Path(args.workdir).resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            if any(self.root.iterdir()):
                raise SystemExit(f"chaos: --workdir {self.root} is not empty")
        self.chaos_dir = self.root / "shared" / "chaos"
        # filled in by check()
        self.rows: dict[str, sqlite3.Row] = {}
        self.files: dict[str, list[int]] = {}
        self.integrity = "not checked"
        self.dups = 0
        self.lost_never_ran: list[str] = []

    # ---- logging ----------------------------------------------------------------------------

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    def violation(self, msg: str, task_id: str = "") -> None:
        self.violations.append((msg, task_id))

    # ---- the cluster ------------------------------------------------------------------------

    def start(self) -> None:
        self.netlab = NetLab()
        self.cluster = LocalCluster(self.root, heartbeat_interval=HEARTBEAT, timeout_factor=FACTOR, kill_grace=1.0)
        self.chaos_dir.mkdir(parents=True)
        self.cluster.start_host(bind_ip="0.0.0.0")
        for name in RUNNERS:
            self.netlab.add_host(name)
            self.start_runner(name)
        self.cluster.wait_online(*(node(n) for n in RUNNERS), timeout=60)
        self.say(f"cluster up: host {self.cluster.url}, runners {', '.join(node(n) for n in RUNNERS)} "
                 f"on {self.netlab.net}.0/24, workdir {self.root}; t=0 is Unix time {self.t0_wall:.1f}")

    def start_runner(self, name: str) -> None:
        assert self.cluster is not None and self.netlab is not None
        self.cluster.start_runner(name, CORES, prefix=self.netlab.prefix(name, node(name)), node_name="",
                                  host_address=self.netlab.gateway)

    def start_host(self) -> None:
        """Start the host again; a host that will not start is a violation (tried three times)."""
        assert self.cluster is not None
        for attempt in range(3):
            try:
                self.cluster.start_host(bind_ip="0.0.0.0")
                self.host_down = False
                return
            except AssertionError as exc:
                self.violation(f"the host did not start again (try {attempt + 1}): {str(exc)[:300]}")
                time.sleep(1)
        raise RuntimeError("the host does not start any more")

    def check_processes(self) -> None:
        """A host or runner that died without being killed by us is a violation; it is started again."""
        assert self.cluster is not None
        host = self.cluster.host
        if host is not None and not self.host_down and not host.alive():
            self.violation(f"the host exited by itself with code {host.popen.returncode} (see {host.log})")
            host.stop()
            self.start_host()
        for name in RUNNERS:
            proc = self.cluster.runners[name]
            if name not in self.down and not proc.alive():
                self.violation(f"runner {node(name)} exited by itself with code {proc.popen.returncode} (see {proc.log})")
                proc.stop()
                self.start_runner(name)

    # ---- submissions ------------------------------------------------------------------------

    def submit_loop(self, deadline: float, limit: int) -> None:
        rng = random.Random(self.seed + 1)
        for _ in range(limit):
            if self.stop.wait(rng.uniform(0.2, 0.7)) or time.monotonic() > deadline:
                return
            try:
                self.submit_one(rng)
            except Exception as exc:  # a bug of this script: end the run with it
                self.violation(f"chaos script error in the submitter: {exc!r}")
                return

    def choose(self, rng: random.Random) -> tuple[list[str], Submission]:
        flags: list[str] = []
        retries = rng.choice((1, 2)) if rng.random() < 0.4 else 0
        if retries:
            flags += ["--retries", str(retries)]
        after = after_task = ""
        with self.lock:
            recent = self.subs[-30:]
        if recent and rng.random() < 0.2:
            dep = rng.choice(recent)
            after = dep.batch or dep.ids[0]
            after_task = "" if dep.batch else dep.ids[0]
            flags += ["--after", after]
        time_limit = ""
        if rng.random() < 0.06:
            time_limit = "2"
            flags += ["--time-limit", time_limit]
        if rng.random() < 0.1:
            flags += ["--array", f"1-{rng.randint(2, 4)}"]
        failmode = rng.choices((0, 1, 2), (0.75, 0.15, 0.10))[0]
        sleep = round(rng.uniform(0.1, 3.0), 2)
        sub = Submission([], "", retries, after, after_task, failmode, sleep, time_limit, time.monotonic() - self.t0)
        return flags, sub

    def submit_one(self, rng: random.Random) -> None:
        assert self.cluster is not None
        flags, sub = self.choose(rng)
        argv = [*flags, "--json", "--", "sh", "-c", TASK_SCRIPT, str(sub.sleep), str(sub.failmode), sub.after_task]
        with self.lock:
            self.stats.attempted += 1
        try:
            res = self.cluster.client(*argv, timeout=30)
        except subprocess.TimeoutExpired:
            with self.lock:
                self.stats.unknown += 1
            return
        if res.returncode != 0:
            with self.lock:
                self.stats.refused += 1
            return
        doc = json.loads(res.stdout)
        if "batch_id" in doc:
            sub.batch, sub.ids = doc["batch_id"], list(doc["task_ids"])
        else:
            sub.ids = [doc["task_id"]]
        with self.lock:
            self.stats.accepted += 1
            self.subs.append(sub)
            for task_id in sub.ids:
                self.task_sub[task_id] = sub

    # ---- faults -----------------------------------------------------------------------------

    def schedule(self, delay: float, action: str, name: str = "") -> None:
        self.scheduled.append((time.monotonic() + delay, action, name))

    def run_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        due = [s for s in self.scheduled if everything or s[0] <= now]
        self.scheduled = [s for s in self.scheduled if s not in due]
        for _, action, name in sorted(due):
            self.do(action, name)

    def do(self, action: str, name: str) -> None:
        assert self.cluster is not None and self.netlab is not None
        if action == "heal":
            self.netlab.heal(name)
            self.cut.discard(name)
            self.say(f"healed the link of {node(name)}")
        elif action == "restart_runner":
            self.start_runner(name)
            self.down.discard(name)
            self.say(f"restarted runner {node(name)}")
        elif action == "restart_host":
            self.start_host()
            self.say("restarted the host")

    def inject(self) -> None:
        kind = self.rng.choices(FAULT_KINDS, FAULT_WEIGHTS)[0]
        impaired = self.down | self.cut
        if kind == "host_kill":
            done = self.kill_host()
        elif kind == "keeper_kill":
            done = self.kill_keeper(self.rng.choice(RUNNERS))
        else:
            # never more than two runners down or cut at once
            pool = [n for n in RUNNERS if n not in (self.down if kind == "runner_kill" else self.cut)]
            pool = [n for n in pool if n in impaired or len(impaired) < 2]
            done = bool(pool) and self.impair(kind, self.rng.choice(pool))
        if done:
            self.stats.faults[kind] += 1
        else:
            self.stats.skipped_faults += 1

    def kill_host(self) -> bool:
        assert self.cluster is not None and self.cluster.host is not None
        if self.host_down:
            return False
        self.cluster.host.stop(signal.SIGKILL)
        self.host_down = True
        delay = self.rng.uniform(0.2, 4.0)
        self.schedule(delay, "restart_host")
        self.say(f"SIGKILL the host (back in {delay:.1f}s)")
        return True

    def kill_keeper(self, name: str) -> bool:
        found = keepers_below(str(self.root / f"tmp-{name}"))
        # A task the keeper is spawning shows the keeper's command line until its exec (posix_spawn's
        # child shares its memory): only a keeper whose parent is no keeper is one. Tasks are never ours to kill.
        pids = {p.pid for p in found}
        keepers, parents = [], []
        for proc in found:
            try:
                parent = proc.ppid()
            except psutil.NoSuchProcess:
                continue
            if parent not in pids:
                keepers.append(proc)
                parents.append(parent)
        if len(keepers) > 1:
            self.say(f"note: {len(keepers)} keepers at once for {node(name)}: "
                     + ", ".join(f"pid {p.pid} (parent {parent})" for p, parent in zip(keepers, parents)))
        for proc in keepers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if keepers:
            self.say(f"SIGKILL the keeper of {node(name)} (pid {', '.join(str(p.pid) for p in keepers)})")
        return bool(keepers)

    def impair(self, kind: str, name: str) -> bool:
        assert self.cluster is not None and self.netlab is not None
        if kind == "runner_kill":
            self.cluster.runners[name].stop(signal.SIGKILL)
            self.down.add(name)
            delay = self.rng.uniform(0.2, 3.0)
            self.schedule(delay, "restart_runner", name)
            self.say(f"SIGKILL runner {node(name)} (back in {delay:.1f}s)")
        else:
            self.netlab.cut(name)
            self.cut.add(name)
            delay = self.rng.uniform(0.3, 1.5) if kind == "cut_short" else self.rng.uniform(TIMEOUT + 1, TIMEOUT + 6)
            self.schedule(delay, "heal", name)
            self.say(f"cut the link of {node(name)} for {delay:.1f}s")
        return True

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> int:
        self.start()
        seconds = self.minutes * 60
        deadline = time.monotonic() + seconds
        rate = self.args.faults_per_minute
        max_faults = max(1, int(self.minutes * rate * 4 / 3))
        gap = 60 / rate  # on average
        self.submitter = threading.Thread(target=self.submit_loop, args=(deadline, int(seconds * 4) + 10), daemon=True)
        self.submitter.start()
        next_fault = time.monotonic() + self.rng.uniform(2, gap)
        injected = 0
        for _ in range(int(seconds * 20) + 100):  # 0.05 s steps: bounded by the deadline and by count
            now = time.monotonic()
            if now > deadline:
                break
            self.run_due()
            self.check_processes()
            if now >= next_fault and injected < max_faults and now < deadline - 5:
                self.inject()
                injected += 1
                next_fault = now + self.rng.uniform(0.5 * gap, 1.5 * gap)
            time.sleep(0.05)
        self.stop.set()
        self.submitter.join(60)
        self.say(f"submissions stopped: {self.stats.accepted} accepted; healing and restarting everything")
        self.run_due(everything=True)
        self.check_processes()
        self.settle()
        self.check()
        self.report()
        return 1 if self.violations else 0

    def db(self, sql: str, *params: object) -> list[sqlite3.Row]:
        assert self.cluster is not None
        for _ in range(20):
            try:
                return self.cluster.query(sql, *params)
            except sqlite3.OperationalError:  # e.g. busy during the host's start-up
                time.sleep(0.25)
        return self.cluster.query(sql, *params)

    def settle(self) -> None:
        """Every node back online, then every task final (and none still lost that ran), then no task process."""
        assert self.cluster is not None
        names = [node(n) for n in RUNNERS]
        time.sleep(TIMEOUT + 1)  # a node silent just before the healing has gone offline by now, or never will
        if not self.wait(lambda: all(self.db("SELECT state FROM nodes WHERE name = ?", n)[0]["state"] == "online"
                                     for n in names), 60):
            states = {r["name"]: r["state"] for r in self.db("SELECT name, state FROM nodes")}
            self.violation(f"not every node is online 60s after healing: {states}")
        # lost is final but provisional: with every node back, a lost attempt that ran takes its real
        # outcome (running again, or its exit). One that never started (its launch order never reached
        # the runner) is queued again once its node is back, and runs.
        if not self.wait(lambda: not self.db(f"SELECT 1 FROM tasks WHERE state NOT IN {FINAL} LIMIT 1")
                         and not self.lost_that_ran(), 300):
            self.say("some tasks are still not final (or lost after they ran) 300s after the end")
        self.say("tasks settled; waiting for task processes to end")
        self.wait(lambda: not self.task_processes(), 20)

    def lost_that_ran(self) -> list[str]:
        """Lost tasks whose current attempt wrote its file, i.e. ran."""
        return [r["task_id"] for r in self.db("SELECT task_id, attempt FROM tasks WHERE state = 'lost'")
                if (self.chaos_dir / f"{r['task_id']}.{r['attempt']}").exists()]

    def wait(self, pred: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_processes()
            if pred():  # type: ignore[operator]
                return True
            time.sleep(0.5)
        return bool(pred())  # type: ignore[operator]

    def task_processes(self) -> list[tuple[int, str, str]]:
        """(pid, task ID, command line) of every process of this cluster's tasks still alive."""
        found = []
        shared = str(self.root / "shared")
        for proc in psutil.process_iter(["cmdline"]):
            try:
                env = proc.environ()
                cmdline = " ".join(proc.info["cmdline"] or [])
                if (env.get("HAKURIVER_SHARED_DIR") != shared or "HAKURIVER_TASK_ID" not in env
                        or "hakuriver.runner" in cmdline or proc.status() == psutil.STATUS_ZOMBIE):
                    continue
                found.append((proc.pid, env["HAKURIVER_TASK_ID"], cmdline[:120]))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    # ---- the checks -------------------------------------------------------------------------

    def runs(self) -> dict[str, list[int]]:
        """Attempt numbers each task wrote a file for, from chaos/<task id>.<attempt>."""
        found: dict[str, list[int]] = collections.defaultdict(list)
        for path in self.chaos_dir.iterdir():
            if path.name in ("dup", "early"):
                continue
            m = re.fullmatch(r"([0-9a-f-]{36})\.(\d+)", path.name)
            if not m:
                self.violation(f"unexpected file chaos/{path.name} (no HAKURIVER_ATTEMPT?)")
                continue
            task_id, attempt = m.group(1), int(m.group(2))
            found[task_id].append(attempt)
            if path.read_text() != f"{task_id} {attempt}\n":
                self.violation(f"chaos/{path.name} holds {path.read_text()!r}, not one line '{task_id} {attempt}'", task_id)
        return {k: sorted(v) for k, v in found.items()}

    def check(self) -> None:
        rows = {r["task_id"]: r for r in self.db(
            "SELECT task_id, batch_id, state, attempt, attempts, retries, after, node, error, exit_code FROM tasks")}
        self.rows = rows
        self.files = runs = self.runs()
        for task_id, sub in self.task_sub.items():
            row = rows.get(task_id)
            if row is None:
                self.violation(f"accepted task {task_id} is not in the database", task_id)
                continue
            if row["retries"] != sub.retries:
                self.violation(f"task {task_id} was submitted with --retries {sub.retries}, the DB says {row['retries']}", task_id)
        for task_id, row in rows.items():
            self.check_task(task_id, row, runs.get(task_id, []))
        for task_id in runs:
            if task_id not in rows:
                self.violation(f"chaos/{task_id}.* was written by a task the host has no record of", task_id)
        self.check_markers()
        for pid, task_id, cmdline in self.task_processes():
            self.violation(f"task process left after the end: pid {pid} of task {task_id}: {cmdline}", task_id)
        integrity = [r[0] for r in self.db("PRAGMA integrity_check")]
        self.integrity = ", ".join(integrity)
        if integrity != ["ok"]:
            self.violation(f"PRAGMA integrity_check: {self.integrity}")

    def check_task(self, task_id: str, row: sqlite3.Row, attempts: list[int]) -> None:  # noqa: C901
        state, attempt, retries = row["state"], row["attempt"], row["retries"]
        sub = self.task_sub.get(task_id)
        if state not in FINAL:
            self.violation(f"task {task_id} is still {state} after the end", task_id)
        elif state == "lost" and attempt in attempts:
            self.violation(f"task {task_id} ran (attempt {attempt}) but stayed lost though its node {row['node']} is back online",
                           task_id)
        elif state == "lost":  # a launch that never reached its node is queued again once the node is back
            self.lost_never_ran.append(task_id)
            self.violation(f"task {task_id} never started and stays lost though its node {row['node']} is back online", task_id)
        # attempts whose launch never reached their node are queued again and do not count against --retries
        undelivered = sum(1 for a in json.loads(row["attempts"] or "[]") if not a.get("delivered", True))
        if retries == 0 and (len(attempts) > 1 or attempt > 1 + undelivered):
            self.violation(f"task {task_id} without --retries ran {len(attempts)} times (attempts {attempts}, DB attempt {attempt})",
                           task_id)
        if attempt > retries + 1 + undelivered:
            self.violation(f"task {task_id} is at attempt {attempt}, more than 1 + --retries {retries} "
                           f"(+ {undelivered} never delivered)", task_id)
        beyond = [a for a in attempts if a > attempt]
        if beyond:
            self.violation(f"task {task_id} ran attempt(s) {beyond} but the host knows only up to attempt {attempt}", task_id)
        if state == "completed":
            if attempt not in attempts:
                self.violation(f"task {task_id} is completed (attempt {attempt}) but chaos/{task_id}.{attempt} does not exist",
                               task_id)
            if sub is not None and (sub.failmode == 2 or (sub.failmode == 1 and attempt == 1)):
                self.violation(f"task {task_id} is completed at attempt {attempt}, but that attempt exits non-zero", task_id)
        deps = json.loads(row["after"] or "[]")
        if attempts and deps:
            for dep in deps:
                unmet = self.unmet(dep)
                if unmet:
                    self.violation(f"task {task_id} ran, but its --after {dep} did not complete: {unmet}", task_id)

    def unmet(self, dep: str) -> str:
        """'' if `dep` (a task or batch ID) completed, else what did not."""
        if dep in self.rows:
            state = self.rows[dep]["state"]
            return "" if state == "completed" else f"{dep} is {state}"
        members = [r for r in self.rows.values() if r["batch_id"] == dep]
        if not members:
            return f"{dep} is unknown"
        bad = [f"{r['task_id']} is {r['state']}" for r in members if r["state"] != "completed"]
        return ", ".join(bad)

    def check_markers(self) -> None:
        self.dups = 0
        dup = self.chaos_dir / "dup"
        if dup.exists():
            for line in dup.read_text().splitlines():
                self.dups += 1
                task_id, _, attempt = line.partition(" ")
                self.violation(f"attempt {attempt} of task {task_id} ran twice (its file already existed)", task_id)
        early = self.chaos_dir / "early"
        if early.exists():
            for line in early.read_text().splitlines():
                task_id, _, dep = line.partition(" ")
                self.violation(f"task {task_id} started before its --after task {dep} had run at all", task_id)

    # ---- the report -------------------------------------------------------------------------

    def report(self) -> None:
        s = self.stats
        states = collections.Counter(self.rows[t]["state"] for t in self.task_sub if t in self.rows)
        unacknowledged = len(set(self.rows) - set(self.task_sub))
        subs = self.subs
        retried = sum(1 for r in self.rows.values() if r["attempt"] > 1)
        ran_more = [t for t, a in self.files.items() if len(a) > 1]
        ran_more_plain = sum(1 for t in ran_more if t in self.rows and self.rows[t]["retries"] == 0)
        lines = [
            ("seed", str(self.seed)),
            ("minutes", f"{self.minutes:g}"),
            ("submissions", f"{s.attempted} sent, {s.accepted} accepted, {s.refused} refused, {s.unknown} timed out"),
            ("tasks accepted", f"{len(self.task_sub)} (+{unacknowledged} in the DB whose ID no client got)"),
            ("  with --retries", str(sum(len(x.ids) for x in subs if x.retries))),
            ("  with --after", str(sum(len(x.ids) for x in subs if x.after))),
            ("  in --array batches", f"{sum(len(x.ids) for x in subs if x.batch)} ({sum(1 for x in subs if x.batch)} batches)"),
            ("  with --time-limit", str(sum(len(x.ids) for x in subs if x.time_limit))),
            ("final states", ", ".join(f"{k} {states.get(k, 0)}" for k in FINAL)
             + "".join(f", {k} {v}" for k, v in states.items() if k not in FINAL)),
            ("faults injected", ", ".join(f"{k} {s.faults.get(k, 0)}" for k in FAULT_KINDS)
             + f" (total {sum(s.faults.values())}; {s.skipped_faults} not possible at the time)"),
            ("lost, never started", f"{len(self.lost_never_ran)} (must be 0: queued again once their node is back)"),
            ("tasks retried (attempt>1)", str(retried)),
            ("tasks that ran >1 time", f"{len(ran_more)} ({ran_more_plain} of them without --retries)"),
            ("duplicate attempts", str(self.dups)),
            ("integrity_check", self.integrity),
            ("violations", str(len(self.violations))),
        ]
        print("\nHakuRiver chaos run", flush=True)
        for k, v in lines:
            print(f"  {k:<28} {v}")
        for task_id in self.lost_never_ran[:10]:
            print(f"note: task {task_id} is lost and never started: {self.rows[task_id]['error']}")
        for msg, _ in self.violations:
            print(f"VIOLATION: {msg}")
        self.evidence()
        sys.stdout.flush()

    def evidence(self) -> None:
        """DB rows and log lines of the first few tasks named in violations."""
        ids = list(dict.fromkeys(t for _, t in self.violations if t))[:5]
        logs = sorted(self.root.glob("*.log"))
        for task_id in ids:
            print(f"\n--- evidence for task {task_id} ---")
            for row in self.db(f"SELECT {EVIDENCE_COLUMNS} FROM tasks WHERE task_id = ?", task_id):
                print("  db: " + json.dumps(dict(zip(row.keys(), tuple(row)))))
            sub = self.task_sub.get(task_id)
            if sub is not None:
                print(f"  submitted at {sub.at:.1f}s: retries {sub.retries}, after {sub.after or '-'}, failmode {sub.failmode}, "
                      f"sleep {sub.sleep}, time limit {sub.time_limit or '-'}, batch {sub.batch or '-'}")
            print(f"  files: {self.files.get(task_id, [])}")
            for log in logs:
                hits = [line for line in log.read_text(errors="replace").splitlines() if task_id[:8] in line]
                for line in hits[:15]:
                    print(f"  {log.name}: {line[:300]}")

    # ---- teardown ---------------------------------------------------------------------------

    def teardown(self) -> None:
        self.stop.set()
        if self.submitter is not None:
            self.submitter.join(40)
        if self.cluster is not None:
            try:
                self.cluster.shutdown()
            except Exception as exc:
                print(f"chaos: teardown: {exc}", file=sys.stderr)
            for pid, _, _ in self.task_processes():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.kill_stragglers()
        if self.netlab is not None:
            self.netlab.close()
        if self.own_workdir and not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        elif self.root.exists():
            print(f"chaos: workdir kept: {self.root}", flush=True)

    def kill_stragglers(self) -> None:
        """A host, runner or keeper of this workdir still alive (one started just as an interrupt came)."""
        root = str(self.root)
        ours = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if (proc.pid not in ours and any(root in arg for arg in cmdline)
                    and any(name in arg for arg in cmdline for name in ("hakuriver.host", "hakuriver.runner"))):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="how long to submit and inject faults (default 5)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    ap.add_argument("--workdir", default=None, help="folder for the cluster's files (default: a fresh one under /var/tmp, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the default workdir at the end (logs, DB, task files)")
    ap.add_argument("--faults-per-minute", type=float, default=6.0, help="how many faults to inject a minute on average (default 6)")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    if not 0 < args.minutes <= 120:
        ap.error("--minutes is between 0 and 120")
    if not 0.1 <= args.faults_per_minute <= 60:
        ap.error("--faults-per-minute is between 0.1 and 60")
    return args


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("skipped: the chaos run needs root (network namespaces)")
        return 0
    why = NetLab.unavailable()
    if why:
        print(f"skipped: {why}")
        return 0
    signal.signal(signal.SIGTERM, _interrupted)
    print(f"chaos: seed {args.seed}, {args.minutes:g} minutes", flush=True)
    chaos = Chaos(args)
    try:
        return chaos.run()
    except KeyboardInterrupt:
        print("chaos: interrupted; tearing down", flush=True)
        return 130
    except Exception:  # the run could not go on (e.g. the host no longer starts): say why, and what was found
        traceback.print_exc(file=sys.stdout)
        for msg, _ in chaos.violations:
            print(f"VIOLATION: {msg}")
        print(f"chaos: the run ended early; logs in {chaos.root} (use --keep or --workdir to keep them)", flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # teardown runs to its end
        chaos.teardown()


if __name__ == "__main__":
    sys.exit(main())
