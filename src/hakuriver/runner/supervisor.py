"""The runner's live tasks: launched through the keeper, their exits journaled, kills, take-over.

Each task's record is journaled on node-local disk *before* the keeper is asked to start it, so
that a runner crash can never lead to a second launch of the same task. The keeper parents the
tasks and keeps their exits until the runner has journaled them: a restarted runner connects to
the same keeper and picks up where the last one stopped. A task whose keeper was lost (killed)
is found again by the HAKURIVER_TASK_ID in its environment and watched until it ends, without
an exit status (orphans.py). Results go to the journal before the keeper may forget them, so a crash between
the two repeats a report but never loses one.

A root runner runs each task as the Unix user named like its owner (SPEC §12), and refuses one
whose owner has no account on this node; a runner that is not root runs every task as itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from hakuriver import protocol as p
from hakuriver.core.model import run_key
from hakuriver.runner import launch, task_files
from hakuriver.runner.journal import TaskRecord
from hakuriver.runner.keeper_link import KeeperGone, KeeperLink
from hakuriver.runner.keeper_wire import Began, Exit, Forget, Kill, Spawn, State
from hakuriver.runner.orphans import OrphanWatch, limit_reached
from hakuriver.runner.outbox import Outbox
from hakuriver.runner.spawn import RunAs

log = logging.getLogger("hakuriver.runner")



@dataclass(frozen=True)
class NodeSetup:
    node: str
    shared_dir: str
    local_temp_dir: str
    #: the numactl to execute before each task; "" when none is set, or when it is numactl itself
    #: and the keeper binds the cores as it would (runner.main decides, once at start)
    numactl_path: str
    kill_grace: float
    state_dir: str
    #: oversubscribed runners only: the real CPUs that the logical core IDs map onto in turn
    cpus: tuple[int, ...]

    def physical(self, core_ids: list[int]) -> list[int]:
        return launch.physical_cpus(core_ids, self.cpus)

    @property
    def output_dir(self) -> str:
        return os.path.join(self.shared_dir, "task_outputs")


class Supervisor(OrphanWatch):
    def __init__(self, setup: NodeSetup, outbox: Outbox, on_started: Callable[[p.TaskStarted], None]) -> None:
        self.setup = setup
        self.outbox = outbox
        self.on_started = on_started
        self.journal = outbox.journal
        self.keeper = KeeperLink(setup.state_dir)
        # one lock for the journal and the task records: a record and its journal line change together
        self._lock = self.journal.lock
        #: launched, not finished (the journal's own view, not a copy)
        self._records: dict[str, TaskRecord] = self.journal.records
        #: tasks still running whose keeper was lost: watched by polling, killed by the runner itself
        self._orphans: set[str] = set()
        self._watch: threading.Thread | None = None
        #: the keeper ends tasks at their time limit; False for a keeper of an earlier release,
        #: which outlives an upgrade of its runner: then the runner's watch does it
        self._keeper_limits = True
        #: tasks the runner had the keeper kill because their time limit ran out
        self._timed_out: set[str] = set()
        #: being launched right now, by the thread that claimed them
        self._launching: set[str] = set()
        #: exits journaled here that the keeper has not been told to forget yet
        self._forgettable: list[str] = []
        # os.environ decodes on every access; the runner's environment does not change
        self._base_env = dict(os.environ)
        self._commands = launch.CommandCheck()
        self._owners = launch.Owners(setup.node)
        #: the keeper runs a task as the user its Spawn names; False for a keeper of an earlier
        #: release, which would run it as itself (root): then such tasks are refused
        self._keeper_users = True
        #: the Unix user of each attempt being launched, by run key: from `_prepare` to its journal record
        self._unix_users: dict[str, str] = {}
        #: the keeper holds a launch whose cores are busy and says when it begins (core/ahead.py); False
        #: for a keeper of an earlier release, which starts each at once: then nothing is queued ahead here
        self._keeper_queues = False
        #: launched, not begun: waiting in the keeper for their cores, or their Began not read yet
        self._unbegun: set[str] = set()

    # ---- queries -------------------------------------------------------------------------
    def held(self) -> set[str]:
        """Run keys of the attempts launched here and not finished, and of those being launched
        right now (claimed, not yet journaled): the host must never think such a launch was lost."""
        with self._lock:
            return set(self._records) | self._launching

    def killing(self) -> set[str]:
        with self._lock:
            return {key for key, rec in self._records.items() if rec.killing}

    def running_count(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def queues_ahead(self) -> bool:
        """Whether tasks may be queued ahead here: the keeper can, and it knows every core in use (a
        task whose keeper was lost runs on a core the new keeper does not know of)."""
        return self._keeper_queues and not self._orphans

    def waiting_count(self) -> int:
        """Launched tasks that have not begun: queued ahead behind a busy core (or about to begin)."""
        with self._lock:
            return len(self._unbegun)

    # ---- the keeper ----------------------------------------------------------------------
    def start(self) -> list[p.TaskStarted]:
        """Connect to this node's keeper (starting it if needed) and take over what an earlier
        runner process left: its running tasks, and the exits it has not journaled yet."""
        return self._take_over(self.keeper.connect(self._base_env))

    def pump(self, timeout: float) -> None:
        """Journal what the keeper reports, waiting up to `timeout` for it (or for `wake`).

        Should the keeper be gone, a new one is started and takes over. Called by one thread
        only, the one that also reports to the host: exits go from the keeper to the journal to
        the host without a hand-off between threads.
        """
        try:
            messages = self.keeper.poll(timeout)
        except KeeperGone as exc:
            log.error("%s; starting a new keeper", exc)
            try:
                for event in self.start():
                    self.on_started(event)
            except KeeperGone as again:
                log.error("%s; retrying in a second", again)
                time.sleep(1.0)
            return
        exits = []
        for msg in messages:  # in the keeper's order: a task's Began before its Exit
            if isinstance(msg, Began):
                self._began(msg)
            else:
                exits.append(msg)
        if exits:
            self._exited(exits)

    def _began(self, msg: Began) -> None:
        """A launch the keeper held (or started at once) has begun: now it is reported started."""
        with self._lock:
            rec = self._records.get(msg.task_id)
            self._unbegun.discard(msg.task_id)
            if rec is None:
                return
            rec.started_at = msg.started_at
        self.on_started(self._started(rec))

    def wake(self) -> None:
        """Make a `pump` in progress return now (there is something to report)."""
        self.keeper.wake()

    def _take_over(self, state: State) -> list[p.TaskStarted]:
        if self._keeper_limits and not state.limits:
            log.warning("this node's keeper is from an earlier release and does not enforce time limits; "
                        "the runner does until it is replaced (when the node is idle)")
        self._keeper_limits = state.limits
        if self._owners.root and self._keeper_users and not state.users:
            log.warning("this node's keeper is from an earlier release and cannot run tasks as their owners' "
                        "Unix users; such tasks fail until it is replaced (stop the runner until no task runs "
                        "here, then start it)")
        self._keeper_users = state.users
        self._keeper_queues = state.queues
        if not state.limits:
            self._ensure_watch()
        self._exited(state.exits)
        waiting = set(state.waiting)  # queued ahead in the keeper: held here, reported once begun
        running = set(state.running) | waiting
        with self._lock:
            live = [rec for rec in self._records.values() if rec.key in running]
            lost = [rec for rec in self._records.values() if rec.key not in running and rec.key not in self._orphans]
            self._unbegun = waiting & set(self._records)
        self._send([Kill(rec.key, self.setup.kill_grace) for rec in live if rec.killing])
        adopted = live + [rec for rec in lost if self._adopt_orphan(rec)]
        if adopted:
            log.info("took over %d tasks (%d of them waiting for their cores)", len(adopted), len(waiting))
        return [self._started(rec) for rec in adopted if rec.key not in waiting]

    def _send(self, messages: list) -> None:  # noqa: ANN001 - keeper messages
        """To the keeper, with the exits it may forget riding along (see `flush_forgets`)."""
        with self._lock:
            forget, self._forgettable = self._forgettable, []
        if forget:
            messages = [Forget(forget), *messages]
        if not messages:
            return
        try:
            self.keeper.send(messages)
        except KeeperGone as exc:
            log.warning("%s; the new keeper will be told", exc)

    def flush_forgets(self) -> None:
        """Tell the keeper which exits are journaled now, if nothing else went to it since.

        A Forget of its own per batch of exits would cost the keeper a wake-up per batch; it
        rides on the next launch or kill instead, or goes with the next heartbeat. Until then
        the keeper merely keeps the exits a little longer (and would resend them, harmlessly).
        """
        self._send([])

    # ---- launch --------------------------------------------------------------------------
    def launch(self, orders: list[p.LaunchOrder]) -> None:
        """Journal the new tasks, then hand them to the keeper in one message."""
        now = time.time()
        with self._lock:  # orders come from heartbeats and acknowledgements: claim each attempt once
            new = [o for o in orders if (k := run_key(o.task_id, o.attempt)) not in self._records
                   and k not in self.outbox and k not in self._launching]
            keys = [run_key(o.task_id, o.attempt) for o in new]
            self._launching.update(keys)
        if not new:
            return  # repeated orders: these attempts are already ours
        try:
            self._launch(new, now)
        finally:
            with self._lock:
                self._launching.difference_update(keys)

    def _launch(self, new: list[p.LaunchOrder], now: float) -> None:
        task_files.ensure_folder(self.setup.output_dir)
        # checked once per batch of orders: a batch is a few milliseconds of the node's life
        scratch_problem = task_files.scratch_problem(self.setup.local_temp_dir)
        cwds: dict[str, str] = {}
        records, spawns, failed = [], [], []
        for order in new:
            paths = task_files.task_paths(order, self.setup.output_dir, self.setup.local_temp_dir)
            key = run_key(order.task_id, order.attempt)
            if order.wait_limit is not None and not self.queues_ahead:
                # it may be queued behind a busy core, which this node cannot do now (tasks of a lost keeper
                # run on cores the new one does not know): handed back unrun, the host places it anew
                failed.append(p.TaskFinished(order.task_id, time.time(), error=f"node {self.setup.node} could not queue "
                                             "it behind a busy core: handed back unrun", stdout_path=paths.stdout,
                                             stderr_path=paths.stderr, attempt=order.attempt, returned=True))
                continue
            try:
                spawn, problem = self._prepare(order, paths, cwds, now) if not scratch_problem else (None, scratch_problem)
            except OSError as exc:
                spawn, problem = None, f"could not start: {exc.strerror or exc}"
            if spawn is None:
                log.warning("task %s failed to start: %s", order.task_id, problem)
                failed.append(p.TaskFinished(order.task_id, time.time(), error=problem, started_at=None,
                                             stdout_path=paths.stdout, stderr_path=paths.stderr, attempt=order.attempt,
                                             unix_user=self._unix_users.pop(key, "")))
                continue
            records.append(TaskRecord(order.task_id, now, paths.stdout, paths.stderr, paths.temp_dir,
                                      attempt=order.attempt, time_limit=order.time_limit,
                                      unix_user=self._unix_users.pop(key)))
            spawns.append(spawn)
        held = {spawn.task_id for spawn in spawns if spawn.cores is not None}  # may wait in the keeper for their cores
        with self._lock:
            self.journal.launched(records)  # before the keeper hears of them: never a second launch
            self._unbegun.update(held)  # reported started on the keeper's Began, when each really begins
        started = [self._started(rec) for rec in records if rec.key not in held]  # before a short task's result may come in
        self._send(spawns)
        for event in started:
            self.on_started(event)
        if failed:
            self.outbox.add(failed)

    def _prepare(self, order: p.LaunchOrder, paths: launch.TaskPaths, cwds: dict[str, str],
                 received: float) -> tuple[Spawn | None, str]:
        """What the keeper is to start, or why the task cannot start."""
        s = self.setup
        account, user, problem = self._who(order.owner)
        if problem:
            task_files.note_in_stderr(paths.stderr, problem)
            return None, problem
        self._unix_users[run_key(order.task_id, order.attempt)] = self._owners.name(account)
        # the account's HOME, USER and LOGNAME, under the user's own --env
        env = launch.task_env(account.env() if account else {}, order.env, task_id=order.task_id, node=s.node,
                              core_ids=order.core_ids, shared_dir=s.shared_dir, temp_dir=paths.temp_dir,
                              attempt=order.attempt)
        if order.cwd not in cwds:
            cwds[order.cwd] = launch.choose_cwd(order.cwd, "")
        cwd = cwds[order.cwd] or paths.temp_dir
        program, problem = self._commands.locate(order.command, env if "PATH" in env else self._base_env, cwd)
        if problem:
            task_files.note_in_stderr(paths.stderr, problem)
            return None, problem
        cpus = s.physical(order.core_ids)
        path, argv = launch.task_argv(program, order.command, order.args, cpus=cpus, numactl=s.numactl_path)
        limit = order.time_limit if self._keeper_limits else None  # else the runner's watch keeps it
        # to a host that queues ahead here: the keeper keeps each core's tasks in order, one at a time; the
        # wait limit counts from the order's arrival (the host's rule for it allows no more)
        queued = self.queues_ahead and order.wait_limit is not None
        wait_limit = max(0.0, order.wait_limit - (time.time() - received)) if queued else None
        return Spawn(run_key(order.task_id, order.attempt), path, argv, env, cwd, paths.stdout, paths.stderr,
                     paths.temp_dir, None if s.numactl_path else cpus, limit, s.kill_grace, user,
                     cores=list(order.core_ids) if queued else None, wait_limit=wait_limit), ""

    def _who(self, owner: str) -> tuple[launch.Account | None, RunAs | None, str]:
        """The account a task of `owner` runs as (None: the runner's own), the user the keeper is
        to switch to (None: no switch, the fast path), or why it cannot run."""
        account, problem = self._owners.account(owner)
        if problem or not self._owners.switches(account):
            return account, None, problem
        assert account is not None
        if not self._keeper_users:
            return account, None, (f"the keeper on node {self.setup.node} is from an earlier release and would run "
                                   f"this task as root, not as {account.name}; stop the runner until no task runs "
                                   "there, then start it again")
        return account, RunAs(account.uid, account.gid, list(account.groups)), ""

    def _ran_as(self, rec: TaskRecord) -> str:
        """The Unix user an attempt runs as: journaled at its launch, or (journaled by an earlier
        release) the owner of its output file, which the keeper gave to that user."""
        return rec.unix_user or self._owners.owner_of(rec.stdout)

    def _started(self, rec: TaskRecord) -> p.TaskStarted:
        return p.TaskStarted(rec.task_id, rec.started_at, rec.stdout, rec.stderr, attempt=rec.attempt,
                             unix_user=self._ran_as(rec))

    # ---- exits ---------------------------------------------------------------------------
    def _exited(self, exits: list[Exit]) -> None:
        """Journal the results (one append), then let the keeper forget them (it removed their scratch folders)."""
        results = []
        with self._lock:
            for ex in exits:
                rec = self._records.get(ex.task_id)
                self._unbegun.discard(ex.task_id)
                if rec is not None:  # else journaled before a runner restart: only the keeper's copy was left
                    results.append(self._result(rec, ex))
        if results:
            self.outbox.add(results)  # also drops the records, in the same journal append
        with self._lock:
            self._forgettable += [ex.task_id for ex in exits]

    def _result(self, rec: TaskRecord, ex: Exit) -> p.TaskFinished:
        if ex.killed and rec.key in self._timed_out:  # the runner had it killed for its time limit
            self._timed_out.discard(rec.key)
            ex = msgspec.structs.replace(ex, killed=False, timed_out=True, error=limit_reached(rec))
        return p.TaskFinished(rec.task_id, ex.ended_at, exit_code=ex.exit_code, signal=ex.signal, error=ex.error,
                              killed=ex.killed, started_at=None if ex.not_started else ex.started_at or rec.started_at,
                              stdout_path=rec.stdout, stderr_path=rec.stderr, cpu_user_seconds=ex.cpu_user_seconds,
                              cpu_system_seconds=ex.cpu_system_seconds, max_rss_bytes=ex.max_rss_bytes,
                              timed_out=ex.timed_out, attempt=rec.attempt, unix_user=self._ran_as(rec),
                              returned=ex.returned)

    # ---- kill ----------------------------------------------------------------------------
    def kill(self, key: str) -> None:
        """End an attempt, by run key."""
        with self._lock:
            rec = self._records.get(key)
            if rec is None or rec.killing:
                return
            self.journal.killing(key)
            orphan = key in self._orphans
        if orphan:
            threading.Thread(target=self._kill_orphan, args=(rec,), name=f"kill-{key[:8]}", daemon=True).start()
        else:
            self._send([Kill(key, self.setup.kill_grace)])
