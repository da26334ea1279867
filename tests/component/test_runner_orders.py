"""The host's runner side in-process, on its own event loop: orders reach a heartbeat that is
already waiting, including for launches made since it arrived (through report acknowledgements)."""

from __future__ import annotations

import asyncio

from hakuriver import protocol as p
from hakuriver.core.cluster import Cluster
from hakuriver.host.service import HostService
from hakuriver.host.store import Store

NODE = p.NodeInfo("a", [0])  # one core: tasks run one after another


def test_a_kill_reaches_the_heartbeat_waiting_since_before_its_launch(tmp_path):
    async def scenario() -> tuple[p.Orders, str]:
        store = Store(str(tmp_path / "h.db"))
        service = HostService(Cluster(heartbeat_timeout=30), store)
        await service.heartbeat(p.Heartbeat(NODE))  # registers the node
        first, second = (await service.submit([p.TaskSpec("true"), p.TaskSpec("true")], batch=True))[0]
        await asyncio.sleep(0.05)  # the planning pass runs at the end of the loop iteration
        assert [o.task_id for o in (await service.heartbeat(p.Heartbeat(NODE))).launch] == [first]
        # the runner's next heartbeat waits; it holds the first task, and knows nothing of the second yet
        waiting = asyncio.ensure_future(service.heartbeat(p.Heartbeat(NODE, [first], wait=30)))
        await asyncio.sleep(0.05)
        # the first ends: its acknowledgement launches the second, which the runner then reports started
        ack = service.report(p.Report("a", finished=[p.TaskFinished(first, 1.0, exit_code=0, started_at=0.5)], held=[]))
        assert [o.task_id for o in ack.orders.launch] == [second]
        service.report(p.Report("a", started=[p.TaskStarted(second, 2.0)], held=[second]))
        await service.settled()
        assert not waiting.done()  # nothing for it so far
        service.kill(second)
        try:
            return await asyncio.wait_for(waiting, 5), second  # far less than its wait of 30 s
        finally:
            store.close()

    orders, second = asyncio.run(scenario())
    assert (orders.kill, orders.launch) == ([second], [])


def test_a_batch_kill_in_the_loop_iteration_that_ends_one_of_its_tasks_kills_the_rest(tmp_path):
    """The waiters learn of an end once it is committed; a batch kill made before that commit must
    neither fail on the task that just ended nor lose the kills of the others."""
    async def scenario() -> tuple[str, str, p.BatchView]:
        store = Store(str(tmp_path / "h.db"))
        service = HostService(Cluster(heartbeat_timeout=30), store)
        try:
            await service.heartbeat(p.Heartbeat(NODE))
            ids, batch_id = await service.submit([p.TaskSpec("true") for _ in range(3)], batch=True)
            await asyncio.sleep(0.05)
            assert [o.task_id for o in (await service.heartbeat(p.Heartbeat(NODE))).launch] == [ids[0]]
            service.report(p.Report("a", finished=[p.TaskFinished(ids[0], 1.0, exit_code=0, started_at=0.5)], held=[]))
            # same iteration: the finish is not committed yet, and the freed core's next task is on its way
            state, message = service.kill_batch(batch_id)
            await service.settled()
            await service.heartbeat(p.Heartbeat(NODE))  # holds nothing: the launch it was sent never arrived
            await service.settled()
            return state, message, await service.batch_view(batch_id)
        finally:
            store.close()

    state, message, view = asyncio.run(scenario())
    assert state == "running" and "2 unfinished tasks" in message  # one was on its way to the node
    assert view.done and view.counts == {"completed": 1, "killed": 2}
