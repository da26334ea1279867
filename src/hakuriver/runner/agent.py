"""The runner's network side: heartbeat long-poll for orders, and delivery of results.

Two loops, each on its own keep-alive connection to the host. The heartbeat loop tells the
host what this node holds and receives launch and kill orders. The results loop journals the
exits the keeper reports, sends "started" and "finished" reports, and drops a result only once
the host acknowledged it; the acknowledgement also carries orders, so a core freed by a result
gets its next task in the same round trip. Both retry with backoff for as long as the host is
away: the runner never exits or spins because of it.
"""

from __future__ import annotations

import logging
import threading
import time

from hakuriver import protocol as p
from hakuriver.core.model import run_key
from hakuriver.credentials import CredentialError, read_secret
from hakuriver.runner.outbox import Outbox
from hakuriver.runner.supervisor import Supervisor
from hakuriver.transport import ApiError, HostConnection, HostUnreachable

log = logging.getLogger("hakuriver.runner")

REPORT_BATCH = 2000
#: seconds a report waits for more results while other tasks of this node are running
LINGER = 0.004
#: ... and while tasks are queued ahead here: their cores never wait for the host's answer, so a
#: report may gather the results of many (core/ahead.py queues enough for this long)
LINGER_AHEAD = 0.02
#: seconds the results loop waits for the keeper when there is nothing to report
IDLE_POLL = 1.0


class Backoff:
    """Delays for retrying an unreachable host: 0.1 s doubling up to `ceiling`."""

    def __init__(self, ceiling: float) -> None:
        self.ceiling = ceiling
        self.delay = 0.0

    def failed(self) -> float:
        self.delay = min(self.ceiling, max(0.1, self.delay * 2))
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0


class ClusterKey:
    """The secret this runner presents, read from `[auth] cluster_key_file`.

    Read again after the host refused it (or while it is missing), so that an administrator
    can copy the right key in while the runner waits: it joins without a restart. Each new
    problem is logged once, not at every retry.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._value: str | None = None
        self._said = ""

    def current(self) -> str:
        with self._lock:
            if self._value is None:
                try:
                    self._value = read_secret(self.path, "cluster key")
                except CredentialError as exc:
                    self._say(f"{exc}: copy the host's [auth] cluster_key_file there; retrying until it is")
                    return ""
            return self._value

    def refused(self, exc: ApiError) -> None:
        with self._lock:
            if self._value is not None:
                self._say(f"the host refused this runner's cluster key from {self.path} (HTTP {exc.status}): copy "
                          f"the host's [auth] cluster_key_file to {self.path}; retrying until it matches")
            self._value = None  # read again before the next try

    def accepted(self) -> None:
        with self._lock:
            if self._said:
                log.info("the host accepted the cluster key from %s", self.path)
            self._said = ""

    def _say(self, message: str) -> None:
        if message != self._said:
            log.error("%s", message)
            self._said = message


class Agent:
    def __init__(self, host_url: str, node: p.NodeInfo, interval: float, supervisor: Supervisor, outbox: Outbox,
                 key: ClusterKey, ca_file: str = "") -> None:
        self.host_url = host_url
        self.key = key
        self.ca_file = ca_file
        self.node = node
        self.interval = interval
        self.supervisor = supervisor
        self.outbox = outbox
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._started: dict[str, p.TaskStarted] = {}
        #: when the oldest report item still unsent was first seen (monotonic), None if none
        self._waiting_since: float | None = None
        self._results_thread = 0

    # called by the supervisor, from any thread
    def task_started(self, event: p.TaskStarted) -> None:
        with self._lock:
            self._started[run_key(event.task_id, event.attempt)] = event
        self.result_ready()

    def result_ready(self) -> None:
        if threading.get_ident() != self._results_thread:
            self.supervisor.wake()

    def held_and_ending(self) -> tuple[list[str], list[str]]:
        """Every attempt this node holds (run keys), and those of them already being killed or already ended."""
        with self.outbox.journal.lock:  # one view: an attempt moving from running to ended is in one of the two
            results = self.outbox.ids()
            return list(self.supervisor.held() | results), list(self.supervisor.killing() | results)

    # ---- heartbeat + orders --------------------------------------------------------------
    def _connection(self) -> HostConnection:
        return HostConnection(self.host_url, token=self.key.current(), ca_file=self.ca_file)

    def _refused(self, exc: Exception) -> bool:
        """The host refused the key (logged once): True, and the key is read again for the next try."""
        if not (isinstance(exc, ApiError) and exc.status in (401, 403)):
            return False
        self.key.refused(exc)
        return True

    def _sync_key(self, conn: HostConnection) -> None:
        key = self.key.current()
        if key != conn.token:
            conn.token = key

    def heartbeat_forever(self) -> None:
        conn = self._connection()
        backoff = Backoff(ceiling=max(1.0, min(10.0, self.interval)))
        connected = False
        while not self.stop.is_set():
            self.supervisor.flush_forgets()
            self._sync_key(conn)
            hb = self._heartbeat(wait=self.interval)
            try:
                # the host holds the request up to `wait`; an answer later than that means a dead link
                raw = conn.call("POST", p.RUNNER_HEARTBEAT, p.encode(hb), timeout=2 * self.interval + 2)
                orders = p.decode(raw, p.Orders)
            except (HostUnreachable, ApiError, p.DecodeError) as exc:
                if not self._refused(exc) and (connected or backoff.delay == 0):
                    log.warning("heartbeat failed, will retry: %s", exc)
                connected = False
                self.stop.wait(backoff.failed())
                continue
            if not connected:
                self.key.accepted()
                log.info("connected to the host at %s as node %s (%d cores)", self.host_url, self.node.name,
                         len(self.node.core_ids))
                connected = True
            backoff.succeeded()
            self._obey(orders)

    def _obey(self, orders: p.Orders) -> None:
        for key in orders.kill:
            log.info("killing task %s", key)
            self.supervisor.kill(key)
        if orders.launch:
            self.supervisor.launch(orders.launch)

    # ---- results and reports -----------------------------------------------------------
    def results_forever(self) -> None:
        """Journal the keeper's exits as they come and report them to the host.

        One thread does both, so a task's exit reaches the host without a hand-off between
        threads; the acknowledgement's orders are launched from here too. Results are
        journaled even while the host is away: reports are retried with backoff.
        """
        self._results_thread = threading.get_ident()
        conn = self._connection()
        backoff = Backoff(ceiling=5.0)
        retry_at = 0.0
        while not self.stop.is_set():
            self.supervisor.pump(self._until_report(retry_at))
            if self._until_report(retry_at) > 0:
                continue
            with self._lock:
                finished = self.outbox.pending(REPORT_BATCH)
                done = {run_key(f.task_id, f.attempt) for f in finished}
                started = [s for key, s in self._started.items() if key not in done]
                for key in done:
                    self._started.pop(key, None)
            held, ending = self.held_and_ending()
            self._sync_key(conn)
            try:
                report = p.encode(p.Report(self.node.name, started, finished, held=held, ending=ending))
                ack = p.decode(conn.call("POST", p.RUNNER_REPORT, report, timeout=2 * self.interval + 5), p.Ack)
            except (HostUnreachable, ApiError, p.DecodeError) as exc:
                if not self._refused(exc) and backoff.delay == 0:
                    log.warning("report failed, will retry: %s", exc)
                retry_at = time.monotonic() + backoff.failed()
                continue
            backoff.succeeded()
            retry_at, self._waiting_since = 0.0, None
            self.outbox.ack(ack.task_ids)
            with self._lock:
                for s in started:
                    key = run_key(s.task_id, s.attempt)
                    if self._started.get(key) is s:
                        del self._started[key]
            if ack.orders is not None:
                self._obey(ack.orders)

    def _until_report(self, retry_at: float) -> float:
        """Seconds until the next report is due (0: now); IDLE_POLL when there is nothing to report.

        A result goes at once when nothing else runs here. Otherwise the report waits a few
        milliseconds for more: a short task's result follows its "started" within milliseconds,
        and on a busy node more results follow the first, so one report carries several.
        """
        with self._lock:
            started = bool(self._started)
        results = self.outbox.has_pending()
        now = time.monotonic()
        if not started and not results:
            self._waiting_since = None
            return IDLE_POLL
        if self._waiting_since is None:
            self._waiting_since = now
        retry = max(0.0, retry_at - now)
        if results and self.supervisor.running_count() == 0:
            return retry
        linger = LINGER_AHEAD if self.supervisor.waiting_count() else LINGER
        return max(retry, self._waiting_since + linger - now)

    def _heartbeat(self, wait: float, leaving: bool = False) -> p.Heartbeat:
        """What the runner holds now, and what it is: the long-poll's body, and the last one's."""
        held, ending = self.held_and_ending()
        node = self.node.replace(queues_ahead=self.supervisor.queues_ahead)
        return p.Heartbeat(node=node, held=held, wait=wait, ending=ending, leaving=leaving)

    def leave(self) -> None:
        """Tell the host this runner stops (its tasks run on under the keeper), so that nothing new
        is sent here meanwhile and what it never received goes elsewhere. Best effort: a host that
        cannot be told learns it at the heartbeat timeout."""
        try:
            self._connection().call("POST", p.RUNNER_HEARTBEAT, p.encode(self._heartbeat(wait=0.0, leaving=True)),
                                    timeout=2.0)
        except (HostUnreachable, ApiError, p.DecodeError, OSError) as exc:
            log.info("could not tell the host that this runner stops: %s", exc)

    def run(self, taken_over: list[p.TaskStarted]) -> None:
        """Serve until stopped; `taken_over` are the running tasks an earlier runner process left."""
        for event in taken_over:
            self.task_started(event)
        threading.Thread(target=self.results_forever, name="results", daemon=True).start()
        try:
            self.heartbeat_forever()
        finally:
            self.stop.set()
            time.sleep(0)
