"""The runner's network side: heartbeat long-poll for orders, and delivery of reports.

Two loops, each on its own keep-alive connection. The heartbeat loop tells the host what this
node holds and receives launch and kill orders. The report loop sends "started" and durable
"finished" reports and drops a result only once the host acknowledged it; the acknowledgement
also carries orders, so a core freed by a result gets its next task without waiting for the
heartbeat loop. Both retry with
backoff for as long as the host is away: the runner never exits or spins because of it.
"""

from __future__ import annotations

import logging
import threading
import time

from hakuriver import protocol as p
from hakuriver.runner.outbox import Outbox
from hakuriver.runner.supervisor import Supervisor
from hakuriver.transport import ApiError, HostConnection, HostUnreachable

log = logging.getLogger("hakuriver.runner")

REPORT_BATCH = 2000
#: seconds a report waits for more results while other tasks of this node are running
LINGER = 0.004


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


class Agent:
    def __init__(self, host_url: str, node: p.NodeInfo, interval: float, supervisor: Supervisor, outbox: Outbox) -> None:
        self.host_url = host_url
        self.node = node
        self.interval = interval
        self.supervisor = supervisor
        self.outbox = outbox
        self.stop = threading.Event()
        self._work = threading.Condition()
        self._started: dict[str, p.TaskStarted] = {}

    # called by the supervisor's threads
    def task_started(self, event: p.TaskStarted) -> None:
        with self._work:
            self._started[event.task_id] = event
            self._work.notify_all()

    def result_ready(self) -> None:
        with self._work:
            self._work.notify_all()

    def held_and_ending(self) -> tuple[list[str], list[str]]:
        """Every task this node holds, and those of them already being killed or already ended."""
        results = self.outbox.ids()
        return list(self.supervisor.held() | results), list(self.supervisor.killing() | results)

    # ---- heartbeat + orders --------------------------------------------------------------
    def heartbeat_forever(self) -> None:
        conn = HostConnection(self.host_url)
        backoff = Backoff(ceiling=max(1.0, min(10.0, self.interval)))
        connected = False
        while not self.stop.is_set():
            self.supervisor.flush_forgets()
            held, ending = self.held_and_ending()
            hb = p.Heartbeat(node=self.node, held=held, wait=self.interval, ending=ending)
            try:
                # the host holds the request up to `wait`; an answer later than that means a dead link
                raw = conn.call("POST", p.RUNNER_HEARTBEAT, p.encode(hb), timeout=2 * self.interval + 2)
                orders = p.decode(raw, p.Orders)
            except (HostUnreachable, ApiError, p.DecodeError) as exc:
                if connected or backoff.delay == 0:
                    log.warning("heartbeat failed, will retry: %s", exc)
                connected = False
                self.stop.wait(backoff.failed())
                continue
            if not connected:
                log.info("connected to the host at %s as node %s (%d cores)", self.host_url, self.node.name,
                         len(self.node.core_ids))
                connected = True
            backoff.succeeded()
            self._obey(orders)

    def _obey(self, orders: p.Orders) -> None:
        for task_id in orders.kill:
            log.info("killing task %s", task_id)
            self.supervisor.kill(task_id)
        if orders.launch:
            self.supervisor.launch(orders.launch)
            self.result_ready()  # a launch that failed at once has a result to send

    # ---- reports -------------------------------------------------------------------------
    def report_forever(self) -> None:
        conn = HostConnection(self.host_url)
        backoff = Backoff(ceiling=5.0)
        while not self.stop.is_set():
            with self._work:
                finished = self._gather()
                done = {f.task_id for f in finished}
                started = [s for s in self._started.values() if s.task_id not in done]
                for task_id in done:
                    self._started.pop(task_id, None)
                if not started and not finished:
                    self._work.wait(0.5)
                    continue
            held, ending = self.held_and_ending()
            try:
                report = p.encode(p.Report(self.node.name, started, finished, held=held, ending=ending))
                ack = p.decode(conn.call("POST", p.RUNNER_REPORT, report, timeout=2 * self.interval + 5), p.Ack)
            except (HostUnreachable, ApiError, p.DecodeError) as exc:
                if backoff.delay == 0:
                    log.warning("report failed, will retry: %s", exc)
                self.stop.wait(backoff.failed())
                continue
            backoff.succeeded()
            self.outbox.ack(ack.task_ids)
            if ack.orders is not None:
                self._obey(ack.orders)
            with self._work:
                for s in started:
                    if self._started.get(s.task_id) is s:
                        del self._started[s.task_id]

    def _gather(self) -> list[p.TaskFinished]:
        """The results to send now, after a few milliseconds' wait when more are about to come.

        A short task's result usually follows its "started" within milliseconds, and on a busy
        node more results follow the first: one report for several saves a round trip per task
        on both sides. A result is sent at once when nothing else runs here.
        """
        deadline = time.monotonic() + LINGER
        while True:
            finished = self.outbox.pending(REPORT_BATCH)
            if not finished and not self._started:
                return finished
            if finished and self.supervisor.running_count() == 0:
                return finished
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return finished
            self._work.wait(remaining)

    def run(self, taken_over: list[p.TaskStarted]) -> None:
        """Serve until stopped; `taken_over` are the running tasks an earlier runner process left."""
        for event in taken_over:
            self.task_started(event)
        threads = [
            threading.Thread(target=self.supervisor.serve_keeper, args=(self.stop,), name="keeper", daemon=True),
            threading.Thread(target=self.report_forever, name="reports", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            self.heartbeat_forever()
        finally:
            self.stop.set()
            time.sleep(0)
