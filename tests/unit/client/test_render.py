from __future__ import annotations

from hakuriver import protocol as p
from hakuriver.client import render
from hakuriver.client.cli import parse
from hakuriver.client.commands import exit_code_of


def view(**kw) -> p.TaskView:  # noqa: ANN003
    base = dict(task_id="t", state="completed", command="sh", args=["-c", "echo 'a b'"], env={"K": "v w"}, cores=2,
                node="a", core_ids=[0, 1], exit_code=0, signal=None, error="", submitted_at=0.0, started_at=1.0,
                finished_at=3.5, stdout_path="/o", stderr_path="/e", cwd="/w")
    base.update(kw)
    return p.TaskView(**base)


def test_node_table():
    nodes = [p.NodeView("a", "online", 4, 1, 2, 2**31, 95.0), p.NodeView("bb", "offline", 2, 2, 0, 0, 0.0),
             p.NodeView("c", "online", 2, 0, 2, 0, 99.0, leaving=True)]
    assert render.node_table(nodes, now=100.0) == (
        "NODE  STATE    CORES  FREE  RUNNING  MEMORY   LAST HEARTBEAT\n"
        "a     online   4      1     2        2.0 GiB  5.0s ago\n"
        "bb    offline  2      2     0        -        never\n"
        "c     leaving  2      0     2        -        1.0s ago"
    )


def test_final_line():
    assert render.final_line(view()) == "task t completed (exit code 0) on a after 2.50s"
    assert render.final_line(view(state="failed", exit_code=None, error="command not found: x", node="", started_at=None)) == (
        "task t failed (command not found: x)")


def test_record_quotes_the_command_and_env():
    text = render.task_record(view())
    assert "Command:     sh -c 'echo '\"'\"'a b'\"'\"''" in text
    assert "Environment: K='v w'" in text
    assert "Core IDs:    0,1" in text


def test_exit_codes_like_srun():
    assert exit_code_of(view()) == 0
    assert exit_code_of(view(state="failed", exit_code=3)) == 3
    assert exit_code_of(view(state="failed", exit_code=None, signal=9)) == 137
    assert exit_code_of(view(state="failed", exit_code=None)) == 1
    assert exit_code_of(view(state="killed", exit_code=None)) == 143
    assert exit_code_of(view(state="lost", exit_code=None)) == 1


def test_everything_after_the_double_dash_is_the_command():
    args = parse(["--cores", "2", "--", "python", "--cores", "3", "--", "-V"])
    assert args.cores == 2 and args.command == ["python", "--cores", "3", "--", "-V"]
    assert parse(["--wait", "echo", "hi"]).command == ["echo", "hi"]


def test_the_sizing_hint_agrees_with_the_average_shown():
    def hint(cpu: float) -> str:
        [line] = [v for k, v in render.usage_lines(view(cores=4, started_at=0.0, finished_at=2.0, cpu_user_seconds=cpu,
                                                          cpu_system_seconds=0.0)) if k == "CPU efficiency"]
        return line
    assert hint(2.008).endswith("(used 1.0 of 4 cores on average over 2.00s); --cores 1 would do")  # CI saw "2" here
    assert hint(2.2).endswith("used 1.1 of 4 cores on average over 2.00s); --cores 2 would do")
    assert hint(0.1).endswith("--cores 1 would do")
    assert "would do" not in hint(6.0)
