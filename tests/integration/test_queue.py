"""A real queue: more tasks than cores are accepted at once and run as cores free up."""

from __future__ import annotations

import sys
from collections import defaultdict

from hakuriver import protocol as p
from support import wait_until

# Each task records its node, cores and a start/end stamp; the test then checks that no two
# tasks held the same core on the same node at overlapping times (no timing is asserted).
RECORD = (
    "import os, time, sys; s = time.time(); "
    "gate = os.path.join(os.environ['HAKURIVER_SHARED_DIR'], 'gate'); "
    "[time.sleep(0.02) for _ in iter(lambda: os.path.exists(gate), True)]; "
    "time.sleep(0.05); e = time.time(); "
    "open(os.path.join(os.environ['HAKURIVER_SHARED_DIR'], 'q-' + os.environ['HAKURIVER_TASK_ID']), 'w')"
    ".write(f\"{os.environ['HAKURIVER_NODE']} {os.environ['HAKURIVER_CORES']} {s} {e}\")"
)


def test_more_tasks_than_cores_all_run_on_disjoint_cores(cluster):
    client = cluster.api()
    specs = [p.TaskSpec(sys.executable, ["-c", RECORD], cores=1 + i % 2) for i in range(14)]
    ids = [client.submit([spec]).task_ids[0] for spec in specs]
    # 14 tasks asking 21 cores of a 6-core cluster are all accepted. Until the gate opens, best
    # fit places exactly the first four (1+2+1+2 cores) and the other ten wait in the queue.
    def settled() -> list[str] | None:
        states = [cluster.task(t)["state"] for t in ids]
        return states if states.count("running") == 4 else None
    states = wait_until(settled, 20, "the first four tasks to run")
    assert states[:4] == ["running"] * 4 and states[4:] == ["pending"] * 10
    (cluster.shared / "gate").touch()
    for t in ids:
        cluster.wait_state(t, "completed", timeout=60)
    spans: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for t in ids:
        row = cluster.task(t)
        node, cores, start, end = (cluster.shared / f"q-{t}").read_text().split()
        assert (node, cores) == (row["node"], row["core_ids"])
        assert len(cores.split(",")) == row["cores"]
        for core in cores.split(","):
            spans[(node, core)].append((float(start), float(end)))
    for key, intervals in spans.items():
        intervals.sort()
        for (_, end1), (start2, _) in zip(intervals, intervals[1:]):
            assert end1 <= start2, f"core {key} was used by two tasks at once"


def test_backfill_uses_other_nodes_but_never_starves_the_head(cluster):
    client = cluster.api()
    blocker = client.submit([p.TaskSpec("sleep", ["2"], cores=3, node="a")]).task_ids[0]
    cluster.wait_state(blocker, "running")
    # a: 1 core free, b: 2 free. The head needs 4: only a can ever fit it, so a is reserved.
    head = client.submit([p.TaskSpec("true", cores=4)]).task_ids[0]
    backfill = client.submit([p.TaskSpec("true", cores=1)]).task_ids[0]
    later_on_a = client.submit([p.TaskSpec("true", cores=1, node="a")]).task_ids[0]
    # the small task backfills b at once, while the head still waits
    cluster.wait_state(backfill, "completed")
    assert cluster.task(backfill)["node"] == "b"
    assert cluster.task(head)["state"] == "pending"
    head_row = cluster.wait_state(head, "completed", timeout=30)
    later_row = cluster.wait_state(later_on_a, "completed", timeout=30)
    # a's free core was not given to the later task: the head went first
    assert head_row["node"] == "a" and head_row["started_at"] >= cluster.task(blocker)["finished_at"]
    assert later_row["started_at"] >= head_row["started_at"]


def test_request_larger_than_any_node_is_refused_naming_the_largest(cluster):
    before = len(cluster.query("SELECT task_id FROM tasks"))
    res = cluster.client("--cores", "5", "--", "true")
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "hakuriver.client: error: 5 cores requested but the largest node (a) has 4 cores"
    )
    assert len(cluster.query("SELECT task_id FROM tasks")) == before
