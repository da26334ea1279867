"""A full disk under the host's database (SPEC §14).

Submissions fail with one clear line and nothing is acknowledged that was not committed;
reads keep working; once space returns the host recovers by itself, and the results that
arrived during the outage end up in the database with their real final states.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakuriver.runner.journal import Journal
from support import make_cluster, wait_until

pytestmark = pytest.mark.faults

DISK_SIZE = "2m"
#: what the one-line error of a refused submission must say
DISK_FULL = re.compile(r"disk is full|no space left|cannot write to the database", re.IGNORECASE)


@pytest.fixture
def db_disk(tmp_path: Path) -> Iterator[Path]:
    """The folder of the host's database, on a tiny tmpfs of its own (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem for the database needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount are not installed")
    folder = tmp_path / "db"
    folder.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "tmpfs", str(folder)],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on {folder}: {res.stderr.strip() or res.returncode}")
    try:
        yield folder
    finally:
        umount = subprocess.run(["umount", str(folder)], capture_output=True, text=True, timeout=30)
        if umount.returncode != 0:  # something still holds it open: detach it anyway, never leave it mounted
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


@pytest.fixture
def cluster(db_disk, tmp_path, request):  # noqa: ANN001, ANN201
    # Depends on db_disk: set up after the mount, torn down (every process stopped) before the unmount.
    yield from make_cluster(tmp_path, request)


def fill(folder: Path) -> Path:
    """Write a filler file in `folder` until its filesystem is full; return its path (delete it to free the space)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    chunk = b"\0" * 65536
    try:
        for _ in range(10_000):  # bounded: the filesystem holds far fewer chunks than this
            try:
                os.write(fd, chunk)  # a short write is fine: the next one raises ENOSPC
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler
        raise AssertionError(f"{folder} did not fill up")
    finally:
        os.close(fd)


def db_task_ids(cluster) -> set[str]:  # noqa: ANN001
    return {r["task_id"] for r in cluster.query("SELECT task_id FROM tasks")}


def submit_until_refused(cluster, acknowledged: list[str]) -> subprocess.CompletedProcess:  # noqa: ANN001
    """Submit until one is refused: SQLite may still find room in pages it already holds (bounded)."""
    deadline = time.monotonic() + 30
    for _ in range(50):
        if time.monotonic() > deadline:
            break
        res = cluster.client("--", "true")
        if res.returncode != 0:
            return res
        acknowledged.append(res.stdout.strip())
        assert res.stdout.strip() in db_task_ids(cluster), "a submission was acknowledged before its commit"
    raise AssertionError(f"no submission refused on a full disk; {len(acknowledged)} accepted\n{cluster.logs()}")


def check_refused(res: subprocess.CompletedProcess) -> None:
    """Exit code 1, nothing on stdout (no task ID), one line on stderr that names the problem."""
    assert res.returncode == 1, res
    assert res.stdout == "", f"the refused submission printed {res.stdout!r}"
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and DISK_FULL.search(lines[0]), f"not one clear line: {res.stderr!r}"
    assert "Traceback" not in res.stderr


def check_reads(cluster, task_id: str) -> None:  # noqa: ANN001
    status = cluster.client("--status", task_id)
    assert status.returncode == 0 and task_id in status.stdout, status
    listing = cluster.client("--list")
    assert listing.returncode == 0 and task_id[:8] in listing.stdout, listing
    nodes = cluster.client("--list-nodes")
    assert nodes.returncode == 0 and "a" in nodes.stdout.split(), nodes


def report_refused(cluster) -> bool:  # noqa: ANN001
    return "report failed, will retry" in (cluster.root / "runner-a.log").read_text(errors="replace")


def start_gated(cluster, gate: Path) -> tuple[str, str]:  # noqa: ANN001
    """Two tasks running on runner a (2 cores) until `gate` appears; one exits 0, the other 7."""
    gated = f'while [ ! -e {gate} ]; do sleep 0.05; done; echo "$0"; exit "$1"'
    ok = cluster.submit("--", "sh", "-c", gated, "ok", "0")
    bad = cluster.submit("--", "sh", "-c", gated, "bad", "7")
    cluster.wait_state(ok, "running")
    cluster.wait_state(bad, "running")
    return ok, bad


def check_final(cluster, ok: str, bad: str) -> None:  # noqa: ANN001
    """The gated tasks' real results are in the database."""
    row_ok = cluster.wait_state(ok, "completed", "failed", "killed", "lost", timeout=30)
    row_bad = cluster.wait_state(bad, "completed", "failed", "killed", "lost", timeout=30)
    assert (row_ok["state"], row_ok["exit_code"]) == ("completed", 0)
    assert (row_bad["state"], row_bad["exit_code"]) == ("failed", 7)
    assert Path(row_ok["stdout_path"]).read_text() == "ok\n" and Path(row_bad["stdout_path"]).read_text() == "bad\n"


def test_full_disk_refuses_submissions_keeps_reads_and_recovers(cluster, db_disk):  # noqa: ANN001
    cluster.start_host()
    cluster.start_runner("a", 2)
    cluster.wait_online("a")
    acknowledged = [cluster.submit("--", "sh", "-c", f"echo before{i}") for i in range(3)]
    for t in acknowledged:
        cluster.wait_state(t, "completed")

    # two tasks running when the disk fills up; they end during the outage, when the gate appears
    gate = cluster.shared / "gate"
    finishing_ok, finishing_bad = start_gated(cluster, gate)
    acknowledged += [finishing_ok, finishing_bad]

    filler = fill(db_disk)
    refused = submit_until_refused(cluster, acknowledged)
    check_refused(refused)
    # nothing acknowledged that was not committed, and nothing refused that was queued all the same
    assert db_task_ids(cluster) == set(acknowledged)

    gate.touch()  # the gated tasks end now; their results cannot be committed yet
    wait_until(lambda: report_refused(cluster), 15, "the runner's report to be refused while the disk is full")
    assert {cluster.task(t)["state"] for t in (finishing_ok, finishing_bad)} == {"running"}, \
        "a result was committed on a full disk"

    check_reads(cluster, acknowledged[0])
    check_refused(cluster.client("--", "true"))  # still refused, still one clear line
    assert db_task_ids(cluster) == set(acknowledged)
    assert cluster.host.alive() and cluster.runners["a"].alive()

    filler.unlink()  # space returns; nothing is restarted

    def submitted_and_waited() -> str | None:
        res = cluster.client("--wait", "--", "sh", "-c", "echo back", timeout=30)
        if res.returncode == 0:
            return res.stdout.splitlines()[0].strip()
        assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res
        return None

    back = wait_until(submitted_and_waited, 30, "a submission to succeed once space returned")
    acknowledged.append(back)
    assert Path(cluster.wait_state(back, "completed", timeout=10)["stdout_path"]).read_text() == "back\n"

    check_final(cluster, finishing_ok, finishing_bad)
    for t in acknowledged:
        cluster.wait_state(t, "completed", "failed", timeout=30)
    assert db_task_ids(cluster) == set(acknowledged)
    host_log = (cluster.root / "host.log").read_text(errors="replace")
    assert "cannot write to the database" in host_log and "can be written again" in host_log, host_log[-4000:]
    assert cluster.host.alive() and cluster.runners["a"].alive()
    cluster.wait_online("a")


def test_nothing_uncommitted_reaches_the_runner_so_a_host_crash_on_a_full_disk_loses_nothing(cluster, db_disk):  # noqa: ANN001
    """While commits fail, the runner gets neither acknowledgements nor launch orders.

    Its results stay in its journal, and a queued task is not started on the cores they
    free: so a host killed before space returns loses nothing, and runs nothing twice.
    """
    cluster.start_host()
    cluster.start_runner("a", 2)
    cluster.wait_online("a")
    gate, runs = cluster.shared / "gate", cluster.shared / "runs"
    ok, bad = start_gated(cluster, gate)
    queued = cluster.submit("--", "sh", "-c", f"echo ran >> {runs}")
    assert cluster.task(queued)["state"] == "pending"
    journal = str(cluster.root / "tmp-a" / ".hakuriver-runner-a" / "journal")

    def undelivered() -> set[str]:
        return set(Journal.peek(journal)[1])

    filler = fill(db_disk)
    gate.touch()
    wait_until(lambda: report_refused(cluster), 15, "the runner's report to be refused while the disk is full")
    # the two tasks see the gate up to 0.05 s apart: the first refused report may carry one result only
    wait_until(lambda: {ok, bad} <= undelivered(), 5, "both results in the runner's journal")
    # the runner retries its report (0.1 s, 0.2 s, 0.4 s, ... apart) and the host its commit (every
    # 1 s): for that long, nothing may be acknowledged and the freed cores may take no new task
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert {ok, bad} <= undelivered(), (
            f"results acknowledged to the runner but not committed: {cluster.task(ok)['state']=}, "
            f"{cluster.task(bad)['state']=}\n{cluster.logs()}")
        assert not runs.exists(), f"task {queued} launched while its assignment is not committed: " \
            f"{cluster.task(queued)['state']=}\n{cluster.logs()}"
        time.sleep(0.05)
    assert [cluster.task(t)["state"] for t in (ok, bad, queued)] == ["running", "running", "pending"]

    cluster.host.stop(signal.SIGKILL)  # the host dies before space returns: only what is on disk counts
    filler.unlink()
    cluster.start_host()
    check_final(cluster, ok, bad)
    assert cluster.wait_state(queued, "completed", "failed", timeout=30)["state"] == "completed"
    wait_until(lambda: not undelivered(), 10, "the journal to empty once the results are committed")
    assert runs.read_text() == "ran\n", "the queued task ran more than once"
    cluster.wait_online("a")
