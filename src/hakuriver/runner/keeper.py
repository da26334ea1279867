"""The keeper: one small process per node that parents the tasks and outlives the runner.

A task's exit status can only be collected by its parent. Making the runner the parent would
lose the status of every task that ends while the runner is down (a crash, an upgrade); a
per-task `sh` wrapper that writes the status to a file costs a second program start per task,
more than the task itself when the task is short. The keeper is the middle way: it runs in its
own session, spawns each task pinned to its cores (as its owner's Unix user when the runner is
root: spawn.py), reaps it, appends its exit to a log on node-local disk (keeper_exits.py), and
tells the runner. It outlives the runner and serves the next one; it exits once no runner is
connected and no task is left or waiting.

The runner reaches it through keeper_link.py, over the wire of keeper_wire.py (a Unix socket in
the runner's state folder). It also enforces time limits, so that they hold while the runner or
the host is down. A spawn may come for cores still busy (work queued ahead): the keeper holds it
(keeper_lines.py), starts it the moment its cores free, without a round trip to the runner, and
hands it back if it waits past its wait limit. The runner's journal stays the authority on which
tasks exist: the keeper only ever holds what the runner asked it to run and the exits not yet
forgotten.

    python -m hakuriver.runner.keeper STATE_DIR     (started by the runner; not a user command)
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import logging
import os
import queue
import select
import selectors
import shutil
import signal
import socket
import sys
import threading
import time

import msgspec

from hakuriver.runner.keeper_conn import RunnerConn
from hakuriver.runner.keeper_exits import ExitsLog
from hakuriver.runner.keeper_lines import CoreLines
from hakuriver.runner.keeper_wire import Began, Exit, Forget, Hello, Kill, Spawn, State, exit_of, socket_address
from hakuriver.runner.spawn import Starter, base_env, hand_over, open_outputs

log = logging.getLogger("hakuriver.keeper")

LOCK_NAME = "keeper.lock"
#: seconds the keeper stays with no runner connected and no task left (a restarting runner comes back sooner)
IDLE_EXIT = 5.0
#: seconds the keeper stays on the CPU of its last start while spawns wait (the next start is often there)
PIN_HOLD = 0.05


def _limit_reached(limit: float) -> str:
    from hakuriver.durations import limit_reached  # loaded only by a keeper whose task ran out of time

    return limit_reached(limit)


# ---- the keeper process --------------------------------------------------------------------
class Keeper:
    """One thread does everything (the runner's connection, starting tasks, reaping them), so
    the keeper's state needs no lock; only a kill (posting its result back to the loop) and the
    removal of a scratch folder left full run on threads of their own."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        #: what tasks get of the runner's environment (Hello; until then the keeper's own), for a
        #: task of the keeper's user [False] and of another user [True]: made once, not per task
        self._base_env = self._bases(dict(os.environ))
        #: started and not yet reaped (or, when killed, not yet gone with its whole tree)
        self.pids: dict[str, int] = {}
        #: the scratch folders of those tasks
        self._scratch: dict[str, str] = {}
        self._task_of: dict[int, str] = {}
        #: tasks being killed: their exit comes from the kill thread once the whole tree is gone
        self.killing: set[str] = set()
        #: what reaping a task being killed measured, for the exit its kill thread posts
        self._killed_usage: dict[str, Exit] = {}
        #: (deadline on the monotonic clock, task) of tasks with a time limit, soonest first
        self._deadlines: list[tuple[float, str, float, float]] = []
        #: spawns that named cores: the cores in use, and the spawns waiting for theirs
        self.lines = CoreLines()
        #: when the started tasks among them started (wall time), for their Exit
        self._started_at: dict[str, float] = {}
        self._posted: queue.SimpleQueue[Exit] = queue.SimpleQueue()
        self._starter = Starter()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.exits_log = ExitsLog(state_dir)
        #: exits the runner has not forgotten yet (the log's, in memory)
        self.exits = self.exits_log.exits
        self.sel = selectors.DefaultSelector()
        #: the runner's connection: none, or one at a time, once `serve` listens
        self.runner = RunnerConn(self.sel, self._handle, self._greeting)

    # ---- the loop ----------------------------------------------------------------------------
    def serve(self, listener: socket.socket) -> None:
        self.runner.listen(listener)
        # SIGCHLD only wakes the loop (through the wake-up socket); reaping happens in the loop
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._woken)
        idle_since = time.monotonic()
        while True:
            self._reap()
            self._collect_posted()
            if self.runner.connected or self.pids or self.killing or self.lines:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= IDLE_EXIT and not select.select([listener], [], [], 0)[0]:
                # (a runner that connected just now is served first, not left with a closed socket)
                log.info("no runner and no task left: keeper exits")
                return
            for key, mask in self.sel.select(timeout=min(self._expire_due(), self._withdraw_due(), self._unpin_due())):
                key.data(mask)

    def _greeting(self) -> list[msgspec.Struct]:
        """What a runner that connects is told first: the running tasks, the exits it has not forgotten."""
        return [State(running=list(self.pids), exits=list(self.exits.values()), limits=True, users=True, queues=True,
                      waiting=self.lines.waiting)]

    def _woken(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)  # a byte per signal: more than this many just wakes the loop again

    def _post(self, ex: Exit) -> None:
        """An exit found by a kill thread: the loop records it."""
        self._posted.put(ex)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # ---- messages ----------------------------------------------------------------------------
    def _handle(self, msg: msgspec.Struct) -> None:
        if isinstance(msg, Spawn):
            self._spawn(msg)
        elif isinstance(msg, Forget):
            self.exits_log.forget(msg.task_ids)
        elif isinstance(msg, Kill):
            self._kill(msg)
        elif isinstance(msg, Hello):
            self._base_env = self._bases(msg.env)

    @staticmethod
    def _bases(runner_env: dict[str, str]) -> dict[bool, dict[str, str]]:
        return {other: base_env(runner_env, other) for other in (False, True)}

    def _spawn(self, msg: Spawn) -> None:
        key = msg.task_id
        if key in self.pids or key in self.killing or key in self.lines or key in self.exits:
            return  # a repeated order: never a second run (a task handed back comes again as a new attempt)
        if self.lines.add(msg, time.monotonic()):
            self._settle([], [msg])

    def _launch(self, msg: Spawn) -> Exit | None:
        """Start it now (scratch folder, output files, process); its exit if it could not be started."""
        fds = self._files_for(msg)
        if isinstance(fds, str):
            return Exit(msg.task_id, time.time(), not_started=True, error=fds)
        out_fd, err_fd = fds
        try:
            pid = self._starter.start(msg, self._base_env[msg.user is not None] | msg.env, out_fd, err_fd)
        except OSError as exc:
            problem = f"could not start {msg.argv[0]}: {exc.strerror or exc}"
            with contextlib.suppress(OSError):
                os.write(err_fd, f"hakuriver: {problem}\n".encode())
            return Exit(msg.task_id, time.time(), not_started=True, error=problem)
        finally:
            os.close(out_fd)
            os.close(err_fd)
        self.pids[msg.task_id] = pid
        self._task_of[pid] = msg.task_id
        if msg.cores is not None:
            self._started_at[msg.task_id] = time.time()
        if msg.time_limit is not None:  # counted from the start, not from the Spawn's arrival
            heapq.heappush(self._deadlines, (time.monotonic() + msg.time_limit, msg.task_id, msg.time_limit, msg.grace))
        return None

    def _files_for(self, msg: Spawn) -> tuple[int, int] | str:
        """The task's scratch folder made and its output files open, all owned by the user it
        runs as; what went wrong if that could not be done."""
        try:
            os.mkdir(msg.scratch, 0o700)  # its user's alone: other users' tasks may run on this node
            self._scratch[msg.task_id] = msg.scratch  # (only once made: never remove a folder found there)
            hand_over(msg.scratch, msg.user)
        except OSError as exc:
            return f"cannot create the task's temp folder {msg.scratch}: {exc.strerror}"
        try:
            return open_outputs(msg.stdout, msg.stderr, msg.user)
        except OSError as exc:
            return f"cannot write the task's output under {os.path.dirname(msg.stdout)}: {exc.strerror}"

    def _expire_due(self) -> float:
        """End the tasks whose time limit ran out; seconds until the next one is due (at most 1)."""
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, task_id, limit, grace = heapq.heappop(self._deadlines)
            pid = self.pids.get(task_id)
            if pid is None or task_id in self.killing:
                continue  # ended already, or being killed
            log.info("task %s reached its time limit of %gs", task_id, limit)
            self.killing.add(task_id)
            ended = Exit(task_id, 0.0, timed_out=True, error=_limit_reached(limit))
            self._thread(self._kill_tree, (task_id, pid, grace, ended), f"limit-{task_id[:8]}")
        return min(1.0, self._deadlines[0][0] - now) if self._deadlines else 1.0

    def _withdraw_due(self) -> float:
        """Hand back the waiting spawns whose wait limit ran out; seconds until the next is due (at most 1)."""
        due = self.lines.withdraw_due(time.monotonic())
        if due:
            now = time.time()
            self._settle([Exit(s.task_id, now, not_started=True, returned=True,
                               error=f"handed back: waited {s.wait_limit:g}s behind a busy core") for s in due])
        deadline = self.lines.next_deadline()
        return 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))

    def _unpin_due(self) -> float:
        """Leave the CPU of the last start once no spawn waits to start, or once no start came for
        PIN_HOLD seconds (a spawn waiting behind a long task); seconds until that is due (at most 1)."""
        pinned = self._starter.pinned_for(time.monotonic())
        if pinned is None:
            return 1.0
        if not self.lines or pinned >= PIN_HOLD:
            self._starter.unpin()
            return 1.0
        return PIN_HOLD - pinned

    def _thread(self, target, args: tuple, name: str = "") -> None:  # noqa: ANN001
        """Run `target` on a thread of its own, started with all the keeper's CPUs (a thread inherits its creator's mask)."""
        self._starter.unpin()
        threading.Thread(target=target, args=args, name=name or None, daemon=True).start()

    def _remove_scratch(self, task_id: str) -> None:
        folder = self._scratch.pop(task_id, None)
        if folder is None:
            return
        try:
            os.rmdir(folder)  # the common case: the task left its scratch folder empty
        except FileNotFoundError:
            pass
        except OSError:  # left files behind: removed off the loop, which must not wait on a big tree
            self._thread(shutil.rmtree, (folder, True))

    def _kill(self, msg: Kill) -> None:
        if msg.task_id in self.killing or msg.task_id in self.exits:
            return  # already being killed, or already ended: its exit stands
        pid = self.pids.get(msg.task_id)
        # waiting for its cores, or never spawned here (the runner died between its journal and the keeper)
        if self.lines.drop(msg.task_id) is not None or pid is None:
            self._settle([Exit(msg.task_id, time.time(), killed=True, not_started=True, error="killed by user")])
            return
        self.killing.add(msg.task_id)
        ended = Exit(msg.task_id, 0.0, killed=True, error="killed by user")
        self._thread(self._kill_tree, (msg.task_id, pid, msg.grace, ended), f"kill-{msg.task_id[:8]}")

    def _kill_tree(self, task_id: str, pid: int, grace: float, ended: Exit) -> None:
        """End the task's whole tree; `ended` is its exit, timed when the tree is gone."""
        from hakuriver.runner.launch import kill_tree  # psutil: loaded only by a keeper that kills

        try:
            kill_tree(pid, grace)
        finally:
            ended.ended_at = time.time()
            self._post(ended)

    def _collect_posted(self) -> None:
        done = []
        while True:
            try:
                done.append(self._posted.get_nowait())
            except queue.Empty:
                break
        for ex in done:
            self.killing.discard(ex.task_id)
            self.pids.pop(ex.task_id, None)
            reaped = self._killed_usage.pop(ex.task_id, None)
            if reaped is not None:
                ex.cpu_user_seconds, ex.cpu_system_seconds = reaped.cpu_user_seconds, reaped.cpu_system_seconds
                ex.max_rss_bytes = reaped.max_rss_bytes
        if done:
            self._settle(done)

    # ---- children ----------------------------------------------------------------------------
    def _reap(self) -> None:
        ended = []
        now = time.time()
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._starter.reaped(pid, status)
            task_id = self._task_of.pop(pid, None)
            if task_id is None:
                continue
            if task_id in self.killing:  # its exit comes from its kill thread, once the whole tree is gone
                self._killed_usage[task_id] = exit_of(task_id, status, usage, now)
                continue
            if self.pids.pop(task_id, None) is None:
                continue  # killed, and its kill thread's exit already recorded (it saw the zombie as gone)
            ended.append(exit_of(task_id, status, usage, now))
        if ended:
            self._settle(ended)

    def _settle(self, exits: list[Exit], starting: list[Spawn] | None = None) -> None:
        """Record these exits (scratch folders removed, exits log), free their cores and start what
        may start now (`starting` too); then tell the runner in one write: the exits, then a Began
        for each start."""
        ready = list(starting or ())
        for ex in exits:
            ready += self.lines.released(ex.task_id)
        ready += self.lines.ready()  # behind a spawn that left its lines while it waited (handed back, killed)
        began = []
        for msg in ready:  # (the list grows: one that cannot start frees its cores at once)
            failed = self._launch(msg)
            if failed is not None:
                exits.append(failed)
                ready += self.lines.released(msg.task_id)
            elif msg.cores is not None:
                began.append(Began(msg.task_id, self._started_at[msg.task_id]))
        for ex in exits:
            self._remove_scratch(ex.task_id)
            ex.started_at = self._started_at.pop(ex.task_id, None)  # (None but for a spawn that named cores)
        if exits:
            self.exits_log.append(exits)  # on local disk first: the runner may be gone
        if exits or began:
            self.runner.send([*exits, *began])


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not os.path.isdir(args[0]):
        sys.exit("usage: python -m hakuriver.runner.keeper STATE_DIR (an existing folder; the runner starts it)")
    state_dir = args[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lock = open(os.path.join(state_dir, LOCK_NAME), "w")  # noqa: SIM115 - held for the keeper's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log.info("another keeper serves %s", state_dir)
        return
    address = socket_address(state_dir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(8)
    log.info("keeper %d serving %s", os.getpid(), state_dir)
    try:
        Keeper(state_dir).serve(listener)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)


if __name__ == "__main__":
    main()
